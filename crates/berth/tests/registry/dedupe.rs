//! Deduplication through the HTTP API with the real server: each blob's bytes live once in
//! `<root>/_cas` and every repository's `blobs/<alg>/<hex>` is a hard link to them; mounts and
//! `HEAD` link blobs other repositories hold; deletes never take bytes from other repositories;
//! layouts written by other tools, and roots written with `dedupe = false`, are deduplicated
//! by the background pass at start-up. Disk assertions use inode numbers and link counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::reqwest;
use berth_testkit::{random_bytes, unique_repo, TestImage, TestRegistry};
use serde_json::{json, Value};

use crate::images::delete;

const MIB: usize = 1 << 20;
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// How long background work (the start-up dedupe pass) may take before a test gives up.
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(20);

fn blob_path(root: &Path, repo: &str, digest: &Digest) -> PathBuf {
    root.join(repo)
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

fn cas_path(root: &Path, digest: &Digest) -> PathBuf {
    root.join("_cas")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

fn meta(path: &Path) -> std::fs::Metadata {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ino(path: &Path) -> u64 {
    meta(path).ino()
}

fn nlink(path: &Path) -> u64 {
    meta(path).nlink()
}

/// Bytes the root really uses: the sizes of its distinct inodes (a file reached by several hard
/// links counts once). The metadata store (`_berth`) is bookkeeping and left out.
fn disk_usage(root: &Path) -> u64 {
    let mut inodes: HashMap<(u64, u64), u64> = HashMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let m = entry.metadata().unwrap();
            if m.is_dir() {
                if dir == root && entry.file_name() == "_berth" {
                    continue;
                }
                stack.push(entry.path());
            } else if m.is_file() {
                inodes.insert((m.dev(), m.ino()), m.len());
            }
        }
    }
    inodes.values().sum()
}

/// Polls `done` every 100 ms until it holds, failing after [`BACKGROUND_DEADLINE`].
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BACKGROUND_DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {BACKGROUND_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An image of `layers` random layers of `size` bytes each and a unique config.
fn image_of(layers: usize, size: usize) -> TestImage {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","nonce":"{}"}}"#,
        Digest::sha256(&random_bytes(16)).hex()
    )
    .into_bytes();
    TestImage::from_parts(
        config,
        (0..layers).map(|_| random_bytes(size)).collect(),
        None,
    )
}

/// Pushes `image` (its blobs, then its manifest under `tag`) to `repo`.
async fn push(reg: &TestRegistry, repo: &str, tag: &str, image: &TestImage) {
    for (_, bytes) in image.blobs() {
        reg.push_blob(repo, bytes).await;
    }
    let r = reg
        .put_manifest(repo, tag, media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201, "PUT manifest: {}", r.text().await.unwrap());
}

/// Every blob of `image` and its manifest, as `(digest, bytes)`.
fn all_blobs(image: &TestImage) -> Vec<(Digest, &[u8])> {
    let mut v = image.blobs();
    v.push((image.digest.clone(), image.manifest.as_slice()));
    v
}

/// The manifest pulls by tag and digest, and every blob pulls byte-identical.
async fn assert_pulls(reg: &TestRegistry, repo: &str, tag: &str, image: &TestImage) {
    for reference in [tag.to_owned(), image.digest.to_string()] {
        let r = reg.get(&format!("/v2/{repo}/manifests/{reference}")).await;
        assert_eq!(r.status(), 200, "{repo}:{reference}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    }
    for (digest, bytes) in image.blobs() {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 200, "{repo}@{digest}");
        assert!(
            r.bytes().await.unwrap().as_ref() == bytes,
            "{repo}@{digest}"
        );
    }
}

async fn tags(reg: &TestRegistry, repo: &str) -> Value {
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), 200, "{repo}/tags/list");
    r.json::<Value>().await.unwrap()["tags"].clone()
}

