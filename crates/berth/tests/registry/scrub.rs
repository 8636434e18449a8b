//! Scrub finds each kind of planted damage and `repair` mends what it claims to, never deleting
//! the only copy of anything.

use berth_store::scrub::{ProblemKind, ScrubOptions, ScrubReport};
use berth_testkit::{unique_repo, TestRegistry};

async fn scrub(reg: &TestRegistry, repair: bool) -> ScrubReport {
    reg.registry
        .scrub(&ScrubOptions { repo: None, repair }, &|_| {})
        .await
        .unwrap()
}

fn kinds(r: &ScrubReport) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind).collect()
}

fn blob_path(reg: &TestRegistry, repo: &str, d: &berth_oci::Digest) -> std::path::PathBuf {
    reg.root()
        .join(repo)
        .join("blobs")
        .join(d.algorithm().as_str())
        .join(d.hex())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_root_has_no_problems() {
    let reg = TestRegistry::start();
    let repo = unique_repo("scrub/clean");
    reg.push_image(&repo, "v1", 2).await;
    let r = scrub(&reg, false).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.manifests_checked, 1);
    assert_eq!(r.blobs_checked, 4);
    assert!(r.bytes_hashed > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_is_found_and_its_verified_twin_relinked() {
    let reg = TestRegistry::start_with(|c| c.storage.dedupe = false);
    let (a, b) = (unique_repo("scrub/a"), unique_repo("scrub/b"));
    let image = reg.push_image(&a, "v1", 1).await;
    for (_, bytes) in image.blobs() {
        reg.push_blob(&b, bytes).await;
    }
    let layer = image.blobs()[1].0.clone();
    let path = blob_path(&reg, &a, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let found = scrub(&reg, false).await;
    let p = found
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::CorruptBlob)
        .expect("corrupt blob reported");
    assert_eq!(p.repository.as_deref(), Some(a.as_str()));
    assert_eq!(p.digest.as_deref(), Some(layer.to_string().as_str()));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a scrub without repair changes nothing"
    );

    let mended = scrub(&reg, true).await;
    assert!(mended
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::CorruptBlob && p.repaired.is_some()));
    let r = reg.get(&format!("/v2/{a}/blobs/{layer}")).await;
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        image.layers[0].as_slice()
    );
    assert!(scrub(&reg, false).await.problems.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_blob_without_a_good_copy_is_quarantined_not_served() {
    let reg = TestRegistry::start();
    let repo = unique_repo("scrub/only");
    let image = reg.push_image(&repo, "v1", 1).await;
    let layer = image.blobs()[1].0.clone();
    let path = blob_path(&reg, &repo, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let r = scrub(&reg, true).await;
    assert!(kinds(&r).contains(&ProblemKind::CorruptBlob));
    assert_eq!(
        reg.get(&format!("/v2/{repo}/blobs/{layer}")).await.status(),
        404,
        "corrupt bytes are no longer served"
    );
    let quarantined = reg
        .root()
        .join("_berth/quarantine")
        .join(&repo)
        .join(layer.hex());
    assert_eq!(
        std::fs::read(quarantined).unwrap(),
        bytes,
        "the only copy is kept aside, not deleted"
    );
    // Pushing the blob again heals the image.
    reg.push_blob(&repo, &image.layers[0]).await;
    assert_eq!(
        reg.get(&format!("/v2/{repo}/blobs/{layer}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        image.layers[0].as_slice()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_blob_is_relinked_from_the_shared_store() {
    let reg = TestRegistry::start();
    let repo = unique_repo("scrub/missing");
    let image = reg.push_image(&repo, "v1", 1).await;
    let layer = image.blobs()[1].0.clone();
    std::fs::remove_file(blob_path(&reg, &repo, &layer)).unwrap();
    let found = scrub(&reg, false).await;
    let p = found
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::MissingReference)
        .expect("missing reference reported");
    assert_eq!(p.tags, vec!["v1".to_string()]);
    assert_eq!(p.digest.as_deref(), Some(image.digest.to_string().as_str()));
    let mended = scrub(&reg, true).await;
    assert!(mended
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::MissingReference && p.repaired.is_some()));
    let r = reg.get(&format!("/v2/{repo}/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        image.layers[0].as_slice()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dangling_index_entry_is_dropped_and_said_so() {
    let reg = TestRegistry::start();
    let repo = unique_repo("scrub/dangling");
    let keep = reg.push_image(&repo, "keep", 1).await;
    let gone = reg.push_image(&repo, "gone", 1).await;
    std::fs::remove_file(blob_path(&reg, &repo, &gone.digest)).unwrap();
    std::fs::remove_file(reg.root().join("_cas/sha256").join(gone.digest.hex())).unwrap();
    let r = scrub(&reg, true).await;
    let p = r
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::MissingManifest)
        .expect("dangling entry reported");
    assert!(p.repaired.as_deref().unwrap().contains("dropped"));
    let index = std::fs::read_to_string(reg.root().join(&repo).join("index.json")).unwrap();
    assert!(!index.contains(&gone.digest.to_string()));
    assert!(index.contains(&keep.digest.to_string()));
    let tags: serde_json::Value = reg
        .get(&format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["keep"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_drift_is_reported_and_reconciled() {
    let reg = TestRegistry::start();
    let repo = unique_repo("scrub/drift");
    reg.push_image(&repo, "v1", 1).await;
    reg.push_image(&repo, "v2", 1).await;
    // Someone edits index.json by hand: v2's entry goes.
    let path = reg.root().join(&repo).join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != "v2");
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    let found = scrub(&reg, false).await;
    assert!(
        kinds(&found).contains(&ProblemKind::MetadataDrift),
        "{:?}",
        found.problems
    );
    let mended = scrub(&reg, true).await;
    assert!(mended
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::MetadataDrift && p.repaired.is_some()));
    let tags: serde_json::Value = reg
        .get(&format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert!(scrub(&reg, false).await.problems.is_empty());
}
