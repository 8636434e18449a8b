//! Manifest and index parsing and validation for `PUT /v2/<name>/manifests/<reference>`
//! (distribution spec "Pushing Manifests"; image-spec manifest.md, image-index.md,
//! descriptor.md). The bytes are never re-serialised: berth stores exactly what was sent and
//! keeps only what it needs to know about them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::annotations::Annotations;
use crate::digest::Digest;
use crate::media;

/// A content descriptor (image-spec descriptor.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// Whether a manifest is an image manifest or an index of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (OCI or Docker schema 2): a config and layers.
    Image,
    /// An image index or Docker manifest list: a list of manifests.
    Index,
}

/// Why a manifest is refused (`MANIFEST_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("Docker schema 1 manifests are not supported")]
    Schema1,
    #[error("manifest mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch { body: String, header: String },
    #[error("unsupported schemaVersion {0}, expected 2")]
    SchemaVersion(i64),
    #[error("cannot tell the kind of manifest of media type {0:?}")]
    UnknownKind(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// What berth keeps of a validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The media type it is served with: the body's `mediaType`, else the request's Content-Type.
    pub media_type: String,
    pub kind: Kind,
    /// The config descriptor (image manifests only).
    pub config: Option<Descriptor>,
    /// Layers (image manifests) or the listed manifests (indexes), in order.
    pub entries: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<serde_json::Value>,
    media_type: Option<serde_json::Value>,
    artifact_type: Option<String>,
    config: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    manifests: Option<serde_json::Value>,
    subject: Option<serde_json::Value>,
    annotations: Option<BTreeMap<String, String>>,
    // schema 1 markers
    fs_layers: Option<serde_json::Value>,
}

fn descriptor(what: &str, v: serde_json::Value) -> Result<Descriptor, ManifestError> {
    // A derived `Deserialize` also reads a struct from an array of its fields in order.
    if !v.is_object() {
        return Err(ManifestError::Invalid(format!("{what} must be an object")));
    }
    serde_json::from_value(v).map_err(|e| ManifestError::Invalid(format!("{what}: {e}")))
}

fn descriptors(what: &str, v: Option<serde_json::Value>) -> Result<Vec<Descriptor>, ManifestError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, d)| descriptor(&format!("{what}[{i}]"), d))
            .collect(),
        Some(_) => Err(ManifestError::Invalid(format!("{what} must be an array"))),
    }
}

