//! Content management over HTTP (distribution spec "Deleting tags", "Deleting Manifests",
//! "Deleting Blobs"), including berth's refusals: blobs and manifests still in use, deletes
//! disabled, and manifest collisions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::reqwest::Response;
use berth_testkit::{random_bytes, unique_repo, TestImage, TestRegistry};
use serde_json::{json, Value};

/// Asserts an error response: its status, `errors[0].code`, and that it has a `message`.
async fn assert_error(r: Response, status: u16, code: &str) {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(body["errors"][0]["message"].is_string(), "{body}");
}

async fn delete(reg: &TestRegistry, path: &str) -> Response {
    reg.client.delete(reg.url(path)).send().await.unwrap()
}

async fn tags(reg: &TestRegistry, repo: &str) -> Value {
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["tags"].clone()
}

async fn assert_manifest_pulls(reg: &TestRegistry, repo: &str, reference: &str, image: &TestImage) {
    let r = reg.get(&format!("/v2/{repo}/manifests/{reference}")).await;
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
}

async fn assert_blob_pulls(reg: &TestRegistry, repo: &str, digest: &Digest, bytes: &[u8]) {
    let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200, "{repo}@{digest}");
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes);
}

/// Pushes an OCI index listing `children` under `tag` and returns its digest.
async fn push_index(reg: &TestRegistry, repo: &str, tag: &str, children: &[&TestImage]) -> Digest {
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": children.iter().map(|c| c.descriptor()).collect::<Vec<_>>(),
    }))
    .unwrap();
    let r = reg.put_manifest(repo, tag, media::OCI_INDEX, &body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    Digest::sha256(&body)
}

#[tokio::test]
async fn deleting_a_tag_removes_only_the_tag() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/tag");
    let image = reg.push_image(&repo, "v1", 1).await;
    let r = reg
        .put_manifest(&repo, "v2", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        delete(reg, &format!("/v2/{repo}/manifests/v1"))
            .await
            .status(),
        202
    );
    assert_eq!(tags(reg, &repo).await, json!(["v2"]));
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
    assert_manifest_pulls(reg, &repo, &image.digest.to_string(), &image).await;
    assert_manifest_pulls(reg, &repo, "v2", &image).await;
}

#[tokio::test]
async fn deleting_the_last_tag_keeps_the_manifest_pullable_by_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/last-tag");
    let image = reg.push_image(&repo, "only", 1).await;
    assert_eq!(
        delete(reg, &format!("/v2/{repo}/manifests/only"))
            .await
            .status(),
        202
    );
    assert_eq!(tags(reg, &repo).await, json!([]));
    assert_manifest_pulls(reg, &repo, &image.digest.to_string(), &image).await;
}

#[tokio::test]
async fn deleting_a_manifest_by_digest_removes_it_and_every_tag() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/digest");
    let image = reg.push_image(&repo, "a", 1).await;
    let r = reg
        .put_manifest(&repo, "b", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    let other = reg.push_image(&repo, "other", 1).await;
    let r = delete(reg, &format!("/v2/{repo}/manifests/{}", image.digest)).await;
    assert_eq!(r.status(), 202);
    for reference in [image.digest.to_string(), "a".into(), "b".into()] {
        let r = reg.get(&format!("/v2/{repo}/manifests/{reference}")).await;
        assert_error(r, 404, "MANIFEST_UNKNOWN").await;
    }
    assert_eq!(tags(reg, &repo).await, json!(["other"]));
    assert_manifest_pulls(reg, &repo, "other", &other).await;
}

#[tokio::test]
async fn deleting_an_unknown_manifest_is_manifest_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/unknown-manifest");
    reg.push_image(&repo, "v1", 1).await;
    let absent = Digest::sha256(&random_bytes(16));
    for reference in [absent.to_string(), "nope".to_owned()] {
        let r = delete(reg, &format!("/v2/{repo}/manifests/{reference}")).await;
        assert_error(r, 404, "MANIFEST_UNKNOWN").await;
    }
}

#[tokio::test]
async fn deleting_a_manifest_of_an_unknown_repository_is_404() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/no-repo");
    let absent = Digest::sha256(&random_bytes(16));
    let r = delete(reg, &format!("/v2/{repo}/manifests/{absent}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn deleting_a_blob_makes_it_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/blob");
    reg.push_image(&repo, "v1", 1).await;
    let data = random_bytes(100);
    let digest = reg.push_blob(&repo, &data).await;
    assert_eq!(
        delete(reg, &format!("/v2/{repo}/blobs/{digest}"))
            .await
            .status(),
        202
    );
    let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn deleting_an_unknown_blob_is_blob_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/unknown-blob");
    reg.push_image(&repo, "v1", 1).await;
    let absent = Digest::sha256(&random_bytes(16));
    let r = delete(reg, &format!("/v2/{repo}/blobs/{absent}")).await;
    assert_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn deleting_a_blob_a_manifest_references_is_unsupported() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/blob-in-use");
    let image = reg.push_image(&repo, "v1", 1).await;
    for (digest, bytes) in image.blobs() {
        let r = delete(reg, &format!("/v2/{repo}/blobs/{digest}")).await;
        assert_error(r, 405, "UNSUPPORTED").await;
        assert_blob_pulls(reg, &repo, &digest, bytes).await;
    }
}

