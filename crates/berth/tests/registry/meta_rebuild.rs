//! `berth meta rebuild`: rebuilds the metadata store from the layouts, offline, and refuses while
//! a server owns the root.

use berth_testkit::{unique_repo, TestRegistry};

use crate::cli::berth;

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_refuses_while_a_server_owns_the_root() {
    let reg = TestRegistry::start();
    let out = berth(&["meta", "rebuild", "--root", reg.root().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "stderr: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_restores_every_record_from_the_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let repo = unique_repo("rebuild/app");
    let image = {
        let mut reg = TestRegistry::start_at(dir.path(), |_| {});
        let image = reg.push_image(&repo, "v1", 2).await;
        reg.stop();
        image
    };
    let out = berth(&["meta", "rebuild", "--root", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("repositories: 1"), "{stdout}");
    assert!(stdout.contains("manifests: 1"), "{stdout}");
    assert!(stdout.contains("tags: 1"), "{stdout}");
    // config + 2 layers + the manifest
    assert!(stdout.contains("repository blobs: 4"), "{stdout}");
    assert!(std::fs::read_dir(dir.path().join("_berth"))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".old")));
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    let catalog: serde_json::Value = reg.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([repo]));
}
