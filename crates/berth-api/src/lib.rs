//! The OCI Distribution Specification v1.1 HTTP API over the berth storage engine.
//!
//! One fallback handler receives every request: [`Endpoint::parse`] types it, one `match`
//! dispatches it, and every failure becomes a response in `error.rs`. Handlers translate HTTP
//! to engine calls and back; they hold no state of their own.

mod blobs;
mod discovery;
mod endpoint;
mod error;
mod manifests;
mod observe;
mod uploads;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth_store::{BodyStream, Registry};
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

pub use endpoint::{route, Endpoint};
pub use error::ApiError;
pub use observe::{Exchange, RequestObserver, Route};

/// The request-header parsers, public so that property tests can fuzz them.
pub mod parse {
    pub use crate::blobs::parse_range as range;
    pub use crate::uploads::parse_content_range as content_range;
}

/// Settings of the HTTP API (`[api]` in the configuration file).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Manifests larger than this are refused with 413 `SIZE_INVALID`.
    pub max_manifest_size: u64,
    /// Whether `DELETE` of manifests, tags and blobs is allowed.
    pub delete_enabled: bool,
    /// Refuse deleting a manifest by digest while several tags point at it.
    pub detect_manifest_collision: bool,
    /// Maintenance switch: pulls work, every write is refused (`[storage] read_only`).
    pub read_only: bool,
    /// A request body that sends nothing for this long fails (an idle timeout, not a deadline:
    /// a slow, steady push of any size works).
    pub body_idle_timeout: std::time::Duration,
}

/// The smallest chunk berth asks clients to send (`OCI-Chunk-Min-Length`); every chunk
/// costs a sync, so fewer, larger chunks are faster. Smaller chunks are still accepted.
pub const CHUNK_MIN_LENGTH: u64 = 1 << 20;

/// Shared state of the HTTP API.
pub struct Api {
    registry: Arc<Registry>,
    config: ApiConfig,
    next_request: AtomicU64,
    observer: Option<Arc<dyn RequestObserver>>,
}

impl Api {
    /// The request body as a stream for the engine; a body idle for longer than
    /// `body_idle_timeout` fails with `TimedOut`.
    pub fn body_stream(&self, body: Body) -> BodyStream {
        let idle = self.config.body_idle_timeout;
        let inner = body.into_data_stream().map_err(std::io::Error::other);
        Box::pin(futures_util::stream::unfold(
            Some(inner),
            move |state| async move {
                let mut inner = state?;
                match tokio::time::timeout(idle, inner.next()).await {
                    Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(inner))),
                    Ok(Some(Err(e))) => Some((Err(e), None)),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no request body bytes for {}s ([api] body_idle_timeout)",
                                idle.as_secs()
                            ),
                        )),
                        None,
                    )),
                }
            },
        ))
    }

    pub fn new(registry: Arc<Registry>, config: ApiConfig) -> Arc<Api> {
        Arc::new(Api {
            registry,
            config,
            next_request: AtomicU64::new(1),
            observer: None,
        })
    }

    /// Like [`Api::new`], with every request reported to `observer` (metrics).
    pub fn with_observer(
        registry: Arc<Registry>,
        config: ApiConfig,
        observer: Arc<dyn RequestObserver>,
    ) -> Arc<Api> {
        Arc::new(Api {
            registry,
            config,
            next_request: AtomicU64::new(1),
            observer: Some(observer),
        })
    }
}

/// The axum application: every route goes through [`dispatch`].
pub fn router(api: Arc<Api>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(api)
}

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn dispatch(State(api): State<Arc<Api>>, req: Request) -> Response {
    let id = format!("{:x}", api.next_request.fetch_add(1, Ordering::Relaxed));
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    let mut flight = observe::InFlight::start(
        api.observer.clone(),
        id.clone(),
        method.clone(),
        route(parts.uri.path()),
    );
    let result = match Endpoint::parse(&method, parts.uri.path()) {
        Ok(endpoint) => {
            if let Some(name) = endpoint.name() {
                flight.set_repository(name.as_str());
            }
            let req = Req {
                api: &api,
                method: &method,
                headers: &parts.headers,
                uri: &parts.uri,
                body: flight.request_body(body),
            };
            handle(req, endpoint).await
        }
        Err(e) => Err(e),
    };
    let mut resp = result.unwrap_or_else(|e| e.into_response_with_id(&id));
    let h = resp.headers_mut();
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(REQUEST_ID, v);
    }
    if method == Method::HEAD {
        // HEAD answers carry the headers of GET and no body (RFC 9110 9.3.2).
        let (parts, _) = resp.into_parts();
        resp = Response::from_parts(parts, Body::empty());
    }
    let bytes_out = if method == Method::HEAD {
        0
    } else {
        resp.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| http_body::Body::size_hint(resp.body()).exact())
            .unwrap_or(0)
    };
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let resp = Response::from_parts(parts, flight.response_body(body));
    flight.finish(status, bytes_out);
    resp
}

/// What a handler sees of a request.
pub(crate) struct Req<'a> {
    pub api: &'a Api,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub uri: &'a http::Uri,
    pub body: Body,
}

impl Req<'_> {
    pub fn registry(&self) -> &Registry {
        &self.api.registry
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.uri.query()?;
        url_pairs(q).find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

async fn handle(req: Req<'_>, endpoint: Endpoint) -> Result<Response, ApiError> {
    let writes = matches!(
        *req.method,
        Method::PUT | Method::POST | Method::PATCH | Method::DELETE
    );
    if req.api.config.read_only && writes {
        return Err(ApiError::ReadOnly);
    }
    match endpoint {
        Endpoint::Base => Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response()),
        Endpoint::Catalog => discovery::catalog(req).await,
        Endpoint::Tags { name } => discovery::tags(req, name).await,
        Endpoint::Referrers { name, digest } => discovery::referrers(req, name, digest).await,
        Endpoint::Manifest { name, reference } => match *req.method {
            Method::PUT => manifests::put(req, name, reference).await,
            Method::DELETE => manifests::delete(req, name, reference).await,
            _ => manifests::get(req, name, reference).await,
        },
        Endpoint::Blob { name, digest } => match *req.method {
            Method::DELETE => blobs::delete(req, name, digest).await,
            _ => blobs::get(req, name, digest).await,
        },
        Endpoint::UploadStart { name } => uploads::start(req, name).await,
        Endpoint::Upload { name, id } => match *req.method {
            Method::PATCH => uploads::patch(req, name, id).await,
            Method::PUT => uploads::put(req, name, id).await,
            Method::DELETE => uploads::cancel(req, name, id).await,
            _ => uploads::status(req, name, id).await,
        },
    }
}

/// The `Range` header value of an upload holding `size` bytes ("0-<last byte>"; "0-0" when
/// empty, as clients expect).
pub(crate) fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// Builds a response with a status and headers, ignoring header values that cannot be encoded
/// (every value passed here is ASCII built by berth).
pub(crate) fn respond(
    status: StatusCode,
    headers: &[(HeaderName, String)],
    body: Body,
) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            resp.headers_mut().append(k.clone(), v);
        }
    }
    resp
}

/// `Docker-Content-Digest`.
pub(crate) const DIGEST_HEADER: HeaderName = HeaderName::from_static("docker-content-digest");
/// `Docker-Upload-UUID`.
pub(crate) const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