#[tokio::test]
async fn deleting_a_manifest_an_index_lists_is_unsupported_until_the_index_goes() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/index-child");
    let child = reg.push_image(&repo, "child", 1).await;
    let index = push_index(reg, &repo, "multi", &[&child]).await;
    let r = delete(reg, &format!("/v2/{repo}/manifests/{}", child.digest)).await;
    assert_error(r, 405, "UNSUPPORTED").await;
    assert_manifest_pulls(reg, &repo, &child.digest.to_string(), &child).await;
    assert_eq!(
        delete(reg, &format!("/v2/{repo}/manifests/{index}"))
            .await
            .status(),
        202
    );
    let r = delete(reg, &format!("/v2/{repo}/manifests/{}", child.digest)).await;
    assert_eq!(r.status(), 202);
    let r = reg
        .get(&format!("/v2/{repo}/manifests/{}", child.digest))
        .await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn with_deletes_disabled_every_delete_is_unsupported_and_nothing_changes() {
    let reg = TestRegistry::start_with(|c| c.api.delete_enabled = false);
    let repo = unique_repo("mgmt/disabled");
    let image = reg.push_image(&repo, "v1", 1).await;
    let loose = random_bytes(64);
    let loose_digest = reg.push_blob(&repo, &loose).await;
    let absent = Digest::sha256(&random_bytes(16));
    let config_digest = image.blobs()[0].0.clone();
    for path in [
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/manifests/{}", image.digest),
        format!("/v2/{repo}/manifests/{absent}"),
        format!("/v2/{repo}/blobs/{loose_digest}"),
        format!("/v2/{repo}/blobs/{config_digest}"),
        format!("/v2/{repo}/blobs/{absent}"),
    ] {
        let r = delete(&reg, &path).await;
        assert_error(r, 405, "UNSUPPORTED").await;
    }
    assert_eq!(tags(&reg, &repo).await, json!(["v1"]));
    assert_manifest_pulls(&reg, &repo, "v1", &image).await;
    assert_manifest_pulls(&reg, &repo, &image.digest.to_string(), &image).await;
    assert_blob_pulls(&reg, &repo, &loose_digest, &loose).await;
    for (digest, bytes) in image.blobs() {
        assert_blob_pulls(&reg, &repo, &digest, bytes).await;
    }
}

#[tokio::test]
async fn with_deletes_disabled_the_405_names_the_allowed_methods() {
    let reg = TestRegistry::start_with(|c| c.api.delete_enabled = false);
    let repo = unique_repo("mgmt/disabled-allow");
    let image = reg.push_image(&repo, "v1", 1).await;
    let (config, _) = image.blobs()[0].clone();
    for (path, allowed) in [
        (format!("/v2/{repo}/manifests/v1"), "GET"),
        (format!("/v2/{repo}/blobs/{config}"), "GET"),
    ] {
        let r = delete(&reg, &path).await;
        assert_eq!(r.status(), 405);
        let allow = r
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let allow = allow.unwrap_or_else(|| panic!("DELETE {path}: no Allow header"));
        let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
        assert!(methods.contains(&allowed), "{path}: Allow {allow}");
        assert!(!methods.contains(&"DELETE"), "{path}: Allow {allow}");
    }
}

#[tokio::test]
async fn with_collision_detection_a_manifest_with_two_tags_is_not_deleted_by_digest() {
    let reg = TestRegistry::start_with(|c| c.api.detect_manifest_collision = true);
    let repo = unique_repo("mgmt/collision");
    let image = reg.push_image(&repo, "a", 1).await;
    let r = reg
        .put_manifest(&repo, "b", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    let r = delete(&reg, &format!("/v2/{repo}/manifests/{}", image.digest)).await;
    assert_error(r, 405, "UNSUPPORTED").await;
    assert_eq!(tags(&reg, &repo).await, json!(["a", "b"]));
    assert_manifest_pulls(&reg, &repo, &image.digest.to_string(), &image).await;
}

#[tokio::test]
async fn with_collision_detection_a_manifest_with_one_tag_is_deleted_by_digest() {
    let reg = TestRegistry::start_with(|c| c.api.detect_manifest_collision = true);
    let repo = unique_repo("mgmt/no-collision");
    let image = reg.push_image(&repo, "a", 1).await;
    let r = delete(&reg, &format!("/v2/{repo}/manifests/{}", image.digest)).await;
    assert_eq!(r.status(), 202);
    let r = reg.get(&format!("/v2/{repo}/manifests/a")).await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn deleting_the_manifest_frees_its_blobs_for_deletion() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("mgmt/freed");
    let image = reg.push_image(&repo, "v1", 1).await;
    let (layer, _) = image.blobs()[1].clone();
    let r = delete(reg, &format!("/v2/{repo}/blobs/{layer}")).await;
    assert_error(r, 405, "UNSUPPORTED").await;
    let r = delete(reg, &format!("/v2/{repo}/manifests/{}", image.digest)).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        delete(reg, &format!("/v2/{repo}/blobs/{layer}"))
            .await
            .status(),
        202
    );
    let r = reg.get(&format!("/v2/{repo}/blobs/{layer}")).await;
    assert_error(r, 404, "BLOB_UNKNOWN").await;
}
