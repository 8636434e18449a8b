//! Tests of [`LocalFs`](super::LocalFs): the conformance suite (with and without sync) and the
//! behaviour specific to a local directory (`.tmp` handling, cancellation, buffering).

use std::time::{Duration, Instant};

use super::*;
use crate::conformance;

fn tmp_entries(fs: &LocalFs) -> Vec<String> {
    fs::read_dir(fs.root().join(TMP_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn p(s: &str) -> DriverPath {
    DriverPath::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_with_sync() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path().join("store"), true).unwrap();
    conformance::run_all(&fs).await;
    assert!(tmp_entries(&fs).is_empty());
    assert!(fs.list(&DriverPath::root()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_without_sync() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    conformance::run_all(&fs).await;
    assert!(tmp_entries(&fs).is_empty());
}

#[tokio::test]
async fn conformance_on_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    conformance::run_all(&fs).await;
}

#[cfg(unix)]
#[test]
fn hard_links_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    assert!(fs.capabilities().hardlink);
    assert!(tmp_entries(&fs).is_empty(), "probe files left behind");
}

#[tokio::test]
async fn link_is_unsupported_without_the_capability() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    let fs = LocalFs {
        inner: Arc::new(Inner {
            root: fs.inner.root.clone(),
            tmp: fs.inner.tmp.clone(),
            sync: false,
            hardlink: false,
        }),
    };
    conformance::link_when_capable(&fs).await;
    conformance::link_onto_existing_target_fails(&fs).await;
}

#[tokio::test]
async fn new_creates_root_and_removes_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/store");
    let fs = LocalFs::new(&root, true).unwrap();
    assert!(root.join(TMP_DIR).is_dir());
    fs.put(&p("keep/obj"), Bytes::from_static(b"kept"))
        .await
        .unwrap();
    drop(fs);

    fs::write(root.join(TMP_DIR).join("stale"), b"left by a crash").unwrap();
    fs::create_dir_all(root.join(TMP_DIR).join("stale-dir/inner")).unwrap();
    fs::write(root.join(TMP_DIR).join("stale-dir/inner/f"), b"x").unwrap();
    let fs = LocalFs::new(&root, true).unwrap();
    assert!(tmp_entries(&fs).is_empty());
    assert_eq!(fs.get(&p("keep/obj")).await.unwrap(), &b"kept"[..]);
}

#[test]
fn new_fails_when_root_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(LocalFs::new(&file, false).is_err());
}

#[tokio::test]
async fn list_at_root_hides_tmp_and_unaddressable_names() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    let root = DriverPath::root();
    assert!(fs.list(&root).await.unwrap().is_empty());
    fs.put(&p("b"), Bytes::new()).await.unwrap();
    fs.put(&p("a/x"), Bytes::new()).await.unwrap();
    fs::write(dir.path().join(".hidden"), b"x").unwrap();
    fs::write(dir.path().join("a/.hidden"), b"x").unwrap();
    fs::write(dir.path().join("has space"), b"x").unwrap();
    fs::create_dir(dir.path().join(TMP_DIR).join("sub")).unwrap();
    assert_eq!(fs.list(&root).await.unwrap(), ["a", "b"]);
    assert_eq!(fs.list(&p("a")).await.unwrap(), ["x"]);
    // A file is not a directory: listing it is empty.
    assert!(fs.list(&p("b")).await.unwrap().is_empty());
}

#[tokio::test]
async fn root_is_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    fs.put(&p("obj"), Bytes::from_static(b"x")).await.unwrap();
    let root = DriverPath::root();
    let invalid = |r: Result<()>| assert!(matches!(r, Err(DriverError::InvalidPath(_))), "{r:?}");
    invalid(fs.get(&root).await.map(drop));
    invalid(fs.stat(&root).await.map(drop));
    invalid(fs.put(&root, Bytes::new()).await);
    invalid(fs.read_range(&root, 0, None).await.map(drop));
    invalid(fs.append(&root).await.map(drop));
    invalid(fs.delete(&root).await);
    invalid(fs.delete_all(&root).await);
    invalid(fs.rename(&p("obj"), &root).await);
    invalid(fs.link(&p("obj"), &root).await);
    assert_eq!(fs.get(&p("obj")).await.unwrap(), &b"x"[..]);
    assert!(dir.path().join(TMP_DIR).is_dir());
}

#[tokio::test]
async fn paths_below_an_object_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    fs.put(&p("file"), Bytes::from_static(b"x")).await.unwrap();
    let below = p("file/below");
    assert!(fs.get(&below).await.unwrap_err().is_not_found());
    assert!(fs.stat(&below).await.unwrap_err().is_not_found());
    assert!(fs
        .read_range(&below, 0, None)
        .await
        .is_err_and(|e| e.is_not_found()));
    fs.delete(&below).await.unwrap();
    fs.delete_all(&below).await.unwrap();
    assert!(fs.list(&below).await.unwrap().is_empty());
    // delete_all is for directories.
    assert!(matches!(
        fs.delete_all(&p("file")).await,
        Err(DriverError::Io { .. })
    ));
    assert_eq!(fs.get(&p("file")).await.unwrap(), &b"x"[..]);
}

#[test]
fn temp_file_is_removed_when_dropped_and_kept_when_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = TempFile::create(dir.path()).unwrap();
    let path = tmp.path.clone();
    assert!(path.exists());
    drop(tmp);
    assert!(!path.exists());

    let tmp = TempFile::create(dir.path()).unwrap();
    (&tmp.file).write_all(b"data").unwrap();
    let target = dir.path().join("target");
    tmp.persist(&target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"data");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn failed_persist_removes_the_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = TempFile::create(dir.path()).unwrap();
    let path = tmp.path.clone();
    assert!(tmp.persist(&dir.path().join("missing-dir/target")).is_err());
    assert!(!path.exists());
}

