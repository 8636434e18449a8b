//! [`LocalFs`]: the driver that stores objects as files under a directory on a local filesystem.
//!
//! Layout: object `a/b/c` is the file `<root>/a/b/c`. Temporary files live in `<root>/.tmp/`,
//! which no [`DriverPath`] can name. Replacement is write-to-temp, fsync, rename; when `sync` is
//! on, every change of a directory entry is followed by an fsync of that directory, except
//! `put_scratch`, `append_scratch`, `delete_all` and the old name of `rename_from_scratch`
//! (scratch areas: see their contracts).
//!
//! Blocking filesystem calls run on tokio's blocking pool (`spawn_blocking`); reads of object
//! contents stream through `tokio::fs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::path::is_valid_component;
use crate::{
    ByteStream, Capabilities, Driver, DriverError, DriverPath, DriverWriter, ObjectMeta, Result,
    Small,
};

/// Directory under the root holding temporary files.
const TMP_DIR: &str = ".tmp";
/// A range up to this size (a small blob) is read into a buffer in one blocking call; a larger
/// one is sent from memory maps of this size, one blocking call each.
const READ_WHOLE: u64 = 1024 * 1024;
/// `read_small` maps an object of at least this size instead of reading it into a buffer.
const MAP_FROM: usize = 64 * 1024;
/// Bytes an append writer buffers before writing them to the file.
const WRITE_BUF: usize = 512 * 1024;
/// When syncing, an append writer starts flushing the file's data in the background each time
/// this much more was written, so a large upload's final fsync has little left to wait for.
const FLUSH_EVERY: u64 = 8 * 1024 * 1024;
/// `put` writes its temporary file in chunks of this size, checking for cancellation in between.
const PUT_CHUNK: usize = 1024 * 1024;

/// A driver storing objects as files under a root directory.
///
/// One `LocalFs` should own a root at a time: [`LocalFs::new`] deletes whatever it finds in
/// `<root>/.tmp/`, including temporary files of another live instance. Clones share everything.
#[derive(Debug, Clone)]
pub struct LocalFs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    tmp: PathBuf,
    sync: bool,
    hardlink: bool,
}

