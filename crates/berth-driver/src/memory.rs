//! [`MemDriver`]: a driver held in memory, with a model of what survives a power cut.
//!
//! Meant for tests, above all crash tests: a process kill (`kill -9`) keeps the page cache, so it
//! proves nothing about syncing; a [`MemDriver`] keeps two states and can drop everything that was
//! not yet synced ([`MemDriver::power_cut`]).
//!
//! The model follows a POSIX filesystem:
//!
//! - Each path names an *inode*; an inode holds bytes, shared by every hard link to it.
//! - The *visible* state is what reads see: the names and every inode's current bytes.
//! - The *durable* state is what survives a power cut: the names that were synced and, per inode,
//!   the bytes as of its last sync.
//!
//! Per the [`Driver`] contracts, `put`, `rename`, `link` and `delete` are durable when they
//! return: they change both states. `put_scratch` changes only the visible state until
//! `persist`; `delete_all` changes only the visible state (a power cut brings the tree back);
//! `rename_from_scratch` makes the new name durable but not the old name's removal. `persist`
//! models the fsync of every directory above the object: all names directly in them become
//! durable as they are visible. An append writer's bytes are visible as they are written and
//! become durable only at [`DriverWriter::close`] (the fsync); a file an `append` writer created
//! gets a durable name only then, too (an `append_scratch` writer's never: only a `persist` in
//! its directory or a move gives it one). So after a power cut an unsynced append is gone, and a
//! file renamed or linked before its writer closed comes back with its last synced bytes (empty
//! if it never was), as on a real filesystem.
//!
//! Directories are implicit: a directory exists while an object lies below it, so deleting the
//! last object below a directory removes it (`LocalFs` may leave empty directories behind; the
//! contract allows both).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;

use crate::{
    ByteStream, Capabilities, Driver, DriverError, DriverPath, DriverWriter, ObjectMeta, Result,
};

/// Chunk size of streams returned by `read_range`.
const READ_CHUNK: usize = 64 * 1024;

/// An in-memory driver with a visible and a durable state. Clones share everything.
#[derive(Debug, Clone, Default)]
pub struct MemDriver {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// The next inode number to hand out.
    next: u64,
    /// Visible names: path -> inode.
    names: BTreeMap<String, u64>,
    /// Durable names: path -> inode. Differs from `names` where a change is not durable yet:
    /// files created by append writers that have not closed and by `put_scratch` (visible,
    /// not durable), and trees removed by `delete_all` (durable, no longer visible).
    durable: BTreeMap<String, u64>,
    inodes: HashMap<u64, Inode>,
}

#[derive(Debug)]
struct Inode {
    /// The bytes reads see.
    data: Vec<u8>,
    /// The bytes as of the last sync: what a power cut leaves.
    synced: Bytes,
    modified: SystemTime,
    /// Visible names of this inode.
    nlink: usize,
    /// Open append writers.
    writers: usize,
}

impl MemDriver {
    /// An empty driver.
    pub fn new() -> MemDriver {
        MemDriver::default()
    }

    /// What survives a power cut now: a new, independent driver whose state is this driver's
    /// durable state. Unsynced appends are dropped, names created by writers that never closed
    /// vanish, and inodes keep the bytes of their last sync. This driver is left as it is.
    pub fn power_cut(&self) -> MemDriver {
        let st = self.lock();
        let mut inodes: HashMap<u64, Inode> = HashMap::new();
        for ino in st.durable.values() {
            if let Some(inode) = inodes.get_mut(ino) {
                inode.nlink += 1;
                continue;
            }
            let (synced, modified) = st
                .inodes
                .get(ino)
                .map(|i| (i.synced.clone(), i.modified))
                .unwrap_or_else(|| (Bytes::new(), SystemTime::now()));
            inodes.insert(
                *ino,
                Inode {
                    data: synced.to_vec(),
                    synced,
                    modified,
                    nlink: 1,
                    writers: 0,
                },
            );
        }
        MemDriver {
            state: Arc::new(Mutex::new(State {
                next: st.next,
                names: st.durable.clone(),
                durable: st.durable.clone(),
                inodes,
            })),
        }
    }

