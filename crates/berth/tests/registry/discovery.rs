//! Content discovery over HTTP (distribution spec "Listing Tags", "Listing Referrers",
//! "Referrers Tag Schema") and the catalog: order, `n`/`last` pagination, `Link` headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::reqwest::header::HeaderMap;
use berth_testkit::reqwest::Response;
use berth_testkit::{descriptor, random_bytes, unique_repo, TestImage, TestRegistry};
use serde_json::{json, Value};

/// Asserts an error response: its status, `errors[0].code`, and that it has a `message`.
async fn assert_error(r: Response, status: u16, code: &str) {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(body["errors"][0]["message"].is_string(), "{body}");
}

/// The target of a `Link: <target>; rel="next"` header, if there is one.
fn next_link(r: &Response) -> Option<String> {
    let link = r.headers().get("link")?.to_str().unwrap();
    assert!(link.ends_with(r#"; rel="next""#), "{link}");
    let target = link.strip_prefix('<')?.split_once('>')?.0;
    Some(target.to_owned())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Pushes one image and points each of `tags` at it.
async fn push_tags(reg: &TestRegistry, repo: &str, tags: &[&str]) -> TestImage {
    let image = reg.push_image(repo, tags[0], 1).await;
    for tag in &tags[1..] {
        let r = reg
            .put_manifest(repo, tag, media::OCI_MANIFEST, &image.manifest)
            .await;
        assert_eq!(r.status(), 201);
    }
    image
}

async fn tags_page(reg: &TestRegistry, path: &str) -> (Vec<String>, Option<String>) {
    let r = reg.get(path).await;
    assert_eq!(r.status(), 200);
    let link = next_link(&r);
    let body: Value = r.json().await.unwrap();
    (strings(&body["tags"]), link)
}

// ---- Listing Tags ----

#[tokio::test]
async fn tags_list_in_case_insensitive_lexical_order() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/order");
    push_tags(reg, &repo, &["b", "A", "a", "C"]).await;
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), 200);
    assert!(next_link(&r).is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], repo.as_str());
    assert_eq!(strings(&body["tags"]), ["A", "a", "b", "C"]);
}

#[tokio::test]
async fn tags_list_n_limits_the_page_and_links_to_the_next() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/page");
    push_tags(reg, &repo, &["t1", "t2", "t3", "t4", "t5"]).await;
    let r = reg.get(&format!("/v2/{repo}/tags/list?n=2")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["link"],
        format!("</v2/{repo}/tags/list?n=2&last=t2>; rel=\"next\"").as_str()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(strings(&body["tags"]), ["t1", "t2"]);
}

#[tokio::test]
async fn following_tags_links_visits_every_tag_exactly_once() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/follow");
    let tags = ["a0", "B1", "b2", "c.3", "c-4", "d_5", "E6"];
    push_tags(reg, &repo, &tags).await;
    let mut path = format!("/v2/{repo}/tags/list?n=3");
    let mut seen = Vec::new();
    for _ in 0..tags.len() + 1 {
        let (page, link) = tags_page(reg, &path).await;
        assert!(page.len() <= 3);
        if link.is_some() {
            assert_eq!(page.len(), 3, "a page followed by a Link must be full");
        }
        seen.extend(page);
        match link {
            Some(next) => path = next,
            None => break,
        }
    }
    let (all, link) = tags_page(reg, &format!("/v2/{repo}/tags/list")).await;
    assert!(link.is_none());
    assert_eq!(all.len(), tags.len());
    assert_eq!(seen, all);
}

#[tokio::test]
async fn tags_list_last_starts_after_that_tag() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/last");
    push_tags(reg, &repo, &["a", "b", "c", "d", "e"]).await;
    let (page, link) = tags_page(reg, &format!("/v2/{repo}/tags/list?last=b")).await;
    assert_eq!(page, ["c", "d", "e"]);
    assert!(link.is_none());
    let (page, link) = tags_page(reg, &format!("/v2/{repo}/tags/list?n=1&last=b")).await;
    assert_eq!(page, ["c"]);
    assert_eq!(
        link.as_deref(),
        Some(format!("/v2/{repo}/tags/list?n=1&last=c").as_str())
    );
}

#[tokio::test]
async fn tags_list_n_zero_is_empty_without_link() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/zero");
    push_tags(reg, &repo, &["a", "b"]).await;
    let (page, link) = tags_page(reg, &format!("/v2/{repo}/tags/list?n=0")).await;
    assert!(page.is_empty());
    assert!(link.is_none());
}