impl LocalFs {
    /// Opens (creating when missing) the root directory and `<root>/.tmp/`, removes stale
    /// temporary files left by a crash, and probes whether the filesystem supports hard links.
    ///
    /// With `sync` on, file data is fsynced before it is renamed into place and the directory is
    /// fsynced after every rename, create, link and delete; with `sync` off there is no fsync.
    ///
    /// This does blocking filesystem calls: call it at startup (or inside `spawn_blocking`).
    pub fn new(root: impl Into<PathBuf>, sync: bool) -> Result<LocalFs> {
        let root: PathBuf = root.into();
        let label = root.display().to_string();
        let existed = root.is_dir();
        fs::create_dir_all(&root).map_err(|e| DriverError::io(&label, e))?;
        if sync && !existed {
            // Best effort: the parent of the root may not be ours to open.
            let parent = match root.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let _ = fsync_dir(parent);
        }

        let tmp = root.join(TMP_DIR);
        let tmp_label = format!("{label}/{TMP_DIR}");
        match fs::create_dir(&tmp) {
            Ok(()) if sync => fsync_dir(&root).map_err(|e| DriverError::io(&label, e))?,
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(DriverError::io(tmp_label, e)),
        }
        remove_stale(&tmp).map_err(|e| DriverError::io(&tmp_label, e))?;
        let hardlink = probe_hardlink(&tmp).map_err(|e| DriverError::io(&tmp_label, e))?;

        Ok(LocalFs {
            inner: Arc::new(Inner {
                root,
                tmp,
                sync,
                hardlink,
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// An append writer; when it creates the file, its name is fsynced only if `durable_name`.
    async fn open_writer(
        &self,
        path: &DriverPath,
        durable_name: bool,
    ) -> Result<Box<dyn DriverWriter>> {
        let p = path.clone();
        let (file, size) = self
            .blocking(path.as_str(), move |fs| fs.open_append(&p, durable_name))
            .await?;
        Ok(Box::new(LocalWriter {
            file: Arc::new(file),
            buf: Vec::new(),
            committed: size,
            sync: self.inner.sync,
            label: path.as_str().to_owned(),
            interrupted: false,
            unflushed: 0,
            flushing: None,
        }))
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, label: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        run_blocking(label, move || f(&inner)).await
    }
}

#[async_trait::async_trait]
impl Driver for LocalFs {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hardlink: self.inner.hardlink,
        }
    }

    async fn get(&self, path: &DriverPath) -> Result<Bytes> {
        let p = path.clone();
        self.blocking(path.as_str(), move |fs| fs.get(&p)).await
    }

    /// One blocking call: open, stat and, for a small object, read it (from 64 KiB up through a
    /// populated memory map, so no large buffer is allocated on a blocking-pool thread).
    async fn read_small(&self, path: &DriverPath, max: u64) -> Result<Small> {
        let p = path.clone();
        self.blocking(path.as_str(), move |fs| fs.read_small(&p, max))
            .await
    }

    /// If the future is dropped before it completes, the background work stops at its next
    /// checkpoint, removes the temporary file and leaves the target untouched (unless the rename
    /// had already happened).
    async fn put(&self, path: &DriverPath, data: Bytes) -> Result<()> {
        let p = path.clone();
        let cancel = CancelOnDrop::default();
        let flag = Arc::clone(&cancel.0);
        let result = self
            .blocking(path.as_str(), move |fs| fs.put(&p, &data, &flag, true))
            .await;
        drop(cancel);
        result
    }

    async fn put_scratch(&self, path: &DriverPath, data: Bytes) -> Result<()> {
        let p = path.clone();
        let never = AtomicBool::new(false);
        self.blocking(path.as_str(), move |fs| fs.put(&p, &data, &never, false))
            .await
    }

    async fn persist(&self, path: &DriverPath) -> Result<()> {
        let p = path.clone();
        self.blocking(path.as_str(), move |fs| fs.persist(&p)).await
    }

    async fn read_range(
        &self,
        path: &DriverPath,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream> {
        let p = path.clone();
        let (file, size) = self
            .blocking(path.as_str(), move |fs| fs.open_object(&p))
            .await?;
        let file = Arc::new(file);
        // The object as it is now: up to its current size.
        let end = match len {
            Some(len) => offset.saturating_add(len).min(size),
            None => size,
        };
        let start = offset.min(end);
        let small = end - start <= READ_WHOLE;
        // One blocking call per chunk: a whole small blob, or a mapped megabyte.
        let chunks = futures_util::stream::try_unfold(start, move |pos| {
            let file = Arc::clone(&file);
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let want = usize::try_from((end - pos).min(READ_WHOLE)).unwrap_or(0);
                let chunk = if !small {
                    tokio::task::spawn_blocking(move || map_window(&file, pos, want))
                        .await
                        .map_err(io::Error::other)??
                } else {
                    // Allocated here, on a runtime thread, not on a blocking-pool thread: the
                    // allocator keeps an arena per thread that ever allocated, and the pool has
                    // many threads.
                    let buf = vec![0u8; want];
                    let read = tokio::task::spawn_blocking(move || read_at_most(&file, pos, buf))
                        .await
                        .map_err(io::Error::other)??;
                    Bytes::from(read)
                };
                if chunk.is_empty() {
                    return Ok(None); // the file shrank under us: end early
                }
                let next = pos + chunk.len() as u64;
                Ok(Some((chunk, next)))
            }
        });
        Ok(Box::pin(chunks))
    }

    async fn stat(&self, path: &DriverPath) -> Result<ObjectMeta> {
        let p = path.clone();
        self.blocking(path.as_str(), move |fs| fs.stat(&p)).await
    }

    /// The writer buffers up to 512 KiB: bytes become visible at `path` when the buffer fills and
    /// on `close`. Dropping the writer without `close` discards the buffered bytes. When a write
    /// to the file fails, the buffered bytes are dropped and `size()` falls back to the bytes
    /// actually in the file (which can be less than before the failed call).
    async fn append(&self, path: &DriverPath) -> Result<Box<dyn DriverWriter>> {
        self.open_writer(path, true).await
    }

    /// Like `append`, without the directory fsyncs when it creates the file.
    async fn append_scratch(&self, path: &DriverPath) -> Result<Box<dyn DriverWriter>> {
        self.open_writer(path, false).await
    }

    async fn list(&self, path: &DriverPath) -> Result<Vec<String>> {
        let p = path.clone();
        self.blocking(&label(path), move |fs| fs.list(&p)).await
    }

    async fn rename(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        let (f, t) = (from.clone(), to.clone());
        self.blocking(from.as_str(), move |fs| fs.rename(&f, &t, true))
            .await
    }

    async fn rename_from_scratch(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        let (f, t) = (from.clone(), to.clone());
        self.blocking(from.as_str(), move |fs| fs.rename(&f, &t, false))
            .await
    }

    async fn delete(&self, path: &DriverPath) -> Result<()> {
        let p = path.clone();
        self.blocking(&label(path), move |fs| fs.delete(&p)).await
    }

    /// Refuses the root (`InvalidPath`). An object (not a directory) at `path` is an error.
    async fn delete_all(&self, path: &DriverPath) -> Result<()> {
        let p = path.clone();
        self.blocking(&label(path), move |fs| fs.delete_all(&p))
            .await
    }

    async fn link(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        let (f, t) = (from.clone(), to.clone());
        self.blocking(from.as_str(), move |fs| fs.link(&f, &t))
            .await
    }

    async fn free_space(&self) -> Result<Option<u64>> {
        let root = self.root().to_owned();
        let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&root))
            .await
            .map_err(|e| DriverError::io(".", std::io::Error::other(e)))?
            .map_err(|e| DriverError::io(".", std::io::Error::from(e)))?;
        Ok(Some(stat.f_bavail.saturating_mul(stat.f_frsize)))
    }
}

/// The blocking halves of the driver operations.
impl Inner {
    /// The filesystem path of `path` (the root itself for the root).
    fn full(&self, path: &DriverPath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    /// The filesystem path of an object; `InvalidPath` for the root, which is not an object.
    fn object_path(&self, path: &DriverPath) -> Result<PathBuf> {
        if path.is_root() {
            return Err(DriverError::InvalidPath(
                "the root is a directory, not an object".to_owned(),
            ));
        }
        Ok(self.full(path))
    }

    /// When syncing, fsyncs the directory holding `full`.
    fn sync_parent(&self, full: &Path, label: &str) -> Result<()> {
        if !self.sync {
            return Ok(());
        }
        let dir = full.parent().unwrap_or(&self.root);
        fsync_dir(dir).map_err(|e| DriverError::io(label, e))
    }

    /// Creates the parent directories of `path`; when syncing, fsyncs the parent of each
    /// directory it creates so the new entries are durable.
    fn create_parents(&self, path: &DriverPath) -> Result<()> {
        self.create_parents_with(path, true)
    }

    /// Creates the parent directories of `path`, fsyncing the parent of each new directory
    /// when `durable` and syncing.
    fn create_parents_with(&self, path: &DriverPath, durable: bool) -> Result<()> {
        let Some(dir) = path.parent() else {
            return Ok(()); // the root exists
        };
        if self.full(&dir).is_dir() {
            return Ok(());
        }
        let mut cur = self.root.clone();
        for component in dir.components() {
            cur.push(component);
            match fs::create_dir(&cur) {
                Ok(()) if durable => self.sync_parent(&cur, dir.as_str())?,
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(DriverError::io(dir.as_str(), e)),
            }
        }
        Ok(())
    }

    fn get(&self, path: &DriverPath) -> Result<Bytes> {
        let (mut file, size) = self.open_object(path)?;
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut buf)
            .map_err(|e| DriverError::io(path.as_str(), e))?;
        Ok(Bytes::from(buf))
    }

