//! berth's typed records and their keys. Values are JSON (small, self-describing, readable when
//! debugging); keys are the parts of a record's identity joined by a NUL byte, which no
//! repository name, tag or digest contains, so one repository's keys form a contiguous range.
//!
//! Times are seconds since the Unix epoch.

use std::collections::BTreeMap;

use berth_oci::Digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{MetaError, ReadTx, Result, Table, WriteTx};

/// The schema this berth writes; a store with another version is rebuilt from the layouts.
pub const SCHEMA_VERSION: &str = "1";
/// The `Info` key holding the schema version.
pub const SCHEMA_KEY: &[u8] = b"schema";

/// Builds keys from parts.
pub mod key {
    /// Parts joined by NUL.
    pub fn of(parts: &[&str]) -> Vec<u8> {
        parts.join("\0").into_bytes()
    }

    /// Every key of a record family that starts with `parts` (a NUL follows them).
    pub fn prefix(parts: &[&str]) -> Vec<u8> {
        let mut k = of(parts);
        k.push(0);
        k
    }

    /// The parts of a key.
    pub fn parts(key: &[u8]) -> Vec<String> {
        key.split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

/// Reads and decodes a record.
pub fn get<T: DeserializeOwned>(
    tx: &(impl ReadTx + ?Sized),
    table: Table,
    key: &[u8],
) -> Result<Option<T>> {
    match tx.get(table, key)? {
        Some(v) => decode(table, &v).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes a record.
pub fn put<T: Serialize>(
    tx: &mut (impl WriteTx + ?Sized),
    table: Table,
    key: &[u8],
    value: &T,
) -> Result<()> {
    let v = serde_json::to_vec(value).map_err(|e| MetaError::Corrupt {
        table: table.name(),
        detail: e.to_string(),
    })?;
    tx.insert(table, key, &v)
}

/// Decodes a record read from `table`.
pub fn decode<T: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt {
        table: table.name(),
        detail: e.to_string(),
    })
}

/// A repository. Listed in the catalog while it holds at least one manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    pub created: u64,
    /// Manifests listed in the repository's `index.json`.
    pub manifests: u64,
}

/// A tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    pub pushed: u64,
    #[serde(default)]
    pub last_pulled: Option<u64>,
    #[serde(default)]
    pub pulls: u64,
}

/// A manifest of a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    pub pushed: u64,
    #[serde(default)]
    pub last_pulled: Option<u64>,
    #[serde(default)]
    pub pulls: u64,
    /// Everything the manifest keeps alive: config and layers, or an index's manifests.
    pub refs: Vec<Digest>,
    #[serde(default)]
    pub subject: Option<Digest>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    pub is_index: bool,
    /// False when the manifest could not be parsed (it keeps nothing alive it cannot name).
    #[serde(default = "yes")]
    pub readable: bool,
}

fn yes() -> bool {
    true
}

/// A blob linked into a repository (`<repo>/blobs/<alg>/<hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoBlobRecord {
    pub size: u64,
    /// When the blob was linked into this repository (hard links share one mtime, so file
    /// times cannot tell).
    pub linked: u64,
    /// How many manifests of this repository reference it.
    pub referenced_by: u64,
    /// Since when no manifest references it (None while referenced).
    #[serde(default)]
    pub unreferenced_since: Option<u64>,
}

/// A blob in the content-addressed store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasRecord {
    pub size: u64,
    /// How many repositories link it.
    pub repos: u64,
    /// Since when no repository links it (None while linked).
    #[serde(default)]
    pub unlinked_since: Option<u64>,
}

/// A manifest whose `subject` is another manifest, as the referrers API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrerRecord {
    pub media_type: String,
    pub size: u64,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What kind of signature a [`SignatureRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureKind {
    /// cosign's tag scheme (`sha256-<hex>.sig`): one entry, replaced by a newer signature.
    CosignTag,
    /// cosign through the referrers API: appended.
    CosignReferrer,
    /// Notation (notary v2) through the referrers API: appended.
    Notation,
}

impl SignatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureKind::CosignTag => "cosign_tag",
            SignatureKind::CosignReferrer => "cosign_referrer",
            SignatureKind::Notation => "notation",
        }
    }
}

/// A signature of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRecord {
    pub kind: SignatureKind,
    pub signature: Digest,
    pub pushed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_repository_is_one_key_range() {
        let a = key::prefix(&["a"]);
        assert!(key::of(&["a", "t"]).starts_with(&a));
        assert!(!key::of(&["a/b", "t"]).starts_with(&a));
        assert!(!key::of(&["ab", "t"]).starts_with(&a));
        assert_eq!(key::parts(&key::of(&["a/b", "t"])), ["a/b", "t"]);
    }

    #[test]
    fn records_round_trip() {
        let store = crate::memory::MemStore::default();
        let rec = TagRecord {
            digest: Digest::sha256(b"x"),
            pushed: 5,
            last_pulled: None,
            pulls: 0,
        };
        crate::write(&store, crate::Durability::Durable, |tx| {
            put(tx, Table::Tags, b"k", &rec)
        })
        .unwrap();
        let back: Option<TagRecord> = get(
            crate::MetaStore::read(&store).unwrap().as_ref(),
            Table::Tags,
            b"k",
        )
        .unwrap();
        assert_eq!(back, Some(rec));
    }
}
