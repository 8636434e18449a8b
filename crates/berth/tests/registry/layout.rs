//! The storage root as OCI Image Layouts (image-spec image-layout.md), checked on disk after
//! pushes over HTTP; layouts written by other tools are served; data survives a restart; and
//! abandoned upload sessions are removed after `upload_timeout`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{random_bytes, unique_repo, TestImage, TestRegistry};
use serde_json::{json, Value};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob_path(root: &Path, repo: &str, digest: &Digest) -> std::path::PathBuf {
    root.join(repo)
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// Asserts that `<root>/<repo>` is an OCI Image Layout: `oci-layout`, an index `index.json`
/// and a `blobs` directory. Returns the parsed `index.json`.
fn assert_layout(root: &Path, repo: &str) -> Value {
    let dir = root.join(repo);
    assert_eq!(
        read_json(&dir.join("oci-layout")),
        json!({ "imageLayoutVersion": "1.0.0" })
    );
    assert!(dir.join("blobs").is_dir(), "{repo}/blobs");
    let index = read_json(&dir.join("index.json"));
    assert_eq!(index["schemaVersion"], 2, "{repo}/index.json: {index}");
    if let Some(mt) = index.get("mediaType") {
        assert_eq!(mt, media::OCI_INDEX);
    }
    assert!(index["manifests"].is_array(), "{repo}/index.json: {index}");
    index
}

/// The `index.json` entries of `digest`.
fn entries<'a>(index: &'a Value, digest: &Digest) -> Vec<&'a Value> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["digest"] == digest.to_string().as_str())
        .collect()
}

async fn assert_image_pulls(reg: &TestRegistry, repo: &str, tag: &str, image: &TestImage) {
    for reference in [tag.to_owned(), image.digest.to_string()] {
        let r = reg.get(&format!("/v2/{repo}/manifests/{reference}")).await;
        assert_eq!(r.status(), 200, "{repo}:{reference}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    }
    for (digest, bytes) in image.blobs() {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 200, "{repo}@{digest}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes);
    }
}

#[tokio::test]
async fn a_pushed_repository_is_an_oci_image_layout() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("layout/app");
    let image = reg.push_image(&repo, "v1", 2).await;
    let index = assert_layout(reg.root(), &repo);
    let listed = entries(&index, &image.digest);
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["mediaType"], media::OCI_MANIFEST);
    assert_eq!(listed[0]["size"], image.manifest.len());
    assert_eq!(listed[0]["annotations"][REF_NAME], "v1");
}

#[tokio::test]
async fn blobs_hold_the_exact_bytes_of_config_layers_and_manifest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("layout/bytes");
    let image = reg.push_image(&repo, "v1", 2).await;
    let manifest = (image.digest.clone(), image.manifest.as_slice());
    for (digest, bytes) in image.blobs().into_iter().chain([manifest]) {
        let on_disk = std::fs::read(blob_path(reg.root(), &repo, &digest)).unwrap();
        assert_eq!(on_disk, bytes, "{digest}");
    }
}