    fn read_small(&self, path: &DriverPath, max: u64) -> Result<Small> {
        let (file, size) = self.open_object(path)?;
        if size > max {
            return Ok(Small::Large(size));
        }
        let want = usize::try_from(size).unwrap_or(usize::MAX);
        let bytes = if want >= MAP_FROM {
            map_window(&file, 0, want)
        } else {
            read_at_most(&file, 0, vec![0; want]).map(Bytes::from)
        };
        bytes
            .map(Small::Whole)
            .map_err(|e| DriverError::io(path.as_str(), e))
    }

    /// Opens an object (a file, not a directory) for reading: the file and its size.
    fn open_object(&self, path: &DriverPath) -> Result<(File, u64)> {
        let label = path.as_str();
        let file = File::open(self.object_path(path)?).map_err(|e| lookup_err(label, e))?;
        let meta = file.metadata().map_err(|e| DriverError::io(label, e))?;
        if !meta.is_file() {
            return Err(DriverError::NotFound(label.to_owned()));
        }
        Ok((file, meta.len()))
    }

    /// Write-to-temp and rename; with `durable` (and syncing) the file, its name and any
    /// directory created are fsynced, without it nothing is (`put_scratch`).
    fn put(
        &self,
        path: &DriverPath,
        data: &[u8],
        cancelled: &AtomicBool,
        durable: bool,
    ) -> Result<()> {
        let label = path.as_str();
        let target = self.object_path(path)?;
        let io_err = |e| DriverError::io(label, e);
        if cancelled.load(Ordering::Relaxed) {
            return Err(cancelled_err(label));
        }
        self.create_parents_with(path, durable)?;
        let tmp = TempFile::create(&self.tmp).map_err(io_err)?;
        for chunk in data.chunks(PUT_CHUNK) {
            if cancelled.load(Ordering::Relaxed) {
                return Err(cancelled_err(label));
            }
            (&tmp.file).write_all(chunk).map_err(io_err)?;
        }
        if self.sync && durable {
            tmp.file.sync_all().map_err(io_err)?;
        }
        if cancelled.load(Ordering::Relaxed) {
            return Err(cancelled_err(label));
        }
        tmp.persist(&target).map_err(io_err)?;
        if durable {
            self.sync_parent(&target, label)?;
        }
        Ok(())
    }

