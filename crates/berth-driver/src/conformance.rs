//! The conformance suite: the behaviour every [`Driver`] must show, as executable checks.
//!
//! Call [`run_all`] from a test (inside a tokio runtime) with a fresh driver. Each check is also
//! public, so a failing behaviour can be run on its own. Checks panic on failure. Every check
//! works below its own uniquely named top-level directory (`conformance-<uuid>/`) and removes it
//! when it passes, so the suite may run against a driver that already holds data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::{Driver, DriverError, DriverPath, Small};

/// Runs every check in this module.
pub async fn run_all(driver: &dyn Driver) {
    put_get_round_trip(driver).await;
    put_replaces_atomically(driver).await;
    put_scratch_then_persist(driver).await;
    get_missing_is_not_found(driver).await;
    read_range_full(driver).await;
    read_range_offset_and_len(driver).await;
    read_range_bounds(driver).await;
    stat_reports_size(driver).await;
    read_small_reads_whole_or_sizes(driver).await;
    append_continues_at_end(driver).await;
    scratch_append_and_move(driver).await;
    list_is_sorted(driver).await;
    list_missing_dir_is_empty(driver).await;
    rename_replaces(driver).await;
    rename_missing_source_is_not_found(driver).await;
    delete_is_idempotent(driver).await;
    delete_all_removes_tree(driver).await;
    link_when_capable(driver).await;
    link_onto_existing_target_fails(driver).await;
    nested_parents_are_created(driver).await;
}

/// A fresh, unique directory for one check.
fn scratch(check: &str) -> DriverPath {
    let name = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    DriverPath::new(&name).unwrap().join(check).unwrap()
}

fn at(base: &DriverPath, rel: &str) -> DriverPath {
    base.join(rel).unwrap()
}

/// Removes the check's top-level directory.
async fn cleanup(driver: &dyn Driver, base: &DriverPath) {
    let top = DriverPath::new(base.components().next().unwrap()).unwrap();
    driver.delete_all(&top).await.unwrap();
}

/// Deterministic, non-repeating-looking content.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

