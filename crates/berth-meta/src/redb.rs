//! The embedded engine: one redb file (`_berth/meta.redb`). Readers use MVCC snapshots and never
//! block the single writer; a durable commit is on disk when it returns.

use std::ops::Bound;
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::{Durability, Entry, MetaError, MetaStore, ReadTx, Result, Table, WriteTx};

fn def(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

fn engine(e: impl Into<redb::Error>) -> MetaError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            MetaError::NoSpace(e.to_string())
        }
        _ => MetaError::Engine(e.to_string()),
    }
}

/// A metadata store in one redb database file.
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    /// Opens or creates the database at `path`, creating every table.
    pub fn open(path: &Path) -> Result<RedbStore> {
        let db = redb::Database::create(path).map_err(engine)?;
        let tx = db.begin_write().map_err(engine)?;
        for t in Table::ALL {
            tx.open_table(def(t)).map_err(engine)?;
        }
        tx.commit().map_err(engine)?;
        Ok(RedbStore { db })
    }
}

struct Read(redb::ReadTransaction);

fn collect<'a>(
    iter: impl Iterator<
        Item = std::result::Result<
            (
                redb::AccessGuard<'a, &'static [u8]>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    >,
    limit: usize,
) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for item in iter.take(limit) {
        let (k, v) = item.map_err(engine)?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

impl ReadTx for Read {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = self.0.open_table(def(table)).map_err(engine)?;
        Ok(t.get(key).map_err(engine)?.map(|v| v.value().to_vec()))
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let t = self.0.open_table(def(table)).map_err(engine)?;
        collect(t.range::<&[u8]>((start, end)).map_err(engine)?, limit)
    }
}

struct Write<'a>(&'a redb::WriteTransaction);

impl ReadTx for Write<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = self.0.open_table(def(table)).map_err(engine)?;
        let v = t.get(key).map_err(engine)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let t = self.0.open_table(def(table)).map_err(engine)?;
        let v = collect(t.range::<&[u8]>((start, end)).map_err(engine)?, limit);
        v
    }
}

impl WriteTx for Write<'_> {
    fn insert(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        let mut t = self.0.open_table(def(table)).map_err(engine)?;
        t.insert(key, value).map_err(engine)?;
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        let mut t = self.0.open_table(def(table)).map_err(engine)?;
        let existed = t.remove(key).map_err(engine)?.is_some();
        Ok(existed)
    }
}

impl MetaStore for RedbStore {
    fn read(&self) -> Result<Box<dyn ReadTx + Send + '_>> {
        Ok(Box::new(Read(self.db.begin_read().map_err(engine)?)))
    }

    fn write(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn WriteTx) -> Result<()>,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(engine)?;
        let level = match durability {
            Durability::Durable => redb::Durability::Immediate,
            Durability::Lazy => redb::Durability::None,
        };
        tx.set_durability(level).map_err(engine)?;
        match body(&mut Write(&tx)) {
            Ok(()) => tx.commit().map_err(engine),
            Err(e) => {
                tx.abort().map_err(engine)?;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::RedbStore::open(&dir.path().join("meta.redb")).unwrap();
        crate::conformance::run_all(&store);
    }

    #[test]
    fn durable_commits_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = super::RedbStore::open(&path).unwrap();
            crate::write(&store, crate::Durability::Durable, |tx| {
                tx.insert(crate::Table::Tags, b"k", b"v")
            })
            .unwrap();
        }
        let store = super::RedbStore::open(&path).unwrap();
        use crate::MetaStore;
        assert_eq!(
            store.read().unwrap().get(crate::Table::Tags, b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }
}