#[tokio::test]
async fn tags_list_of_an_unknown_repository_is_name_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/unknown");
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_error(r, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn tags_list_of_a_directory_holding_only_nested_repositories_is_name_unknown() {
    let reg = TestRegistry::shared();
    let parent = unique_repo("disc-parent");
    reg.push_image(&format!("{parent}/child"), "v1", 1).await;
    let r = reg.get(&format!("/v2/{parent}/tags/list")).await;
    assert_error(r, 404, "NAME_UNKNOWN").await;
}

// ---- Catalog ----

const CATALOG_REPOS: [&str; 6] = ["zeta", "a/b/c", "alpha", "a", "m/n", "alpha-two"];

fn sorted_catalog() -> Vec<String> {
    let mut v: Vec<String> = CATALOG_REPOS.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

async fn push_catalog_repos(reg: &TestRegistry) {
    for repo in CATALOG_REPOS {
        reg.push_image(repo, "latest", 1).await;
    }
}

async fn catalog_page(reg: &TestRegistry, path: &str) -> (Vec<String>, Option<String>) {
    let r = reg.get(path).await;
    assert_eq!(r.status(), 200);
    let link = next_link(&r);
    let body: Value = r.json().await.unwrap();
    (strings(&body["repositories"]), link)
}

#[tokio::test]
async fn catalog_lists_every_repository_in_lexical_order() {
    let reg = TestRegistry::start();
    push_catalog_repos(&reg).await;
    let (all, link) = catalog_page(&reg, "/v2/_catalog").await;
    assert_eq!(all, sorted_catalog());
    assert!(link.is_none());
}

#[tokio::test]
async fn following_catalog_links_visits_every_repository_exactly_once() {
    let reg = TestRegistry::start();
    push_catalog_repos(&reg).await;
    let (first, link) = catalog_page(&reg, "/v2/_catalog?n=4").await;
    assert_eq!(first, sorted_catalog()[..4]);
    assert!(link.is_some());
    let mut seen = first;
    let mut next = link;
    for _ in 0..CATALOG_REPOS.len() {
        let Some(path) = next else { break };
        let (page, link) = catalog_page(&reg, &path).await;
        assert!(page.len() <= 4);
        seen.extend(page);
        next = link;
    }
    assert!(next.is_none());
    assert_eq!(seen, sorted_catalog());
}

#[tokio::test]
async fn catalog_last_starts_after_that_repository() {
    let reg = TestRegistry::start();
    push_catalog_repos(&reg).await;
    let (page, link) = catalog_page(&reg, "/v2/_catalog?last=alpha").await;
    assert_eq!(page, ["alpha-two", "m/n", "zeta"]);
    assert!(link.is_none());
    let (page, link) = catalog_page(&reg, "/v2/_catalog?n=1&last=a").await;
    assert_eq!(page, ["a/b/c"]);
    let next = link.expect("a Link when more repositories follow");
    let (page, _) = catalog_page(&reg, &next).await;
    assert_eq!(page, ["alpha"]);
}

#[tokio::test]
async fn catalog_n_zero_is_empty_without_link() {
    let reg = TestRegistry::start();
    push_catalog_repos(&reg).await;
    let (page, link) = catalog_page(&reg, "/v2/_catalog?n=0").await;
    assert!(page.is_empty());
    assert!(link.is_none());
}

#[tokio::test]
async fn catalog_is_rebuilt_from_disk_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    push_catalog_repos(&reg).await;
    reg.stop();
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    let (all, _) = catalog_page(&reg, "/v2/_catalog").await;
    assert_eq!(all, sorted_catalog());
}

// ---- Listing Referrers ----

const SBOM: &str = "application/vnd.example.sbom.v1+json";
const SIGNATURE: &str = "application/vnd.example.signature.v1";
const EMPTY_CONFIG: &[u8] = b"{}";

/// An artifact manifest: the empty config, one layer, `artifactType`, `subject` and annotations.
/// Its blobs are pushed; the manifest is not.
async fn artifact(
    reg: &TestRegistry,
    repo: &str,
    artifact_type: &str,
    subject: &Digest,
) -> Vec<u8> {
    let layer = random_bytes(64);
    reg.push_blob(repo, EMPTY_CONFIG).await;
    reg.push_blob(repo, &layer).await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(media::OCI_EMPTY, EMPTY_CONFIG),
        "layers": [descriptor("application/vnd.example.data", &layer)],
        "subject": { "mediaType": media::OCI_MANIFEST, "digest": subject.to_string(), "size": 1234 },
        "annotations": { "org.example.kind": artifact_type, "org.opencontainers.image.created": "2024-01-01T00:00:00Z" },
    });
    serde_json::to_vec(&m).unwrap()
}

