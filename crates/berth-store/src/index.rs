//! A repository's `index.json` (image-layout.md): the list of every manifest, where a tag is the
//! `org.opencontainers.image.ref.name` annotation of an entry.
//!
//! berth writes one entry per (manifest, tag) and one untagged entry for a manifest without tags.
//! Layouts written by other tools are read as they are: duplicate entries are tolerated, and a
//! `ref.name` that is not a valid tag (a full reference, say) is kept but never served as a tag.

use std::collections::{BTreeMap, HashMap};

use berth_oci::manifest::Descriptor;
use berth_oci::{media, Annotations, Digest, Tag};
use serde::{Deserialize, Serialize};

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexJson {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries; change them only through the methods below, which keep the lookups.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Derived from `manifests`: tag -> entry position, digest -> entry positions, sorted tags.
    #[serde(skip)]
    lookup: Lookup,
}

#[derive(Debug, Clone, Default)]
struct Lookup {
    by_tag: HashMap<String, usize>,
    by_digest: HashMap<Digest, Vec<usize>>,
    sorted_tags: Vec<String>,
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
}

impl IndexJson {
    pub fn empty() -> IndexJson {
        IndexJson {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_owned()),
            ..Default::default()
        }
    }

    /// Parses an `index.json` and builds its lookups.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<IndexJson> {
        let mut ix: IndexJson = serde_json::from_slice(bytes)?;
        ix.reindex();
        Ok(ix)
    }

    /// Rebuilds the lookups after `manifests` changed. The last entry naming a tag wins, as a
    /// foreign layout may repeat one.
    fn reindex(&mut self) {
        let mut l = Lookup::default();
        for (i, d) in self.manifests.iter().enumerate() {
            if let Some(t) = ref_name(d) {
                l.by_tag.insert(t.to_owned(), i);
            }
            l.by_digest.entry(d.digest.clone()).or_default().push(i);
        }
        l.sorted_tags = l
            .by_tag
            .keys()
            .filter(|t| Tag::parse(t).is_ok())
            .cloned()
            .collect();
        l.sorted_tags.sort_by(|a, b| Tag::lexical_cmp(a, b));
        self.lookup = l;
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The entry a tag names (the last one, if a foreign layout repeats it).
    pub fn tagged(&self, tag: &Tag) -> Option<&Descriptor> {
        self.lookup
            .by_tag
            .get(tag.as_str())
            .and_then(|i| self.manifests.get(*i))
    }

    /// Any entry for `digest`.
    pub fn by_digest(&self, digest: &Digest) -> Option<&Descriptor> {
        let i = self.lookup.by_digest.get(digest)?.first()?;
        self.manifests.get(*i)
    }

    /// Tags that are valid tag names, in the spec's lexical order, without duplicates.
    pub fn tags(&self) -> Vec<String> {
        self.lookup.sorted_tags.clone()
    }

    /// Tags pointing at `digest`.
    pub fn tags_of(&self, digest: &Digest) -> Vec<String> {
        self.lookup
            .by_digest
            .get(digest)
            .into_iter()
            .flatten()
            .filter_map(|i| self.manifests.get(*i).and_then(ref_name))
            .map(str::to_owned)
            .collect()
    }

    /// Distinct manifest digests, in index order.
    pub fn digests(&self) -> Vec<Digest> {
        let mut seen = std::collections::HashSet::new();
        self.manifests
            .iter()
            .filter(|d| seen.insert(d.digest.clone()))
            .map(|d| d.digest.clone())
            .collect()
    }

    /// Records `desc` (without annotations) as a manifest, untagged unless it already has entries.
    /// Returns the entry added, if any.
    pub fn add(&mut self, desc: &Descriptor) -> Option<Descriptor> {
        if self.by_digest(&desc.digest).is_some() {
            return None;
        }
        let entry = plain(desc);
        self.push_indexed(entry.clone());
        Some(entry)
    }

    /// Applies an entry as `index.json` would hold it (a journal line): one naming a valid tag
    /// sets that tag, any other is added untagged. Applying it twice changes nothing more.
    pub fn apply(&mut self, entry: &Descriptor) {
        match ref_name(entry).and_then(|t| Tag::parse(t).ok()) {
            Some(tag) => {
                self.set_tag(&tag, entry);
            }
            None => {
                self.add(entry);
            }
        }
    }

    /// Appends an entry and adds it to the lookups, without rebuilding them: pushing a tag costs
    /// the same in a repository of ten thousand tags as in an empty one, but for writing the file.
    fn push_indexed(&mut self, entry: Descriptor) {
        let i = self.manifests.len();
        if let Some(t) = ref_name(&entry) {
            if self.lookup.by_tag.insert(t.to_owned(), i).is_none() && Tag::parse(t).is_ok() {
                let sorted = &mut self.lookup.sorted_tags;
                let at =
                    sorted.partition_point(|x| Tag::lexical_cmp(x, t) == std::cmp::Ordering::Less);
                sorted.insert(at, t.to_owned());
            }
        }
        self.lookup
            .by_digest
            .entry(entry.digest.clone())
            .or_default()
            .push(i);
        self.manifests.push(entry);
    }

    /// Points `tag` at `desc`. The manifest the tag left stays listed (untagged if it has no other
    /// tag), and an untagged entry of `desc` is replaced by the tagged one.
    pub fn set_tag(&mut self, tag: &Tag, desc: &Descriptor) -> Option<Descriptor> {
        if let Some(old) = self.tagged(tag).map(|d| d.digest.clone()) {
            if old == desc.digest {
                return None;
            }
            self.remove_tag(tag);
        }
        let untagged = |d: &Descriptor| d.digest == desc.digest && ref_name(d).is_none();
        if self.manifests.iter().any(untagged) {
            self.manifests.retain(|d| !untagged(d));
            self.reindex();
        }
        let mut entry = plain(desc);
        entry.annotations = Some(Annotations::one(REF_NAME, tag.as_str()));
        self.push_indexed(entry.clone());
        Some(entry)
    }

    /// Removes `tag`; its manifest stays listed, untagged if no other tag names it. Returns
    /// whether the tag existed.
    pub fn remove_tag(&mut self, tag: &Tag) -> bool {
        let Some(pos) = self
            .manifests
            .iter()
            .rposition(|d| ref_name(d) == Some(tag.as_str()))
        else {
            return false;
        };
        let removed = self.manifests.remove(pos);
        self.manifests.retain(|d| ref_name(d) != Some(tag.as_str()));
        if !self.manifests.iter().any(|d| d.digest == removed.digest) {
            let mut untagged = removed;
            if let Some(a) = untagged.annotations.as_mut() {
                a.remove(REF_NAME);
            }
            if untagged
                .annotations
                .as_ref()
                .is_some_and(Annotations::is_empty)
            {
                untagged.annotations = None;
            }
            self.manifests.push(untagged);
        }
        self.reindex();
        true
    }

    /// Removes `tags` (as [`IndexJson::remove_tag`]) and every entry of `digests` in one pass.
    /// Returns the tags removed, and each digest removed with the tags it had.
    #[allow(clippy::type_complexity)]
    pub fn remove_many(
        &mut self,
        tags: &[Tag],
        digests: &[Digest],
    ) -> (Vec<String>, Vec<(Digest, Vec<String>)>) {
        let gone_tags: Vec<String> = tags
            .iter()
            .filter(|t| self.tagged(t).is_some())
            .map(|t| t.as_str().to_owned())
            .collect();
        let doomed: std::collections::HashSet<&Digest> = digests.iter().collect();
        let gone: Vec<(Digest, Vec<String>)> = digests
            .iter()
            .filter(|d| self.by_digest(d).is_some())
            .map(|d| (d.clone(), self.tags_of(d)))
            .collect();
        let drop_tags: std::collections::HashSet<&str> =
            gone_tags.iter().map(String::as_str).collect();
        let mut kept = Vec::with_capacity(self.manifests.len());
        let mut orphaned: Vec<Descriptor> = Vec::new();
        for d in self.manifests.drain(..) {
            if doomed.contains(&d.digest) {
                continue;
            }
            match ref_name(&d) {
                Some(t) if drop_tags.contains(t) => orphaned.push(d),
                _ => kept.push(d),
            }
        }
        // A manifest that lost its last tag stays listed, untagged.
        let mut listed: std::collections::HashSet<Digest> =
            kept.iter().map(|k| k.digest.clone()).collect();
        for mut d in orphaned {
            if !listed.insert(d.digest.clone()) {
                continue;
            }
            if let Some(a) = d.annotations.as_mut() {
                a.remove(REF_NAME);
            }
            if d.annotations.as_ref().is_some_and(Annotations::is_empty) {
                d.annotations = None;
            }
            kept.push(d);
        }
        self.manifests = kept;
        self.reindex();
        (gone_tags, gone)
    }

    /// Removes every entry of `digest`. Returns whether there was one.
    pub fn remove_digest(&mut self, digest: &Digest) -> bool {
        let before = self.manifests.len();
        self.manifests.retain(|d| &d.digest != digest);
        self.reindex();
        before != self.manifests.len()
    }
}