    /// fsyncs the object, then every directory from its parent up to the root.
    fn persist(&self, path: &DriverPath) -> Result<()> {
        let label = path.as_str();
        let full = self.object_path(path)?;
        let file = File::open(&full).map_err(|e| lookup_err(label, e))?;
        if !self.sync {
            return Ok(());
        }
        file.sync_all().map_err(|e| DriverError::io(label, e))?;
        let mut dir = path.parent().unwrap_or_else(DriverPath::root);
        loop {
            fsync_dir(&self.full(&dir)).map_err(|e| DriverError::io(label, e))?;
            if dir.is_root() {
                return Ok(());
            }
            dir = dir.parent().unwrap_or_else(DriverPath::root);
        }
    }

    fn stat(&self, path: &DriverPath) -> Result<ObjectMeta> {
        let label = path.as_str();
        let meta = fs::metadata(self.object_path(path)?).map_err(|e| lookup_err(label, e))?;
        if !meta.is_file() {
            return Err(DriverError::NotFound(label.to_owned()));
        }
        let modified = meta.modified().map_err(|e| DriverError::io(label, e))?;
        #[cfg(unix)]
        let id = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let id = None;
        Ok(ObjectMeta {
            size: meta.len(),
            modified,
            id,
        })
    }

    /// Opens `path` for appending, creating it (and its parents) when missing; the new names
    /// are fsynced only when `durable_name`.
    fn open_append(&self, path: &DriverPath, durable_name: bool) -> Result<(File, u64)> {
        let label = path.as_str();
        let full = self.object_path(path)?;
        let open = |create| OpenOptions::new().append(true).create(create).open(&full);
        let file = match open(false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.create_parents_with(path, durable_name)?;
                let file = open(true).map_err(|e| DriverError::io(label, e))?;
                if durable_name {
                    self.sync_parent(&full, label)?;
                }
                file
            }
            Err(e) => return Err(DriverError::io(label, e)),
        };
        let meta = file.metadata().map_err(|e| DriverError::io(label, e))?;
        Ok((file, meta.len()))
    }

    fn list(&self, path: &DriverPath) -> Result<Vec<String>> {
        let err = |e| DriverError::io(label(path), e);
        let entries = match fs::read_dir(self.full(path)) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            // Names no DriverPath can address (`.tmp`, other dot-names, stray files with other
            // characters or non-UTF-8 names) are not part of the store.
            if let Ok(name) = entry.map_err(err)?.file_name().into_string() {
                if is_valid_component(&name) {
                    names.push(name);
                }
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// Moves `from` to `to`; fsyncs the new name's directory, and the old name's too when
    /// `sync_source` (else the old name may come back after a crash).
    fn rename(&self, from: &DriverPath, to: &DriverPath, sync_source: bool) -> Result<()> {
        let src = self.object_path(from)?;
        let dst = self.object_path(to)?;
        let meta = fs::metadata(&src).map_err(|e| lookup_err(from.as_str(), e))?;
        if !meta.is_file() {
            return Err(DriverError::NotFound(from.as_str().to_owned()));
        }
        self.create_parents(to)?;
        fs::rename(&src, &dst).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DriverError::NotFound(from.as_str().to_owned()),
            _ => DriverError::io(format!("{from} -> {to}"), e),
        })?;
        self.sync_parent(&dst, to.as_str())?;
        if sync_source && src.parent() != dst.parent() {
            self.sync_parent(&src, from.as_str())?;
        }
        Ok(())
    }

