//! The storage driver seam: bytes at validated relative paths.
//!
//! A driver knows nothing of OCI, repositories or digests. It stores opaque objects under
//! `/`-separated relative paths ([`DriverPath`]) and promises atomic replacement and durability.
//! The storage engine (`berth-store`) computes every path; a driver must never be handed a path
//! that did not pass [`DriverPath::new`].
//!
//! Implementations: [`local::LocalFs`] (a directory on a local filesystem). Every driver must pass
//! the shared [`conformance`] suite.

use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;

pub mod conformance;
pub mod local;
pub mod memory;
mod path;

pub use path::DriverPath;

/// A stream of bytes read from a driver.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Failures of a driver operation.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The object (or directory) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The path is not a valid relative path (see [`DriverPath`]).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// The driver cannot do this (for example hard links on a filesystem without them).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A precondition of the operation does not hold (for example a link target already exists).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// The storage device is full.
    #[error("no space left on device: {0}")]
    NoSpace(String),
    /// Any other I/O failure, with the path it concerned.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    /// Wraps an I/O error for `path`, mapping `NotFound` and `StorageFull` to their own variants.
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => DriverError::NotFound(path),
            std::io::ErrorKind::StorageFull => DriverError::NoSpace(path),
            _ => DriverError::Io { path, source },
        }
    }

    /// True when the error means the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DriverError::NotFound(_))
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// What is known about a stored object without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
    /// Identity of the stored bytes where the backend can tell (device and inode on a local
    /// filesystem): two paths with the same identity share their bytes (hard links).
    pub id: Option<(u64, u64)>,
}

/// An object read by [`Driver::read_small`]: all of it when small enough, else just its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Small {
    /// The whole object.
    Whole(Bytes),
    /// The object is larger than asked: its size (read it with [`Driver::read_range`]).
    Large(u64),
}

/// What a driver can do beyond the mandatory operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// [`Driver::link`] creates hard links (two paths, one set of bytes).
    pub hardlink: bool,
}

/// A storage backend. Every method states its contract; every driver passes [`conformance`].
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// What this driver can do beyond the mandatory operations.
    fn capabilities(&self) -> Capabilities;

    /// Reads a whole object. Meant for small objects (manifests, `index.json`): the bytes are
    /// held in memory. `NotFound` if there is no object at `path`.
    async fn get(&self, path: &DriverPath) -> Result<Bytes>;

    /// Atomically creates or replaces the object at `path` with `data`, creating parent
    /// directories. A concurrent reader sees the old bytes or the new bytes, never a mix. When the
    /// driver syncs, the new bytes and the name are durable when this returns.
    async fn put(&self, path: &DriverPath, data: Bytes) -> Result<()>;

    /// Like [`Driver::put`], but nothing is made durable: for scratch state the caller can
    /// afford to lose (an upload session's description before its first chunk is acknowledged).
    /// Readers never see a mix of old and new bytes; after a crash the object may be missing or
    /// empty, and directories this created may be gone. [`Driver::persist`] makes it durable.
    async fn put_scratch(&self, path: &DriverPath, data: Bytes) -> Result<()>;

    /// Makes the object at `path` durable: its bytes, its name and the names of the directories
    /// above it. Syncing those directories also makes every name in them durable (a file
    /// [`Driver::append_scratch`] created next to it, say). `NotFound` if there is no object at
    /// `path`.
    async fn persist(&self, path: &DriverPath) -> Result<()>;

    /// Streams `len` bytes (all remaining when `None`) of the object starting at `offset`.
    /// `NotFound` if there is no object. The caller checks bounds against [`Driver::stat`].
    async fn read_range(
        &self,
        path: &DriverPath,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream>;

    /// The whole object if it holds at most `max` bytes, else its size: a small blob's `GET`
    /// in one call where the backend can (open, stat and read at once). `NotFound` if there is
    /// no object.
    async fn read_small(&self, path: &DriverPath, max: u64) -> Result<Small> {
        let size = self.stat(path).await?.size;
        if size > max {
            return Ok(Small::Large(size));
        }
        Ok(Small::Whole(self.get(path).await?))
    }

    /// Size and modification time of the object. `NotFound` if there is none (a directory is
    /// not an object).
    async fn stat(&self, path: &DriverPath) -> Result<ObjectMeta>;

    /// Opens a writer that appends to the object at `path`, creating it (and its parent
    /// directories) when missing. The writer starts at the object's current size. Bytes written
    /// are visible at `path` as they are written (this is for upload sessions, not for publishing:
    /// publish with [`Driver::rename`] or [`Driver::put`]).
    async fn append(&self, path: &DriverPath) -> Result<Box<dyn DriverWriter>>;

    /// Like [`Driver::append`], for files in a scratch area: a file (or directory) this creates
    /// gets no durable name of its own. [`DriverWriter::close`] still makes the bytes durable; the
    /// name becomes durable when a later [`Driver::persist`] in the same directory syncs it, or
    /// under its new name when the file is moved out. Saves the directory sync of an upload
    /// whose bytes are published by a move right after.
    async fn append_scratch(&self, path: &DriverPath) -> Result<Box<dyn DriverWriter>>;

    /// Names of the immediate children (objects and directories) of the directory `path`, sorted
    /// byte-wise. An empty list when the directory does not exist.
    async fn list(&self, path: &DriverPath) -> Result<Vec<String>>;

    /// Atomically moves the object at `from` to `to`, replacing any object at `to` and creating
    /// parent directories. When the driver syncs, the move is durable when this returns.
    /// `NotFound` if `from` does not exist.
    async fn rename(&self, from: &DriverPath, to: &DriverPath) -> Result<()>;

    /// Like [`Driver::rename`], but only the new name is made durable: after a crash the old
    /// name may come back as a second name of the same bytes. For moving a file out of a scratch
    /// area that nothing trusts after a restart (it is removed when the registry opens).
    async fn rename_from_scratch(&self, from: &DriverPath, to: &DriverPath) -> Result<()>;

    /// Removes the object at `path`. Idempotent: removing a missing object succeeds. Empty parent
    /// directories may be left behind.
    async fn delete(&self, path: &DriverPath) -> Result<()>;

    /// Removes the directory `path` and everything below it. Idempotent. Not made durable:
    /// this removes scratch areas, and after a crash part of the tree may come back (objects
    /// moved out of it by [`Driver::rename`] do not).
    async fn delete_all(&self, path: &DriverPath) -> Result<()>;

    /// Makes `to` a second name for the bytes of `from` (a hard link), creating parent
    /// directories. `PreconditionFailed` if `to` exists, `NotFound` if `from` does not,
    /// `Unsupported` when [`Capabilities::hardlink`] is false. Durable on return when syncing.
    async fn link(&self, from: &DriverPath, to: &DriverPath) -> Result<()>;

    /// Bytes still available for writing, where the backend can tell (`None` for storage
    /// without a meaningful limit, such as object stores).
    async fn free_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// An append-only writer opened by [`Driver::append`].
#[async_trait::async_trait]
pub trait DriverWriter: Send {
    /// Total size of the object: what existed when opened plus what was written since.
    fn size(&self) -> u64;

    /// Appends `data`. On failure the object may hold part of `data`; [`DriverWriter::size`]
    /// stays at the size before this call only if nothing was written.
    async fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Flushes buffered bytes and, when the driver syncs, makes them durable. Consumes the writer.
    /// Returns the final size.
    async fn close(self: Box<Self>) -> Result<u64>;
}
