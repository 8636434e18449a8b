//! The catalog: repositories that hold at least one manifest, in lexical order, read from the
//! metadata store so a page costs what the page holds. A repository with only blobs (links
//! made by mounts, say) is not listed.

use std::ops::Bound;

use berth_meta::records::{decode, RepoRecord};
use berth_meta::Table;

use crate::{Registry, Result};

impl Registry {
    /// One page of repository names after `last`, at most `n`; and whether more follow. Waits
    /// for the start-up reconciliation, which records repositories placed under the root.
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool)> {
        self.reconcile_all().await?;
        let want = n.unwrap_or(usize::MAX);
        let mut page = Vec::new();
        let mut cursor: Option<Vec<u8>> = last.map(|l| l.as_bytes().to_vec());
        let snap = self.meta.read()?;
        loop {
            let start = match &cursor {
                Some(c) => Bound::Excluded(c.as_slice()),
                None => Bound::Unbounded,
            };
            let batch = snap.range(Table::Repos, start, Bound::Unbounded, 512)?;
            if batch.is_empty() {
                return Ok((page, false));
            }
            for (k, v) in &batch {
                let rec: RepoRecord = decode(Table::Repos, v)?;
                if rec.manifests == 0 {
                    continue;
                }
                if page.len() == want {
                    return Ok((page, true));
                }
                page.push(String::from_utf8_lossy(k).into_owned());
            }
            cursor = batch.last().map(|(k, _)| k.clone());
        }
    }

    /// Every repository name.
    pub async fn catalog_all(&self) -> Result<Vec<String>> {
        Ok(self.catalog(None, None).await?.0)
    }
}
