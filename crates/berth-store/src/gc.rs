//! Garbage collection and retention, online and race-free by protocol (docs/DESIGN.md, "Garbage
//! collection").
//!
//! A pass plans from a snapshot without locks, then applies each repository's plan in short
//! batches under that repository's write lock, re-checking every candidate against fresh state
//! first; the shared store is swept last, each digest under its stripe lock. Whatever a push
//! changed between plan and apply wins: the candidate is skipped. Garbage is never decided from
//! file times: every age comes from the metadata store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use berth_meta::records::{decode, get, key, CasRecord, ManifestRecord, RepoBlobRecord, TagRecord};
use berth_meta::{scan_prefix, Durability, Table};
use berth_oci::{Digest, RepoName};
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::retention::{kept_tags, tag_schema_subject, Retention, TagFacts};
use crate::{book, layout, Registry, Result};

/// Settings of one pass.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Blobs unreferenced (and shared blobs unlinked) for less than this are kept (`[gc] delay`).
    pub delay: Duration,
    /// Retention policies (`[retention]`).
    pub retention: Retention,
    /// Report what would go and why, remove nothing.
    pub dry_run: bool,
    /// Only this repository (the shared store is then not swept).
    pub repo: Option<RepoName>,
}

/// What a removal concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcKind {
    Tag,
    Manifest,
    Blob,
    SharedBlob,
    Upload,
}

/// One removal (or, in a dry run, one that would happen), with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcAction {
    pub kind: GcKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The tag or digest removed.
    pub target: String,
    pub reason: String,
    pub bytes: u64,
}

/// The outcome of a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub repositories: u64,
    pub tags: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub shared_blobs: u64,
    pub uploads: u64,
    /// Bytes whose last copy was removed (a blob unlinked from a repository frees its bytes
    /// only when the shared store drops them).
    pub bytes_freed: u64,
    pub actions: Vec<GcAction>,
    /// Things that made the pass keep more than it might have (unreadable manifests, ...).
    pub problems: Vec<String>,
}

impl GcReport {
    fn add(&mut self, a: GcAction, frees: bool) {
        match a.kind {
            GcKind::Tag => self.tags += 1,
            GcKind::Manifest => self.manifests += 1,
            GcKind::Blob => self.blobs += 1,
            GcKind::SharedBlob => self.shared_blobs += 1,
            GcKind::Upload => self.uploads += 1,
        }
        if frees {
            self.bytes_freed += a.bytes;
        }
        self.actions.push(a);
    }
}

/// Progress of a pass, for logs and progress bars.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GcEvent {
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

/// Points where a pass has planned and is about to apply (for deterministic race tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcPoint {
    /// A repository's manifests and tags are planned, not yet removed.
    RetentionPlanned(RepoName),
    /// A repository's blob candidates are chosen, not yet removed.
    BlobsPlanned(RepoName),
    /// Shared-store candidates are chosen, not yet removed.
    SharedPlanned,
}

/// A hook a pass awaits at each [`GcPoint`].
pub type GcHook = Arc<dyn Fn(GcPoint) -> BoxFuture<'static, ()> + Send + Sync>;

/// How many candidates one locked batch re-checks and removes.
const BATCH: usize = 256;

/// What a dry run would have removed so far, so that later steps of the same dry run see the
/// consequences a real pass would (with a delay of 0, a shared copy whose last link the pass
/// removes goes in the same pass).
#[derive(Default)]
struct Simulated {
    /// How many repository links of each digest the pass would remove.
    unlinked: HashMap<Digest, u64>,
}

impl Registry {
    /// Installs (or clears) the hook awaited at each [`GcPoint`].
    pub fn set_gc_hook(&self, hook: Option<GcHook>) {
        *self
            .gc_hook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
    }

    async fn gc_point(&self, point: GcPoint) {
        let hook = self
            .gc_hook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(h) = hook {
            h(point).await;
        }
    }

