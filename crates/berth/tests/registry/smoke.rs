//! The shortest round trip: push an image, pull it back by tag and digest, list its tag.

use berth_testkit::{unique_repo, TestRegistry};

#[tokio::test]
async fn push_then_pull_an_image_by_tag_and_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("smoke/app");
    let image = reg.push_image(&repo, "v1", 2).await;
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        image.digest.to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    let r = reg
        .get(&format!("/v2/{repo}/manifests/{}", image.digest))
        .await;
    assert_eq!(r.status(), 200);
    for (digest, bytes) in image.blobs() {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes);
    }
    let tags: serde_json::Value = reg
        .get(&format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert!(reg.root().join(&repo).join("index.json").exists());
    assert!(reg.root().join(&repo).join("oci-layout").exists());
}
