//! The behaviour every metadata store must show. Used from each implementation's tests.

#![allow(clippy::unwrap_used)]

use std::ops::Bound;

use crate::{scan_prefix, write, Durability, MetaError, MetaStore, Table};

/// Runs every check against `store` (which must start empty).
pub fn run_all(store: &dyn MetaStore) {
    insert_get_remove(store);
    failed_body_rolls_back(store);
    snapshots_do_not_see_later_commits(store);
    range_is_ordered_bounded_and_limited(store);
    tables_are_separate(store);
}

pub fn insert_get_remove(store: &dyn MetaStore) {
    write(store, Durability::Durable, |tx| {
        tx.insert(Table::Repos, b"a", b"1")
    })
    .unwrap();
    assert_eq!(
        store.read().unwrap().get(Table::Repos, b"a").unwrap(),
        Some(b"1".to_vec())
    );
    let existed = write(store, Durability::Durable, |tx| {
        tx.remove(Table::Repos, b"a")
    })
    .unwrap();
    assert!(existed);
    let existed = write(store, Durability::Lazy, |tx| tx.remove(Table::Repos, b"a")).unwrap();
    assert!(!existed);
    assert_eq!(store.read().unwrap().get(Table::Repos, b"a").unwrap(), None);
}

pub fn failed_body_rolls_back(store: &dyn MetaStore) {
    let r: Result<(), MetaError> = write(store, Durability::Durable, |tx| {
        tx.insert(Table::Tags, b"rolled", b"back")?;
        assert_eq!(tx.get(Table::Tags, b"rolled")?, Some(b"back".to_vec()));
        Err(MetaError::Aborted("no".into()))
    });
    assert!(r.is_err());
    assert_eq!(
        store.read().unwrap().get(Table::Tags, b"rolled").unwrap(),
        None
    );
}

pub fn snapshots_do_not_see_later_commits(store: &dyn MetaStore) {
    let snap = store.read().unwrap();
    write(store, Durability::Durable, |tx| {
        tx.insert(Table::Cas, b"later", b"x")
    })
    .unwrap();
    assert_eq!(snap.get(Table::Cas, b"later").unwrap(), None);
    assert_eq!(
        store.read().unwrap().get(Table::Cas, b"later").unwrap(),
        Some(b"x".to_vec())
    );
}

pub fn range_is_ordered_bounded_and_limited(store: &dyn MetaStore) {
    write(store, Durability::Durable, |tx| {
        for k in ["p/c", "p/a", "p/b", "q", "o"] {
            tx.insert(Table::Manifests, k.as_bytes(), k.as_bytes())?;
        }
        Ok(())
    })
    .unwrap();
    let r = store.read().unwrap();
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| {
        v.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(scan_prefix(r.as_ref(), Table::Manifests, b"p/", 10).unwrap()),
        ["p/a", "p/b", "p/c"]
    );
    assert_eq!(
        keys(scan_prefix(r.as_ref(), Table::Manifests, b"p/", 2).unwrap()),
        ["p/a", "p/b"]
    );
    let after = r
        .range(
            Table::Manifests,
            Bound::Excluded(b"p/a".as_slice()),
            Bound::Unbounded,
            10,
        )
        .unwrap();
    assert_eq!(keys(after), ["p/b", "p/c", "q"]);
}

pub fn tables_are_separate(store: &dyn MetaStore) {
    write(store, Durability::Durable, |tx| {
        tx.insert(Table::Referrers, b"same", b"u")
    })
    .unwrap();
    assert_eq!(
        store
            .read()
            .unwrap()
            .get(Table::Signatures, b"same")
            .unwrap(),
        None
    );
}
