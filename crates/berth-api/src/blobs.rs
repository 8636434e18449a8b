//! Blob pull, existence check and delete (spec "Pulling blobs", "Deleting Blobs"). Bodies
//! stream from storage; a single `Range` is answered 206, an unsatisfiable one 416.

use axum::body::Body;
use axum::response::Response;
use berth_oci::{Digest, RepoName};
use berth_store::{Small, StoreError};
use http::{header, Method, StatusCode};

use crate::{respond, ApiError, Req, DIGEST_HEADER};

/// A blob `GET` (without `Range`) up to this size is read whole in one storage call.
const READ_WHOLE: u64 = 1024 * 1024;

/// The `Range` header of a blob pull against a blob of `size` bytes: `Ok(None)` for the whole
/// blob (no `bytes=` unit, or several ranges), `Ok(Some((first, last)))` inclusive with
/// `first <= last < size`, or 416 when unsatisfiable. Public as [`crate::parse::range`].
pub fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, StoreError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answering the whole blob is allowed (RFC 9110 14.2).
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = StoreError::RangeNotSatisfiable { size };
    let (first, last) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix
                .parse()
                .map_err(|_| StoreError::RangeNotSatisfiable { size })?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        (first, "") => (
            first
                .parse()
                .map_err(|_| StoreError::RangeNotSatisfiable { size })?,
            size.saturating_sub(1),
        ),
        (first, last) => {
            let first: u64 = first
                .parse()
                .map_err(|_| StoreError::RangeNotSatisfiable { size })?;
            let last: u64 = last
                .parse()
                .map_err(|_| StoreError::RangeNotSatisfiable { size })?;
            if last < first {
                return Err(unsatisfiable);
            }
            (first, last.min(size.saturating_sub(1)))
        }
    };
    if first >= size {
        return Err(unsatisfiable);
    }
    Ok(Some((first, last)))
}

pub(crate) async fn get(
    req: Req<'_>,
    name: RepoName,
    digest: Digest,
) -> Result<Response, ApiError> {
    // A whole small blob is read in the same storage call that finds its size.
    let mut whole = None;
    let size = if *req.method == Method::HEAD {
        req.registry().blob_head(&name, &digest).await?
    } else if req.header(header::RANGE).is_none() {
        match req
            .registry()
            .blob_read_small(&name, &digest, READ_WHOLE)
            .await?
        {
            Small::Whole(bytes) => {
                let size = bytes.len() as u64;
                whole = Some(bytes);
                size
            }
            Small::Large(size) => size,
        }
    } else {
        req.registry().blob_size(&name, &digest).await?
    };
    let range = match req.header(header::RANGE) {
        Some(v) => parse_range(v, size)?,
        None => None,
    };
    let (status, offset, len) = match range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut headers = vec![
        (header::CONTENT_LENGTH, len.to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (DIGEST_HEADER, digest.to_string()),
    ];
    if let Some((first, last)) = range {
        headers.push((
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{size}"),
        ));
    }
    let body = if *req.method == Method::HEAD || len == 0 {
        Body::empty()
    } else if let Some(bytes) = whole {
        Body::from(bytes)
    } else {
        Body::from_stream(
            req.registry()
                .blob_read(&name, &digest, offset, len)
                .await?,
        )
    };
    Ok(respond(status, &headers, body))
}

pub(crate) async fn delete(
    req: Req<'_>,
    name: RepoName,
    digest: Digest,
) -> Result<Response, ApiError> {
    if !req.api.config.delete_enabled {
        return Err(ApiError::DeleteDisabled {
            allow: &[Method::GET, Method::HEAD],
        });
    }
    req.registry().blob_delete(&name, &digest).await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        &[(header::CONTENT_LENGTH, "0".into())],
        Body::empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), Some((50, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=5-2", 100).is_err());
        assert!(parse_range("bytes=x-2", 100).is_err());
        assert!(parse_range("bytes=-0", 100).is_err());
    }
}