impl Manifest {
    /// Parses and validates `body` sent with `content_type` (parameters are ignored).
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let header = content_type.map(media::essence).filter(|s| !s.is_empty());
        if header.is_some_and(media::is_schema1) {
            return Err(ManifestError::Schema1);
        }
        // JSON is UTF-8 (RFC 8259 8.1); serde_json does not check the strings it skips.
        let text = std::str::from_utf8(body).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        // `Raw` would also be read from an array of its fields in order: a manifest is an object.
        if !text.trim_start().starts_with('{') {
            return Err(ManifestError::Invalid(
                "a manifest must be a JSON object".into(),
            ));
        }
        let body_type = match raw.media_type {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(_) => return Err(ManifestError::Invalid("mediaType must be a string".into())),
        };
        if raw.fs_layers.is_some() || body_type.as_deref().is_some_and(media::is_schema1) {
            return Err(ManifestError::Schema1);
        }
        if let (Some(b), Some(h)) = (body_type.as_deref(), header) {
            if b != h {
                return Err(ManifestError::MediaTypeMismatch {
                    body: b.to_owned(),
                    header: h.to_owned(),
                });
            }
        }
        let media_type = body_type
            .or_else(|| header.map(str::to_owned))
            .ok_or_else(|| ManifestError::Invalid("no mediaType and no Content-Type".into()))?;
        match raw.schema_version {
            Some(serde_json::Value::Number(n)) if n.as_i64() == Some(2) => {}
            Some(serde_json::Value::Number(n)) => {
                return Err(ManifestError::SchemaVersion(n.as_i64().unwrap_or(-1)))
            }
            Some(_) => {
                return Err(ManifestError::Invalid(
                    "schemaVersion must be a number".into(),
                ))
            }
            None => return Err(ManifestError::Invalid("schemaVersion is missing".into())),
        }
        let kind = if media::is_index(&media_type) {
            Kind::Index
        } else if media::is_image_manifest(&media_type) {
            Kind::Image
        } else if raw.manifests.is_some() && raw.config.is_none() {
            Kind::Index
        } else if raw.config.is_some() {
            Kind::Image
        } else {
            return Err(ManifestError::UnknownKind(media_type));
        };
        let subject = raw.subject.map(|s| descriptor("subject", s)).transpose()?;
        let (config, entries) = match kind {
            Kind::Image => {
                let config = raw
                    .config
                    .ok_or_else(|| ManifestError::Invalid("config is missing".into()))
                    .and_then(|c| descriptor("config", c))?;
                if raw.manifests.is_some() {
                    return Err(ManifestError::Invalid(
                        "an image manifest has no manifests".into(),
                    ));
                }
                (Some(config), descriptors("layers", raw.layers)?)
            }
            Kind::Index => {
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err(ManifestError::Invalid(
                        "an index has no config or layers".into(),
                    ));
                }
                match raw.manifests {
                    Some(m) => (None, descriptors("manifests", Some(m))?),
                    None => return Err(ManifestError::Invalid("manifests is missing".into())),
                }
            }
        };
        Ok(Manifest {
            media_type,
            kind,
            config,
            entries,
            subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    }

    /// Every descriptor that must exist in the repository before this manifest is accepted:
    /// the config and layers of an image, the manifests of an index. Not the subject (spec:
    /// "Pushing Manifests with Subject").
    pub fn references(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.entries.iter())
    }

    /// The `artifactType` a referrers listing reports for this manifest: its own
    /// `artifactType`, else its config's media type (spec: "Listing Referrers").
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":3}}]{extra}}}"#,
            media::OCI_MANIFEST,
            d('a'),
            d('b')
        )
    }

    #[test]
    fn parses_an_image_manifest_with_subject() {
        let body = image(&format!(
            r#","subject":{{"mediaType":"{}","digest":"{}","size":1}},"annotations":{{"k":"v"}}"#,
            media::OCI_MANIFEST,
            d('c')
        ));
        let m = Manifest::parse(
            body.as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Image);
        assert_eq!(m.references().count(), 2);
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), d('c'));
        assert_eq!(
            m.effective_artifact_type(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn media_type_must_agree_with_content_type() {
        let body = image("");
        assert!(matches!(
            Manifest::parse(body.as_bytes(), Some(media::OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
    }

    #[test]
    fn refuses_schema1_garbage_and_bad_descriptors() {
        assert_eq!(
            Manifest::parse(
                br#"{"schemaVersion":1,"fsLayers":[]}"#,
                Some(media::DOCKER_SCHEMA1_SIGNED)
            ),
            Err(ManifestError::Schema1)
        );
        assert!(matches!(
            Manifest::parse(b"not json", Some(media::OCI_MANIFEST)),
            Err(ManifestError::NotJson(_))
        ));
        let bad = image("").replace(&d('b'), "sha256:nothex");
        assert!(matches!(
            Manifest::parse(bad.as_bytes(), None),
            Err(ManifestError::Invalid(_))
        ));
    }

    #[test]
    fn index_without_media_type_takes_the_content_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":5}}]}}"#,
            media::OCI_MANIFEST,
            d('a')
        );
        let m = Manifest::parse(body.as_bytes(), Some(media::OCI_INDEX)).unwrap();
        assert_eq!(
            (m.kind, m.media_type.as_str(), m.entries.len()),
            (Kind::Index, media::OCI_INDEX, 1)
        );
    }
}