    /// Runs one pass: retention and garbage per repository, then the shared store and
    /// abandoned uploads. Only one pass runs at a time.
    pub async fn gc(
        &self,
        opts: &GcOptions,
        progress: &(dyn Fn(GcEvent) + Send + Sync),
    ) -> Result<GcReport> {
        let _one = self.gc_running.lock().await;
        // The metadata store must know everything the disk holds before anything is judged
        // unreferenced.
        self.reconcile_all().await?;
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let mut sim = Simulated::default();
        let repos = self.pass_targets(opts.repo.as_ref()).await?;
        progress(GcEvent::Started {
            repositories: repos.len(),
        });
        for (i, name) in repos.iter().enumerate() {
            progress(GcEvent::Repository {
                done: i,
                total: repos.len(),
                name: name.to_string(),
            });
            self.gc_repo(name, opts, &mut report, &mut sim).await?;
            report.repositories += 1;
            tokio::task::yield_now().await;
        }
        if opts.repo.is_none() {
            progress(GcEvent::SharedStore);
            self.gc_shared(opts, &mut report, &sim).await?;
            if !opts.dry_run {
                // The removals are done: a failure here (an upload starting or finishing while
                // its directory is examined) is reported, not a failed pass.
                match self.expire_uploads().await {
                    Ok(n) => report.uploads += n as u64,
                    Err(e) => report
                        .problems
                        .push(format!("expiring abandoned uploads: {e}")),
                }
            }
        }
        Ok(report)
    }

    async fn gc_repo(
        &self,
        name: &RepoName,
        opts: &GcOptions,
        report: &mut GcReport,
        sim: &mut Simulated,
    ) -> Result<()> {
        let (mut tags, mut manifests, released) = self.plan_retention(name, opts, report).await?;
        self.gc_point(GcPoint::RetentionPlanned(name.clone())).await;
        if opts.dry_run {
            // Each removed manifest takes its own link with it.
            for (d, _, _) in &manifests {
                *sim.unlinked.entry(d.clone()).or_default() += 1;
            }
        } else if !tags.is_empty() || !manifests.is_empty() {
            // Report what went: a candidate that a client changed meanwhile stays.
            let (gone_tags, gone) = self.apply_retention(name, &tags, &manifests).await?;
            tags.retain(|(t, _, _)| gone_tags.contains(t));
            manifests.retain(|(d, _, _)| gone.contains(d));
        }
        for (t, _, reason) in tags {
            report.add(
                GcAction {
                    kind: GcKind::Tag,
                    repository: Some(name.to_string()),
                    target: t,
                    reason,
                    bytes: 0,
                },
                false,
            );
        }
        for (d, size, reason) in manifests {
            let a = GcAction {
                kind: GcKind::Manifest,
                repository: Some(name.to_string()),
                target: d.to_string(),
                reason,
                bytes: size,
            };
            report.add(a, !self.dedupe);
        }
        self.gc_blobs(name, opts, report, &released, sim).await
    }