/// PUTs a manifest by its digest and returns the digest.
async fn put_by_digest(reg: &TestRegistry, repo: &str, media_type: &str, body: &[u8]) -> Digest {
    let digest = Digest::sha256(body);
    let r = reg
        .put_manifest(repo, &digest.to_string(), media_type, body)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    digest
}

async fn referrers(
    reg: &TestRegistry,
    repo: &str,
    subject: &Digest,
    query: &str,
) -> (HeaderMap, Value) {
    let r = reg
        .get(&format!("/v2/{repo}/referrers/{subject}{query}"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], media::OCI_INDEX);
    let headers = r.headers().clone();
    (headers, r.json().await.unwrap())
}

fn listed(index: &Value) -> Vec<String> {
    let mut v: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn referrers_list_artifacts_whose_subject_is_the_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/referrers");
    let image = reg.push_image(&repo, "v1", 1).await;
    let sbom = artifact(reg, &repo, SBOM, &image.digest).await;
    let sbom_digest = put_by_digest(reg, &repo, media::OCI_MANIFEST, &sbom).await;
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], media::OCI_INDEX);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let d = &index["manifests"][0];
    let manifest: Value = serde_json::from_slice(&sbom).unwrap();
    assert_eq!(d["mediaType"], media::OCI_MANIFEST);
    assert_eq!(d["digest"], sbom_digest.to_string().as_str());
    assert_eq!(d["size"], sbom.len());
    assert_eq!(d["artifactType"], SBOM);
    assert_eq!(d["annotations"], manifest["annotations"]);
}

#[tokio::test]
async fn referrers_artifact_type_defaults_to_the_config_media_type() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/config-type");
    let image = reg.push_image(&repo, "v1", 1).await;
    let referrer = TestImage::from_parts(
        b"{\"a\":1}".to_vec(),
        vec![random_bytes(32)],
        Some(image.descriptor()),
    );
    for (_, bytes) in referrer.blobs() {
        reg.push_blob(&repo, bytes).await;
    }
    put_by_digest(reg, &repo, media::OCI_MANIFEST, &referrer.manifest).await;
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(
        index["manifests"][0]["digest"],
        referrer.digest.to_string().as_str()
    );
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/vnd.oci.image.config.v1+json"
    );
}

#[tokio::test]
async fn referrers_index_without_artifact_type_omits_it() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/index-referrer");
    let image = reg.push_image(&repo, "v1", 1).await;
    let index_referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [],
        "subject": image.descriptor(),
        "annotations": { "org.example.note": "an index" },
    }))
    .unwrap();
    let digest = put_by_digest(reg, &repo, media::OCI_INDEX, &index_referrer).await;
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    let d = &index["manifests"][0];
    assert_eq!(d["digest"], digest.to_string().as_str());
    assert_eq!(d["mediaType"], media::OCI_INDEX);
    assert!(d.get("artifactType").is_none(), "{d}");
    assert_eq!(d["annotations"]["org.example.note"], "an index");
}

#[tokio::test]
async fn referrers_filter_by_artifact_type_and_say_so() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/filter");
    let image = reg.push_image(&repo, "v1", 1).await;
    let sbom = artifact(reg, &repo, SBOM, &image.digest).await;
    let sbom_digest = put_by_digest(reg, &repo, media::OCI_MANIFEST, &sbom).await;
    let sig = artifact(reg, &repo, SIGNATURE, &image.digest).await;
    put_by_digest(reg, &repo, media::OCI_MANIFEST, &sig).await;
    let (unfiltered, all) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(listed(&all).len(), 2);
    assert!(unfiltered.get("oci-filters-applied").is_none());
    let (r, index) = referrers(
        reg,
        &repo,
        &image.digest,
        &format!("?artifactType={}", SBOM.replace('+', "%2B")),
    )
    .await;
    assert_eq!(r["oci-filters-applied"], "artifactType");
    assert_eq!(listed(&index), [sbom_digest.to_string()]);
}

