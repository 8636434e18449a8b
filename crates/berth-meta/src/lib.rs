//! The metadata seam: a few named tables of byte keys and values, read from snapshots and changed
//! in transactions. The embedded engine ([`redb::RedbStore`]) and the in-memory one
//! ([`memory::MemStore`]) implement it; a shared database can implement it later for several
//! replicas. All of berth's bookkeeping is written once above it, over the typed records of
//! [`records`].
//!
//! Every implementation passes [`conformance::run_all`].

use std::ops::Bound;

pub mod conformance;
pub mod memory;
pub mod records;
pub mod redb;

/// The tables of the metadata store. Keys are built by [`records::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Schema version and other facts about the store itself.
    Info,
    /// repository -> [`records::RepoRecord`]
    Repos,
    /// (repository, tag) -> [`records::TagRecord`]
    Tags,
    /// (repository, manifest digest) -> [`records::ManifestRecord`]
    Manifests,
    /// (repository, blob digest) -> [`records::RepoBlobRecord`]: a blob linked into a repository.
    RepoBlobs,
    /// (blob digest, repository) -> empty: which repositories link a blob.
    BlobRepos,
    /// blob digest -> [`records::CasRecord`]: the content-addressed store.
    Cas,
    /// (repository, subject digest, referrer digest) -> [`records::ReferrerRecord`]
    Referrers,
    /// (repository, subject digest, kind, signature digest) -> [`records::SignatureRecord`]
    Signatures,
}

impl Table {
    /// Every table, for implementations that create them up front.
    pub const ALL: [Table; 9] = [
        Table::Info,
        Table::Repos,
        Table::Tags,
        Table::Manifests,
        Table::RepoBlobs,
        Table::BlobRepos,
        Table::Cas,
        Table::Referrers,
        Table::Signatures,
    ];

    /// The table's stable name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Info => "info",
            Table::Repos => "repos",
            Table::Tags => "tags",
            Table::Manifests => "manifests",
            Table::RepoBlobs => "repo_blobs",
            Table::BlobRepos => "blob_repos",
            Table::Cas => "cas",
            Table::Referrers => "referrers",
            Table::Signatures => "signatures",
        }
    }
}

/// Failures of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The engine failed (I/O, corruption, ...).
    #[error("metadata store: {0}")]
    Engine(String),
    /// The device holding the store is full.
    #[error("metadata store: no space left on device: {0}")]
    NoSpace(String),
    /// A stored value does not decode as the record its table holds.
    #[error("metadata record in {table} is corrupt: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The store's schema version is not one this berth understands.
    #[error("metadata schema version {found:?}, expected {expected}")]
    SchemaVersion {
        found: Option<String>,
        expected: &'static str,
    },
    /// A transaction body refused to continue; the transaction was rolled back.
    #[error("{0}")]
    Aborted(String),
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// A key-value pair read from a table.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Reads from one consistent snapshot.
pub trait ReadTx {
    /// The value at `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` entries with keys in `(start, end)`, in ascending key order.
    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>>;
}

/// Reads and writes inside one transaction; nothing is visible to others until it commits.
pub trait WriteTx: ReadTx {
    /// Creates or replaces the value at `key`.
    fn insert(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key`; returns whether it existed.
    fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool>;
}

/// How durable a commit must be when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage when `write` returns (every API mutation).
    Durable,
    /// May be lost in a crash, never half-applied (pull statistics).
    Lazy,
}

/// A transactional metadata store.
pub trait MetaStore: Send + Sync + 'static {
    /// A snapshot for reading; later commits are not visible through it.
    fn read(&self) -> Result<Box<dyn ReadTx + Send + '_>>;

    /// Runs `body` in a write transaction and commits it when `body` returns `Ok`; an `Err`
    /// rolls everything back. Implementations may run `body` again after a conflict, so it
    /// must have no effects outside the transaction. Writers are serialised.
    fn write(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn WriteTx) -> Result<()>,
    ) -> Result<()>;
}

/// Runs `body` in a write transaction and returns its value.
pub fn write<T>(
    store: &dyn MetaStore,
    durability: Durability,
    mut body: impl FnMut(&mut dyn WriteTx) -> Result<T>,
) -> Result<T> {
    let mut out = None;
    store.write(durability, &mut |tx| {
        out = Some(body(tx)?);
        Ok(())
    })?;
    out.ok_or_else(|| MetaError::Engine("transaction body produced no value".into()))
}

/// Every entry whose key starts with `prefix`, up to `limit`.
pub fn scan_prefix(
    tx: &dyn ReadTx,
    table: Table,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<Entry>> {
    let end = prefix_end(prefix);
    let end_bound = match &end {
        Some(e) => Bound::Excluded(e.as_slice()),
        None => Bound::Unbounded,
    };
    tx.range(table, Bound::Included(prefix), end_bound, limit)
}

/// The smallest key greater than every key starting with `prefix` (None if there is none).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