fn plain(desc: &Descriptor) -> Descriptor {
    Descriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: desc.size,
        artifact_type: None,
        annotations: None,
        platform: None,
        urls: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(c: u8) -> Descriptor {
        Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: Digest::sha256(&[c]),
            size: 1,
            artifact_type: None,
            annotations: None,
            platform: None,
            urls: None,
        }
    }

    #[test]
    fn moving_a_tag_leaves_the_old_manifest_untagged() {
        let mut ix = IndexJson::empty();
        let t = Tag::parse("latest").unwrap();
        ix.set_tag(&t, &desc(1));
        ix.set_tag(&t, &desc(2));
        assert_eq!(ix.tagged(&t).unwrap().digest, desc(2).digest);
        assert!(ix.by_digest(&desc(1).digest).is_some());
        assert_eq!(ix.manifests.len(), 2);
        assert!(ix.remove_tag(&t));
        assert_eq!(ix.tags(), Vec::<String>::new());
        assert_eq!(ix.digests().len(), 2);
    }

    #[test]
    fn removing_many_keeps_untagged_survivors_listed_once() {
        let mut ix = IndexJson::empty();
        let (a, b, c) = (
            Tag::parse("a").unwrap(),
            Tag::parse("b").unwrap(),
            Tag::parse("c").unwrap(),
        );
        ix.set_tag(&a, &desc(1));
        ix.set_tag(&b, &desc(1));
        ix.set_tag(&c, &desc(2));
        ix.add(&desc(3));
        let (tags, gone) = ix.remove_many(&[a.clone(), b.clone()], &[desc(2).digest]);
        assert_eq!(tags, ["a", "b"]);
        assert_eq!(gone, vec![(desc(2).digest, vec!["c".to_string()])]);
        assert_eq!(ix.manifests.len(), 2, "{:?}", ix.manifests);
        assert!(ix.tags().is_empty());
        assert!(ix.by_digest(&desc(1).digest).is_some() && ix.by_digest(&desc(3).digest).is_some());
    }

    #[test]
    fn incremental_lookups_equal_a_full_rebuild() {
        let mut ix = IndexJson::empty();
        for i in 0..40u8 {
            let tag = Tag::parse(&format!(
                "{}t{}",
                if i % 3 == 0 { "A" } else { "a" },
                i % 17
            ))
            .unwrap();
            match i % 5 {
                0 => {
                    ix.add(&desc(i));
                }
                1 => {
                    ix.remove_tag(&tag);
                }
                _ => {
                    ix.set_tag(&tag, &desc(i % 7));
                }
            }
            let mut rebuilt = ix.clone();
            rebuilt.reindex();
            assert_eq!(ix.tags(), rebuilt.tags(), "step {i}");
            for t in rebuilt.tags() {
                let t = Tag::parse(&t).unwrap();
                assert_eq!(
                    ix.tagged(&t).map(|d| &d.digest),
                    rebuilt.tagged(&t).map(|d| &d.digest)
                );
            }
            for d in rebuilt.digests() {
                assert_eq!(ix.tags_of(&d), rebuilt.tags_of(&d), "step {i}");
                assert!(ix.by_digest(&d).is_some());
            }
        }
    }

    #[test]
    fn tags_sort_case_insensitively() {
        let mut ix = IndexJson::empty();
        for (i, t) in ["b", "A", "a", "C"].iter().enumerate() {
            ix.set_tag(&Tag::parse(t).unwrap(), &desc(i as u8));
        }
        assert_eq!(ix.tags(), ["A", "a", "b", "C"]);
    }
}
