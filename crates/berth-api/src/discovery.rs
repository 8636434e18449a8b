//! Content discovery (spec "Listing Tags", "Listing Referrers") and the catalog: lexical
//! order, `n`/`last` pagination with an RFC 5988 `Link` header.

use axum::body::Body;
use axum::response::Response;
use berth_oci::{media, Digest, ErrorCode, RepoName, Tag};
use http::{header, HeaderName, StatusCode};

use crate::{respond, ApiError, Req};

const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

fn page_size(req: &Req<'_>) -> Result<Option<usize>, ApiError> {
    req.query("n")
        .map(|n| {
            n.parse::<usize>().map_err(|_| ApiError::BadRequest {
                code: ErrorCode::Unsupported,
                detail: format!("n must be a non-negative integer, got {n:?}"),
            })
        })
        .transpose()
}

fn json(
    status: StatusCode,
    content_type: &str,
    value: serde_json::Value,
    link: Option<String>,
) -> Response {
    let body = value.to_string();
    let mut headers = vec![
        (header::CONTENT_TYPE, content_type.to_owned()),
        (header::CONTENT_LENGTH, body.len().to_string()),
    ];
    if let Some(link) = link {
        headers.push((header::LINK, link));
    }
    respond(status, &headers, Body::from(body))
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) async fn tags(req: Req<'_>, name: RepoName) -> Result<Response, ApiError> {
    let n = page_size(&req)?;
    let last = req.query("last");
    let all = req.registry().tags(&name).await?;
    let start = match &last {
        Some(l) => all.partition_point(|t| Tag::lexical_cmp(t, l) != std::cmp::Ordering::Greater),
        None => 0,
    };
    let rest = &all[start..];
    let take = n.unwrap_or(rest.len()).min(rest.len());
    let page = &rest[..take];
    let link = match (n, page.last()) {
        (Some(n), Some(last)) if n > 0 && rest.len() > take => Some(format!(
            "</v2/{name}/tags/list?n={n}&last={}>; rel=\"next\"",
            encode(last)
        )),
        _ => None,
    };
    Ok(json(
        StatusCode::OK,
        "application/json",
        serde_json::json!({ "name": name.as_str(), "tags": page }),
        link,
    ))
}

pub(crate) async fn catalog(req: Req<'_>) -> Result<Response, ApiError> {
    let n = page_size(&req)?;
    let last = req.query("last");
    let (page, more) = if n == Some(0) {
        (Vec::new(), false)
    } else {
        req.registry().catalog(n, last.as_deref()).await?
    };
    let link = match (n, page.last()) {
        (Some(n), Some(last)) if more => Some(format!(
            "</v2/_catalog?n={n}&last={}>; rel=\"next\"",
            encode(last)
        )),
        _ => None,
    };
    Ok(json(
        StatusCode::OK,
        "application/json",
        serde_json::json!({ "repositories": page }),
        link,
    ))
}

pub(crate) async fn referrers(
    req: Req<'_>,
    name: RepoName,
    digest: Digest,
) -> Result<Response, ApiError> {
    let mut list = req.registry().referrers(&name, &digest).await?;
    let filter = req.query("artifactType");
    if let Some(t) = &filter {
        list.retain(|d| d.artifact_type.as_deref() == Some(t.as_str()));
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": list,
    });
    let mut resp = json(StatusCode::OK, media::OCI_INDEX, body, None);
    if filter.is_some() {
        resp.headers_mut().insert(
            FILTERS_APPLIED,
            http::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
