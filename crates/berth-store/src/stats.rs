//! Pull statistics: counted in memory on the request path and written to the metadata store in
//! batches, with lazy durability (a crash may lose the last few seconds of counts, never a
//! push). A `HEAD` counts as a pull.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_meta::records::{get, put, ManifestRecord, TagRecord};
use berth_meta::{Durability, Table};
use berth_oci::{Digest, RepoName};

use crate::{book, Registry, Result};

/// What was pulled: repository, manifest and the tag used, if any.
type PullKey = (RepoName, Digest, Option<String>);

/// Pulls counted since the last flush: how many, and when the last one was.
#[derive(Default)]
pub(crate) struct Pulls {
    pending: Mutex<HashMap<PullKey, (u64, u64)>>,
}

impl Pulls {
    pub(crate) fn record(&self, repo: &RepoName, digest: &Digest, tag: Option<&str>) {
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = p
            .entry((repo.clone(), digest.clone(), tag.map(str::to_owned)))
            .or_insert((0, 0));
        e.0 += 1;
        e.1 = book::now();
    }
}

impl Registry {
    /// Writes the pull counts gathered since the last flush. Returns how many entries it wrote.
    pub async fn flush_pull_stats(&self) -> Result<usize> {
        let batch = std::mem::take(
            &mut *self
                .pulls
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        self.meta_write(Durability::Lazy, move |tx| {
            for ((repo, digest, tag), (count, last)) in &batch {
                let mk = book::manifest_key(repo, digest);
                if let Some(mut m) = get::<ManifestRecord>(tx, Table::Manifests, &mk)? {
                    m.pulls += count;
                    m.last_pulled = Some(*last);
                    put(tx, Table::Manifests, &mk, &m)?;
                }
                if let Some(tag) = tag {
                    let tk = book::tag_key(repo, tag);
                    if let Some(mut t) = get::<TagRecord>(tx, Table::Tags, &tk)? {
                        t.pulls += count;
                        t.last_pulled = Some(*last);
                        put(tx, Table::Tags, &tk, &t)?;
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(n)
    }
}
