//! An in-memory metadata store: the reference implementation of the seam, for tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use crate::{Durability, Entry, MetaStore, ReadTx, Result, Table, WriteTx};

type Tables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A metadata store held in memory; transactions copy-on-write the whole map.
#[derive(Default)]
pub struct MemStore {
    data: Mutex<Tables>,
}

struct Snapshot(Tables);

impl ReadTx for Snapshot {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let Some(t) = self.0.get(&table) else {
            return Ok(Vec::new());
        };
        Ok(t.range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl WriteTx for Snapshot {
    fn insert(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.0
            .entry(table)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.0.entry(table).or_default().remove(key).is_some())
    }
}

impl MetaStore for MemStore {
    fn read(&self) -> Result<Box<dyn ReadTx + Send + '_>> {
        let data = self
            .data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Box::new(Snapshot(data.clone())))
    }

    fn write(
        &self,
        _durability: Durability,
        body: &mut dyn FnMut(&mut dyn WriteTx) -> Result<()>,
    ) -> Result<()> {
        let mut data = self
            .data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tx = Snapshot(data.clone());
        body(&mut tx)?;
        *data = tx.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_the_conformance_suite() {
        crate::conformance::run_all(&super::MemStore::default());
    }
}