#[tokio::test]
async fn a_nested_repository_and_its_parent_are_both_layouts() {
    let reg = TestRegistry::shared();
    let parent = unique_repo("layout-parent");
    let child = format!("{parent}/b");
    let child_image = reg.push_image(&child, "c", 1).await;
    let parent_image = reg.push_image(&parent, "p", 1).await;
    let parent_index = assert_layout(reg.root(), &parent);
    let child_index = assert_layout(reg.root(), &child);
    assert_eq!(entries(&parent_index, &parent_image.digest).len(), 1);
    assert!(entries(&parent_index, &child_image.digest).is_empty());
    assert_eq!(entries(&child_index, &child_image.digest).len(), 1);
    assert!(entries(&child_index, &parent_image.digest).is_empty());
    assert_image_pulls(reg, &parent, "p", &parent_image).await;
    assert_image_pulls(reg, &child, "c", &child_image).await;
    let tags: Value = reg
        .get(&format!("/v2/{parent}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["p"]));
    let tags: Value = reg
        .get(&format!("/v2/{child}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["c"]));
}

#[tokio::test]
async fn moving_a_tag_leaves_the_old_manifest_listed_untagged() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("layout/move");
    let old = reg.push_image(&repo, "latest", 1).await;
    let new = reg.push_image(&repo, "latest", 1).await;
    let index = assert_layout(reg.root(), &repo);
    let old_entries = entries(&index, &old.digest);
    assert_eq!(old_entries.len(), 1, "{index}");
    assert!(
        old_entries[0]["annotations"].get(REF_NAME).is_none(),
        "{index}"
    );
    let new_entries = entries(&index, &new.digest);
    assert_eq!(new_entries.len(), 1, "{index}");
    assert_eq!(new_entries[0]["annotations"][REF_NAME], "latest");
    let r = reg
        .get(&format!("/v2/{repo}/manifests/{}", old.digest))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn deleting_a_manifest_removes_it_from_index_json_and_blobs() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("layout/delete");
    let gone = reg.push_image(&repo, "gone", 1).await;
    let kept = reg.push_image(&repo, "kept", 1).await;
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/{repo}/manifests/{}", gone.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let index = assert_layout(reg.root(), &repo);
    assert!(entries(&index, &gone.digest).is_empty(), "{index}");
    assert_eq!(entries(&index, &kept.digest).len(), 1, "{index}");
    assert!(!blob_path(reg.root(), &repo, &gone.digest).exists());
}

/// Writes an OCI Image Layout by hand, as another tool would: `image` tagged `tag`.
fn write_layout(dir: &Path, tag: &str, image: &TestImage) {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let manifest = (image.digest.clone(), image.manifest.as_slice());
    for (digest, bytes) in image.blobs().into_iter().chain([manifest]) {
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
    }
    std::fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    let mut entry = image.descriptor();
    entry["annotations"] = json!({ REF_NAME: tag });
    let index = json!({ "schemaVersion": 2, "manifests": [entry] });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_layout_written_before_start_is_served_and_cataloged() {
    let dir = tempfile::tempdir().unwrap();
    let image = TestImage::random(2);
    write_layout(&dir.path().join("imported/app"), "v1", &image);
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    let tags: Value = reg
        .get("/v2/imported/app/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["v1"]));
    assert_image_pulls(&reg, "imported/app", "v1", &image).await;
    let catalog: Value = reg.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["imported/app"]));
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    let repo = unique_repo("layout/restart");
    let first = reg.push_image(&repo, "v1", 2).await;
    let second = reg.push_image(&repo, "v2", 1).await;
    let loose = random_bytes(300);
    let loose_digest = reg.push_blob(&repo, &loose).await;
    reg.stop();
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    assert_image_pulls(&reg, &repo, "v1", &first).await;
    assert_image_pulls(&reg, &repo, "v2", &second).await;
    let r = reg.get(&format!("/v2/{repo}/blobs/{loose_digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), loose.as_slice());
    let tags: Value = reg
        .get(&format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["v1", "v2"]));
}

#[tokio::test]
async fn an_abandoned_upload_is_removed_after_the_upload_timeout() {
    let reg = TestRegistry::start_with(|c| c.storage.upload_timeout = Duration::from_secs(1));
    let repo = unique_repo("layout/abandoned");
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    let r = reg
        .client
        .patch(reg.url(&location))
        .header("content-type", "application/octet-stream")
        .body(random_bytes(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let session_dir = reg.root().join("_uploads").join(&id);
    assert!(session_dir.exists(), "{}", session_dir.display());
    let mut last = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = reg.get(&location).await;
        last = r.status().as_u16();
        if last == 404 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
            assert!(body["errors"][0]["message"].is_string());
            break;
        }
        assert_eq!(last, 204, "an upload's status is 204 until it expires");
    }
    assert_eq!(last, 404, "the upload did not expire within 15s");
    assert!(
        !session_dir.exists(),
        "{} is still there",
        session_dir.display()
    );
}

/// The tags `index.json` on disk names.
fn disk_tags(root: &Path, repo: &str) -> Vec<String> {
    let index = assert_layout(root, repo);
    let mut tags: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["annotations"][REF_NAME].as_str().map(str::to_owned))
        .collect();
    tags.sort();
    tags
}

async fn api_tags(reg: &TestRegistry, repo: &str) -> Vec<String> {
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let mut tags: Vec<String> = serde_json::from_value(body["tags"].clone()).unwrap();
    tags.sort();
    tags
}

/// A large repository records new tags in `_index.journal` (one appended line) instead of
/// rewriting `index.json` per push; the journal is folded into `index.json` within seconds and at
/// shutdown, and a journal left by a crash (even one ending in a torn line) is replayed.
#[tokio::test(flavor = "multi_thread")]
async fn large_repositories_journal_new_tags_and_fold_them_into_index_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let repo = unique_repo("layout/journal");
    let journal = root.join(&repo).join("_index.journal");
    let mut reg = TestRegistry::start_at(root, |c| c.storage.index_journal_from = 3);
    let image = reg.push_image(&repo, "t0", 1).await;
    let mut journaled = 0;
    for i in 1..8 {
        let r = reg
            .put_manifest(
                &repo,
                &format!("t{i}"),
                media::OCI_MANIFEST,
                &image.manifest,
            )
            .await;
        assert_eq!(r.status(), 201);
        // The background fold runs about once a second: it cannot empty the journal after
        // every one of these pushes.
        let lines = std::fs::read_to_string(&journal).unwrap_or_default();
        if lines.contains(&format!("\"t{i}\"")) {
            journaled += 1;
        }
    }
    assert!(journaled > 0, "no tag push was journaled");
    let all: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    assert_eq!(
        api_tags(&reg, &repo).await,
        all,
        "every tag is served at once"
    );
    let r = reg.get(&format!("/v2/{repo}/manifests/t7")).await;
    assert_eq!(r.status(), 200);

    // Folded into index.json by the background pass (about once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while journal.exists() || disk_tags(root, &repo) != all {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal was never folded into index.json: on disk {:?}",
            disk_tags(root, &repo)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A tag pushed right before shutdown is folded in at shutdown.
    let r = reg
        .put_manifest(&repo, "late", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    reg.stop();
    assert!(!journal.exists(), "shutdown folds the journal");
    assert!(disk_tags(root, &repo).contains(&"late".to_owned()));

    // A journal a crash left behind: one complete entry and a torn last line.
    let entry = json!({
        "mediaType": media::OCI_MANIFEST,
        "digest": image.digest.to_string(),
        "size": image.manifest.len(),
        "annotations": { REF_NAME: "from-journal" },
    });
    std::fs::write(&journal, format!("{entry}\n{{\"mediaType\":\"appl")).unwrap();
    let reg = TestRegistry::start_at(root, |c| c.storage.index_journal_from = 3);
    let r = reg.get(&format!("/v2/{repo}/manifests/from-journal")).await;
    assert_eq!(
        r.status(),
        200,
        "a journal entry left by a crash is replayed"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    assert!(api_tags(&reg, &repo)
        .await
        .contains(&"from-journal".to_owned()));

    // A delete rewrites index.json at once, journal included.
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/{repo}/manifests/t1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(!journal.exists(), "a delete folds the journal");
    let tags = disk_tags(root, &repo);
    assert!(tags.contains(&"from-journal".to_owned()) && !tags.contains(&"t1".to_owned()));
}
