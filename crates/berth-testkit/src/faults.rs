//! Fault injection at the storage seams, for power-loss tests.
//!
//! A [`CrashSwitch`] is shared by a [`FaultyDriver`] and a [`FaultyMeta`] (the machine's disks).
//! Every operation that changes storage is one *crash point*: the driver's `put`, `rename`,
//! `link`, `delete`, `delete_all` and `append`, each [`DriverWriter::write`] and
//! [`DriverWriter::close`], and each metadata write transaction. The switch counts them; armed
//! with [`CrashSwitch::failing_at`]`(k)`, the power fails at the `k`-th: that operation and every
//! later one (reads included) fail with an I/O error and apply nothing.
//!
//! What survives is then taken from the wrapped stores: [`FaultyDriver::power_cut`] (a
//! [`MemDriver`]'s durable state: unsynced appends dropped) and [`FaultyMeta::durable`] (a
//! [`MemStore`]'s committed state, durable by construction since a crashed transaction applies
//! nothing). Lazy metadata commits are treated as durable, which only makes a test more lenient
//! about pull statistics.
//!
//! Run the same sequential scenario once with [`CrashSwitch::new`] to count the crash points
//! `T`, then once per `k` in `1..=T`.

use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use berth_driver::memory::MemDriver;
use berth_driver::{
    ByteStream, Capabilities, Driver, DriverError, DriverPath, DriverWriter, ObjectMeta,
};
use berth_meta::memory::MemStore;
use berth_meta::{Durability, MetaError, MetaStore, ReadTx, Table, WriteTx};
use bytes::Bytes;

/// The message of every simulated failure.
const POWER_FAILED: &str = "simulated power failure";

/// A countdown of crash points, shared by the storage seams of one simulated machine.
/// Clones share the count.
#[derive(Clone, Default)]
pub struct CrashSwitch {
    state: Arc<Mutex<SwitchState>>,
}

#[derive(Default)]
struct SwitchState {
    /// Crash points reached so far (the failing one included).
    ops: u64,
    /// The crash point at which the power fails (1-based); `None` never fails.
    fail_at: Option<u64>,
    crashed: bool,
    /// What each crash point was, in order.
    log: Vec<String>,
}

impl CrashSwitch {
    /// A switch that never fails; it only counts (and names) the crash points.
    pub fn new() -> CrashSwitch {
        CrashSwitch::default()
    }

    /// A switch whose power fails at the `k`-th crash point (1-based).
    pub fn failing_at(k: u64) -> CrashSwitch {
        let s = CrashSwitch::default();
        s.lock().fail_at = Some(k);
        s
    }

    fn lock(&self) -> MutexGuard<'_, SwitchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Passes one crash point named `what`: true if the operation may go ahead, false if the
    /// power is (now) off.
    fn point(&self, what: impl FnOnce() -> String) -> bool {
        let mut s = self.lock();
        if s.crashed {
            return false;
        }
        s.ops += 1;
        s.log.push(what());
        if s.fail_at == Some(s.ops) {
            s.crashed = true;
            return false;
        }
        true
    }

    /// Cuts the power now (every later operation fails).
    pub fn cut(&self) {
        self.lock().crashed = true;
    }

    /// Whether the power has failed.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Crash points reached so far (including the one that failed).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// What the crash points reached so far were, in order.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// What the failing crash point was, once the power failed there.
    pub fn crash_point(&self) -> Option<String> {
        let s = self.lock();
        match (s.crashed, s.fail_at) {
            (true, Some(k)) if s.ops == k => s.log.last().cloned(),
            _ => None,
        }
    }

    fn driver_error(&self, path: &str) -> DriverError {
        DriverError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(POWER_FAILED),
        }
    }
}

fn meta_error() -> MetaError {
    MetaError::Engine(POWER_FAILED.to_owned())
}

/// A driver whose mutating operations are crash points of a [`CrashSwitch`]. Reads are not
/// crash points, but fail too once the power is off.
pub struct FaultyDriver<D = MemDriver> {
    inner: D,
    switch: CrashSwitch,
}

impl<D: Driver> FaultyDriver<D> {
    pub fn new(inner: D, switch: CrashSwitch) -> FaultyDriver<D> {
        FaultyDriver { inner, switch }
    }

    /// The wrapped driver.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn switch(&self) -> &CrashSwitch {
        &self.switch
    }

    fn alive(&self, path: &DriverPath) -> Result<(), DriverError> {
        if self.switch.crashed() {
            return Err(self.switch.driver_error(path.as_str()));
        }
        Ok(())
    }

    fn point(&self, path: &DriverPath, what: impl FnOnce() -> String) -> Result<(), DriverError> {
        if self.switch.point(what) {
            Ok(())
        } else {
            Err(self.switch.driver_error(path.as_str()))
        }
    }

    fn writer(&self, inner: Box<dyn DriverWriter>, path: &DriverPath) -> Box<dyn DriverWriter> {
        Box::new(FaultyWriter {
            inner,
            switch: self.switch.clone(),
            path: path.clone(),
        })
    }
}

impl FaultyDriver<MemDriver> {
    /// The state that survives the power cut: what the wrapped driver had synced.
    pub fn power_cut(&self) -> MemDriver {
        self.inner.power_cut()
    }
}

