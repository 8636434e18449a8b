//! Scrub: re-hash every blob and manifest, check that every manifest's references exist and
//! that layouts, the shared store and the metadata store agree; report each problem with its
//! repository, tags and digest. With repair, mend what can be mended without guessing, and
//! never delete the only copy of anything:
//!
//! - a missing or corrupt repository blob is relinked from a verified copy (the shared store or
//!   another repository);
//! - a corrupt blob with no good copy anywhere is moved to `_berth/quarantine/` (so it is never
//!   served as valid) and unlinked from the repositories;
//! - an `index.json` entry whose manifest bytes are gone everywhere is dropped, and said so;
//! - metadata drift is reconciled.

use std::collections::{HashMap, HashSet};

use berth_driver::DriverPath;
use berth_meta::records::{decode, key, CasRecord};
use berth_meta::{Durability, Table};
use berth_oci::manifest::Manifest;
use berth_oci::{Digest, RepoName};
use futures_util::StreamExt;
use serde::Serialize;

use crate::{book, layout, Registry, Result, StoreError};

/// Settings of one scrub.
#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Only this repository (the shared store is then not checked on its own).
    pub repo: Option<RepoName>,
    /// Mend what can be mended.
    pub repair: bool,
}

/// What kind of damage a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A repository's `index.json` does not parse.
    IndexUnreadable,
    /// A blob's bytes do not match its digest.
    CorruptBlob,
    /// `index.json` lists a manifest whose bytes are missing.
    MissingManifest,
    /// A manifest's bytes do not parse as a manifest.
    UnparsableManifest,
    /// A manifest references a blob the repository does not hold.
    MissingReference,
    /// The metadata store disagrees with the layout.
    MetadataDrift,
    /// A shared-store file is missing, or has no record.
    SharedStore,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrubProblem {
    pub kind: ProblemKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub detail: String,
    /// What repair did about it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
}

/// The outcome of a scrub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    pub repair: bool,
    pub repositories: u64,
    pub manifests_checked: u64,
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub problems: Vec<ScrubProblem>,
    pub repaired: u64,
}

/// Progress of a scrub.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ScrubEvent {
    Started {
        repositories: usize,
    },
    Repository {
        done: usize,
        total: usize,
        name: String,
    },
    SharedStore,
}

/// Hash results by file identity, so bytes shared by hard links are hashed once.
#[derive(Default)]
struct Hashed {
    by_id: HashMap<(u64, u64), bool>,
}

