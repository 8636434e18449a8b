//! [`Annotations`]: a descriptor's string map (image-spec annotations.md), held compactly.
//!
//! Every tagged entry of a repository's `index.json` carries one annotation (its
//! `org.opencontainers.image.ref.name`), and a repository can hold tens of thousands of them: a
//! `BTreeMap` would allocate a whole node (about 0.5 KiB) for that one pair. This keeps the pairs
//! in a vector sorted by key, which reads, compares and serialises exactly like the map.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// String annotations, sorted by key, keys unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations(Vec<(String, String)>);

impl Annotations {
    /// A map holding one pair.
    pub fn one(key: impl Into<String>, value: impl Into<String>) -> Annotations {
        Annotations(vec![(key.into(), value.into())])
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Sets `key`, returning the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value.into())),
            Err(i) => {
                self.0.insert(i, (key, value.into()));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl From<BTreeMap<String, String>> for Annotations {
    fn from(map: BTreeMap<String, String>) -> Annotations {
        Annotations(map.into_iter().collect())
    }
}

impl From<Annotations> for BTreeMap<String, String> {
    fn from(a: Annotations) -> BTreeMap<String, String> {
        a.0.into_iter().collect()
    }
}

impl FromIterator<(String, String)> for Annotations {
    /// Like collecting into a map: a later pair replaces an earlier one with the same key.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Annotations {
        let mut a = Annotations::default();
        for (k, v) in pairs {
            a.insert(k, v);
        }
        a
    }
}

impl Serialize for Annotations {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Annotations, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        let mut pairs: Vec<(String, String)> = map.into_iter().collect();
        pairs.shrink_to_fit();
        Ok(Annotations(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_like_a_sorted_map() {
        let mut a: Annotations = [("b", "2"), ("a", "1"), ("b", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(a.len(), 2);
        assert_eq!(a.get("b").map(String::as_str), Some("3"));
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"a":"1","b":"3"}"#);
        assert_eq!(a.insert("c", "4"), None);
        assert_eq!(a.insert("a", "0").as_deref(), Some("1"));
        assert_eq!(a.remove("b").as_deref(), Some("3"));
        assert_eq!(a.remove("b"), None);
        let keys: Vec<&String> = a.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "c"]);

        let parsed: Annotations = serde_json::from_str(r#"{"z":"1","m":"2","a":"3"}"#).unwrap();
        let map: BTreeMap<String, String> = parsed.clone().into();
        assert_eq!(Annotations::from(map), parsed);
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            r#"{"a":"3","m":"2","z":"1"}"#
        );
        assert!(serde_json::from_str::<Annotations>(r#"{"a":1}"#).is_err());
        assert!(Annotations::default().is_empty());
        assert_eq!(
            Annotations::one("k", "v").get("k").map(String::as_str),
            Some("v")
        );
    }
}
