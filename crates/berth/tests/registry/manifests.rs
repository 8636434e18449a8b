//! Manifest push (distribution spec "Pushing Manifests", "Pushing Manifests with Subject"),
//! driven through HTTP against the real server.

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{
    assert_error, descriptor, header, random_bytes, unique_repo, TestImage, TestRegistry,
};
use futures_util::stream;
use serde_json::{json, Value};

const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Pushes the config and layers of `image` without its manifest.
async fn push_blobs(reg: &TestRegistry, repo: &str, image: &TestImage) {
    for (_, bytes) in image.blobs() {
        reg.push_blob(repo, bytes).await;
    }
}

/// An image whose blobs are in `repo`, its manifest not yet pushed.
async fn image_with_blobs(reg: &TestRegistry, repo: &str) -> TestImage {
    let image = TestImage::random(1);
    push_blobs(reg, repo, &image).await;
    image
}

/// An OCI image manifest over the given config and layers, with `annotations`.
fn manifest_with_annotations(config: &[u8], layers: &[Vec<u8>], annotations: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(CONFIG, config),
        "layers": layers.iter().map(|l| descriptor(LAYER, l)).collect::<Vec<_>>(),
        "annotations": annotations,
    }))
    .unwrap()
}

/// A manifest of `image`'s blobs padded with an annotation to exactly `size` bytes.
fn manifest_of_size(image: &TestImage, size: usize) -> Vec<u8> {
    let bare = manifest_with_annotations(&image.config, &image.layers, json!({ "pad": "" }));
    let pad = "x".repeat(size - bare.len());
    let m = manifest_with_annotations(&image.config, &image.layers, json!({ "pad": pad }));
    assert_eq!(m.len(), size);
    m
}

/// PUTs a manifest as a streamed body, so it travels without `Content-Length`.
async fn put_streamed(
    reg: &TestRegistry,
    repo: &str,
    reference: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(512).map(|c| Ok(c.to_vec())).collect();
    reg.client
        .put(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", media::OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn put_by_tag_is_201_with_location_and_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/tag");
    let image = image_with_blobs(reg, &repo).await;
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(&r, "docker-content-digest"),
        image.digest.to_string()
    );
    assert_eq!(
        header(&r, "location"),
        format!("/v2/{repo}/manifests/{}", image.digest)
    );
}

#[tokio::test]
async fn put_location_is_a_pullable_manifest_url() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/location");
    let image = image_with_blobs(reg, &repo).await;
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &image.manifest)
        .await;
    let location = header(&r, "location").to_owned();
    let r = reg.get(&location).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
}

#[tokio::test]
async fn put_by_digest_is_201_with_location_and_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/by-digest");
    let image = image_with_blobs(reg, &repo).await;
    let digest = image.digest.to_string();
    let r = reg
        .put_manifest(&repo, &digest, media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/{repo}/manifests/{digest}")
    );
}

#[tokio::test]
async fn put_by_digest_not_matching_the_body_is_400_digest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/digest-mismatch");
    let image = image_with_blobs(reg, &repo).await;
    let other = Digest::sha256(b"some other manifest");
    let r = reg
        .put_manifest(
            &repo,
            &other.to_string(),
            media::OCI_MANIFEST,
            &image.manifest,
        )
        .await;
    assert_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn manifest_bytes_are_stored_exactly_as_sent() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/exact");
    let image = image_with_blobs(reg, &repo).await;
    let d = |m: &str, b: &[u8]| serde_json::to_string_pretty(&descriptor(m, b)).unwrap();
    let body = format!(
        "{{\r\n\t\"schemaVersion\" :   2 ,\n    \"mediaType\":\"{}\",\n\n  \"config\" :{},\n\"layers\" : [ {} ]   }}\n\n",
        media::OCI_MANIFEST,
        d(CONFIG, &image.config),
        d(LAYER, &image.layers[0]),
    )
    .into_bytes();
    let digest = Digest::sha256(&body);
    let r = reg
        .put_manifest(&repo, "pretty", media::OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    let r = reg.get(&format!("/v2/{repo}/manifests/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn manifest_with_a_missing_layer_is_400_manifest_blob_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/missing-layer");
    let image = TestImage::random(2);
    reg.push_blob(&repo, &image.config).await;
    reg.push_blob(&repo, &image.layers[0]).await;
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_with_a_missing_layer_is_not_stored() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/missing-layer-kept-out");
    let image = TestImage::random(2);
    reg.push_blob(&repo, &image.config).await;
    reg.push_blob(&repo, &image.layers[0]).await;
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 400);
    let r = reg
        .get(&format!("/v2/{repo}/manifests/{}", image.digest))
        .await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_with_a_missing_config_is_400_manifest_blob_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/missing-config");
    let image = TestImage::random(1);
    reg.push_blob(&repo, &image.layers[0]).await;
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_that_is_not_json_is_400_manifest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/not-json");
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, b"this is not { json")
        .await;
    assert_error(r, 400, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn media_type_disagreeing_with_content_type_is_400_manifest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/type-mismatch");
    let image = image_with_blobs(reg, &repo).await;
    let r = reg
        .put_manifest(&repo, "v1", media::DOCKER_MANIFEST, &image.manifest)
        .await;
    assert_error(r, 400, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn content_type_parameters_are_ignored() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/ct-params");
    let image = image_with_blobs(reg, &repo).await;
    let content_type = format!("{}; charset=utf-8", media::OCI_MANIFEST);
    let r = reg
        .put_manifest(&repo, "v1", &content_type, &image.manifest)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(header(&r, "content-type"), media::OCI_MANIFEST);
}

#[tokio::test]
async fn docker_schema1_manifest_is_400_manifest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/schema1");
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 1,
        "name": repo,
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{ "blobSum": Digest::sha256(b"layer").to_string() }],
        "history": [{ "v1Compatibility": "{}" }],
        "signatures": [],
    }))
    .unwrap();
    let r = reg
        .put_manifest(&repo, "v1", media::DOCKER_SCHEMA1_SIGNED, &body)
        .await;
    assert_error(r, 400, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn manifest_over_max_manifest_size_is_413_size_invalid() {
    let reg = TestRegistry::start_with(|c| c.api.max_manifest_size = 2048);
    let repo = unique_repo("manifests/too-big");
    let image = image_with_blobs(&reg, &repo).await;
    let body = manifest_of_size(&image, 3000);
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &body)
        .await;
    assert_error(r, 413, "SIZE_INVALID").await;
}

