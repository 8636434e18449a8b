//! The one place where a failure becomes an HTTP response: the spec's error body
//! `{"errors":[{"code","message","detail"}]}` ("Error Codes") with the failure's status and the
//! headers the spec asks for (416 carries `Range` or `Content-Range`).

use axum::response::{IntoResponse, Response};
use berth_oci::{ErrorCode, NameError};
use berth_store::{DriverError, MetaError, StoreError};
use http::{HeaderValue, Method, StatusCode};

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown route")]
    RouteUnknown,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static [Method] },
    #[error(transparent)]
    NameInvalid(NameError),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("manifest {0} is not known")]
    ManifestUnknown(String),
    #[error("upload session {0} is not known")]
    UploadUnknown(String),
    #[error("deletes are disabled on this registry ([api] delete_enabled = false)")]
    DeleteDisabled { allow: &'static [Method] },
    #[error("the registry is read-only for maintenance ([storage] read_only = true); pulls work, writes are refused")]
    ReadOnly,
    /// A malformed request header or parameter, with the code the spec gives its endpoint.
    #[error("{detail}")]
    BadRequest { code: ErrorCode, detail: String },
    /// A chunk out of order: 416 with the upload's current `Range` and `Location`.
    #[error("chunk starts at {start} but the upload holds {size} bytes")]
    ChunkOutOfOrder {
        start: u64,
        size: u64,
        location: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// The code, status and detail of this failure. Internal failures get a generic detail;
    /// their cause is logged by [`ApiError::into_response_with_id`].
    fn parts(&self) -> (ErrorCode, StatusCode, bool) {
        use ErrorCode as C;
        let code_default = |c: ErrorCode| {
            (
                c,
                StatusCode::from_u16(c.default_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                false,
            )
        };
        match self {
            ApiError::RouteUnknown => (C::Unsupported, StatusCode::NOT_FOUND, false),
            ApiError::MethodNotAllowed { .. } => code_default(C::Unsupported),
            ApiError::NameInvalid(_) => code_default(C::NameInvalid),
            ApiError::DigestInvalid(_) => code_default(C::DigestInvalid),
            ApiError::TagInvalid(_) => code_default(C::ManifestInvalid),
            ApiError::ManifestUnknown(_) => code_default(C::ManifestUnknown),
            ApiError::UploadUnknown(_) => code_default(C::BlobUploadUnknown),
            ApiError::DeleteDisabled { .. } => code_default(C::Unsupported),
            ApiError::ReadOnly => code_default(C::Unsupported),
            ApiError::BadRequest { code, .. } => (*code, StatusCode::BAD_REQUEST, false),
            ApiError::ChunkOutOfOrder { .. } => (
                C::BlobUploadInvalid,
                StatusCode::RANGE_NOT_SATISFIABLE,
                false,
            ),
            ApiError::Store(e) => match e {
                StoreError::NameUnknown(_) => code_default(C::NameUnknown),
                StoreError::BlobUnknown(_) => code_default(C::BlobUnknown),
                StoreError::ManifestUnknown(_) => code_default(C::ManifestUnknown),
                StoreError::UploadUnknown(_) => code_default(C::BlobUploadUnknown),
                StoreError::DigestInvalid { .. } => code_default(C::DigestInvalid),
                StoreError::ManifestInvalid(_) => code_default(C::ManifestInvalid),
                StoreError::ManifestBlobUnknown(_) => code_default(C::ManifestBlobUnknown),
                StoreError::ManifestTooLarge { .. } => {
                    (C::SizeInvalid, StatusCode::PAYLOAD_TOO_LARGE, false)
                }
                StoreError::ChunkOutOfOrder { .. } => (
                    C::BlobUploadInvalid,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    false,
                ),
                StoreError::SizeInvalid(_) => code_default(C::SizeInvalid),
                StoreError::RangeNotSatisfiable { .. } => {
                    (C::SizeInvalid, StatusCode::RANGE_NOT_SATISFIABLE, false)
                }
                StoreError::Unsupported(_) => code_default(C::Unsupported),
                StoreError::InsufficientSpace { .. } => {
                    (C::Denied, StatusCode::INSUFFICIENT_STORAGE, false)
                }
                StoreError::Body(_) => code_default(C::BlobUploadInvalid),
                StoreError::Driver(DriverError::NoSpace(_)) => {
                    (C::Unknown, StatusCode::INSUFFICIENT_STORAGE, false)
                }
                StoreError::Driver(
                    DriverError::NotFound(_)
                    | DriverError::InvalidPath(_)
                    | DriverError::Unsupported(_)
                    | DriverError::PreconditionFailed(_)
                    | DriverError::Io { .. },
                ) => (C::Unknown, StatusCode::INTERNAL_SERVER_ERROR, true),
                StoreError::Meta(MetaError::NoSpace(_)) => {
                    (C::Unknown, StatusCode::INSUFFICIENT_STORAGE, false)
                }
                StoreError::Corrupt(_)
                | StoreError::Internal(_)
                | StoreError::Meta(
                    MetaError::Engine(_)
                    | MetaError::Corrupt { .. }
                    | MetaError::SchemaVersion { .. }
                    | MetaError::Aborted(_),
                ) => (C::Unknown, StatusCode::INTERNAL_SERVER_ERROR, true),
            },
        }
    }

    /// Builds the response; internal failures are logged once here with the request id, and
    /// the client is told only "internal error" and that id. Every other detail ends with
    /// ` (request id <id>)`, so a user's report can be matched with the access log.
    pub fn into_response_with_id(self, request_id: &str) -> Response {
        let (code, status, internal) = self.parts();
        let detail = if internal {
            tracing::error!(request_id, error = %self, "internal error");
            format!("internal error; request id {request_id}")
        } else if status == StatusCode::INSUFFICIENT_STORAGE && code == ErrorCode::Unknown {
            tracing::warn!(request_id, error = %self, "storage full");
            format!("the registry's storage is full (request id {request_id})")
        } else {
            format!("{self} (request id {request_id})")
        };
        let body = serde_json::json!({
            "errors": [{ "code": code.as_str(), "message": code.message(), "detail": detail }]
        });
        let mut resp = (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        let h = resp.headers_mut();
        match &self {
            ApiError::ReadOnly => {
                h.insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ApiError::MethodNotAllowed { allow } | ApiError::DeleteDisabled { allow } => {
                let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
                if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                    h.insert(http::header::ALLOW, v);
                }
            }
            ApiError::ChunkOutOfOrder { size, location, .. } => {
                if let Ok(v) = HeaderValue::from_str(&crate::upload_range(*size)) {
                    h.insert(http::header::RANGE, v);
                }
                if let Ok(v) = HeaderValue::from_str(location) {
                    h.insert(http::header::LOCATION, v);
                }
            }
            ApiError::Store(StoreError::RangeNotSatisfiable { size }) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(http::header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}
