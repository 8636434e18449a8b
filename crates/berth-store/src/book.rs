//! Bookkeeping in the metadata store: the invariants that tie records together, each kept by one
//! function that runs inside the caller's transaction, so a reference and the counts it moves
//! always change together.
//!
//! - `RepoBlobs(repo, d)` exists iff `BlobRepos(d, repo)` exists, and `Cas(d).repos` counts them;
//!   `Cas(d).unlinked_since` is set exactly when that count reaches zero.
//! - `RepoBlobs(repo, d).referenced_by` counts the manifests of `repo` whose `refs` name `d`;
//!   `unreferenced_since` is set exactly when it is zero (for a manifest's own blob, from the
//!   moment the manifest is removed).
//! - `Repos(repo).manifests` counts `Manifests(repo, _)`; a referrer edge exists for each manifest
//!   with a subject, a signature entry for each signature.

use berth_meta::records::{
    get, key, put, CasRecord, ManifestRecord, ReferrerRecord, RepoBlobRecord, RepoRecord,
    SignatureKind, SignatureRecord, TagRecord,
};
use berth_meta::{Result, Table, WriteTx};
use berth_oci::{Digest, RepoName, Tag};

/// cosign's signature artifact type, and Notation's.
const COSIGN_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const NOTATION_SIG: &str = "application/vnd.cncf.notary.signature";

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn repo_blob_key(repo: &RepoName, d: &Digest) -> Vec<u8> {
    key::of(&[repo.as_str(), &d.to_string()])
}

pub(crate) fn manifest_key(repo: &RepoName, d: &Digest) -> Vec<u8> {
    key::of(&[repo.as_str(), &d.to_string()])
}

pub(crate) fn tag_key(repo: &RepoName, tag: &str) -> Vec<u8> {
    key::of(&[repo.as_str(), tag])
}

/// Records that `repo` links blob `d` (or, if it already does and nothing references the blob,
/// restarts its grace period). Returns false if it already did.
pub(crate) fn link(
    tx: &mut dyn WriteTx,
    repo: &RepoName,
    d: &Digest,
    size: u64,
    now: u64,
) -> Result<bool> {
    let k = repo_blob_key(repo, d);
    if let Some(mut rec) = get::<RepoBlobRecord>(tx, Table::RepoBlobs, &k)? {
        // A client pushing, mounting or checking an unreferenced blob is about to reference
        // it: its grace period starts again, so collection cannot take it from under the push.
        if rec.referenced_by == 0 {
            rec.unreferenced_since = Some(now);
            put(tx, Table::RepoBlobs, &k, &rec)?;
        }
        return Ok(false);
    }
    put(
        tx,
        Table::RepoBlobs,
        &k,
        &RepoBlobRecord {
            size,
            linked: now,
            referenced_by: 0,
            unreferenced_since: Some(now),
        },
    )?;
    tx.insert(
        Table::BlobRepos,
        &key::of(&[&d.to_string(), repo.as_str()]),
        b"",
    )?;
    let ck = d.to_string().into_bytes();
    let mut cas: CasRecord = get(tx, Table::Cas, &ck)?.unwrap_or(CasRecord {
        size,
        repos: 0,
        unlinked_since: None,
    });
    cas.repos += 1;
    cas.unlinked_since = None;
    put(tx, Table::Cas, &ck, &cas)?;
    Ok(true)
}

/// Forgets that `repo` links blob `d`.
pub(crate) fn unlink(tx: &mut dyn WriteTx, repo: &RepoName, d: &Digest, now: u64) -> Result<()> {
    if !tx.remove(Table::RepoBlobs, &repo_blob_key(repo, d))? {
        return Ok(());
    }
    tx.remove(Table::BlobRepos, &key::of(&[&d.to_string(), repo.as_str()]))?;
    let ck = d.to_string().into_bytes();
    if let Some(mut cas) = get::<CasRecord>(tx, Table::Cas, &ck)? {
        cas.repos = cas.repos.saturating_sub(1);
        if cas.repos == 0 {
            cas.unlinked_since = Some(now);
        }
        put(tx, Table::Cas, &ck, &cas)?;
    }
    Ok(())
}

fn adjust_refs(
    tx: &mut dyn WriteTx,
    repo: &RepoName,
    refs: &[Digest],
    up: bool,
    now: u64,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for d in refs.iter().filter(|d| seen.insert(*d)) {
        let k = repo_blob_key(repo, d);
        let Some(mut rec) = get::<RepoBlobRecord>(tx, Table::RepoBlobs, &k)? else {
            continue;
        };
        if up {
            rec.referenced_by += 1;
            rec.unreferenced_since = None;
        } else {
            rec.referenced_by = rec.referenced_by.saturating_sub(1);
            if rec.referenced_by == 0 {
                rec.unreferenced_since = Some(now);
            }
        }
        put(tx, Table::RepoBlobs, &k, &rec)?;
    }
    Ok(())
}

fn signature_of(tag: Option<&str>, rec: &ManifestRecord) -> Option<(SignatureKind, Digest)> {
    if let Some(subject) = tag
        .and_then(|t| t.strip_suffix(".sig"))
        .and_then(|s| s.strip_prefix("sha256-"))
    {
        if let Ok(d) = Digest::parse(&format!("sha256:{subject}")) {
            return Some((SignatureKind::CosignTag, d));
        }
    }
    let subject = rec.subject.clone()?;
    match rec.artifact_type.as_deref() {
        Some(COSIGN_SIG) => Some((SignatureKind::CosignReferrer, subject)),
        Some(NOTATION_SIG) => Some((SignatureKind::Notation, subject)),
        _ => None,
    }
}

