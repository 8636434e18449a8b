//! Blob push (distribution spec "Pushing blobs", "Pushing a blob in chunks", "Mounting a blob
//! from another repository"), driven through HTTP against the real server.

use berth_testkit::berth_oci::{Algorithm, Digest};
use berth_testkit::{assert_error, header, random_bytes, unique_repo, TestRegistry};

/// `location` with `digest=<digest>` added to its query.
fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// Opens an upload session with `POST` and returns its `Location`.
async fn start_upload(reg: &TestRegistry, repo: &str) -> String {
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    header(&r, "location").to_owned()
}

/// Sends a chunk with `Content-Range: <start>-<end>`.
async fn patch_chunk(
    reg: &TestRegistry,
    location: &str,
    start: usize,
    chunk: &[u8],
) -> reqwest::Response {
    reg.client
        .patch(reg.url(location))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap()
}

/// Sends bytes with a `PATCH` without `Content-Range` (a streamed upload).
async fn patch_stream(reg: &TestRegistry, location: &str, data: &[u8]) -> reqwest::Response {
    reg.client
        .patch(reg.url(location))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

/// Closes a session with `PUT <location>?digest=` and no body.
async fn close(reg: &TestRegistry, location: &str, digest: &Digest) -> reqwest::Response {
    reg.client
        .put(reg.url(&with_digest(location, digest)))
        .header("content-length", "0")
        .send()
        .await
        .unwrap()
}

async fn head_blob(reg: &TestRegistry, repo: &str, digest: &Digest) -> reqwest::Response {
    reg.client
        .head(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap()
}

async fn pull_blob(reg: &TestRegistry, repo: &str, digest: &Digest) -> Vec<u8> {
    let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

async fn post(reg: &TestRegistry, path_and_query: &str) -> reqwest::Response {
    reg.client
        .post(reg.url(path_and_query))
        .header("content-length", "0")
        .send()
        .await
        .unwrap()
}

// ---- Monolithic ----------------------------------------------------------------------------

#[tokio::test]
async fn post_then_put_is_201_with_relative_blob_location_and_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/mono");
    let data = random_bytes(3000);
    let digest = Digest::sha256(&data);
    let location = start_upload(reg, &repo).await;
    let r = reg
        .client
        .put(reg.url(&with_digest(&location, &digest)))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

#[tokio::test]
async fn single_post_with_digest_is_201_and_the_blob_pulls() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/single-post");
    let data = random_bytes(2000);
    let digest = Digest::sha256(&data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

#[tokio::test]
async fn post_is_202_with_location_uuid_range_and_chunk_min_length() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/post");
    let r = post(reg, &format!("/v2/{repo}/blobs/uploads/")).await;
    assert_eq!(r.status(), 202);
    let location = header(&r, "location");
    let uuid = header(&r, "docker-upload-uuid");
    assert!(
        location.starts_with(&format!("/v2/{repo}/blobs/uploads/")),
        "{location}"
    );
    assert!(
        location.contains(uuid),
        "{location} names the session {uuid}"
    );
    assert_eq!(header(&r, "range"), "0-0");
    let min: u64 = header(&r, "oci-chunk-min-length").parse().unwrap();
    assert!(min > 0);
}

#[tokio::test]
async fn zero_length_blob_pushes_and_pulls_back_empty() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/empty");
    let digest = Digest::sha256(b"");
    let location = start_upload(reg, &repo).await;
    let r = close(reg, &location, &digest).await;
    assert_eq!(r.status(), 201);
    let r = head_blob(reg, &repo, &digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "0");
    assert!(pull_blob(reg, &repo, &digest).await.is_empty());
}

#[tokio::test]
async fn sha512_blob_pushed_with_post_then_put_pulls_by_its_sha512_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/sha512");
    let data = random_bytes(1500);
    let digest = Digest::of(Algorithm::Sha512, &data);
    let location = start_upload(reg, &repo).await;
    let r = reg
        .client
        .put(reg.url(&with_digest(&location, &digest)))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

#[tokio::test]
async fn sha512_blob_pushed_with_a_single_post_pulls_by_its_sha512_digest() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/sha512-post");
    let data = random_bytes(1500);
    let digest = Digest::of(Algorithm::Sha512, &data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

// ---- Chunked -------------------------------------------------------------------------------

#[tokio::test]
async fn chunk_is_202_with_range_and_location() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/chunk");
    let location = start_upload(reg, &repo).await;
    let r = patch_chunk(reg, &location, 0, &random_bytes(1000)).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-999");
    assert!(header(&r, "location").starts_with(&format!("/v2/{repo}/blobs/uploads/")));
}

#[tokio::test]
async fn chunked_upload_closes_with_put_digest_and_no_body() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/chunks");
    let data = random_bytes(2500);
    let digest = Digest::sha256(&data);
    let mut location = start_upload(reg, &repo).await;
    for (start, chunk) in [
        (0, &data[..1000]),
        (1000, &data[1000..2000]),
        (2000, &data[2000..]),
    ] {
        let r = patch_chunk(reg, &location, start, chunk).await;
        assert_eq!(r.status(), 202);
        assert_eq!(
            header(&r, "range"),
            format!("0-{}", start + chunk.len() - 1)
        );
        location = header(&r, "location").to_owned();
    }
    let r = close(reg, &location, &digest).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

#[tokio::test]
async fn put_with_the_final_chunk_completes_the_blob() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/final-chunk");
    let data = random_bytes(2000);
    let digest = Digest::sha256(&data);
    let location = start_upload(reg, &repo).await;
    let r = patch_chunk(reg, &location, 0, &data[..1200]).await;
    assert_eq!(r.status(), 202);
    let location = header(&r, "location").to_owned();
    let r = reg
        .client
        .put(reg.url(&with_digest(&location, &digest)))
        .header("content-type", "application/octet-stream")
        .header("content-range", "1200-1999")
        .body(data[1200..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

#[tokio::test]
async fn streamed_patches_without_content_range_append_in_order() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/stream");
    let data = random_bytes(3 * 700);
    let digest = Digest::sha256(&data);
    let mut location = start_upload(reg, &repo).await;
    for (i, part) in data.chunks(700).enumerate() {
        let r = patch_stream(reg, &location, part).await;
        assert_eq!(r.status(), 202);
        assert_eq!(header(&r, "range"), format!("0-{}", (i + 1) * 700 - 1));
        location = header(&r, "location").to_owned();
    }
    let r = close(reg, &location, &digest).await;
    assert_eq!(r.status(), 201);
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

#[tokio::test]
async fn upload_status_is_204_with_range_and_location() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/status");
    let location = start_upload(reg, &repo).await;
    assert_eq!(
        patch_chunk(reg, &location, 0, &random_bytes(512))
            .await
            .status(),
        202
    );
    let r = reg.get(&location).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-511");
    assert_eq!(header(&r, "location"), location);
}

#[tokio::test]
async fn chunk_out_of_order_is_416_with_current_range() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/out-of-order");
    let location = start_upload(reg, &repo).await;
    assert_eq!(
        patch_chunk(reg, &location, 0, &random_bytes(100))
            .await
            .status(),
        202
    );
    let r = patch_chunk(reg, &location, 200, &random_bytes(100)).await;
    assert_eq!(header(&r, "range"), "0-99");
    assert_error(r, 416, "BLOB_UPLOAD_INVALID").await;
}

#[tokio::test]
async fn chunk_out_of_order_leaves_the_upload_unchanged() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/out-of-order-kept");
    let data = random_bytes(200);
    let digest = Digest::sha256(&data);
    let location = start_upload(reg, &repo).await;
    assert_eq!(
        patch_chunk(reg, &location, 0, &data[..100]).await.status(),
        202
    );
    assert_eq!(
        patch_chunk(reg, &location, 50, &data[..100]).await.status(),
        416
    );
    assert_eq!(
        patch_chunk(reg, &location, 100, &data[100..])
            .await
            .status(),
        202
    );
    assert_eq!(close(reg, &location, &digest).await.status(), 201);
    assert_eq!(pull_blob(reg, &repo, &digest).await, data);
}

#[tokio::test]
async fn deleted_upload_is_204_then_its_status_is_404_blob_upload_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/cancel");
    let location = start_upload(reg, &repo).await;
    let r = reg.client.delete(reg.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_error(reg.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

// ---- Closing failures ----------------------------------------------------------------------

/// Uploads `data` in one chunk and closes the session with the digest of other bytes.
async fn close_with_wrong_digest(
    reg: &TestRegistry,
    repo: &str,
    data: &[u8],
) -> (String, reqwest::Response) {
    let location = start_upload(reg, repo).await;
    assert_eq!(patch_chunk(reg, &location, 0, data).await.status(), 202);
    let wrong = Digest::sha256(b"not these bytes");
    let r = close(reg, &location, &wrong).await;
    (location, r)
}

#[tokio::test]
async fn put_with_wrong_digest_is_400_digest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/bad-digest");
    let (_, r) = close_with_wrong_digest(reg, &repo, &random_bytes(300)).await;
    assert_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn put_with_wrong_digest_stores_no_blob() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/bad-digest-nothing");
    let data = random_bytes(300);
    let (_, r) = close_with_wrong_digest(reg, &repo, &data).await;
    assert_eq!(r.status(), 400);
    let wrong = Digest::sha256(b"not these bytes");
    assert_eq!(head_blob(reg, &repo, &wrong).await.status(), 404);
    assert_eq!(
        head_blob(reg, &repo, &Digest::sha256(&data)).await.status(),
        404
    );
}

#[tokio::test]
async fn put_with_wrong_digest_ends_the_session() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/bad-digest-gone");
    let (location, r) = close_with_wrong_digest(reg, &repo, &random_bytes(300)).await;
    assert_eq!(r.status(), 400);
    assert_error(reg.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn single_post_with_wrong_digest_is_400_digest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/single-post-bad");
    let wrong = Digest::sha256(b"not these bytes");
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={wrong}")))
        .header("content-type", "application/octet-stream")
        .body(random_bytes(300))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
    assert_eq!(head_blob(reg, &repo, &wrong).await.status(), 404);
}

#[tokio::test]
async fn closed_upload_is_404_blob_upload_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/closed");
    let data = random_bytes(100);
    let location = start_upload(reg, &repo).await;
    assert_eq!(patch_chunk(reg, &location, 0, &data).await.status(), 202);
    assert_eq!(
        close(reg, &location, &Digest::sha256(&data)).await.status(),
        201
    );
    assert_error(reg.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn put_without_digest_is_400_digest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/no-digest");
    let location = start_upload(reg, &repo).await;
    let r = reg
        .client
        .put(reg.url(&location))
        .header("content-type", "application/octet-stream")
        .body(random_bytes(100))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn upload_id_under_another_repository_is_404_blob_upload_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/owner");
    let other = unique_repo("push/intruder");
    let location = start_upload(reg, &repo).await;
    let id = location.rsplit('/').next().unwrap();
    let r = patch_chunk(
        reg,
        &format!("/v2/{other}/blobs/uploads/{id}"),
        0,
        b"sneaky",
    )
    .await;
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn malformed_upload_id_is_404_blob_upload_unknown() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("push/bad-id");
    let r = reg
        .get(&format!("/v2/{repo}/blobs/uploads/not-a-session..id"))
        .await;
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

// ---- Mount ---------------------------------------------------------------------------------

#[tokio::test]
async fn mount_from_a_repository_holding_the_blob_is_201_with_location() {
    let reg = TestRegistry::shared();
    let from = unique_repo("push/mount-src");
    let to = unique_repo("push/mount-dst");
    let digest = reg.push_blob(&from, &random_bytes(800)).await;
    let r = post(
        reg,
        &format!("/v2/{to}/blobs/uploads/?mount={digest}&from={from}"),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/{to}/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
}

#[tokio::test]
async fn mounted_blob_pulls_from_the_target_repository() {
    let reg = TestRegistry::shared();
    let from = unique_repo("push/mount-src");
    let to = unique_repo("push/mount-dst");
    let data = random_bytes(800);
    let digest = reg.push_blob(&from, &data).await;
    let r = post(
        reg,
        &format!("/v2/{to}/blobs/uploads/?mount={digest}&from={from}"),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(pull_blob(reg, &to, &digest).await, data);
}

#[tokio::test]
async fn mount_of_a_blob_found_nowhere_is_202_with_a_usable_session() {
    let reg = TestRegistry::shared();
    let from = unique_repo("push/mount-lacks");
    let to = unique_repo("push/mount-dst");
    reg.push_blob(&from, &random_bytes(100)).await;
    let data = random_bytes(900);
    let digest = Digest::sha256(&data);
    let r = post(
        reg,
        &format!("/v2/{to}/blobs/uploads/?mount={digest}&from={from}"),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("docker-upload-uuid"));
    let location = header(&r, "location").to_owned();
    let r = reg
        .client
        .put(reg.url(&with_digest(&location, &digest)))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(pull_blob(reg, &to, &digest).await, data);
}

#[tokio::test]
async fn mount_from_a_repository_lacking_the_blob_finds_it_in_another() {
    let reg = TestRegistry::shared();
    let holder = unique_repo("push/mount-holder");
    let lacks = unique_repo("push/mount-lacks");
    let to = unique_repo("push/mount-dst");
    reg.push_blob(&lacks, &random_bytes(100)).await;
    let data = random_bytes(600);
    let digest = reg.push_blob(&holder, &data).await;
    let r = post(
        reg,
        &format!("/v2/{to}/blobs/uploads/?mount={digest}&from={lacks}"),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(pull_blob(reg, &to, &digest).await, data);
}

#[tokio::test]
async fn automatic_mount_without_from_is_201_when_any_repository_holds_the_blob() {
    let reg = TestRegistry::shared();
    let holder = unique_repo("push/auto-holder");
    let to = unique_repo("push/auto-dst");
    let data = random_bytes(700);
    let digest = reg.push_blob(&holder, &data).await;
    let r = post(reg, &format!("/v2/{to}/blobs/uploads/?mount={digest}")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/{to}/blobs/{digest}"));
    assert_eq!(pull_blob(reg, &to, &digest).await, data);
}

#[tokio::test]
async fn mount_of_a_nonexistent_digest_without_from_is_202() {
    let reg = TestRegistry::shared();
    let to = unique_repo("push/auto-miss");
    let digest = Digest::sha256(&random_bytes(64));
    let r = post(reg, &format!("/v2/{to}/blobs/uploads/?mount={digest}")).await;
    assert_eq!(r.status(), 202);
    assert!(header(&r, "location").starts_with(&format!("/v2/{to}/blobs/uploads/")));
}
