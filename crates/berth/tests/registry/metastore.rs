//! The metadata store (`<root>/_berth/meta.redb`) is bookkeeping rebuilt from the layouts: a
//! deleted store, or one with a schema version this berth does not know, is recreated at
//! start-up and everything still pulls, lists and answers referrers. Pull statistics reach the
//! store at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use berth_meta::records::{decode, key, TagRecord, SCHEMA_KEY};
use berth_meta::redb::RedbStore;
use berth_meta::{Durability, MetaStore, Table};
use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{random_bytes, unique_repo, TestImage, TestRegistry};
use serde_json::{json, Value};

/// What a test pushes before it stops the server: two repositories sharing an image, a second
/// tag, a referrer of the image and a blob no manifest references.
struct Pushed {
    a: String,
    b: String,
    image: TestImage,
    other: TestImage,
    sbom: TestImage,
    loose: Vec<u8>,
}

async fn push(reg: &TestRegistry, repo: &str, tag: &str, image: &TestImage) {
    for (_, bytes) in image.blobs() {
        reg.push_blob(repo, bytes).await;
    }
    let r = reg
        .put_manifest(repo, tag, media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201, "PUT manifest: {}", r.text().await.unwrap());
}

async fn push_content(reg: &TestRegistry) -> Pushed {
    let (a, b) = (unique_repo("meta/a"), unique_repo("meta/b"));
    let image = TestImage::random(2);
    push(reg, &a, "v1", &image).await;
    push(reg, &b, "v1", &image).await;
    let other = reg.push_image(&a, "v2", 1).await;
    let sbom = TestImage::from_parts(
        br#"{"sbom":true}"#.to_vec(),
        vec![random_bytes(700)],
        Some(image.descriptor()),
    );
    for (_, bytes) in sbom.blobs() {
        reg.push_blob(&a, bytes).await;
    }
    let r = reg
        .put_manifest(
            &a,
            &sbom.digest.to_string(),
            media::OCI_MANIFEST,
            &sbom.manifest,
        )
        .await;
    assert_eq!(r.status(), 201, "PUT referrer: {}", r.text().await.unwrap());
    let loose = random_bytes(3000);
    reg.push_blob(&b, &loose).await;
    Pushed {
        a,
        b,
        image,
        other,
        sbom,
        loose,
    }
}

async fn assert_pulls(reg: &TestRegistry, repo: &str, reference: &str, image: &TestImage) {
    for reference in [reference.to_owned(), image.digest.to_string()] {
        let r = reg.get(&format!("/v2/{repo}/manifests/{reference}")).await;
        assert_eq!(r.status(), 200, "{repo}:{reference}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    }
    for (digest, bytes) in image.blobs() {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 200, "{repo}@{digest}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes, "{repo}@{digest}");
    }
}

async fn tags(reg: &TestRegistry, repo: &str) -> Value {
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), 200, "{repo}/tags/list");
    r.json::<Value>().await.unwrap()["tags"].clone()
}

/// The digests the referrers API lists for `subject`, polled for up to 5 s until non-empty.
async fn referrers(reg: &TestRegistry, repo: &str, subject: &Digest) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = reg.get(&format!("/v2/{repo}/referrers/{subject}")).await;
        assert_eq!(r.status(), 200);
        let index: Value = r.json().await.unwrap();
        let listed: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_owned())
            .collect();
        if !listed.is_empty() || Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything [`push_content`] pushed still pulls, lists and answers referrers.
async fn assert_everything_served(reg: &TestRegistry, p: &Pushed) {
    assert_pulls(reg, &p.a, "v1", &p.image).await;
    assert_pulls(reg, &p.b, "v1", &p.image).await;
    assert_pulls(reg, &p.a, "v2", &p.other).await;
    assert_pulls(reg, &p.a, &p.sbom.digest.to_string(), &p.sbom).await;
    let d = Digest::sha256(&p.loose);
    let r = reg.get(&format!("/v2/{}/blobs/{d}", p.b)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), p.loose.as_slice());
    assert_eq!(tags(reg, &p.a).await, json!(["v1", "v2"]));
    assert_eq!(tags(reg, &p.b).await, json!(["v1"]));
    assert_eq!(
        referrers(reg, &p.a, &p.image.digest).await,
        [p.sbom.digest.to_string()]
    );
    let r = reg.get("/v2/_catalog").await;
    assert_eq!(r.status(), 200);
    let catalog: Value = r.json().await.unwrap();
    let mut want = vec![p.a.clone(), p.b.clone()];
    want.sort();
    assert_eq!(catalog["repositories"], json!(want));
}

