//! Manifest pull, push and delete (spec "Pulling manifests", "Pushing Manifests", "Deleting
//! Manifests"). The body is read up to `max_manifest_size` and stored exactly as sent.

use axum::body::Body;
use axum::response::Response;
use berth_oci::{Reference, RepoName};
use berth_store::StoreError;
use bytes::BytesMut;
use futures_util::StreamExt;
use http::{header, HeaderName, Method, StatusCode};

use crate::{respond, ApiError, Req, DIGEST_HEADER};

const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");

pub(crate) async fn get(
    req: Req<'_>,
    name: RepoName,
    reference: Reference,
) -> Result<Response, ApiError> {
    let registry = &*req.api.registry;
    let (head, body) = if *req.method == Method::HEAD {
        (
            registry.manifest_head(&name, &reference).await?,
            Body::empty(),
        )
    } else {
        let (head, bytes) = registry.manifest_get(&name, &reference).await?;
        (head, Body::from(bytes))
    };
    Ok(respond(
        StatusCode::OK,
        &[
            (header::CONTENT_TYPE, head.media_type),
            (header::CONTENT_LENGTH, head.size.to_string()),
            (DIGEST_HEADER, head.digest.to_string()),
        ],
        body,
    ))
}

pub(crate) async fn put(
    req: Req<'_>,
    name: RepoName,
    reference: Reference,
) -> Result<Response, ApiError> {
    let limit = req.api.config.max_manifest_size;
    let too_large = || ApiError::Store(StoreError::ManifestTooLarge { limit });
    if let Some(len) = req
        .header(header::CONTENT_LENGTH)
        .and_then(|l| l.trim().parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_owned);
    let registry = &*req.api.registry;
    let mut stream = req.api.body_stream(req.body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::Store(StoreError::Body(e)))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    let put = registry
        .manifest_put(&name, &reference, content_type.as_deref(), buf.freeze())
        .await?;
    let mut headers = vec![
        (
            header::LOCATION,
            format!("/v2/{name}/manifests/{}", put.digest),
        ),
        (DIGEST_HEADER, put.digest.to_string()),
        (header::CONTENT_LENGTH, "0".to_owned()),
    ];
    if let Some(subject) = put.subject {
        headers.push((OCI_SUBJECT, subject.to_string()));
    }
    Ok(respond(StatusCode::CREATED, &headers, Body::empty()))
}

pub(crate) async fn delete(
    req: Req<'_>,
    name: RepoName,
    reference: Reference,
) -> Result<Response, ApiError> {
    if !req.api.config.delete_enabled {
        return Err(ApiError::DeleteDisabled {
            allow: &[Method::GET, Method::HEAD, Method::PUT],
        });
    }
    req.registry()
        .manifest_delete(&name, &reference, req.api.config.detect_manifest_collision)
        .await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        &[(header::CONTENT_LENGTH, "0".into())],
        Body::empty(),
    ))
}