    fn delete(&self, path: &DriverPath) -> Result<()> {
        let label = path.as_str();
        let full = self.object_path(path)?;
        match fs::remove_file(&full) {
            Ok(()) => self.sync_parent(&full, label),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(DriverError::io(label, e)),
        }
    }

    fn delete_all(&self, path: &DriverPath) -> Result<()> {
        let label = path.as_str();
        if path.is_root() {
            return Err(DriverError::InvalidPath(
                "refusing to delete the root".to_owned(),
            ));
        }
        let full = self.full(path);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(DriverError::io(
                    label,
                    io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                ))
            }
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(DriverError::io(label, e)),
        }
        // Not fsynced: scratch areas only (see the contract).
        match fs::remove_dir_all(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(label, e)),
        }
    }

    fn link(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        if !self.hardlink {
            return Err(DriverError::Unsupported(
                "hard links are not supported by this filesystem",
            ));
        }
        let src = self.object_path(from)?;
        let dst = self.object_path(to)?;
        let meta = fs::metadata(&src).map_err(|e| lookup_err(from.as_str(), e))?;
        if !meta.is_file() {
            return Err(DriverError::NotFound(from.as_str().to_owned()));
        }
        if fs::symlink_metadata(&dst).is_ok() {
            return Err(DriverError::PreconditionFailed(format!("{to} exists")));
        }
        self.create_parents(to)?;
        fs::hard_link(&src, &dst).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => DriverError::PreconditionFailed(format!("{to} exists")),
            io::ErrorKind::NotFound => DriverError::NotFound(from.as_str().to_owned()),
            _ => DriverError::io(format!("{from} -> {to}"), e),
        })?;
        self.sync_parent(&dst, to.as_str())
    }
}

