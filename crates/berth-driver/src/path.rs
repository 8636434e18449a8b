//! [`DriverPath`]: the validated relative path every driver operation is addressed by.

use std::fmt;

use crate::{DriverError, Result};

/// Maximum length of a whole path, in bytes.
pub(crate) const MAX_PATH_LEN: usize = 4096;
/// Maximum length of one component, in bytes.
pub(crate) const MAX_COMPONENT_LEN: usize = 255;

/// A validated relative path: `/`-separated components, each 1 to 255 bytes of
/// `[A-Za-z0-9._-]` not starting with `.`, at most 4096 bytes in all, with no leading or trailing
/// `/`.
///
/// Because no component may start with `.`, the paths `.` and `..` and hidden names cannot be
/// expressed: a `DriverPath` can never escape the driver's root, and drivers may keep their own
/// bookkeeping under dot-names (for example `LocalFs` keeps temporary files in `.tmp/`).
///
/// [`DriverPath::new`] never yields the empty path. The driver's root directory is spelled
/// [`DriverPath::root`]; it is only meaningful for [`crate::Driver::list`] and as a base for
/// [`DriverPath::join`] (every object operation on it fails).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverPath(String);

impl DriverPath {
    /// Validates `s` (see the type documentation). `InvalidPath` when it does not qualify.
    pub fn new(s: &str) -> Result<DriverPath> {
        validate(s)?;
        Ok(DriverPath(s.to_owned()))
    }

    /// The driver's root directory: the empty path. Only [`crate::Driver::list`] accepts it.
    pub fn root() -> DriverPath {
        DriverPath(String::new())
    }

    /// True for [`DriverPath::root`].
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as a string (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Appends `rel`, one or more `/`-separated components validated like [`DriverPath::new`].
    /// `InvalidPath` when `rel` is not valid or the result is longer than 4096 bytes.
    pub fn join(&self, rel: &str) -> Result<DriverPath> {
        validate(rel)?;
        if self.is_root() {
            return Ok(DriverPath(rel.to_owned()));
        }
        let joined = format!("{}/{}", self.0, rel);
        if joined.len() > MAX_PATH_LEN {
            return Err(invalid(&joined, "longer than 4096 bytes"));
        }
        Ok(DriverPath(joined))
    }

    /// The path without its last component; `None` for a single-component path and for the root
    /// (the root is not returned: spell it [`DriverPath::root`]).
    pub fn parent(&self) -> Option<DriverPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| DriverPath(parent.to_owned()))
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The components, first to last (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('/').filter(|c| !c.is_empty())
    }
}

impl fmt::Display for DriverPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DriverPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// True when `name` is a valid single component (what [`crate::Driver::list`] may return).
pub(crate) fn is_valid_component(name: &str) -> bool {
    validate_component(name).is_ok()
}

fn validate(s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(invalid(s, "empty"));
    }
    if s.len() > MAX_PATH_LEN {
        return Err(invalid(s, "longer than 4096 bytes"));
    }
    if s.starts_with('/') {
        return Err(invalid(s, "absolute (leading '/')"));
    }
    if s.ends_with('/') {
        return Err(invalid(s, "trailing '/'"));
    }
    for component in s.split('/') {
        validate_component(component).map_err(|why| invalid(s, why))?;
    }
    Ok(())
}

fn validate_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty component");
    }
    if c.len() > MAX_COMPONENT_LEN {
        return Err("component longer than 255 bytes");
    }
    if c.starts_with('.') {
        return Err("component starts with '.'");
    }
    if !c
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("component has a character outside [A-Za-z0-9._-]");
    }
    Ok(())
}

