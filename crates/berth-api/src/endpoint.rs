//! Request routing: every path of the distribution spec's endpoint table ("Endpoints") parsed
//! into a typed [`Endpoint`]. Repository names may have many components, so the path is parsed
//! here by hand rather than by a pattern router. The path is not percent-decoded, so `%2F`
//! can never become a `/` of a name; only a reference's `:` may arrive as `%3A`.

use berth_oci::{Digest, NameError, Reference, RepoName};
use berth_store::UploadId;
use http::Method;

use crate::error::ApiError;
use crate::observe::Route;

/// A parsed request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/` (end-1)
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list` (end-8)
    Tags { name: RepoName },
    /// `/v2/<name>/manifests/<reference>` (end-3, end-7, end-9)
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>` (end-2, end-10)
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/` (end-4, end-11)
    UploadStart { name: RepoName },
    /// `/v2/<name>/blobs/uploads/<reference>` (end-5, end-6, end-13)
    Upload { name: RepoName, id: UploadId },
    /// `/v2/<name>/referrers/<digest>` (end-12)
    Referrers { name: RepoName, digest: Digest },
}

#[derive(Clone, Copy)]
enum Shape {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    UploadStart,
    Upload,
    Referrers,
}

impl Shape {
    fn allow(self) -> &'static [Method] {
        match self {
            Shape::Base => &[Method::GET, Method::HEAD],
            Shape::Catalog | Shape::Tags | Shape::Referrers => &[Method::GET],
            Shape::Manifest => &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE],
            Shape::Blob => &[Method::GET, Method::HEAD, Method::DELETE],
            Shape::UploadStart => &[Method::POST],
            Shape::Upload => &[Method::GET, Method::PATCH, Method::PUT, Method::DELETE],
        }
    }
}

fn split_shape(path: &str) -> Option<(Shape, &str, &str)> {
    if path == "/v2" || path == "/v2/" {
        return Some((Shape::Base, "", ""));
    }
    let rest = path.strip_prefix("/v2/")?;
    if rest == "_catalog" {
        return Some((Shape::Catalog, "", ""));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((Shape::Tags, name, ""));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some((Shape::UploadStart, name, ""));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some((Shape::Manifest, name, last)),
        "referrers" => Some((Shape::Referrers, name, last)),
        "blobs" => Some((Shape::Blob, name, last)),
        "uploads" => name
            .strip_suffix("/blobs")
            .map(|n| (Shape::Upload, n, last)),
        _ => None,
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl Endpoint {
    /// Parses a request. Unknown paths are `RouteUnknown` (404), a known path with another
    /// method `MethodNotAllowed` (405), then the name, digest or reference are validated.
    pub fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let (shape, name, last) = split_shape(path).ok_or(ApiError::RouteUnknown)?;
        if !shape.allow().contains(method) {
            return Err(ApiError::MethodNotAllowed {
                allow: shape.allow(),
            });
        }
        let repo = || RepoName::parse(name).map_err(ApiError::NameInvalid);
        let digest =
            || Digest::parse(&decode(last)).map_err(|e| ApiError::DigestInvalid(e.to_string()));
        Ok(match shape {
            Shape::Base => Endpoint::Base,
            Shape::Catalog => Endpoint::Catalog,
            Shape::Tags => Endpoint::Tags { name: repo()? },
            Shape::Manifest => {
                let name = repo()?;
                let reference = match Reference::parse(&decode(last)) {
                    Ok(r) => r,
                    Err(NameError::Digest(e)) => {
                        return Err(ApiError::DigestInvalid(e.to_string()))
                    }
                    Err(e) if method == Method::PUT => {
                        return Err(ApiError::TagInvalid(e.to_string()))
                    }
                    Err(_) => return Err(ApiError::ManifestUnknown(last.to_owned())),
                };
                Endpoint::Manifest { name, reference }
            }
            Shape::Blob => Endpoint::Blob {
                name: repo()?,
                digest: digest()?,
            },
            Shape::UploadStart => Endpoint::UploadStart { name: repo()? },
            Shape::Upload => {
                let name = repo()?;
                let id = UploadId::parse(last)
                    .ok_or_else(|| ApiError::UploadUnknown(last.to_owned()))?;
                Endpoint::Upload { name, id }
            }
            Shape::Referrers => Endpoint::Referrers {
                name: repo()?,
                digest: digest()?,
            },
        })
    }

    /// The repository the request names, if any.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { name }
            | Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::UploadStart { name }
            | Endpoint::Upload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }
}

/// The route class of a path: the kind of endpoint it has the shape of (whether or not its
/// name, digest or method are valid), or [`Route::Unknown`].
pub fn route(path: &str) -> Route {
    match split_shape(path) {
        None => Route::Unknown,
        Some((shape, _, _)) => match shape {
            Shape::Base => Route::Base,
            Shape::Catalog => Route::Catalog,
            Shape::Tags => Route::Tags,
            Shape::Manifest => Route::Manifest,
            Shape::Blob => Route::Blob,
            Shape::UploadStart => Route::UploadStart,
            Shape::Upload => Route::Upload,
            Shape::Referrers => Route::Referrers,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(m: Method, p: &str) -> Endpoint {
        Endpoint::parse(&m, p).unwrap()
    }

    #[test]
    fn route_classes_follow_the_path_shape() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(route("/v2/_catalog"), Route::Catalog);
        assert_eq!(route("/v2/a/b/tags/list"), Route::Tags);
        assert_eq!(route("/v2/a/b/manifests/latest"), Route::Manifest);
        assert_eq!(route(&format!("/v2/a/blobs/{D}")), Route::Blob);
        assert_eq!(route("/v2/a/blobs/uploads/"), Route::UploadStart);
        assert_eq!(route("/v2/a/blobs/uploads/x"), Route::Upload);
        assert_eq!(route(&format!("/v2/a/referrers/{D}")), Route::Referrers);
        assert_eq!(route("/v2/a/whatever/x"), Route::Unknown);
        assert_eq!(route("/metrics"), Route::Unknown);
        // The shape decides, not the validity of the name.
        assert_eq!(route("/v2/A!/manifests/x"), Route::Manifest);
    }

    #[test]
    fn parses_every_route_with_nested_names() {
        assert_eq!(ok(Method::GET, "/v2/"), Endpoint::Base);
        assert_eq!(ok(Method::GET, "/v2/_catalog"), Endpoint::Catalog);
        assert!(
            matches!(ok(Method::GET, "/v2/a/b/c/tags/list"), Endpoint::Tags { name } if name.as_str() == "a/b/c")
        );
        assert!(
            matches!(ok(Method::GET, "/v2/a/manifests/manifests/latest"),
            Endpoint::Manifest { name, .. } if name.as_str() == "a/manifests")
        );
        assert!(matches!(
            ok(Method::GET, &format!("/v2/x/blobs/{D}")),
            Endpoint::Blob { .. }
        ));
        assert!(matches!(
            ok(
                Method::GET,
                &format!("/v2/x/blobs/{}", D.replace(':', "%3A"))
            ),
            Endpoint::Blob { .. }
        ));
        assert!(
            matches!(ok(Method::POST, "/v2/x/y/blobs/uploads/"), Endpoint::UploadStart { name } if name.as_str() == "x/y")
        );
        let id = "0b7b6a9e-0c1f-4c83-9a6c-1c0b8a1e2f3d";
        assert!(matches!(
            ok(Method::PATCH, &format!("/v2/x/blobs/uploads/{id}")),
            Endpoint::Upload { .. }
        ));
        assert!(matches!(
            ok(Method::GET, &format!("/v2/x/referrers/{D}")),
            Endpoint::Referrers { .. }
        ));
    }

    #[test]
    fn refuses_unknown_routes_methods_and_names() {
        assert!(matches!(
            Endpoint::parse(&Method::GET, "/v1/"),
            Err(ApiError::RouteUnknown)
        ));
        assert!(matches!(
            Endpoint::parse(&Method::GET, "/v2/x/nothing/y"),
            Err(ApiError::RouteUnknown)
        ));
        assert!(matches!(
            Endpoint::parse(&Method::POST, "/v2/x/tags/list"),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            Endpoint::parse(&Method::GET, "/v2/A/tags/list"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse(&Method::GET, "/v2/a%2Fb/tags/list"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse(&Method::GET, "/v2/../tags/list"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse(&Method::GET, "/v2/a/blobs/sha256:xyz"),
            Err(ApiError::DigestInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse(&Method::PATCH, "/v2/a/blobs/uploads/..%2F..%2Fx"),
            Err(ApiError::UploadUnknown(_))
        ));
    }
}
