//! Pull (distribution spec "Pull": "Pulling manifests", "Pulling blobs", "Checking if content
//! exists in the registry"), driven through HTTP against the real server.

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{
    assert_error, descriptor, header, random_bytes, unique_repo, TestImage, TestRegistry,
};
use serde_json::{json, Value};

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

async fn head(reg: &TestRegistry, path: &str) -> reqwest::Response {
    reg.client.head(reg.url(path)).send().await.unwrap()
}

async fn get_range(reg: &TestRegistry, path: &str, range: &str) -> reqwest::Response {
    reg.client
        .get(reg.url(path))
        .header("range", range)
        .send()
        .await
        .unwrap()
}

/// A repository holding one 100-byte blob; returns `(repo, bytes, digest)`.
async fn repo_with_blob(reg: &TestRegistry, prefix: &str) -> (String, Vec<u8>, Digest) {
    let repo = unique_repo(prefix);
    let data = random_bytes(100);
    let digest = reg.push_blob(&repo, &data).await;
    (repo, data, digest)
}

/// Pushes the blobs of `image` and its manifest by digest (no tag).
async fn push_untagged(reg: &TestRegistry, repo: &str, image: &TestImage) {
    for (_, bytes) in image.blobs() {
        reg.push_blob(repo, bytes).await;
    }
    let r = reg
        .put_manifest(
            repo,
            &image.digest.to_string(),
            media::OCI_MANIFEST,
            &image.manifest,
        )
        .await;
    assert_eq!(r.status(), 201);
}

/// Pushes a Docker schema 2 image manifest by digest and returns its bytes.
async fn push_docker_image(reg: &TestRegistry, repo: &str) -> Vec<u8> {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(2048);
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [descriptor(DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    let digest = Digest::sha256(&manifest).to_string();
    let r = reg
        .put_manifest(repo, &digest, media::DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(r.status(), 201);
    manifest
}

#[tokio::test]
async fn manifest_get_by_tag_returns_the_bytes_with_digest_type_and_length() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/tag");
    let image = reg.push_image(&repo, "v1", 1).await;
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest"),
        image.digest.to_string()
    );
    assert_eq!(header(&r, "content-type"), media::OCI_MANIFEST);
    assert_eq!(
        header(&r, "content-length"),
        image.manifest.len().to_string()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
}

#[tokio::test]
async fn manifest_get_by_digest_returns_the_bytes_with_digest_type_and_length() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/digest");
    let image = reg.push_image(&repo, "v1", 1).await;
    let r = reg
        .get(&format!("/v2/{repo}/manifests/{}", image.digest))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest"),
        image.digest.to_string()
    );
    assert_eq!(header(&r, "content-type"), media::OCI_MANIFEST);
    assert_eq!(
        header(&r, "content-length"),
        image.manifest.len().to_string()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
}

#[tokio::test]
async fn manifest_head_by_tag_has_the_get_headers_and_no_body() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/head-tag");
    let image = reg.push_image(&repo, "v1", 1).await;
    let r = head(reg, &format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest"),
        image.digest.to_string()
    );
    assert_eq!(header(&r, "content-type"), media::OCI_MANIFEST);
    assert_eq!(
        header(&r, "content-length"),
        image.manifest.len().to_string()
    );
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn manifest_head_by_digest_has_the_get_headers_and_no_body() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/head-digest");
    let image = reg.push_image(&repo, "v1", 1).await;
    let r = head(reg, &format!("/v2/{repo}/manifests/{}", image.digest)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest"),
        image.digest.to_string()
    );
    assert_eq!(header(&r, "content-type"), media::OCI_MANIFEST);
    assert_eq!(
        header(&r, "content-length"),
        image.manifest.len().to_string()
    );
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn manifest_unknown_tag_is_404_manifest_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/no-tag");
    reg.push_image(&repo, "v1", 1).await;
    let r = reg.get(&format!("/v2/{repo}/manifests/v2")).await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_unknown_digest_is_404_manifest_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/no-digest");
    reg.push_image(&repo, "v1", 1).await;
    let missing = Digest::sha256(b"no such manifest");
    let r = reg.get(&format!("/v2/{repo}/manifests/{missing}")).await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_head_of_unknown_tag_is_404() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/head-no-tag");
    reg.push_image(&repo, "v1", 1).await;
    let r = head(reg, &format!("/v2/{repo}/manifests/nope")).await;
    assert_eq!(r.status(), 404);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn manifest_of_a_nonexistent_repository_is_404() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/never-pushed");
    let r = reg.get(&format!("/v2/{repo}/manifests/latest")).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    let code = body["errors"][0]["code"].as_str().unwrap_or_default();
    assert!(
        ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"].contains(&code),
        "error body: {body}"
    );
}

#[tokio::test]
async fn blob_get_returns_the_bytes_with_length_digest_and_accept_ranges() {
    let reg = TestRegistry::shared();
    let (repo, data, digest) = repo_with_blob(reg, "pull/blob").await;
    let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "100");
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
}

/// Blobs of every size class come back whole and exact: empty, read into a buffer, mapped (64
/// KiB up to 1 MiB, read whole in one storage call), and streamed (above 1 MiB); a range of
/// each is served from the stream path.
#[tokio::test]
async fn blobs_of_every_size_come_back_whole_and_in_ranges() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/sizes");
    for len in [
        0,
        1,
        65_535,
        65_536,
        300_001,
        1 << 20,
        (1 << 20) + 1,
        3 << 20,
    ] {
        let data = random_bytes(len);
        let digest = reg.push_blob(&repo, &data).await;
        let path = format!("/v2/{repo}/blobs/{digest}");
        let r = reg.get(&path).await;
        assert_eq!(r.status(), 200, "{len}");
        assert_eq!(header(&r, "content-length"), len.to_string());
        assert!(
            r.bytes().await.unwrap().as_ref() == data.as_slice(),
            "{len}"
        );
        if len > 10 {
            let r = get_range(reg, &path, "bytes=5-").await;
            assert_eq!(r.status(), 206, "{len}");
            assert!(r.bytes().await.unwrap().as_ref() == &data[5..], "{len}");
        }
    }
}