    /// `put` (`durable`) or `put_scratch`: a new inode named `path`, synced and durably named,
    /// or neither (and then a durable object it replaces is lost in a power cut too).
    fn create(&self, path: &DriverPath, data: Bytes, durable: bool) -> Result<()> {
        let p = object(path)?;
        let mut st = self.lock();
        st.check_creatable(p)?;
        let synced = if durable { data.clone() } else { Bytes::new() };
        let ino = st.new_inode(data.to_vec(), synced);
        st.set_name(p, ino);
        if durable {
            st.durable.insert(p.to_owned(), ino);
        } else {
            st.durable.remove(p);
        }
        Ok(())
    }

    /// An append writer; a file it creates gets a durable name at close only if `durable_name`.
    fn open_writer(&self, path: &DriverPath, durable_name: bool) -> Result<Box<dyn DriverWriter>> {
        let p = object(path)?;
        let mut st = self.lock();
        let ino = match st.names.get(p) {
            Some(ino) => *ino,
            None => {
                st.check_creatable(p)?;
                let ino = st.new_inode(Vec::new(), Bytes::new());
                st.set_name(p, ino);
                ino
            }
        };
        let size = match st.inodes.get_mut(&ino) {
            Some(inode) => {
                inode.writers += 1;
                inode.data.len() as u64
            }
            None => return Err(io_err(p, io::ErrorKind::Other, "dangling inode")),
        };
        Ok(Box::new(MemWriter {
            driver: self.clone(),
            path: p.to_owned(),
            ino,
            size,
            open: true,
            durable_name,
        }))
    }

    /// `rename` (the old name's removal durable too when `durable_source`) or
    /// `rename_from_scratch`: the new name is durable either way.
    fn move_name(&self, from: &DriverPath, to: &DriverPath, durable_source: bool) -> Result<()> {
        let (f, t) = (object(from)?, object(to)?);
        let mut st = self.lock();
        let ino = st.lookup(f)?;
        if f == t {
            return Ok(());
        }
        st.check_creatable(t)?;
        // Take a reference first so the inode survives losing its old name.
        st.set_name(t, ino);
        if durable_source {
            st.remove_name(f);
        } else {
            st.remove_visible_name(f);
        }
        st.durable.insert(t.to_owned(), ino);
        Ok(())
    }

    /// Every object's path in the visible state, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.lock().names.keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn io_err(path: &str, kind: io::ErrorKind, what: &str) -> DriverError {
    DriverError::io(path, io::Error::new(kind, what.to_owned()))
}

/// The path of an object: `InvalidPath` for the root, which is a directory.
fn object(path: &DriverPath) -> Result<&str> {
    if path.is_root() {
        return Err(DriverError::InvalidPath(
            "the root is a directory, not an object".to_owned(),
        ));
    }
    Ok(path.as_str())
}