    /// Chooses the tags and manifests retention removes from `name`.
    /// Also returns, per digest, how many of the chosen manifests reference it (what a dry run
    /// needs to see which blobs the removals leave unreferenced).
    #[allow(clippy::type_complexity)]
    async fn plan_retention(
        &self,
        name: &RepoName,
        opts: &GcOptions,
        report: &mut GcReport,
    ) -> Result<(
        Vec<(String, Digest, String)>,
        Vec<(Digest, u64, String)>,
        HashMap<Digest, u64>,
    )> {
        let index = match self.read_state(name).await?.as_ref() {
            Some(s) => s.index.clone(),
            None => return Ok((Vec::new(), Vec::new(), HashMap::new())),
        };
        let prefix = key::prefix(&[name.as_str()]);
        let (records, tag_records) = {
            let snap = self.meta.read()?;
            let records: HashMap<Digest, ManifestRecord> =
                scan_prefix(snap.as_ref(), Table::Manifests, &prefix, usize::MAX)?
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let d = Digest::parse(key::parts(&k).get(1)?).ok()?;
                        decode::<ManifestRecord>(Table::Manifests, &v)
                            .ok()
                            .map(|r| (d, r))
                    })
                    .collect();
            let tags: HashMap<String, TagRecord> =
                scan_prefix(snap.as_ref(), Table::Tags, &prefix, usize::MAX)?
                    .into_iter()
                    .filter_map(|(k, v)| {
                        Some((
                            key::parts(&k).get(1)?.clone(),
                            decode::<TagRecord>(Table::Tags, &v).ok()?,
                        ))
                    })
                    .collect();
            (records, tags)
        };
        let policy = opts.retention.policy_for(name.as_str());
        let now = book::now();
        let delay = opts.retention.delay.as_secs();
        let old = |t: u64| now.saturating_sub(t) >= delay;
        let digests: HashSet<Digest> = index.digests().into_iter().collect();
        let tag_target: Vec<(String, Digest)> = index
            .tags()
            .into_iter()
            .filter_map(|t| {
                let tag = berth_oci::Tag::parse(&t).ok()?;
                index.tagged(&tag).map(|d| (t, d.digest.clone()))
            })
            .collect();
        let pushed_of = |t: &str| tag_records.get(t).map_or(now, |r| r.pushed);
        let mut doomed_tags = Vec::new();
        let facts: Vec<TagFacts> = tag_target
            .iter()
            .filter(|(t, _)| tag_schema_subject(t).is_none())
            .map(|(t, _)| TagFacts {
                name: t.clone(),
                pushed: pushed_of(t),
                last_pulled: tag_records.get(t).and_then(|r| r.last_pulled),
            })
            .collect();
        let kept = kept_tags(policy.keep_tags, &facts, now);
        for (t, d) in &tag_target {
            match tag_schema_subject(t) {
                Some(subject)
                    if policy.delete_referrers
                        && !digests.contains(&subject)
                        && old(pushed_of(t)) =>
                {
                    doomed_tags.push((
                        t.clone(),
                        d.clone(),
                        format!("referrers tag of {subject}, which is no longer in the repository"),
                    ));
                }
                Some(_) => {}
                None if !kept.contains(t) => {
                    doomed_tags.push((
                        t.clone(),
                        d.clone(),
                        "no keep_tags rule of the repository's policy keeps it".to_owned(),
                    ));
                }
                None => {}
            }
        }
        let doomed_tag_names: HashSet<&String> = doomed_tags.iter().map(|(t, _, _)| t).collect();
        let tagged: HashSet<&Digest> = tag_target
            .iter()
            .filter(|(t, _)| !doomed_tag_names.contains(t))
            .map(|(_, d)| d)
            .collect();
        // Manifests to keep: reachable from the roots through references (an index keeps its
        // manifests) and from a subject to its referrers.
        let mut referrers_of: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for (d, r) in &records {
            if let Some(s) = &r.subject {
                referrers_of.entry(s).or_default().push(d);
            }
        }
        let mut keep: HashSet<Digest> = HashSet::new();
        let mut queue: VecDeque<Digest> = VecDeque::new();
        for d in &digests {
            let root = match records.get(d) {
                None => true,
                Some(r) if !r.readable => {
                    report.problems.push(format!("{name}: manifest {d} cannot be parsed; it and everything in the repository are kept"));
                    true
                }
                Some(r) => {
                    tagged.contains(d)
                        || !old(r.pushed)
                        || (r.subject.is_none() && !policy.delete_untagged)
                        || (r.subject.is_some() && !policy.delete_referrers)
                }
            };
            if root && keep.insert(d.clone()) {
                queue.push_back(d.clone());
            }
        }
        while let Some(d) = queue.pop_front() {
            let mut next: Vec<Digest> = Vec::new();
            if let Some(r) = records.get(&d) {
                next.extend(r.refs.iter().filter(|x| digests.contains(*x)).cloned());
            }
            if let Some(rs) = referrers_of.get(&d) {
                next.extend(rs.iter().map(|x| (*x).clone()));
            }
            for n in next {
                if digests.contains(&n) && keep.insert(n.clone()) {
                    queue.push_back(n);
                }
            }
        }
        let mut doomed_manifests = Vec::new();
        let mut released: HashMap<Digest, u64> = HashMap::new();
        for d in digests.iter().filter(|d| !keep.contains(*d)) {
            let Some(r) = records.get(d) else { continue };
            let refs: HashSet<&Digest> = r.refs.iter().collect();
            for x in refs {
                *released.entry(x.clone()).or_default() += 1;
            }
            let reason = match &r.subject {
                Some(s) => format!("referrer of {s}, which is no longer in the repository"),
                None => "untagged, older than the retention delay, and no surviving index lists it"
                    .to_owned(),
            };
            doomed_manifests.push((d.clone(), r.size, reason));
        }
        // Batches re-check that nothing outside them keeps a candidate, so what keeps others
        // goes first: indexes, then images, then referrers (which follow their subjects).
        let rank = |d: &Digest| {
            records
                .get(d)
                .map_or((false, false), |r| (r.subject.is_some(), !r.is_index))
        };
        doomed_manifests.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then_with(|| a.0.cmp(&b.0)));
        Ok((doomed_tags, doomed_manifests, released))
    }

    /// Removes planned tags and manifests, re-checked under the repository's lock: a tag that
    /// moved, a manifest that gained a tag, a referrer whose subject is in the repository, or a
    /// manifest that a manifest staying in the repository references, stays. "Staying" is
    /// decided together: whatever keeps a candidate keeps what it references and its referrers
    /// (a planned index that a client tagged meanwhile keeps its children). Returns the tags
    /// and manifests removed.
    async fn apply_retention(
        &self,
        name: &RepoName,
        tags: &[(String, Digest, String)],
        manifests: &[(Digest, u64, String)],
    ) -> Result<(HashSet<String>, HashSet<Digest>)> {
        let mut removed_tags = HashSet::new();
        let mut removed = HashSet::new();
        for chunk_start in (0..tags.len().max(manifests.len())).step_by(BATCH) {
            let tag_chunk = tags
                .get(chunk_start..(chunk_start + BATCH).min(tags.len()))
                .unwrap_or(&[]);
            let man_chunk = manifests
                .get(chunk_start..(chunk_start + BATCH).min(manifests.len()))
                .unwrap_or(&[]);
            self.with_state(name, async |reg, state| {
                let mut go_tags = Vec::new();
                for (t, d, _) in tag_chunk {
                    let Ok(tag) = berth_oci::Tag::parse(t) else {
                        continue;
                    };
                    if state.index.tagged(&tag).map(|x| &x.digest) == Some(d) {
                        go_tags.push(t.clone());
                    }
                }
                let going_tags: HashSet<&String> = go_tags.iter().collect();
                let snap = reg.meta.read()?;
                // The candidates' records; every manifest's only when some manifest references
                // a candidate (`referenced_by`), so a batch costs its size, not the repository's.
                let mut current: HashMap<Digest, ManifestRecord> = HashMap::new();
                let mut referenced = false;
                for (d, _, _) in man_chunk {
                    if let Some(r) = get(
                        snap.as_ref(),
                        Table::Manifests,
                        &book::manifest_key(name, d),
                    )? {
                        current.insert(d.clone(), r);
                    }
                    let b: Option<RepoBlobRecord> = get(
                        snap.as_ref(),
                        Table::RepoBlobs,
                        &book::repo_blob_key(name, d),
                    )?;
                    referenced |= b.is_some_and(|b| b.referenced_by > 0);
                }
                if referenced {
                    let prefix = key::prefix(&[name.as_str()]);
                    current = scan_prefix(snap.as_ref(), Table::Manifests, &prefix, usize::MAX)?
                        .into_iter()
                        .filter_map(|(k, v)| {
                            Some((
                                Digest::parse(key::parts(&k).get(1)?).ok()?,
                                decode(Table::Manifests, &v).ok()?,
                            ))
                        })
                        .collect();
                }
                drop(snap);
                // One walk over the index per batch for what is listed and what stays tagged.
                let mut listed: HashSet<&Digest> = HashSet::new();
                let mut tagged: HashSet<&Digest> = HashSet::new();
                for e in &state.index.manifests {
                    listed.insert(&e.digest);
                    let tag = e
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(crate::index::REF_NAME));
                    if tag.is_some_and(|t| !going_tags.contains(t)) {
                        tagged.insert(&e.digest);
                    }
                }
                let mut going: HashSet<&Digest> = man_chunk
                    .iter()
                    .map(|(d, _, _)| d)
                    .filter(|d| listed.contains(d) && !tagged.contains(d))
                    .collect();
                // Drop candidates that something staying keeps, until nothing changes.
                loop {
                    let kept_refs: HashSet<&Digest> = current
                        .iter()
                        .filter(|(p, _)| !going.contains(p))
                        .flat_map(|(_, r)| r.refs.iter())
                        .collect();
                    let before = going.len();
                    let still = going.clone();
                    going.retain(|d| {
                        let subject_stays = current
                            .get(*d)
                            .and_then(|r| r.subject.as_ref())
                            .is_some_and(|s| !still.contains(s) && listed.contains(s));
                        !kept_refs.contains(*d) && !subject_stays
                    });
                    if going.len() == before {
                        break;
                    }
                }
                let go: Vec<Digest> = man_chunk
                    .iter()
                    .map(|(d, _, _)| d)
                    .filter(|d| going.contains(d))
                    .cloned()
                    .collect();
                reg.remove_locked(name, state, &go_tags, &go).await?;
                Ok((go_tags, go))
            })
            .await
            .map(|(t, m)| {
                removed_tags.extend(t);
                removed.extend(m);
            })?;
        }
        Ok((removed_tags, removed))
    }

    /// Removes the repository's blobs that no manifest references, unreferenced for longer
    /// than the delay. A repository with an unreadable manifest keeps all of its blobs.
    ///
    /// `released` counts the references that retention's removals just dropped; a dry run,
    /// which removed nothing, counts them as gone (with a delay of 0 a real pass takes what they
    /// leave unreferenced right away) and records in `sim` the links it would remove.
    async fn gc_blobs(
        &self,
        name: &RepoName,
        opts: &GcOptions,
        report: &mut GcReport,
        released: &HashMap<Digest, u64>,
        sim: &mut Simulated,
    ) -> Result<()> {
        let now = book::now();
        let cutoff = now.saturating_sub(opts.delay.as_secs());
        let released_now = |d: &Digest, r: &RepoBlobRecord| {
            opts.dry_run
                && opts.delay.is_zero()
                && r.referenced_by > 0
                && released.get(d).is_some_and(|n| *n >= r.referenced_by)
        };
        let prefix = key::prefix(&[name.as_str()]);
        let candidates: Vec<(Digest, RepoBlobRecord)> = {
            let snap = self.meta.read()?;
            let unreadable = scan_prefix(snap.as_ref(), Table::Manifests, &prefix, usize::MAX)?
                .iter()
                .any(|(_, v)| {
                    decode::<ManifestRecord>(Table::Manifests, v).is_ok_and(|m| !m.readable)
                });
            if unreadable {
                return Ok(());
            }
            scan_prefix(snap.as_ref(), Table::RepoBlobs, &prefix, usize::MAX)?
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        Digest::parse(key::parts(&k).get(1)?).ok()?,
                        decode::<RepoBlobRecord>(Table::RepoBlobs, &v).ok()?,
                    ))
                })
                .filter(|(d, r)| {
                    ((r.referenced_by == 0 && r.unreferenced_since.is_some_and(|t| t <= cutoff))
                        || released_now(d, r))
                        && snap
                            .get(Table::Manifests, &book::manifest_key(name, d))
                            .ok()
                            .flatten()
                            .is_none()
                })
                .collect()
        };
        self.gc_point(GcPoint::BlobsPlanned(name.clone())).await;
        let mut removed: Vec<(Digest, u64, u64)> = Vec::new();
        if opts.dry_run {
            removed = candidates
                .iter()
                .map(|(d, r)| {
                    let since = match r.unreferenced_since {
                        Some(t) if r.referenced_by == 0 => t,
                        _ => now,
                    };
                    (d.clone(), r.size, since)
                })
                .collect();
            for (d, _, _) in &removed {
                *sim.unlinked.entry(d.clone()).or_default() += 1;
            }
        } else {
            for chunk in candidates.chunks(BATCH) {
                let gone = self
                    .with_state(name, async |reg, state| {
                        let mut gone = Vec::new();
                        for (d, _) in chunk {
                            // Re-check against fresh state: a manifest PUT or a new link wins.
                            let snap = reg.meta.read()?;
                            let rec: Option<RepoBlobRecord> = get(
                                snap.as_ref(),
                                Table::RepoBlobs,
                                &book::repo_blob_key(name, d),
                            )?;
                            let is_manifest = snap
                                .get(Table::Manifests, &book::manifest_key(name, d))?
                                .is_some();
                            drop(snap);
                            let Some(rec) = rec else { continue };
                            let Some(since) = rec.unreferenced_since else {
                                continue;
                            };
                            if rec.referenced_by > 0
                                || since > cutoff
                                || is_manifest
                                || state.index.by_digest(d).is_some()
                            {
                                continue;
                            }
                            reg.driver.delete(&layout::blob(name, d)?).await?;
                            gone.push((d.clone(), rec.size, since));
                        }
                        let (n, ds, now) = (
                            name.clone(),
                            gone.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
                            book::now(),
                        );
                        reg.meta_write(Durability::Durable, move |tx| {
                            for d in &ds {
                                book::unlink(tx, &n, d, now)?;
                            }
                            Ok(())
                        })
                        .await?;
                        Ok(gone)
                    })
                    .await?;
                removed.extend(gone);
            }
        }
        for (d, size, since) in removed {
            let a = GcAction {
                kind: GcKind::Blob,
                repository: Some(name.to_string()),
                target: d.to_string(),
                reason: format!(
                    "no manifest of the repository references it; unreferenced for {}s",
                    book::now().saturating_sub(since)
                ),
                bytes: size,
            };
            report.add(a, !self.dedupe);
        }
        Ok(())
    }

    /// Removes shared-store blobs that no repository has linked for longer than the delay,
    /// each under its stripe lock, re-checked first.
    async fn gc_shared(
        &self,
        opts: &GcOptions,
        report: &mut GcReport,
        sim: &Simulated,
    ) -> Result<()> {
        let now = book::now();
        let cutoff = now.saturating_sub(opts.delay.as_secs());
        let mut candidates = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let snap = self.meta.read()?;
            let start = match &cursor {
                Some(c) => std::ops::Bound::Excluded(c.as_slice()),
                None => std::ops::Bound::Unbounded,
            };
            let batch = snap.range(Table::Cas, start, std::ops::Bound::Unbounded, 1024)?;
            let Some((last, _)) = batch.last() else { break };
            cursor = Some(last.clone());
            for (k, v) in &batch {
                let rec: CasRecord = decode(Table::Cas, v)?;
                let Ok(d) = Digest::parse(&String::from_utf8_lossy(k)) else {
                    continue;
                };
                if rec.repos == 0 && rec.unlinked_since.is_some_and(|t| t <= cutoff) {
                    candidates.push((d, rec.size, rec.unlinked_since.unwrap_or(0)));
                } else if opts.dry_run
                    && opts.delay.is_zero()
                    && rec.repos > 0
                    && sim.unlinked.get(&d).is_some_and(|n| *n >= rec.repos)
                {
                    // A dry run's removals left no link: the real pass would take it now.
                    candidates.push((d, rec.size, now));
                }
            }
        }
        self.gc_point(GcPoint::SharedPlanned).await;
        let mut removed = Vec::new();
        if opts.dry_run {
            removed = candidates;
        } else {
            // Candidates come in key order, so digests sharing a stripe are adjacent: each run
            // is re-checked and removed under its stripe lock, with one commit per batch.
            let runs =
                candidates.chunk_by(|a, b| std::ptr::eq(self.stripe(&a.0), self.stripe(&b.0)));
            for batch in runs.flat_map(|run| run.chunks(BATCH)) {
                let Some((first, _, _)) = batch.first() else {
                    continue;
                };
                let _stripe = self.stripe(first).lock().await;
                let still: Vec<&(Digest, u64, u64)> = {
                    let snap = self.meta.read()?;
                    let mut still = Vec::new();
                    for c in batch {
                        let rec: Option<CasRecord> =
                            get(snap.as_ref(), Table::Cas, c.0.to_string().as_bytes())?;
                        if rec.is_some_and(|r| {
                            r.repos == 0 && r.unlinked_since.is_some_and(|t| t <= cutoff)
                        }) {
                            still.push(c);
                        }
                    }
                    still
                };
                // Files first, records after; the records of files already gone are forgotten
                // even if a later delete fails.
                let mut gone = Vec::new();
                let mut failed = None;
                for c in still {
                    match self.driver.delete(&layout::cas_blob(&c.0)?).await {
                        Ok(()) => gone.push(c.clone()),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                let keys: Vec<Vec<u8>> =
                    gone.iter().map(|c| c.0.to_string().into_bytes()).collect();
                if !keys.is_empty() {
                    self.meta_write(Durability::Durable, move |tx| {
                        for ck in &keys {
                            if get::<CasRecord>(tx, Table::Cas, ck)?.is_some_and(|r| r.repos == 0) {
                                tx.remove(Table::Cas, ck)?;
                            }
                        }
                        Ok(())
                    })
                    .await?;
                }
                removed.extend(gone);
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
        }
        for (d, size, since) in removed {
            let a = GcAction {
                kind: GcKind::SharedBlob,
                repository: None,
                target: d.to_string(),
                reason: format!(
                    "no repository links it; unlinked for {}s",
                    book::now().saturating_sub(since)
                ),
                bytes: size,
            };
            report.add(a, true);
        }
        Ok(())
    }
}