async fn catalog(reg: &TestRegistry) -> Vec<String> {
    let r = reg.get("/v2/_catalog").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

async fn head_blob(reg: &TestRegistry, repo: &str, digest: &Digest) -> reqwest::Response {
    reg.client
        .head(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap()
}

async fn mount(reg: &TestRegistry, repo: &str, digest: &Digest, from: Option<&str>) -> u16 {
    let from = from.map(|f| format!("&from={f}")).unwrap_or_default();
    reg.client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?mount={digest}{from}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Pushes `data` as a client does: POST a session, PATCH it in 1 MiB chunks, PUT the digest.
async fn push_chunked(reg: &TestRegistry, repo: &str, data: &[u8]) -> u16 {
    let digest = Digest::sha256(data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "POST: {}", r.text().await.unwrap());
    let mut location = r.headers()["location"].to_str().unwrap().to_owned();
    let mut offset = 0;
    for chunk in data.chunks(MIB) {
        let end = offset + chunk.len() - 1;
        let r = reg
            .client
            .patch(reg.url(&location))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{end}"))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "PATCH: {}", r.text().await.unwrap());
        location = r.headers()["location"].to_str().unwrap().to_owned();
        offset = end + 1;
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = reg
        .client
        .put(reg.url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test]
async fn the_same_image_in_twenty_repositories_is_stored_once() {
    let reg = TestRegistry::start();
    let image = image_of(3, MIB);
    let one_image: u64 = all_blobs(&image).iter().map(|(_, b)| b.len() as u64).sum();
    let before = disk_usage(reg.root());
    let repos: Vec<String> = (0..20).map(|_| unique_repo("dedupe/twenty")).collect();
    for repo in &repos {
        push(&reg, repo, "v1", &image).await;
    }
    let grown = disk_usage(reg.root()) - before;
    assert!(
        grown < 2 * one_image,
        "the root grew by {grown} bytes for 20 copies of a {one_image}-byte image"
    );
    assert!(grown >= one_image, "the root grew by only {grown} bytes");
    for (digest, _) in all_blobs(&image) {
        let cas = cas_path(reg.root(), &digest);
        assert_eq!(nlink(&cas), 21, "{digest}: 20 repositories and _cas");
        for repo in &repos {
            assert_eq!(ino(&blob_path(reg.root(), repo, &digest)), ino(&cas));
        }
    }
    for repo in &repos {
        let dir = reg.root().join(repo);
        let layout: Value =
            serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{repo}: {index}");
        assert_eq!(entries[0]["digest"], image.digest.to_string().as_str());
        assert_eq!(entries[0]["annotations"][REF_NAME], "v1");
        for (digest, bytes) in all_blobs(&image) {
            let path = blob_path(reg.root(), repo, &digest);
            assert_eq!(meta(&path).len(), bytes.len() as u64, "{}", path.display());
        }
    }
    assert_pulls(&reg, &repos[19], "v1", &image).await;
}

#[tokio::test]
async fn mount_from_a_repository_links_the_same_inode() {
    let reg = TestRegistry::shared();
    let (a, b) = (
        unique_repo("dedupe/mount-src"),
        unique_repo("dedupe/mount-dst"),
    );
    let data = random_bytes(64 * 1024);
    let digest = reg.push_blob(&a, &data).await;
    assert_eq!(mount(reg, &b, &digest, Some(&a)).await, 201);
    let r = reg.get(&format!("/v2/{b}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().as_ref() == data.as_slice());
    assert_eq!(
        ino(&blob_path(reg.root(), &b, &digest)),
        ino(&blob_path(reg.root(), &a, &digest))
    );
}

#[tokio::test]
async fn mount_without_from_finds_the_blob_in_any_repository() {
    let reg = TestRegistry::shared();
    let (a, b) = (
        unique_repo("dedupe/auto-src"),
        unique_repo("dedupe/auto-dst"),
    );
    let data = random_bytes(32 * 1024);
    let digest = reg.push_blob(&a, &data).await;
    assert_eq!(mount(reg, &b, &digest, None).await, 201);
    let r = reg.get(&format!("/v2/{b}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().as_ref() == data.as_slice());
    assert_eq!(
        ino(&blob_path(reg.root(), &b, &digest)),
        ino(&blob_path(reg.root(), &a, &digest))
    );
}

#[tokio::test]
async fn mount_of_a_digest_nobody_holds_starts_an_upload() {
    let reg = TestRegistry::shared();
    let (a, b) = (
        unique_repo("dedupe/none-src"),
        unique_repo("dedupe/none-dst"),
    );
    let digest = Digest::sha256(&random_bytes(64));
    reg.push_blob(&a, &random_bytes(64)).await;
    assert_eq!(mount(reg, &b, &digest, Some(&a)).await, 202);
    assert_eq!(mount(reg, &b, &digest, None).await, 202);
    let r = reg.get(&format!("/v2/{b}/blobs/{digest}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_repository_holding_only_mounted_blobs_is_not_in_the_catalog() {
    let reg = TestRegistry::shared();
    let (a, b) = (unique_repo("dedupe/cat-src"), unique_repo("dedupe/cat-dst"));
    let image = reg.push_image(&a, "v1", 2).await;
    for (digest, _) in image.blobs() {
        assert_eq!(mount(reg, &b, &digest, Some(&a)).await, 201);
    }
    let listed = catalog(reg).await;
    assert!(listed.contains(&a), "{a} is missing from {listed:?}");
    assert!(!listed.contains(&b), "{b} holds no manifest: {listed:?}");
}

#[tokio::test]
async fn head_of_a_blob_another_repository_holds_links_it() {
    let reg = TestRegistry::shared();
    let (a, b) = (
        unique_repo("dedupe/head-src"),
        unique_repo("dedupe/head-dst"),
    );
    let data = random_bytes(100_000);
    let digest = reg.push_blob(&a, &data).await;
    let r = head_blob(reg, &b, &digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(
        r.headers()["docker-content-digest"],
        digest.to_string().as_str()
    );
    let r = reg.get(&format!("/v2/{b}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().as_ref() == data.as_slice());
    assert_eq!(
        ino(&blob_path(reg.root(), &b, &digest)),
        ino(&blob_path(reg.root(), &a, &digest))
    );
}

#[tokio::test]
async fn a_blob_deleted_from_its_only_repository_is_not_revived() {
    let reg = TestRegistry::shared();
    let (a, c) = (
        unique_repo("dedupe/gone-src"),
        unique_repo("dedupe/gone-dst"),
    );
    let image = reg.push_image(&a, "v1", 1).await;
    let layer = Digest::sha256(&image.layers[0]);
    assert_eq!(
        delete(reg, &format!("/v2/{a}/manifests/{}", image.digest)).await,
        202
    );
    assert_eq!(delete(reg, &format!("/v2/{a}/blobs/{layer}")).await, 202);
    assert_eq!(
        reg.get(&format!("/v2/{a}/blobs/{layer}")).await.status(),
        404
    );
    assert_eq!(head_blob(reg, &c, &layer).await.status(), 404);
    assert_eq!(mount(reg, &c, &layer, Some(&a)).await, 202);
    assert_eq!(mount(reg, &c, &layer, None).await, 202);
    assert_eq!(
        reg.get(&format!("/v2/{c}/blobs/{layer}")).await.status(),
        404
    );
    assert!(!blob_path(reg.root(), &c, &layer).exists());
}

#[tokio::test]
async fn concurrent_pushes_of_one_new_blob_store_it_once() {
    let reg = TestRegistry::shared();
    let (a, b) = (unique_repo("dedupe/race-a"), unique_repo("dedupe/race-b"));
    let data = random_bytes(4 * MIB + 123);
    let digest = Digest::sha256(&data);
    let (sa, sb) = tokio::join!(push_chunked(reg, &a, &data), push_chunked(reg, &b, &data));
    assert_eq!((sa, sb), (201, 201));
    let cas = cas_path(reg.root(), &digest);
    assert_eq!(nlink(&cas), 3, "_cas and the two repositories");
    assert_eq!(ino(&blob_path(reg.root(), &a, &digest)), ino(&cas));
    assert_eq!(ino(&blob_path(reg.root(), &b, &digest)), ino(&cas));
    for repo in [&a, &b] {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.bytes().await.unwrap().as_ref() == data.as_slice(),
            "{repo}"
        );
    }
}

#[tokio::test]
async fn deleting_blobs_from_one_repository_leaves_the_others_whole() {
    let reg = TestRegistry::shared();
    let (a, b) = (
        unique_repo("dedupe/del-blob-a"),
        unique_repo("dedupe/del-blob-b"),
    );
    let image = image_of(2, 256 * 1024);
    push(reg, &a, "v1", &image).await;
    push(reg, &b, "v1", &image).await;
    assert_eq!(
        delete(reg, &format!("/v2/{a}/manifests/{}", image.digest)).await,
        202
    );
    for (digest, _) in image.blobs() {
        assert_eq!(delete(reg, &format!("/v2/{a}/blobs/{digest}")).await, 202);
        assert!(!blob_path(reg.root(), &a, &digest).exists());
    }
    assert_pulls(reg, &b, "v1", &image).await;
    for (digest, bytes) in all_blobs(&image) {
        assert!(std::fs::read(blob_path(reg.root(), &b, &digest)).unwrap() == bytes);
    }
}

#[tokio::test]
async fn deleting_an_image_from_one_repository_leaves_the_others_whole() {
    let reg = TestRegistry::shared();
    let (a, b) = (
        unique_repo("dedupe/del-img-a"),
        unique_repo("dedupe/del-img-b"),
    );
    let image = image_of(2, 256 * 1024);
    push(reg, &a, "v1", &image).await;
    push(reg, &b, "v1", &image).await;
    assert_eq!(
        delete(reg, &format!("/v2/{a}/manifests/{}", image.digest)).await,
        202
    );
    let r = reg.get(&format!("/v2/{a}/manifests/v1")).await;
    assert_eq!(r.status(), 404);
    assert_pulls(reg, &b, "v1", &image).await;
    assert_eq!(tags(reg, &b).await, json!(["v1"]));
    for (digest, bytes) in all_blobs(&image) {
        assert!(std::fs::read(blob_path(reg.root(), &b, &digest)).unwrap() == bytes);
    }
}

#[tokio::test]
async fn a_moved_root_serves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (old_root, new_root) = (dir.path().join("old"), dir.path().join("new"));
    let mut reg = TestRegistry::start_at(&old_root, |_| {});
    let (a, b) = (unique_repo("dedupe/moved-a"), unique_repo("dedupe/moved-b"));
    let image = image_of(2, 64 * 1024);
    push(&reg, &a, "v1", &image).await;
    push(&reg, &b, "v1", &image).await;
    let sbom = TestImage::from_parts(
        br#"{"sbom":true}"#.to_vec(),
        vec![random_bytes(512)],
        Some(image.descriptor()),
    );
    push(&reg, &a, "sbom", &sbom).await;
    reg.stop();
    drop(reg);
    std::fs::rename(&old_root, &new_root).unwrap();
    let reg = TestRegistry::start_at(&new_root, |_| {});
    for repo in [&a, &b] {
        assert_pulls(&reg, repo, "v1", &image).await;
    }
    assert_pulls(&reg, &a, "sbom", &sbom).await;
    assert_eq!(tags(&reg, &a).await, json!(["sbom", "v1"]));
    assert_eq!(tags(&reg, &b).await, json!(["v1"]));
    let r = reg
        .get(&format!("/v2/{a}/referrers/{}", image.digest))
        .await;
    assert_eq!(r.status(), 200);
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    assert_eq!(
        index["manifests"][0]["digest"],
        sbom.digest.to_string().as_str()
    );
    let listed = catalog(&reg).await;
    assert!(listed.contains(&a) && listed.contains(&b), "{listed:?}");
    // The moved root's hard links still share one inode.
    for (digest, _) in all_blobs(&image) {
        assert_eq!(
            ino(&blob_path(&new_root, &a, &digest)),
            ino(&blob_path(&new_root, &b, &digest))
        );
    }
}

#[tokio::test]
async fn an_upload_in_flight_survives_moving_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let (old_root, new_root) = (dir.path().join("old"), dir.path().join("new"));
    let mut reg = TestRegistry::start_at(&old_root, |_| {});
    let repo = unique_repo("dedupe/moved-upload");
    let data = random_bytes(2 * MIB);
    let digest = Digest::sha256(&data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = reg
        .client
        .patch(reg.url(&location))
        .header("content-type", "application/octet-stream")
        .body(data[..MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    reg.stop();
    drop(reg);
    std::fs::rename(&old_root, &new_root).unwrap();
    let reg = TestRegistry::start_at(&new_root, |_| {});
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = reg
        .client
        .put(reg.url(&format!("{location}{sep}digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(data[MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().as_ref() == data.as_slice());
    assert_eq!(
        ino(&blob_path(&new_root, &repo, &digest)),
        ino(&cas_path(&new_root, &digest))
    );
}

/// Writes an OCI Image Layout at `dir` holding `image` tagged `tag`; every blob is a plain file
/// of its own, as another tool writes it.
fn write_layout(dir: &Path, tag: &str, image: &TestImage) {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for (digest, bytes) in all_blobs(image) {
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut entry = image.descriptor();
    entry["annotations"] = json!({ REF_NAME: tag });
    let index = json!({ "schemaVersion": 2, "manifests": [entry] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn config(n: &str) -> Vec<u8> {
    format!(r#"{{"architecture":"amd64","os":"linux","layout":"{n}"}}"#).into_bytes()
}

/// Writes a layout at `<root>/<repo>` tagged `tag` whose one layer file holds bytes that do
/// not match its name. Returns the image and the corrupt layer's digest.
fn write_corrupt_layout(root: &Path, repo: &str, tag: &str) -> (TestImage, Digest) {
    let layer = random_bytes(4096);
    let image = TestImage::from_parts(config(repo), vec![layer.clone()], None);
    write_layout(&root.join(repo), tag, &image);
    let digest = Digest::sha256(&layer);
    let mut flipped = layer;
    flipped[100] ^= 0xff;
    std::fs::write(blob_path(root, repo, &digest), &flipped).unwrap();
    (image, digest)
}

#[tokio::test]
async fn imported_layouts_are_served_and_deduplicated_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The root exists (a berth ran on it) before the layouts are placed under it.
    let mut reg = TestRegistry::start_at(root, |_| {});
    reg.stop();
    drop(reg);
    let layer = random_bytes(512 * 1024);
    let layer_digest = Digest::sha256(&layer);
    let a = TestImage::from_parts(config("a"), vec![layer.clone()], None);
    let b = TestImage::from_parts(config("b"), vec![layer.clone()], None);
    write_layout(&root.join("imp-a"), "a1", &a);
    write_layout(&root.join("imp-b"), "b1", &b);
    // A third layout whose layer file does not hold the bytes its name promises. It sorts
    // before the others, so the background pass has visited it once theirs are linked.
    let (corrupt, bad_digest) = write_corrupt_layout(root, "imp-0", "c1");
    assert_ne!(
        ino(&blob_path(root, "imp-a", &layer_digest)),
        ino(&blob_path(root, "imp-b", &layer_digest))
    );

    let reg = TestRegistry::start_at(root, |_| {});
    assert_pulls(&reg, "imp-a", "a1", &a).await;
    assert_pulls(&reg, "imp-b", "b1", &b).await;
    assert_eq!(tags(&reg, "imp-a").await, json!(["a1"]));
    assert_eq!(tags(&reg, "imp-b").await, json!(["b1"]));
    assert_eq!(tags(&reg, "imp-0").await, json!(["c1"]));
    for reference in ["c1".to_owned(), corrupt.digest.to_string()] {
        let r = reg.get(&format!("/v2/imp-0/manifests/{reference}")).await;
        assert_eq!(r.status(), 200, "imp-0:{reference}");
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            corrupt.manifest.as_slice()
        );
    }
    let config_digest = Digest::sha256(&corrupt.config);
    let r = reg.get(&format!("/v2/imp-0/blobs/{config_digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), corrupt.config.as_slice());
    let listed = catalog(&reg).await;
    for repo in ["imp-0", "imp-a", "imp-b"] {
        assert!(listed.iter().any(|r| r == repo), "{repo} not in {listed:?}");
    }

    let (pa, pb) = (
        blob_path(root, "imp-a", &layer_digest),
        blob_path(root, "imp-b", &layer_digest),
    );
    wait_for("the imported copies of one layer become one inode", || {
        ino(&pa) == ino(&pb)
    })
    .await;
    assert_eq!(ino(&pa), ino(&cas_path(root, &layer_digest)));
    assert_eq!(nlink(&pa), 3);
    // The corrupt layout's sound blobs were adopted, its corrupt one was not.
    for digest in [&config_digest, &corrupt.digest] {
        let path = blob_path(root, "imp-0", digest);
        wait_for("the sound blobs of the third layout are adopted", || {
            let cas = cas_path(root, digest);
            cas.exists() && ino(&path) == ino(&cas)
        })
        .await;
    }
    assert!(
        !cas_path(root, &bad_digest).exists(),
        "a blob whose bytes do not match its name entered _cas"
    );
    assert_eq!(nlink(&blob_path(root, "imp-0", &bad_digest)), 1);
    assert_pulls(&reg, "imp-a", "a1", &a).await;
    assert_pulls(&reg, "imp-b", "b1", &b).await;
}

#[tokio::test]
async fn switching_dedupe_off_and_on_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut reg = TestRegistry::start_at(root, |c| c.storage.dedupe = false);
    let (a, b) = (unique_repo("dedupe/off-a"), unique_repo("dedupe/off-b"));
    let image = image_of(2, 256 * 1024);
    push(&reg, &a, "v1", &image).await;
    push(&reg, &b, "v1", &image).await;
    for (digest, _) in all_blobs(&image) {
        let (pa, pb) = (blob_path(root, &a, &digest), blob_path(root, &b, &digest));
        assert_ne!(ino(&pa), ino(&pb), "{digest}");
        assert_eq!((nlink(&pa), nlink(&pb)), (1, 1), "{digest}");
        assert!(!cas_path(root, &digest).exists(), "{digest} is in _cas");
    }
    reg.stop();
    drop(reg);

    let mut reg = TestRegistry::start_at(root, |c| c.storage.dedupe = true);
    for (digest, _) in all_blobs(&image) {
        let (pa, pb) = (blob_path(root, &a, &digest), blob_path(root, &b, &digest));
        wait_for("copies written without dedupe become one inode", || {
            ino(&pa) == ino(&pb)
        })
        .await;
        assert_eq!(ino(&pa), ino(&cas_path(root, &digest)), "{digest}");
        assert_eq!(nlink(&pa), 3, "{digest}");
    }
    for repo in [&a, &b] {
        assert_pulls(&reg, repo, "v1", &image).await;
    }
    reg.stop();
    drop(reg);

    let reg = TestRegistry::start_at(root, |c| c.storage.dedupe = false);
    for repo in [&a, &b] {
        assert_pulls(&reg, repo, "v1", &image).await;
        assert_eq!(tags(&reg, repo).await, json!(["v1"]));
    }
    // New pushes keep working, with a copy of their own.
    let c = unique_repo("dedupe/off-c");
    push(&reg, &c, "v1", &image).await;
    assert_pulls(&reg, &c, "v1", &image).await;
    let layer = Digest::sha256(&image.layers[0]);
    assert_eq!(nlink(&blob_path(root, &c, &layer)), 1);
    // A mount copies too.
    let d = unique_repo("dedupe/off-d");
    assert_eq!(mount(&reg, &d, &layer, Some(&a)).await, 201);
    assert_ne!(
        ino(&blob_path(root, &d, &layer)),
        ino(&blob_path(root, &a, &layer))
    );
    let r = reg.get(&format!("/v2/{d}/blobs/{layer}")).await;
    assert!(r.bytes().await.unwrap().as_ref() == image.layers[0].as_slice());
}

#[tokio::test]
async fn a_copy_whose_bytes_do_not_match_its_digest_is_never_offered_to_other_repositories() {
    for dedupe in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut reg = TestRegistry::start_at(root, |_| {});
        reg.stop();
        drop(reg);
        let (image, bad) = write_corrupt_layout(root, "imp-corrupt", "v1");
        let reg = TestRegistry::start_at(root, |c| c.storage.dedupe = dedupe);
        let other = unique_repo("dedupe/victim");
        let r = head_blob(&reg, &other, &bad).await;
        assert_eq!(
            r.status(),
            404,
            "dedupe = {dedupe}: HEAD offered corrupt bytes"
        );
        assert_eq!(mount(&reg, &other, &bad, Some("imp-corrupt")).await, 202);
        assert_eq!(mount(&reg, &other, &bad, None).await, 202);
        assert!(!blob_path(root, &other, &bad).exists());
        // The client uploads the real bytes instead, and they are what the repository serves.
        reg.push_blob(&other, &image.layers[0]).await;
        let r = reg.get(&format!("/v2/{other}/blobs/{bad}")).await;
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().as_ref() == image.layers[0].as_slice());
    }
}

#[tokio::test]
async fn head_finds_a_blob_held_by_a_repository_not_yet_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut reg = TestRegistry::start_at(root, |_| {});
    reg.stop();
    drop(reg);
    // Enough layouts that the start-up pass is still busy when the HEAD arrives; the holder
    // sorts last.
    let filler = TestImage::random(1);
    for i in 0..500 {
        write_layout(&root.join(format!("fill-{i:04}")), "v1", &filler);
    }
    let held = TestImage::random(1);
    write_layout(&root.join("zzz"), "v1", &held);
    let layer = Digest::sha256(&held.layers[0]);
    let reg = TestRegistry::start_at(root, |_| {});
    let asker = unique_repo("dedupe/early");
    let r = head_blob(&reg, &asker, &layer).await;
    assert_eq!(r.status(), 200, "a blob that zzz holds was not offered");
    assert_eq!(
        ino(&blob_path(root, &asker, &layer)),
        ino(&blob_path(root, "zzz", &layer))
    );
}