impl State {
    /// True when an object lies below `path` (so `path` is a directory).
    fn is_dir(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.names
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// The inode of the object at `path`; `NotFound` for a missing object or a directory.
    fn lookup(&self, path: &str) -> Result<u64> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| DriverError::NotFound(path.to_owned()))
    }

    /// Checks that an object may be created at `path`: no ancestor is an object and `path` is
    /// not a directory.
    fn check_creatable(&self, path: &str) -> Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let ancestor = &path[..end + i];
            if self.names.contains_key(ancestor) {
                return Err(io_err(
                    path,
                    io::ErrorKind::NotADirectory,
                    "an ancestor is an object",
                ));
            }
            end += i + 1;
        }
        if self.is_dir(path) {
            return Err(io_err(
                path,
                io::ErrorKind::IsADirectory,
                "the path is a directory",
            ));
        }
        Ok(())
    }

    fn new_inode(&mut self, data: Vec<u8>, synced: Bytes) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(
            ino,
            Inode {
                data,
                synced,
                modified: SystemTime::now(),
                nlink: 0,
                writers: 0,
            },
        );
        ino
    }

    /// Points the visible name `path` at `ino`, releasing the inode it named before.
    fn set_name(&mut self, path: &str, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.nlink += 1;
        }
        if let Some(old) = self.names.insert(path.to_owned(), ino) {
            self.release(old);
        }
    }

    /// Removes the visible name `path` (and its durable name).
    fn remove_name(&mut self, path: &str) {
        self.durable.remove(path);
        self.remove_visible_name(path);
    }

    /// Removes the visible name `path`; a durable name stays (a power cut brings it back).
    fn remove_visible_name(&mut self, path: &str) {
        if let Some(old) = self.names.remove(path) {
            self.release(old);
        }
    }

    /// The fsync of directory `dir` ("" for the root): the names directly in it become durable
    /// as they are visible now (the bytes of the files they name do not change).
    fn sync_dir(&mut self, dir: &str) {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let direct = |k: &String| k.starts_with(&prefix) && !k[prefix.len()..].contains('/');
        let stale: Vec<String> = self
            .durable
            .keys()
            .filter(|k| direct(k) && !self.names.contains_key(*k))
            .cloned()
            .collect();
        for k in stale {
            self.durable.remove(&k);
        }
        let visible: Vec<(String, u64)> = self
            .names
            .iter()
            .filter(|(k, _)| direct(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        self.durable.extend(visible);
    }

    /// Drops one visible name of `ino`, freeing the inode when nothing refers to it any more.
    fn release(&mut self, ino: u64) {
        let free = match self.inodes.get_mut(&ino) {
            Some(inode) => {
                inode.nlink = inode.nlink.saturating_sub(1);
                inode.nlink == 0 && inode.writers == 0
            }
            None => false,
        };
        if free {
            self.inodes.remove(&ino);
        }
    }

    /// Frees `ino` if no name and no writer refers to it.
    fn maybe_free(&mut self, ino: u64) {
        if self
            .inodes
            .get(&ino)
            .is_some_and(|i| i.nlink == 0 && i.writers == 0)
        {
            self.inodes.remove(&ino);
        }
    }

    fn inode(&self, path: &str) -> Result<&Inode> {
        let ino = self.lookup(path)?;
        self.inodes
            .get(&ino)
            .ok_or_else(|| io_err(path, io::ErrorKind::Other, "dangling inode"))
    }
}

#[async_trait::async_trait]
impl Driver for MemDriver {
    fn capabilities(&self) -> Capabilities {
        Capabilities { hardlink: true }
    }

    async fn get(&self, path: &DriverPath) -> Result<Bytes> {
        let p = object(path)?;
        let st = self.lock();
        Ok(Bytes::copy_from_slice(&st.inode(p)?.data))
    }

    /// Durable on return: the new inode's bytes and the name are synced.
    async fn put(&self, path: &DriverPath, data: Bytes) -> Result<()> {
        self.create(path, data, true)
    }

    /// Visible at once, durable never (until [`Driver::persist`]): a power cut loses the object,
    /// and a durable object it replaced.
    async fn put_scratch(&self, path: &DriverPath, data: Bytes) -> Result<()> {
        self.create(path, data, false)
    }

    /// Syncs the object's bytes, then every directory above it (see [`State::sync_dir`]).
    async fn persist(&self, path: &DriverPath) -> Result<()> {
        let p = object(path)?;
        let mut st = self.lock();
        let ino = st.lookup(p)?;
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.synced = Bytes::copy_from_slice(&inode.data);
        }
        let mut dir = p;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            st.sync_dir(parent);
            dir = parent;
        }
        st.sync_dir("");
        Ok(())
    }

    async fn read_range(
        &self,
        path: &DriverPath,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream> {
        let p = object(path)?;
        let bytes = {
            let st = self.lock();
            let data = &st.inode(p)?.data;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let end = match len {
                Some(l) => start
                    .saturating_add(usize::try_from(l).unwrap_or(usize::MAX))
                    .min(data.len()),
                None => data.len(),
            };
            Bytes::copy_from_slice(&data[start..end])
        };
        let chunks: Vec<io::Result<Bytes>> = (0..bytes.len())
            .step_by(READ_CHUNK)
            .map(|i| Ok(bytes.slice(i..(i + READ_CHUNK).min(bytes.len()))))
            .collect();
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }

    async fn stat(&self, path: &DriverPath) -> Result<ObjectMeta> {
        let p = object(path)?;
        let st = self.lock();
        let ino = st.lookup(p)?;
        let inode = st.inode(p)?;
        Ok(ObjectMeta {
            size: inode.data.len() as u64,
            modified: inode.modified,
            id: Some((0, ino)),
        })
    }

    /// A file the writer creates has no durable name until the writer closes; the bytes written
    /// are durable only when it closes.
    async fn append(&self, path: &DriverPath) -> Result<Box<dyn DriverWriter>> {
        self.open_writer(path, true)
    }

    /// Like `append`, but closing the writer syncs only the bytes: the name of a file it
    /// created becomes durable through `persist` of a sibling, or under a new name by a move.
    async fn append_scratch(&self, path: &DriverPath) -> Result<Box<dyn DriverWriter>> {
        self.open_writer(path, false)
    }

    async fn list(&self, path: &DriverPath) -> Result<Vec<String>> {
        let prefix = if path.is_root() {
            String::new()
        } else {
            format!("{}/", path.as_str())
        };
        let st = self.lock();
        let names: BTreeSet<String> = st
            .names
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| k[prefix.len()..].split('/').next().map(str::to_owned))
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Durable on return (both directories are synced); the inode's bytes stay as synced.
    async fn rename(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        self.move_name(from, to, true)
    }

    /// Like `rename`, but the old name's removal is not durable: a power cut brings it back,
    /// naming the same inode as the new name.
    async fn rename_from_scratch(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        self.move_name(from, to, false)
    }

    async fn delete(&self, path: &DriverPath) -> Result<()> {
        let p = object(path)?;
        let mut st = self.lock();
        if st.names.contains_key(p) {
            st.remove_name(p);
        } else if st.is_dir(p) {
            return Err(io_err(
                p,
                io::ErrorKind::IsADirectory,
                "the path is a directory",
            ));
        }
        Ok(())
    }

    /// Refuses the root (`InvalidPath`). An object (not a directory) at `path` is an error.
    async fn delete_all(&self, path: &DriverPath) -> Result<()> {
        if path.is_root() {
            return Err(DriverError::InvalidPath(
                "refusing to delete the root".to_owned(),
            ));
        }
        let p = path.as_str();
        let mut st = self.lock();
        if st.names.contains_key(p) {
            return Err(io_err(p, io::ErrorKind::NotADirectory, "not a directory"));
        }
        let prefix = format!("{p}/");
        let doomed: Vec<String> = st
            .names
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        // Not durable: the durable names stay (a power cut brings the tree back).
        for k in doomed {
            if let Some(old) = st.names.remove(&k) {
                st.release(old);
            }
        }
        Ok(())
    }

    /// Durable on return: the new name is synced (the bytes stay as synced).
    async fn link(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        let (f, t) = (object(from)?, object(to)?);
        let mut st = self.lock();
        let ino = st.lookup(f)?;
        if st.names.contains_key(t) || st.is_dir(t) {
            return Err(DriverError::PreconditionFailed(format!("{t} exists")));
        }
        st.check_creatable(t)?;
        st.set_name(t, ino);
        st.durable.insert(t.to_owned(), ino);
        Ok(())
    }
}