#[async_trait::async_trait]
impl<D: Driver> Driver for FaultyDriver<D> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, path: &DriverPath) -> Result<Bytes, DriverError> {
        self.alive(path)?;
        self.inner.get(path).await
    }

    async fn put(&self, path: &DriverPath, data: Bytes) -> Result<(), DriverError> {
        self.point(path, || format!("put {path}"))?;
        self.inner.put(path, data).await
    }

    async fn put_scratch(&self, path: &DriverPath, data: Bytes) -> Result<(), DriverError> {
        self.point(path, || format!("put_scratch {path}"))?;
        self.inner.put_scratch(path, data).await
    }

    async fn persist(&self, path: &DriverPath) -> Result<(), DriverError> {
        self.point(path, || format!("persist {path}"))?;
        self.inner.persist(path).await
    }

    async fn read_range(
        &self,
        path: &DriverPath,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, DriverError> {
        self.alive(path)?;
        self.inner.read_range(path, offset, len).await
    }

    async fn stat(&self, path: &DriverPath) -> Result<ObjectMeta, DriverError> {
        self.alive(path)?;
        self.inner.stat(path).await
    }

    async fn append(&self, path: &DriverPath) -> Result<Box<dyn DriverWriter>, DriverError> {
        self.point(path, || format!("append {path}"))?;
        let inner = self.inner.append(path).await?;
        Ok(self.writer(inner, path))
    }

    async fn append_scratch(
        &self,
        path: &DriverPath,
    ) -> Result<Box<dyn DriverWriter>, DriverError> {
        self.point(path, || format!("append_scratch {path}"))?;
        let inner = self.inner.append_scratch(path).await?;
        Ok(self.writer(inner, path))
    }

    async fn list(&self, path: &DriverPath) -> Result<Vec<String>, DriverError> {
        self.alive(path)?;
        self.inner.list(path).await
    }

    async fn rename(&self, from: &DriverPath, to: &DriverPath) -> Result<(), DriverError> {
        self.point(from, || format!("rename {from} -> {to}"))?;
        self.inner.rename(from, to).await
    }

    async fn rename_from_scratch(
        &self,
        from: &DriverPath,
        to: &DriverPath,
    ) -> Result<(), DriverError> {
        self.point(from, || format!("rename_from_scratch {from} -> {to}"))?;
        self.inner.rename_from_scratch(from, to).await
    }

    async fn delete(&self, path: &DriverPath) -> Result<(), DriverError> {
        self.point(path, || format!("delete {path}"))?;
        self.inner.delete(path).await
    }

    async fn delete_all(&self, path: &DriverPath) -> Result<(), DriverError> {
        self.point(path, || format!("delete_all {path}"))?;
        self.inner.delete_all(path).await
    }

    async fn link(&self, from: &DriverPath, to: &DriverPath) -> Result<(), DriverError> {
        self.point(from, || format!("link {from} -> {to}"))?;
        self.inner.link(from, to).await
    }

    async fn free_space(&self) -> Result<Option<u64>, DriverError> {
        self.alive(&DriverPath::root())?;
        self.inner.free_space().await
    }
}

/// An append writer whose `write` and `close` are crash points.
struct FaultyWriter {
    inner: Box<dyn DriverWriter>,
    switch: CrashSwitch,
    path: DriverPath,
}

#[async_trait::async_trait]
impl DriverWriter for FaultyWriter {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), DriverError> {
        let (path, n) = (&self.path, data.len());
        if !self.switch.point(|| format!("write {path} ({n} bytes)")) {
            return Err(self.switch.driver_error(path.as_str()));
        }
        self.inner.write(data).await
    }

    async fn close(self: Box<Self>) -> Result<u64, DriverError> {
        let path = &self.path;
        if !self.switch.point(|| format!("close (sync) {path}")) {
            return Err(self.switch.driver_error(path.as_str()));
        }
        self.inner.close().await
    }
}

/// A metadata store whose write transactions are crash points of a [`CrashSwitch`]; a crashed
/// transaction applies nothing. Reads fail once the power is off.
pub struct FaultyMeta<M = MemStore> {
    inner: Arc<M>,
    switch: CrashSwitch,
}

impl<M: MetaStore> FaultyMeta<M> {
    pub fn new(inner: Arc<M>, switch: CrashSwitch) -> FaultyMeta<M> {
        FaultyMeta { inner, switch }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<M> {
        &self.inner
    }

    /// What survives the power cut: a copy of every committed record (a crashed transaction
    /// applied nothing, and every commit that returned is durable).
    pub fn durable(&self) -> Result<MemStore, MetaError> {
        copy_store(self.inner.as_ref())
    }
}

impl<M: MetaStore> MetaStore for FaultyMeta<M> {
    fn read(&self) -> Result<Box<dyn ReadTx + Send + '_>, MetaError> {
        if self.switch.crashed() {
            return Err(meta_error());
        }
        self.inner.read()
    }

    fn write(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn WriteTx) -> Result<(), MetaError>,
    ) -> Result<(), MetaError> {
        if !self
            .switch
            .point(|| format!("metadata transaction ({durability:?})"))
        {
            return Err(meta_error());
        }
        self.inner.write(durability, body)
    }
}

/// Every record of `from` (one consistent snapshot), copied into a new in-memory store.
pub fn copy_store(from: &dyn MetaStore) -> Result<MemStore, MetaError> {
    let tables = {
        let snap = from.read()?;
        let mut tables = Vec::new();
        for t in Table::ALL {
            tables.push((
                t,
                snap.range(t, Bound::Unbounded, Bound::Unbounded, usize::MAX)?,
            ));
        }
        tables
    };
    let store = MemStore::default();
    store.write(Durability::Durable, &mut |tx| {
        for (t, entries) in &tables {
            for (k, v) in entries {
                tx.insert(*t, k, v)?;
            }
        }
        Ok(())
    })?;
    Ok(store)
}