#[tokio::test]
async fn referrers_without_matches_are_an_empty_list() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/none");
    let image = reg.push_image(&repo, "v1", 1).await;
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_of_a_digest_that_does_not_exist_are_an_empty_list() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/missing");
    reg.push_image(&repo, "v1", 1).await;
    let absent = Digest::sha256(&random_bytes(16));
    let (_, index) = referrers(reg, &repo, &absent, "").await;
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_pushed_before_their_subject_are_listed() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/early");
    let image = TestImage::random(1);
    let sbom = artifact(reg, &repo, SBOM, &image.digest).await;
    let r = reg
        .put_manifest(
            &repo,
            &Digest::sha256(&sbom).to_string(),
            media::OCI_MANIFEST,
            &sbom,
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["oci-subject"],
        image.digest.to_string().as_str()
    );
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(listed(&index), [Digest::sha256(&sbom).to_string()]);
    for (_, bytes) in image.blobs() {
        reg.push_blob(&repo, bytes).await;
    }
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(listed(&index), [Digest::sha256(&sbom).to_string()]);
}

#[tokio::test]
async fn referrers_include_descriptors_of_the_referrers_tag_schema_index() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/tag-schema");
    let image = reg.push_image(&repo, "v1", 1).await;
    let sbom = artifact(reg, &repo, SBOM, &image.digest).await;
    let sbom_digest = put_by_digest(reg, &repo, media::OCI_MANIFEST, &sbom).await;
    // A manifest pushed by an older client: listed only through the tag schema.
    let legacy = reg.push_image(&repo, "legacy", 1).await;
    let mut legacy_entry = legacy.descriptor();
    legacy_entry["artifactType"] = json!(SIGNATURE);
    legacy_entry["annotations"] = json!({ "org.example.legacy": "yes" });
    let mut sbom_entry = descriptor(media::OCI_MANIFEST, &sbom);
    sbom_entry["artifactType"] = json!(SBOM);
    let schema_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [legacy_entry, sbom_entry],
    }))
    .unwrap();
    let tag = format!("sha256-{}", image.digest.hex());
    let r = reg
        .put_manifest(&repo, &tag, media::OCI_INDEX, &schema_index)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    let mut want = vec![legacy.digest.to_string(), sbom_digest.to_string()];
    want.sort();
    assert_eq!(listed(&index), want, "each referrer exactly once");
    let listed_legacy = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == legacy.digest.to_string().as_str())
        .unwrap();
    assert_eq!(listed_legacy["artifactType"], SIGNATURE);
    assert_eq!(listed_legacy["annotations"]["org.example.legacy"], "yes");
}

#[tokio::test]
async fn referrers_ignore_an_image_manifest_under_the_tag_schema_name() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/schema-image");
    let image = reg.push_image(&repo, "v1", 1).await;
    // Not an index: its layers are not referrers.
    let tag = format!("sha256-{}", image.digest.hex());
    reg.push_image(&repo, &tag, 2).await;
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_are_scoped_to_their_repository() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/scope");
    let other = unique_repo("disc/scope-other");
    let image = reg.push_image(&repo, "v1", 1).await;
    reg.push_image(&other, "v1", 1).await;
    let sbom = artifact(reg, &other, SBOM, &image.digest).await;
    put_by_digest(reg, &other, media::OCI_MANIFEST, &sbom).await;
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(index["manifests"], json!([]));
    let (_, index) = referrers(reg, &other, &image.digest, "").await;
    assert_eq!(listed(&index), [Digest::sha256(&sbom).to_string()]);
}

#[tokio::test]
async fn referrers_are_listed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    let repo = unique_repo("disc/restart");
    let image = reg.push_image(&repo, "v1", 1).await;
    let sbom = artifact(&reg, &repo, SBOM, &image.digest).await;
    put_by_digest(&reg, &repo, media::OCI_MANIFEST, &sbom).await;
    let (_, before) = referrers(&reg, &repo, &image.digest, "").await;
    reg.stop();
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    let (_, after) = referrers(&reg, &repo, &image.digest, "").await;
    assert_eq!(listed(&after), [Digest::sha256(&sbom).to_string()]);
    assert_eq!(after, before);
}

#[tokio::test]
async fn deleting_a_referrer_removes_it_from_the_listing() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("disc/delete");
    let image = reg.push_image(&repo, "v1", 1).await;
    let sbom = artifact(reg, &repo, SBOM, &image.digest).await;
    let sbom_digest = put_by_digest(reg, &repo, media::OCI_MANIFEST, &sbom).await;
    let sig = artifact(reg, &repo, SIGNATURE, &image.digest).await;
    let sig_digest = put_by_digest(reg, &repo, media::OCI_MANIFEST, &sig).await;
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/{repo}/manifests/{sbom_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, index) = referrers(reg, &repo, &image.digest, "").await;
    assert_eq!(listed(&index), [sig_digest.to_string()]);
}