async fn read(driver: &dyn Driver, path: &DriverPath, offset: u64, len: Option<u64>) -> Vec<u8> {
    let mut stream = driver.read_range(path, offset, len).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, DriverError>, what: &str) {
    match result {
        Err(DriverError::NotFound(_)) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

/// `put` then `get` returns the same bytes: empty, small, every byte value, and larger than any
/// reasonable buffer.
pub async fn put_get_round_trip(driver: &dyn Driver) {
    let base = scratch("put-get");
    let all_bytes: Bytes = (0..=255u8).collect::<Vec<u8>>().into();
    for (name, data) in [
        ("empty", Bytes::new()),
        ("small", Bytes::from_static(b"hello")),
        ("all-bytes", all_bytes),
        ("large", pattern(3 * 1024 * 1024 + 17, 1)),
    ] {
        let path = at(&base, name);
        driver.put(&path, data.clone()).await.unwrap();
        assert_eq!(driver.get(&path).await.unwrap(), data, "get {name}");
    }
    cleanup(driver, &base).await;
}

/// `put` over an existing object replaces it entirely (a shorter object leaves no tail), and a
/// concurrent reader sees the old bytes or the new bytes, never a mix.
pub async fn put_replaces_atomically(driver: &dyn Driver) {
    let base = scratch("put-replaces");
    let path = at(&base, "obj");
    driver.put(&path, pattern(1000, 1)).await.unwrap();
    driver
        .put(&path, Bytes::from_static(b"short"))
        .await
        .unwrap();
    assert_eq!(driver.get(&path).await.unwrap(), &b"short"[..]);

    let a = pattern(192 * 1024, 0xaa);
    let b = pattern(320 * 1024 + 5, 0x55);
    driver.put(&path, a.clone()).await.unwrap();
    let done = AtomicBool::new(false);
    let writer = async {
        for i in 0..24 {
            let data = if i % 2 == 0 { b.clone() } else { a.clone() };
            driver.put(&path, data).await.unwrap();
            tokio::task::yield_now().await;
        }
        done.store(true, Ordering::SeqCst);
    };
    let reader = async {
        for _ in 0..10_000 {
            let got = driver.get(&path).await.unwrap();
            assert!(
                got == a || got == b,
                "reader saw a mix of old and new bytes ({} bytes)",
                got.len()
            );
            if done.load(Ordering::SeqCst) {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    futures_util::future::join(writer, reader).await;
    assert_eq!(driver.get(&path).await.unwrap(), a);
    cleanup(driver, &base).await;
}

/// `put_scratch` creates (with parents) and replaces like `put`, visible at once; `persist`
/// keeps the bytes and is `NotFound` for a missing object.
pub async fn put_scratch_then_persist(driver: &dyn Driver) {
    let base = scratch("put-scratch");
    let path = at(&base, "a/b/info");
    driver.put_scratch(&path, pattern(5000, 3)).await.unwrap();
    assert_eq!(driver.get(&path).await.unwrap(), pattern(5000, 3));
    driver
        .put_scratch(&path, Bytes::from_static(b"new"))
        .await
        .unwrap();
    driver.persist(&path).await.unwrap();
    assert_eq!(driver.get(&path).await.unwrap(), &b"new"[..]);
    assert_not_found(
        driver.persist(&at(&base, "missing")).await,
        "persist missing",
    );
    cleanup(driver, &base).await;
}

/// `get`, `stat` and `read_range` of a missing object, of an object below a missing directory
/// and of a directory are all `NotFound`.
pub async fn get_missing_is_not_found(driver: &dyn Driver) {
    let base = scratch("get-missing");
    driver
        .put(&at(&base, "dir/obj"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    for rel in ["missing", "nodir/missing", "dir"] {
        let path = at(&base, rel);
        assert_not_found(driver.get(&path).await, &format!("get {rel}"));
        assert_not_found(driver.stat(&path).await, &format!("stat {rel}"));
        assert_not_found(
            driver.read_range(&path, 0, None).await.map(|_| ()),
            &format!("read_range {rel}"),
        );
    }
    cleanup(driver, &base).await;
}

/// `read_range(0, None)` streams the whole object, across many chunks.
pub async fn read_range_full(driver: &dyn Driver) {
    let base = scratch("read-range-full");
    let path = at(&base, "obj");
    let data = pattern(1024 * 1024 + 123, 2);
    driver.put(&path, data.clone()).await.unwrap();
    assert_eq!(read(driver, &path, 0, None).await, data);
    cleanup(driver, &base).await;
}

/// `read_range` honours `offset` and `len`, including ranges that span chunk boundaries.
pub async fn read_range_offset_and_len(driver: &dyn Driver) {
    let base = scratch("read-range-offset");
    let path = at(&base, "obj");
    let data = pattern(700 * 1024 + 9, 3);
    let size = data.len() as u64;
    driver.put(&path, data.clone()).await.unwrap();
    for (offset, len) in [
        (1, None),
        (1000, None),
        (256 * 1024 - 1, None),
        (0, Some(1)),
        (0, Some(300 * 1024)),
        (10, Some(5)),
        (256 * 1024 - 3, Some(6)),
        (100_000, Some(500_000)),
        (size - 10, Some(10)),
    ] {
        let start = offset as usize;
        let end = len.map_or(data.len(), |l| start + l as usize);
        assert_eq!(
            read(driver, &path, offset, len).await,
            &data[start..end],
            "read_range({offset}, {len:?})"
        );
    }
    cleanup(driver, &base).await;
}

/// Edge ranges inside the bounds: zero length, the last byte, exactly up to the end, an empty
/// range at the end, and an empty object.
pub async fn read_range_bounds(driver: &dyn Driver) {
    let base = scratch("read-range-bounds");
    let path = at(&base, "obj");
    let data = pattern(4096, 4);
    driver.put(&path, data.clone()).await.unwrap();
    assert!(read(driver, &path, 0, Some(0)).await.is_empty());
    assert!(read(driver, &path, 100, Some(0)).await.is_empty());
    assert_eq!(read(driver, &path, 4095, Some(1)).await, &data[4095..]);
    assert_eq!(read(driver, &path, 4095, None).await, &data[4095..]);
    assert_eq!(read(driver, &path, 96, Some(4000)).await, &data[96..]);
    assert!(read(driver, &path, 4096, Some(0)).await.is_empty());
    assert!(read(driver, &path, 4096, None).await.is_empty());

    let empty = at(&base, "empty");
    driver.put(&empty, Bytes::new()).await.unwrap();
    assert!(read(driver, &empty, 0, None).await.is_empty());
    assert!(read(driver, &empty, 0, Some(0)).await.is_empty());
    cleanup(driver, &base).await;
}

/// `stat` reports the size (also after a replacement) and a plausible modification time.
pub async fn stat_reports_size(driver: &dyn Driver) {
    let base = scratch("stat");
    let path = at(&base, "obj");
    driver.put(&path, pattern(12_345, 5)).await.unwrap();
    let meta = driver.stat(&path).await.unwrap();
    assert_eq!(meta.size, 12_345);
    let day = Duration::from_secs(24 * 3600);
    let now = SystemTime::now();
    assert!(
        meta.modified > now - day && meta.modified < now + day,
        "implausible mtime {:?}",
        meta.modified
    );
    driver.put(&path, Bytes::new()).await.unwrap();
    assert_eq!(driver.stat(&path).await.unwrap().size, 0);
    cleanup(driver, &base).await;
}

/// `read_small` returns a small object whole (tiny, or large enough to be read another way),
/// only the size of a larger one, and `NotFound` for a missing one.
pub async fn read_small_reads_whole_or_sizes(driver: &dyn Driver) {
    let base = scratch("read-small");
    for (name, len) in [("empty", 0), ("tiny", 300), ("mid", 100 * 1024 + 3)] {
        let path = at(&base, name);
        driver.put(&path, pattern(len, 4)).await.unwrap();
        assert_eq!(
            driver.read_small(&path, 1 << 20).await.unwrap(),
            Small::Whole(pattern(len, 4)),
            "{name}"
        );
    }
    let path = at(&base, "mid");
    assert_eq!(
        driver.read_small(&path, 100 * 1024).await.unwrap(),
        Small::Large(100 * 1024 + 3)
    );
    assert_not_found(
        driver.read_small(&at(&base, "missing"), 1 << 20).await,
        "read_small of a missing object",
    );
    cleanup(driver, &base).await;
}

/// `append` creates a missing object (and its parents), a writer tracks its size, and a second
/// writer continues at the end of what the first one wrote; also onto an object made by `put`.
pub async fn append_continues_at_end(driver: &dyn Driver) {
    let base = scratch("append");
    let path = at(&base, "new/dir/upload");
    let mut w = driver.append(&path).await.unwrap();
    assert_eq!(w.size(), 0);
    w.write(b"hello").await.unwrap();
    w.write(b"").await.unwrap();
    w.write(b" world").await.unwrap();
    assert_eq!(w.size(), 11);
    assert_eq!(w.close().await.unwrap(), 11);
    assert_eq!(driver.get(&path).await.unwrap(), &b"hello world"[..]);

    let mut w = driver.append(&path).await.unwrap();
    assert_eq!(w.size(), 11);
    w.write(b"!").await.unwrap();
    assert_eq!(w.size(), 12);
    assert_eq!(w.close().await.unwrap(), 12);
    assert_eq!(driver.get(&path).await.unwrap(), &b"hello world!"[..]);
    assert_eq!(driver.stat(&path).await.unwrap().size, 12);

    // Large and many small writes, crossing any internal buffer size.
    let big = pattern(3 * 1024 * 1024 + 1, 6);
    let mut expected = b"hello world!".to_vec();
    let mut w = driver.append(&path).await.unwrap();
    w.write(&big).await.unwrap();
    expected.extend_from_slice(&big);
    for chunk in big.chunks(7919) {
        w.write(chunk).await.unwrap();
        expected.extend_from_slice(chunk);
        assert_eq!(w.size(), expected.len() as u64);
    }
    assert_eq!(w.close().await.unwrap(), expected.len() as u64);
    assert_eq!(driver.get(&path).await.unwrap(), expected);

    let put_first = at(&base, "put-first");
    driver
        .put(&put_first, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let mut w = driver.append(&put_first).await.unwrap();
    assert_eq!(w.size(), 3);
    w.write(b"def").await.unwrap();
    assert_eq!(w.close().await.unwrap(), 6);
    assert_eq!(driver.get(&put_first).await.unwrap(), &b"abcdef"[..]);

    let empty = at(&base, "empty");
    let w = driver.append(&empty).await.unwrap();
    assert_eq!(w.close().await.unwrap(), 0);
    assert_eq!(driver.stat(&empty).await.unwrap().size, 0);
    cleanup(driver, &base).await;
}

/// `append_scratch` and `rename_from_scratch` read like `append` and `rename` (only what a
/// crash keeps differs): a new file and its parents appear, a second writer continues at the
/// end, and the move replaces its target and creates its parents.
pub async fn scratch_append_and_move(driver: &dyn Driver) {
    let base = scratch("scratch-append");
    let path = at(&base, "session/data");
    let mut w = driver.append_scratch(&path).await.unwrap();
    assert_eq!(w.size(), 0);
    w.write(b"abc").await.unwrap();
    assert_eq!(w.close().await.unwrap(), 3);
    let mut w = driver.append_scratch(&path).await.unwrap();
    assert_eq!(w.size(), 3);
    w.write(b"def").await.unwrap();
    assert_eq!(w.close().await.unwrap(), 6);
    assert_eq!(driver.get(&path).await.unwrap(), &b"abcdef"[..]);

    let to = at(&base, "published/deep/blob");
    driver.put(&to, pattern(100, 9)).await.unwrap();
    driver.rename_from_scratch(&path, &to).await.unwrap();
    assert_eq!(driver.get(&to).await.unwrap(), &b"abcdef"[..]);
    assert_not_found(driver.stat(&path).await, "stat moved-away scratch file");
    assert_not_found(
        driver.rename_from_scratch(&path, &to).await,
        "move a missing scratch file",
    );
    cleanup(driver, &base).await;
}

/// `list` returns the immediate children (objects and directories), sorted byte-wise.
pub async fn list_is_sorted(driver: &dyn Driver) {
    let base = scratch("list");
    for rel in [
        "b",
        "a",
        "C",
        "a.b",
        "a-b",
        "0",
        "sub/x",
        "sub/deeper/y",
        "_",
    ] {
        driver
            .put(&at(&base, rel), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    assert_eq!(
        driver.list(&base).await.unwrap(),
        ["0", "C", "_", "a", "a-b", "a.b", "b", "sub"]
    );
    assert_eq!(
        driver.list(&at(&base, "sub")).await.unwrap(),
        ["deeper", "x"]
    );
    assert_eq!(driver.list(&at(&base, "sub/deeper")).await.unwrap(), ["y"]);
    cleanup(driver, &base).await;
}

/// `list` of a directory that does not exist (or below one) is an empty list.
pub async fn list_missing_dir_is_empty(driver: &dyn Driver) {
    let base = scratch("list-missing");
    assert!(driver.list(&base).await.unwrap().is_empty());
    assert!(driver
        .list(&at(&base, "no/such/dir"))
        .await
        .unwrap()
        .is_empty());
    driver
        .put(&at(&base, "obj"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(driver.list(&at(&base, "none")).await.unwrap().is_empty());
    cleanup(driver, &base).await;
}

/// `rename` moves an object, replacing the target and creating the target's parents.
pub async fn rename_replaces(driver: &dyn Driver) {
    let base = scratch("rename");
    let from = at(&base, "from");
    let to = at(&base, "to");
    driver.put(&from, pattern(5000, 7)).await.unwrap();
    driver.put(&to, pattern(9000, 8)).await.unwrap();
    driver.rename(&from, &to).await.unwrap();
    assert_eq!(driver.get(&to).await.unwrap(), pattern(5000, 7));
    assert_not_found(driver.get(&from).await, "get renamed-away source");

    let nested = at(&base, "x/y/z/moved");
    driver.rename(&to, &nested).await.unwrap();
    assert_eq!(driver.get(&nested).await.unwrap(), pattern(5000, 7));
    assert_not_found(driver.stat(&to).await, "stat renamed-away source");
    assert_eq!(driver.list(&base).await.unwrap(), ["x"]);
    cleanup(driver, &base).await;
}

/// `rename` of a missing source is `NotFound` and leaves the target alone.
pub async fn rename_missing_source_is_not_found(driver: &dyn Driver) {
    let base = scratch("rename-missing");
    let to = at(&base, "to");
    driver.put(&to, Bytes::from_static(b"keep")).await.unwrap();
    assert_not_found(
        driver.rename(&at(&base, "missing"), &to).await,
        "rename missing source",
    );
    assert_not_found(
        driver
            .rename(&at(&base, "no/dir/missing"), &at(&base, "elsewhere"))
            .await,
        "rename source in missing dir",
    );
    assert_eq!(driver.get(&to).await.unwrap(), &b"keep"[..]);
    cleanup(driver, &base).await;
}

/// `delete` removes an object; deleting it again, or something that never existed, succeeds.
pub async fn delete_is_idempotent(driver: &dyn Driver) {
    let base = scratch("delete");
    let path = at(&base, "obj");
    let sibling = at(&base, "sibling");
    driver.put(&path, Bytes::from_static(b"x")).await.unwrap();
    driver
        .put(&sibling, Bytes::from_static(b"y"))
        .await
        .unwrap();
    driver.delete(&path).await.unwrap();
    assert_not_found(driver.get(&path).await, "get deleted");
    driver.delete(&path).await.unwrap();
    driver.delete(&at(&base, "never")).await.unwrap();
    driver.delete(&at(&base, "no/such/dir/obj")).await.unwrap();
    assert_eq!(driver.get(&sibling).await.unwrap(), &b"y"[..]);
    cleanup(driver, &base).await;
}

/// `delete_all` removes a directory and everything below it, leaves siblings alone and is
/// idempotent.
pub async fn delete_all_removes_tree(driver: &dyn Driver) {
    let base = scratch("delete-all");
    for rel in ["tree/a", "tree/b/c", "tree/b/d/e", "tree-sibling/f", "g"] {
        driver
            .put(&at(&base, rel), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let tree = at(&base, "tree");
    driver.delete_all(&tree).await.unwrap();
    assert!(driver.list(&tree).await.unwrap().is_empty());
    assert_not_found(driver.get(&at(&base, "tree/b/d/e")).await, "get deleted");
    assert_eq!(driver.list(&base).await.unwrap(), ["g", "tree-sibling"]);
    assert_eq!(
        driver.get(&at(&base, "tree-sibling/f")).await.unwrap(),
        &b"x"[..]
    );
    driver.delete_all(&tree).await.unwrap();
    driver
        .delete_all(&at(&base, "never/existed"))
        .await
        .unwrap();
    cleanup(driver, &base).await;
}

/// With [`crate::Capabilities::hardlink`], `link` makes a second name for the same bytes
/// (creating parents) that survives deleting the first name, and a missing source is
/// `NotFound`. Without it, `link` is `Unsupported`.
pub async fn link_when_capable(driver: &dyn Driver) {
    let base = scratch("link");
    let from = at(&base, "from");
    let to = at(&base, "deep/er/to");
    driver.put(&from, pattern(2000, 9)).await.unwrap();
    if !driver.capabilities().hardlink {
        match driver.link(&from, &to).await {
            Err(DriverError::Unsupported(_)) => {}
            other => panic!("link without the capability: expected Unsupported, got {other:?}"),
        }
        assert_not_found(driver.stat(&to).await, "stat link target");
        cleanup(driver, &base).await;
        return;
    }
    driver.link(&from, &to).await.unwrap();
    assert_eq!(driver.get(&to).await.unwrap(), pattern(2000, 9));
    assert_eq!(driver.get(&from).await.unwrap(), pattern(2000, 9));
    // Replacing one name with `put` does not change the bytes behind the other.
    driver.put(&from, Bytes::from_static(b"new")).await.unwrap();
    assert_eq!(driver.get(&to).await.unwrap(), pattern(2000, 9));
    driver.delete(&from).await.unwrap();
    assert_eq!(driver.get(&to).await.unwrap(), pattern(2000, 9));
    assert_not_found(
        driver.link(&from, &at(&base, "other")).await,
        "link missing source",
    );
    assert_not_found(driver.stat(&at(&base, "other")).await, "stat link target");
    cleanup(driver, &base).await;
}

/// `link` onto an existing object is `PreconditionFailed` and changes nothing (`Unsupported`
/// without the capability).
pub async fn link_onto_existing_target_fails(driver: &dyn Driver) {
    let base = scratch("link-existing");
    let from = at(&base, "from");
    let to = at(&base, "to");
    driver
        .put(&from, Bytes::from_static(b"from"))
        .await
        .unwrap();
    driver.put(&to, Bytes::from_static(b"to")).await.unwrap();
    match driver.link(&from, &to).await {
        Err(DriverError::PreconditionFailed(_)) if driver.capabilities().hardlink => {}
        Err(DriverError::Unsupported(_)) if !driver.capabilities().hardlink => {}
        other => panic!("link onto an existing target: got {other:?}"),
    }
    assert_eq!(driver.get(&to).await.unwrap(), &b"to"[..]);
    assert_eq!(driver.get(&from).await.unwrap(), &b"from"[..]);
    cleanup(driver, &base).await;
}

/// `put` creates every missing parent directory, and they show up in `list`.
pub async fn nested_parents_are_created(driver: &dyn Driver) {
    let base = scratch("nested");
    let path = at(&base, "x/y/z/w/obj");
    driver
        .put(&path, Bytes::from_static(b"deep"))
        .await
        .unwrap();
    assert_eq!(driver.get(&path).await.unwrap(), &b"deep"[..]);
    assert_eq!(driver.list(&base).await.unwrap(), ["x"]);
    assert_eq!(driver.list(&at(&base, "x")).await.unwrap(), ["y"]);
    assert_eq!(driver.list(&at(&base, "x/y/z")).await.unwrap(), ["w"]);
    assert_eq!(driver.list(&at(&base, "x/y/z/w")).await.unwrap(), ["obj"]);
    assert_not_found(driver.stat(&at(&base, "x/y")).await, "stat a directory");
    cleanup(driver, &base).await;
}