#[tokio::test]
async fn manifest_over_max_manifest_size_without_content_length_is_413_size_invalid() {
    let reg = TestRegistry::start_with(|c| c.api.max_manifest_size = 2048);
    let repo = unique_repo("manifests/too-big-streamed");
    let image = image_with_blobs(&reg, &repo).await;
    let r = put_streamed(&reg, &repo, "v1", manifest_of_size(&image, 3000)).await;
    assert_error(r, 413, "SIZE_INVALID").await;
}

#[tokio::test]
async fn manifest_of_exactly_max_manifest_size_is_accepted() {
    let reg = TestRegistry::start_with(|c| c.api.max_manifest_size = 2048);
    let repo = unique_repo("manifests/at-limit");
    let image = image_with_blobs(&reg, &repo).await;
    let r = reg
        .put_manifest(
            &repo,
            "v1",
            media::OCI_MANIFEST,
            &manifest_of_size(&image, 2048),
        )
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn manifest_whose_subject_does_not_exist_is_201_with_oci_subject() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/subject");
    let config = br#"{"kind":"signature"}"#.to_vec();
    let layers = vec![random_bytes(256)];
    let absent = random_bytes(512);
    let subject = descriptor(media::OCI_MANIFEST, &absent);
    let image = TestImage::from_parts(config, layers, Some(subject));
    push_blobs(reg, &repo, &image).await;
    let r = reg
        .put_manifest(
            &repo,
            &image.digest.to_string(),
            media::OCI_MANIFEST,
            &image.manifest,
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(&r, "oci-subject"),
        Digest::sha256(&absent).to_string()
    );
}

#[tokio::test]
async fn index_listing_a_plain_blob_is_accepted() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/cache-index");
    let cache_config = br#"{"layers":[],"records":[]}"#.to_vec();
    let layer = random_bytes(1024);
    reg.push_blob(&repo, &cache_config).await;
    reg.push_blob(&repo, &layer).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer),
            descriptor("application/vnd.buildkit.cacheconfig.v0", &cache_config),
        ],
    }))
    .unwrap();
    let r = reg
        .put_manifest(&repo, "buildcache", media::OCI_INDEX, &index)
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn index_listing_a_manifest_not_in_the_repository_is_400_manifest_blob_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/index-missing");
    let present = image_with_blobs(reg, &repo).await;
    let r = reg
        .put_manifest(
            &repo,
            &present.digest.to_string(),
            media::OCI_MANIFEST,
            &present.manifest,
        )
        .await;
    assert_eq!(r.status(), 201);
    let absent = TestImage::random(1);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [present.descriptor(), absent.descriptor()],
    }))
    .unwrap();
    let r = reg
        .put_manifest(&repo, "multi", media::OCI_INDEX, &index)
        .await;
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn moving_a_tag_resolves_it_to_the_new_manifest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/move");
    reg.push_image(&repo, "latest", 1).await;
    let newer = reg.push_image(&repo, "latest", 1).await;
    let r = reg.get(&format!("/v2/{repo}/manifests/latest")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest"),
        newer.digest.to_string()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), newer.manifest.as_slice());
}

#[tokio::test]
async fn moving_a_tag_keeps_the_old_manifest_pullable_by_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("manifests/move-old");
    let older = reg.push_image(&repo, "latest", 1).await;
    reg.push_image(&repo, "latest", 1).await;
    let r = reg
        .get(&format!("/v2/{repo}/manifests/{}", older.digest))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), older.manifest.as_slice());
}