#[tokio::test]
async fn blob_head_has_length_and_digest_and_no_body() {
    let reg = TestRegistry::shared();
    let (repo, _, digest) = repo_with_blob(reg, "pull/blob-head").await;
    let r = head(reg, &format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "100");
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn blob_unknown_is_404_blob_unknown() {
    let reg = TestRegistry::shared();
    let (repo, _, _) = repo_with_blob(reg, "pull/no-blob").await;
    let missing = Digest::sha256(b"no such blob");
    let r = reg.get(&format!("/v2/{repo}/blobs/{missing}")).await;
    assert_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn blob_head_of_unknown_blob_is_404() {
    let reg = TestRegistry::shared();
    let (repo, _, _) = repo_with_blob(reg, "pull/head-no-blob").await;
    let missing = Digest::sha256(b"no such blob either");
    let r = head(reg, &format!("/v2/{repo}/blobs/{missing}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn blob_of_another_repository_is_404_blob_unknown() {
    let reg = TestRegistry::shared();
    let (_, _, digest) = repo_with_blob(reg, "pull/owner").await;
    let (other, _, _) = repo_with_blob(reg, "pull/stranger").await;
    let r = reg.get(&format!("/v2/{other}/blobs/{digest}")).await;
    assert_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn blob_range_of_first_ten_bytes_is_206_with_content_range() {
    let reg = TestRegistry::shared();
    let (repo, data, digest) = repo_with_blob(reg, "pull/range").await;
    let r = get_range(reg, &format!("/v2/{repo}/blobs/{digest}"), "bytes=0-9").await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 0-9/100");
    assert_eq!(header(&r, "content-length"), "10");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..10]);
}

#[tokio::test]
async fn blob_open_ended_range_is_206_to_the_end() {
    let reg = TestRegistry::shared();
    let (repo, data, digest) = repo_with_blob(reg, "pull/range-open").await;
    let r = get_range(reg, &format!("/v2/{repo}/blobs/{digest}"), "bytes=90-").await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 90-99/100");
    assert_eq!(header(&r, "content-length"), "10");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[90..]);
}

#[tokio::test]
async fn blob_suffix_range_is_206_with_the_last_bytes() {
    let reg = TestRegistry::shared();
    let (repo, data, digest) = repo_with_blob(reg, "pull/range-suffix").await;
    let r = get_range(reg, &format!("/v2/{repo}/blobs/{digest}"), "bytes=-25").await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 75-99/100");
    assert_eq!(header(&r, "content-length"), "25");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[75..]);
}

#[tokio::test]
async fn blob_range_past_the_end_is_416_with_the_size() {
    let reg = TestRegistry::shared();
    let (repo, _, digest) = repo_with_blob(reg, "pull/range-416").await;
    let r = get_range(reg, &format!("/v2/{repo}/blobs/{digest}"), "bytes=100-").await;
    assert_eq!(header(&r, "content-range"), "bytes */100");
    assert_error(r, 416, "SIZE_INVALID").await;
}

#[tokio::test]
async fn docker_schema2_manifest_comes_back_with_its_media_type() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/docker");
    let manifest = push_docker_image(reg, &repo).await;
    let r = reg
        .put_manifest(&repo, "v1", media::DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/v1")))
        .header("accept", media::DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), media::DOCKER_MANIFEST);
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
}

#[tokio::test]
async fn docker_manifest_list_comes_back_with_its_media_type() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/docker-list");
    let amd64 = push_docker_image(reg, &repo).await;
    let arm64 = push_docker_image(reg, &repo).await;
    let entry = |m: &[u8], arch: &str| {
        let mut d = descriptor(media::DOCKER_MANIFEST, m);
        d["platform"] = json!({ "architecture": arch, "os": "linux" });
        d
    };
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST_LIST,
        "manifests": [entry(&amd64, "amd64"), entry(&arm64, "arm64")],
    }))
    .unwrap();
    let r = reg
        .put_manifest(&repo, "multi", media::DOCKER_MANIFEST_LIST, &list)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/multi")))
        .header("accept", media::DOCKER_MANIFEST_LIST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), media::DOCKER_MANIFEST_LIST);
    assert_eq!(
        header(&r, "docker-content-digest"),
        Digest::sha256(&list).to_string()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), list.as_slice());
}

#[tokio::test]
async fn oci_index_of_two_image_manifests_pulls_with_both_children() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("pull/index");
    let images = [TestImage::random(1), TestImage::random(2)];
    for image in &images {
        push_untagged(reg, &repo, image).await;
    }
    let entries: Vec<Value> = images
        .iter()
        .zip(["amd64", "arm64"])
        .map(|(image, arch)| {
            let mut d = image.descriptor();
            d["platform"] = json!({ "architecture": arch, "os": "linux" });
            d
        })
        .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap();
    let r = reg
        .put_manifest(&repo, "multi", media::OCI_INDEX, &index)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/{repo}/manifests/multi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), media::OCI_INDEX);
    assert_eq!(r.bytes().await.unwrap().as_ref(), index.as_slice());
    for image in &images {
        let r = reg
            .get(&format!("/v2/{repo}/manifests/{}", image.digest))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), media::OCI_MANIFEST);
        assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    }
}