fn signature_key(repo: &RepoName, subject: &Digest, kind: SignatureKind, sig: &Digest) -> Vec<u8> {
    // A tag-scheme signature is one entry per subject that a newer one replaces.
    let sig = if kind == SignatureKind::CosignTag {
        String::new()
    } else {
        sig.to_string()
    };
    key::of(&[repo.as_str(), &subject.to_string(), kind.as_str(), &sig])
}

/// Records manifest `d` of `repo` (with its references, referrer edge and signature), and points
/// `tag` at it. The manifest's own blob must already be linked.
pub(crate) fn put_manifest(
    tx: &mut dyn WriteTx,
    repo: &RepoName,
    d: &Digest,
    rec: &ManifestRecord,
    tag: Option<&Tag>,
    now: u64,
) -> Result<()> {
    let mk = manifest_key(repo, d);
    if tx.get(Table::Manifests, &mk)?.is_none() {
        put(tx, Table::Manifests, &mk, rec)?;
        adjust_refs(tx, repo, &rec.refs, true, now)?;
        let rk = repo.as_str().as_bytes().to_vec();
        let mut r: RepoRecord = get(tx, Table::Repos, &rk)?.unwrap_or(RepoRecord {
            created: now,
            manifests: 0,
        });
        r.manifests += 1;
        put(tx, Table::Repos, &rk, &r)?;
        if let Some(subject) = &rec.subject {
            let edge = ReferrerRecord {
                media_type: rec.media_type.clone(),
                size: rec.size,
                artifact_type: rec.artifact_type.clone(),
                annotations: rec.annotations.clone(),
            };
            put(
                tx,
                Table::Referrers,
                &key::of(&[repo.as_str(), &subject.to_string(), &d.to_string()]),
                &edge,
            )?;
        }
        if let Some((kind, subject)) = signature_of(None, rec) {
            let sig = SignatureRecord {
                kind,
                signature: d.clone(),
                pushed: now,
            };
            put(
                tx,
                Table::Signatures,
                &signature_key(repo, &subject, kind, d),
                &sig,
            )?;
        }
    }
    if let Some(tag) = tag {
        put(
            tx,
            Table::Tags,
            &tag_key(repo, tag.as_str()),
            &TagRecord {
                digest: d.clone(),
                pushed: now,
                last_pulled: None,
                pulls: 0,
            },
        )?;
        if let Some((kind, subject)) = signature_of(Some(tag.as_str()), rec) {
            let sig = SignatureRecord {
                kind,
                signature: d.clone(),
                pushed: now,
            };
            put(
                tx,
                Table::Signatures,
                &signature_key(repo, &subject, kind, d),
                &sig,
            )?;
        }
    }
    Ok(())
}

/// Forgets tag `tag` of `repo`.
pub(crate) fn remove_tag(tx: &mut dyn WriteTx, repo: &RepoName, tag: &str) -> Result<()> {
    if let Some(rec) = get::<TagRecord>(tx, Table::Tags, &tag_key(repo, tag))? {
        tx.remove(Table::Tags, &tag_key(repo, tag))?;
        if let Some(subject) = tag
            .strip_suffix(".sig")
            .and_then(|s| s.strip_prefix("sha256-"))
        {
            if let Ok(subject) = Digest::parse(&format!("sha256:{subject}")) {
                let k = signature_key(repo, &subject, SignatureKind::CosignTag, &rec.digest);
                if get::<SignatureRecord>(tx, Table::Signatures, &k)?
                    .is_some_and(|s| s.signature == rec.digest)
                {
                    tx.remove(Table::Signatures, &k)?;
                }
            }
        }
    }
    Ok(())
}

/// Forgets manifest `d` of `repo` and the tags in `tags` (those pointing at it), releasing its
/// references. Its own blob stays linked, unreferenced from now on (garbage collection's to
/// remove).
pub(crate) fn remove_manifest(
    tx: &mut dyn WriteTx,
    repo: &RepoName,
    d: &Digest,
    tags: &[String],
    now: u64,
) -> Result<()> {
    for t in tags {
        remove_tag(tx, repo, t)?;
    }
    let mk = manifest_key(repo, d);
    let Some(rec) = get::<ManifestRecord>(tx, Table::Manifests, &mk)? else {
        return Ok(());
    };
    tx.remove(Table::Manifests, &mk)?;
    adjust_refs(tx, repo, &rec.refs, false, now)?;
    let rk = repo.as_str().as_bytes().to_vec();
    if let Some(mut r) = get::<RepoRecord>(tx, Table::Repos, &rk)? {
        r.manifests = r.manifests.saturating_sub(1);
        put(tx, Table::Repos, &rk, &r)?;
    }
    if let Some(subject) = &rec.subject {
        tx.remove(
            Table::Referrers,
            &key::of(&[repo.as_str(), &subject.to_string(), &d.to_string()]),
        )?;
    }
    if let Some((kind, subject)) = signature_of(None, &rec) {
        tx.remove(Table::Signatures, &signature_key(repo, &subject, kind, d))?;
    }
    let bk = repo_blob_key(repo, d);
    if let Some(mut b) = get::<RepoBlobRecord>(tx, Table::RepoBlobs, &bk)? {
        if b.referenced_by == 0 {
            b.unreferenced_since = Some(now);
            put(tx, Table::RepoBlobs, &bk, &b)?;
        }
    }
    Ok(())
}
