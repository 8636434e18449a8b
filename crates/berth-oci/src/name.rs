//! Repository names, tags and manifest references, validated against the grammar of the
//! distribution spec ("Pulling manifests"). Inner layers take these types, never a `&str`.

use std::fmt;

use crate::digest::{Digest, DigestError};

/// Longest accepted repository name. Many clients limit `host/name` to 255 characters.
pub const MAX_NAME_LEN: usize = 255;

/// Components that would collide with a parent repository's OCI Image Layout files when a
/// repository is nested inside another (`a` and `a/blobs`). They are refused after the first
/// component; see docs/DESIGN.md ("Repository names").
pub const RESERVED_COMPONENTS: [&str; 3] = ["blobs", "index.json", "oci-layout"];

/// Why a name, tag or reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid repository name {0:?}: must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*")]
    InvalidName(String),
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("repository name {name:?} uses the reserved component {component:?}")]
    ReservedComponent { name: String, component: String },
    #[error("invalid tag {0:?}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    InvalidTag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A repository name (`<name>` in the spec), such as `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < b.len() {
        if alnum(b[i]) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return false;
        }
        let sep_start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == sep_start {
            return false;
        }
        expect_alnum = true;
    }
    !b.is_empty() && !expect_alnum
}

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong);
        }
        if s.is_empty() || !s.split('/').all(valid_component) {
            return Err(NameError::InvalidName(s.to_owned()));
        }
        if let Some(c) = s
            .split('/')
            .skip(1)
            .find(|c| RESERVED_COMPONENTS.contains(c))
        {
            return Err(NameError::ReservedComponent {
                name: s.to_owned(),
                component: c.to_owned(),
            });
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::InvalidTag(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The spec's tag order: "lexical (case-insensitive alphanumeric) order", made total by
    /// breaking ties byte-wise.
    pub fn lexical_cmp(a: &str, b: &str) -> std::cmp::Ordering {
        a.to_ascii_lowercase()
            .cmp(&b.to_ascii_lowercase())
            .then_with(|| a.cmp(b))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference containing `:` is a digest, anything else a tag.
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_grammar() {
        for ok in ["a", "library/alpine", "a.b_c__d---e/f0", "x/y/z", "0"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_traversal_case_and_empty_components() {
        for bad in [
            "", "..", "a/..", "../a", "a//b", "/a", "a/", "A", "a%2Fb", "a/.b", "a_", "a___b",
            "a.-b", "a\\b", "a b", ".", "-a",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            RepoName::parse(&"a".repeat(256)),
            Err(NameError::NameTooLong)
        );
    }

    #[test]
    fn reserves_layout_file_names_below_the_first_component() {
        assert!(RepoName::parse("blobs").is_ok());
        for bad in ["a/blobs", "a/index.json", "a/oci-layout", "a/blobs/sha256"] {
            assert!(
                matches!(
                    RepoName::parse(bad),
                    Err(NameError::ReservedComponent { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(Tag::parse("v1.0_RC-1").is_ok());
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn references_are_digests_when_they_contain_a_colon() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(Reference::parse("sha256:abc").is_err());
    }
}