fn meta_file(root: &Path) -> std::path::PathBuf {
    root.join("_berth").join("meta.redb")
}

#[tokio::test]
async fn a_deleted_metadata_store_is_rebuilt_from_the_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    let pushed = push_content(&reg).await;
    reg.stop();
    drop(reg);
    std::fs::remove_file(meta_file(dir.path())).unwrap();
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    assert_everything_served(&reg, &pushed).await;
    assert!(meta_file(dir.path()).exists());
}

#[tokio::test]
async fn a_metadata_store_of_an_unknown_schema_is_set_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    let pushed = push_content(&reg).await;
    reg.stop();
    drop(reg);
    set_schema(dir.path(), b"999");
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    let set_aside = set_aside(dir.path());
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_everything_served(&reg, &pushed).await;
    // The new store carries the schema this berth writes; the old one is left as it was.
    drop(reg);
    let store = RedbStore::open(&meta_file(dir.path())).unwrap();
    let schema = store.read().unwrap().get(Table::Info, SCHEMA_KEY).unwrap();
    assert_eq!(schema.as_deref(), Some(b"1".as_slice()));
    let old = RedbStore::open(&dir.path().join("_berth").join(&set_aside[0])).unwrap();
    let schema = old.read().unwrap().get(Table::Info, SCHEMA_KEY).unwrap();
    assert_eq!(schema.as_deref(), Some(b"999".as_slice()));
}

#[tokio::test]
async fn pulls_of_a_tag_are_counted_and_written_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    let repo = unique_repo("meta/pulls");
    reg.push_image(&repo, "v1", 1).await;
    for _ in 0..4 {
        let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
        assert_eq!(r.status(), 200);
    }
    for _ in 0..3 {
        let r = reg
            .client
            .head(reg.url(&format!("/v2/{repo}/manifests/v1")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    reg.stop();
    drop(reg);
    let store = RedbStore::open(&meta_file(dir.path())).unwrap();
    let raw = store
        .read()
        .unwrap()
        .get(Table::Tags, &key::of(&[&repo, "v1"]))
        .unwrap()
        .expect("the tag's record");
    let rec: TagRecord = decode(Table::Tags, &raw).unwrap();
    assert!(rec.pulls >= 7, "{rec:?}");
    assert!(rec.last_pulled.is_some(), "{rec:?}");
}

fn set_schema(root: &Path, version: &[u8]) {
    let store = RedbStore::open(&meta_file(root)).unwrap();
    berth_meta::write(&store, Durability::Durable, |tx| {
        tx.insert(Table::Info, SCHEMA_KEY, version)
    })
    .unwrap();
}

fn set_aside(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("_berth"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("meta.redb.") && n.ends_with(".old"))
        .collect()
}

#[tokio::test]
async fn a_second_store_set_aside_does_not_replace_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    let pushed = push_content(&reg).await;
    reg.stop();
    drop(reg);
    set_schema(dir.path(), b"998");
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    reg.stop();
    drop(reg);
    set_schema(dir.path(), b"999");
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    // Within one test process both starts have the same pid, as every start of a container
    // whose berth is PID 1 does.
    assert_eq!(
        set_aside(dir.path()).len(),
        2,
        "{:?}",
        set_aside(dir.path())
    );
    assert_everything_served(&reg, &pushed).await;
}

#[tokio::test]
async fn content_deleted_before_a_rebuild_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    let a = unique_repo("meta/deleted");
    let image = reg.push_image(&a, "v1", 1).await;
    let layer = Digest::sha256(&image.layers[0]);
    let del = |path: String| {
        let req = reg.client.delete(reg.url(&path));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        del(format!("/v2/{a}/manifests/{}", image.digest)).await,
        202
    );
    assert_eq!(del(format!("/v2/{a}/blobs/{layer}")).await, 202);
    reg.stop();
    drop(reg);
    std::fs::remove_file(meta_file(dir.path())).unwrap();
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    // Let the rebuild finish (the catalog waits for it), then ask for the deleted layer.
    let r = reg.get("/v2/_catalog").await;
    assert_eq!(r.status(), 200);
    let c = unique_repo("meta/asks");
    let r = reg
        .client
        .head(reg.url(&format!("/v2/{c}/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a deleted blob came back");
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{c}/blobs/uploads/?mount={layer}&from={a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = reg.get(&format!("/v2/{a}/manifests/v1")).await;
    assert_eq!(r.status(), 404);
}