#[test]
fn cancelled_put_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), true).unwrap();
    let cancelled = AtomicBool::new(true);
    let err = fs
        .inner
        .put(&p("a/b"), &[1, 2, 3], &cancelled, true)
        .unwrap_err();
    assert!(matches!(err, DriverError::Io { .. }), "{err:?}");
    assert!(tmp_entries(&fs).is_empty());
    assert!(!dir.path().join("a").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_put_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), true).unwrap();
    let path = p("big");
    let data = Bytes::from(vec![7u8; 64 * 1024 * 1024]);
    let mut put = fs.put(&path, data.clone());
    // Poll the put until its temporary file exists (or it finishes), then drop it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut finished = false;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(1), &mut put).await {
            Ok(result) => {
                result.unwrap();
                finished = true;
                break;
            }
            Err(_) if !tmp_entries(&fs).is_empty() => break,
            Err(_) => {}
        }
    }
    drop(put);
    // The background half notices the cancellation and removes its temporary file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tmp_entries(&fs).is_empty() {
        assert!(
            Instant::now() < deadline,
            "temp file left: {:?}",
            tmp_entries(&fs)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The target is either untouched (missing) or completely written, never partial.
    match fs.stat(&path).await {
        Ok(meta) => assert_eq!(meta.size, data.len() as u64, "finished={finished}"),
        Err(e) => assert!(e.is_not_found(), "{e:?}"),
    }
}

#[tokio::test]
async fn writer_counts_exactly_what_reached_the_file() {
    /// Accepts `room` bytes, three at a time, then fails.
    struct Failing {
        room: usize,
    }
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::StorageFull.into());
            }
            let n = buf.len().min(3).min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (n, r) = write_counting(&mut Failing { room: 10 }, &[0; 20]);
    assert_eq!(n, 10);
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::StorageFull);
    let (n, r) = write_counting(&mut Failing { room: 10 }, &[0; 8]);
    assert_eq!(n, 8);
    r.unwrap();
}

#[tokio::test]
async fn writer_buffers_until_full_or_closed() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    let path = p("upload");
    let mut w = fs.append(&path).await.unwrap();
    w.write(&[1; 1000]).await.unwrap();
    assert_eq!(w.size(), 1000);
    assert_eq!(fs.stat(&path).await.unwrap().size, 0);
    // Filling the buffer writes it out; the rest of this write stays buffered.
    w.write(&vec![2; WRITE_BUF]).await.unwrap();
    assert_eq!(w.size(), 1000 + WRITE_BUF as u64);
    assert_eq!(fs.stat(&path).await.unwrap().size, WRITE_BUF as u64);
    w.write(&vec![4; 3 * WRITE_BUF]).await.unwrap();
    assert_eq!(fs.stat(&path).await.unwrap().size, 4 * WRITE_BUF as u64);
    assert_eq!(w.size(), 1000 + 4 * WRITE_BUF as u64);
    w.write(&[3; 10]).await.unwrap();
    let size = 1010 + 4 * WRITE_BUF as u64;
    assert_eq!(w.close().await.unwrap(), size);
    assert_eq!(fs.stat(&path).await.unwrap().size, size);
    let data = fs.get(&path).await.unwrap();
    assert_eq!(data[..1000], [1; 1000]);
    assert_eq!(data[1000..1000 + WRITE_BUF], vec![2; WRITE_BUF][..]);
    assert_eq!(data[size as usize - 10..], [3; 10]);
}

/// A syncing writer flushes in the background while it writes (every `FLUSH_EVERY` bytes) and
/// its result is the same: every byte, in order, at close.
#[tokio::test(flavor = "multi_thread")]
async fn a_syncing_writer_flushes_as_it_goes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), true).unwrap();
    let path = p("big");
    let mut w = fs.append_scratch(&path).await.unwrap();
    let total = 3 * FLUSH_EVERY as usize + 12345;
    let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
    for piece in data.chunks(300 * 1024 + 7) {
        w.write(piece).await.unwrap();
    }
    assert_eq!(w.close().await.unwrap(), total as u64);
    assert!(fs.get(&path).await.unwrap() == data);
}

#[tokio::test]
async fn read_range_streams_in_bounded_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFs::new(dir.path(), false).unwrap();
    let path = p("obj");
    let whole = READ_WHOLE as usize;
    let data: Vec<u8> = (0..2 * whole + 1).map(|i| (i % 251) as u8).collect();
    fs.put(&path, Bytes::from(data.clone())).await.unwrap();
    let chunks = |offset: u64, len: Option<u64>| {
        let fs = fs.clone();
        let path = path.clone();
        let data = data.clone();
        async move {
            let mut stream = fs.read_range(&path, offset, len).await.unwrap();
            let (mut sizes, mut got) = (Vec::new(), Vec::new());
            while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                let chunk = chunk.unwrap();
                sizes.push(chunk.len());
                got.extend_from_slice(&chunk);
            }
            let start = offset as usize;
            let end = len.map_or(data.len(), |l| start + l as usize);
            assert!(got == data[start..end], "wrong bytes from {offset}");
            sizes
        }
    };
    // A large range: mapped megabytes (at any offset), then the rest.
    assert_eq!(chunks(1, None).await, [whole, whole]);
    assert_eq!(chunks(4097, Some(whole as u64 + 10)).await, [whole, 10]);
    // A small range (a small blob): one read.
    assert_eq!(chunks(5, Some(whole as u64 - 1)).await, [whole - 1]);
}