/// The writer returned by [`LocalFs::append`](Driver::append).
struct LocalWriter {
    file: Arc<File>,
    /// Bytes accepted but not yet written to the file.
    buf: Vec<u8>,
    /// Bytes in the file.
    committed: u64,
    sync: bool,
    label: String,
    /// A write to the file was cancelled mid-way (its future dropped): the size is unknown.
    interrupted: bool,
    /// Bytes written since the last background flush started.
    unflushed: u64,
    /// A background `fdatasync` of what was written so far; its error is the writer's.
    flushing: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl LocalWriter {
    fn check_usable(&self) -> Result<()> {
        if self.interrupted {
            return Err(DriverError::io(
                &self.label,
                io::Error::other("an earlier write on this writer was cancelled"),
            ));
        }
        Ok(())
    }

    /// Writes `pending` to the file, counting exactly the bytes that reached it.
    async fn write_out(&mut self, pending: Vec<u8>) -> Result<()> {
        self.interrupted = true;
        let file = Arc::clone(&self.file);
        let (written, result, mut pending) = run_blocking(&self.label, move || {
            let (written, result) = write_counting(&mut &*file, &pending);
            Ok((written, result, pending))
        })
        .await?;
        self.interrupted = false;
        self.committed += written as u64;
        self.unflushed += written as u64;
        pending.clear();
        self.buf = pending; // reuse the allocation
        result.map_err(|e| DriverError::io(&self.label, e))
    }

    /// Starts a background flush every [`FLUSH_EVERY`] bytes (none while one still runs). A
    /// failed flush fails the writer: its error must not be lost, since a later fsync of the
    /// same file may no longer report it.
    async fn maybe_flush(&mut self) -> Result<()> {
        if !self.sync || self.unflushed < FLUSH_EVERY {
            return Ok(());
        }
        if self.flushing.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        self.finish_flush().await?;
        let file = Arc::clone(&self.file);
        self.flushing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        self.unflushed = 0;
        Ok(())
    }

    /// Waits for the background flush, if any, and returns its outcome.
    async fn finish_flush(&mut self) -> Result<()> {
        match self.flushing.take() {
            Some(flush) => flush
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|e| DriverError::io(&self.label, e)),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl DriverWriter for LocalWriter {
    fn size(&self) -> u64 {
        self.committed + self.buf.len() as u64
    }

    /// Fills the buffer and writes it out each time it is full, so memory stays bounded by the
    /// buffer size however large `data` is.
    async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_usable()?;
        loop {
            if self.buf.capacity() < WRITE_BUF {
                self.buf.reserve_exact(WRITE_BUF - self.buf.len());
            }
            let take = data.len().min(WRITE_BUF - self.buf.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < WRITE_BUF {
                return Ok(()); // all of `data` is buffered
            }
            let full = std::mem::take(&mut self.buf);
            self.write_out(full).await?;
            self.maybe_flush().await?;
        }
    }

    async fn close(self: Box<Self>) -> Result<u64> {
        let mut this = *self;
        this.check_usable()?;
        if !this.buf.is_empty() {
            let pending = std::mem::take(&mut this.buf);
            this.write_out(pending).await?;
        }
        this.finish_flush().await?;
        if this.sync {
            let file = Arc::clone(&this.file);
            let label = this.label.clone();
            run_blocking(&this.label, move || {
                file.sync_all().map_err(|e| DriverError::io(label, e))
            })
            .await?;
        }
        Ok(this.committed)
    }
}

/// Maps up to `want` bytes of `file` from `pos` (less at the end of the file), with the pages
/// faulted in here, on the blocking pool: sending the chunk then copies nothing in user space,
/// and the runtime's threads never wait for the disk. Blob files are never truncated (they are
/// replaced by rename), so the mapping stays valid while the chunk lives.
#[allow(unsafe_code)]
fn map_window(file: &File, pos: u64, want: usize) -> io::Result<Bytes> {
    let size = file.metadata()?.len();
    let len = usize::try_from(size.saturating_sub(pos))
        .unwrap_or(want)
        .min(want);
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only and berth never truncates or rewrites a file in place,
    // so the mapped bytes stay backed by the file for the mapping's lifetime.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(pos)
            .len(len)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}

/// Fills `buf` from `pos` (less only at the end of the file) and returns what was read.
fn read_at_most(file: &File, pos: u64, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let want = buf.len();
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Writes all of `data`, returning how many bytes were written even when it fails midway.
fn write_counting(w: &mut impl Write, data: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < data.len() {
        match w.write(&data[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// A temporary file that is removed when dropped, unless [`TempFile::persist`] moved it away.
struct TempFile {
    path: PathBuf,
    file: File,
    armed: bool,
}

impl TempFile {
    /// Creates a new, uniquely named file in `dir`.
    fn create(dir: &Path) -> io::Result<TempFile> {
        let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile {
            path,
            file,
            armed: true,
        })
    }

    /// Renames the file to `to` (replacing it); on failure the file is removed.
    fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Sets its flag when dropped: tells the blocking half of `put` that nobody awaits it any more.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn run_blocking<T, F>(label: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(DriverError::io(
            label,
            io::Error::other(format!("blocking task failed: {e}")),
        ))
    })
}

/// Fsyncs a directory, making the entries created, renamed or removed in it durable.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir; // directories cannot be opened for fsync here
    Ok(())
}

/// Removes everything in the temporary directory.
fn remove_stale(tmp: &Path) -> io::Result<()> {
    for entry in fs::read_dir(tmp)? {
        let entry = entry?;
        let result = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())
        } else {
            fs::remove_file(entry.path())
        };
        match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Whether hard links work in `tmp`: links a fresh file there, then removes both names.
fn probe_hardlink(tmp: &Path) -> io::Result<bool> {
    let probe = TempFile::create(tmp)?;
    let link = tmp.join(format!("{}-link", uuid::Uuid::new_v4().simple()));
    let works = fs::hard_link(&probe.path, &link).is_ok();
    if works {
        fs::remove_file(&link)?;
    }
    Ok(works)
}

/// A lookup failure: a file where a directory was expected also means "no such object".
fn lookup_err(label: &str, e: io::Error) -> DriverError {
    if is_missing(&e) {
        DriverError::NotFound(label.to_owned())
    } else {
        DriverError::io(label, e)
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn cancelled_err(label: &str) -> DriverError {
    DriverError::io(label, io::Error::other("put was cancelled"))
}

/// How errors name a path: the root has no name of its own.
fn label(path: &DriverPath) -> String {
    if path.is_root() {
        ".".to_owned()
    } else {
        path.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests;