impl Registry {
    /// Whether the file at `path` holds bytes whose digest is `d` (hashing each inode once).
    async fn verify_file(
        &self,
        path: &DriverPath,
        d: &Digest,
        cache: &mut Hashed,
        report: &mut ScrubReport,
    ) -> Result<Option<bool>> {
        let meta = match self.driver.stat(path).await {
            Ok(m) => m,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if let Some(ok) = meta.id.and_then(|id| cache.by_id.get(&id)) {
            return Ok(Some(*ok));
        }
        let mut hasher = d.algorithm().hasher();
        let mut stream = self.driver.read_range(path, 0, None).await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| berth_driver::DriverError::io(path.to_string(), e))?;
            hasher.update(&chunk);
        }
        report.bytes_hashed += meta.size;
        let ok = &hasher.finish() == d;
        if let Some(id) = meta.id {
            cache.by_id.insert(id, ok);
        }
        Ok(Some(ok))
    }

    /// A verified copy of `d` outside `not_in`: the shared store or another repository's file.
    async fn good_copy(
        &self,
        d: &Digest,
        not_in: &RepoName,
        cache: &mut Hashed,
        report: &mut ScrubReport,
    ) -> Result<Option<DriverPath>> {
        let cas = layout::cas_blob(d)?;
        if self.verify_file(&cas, d, cache, report).await? == Some(true) {
            return Ok(Some(cas));
        }
        let holders = {
            let snap = self.meta.read()?;
            berth_meta::scan_prefix(
                snap.as_ref(),
                Table::BlobRepos,
                &key::prefix(&[&d.to_string()]),
                64,
            )?
        };
        for (k, _) in holders {
            let Some(r) = key::parts(&k).get(1).and_then(|r| RepoName::parse(r).ok()) else {
                continue;
            };
            if &r == not_in {
                continue;
            }
            let p = layout::blob(&r, d)?;
            if self.verify_file(&p, d, cache, report).await? == Some(true) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// Replaces (or creates) `name`'s file of `d` by a link to, or copy of, the good copy at
    /// `from`, under the repository lock.
    async fn relink(&self, name: &RepoName, d: &Digest, from: &DriverPath) -> Result<()> {
        let target = layout::blob(name, d)?;
        let scratch = layout::upload_data(&format!("scrub-{}", uuid::Uuid::new_v4().simple()))?;
        let made = if self.dedupe {
            self.driver
                .link(from, &scratch)
                .await
                .map_err(StoreError::from)
        } else {
            let mut w = self.driver.append(&scratch).await?;
            let mut stream = self.driver.read_range(from, 0, None).await?;
            while let Some(chunk) = stream.next().await {
                w.write(&chunk.map_err(|e| berth_driver::DriverError::io(from.to_string(), e))?)
                    .await?;
            }
            w.close().await.map(|_| ()).map_err(StoreError::from)
        };
        let result = match made {
            Ok(()) => {
                self.with_state(name, async |reg, _| {
                    Ok(reg.driver.rename(&scratch, &target).await?)
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Some(dir) = scratch.parent() {
            self.driver.delete_all(&dir).await?;
        }
        result
    }

    /// Checks every repository (or one) and the shared store; with `repair`, mends.
    pub async fn scrub(
        &self,
        opts: &ScrubOptions,
        progress: &(dyn Fn(ScrubEvent) + Send + Sync),
    ) -> Result<ScrubReport> {
        self.reconcile_all().await?;
        let mut report = ScrubReport {
            repair: opts.repair,
            ..Default::default()
        };
        let mut cache = Hashed::default();
        let repos = self.pass_targets(opts.repo.as_ref()).await?;
        progress(ScrubEvent::Started {
            repositories: repos.len(),
        });
        for (i, name) in repos.iter().enumerate() {
            progress(ScrubEvent::Repository {
                done: i,
                total: repos.len(),
                name: name.to_string(),
            });
            self.scrub_repo(name, opts, &mut cache, &mut report).await?;
            report.repositories += 1;
        }
        if opts.repo.is_none() {
            progress(ScrubEvent::SharedStore);
            self.scrub_shared(&mut cache, &mut report).await?;
        }
        report.repaired = report
            .problems
            .iter()
            .filter(|p| p.repaired.is_some())
            .count() as u64;
        Ok(report)
    }

    async fn scrub_repo(
        &self,
        name: &RepoName,
        opts: &ScrubOptions,
        cache: &mut Hashed,
        report: &mut ScrubReport,
    ) -> Result<()> {
        let problem =
            |kind, digest: Option<&Digest>, tags: Vec<String>, detail: String| ScrubProblem {
                kind,
                repository: Some(name.to_string()),
                tags,
                digest: digest.map(ToString::to_string),
                detail,
                repaired: None,
            };
        // The layout as it is on disk now (not the cached copy), its journal applied.
        let index = match self.load_fresh(name).await {
            Ok(state) if state.exists => state.index,
            Ok(_) => return Ok(()),
            Err(StoreError::Corrupt(e)) => {
                report.problems.push(problem(
                    ProblemKind::IndexUnreadable,
                    None,
                    vec![],
                    format!("index.json does not parse: {e}"),
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let files: HashSet<Digest> = self.blob_files(name).await?.into_iter().collect();
        // Every blob file's bytes.
        let mut corrupt: HashSet<Digest> = HashSet::new();
        let mut sorted: Vec<&Digest> = files.iter().collect();
        sorted.sort();
        for d in sorted {
            report.blobs_checked += 1;
            if self
                .verify_file(&layout::blob(name, d)?, d, cache, report)
                .await?
                == Some(false)
            {
                corrupt.insert(d.clone());
                let mut p = problem(
                    ProblemKind::CorruptBlob,
                    Some(d),
                    index.tags_of(d),
                    "the bytes do not match the digest".into(),
                );
                if opts.repair {
                    p.repaired = Some(self.repair_corrupt(name, d, cache, report).await?);
                }
                report.problems.push(p);
            }
        }
        // Every manifest: present, parses, and its references present.
        let mut dropped = Vec::new();
        for d in index.digests() {
            report.manifests_checked += 1;
            let tags = index.tags_of(&d);
            let media_type = index
                .by_digest(&d)
                .map(|x| x.media_type.clone())
                .unwrap_or_default();
            if !files.contains(&d) {
                let mut p = problem(
                    ProblemKind::MissingManifest,
                    Some(&d),
                    tags.clone(),
                    "index.json lists it but its bytes are missing".into(),
                );
                if opts.repair {
                    p.repaired = Some(match self.good_copy(&d, name, cache, report).await? {
                        Some(from) => {
                            self.relink(name, &d, &from).await?;
                            "relinked from a verified copy".into()
                        }
                        None => {
                            dropped.push(d.clone());
                            "no copy exists anywhere: dropped its index.json entries".into()
                        }
                    });
                }
                report.problems.push(p);
                continue;
            }
            if corrupt.contains(&d) {
                continue;
            }
            let bytes = self.driver.get(&layout::blob(name, &d)?).await?;
            let manifest = match Manifest::parse(&bytes, Some(&media_type)) {
                Ok(m) => m,
                Err(e) => {
                    report.problems.push(problem(
                        ProblemKind::UnparsableManifest,
                        Some(&d),
                        tags,
                        e.to_string(),
                    ));
                    continue;
                }
            };
            for r in manifest.references() {
                if files.contains(&r.digest) {
                    continue;
                }
                let mut p = problem(
                    ProblemKind::MissingReference,
                    Some(&d),
                    tags.clone(),
                    format!(
                        "references {} ({}), which the repository does not hold",
                        r.digest, r.media_type
                    ),
                );
                if opts.repair {
                    if let Some(from) = self.good_copy(&r.digest, name, cache, report).await? {
                        self.relink(name, &r.digest, &from).await?;
                        p.repaired = Some(format!("relinked {} from a verified copy", r.digest));
                    }
                }
                report.problems.push(p);
            }
        }
        if !dropped.is_empty() {
            self.with_state(name, async |reg, state| {
                reg.remove_locked(name, state, &[], &dropped).await
            })
            .await?;
        }
        // The metadata store against the layout.
        let drift = self
            .with_state(name, async |reg, state| {
                // Re-read index.json: the cache must reflect repairs made above.
                *state = reg.load_fresh(name).await?;
                reg.reconcile_repo_with(name, state, opts.repair).await
            })
            .await?;
        let clean = crate::ReconcileSummary {
            repositories: 1,
            ..Default::default()
        };
        if drift != clean {
            let mut p = problem(
                ProblemKind::MetadataDrift,
                None,
                vec![],
                format!("{drift:?}"),
            );
            if opts.repair {
                p.repaired = Some("reconciled the metadata store with the layout".into());
            }
            report.problems.push(p);
        }
        Ok(())
    }

    /// A corrupt blob: relink a verified copy if one exists, else quarantine the bytes and
    /// unlink them from every repository, so they are never served as valid.
    async fn repair_corrupt(
        &self,
        name: &RepoName,
        d: &Digest,
        cache: &mut Hashed,
        report: &mut ScrubReport,
    ) -> Result<String> {
        if let Some(from) = self.good_copy(d, name, cache, report).await? {
            self.relink(name, d, &from).await?;
            return Ok("relinked from a verified copy".into());
        }
        let quarantine = DriverPath::new(&format!(
            "{}/quarantine/{}/{}",
            layout::META_DIR,
            name,
            d.hex()
        ))?;
        let _stripe = self.stripe(d).lock().await;
        let path = layout::blob(name, d)?;
        self.with_state(name, async |reg, _| {
            reg.driver.rename(&path, &quarantine).await?;
            let (n, dd, now) = (name.clone(), d.clone(), book::now());
            reg.meta_write(Durability::Durable, move |tx| {
                book::unlink(tx, &n, &dd, now)
            })
            .await
        })
        .await?;
        // Other repositories may share the same (corrupt) bytes through `_cas`.
        let cas = layout::cas_blob(d)?;
        if self.verify_file(&cas, d, cache, report).await? == Some(false) {
            self.driver.delete(&cas).await?;
        }
        Ok(format!(
            "no good copy exists: moved to {quarantine} and unlinked; push the blob again to heal"
        ))
    }

    /// The shared store: every record's file exists and verifies.
    async fn scrub_shared(&self, cache: &mut Hashed, report: &mut ScrubReport) -> Result<()> {
        let records = {
            let snap = self.meta.read()?;
            snap.range(
                Table::Cas,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                usize::MAX,
            )?
        };
        for (k, v) in records {
            let Ok(d) = Digest::parse(&String::from_utf8_lossy(&k)) else {
                continue;
            };
            let rec: CasRecord = decode(Table::Cas, &v)?;
            if !self.dedupe || rec.repos == 0 {
                continue;
            }
            match self.verify_file(&layout::cas_blob(&d)?, &d, cache, report).await? {
                Some(true) => {}
                Some(false) => report.problems.push(ScrubProblem {
                    kind: ProblemKind::SharedStore,
                    repository: None,
                    tags: vec![],
                    digest: Some(d.to_string()),
                    detail: "the shared copy's bytes do not match the digest".into(),
                    repaired: None,
                }),
                None => report.problems.push(ScrubProblem {
                    kind: ProblemKind::SharedStore,
                    repository: None,
                    tags: vec![],
                    digest: Some(d.to_string()),
                    detail: format!("{} repositories link it but the shared copy is missing (their own links still hold the bytes)", rec.repos),
                    repaired: None,
                }),
            }
        }
        Ok(())
    }
}