/// The writer returned by [`MemDriver::append`](Driver::append).
struct MemWriter {
    driver: MemDriver,
    path: String,
    ino: u64,
    size: u64,
    /// False once closed (the inode's writer count was released).
    open: bool,
    /// Closing makes the writer's name durable (`append`), or only its bytes (`append_scratch`).
    durable_name: bool,
}

#[async_trait::async_trait]
impl DriverWriter for MemWriter {
    fn size(&self) -> u64 {
        self.size
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        let mut st = self.driver.lock();
        match st.inodes.get_mut(&self.ino) {
            Some(inode) => {
                inode.data.extend_from_slice(data);
                inode.modified = SystemTime::now();
            }
            None => {
                return Err(io_err(
                    &self.path,
                    io::ErrorKind::Other,
                    "the writer's inode is gone",
                ))
            }
        }
        self.size += data.len() as u64;
        Ok(())
    }

    /// The fsync: the inode's bytes become durable, and so does the name the writer opened if
    /// it still names this inode.
    async fn close(mut self: Box<Self>) -> Result<u64> {
        let mut st = self.driver.lock();
        if let Some(inode) = st.inodes.get_mut(&self.ino) {
            inode.synced = Bytes::copy_from_slice(&inode.data);
            inode.writers = inode.writers.saturating_sub(1);
        }
        self.open = false;
        if self.durable_name && st.names.get(&self.path) == Some(&self.ino) {
            st.durable.insert(self.path.clone(), self.ino);
        }
        st.maybe_free(self.ino);
        Ok(self.size)
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let mut st = self.driver.lock();
        if let Some(inode) = st.inodes.get_mut(&self.ino) {
            inode.writers = inode.writers.saturating_sub(1);
        }
        st.maybe_free(self.ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    fn p(s: &str) -> DriverPath {
        DriverPath::new(s).unwrap()
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let d = MemDriver::new();
        conformance::run_all(&d).await;
        assert!(d.paths().is_empty());
        assert!(d.lock().inodes.is_empty(), "inodes leaked");
    }

    #[tokio::test]
    async fn synced_operations_survive_a_power_cut() {
        let d = MemDriver::new();
        d.put(&p("a/x"), Bytes::from_static(b"x")).await.unwrap();
        d.put(&p("a/y"), Bytes::from_static(b"y")).await.unwrap();
        d.rename(&p("a/y"), &p("b/y")).await.unwrap();
        d.link(&p("a/x"), &p("c/x")).await.unwrap();
        d.put(&p("gone"), Bytes::from_static(b"g")).await.unwrap();
        d.delete(&p("gone")).await.unwrap();
        let after = d.power_cut();
        assert_eq!(after.paths(), ["a/x", "b/y", "c/x"]);
        assert_eq!(after.get(&p("b/y")).await.unwrap(), &b"y"[..]);
        let (a, c) = (
            after.stat(&p("a/x")).await.unwrap(),
            after.stat(&p("c/x")).await.unwrap(),
        );
        assert_eq!(a.id, c.id, "hard links survive as one inode");
    }

    #[tokio::test]
    async fn unsynced_appends_are_lost() {
        let d = MemDriver::new();
        let path = p("up/data");
        let mut w = d.append(&path).await.unwrap();
        w.write(b"abc").await.unwrap();
        assert_eq!(d.get(&path).await.unwrap(), &b"abc"[..]);
        // Never closed: neither the name nor the bytes are durable.
        assert!(d.power_cut().paths().is_empty());
        w.close().await.unwrap();

        let mut w = d.append(&path).await.unwrap();
        w.write(b"def").await.unwrap();
        let cut = d.power_cut();
        assert_eq!(cut.get(&path).await.unwrap(), &b"abc"[..]);
        w.close().await.unwrap();
        assert_eq!(d.power_cut().get(&path).await.unwrap(), &b"abcdef"[..]);
    }

    #[tokio::test]
    async fn renaming_an_unsynced_file_publishes_its_synced_bytes() {
        let d = MemDriver::new();
        let mut w = d.append(&p("up/data")).await.unwrap();
        w.write(b"not synced").await.unwrap();
        d.rename(&p("up/data"), &p("blob")).await.unwrap();
        // The rename is durable, the bytes are not: the file comes back empty, as on ext4.
        let cut = d.power_cut();
        assert_eq!(cut.paths(), ["blob"]);
        assert!(cut.get(&p("blob")).await.unwrap().is_empty());
        drop(w);
        assert_eq!(d.get(&p("blob")).await.unwrap(), &b"not synced"[..]);
    }

    #[tokio::test]
    async fn scratch_objects_are_durable_only_once_persisted() {
        let d = MemDriver::new();
        d.put_scratch(&p("s/info"), Bytes::from_static(b"i"))
            .await
            .unwrap();
        assert_eq!(d.get(&p("s/info")).await.unwrap(), &b"i"[..]);
        assert!(d.power_cut().paths().is_empty());
        d.persist(&p("s/info")).await.unwrap();
        assert_eq!(d.power_cut().get(&p("s/info")).await.unwrap(), &b"i"[..]);
        assert!(d.persist(&p("s/missing")).await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn a_scratch_append_is_named_durably_by_persisting_a_sibling() {
        let d = MemDriver::new();
        let mut w = d.append_scratch(&p("s/data")).await.unwrap();
        w.write(b"abc").await.unwrap();
        w.close().await.unwrap();
        assert!(
            d.power_cut().paths().is_empty(),
            "closing syncs the bytes, not the name"
        );
        d.put_scratch(&p("s/info"), Bytes::from_static(b"i"))
            .await
            .unwrap();
        d.put_scratch(&p("other/x"), Bytes::from_static(b"x"))
            .await
            .unwrap();
        d.persist(&p("s/info")).await.unwrap();
        let after = d.power_cut();
        assert_eq!(after.paths(), ["s/data", "s/info"], "only s/ was synced");
        assert_eq!(after.get(&p("s/data")).await.unwrap(), &b"abc"[..]);
    }

    #[tokio::test]
    async fn a_persist_also_syncs_removals_in_its_directory() {
        let d = MemDriver::new();
        d.put(&p("s/old"), Bytes::from_static(b"o")).await.unwrap();
        d.delete_all(&p("s")).await.unwrap();
        d.put_scratch(&p("s/info"), Bytes::from_static(b"i"))
            .await
            .unwrap();
        d.persist(&p("s/info")).await.unwrap();
        assert_eq!(d.power_cut().paths(), ["s/info"]);
    }

    #[tokio::test]
    async fn a_move_from_scratch_may_leave_the_old_name_behind() {
        let d = MemDriver::new();
        d.put(&p("up/a"), Bytes::from_static(b"a")).await.unwrap();
        d.rename_from_scratch(&p("up/a"), &p("cas/a"))
            .await
            .unwrap();
        assert_eq!(d.paths(), ["cas/a"]);
        let after = d.power_cut();
        assert_eq!(after.paths(), ["cas/a", "up/a"]);
        let (a, b) = (
            after.stat(&p("cas/a")).await.unwrap(),
            after.stat(&p("up/a")).await.unwrap(),
        );
        assert_eq!(a.id, b.id, "the old name comes back as a second link");
        // A name that was never durable does not come back.
        let mut w = d.append_scratch(&p("up/b")).await.unwrap();
        w.write(b"b").await.unwrap();
        w.close().await.unwrap();
        d.rename_from_scratch(&p("up/b"), &p("cas/b"))
            .await
            .unwrap();
        let after = d.power_cut();
        assert_eq!(after.paths(), ["cas/a", "cas/b", "up/a"]);
        assert_eq!(after.get(&p("cas/b")).await.unwrap(), &b"b"[..]);
    }

    #[tokio::test]
    async fn a_removed_tree_comes_back_after_a_power_cut() {
        let d = MemDriver::new();
        d.put(&p("t/a"), Bytes::from_static(b"a")).await.unwrap();
        d.put(&p("t/b"), Bytes::from_static(b"b")).await.unwrap();
        d.rename(&p("t/b"), &p("kept")).await.unwrap();
        d.delete_all(&p("t")).await.unwrap();
        assert_eq!(d.paths(), ["kept"]);
        // delete_all is not durable; the rename out of the tree was.
        let cut = d.power_cut();
        assert_eq!(cut.paths(), ["kept", "t/a"]);
        assert_eq!(cut.get(&p("kept")).await.unwrap(), &b"b"[..]);
    }

    #[tokio::test]
    async fn objects_and_directories_do_not_overlap() {
        let d = MemDriver::new();
        d.put(&p("a"), Bytes::from_static(b"x")).await.unwrap();
        assert!(d.put(&p("a/b"), Bytes::new()).await.is_err());
        d.put(&p("dir/obj"), Bytes::new()).await.unwrap();
        assert!(d.put(&p("dir"), Bytes::new()).await.is_err());
        assert!(d.delete_all(&p("a")).await.is_err());
        assert!(d.get(&p("dir")).await.unwrap_err().is_not_found());
        assert!(d.get(&p("a/b")).await.unwrap_err().is_not_found());
    }
}