fn invalid(s: &str, why: &str) -> DriverError {
    // Quote with escapes (NUL, control characters) and keep the message short.
    const SHOWN: usize = 120;
    let shown: String = s.chars().take(SHOWN).collect();
    let more = if s.chars().nth(SHOWN).is_some() {
        "..."
    } else {
        ""
    };
    DriverError::InvalidPath(format!("{shown:?}{more}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_paths() {
        for s in [
            "a",
            "a/b/c",
            "blobs/sha256/ab/abcdef0123",
            "A-Z_a-z.0-9",
            "x.",
            "a..b",
            "-leading-dash",
            "_",
            &"c".repeat(255),
            &["d"; 2048].join("/"),
        ] {
            let p = DriverPath::new(s).unwrap_or_else(|e| panic!("{s:?} rejected: {e}"));
            assert_eq!(p.as_str(), s);
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn rejects_invalid_paths() {
        let long_component = "c".repeat(256);
        let long_path = ["d"; 2049].join("/"); // 4097 bytes
        for s in [
            "",
            "/",
            "..",
            ".",
            "a/../b",
            "../a",
            "a/..",
            "a/./b",
            ".hidden",
            "a/.tmp",
            "a//b",
            "/abs",
            "/abs/path",
            "trailing/",
            "a/b/",
            "a%2Fb",
            "%2e%2e",
            "a\\b",
            "..\\a",
            "a\0b",
            "\0",
            "a b",
            "a:b",
            "a\nb",
            "é",
            "a*",
            long_component.as_str(),
            long_path.as_str(),
        ] {
            match DriverPath::new(s) {
                Err(DriverError::InvalidPath(_)) => {}
                other => panic!("{s:?} not rejected: {other:?}"),
            }
        }
    }

    #[test]
    fn error_message_is_escaped_and_bounded() {
        let Err(DriverError::InvalidPath(msg)) = DriverPath::new("a\0b") else {
            panic!("NUL accepted");
        };
        assert!(msg.contains("\\0"), "{msg}");
        let Err(DriverError::InvalidPath(msg)) = DriverPath::new(&"x/".repeat(5000)) else {
            panic!("long path accepted");
        };
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn join_validates_each_component() {
        let base = DriverPath::new("a/b").unwrap();
        assert_eq!(base.join("c").unwrap().as_str(), "a/b/c");
        assert_eq!(base.join("c/d.e").unwrap().as_str(), "a/b/c/d.e");
        for rel in [
            "", "..", "c/../d", "/c", "c/", "c//d", ".c", "c\\d", "c%2Fd",
        ] {
            assert!(
                matches!(base.join(rel), Err(DriverError::InvalidPath(_))),
                "{rel:?} joined"
            );
        }
        let long = DriverPath::new(&["d"; 2047].join("/")).unwrap(); // 4093 bytes
        assert!(long.join("e").is_ok()); // 4095
        assert!(long.join("ee").is_ok()); // 4096
        assert!(matches!(long.join("eee"), Err(DriverError::InvalidPath(_))));
    }

    #[test]
    fn root_is_only_a_base() {
        let root = DriverPath::root();
        assert!(root.is_root());
        assert_eq!(root.as_str(), "");
        assert_eq!(root.components().count(), 0);
        assert_eq!(root.parent(), None);
        assert_eq!(root.file_name(), "");
        assert_eq!(root.join("a/b").unwrap(), DriverPath::new("a/b").unwrap());
        assert!(!DriverPath::new("a").unwrap().is_root());
    }

    #[test]
    fn parent_file_name_components() {
        let p = DriverPath::new("a/b/c").unwrap();
        assert_eq!(p.parent(), Some(DriverPath::new("a/b").unwrap()));
        assert_eq!(p.file_name(), "c");
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b", "c"]);
        let top = DriverPath::new("a").unwrap();
        assert_eq!(top.parent(), None);
        assert_eq!(top.file_name(), "a");
        assert_eq!(top.components().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            DriverPath::new("a/b").unwrap().parent().unwrap().parent(),
            None
        );
    }

    #[test]
    fn ordering_is_byte_wise() {
        let mut v: Vec<DriverPath> = ["b", "a/b", "a", "B", "a-b"]
            .iter()
            .map(|s| DriverPath::new(s).unwrap())
            .collect();
        v.sort();
        let v: Vec<&str> = v.iter().map(DriverPath::as_str).collect();
        assert_eq!(v, ["B", "a", "a-b", "a/b", "b"]);
    }

    #[test]
    fn valid_component_helper() {
        assert!(is_valid_component("abc"));
        assert!(!is_valid_component(".tmp"));
        assert!(!is_valid_component("a/b"));
        assert!(!is_valid_component(""));
    }
}
