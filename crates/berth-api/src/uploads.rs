//! Blob push (spec "Pushing blobs", "Pushing a blob in chunks", "Mounting a blob from another
//! repository"): sessions, chunks, streamed and monolithic uploads, mounts.

use axum::body::Body;
use axum::response::Response;
use berth_oci::{Algorithm, Digest, ErrorCode, RepoName};
use berth_store::UploadId;
use http::{header, StatusCode};

use crate::{respond, upload_range, ApiError, Req, CHUNK_MIN_LENGTH, DIGEST_HEADER, UPLOAD_UUID};

fn location(name: &RepoName, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// A failure of a request on an upload session; an out-of-order chunk answers with the
/// session's location, so the client can ask where to resume.
fn session_error(e: berth_store::StoreError, name: &RepoName, id: &UploadId) -> ApiError {
    match e {
        berth_store::StoreError::ChunkOutOfOrder { start, size } => ApiError::ChunkOutOfOrder {
            start,
            size,
            location: location(name, id),
        },
        e => e.into(),
    }
}

fn blob_created(name: &RepoName, digest: &Digest) -> Response {
    respond(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (DIGEST_HEADER, digest.to_string()),
            (header::CONTENT_LENGTH, "0".into()),
        ],
        Body::empty(),
    )
}

fn session_response(status: StatusCode, name: &RepoName, id: &UploadId, size: u64) -> Response {
    respond(
        status,
        &[
            (header::LOCATION, location(name, id)),
            (header::RANGE, upload_range(size)),
            (UPLOAD_UUID, id.to_string()),
            (header::CONTENT_LENGTH, "0".into()),
        ],
        Body::empty(),
    )
}

fn digest_param(req: &Req<'_>, key: &str) -> Result<Option<Digest>, ApiError> {
    req.query(key)
        .map(|d| Digest::parse(&d).map_err(|e| ApiError::DigestInvalid(e.to_string())))
        .transpose()
}

/// `Content-Range: <start>-<end>` of a chunk (also accepts `bytes <start>-<end>/<total>`).
/// Returns the start, after checking the end against `Content-Length` when both are given.
fn chunk_start(req: &Req<'_>) -> Result<Option<u64>, ApiError> {
    let Some(v) = req.header(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    parse_content_range(v, req.header(header::CONTENT_LENGTH)).map(|(start, _)| Some(start))
}

/// Parses a chunk's `Content-Range` value into `(start, end)` inclusive, `start <= end`, and
/// checks it against the `Content-Length` value when there is one. Public as
/// [`crate::parse::content_range`].
pub fn parse_content_range(v: &str, content_length: Option<&str>) -> Result<(u64, u64), ApiError> {
    let bad = || ApiError::BadRequest {
        code: ErrorCode::BlobUploadInvalid,
        detail: format!("malformed Content-Range {v:?}"),
    };
    let spec = v
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches(['=', ' ']);
    let spec = spec.split('/').next().unwrap_or("");
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    if let Some(len) = content_length {
        let len: u64 = len.trim().parse().map_err(|_| bad())?;
        // `0-18446744073709551615` is 2^64 bytes: no `u64` length matches it.
        if (end - start).checked_add(1) != Some(len) {
            return Err(ApiError::BadRequest {
                code: ErrorCode::SizeInvalid,
                detail: format!("Content-Range {v:?} does not match Content-Length {len}"),
            });
        }
    }
    Ok((start, end))
}

pub(crate) async fn start(req: Req<'_>, name: RepoName) -> Result<Response, ApiError> {
    let registry = &*req.api.registry;
    if let Some(mount) = req.query("mount") {
        if let Ok(digest) = Digest::parse(&mount) {
            // `from` is preferred; without it (or when it lacks the blob) any repository that
            // holds the blob will do (v1.1 automatic mount).
            let from = req
                .query("from")
                .and_then(|f| berth_oci::RepoName::parse(&f).ok());
            if registry.blob_mount(&name, &digest, from.as_ref()).await? {
                return Ok(blob_created(&name, &digest));
            }
        }
    }
    if let Some(digest) = digest_param(&req, "digest")? {
        // Monolithic upload in a single POST.
        let id = registry.upload_start(&name, digest.algorithm()).await?;
        let body = req.api.body_stream(req.body);
        registry
            .upload_finish(&name, &id, &digest, None, Some(body))
            .await?;
        return Ok(blob_created(&name, &digest));
    }
    let id = registry.upload_start(&name, Algorithm::Sha256).await?;
    let mut resp = session_response(StatusCode::ACCEPTED, &name, &id, 0);
    resp.headers_mut()
        .insert("oci-chunk-min-length", CHUNK_MIN_LENGTH.into());
    Ok(resp)
}

pub(crate) async fn patch(
    req: Req<'_>,
    name: RepoName,
    id: UploadId,
) -> Result<Response, ApiError> {
    let start = chunk_start(&req)?;
    let registry = &*req.api.registry;
    let body = req.api.body_stream(req.body);
    let size = registry
        .upload_append(&name, &id, start, body)
        .await
        .map_err(|e| session_error(e, &name, &id))?;
    Ok(session_response(StatusCode::ACCEPTED, &name, &id, size))
}

pub(crate) async fn put(req: Req<'_>, name: RepoName, id: UploadId) -> Result<Response, ApiError> {
    let digest = digest_param(&req, "digest")?.ok_or_else(|| ApiError::BadRequest {
        code: ErrorCode::DigestInvalid,
        detail: "the digest query parameter is required to close an upload".into(),
    })?;
    let start = chunk_start(&req)?;
    let has_body = match req.header(header::CONTENT_LENGTH) {
        Some(len) => len.trim() != "0",
        None => req.headers.contains_key(header::TRANSFER_ENCODING),
    };
    let registry = &*req.api.registry;
    let body = has_body.then(|| req.api.body_stream(req.body));
    registry
        .upload_finish(&name, &id, &digest, start, body)
        .await
        .map_err(|e| session_error(e, &name, &id))?;
    Ok(blob_created(&name, &digest))
}

pub(crate) async fn status(
    req: Req<'_>,
    name: RepoName,
    id: UploadId,
) -> Result<Response, ApiError> {
    let size = req.registry().upload_size(&name, &id).await?;
    Ok(session_response(StatusCode::NO_CONTENT, &name, &id, size))
}

pub(crate) async fn cancel(
    req: Req<'_>,
    name: RepoName,
    id: UploadId,
) -> Result<Response, ApiError> {
    req.registry().upload_cancel(&name, &id).await?;
    Ok(respond(
        StatusCode::NO_CONTENT,
        &[(header::CONTENT_LENGTH, "0".into())],
        Body::empty(),
    ))
}
