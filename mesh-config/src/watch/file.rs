//! File source. Writers replace config files in many ways: rename a temp file over it
//! (kubectl, `mesh config patch`), truncate then write (most editors), append in place, or
//! delete and re-create. Watching the file itself loses it on the first rename, so the parent
//! directory is watched, and a cheap poll of (len, mtime, inode) catches any event that is
//! missed or coalesced (network filesystems, a re-created parent directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::publish::Publisher;
use super::{document_text, Snapshot, WatchError};
use crate::bounded::MAX_DOCUMENT_BYTES;
use crate::parse;

/// Events come in bursts (truncate, write, close, rename); one read after the burst is enough.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Bounds how late a change seen by no event is applied; a stat every 500 ms costs nothing.
const POLL: Duration = Duration::from_millis(500);

pub(super) struct Options {
    /// Off only in tests, to prove the poll alone finds every change.
    pub(super) notify: bool,
    /// Counts the file's reads after the first (tests only).
    pub(super) reads: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            notify: true,
            reads: None,
        }
    }
}

/// What changes whenever the file is rewritten, without reading it.
type Fingerprint = Option<(u64, Option<SystemTime>, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok(), meta.ino()))
}

pub(super) async fn start(
    path: PathBuf,
    options: Options,
) -> Result<watch::Receiver<Arc<Snapshot>>, WatchError> {
    let source_name = path.display().to_string();
    let stamp = fingerprint(&path);
    let bytes = read_capped(&path).await.map_err(|error| WatchError::Read {
        source_name: source_name.clone(),
        error,
    })?;
    let parsed = document_text(&bytes)
        .and_then(parse)
        .map_err(|error| WatchError::Config {
            source_name: source_name.clone(),
            error,
        })?;
    let (publisher, rx) = Publisher::new(source_name, parsed);

    let (events_tx, events) = mpsc::unbounded_channel();
    let watcher = if options.notify {
        dir_watcher(&path, events_tx)
    } else {
        None
    };
    let state = FileWatch {
        path,
        publisher,
        last_seen: Some(bytes),
        stamp,
        reads: options.reads,
    };
    tokio::spawn(state.run(events, watcher));
    Ok(rx)
}

/// The file's first [`MAX_DOCUMENT_BYTES`] bytes and one more, so that a file over the bound
/// is refused for its size without being read whole (a runaway log written over the config, a
/// device such as `/dev/zero` named by mistake).
async fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
}

/// `None` (with a warning) if the directory cannot be watched: the poll still works.
fn dir_watcher(
    path: &Path,
    events: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Any event in the directory triggers a re-read, not only events naming the file:
    // Kubernetes ConfigMap volumes swap a `..data` symlink and never touch the file's name.
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| may_change_content(&e.kind)) {
            let _ = events.send(());
        }
    };
    let result = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    match result {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot watch the config directory, polling only: {e}");
            None
        }
    }
}

/// Opening, reading or closing a file unwritten changes nothing. Those events must not trigger
/// a read: the read itself opens and closes the file, and would trigger the next one forever.
fn may_change_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

struct FileWatch {
    path: PathBuf,
    publisher: Publisher,
    /// The bytes last read (valid or not): the same bytes again are not news.
    last_seen: Option<Vec<u8>>,
    stamp: Fingerprint,
    reads: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl FileWatch {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<()>,
        // Held so that the watch lasts as long as this task.
        _watcher: Option<notify::RecommendedWatcher>,
    ) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.publisher.closed() => return,
                Some(()) = events.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while events.try_recv().is_ok() {}
                    self.reload().await;
                }
                _ = poll.tick() => {
                    if fingerprint(&self.path) != self.stamp {
                        self.reload().await;
                    }
                }
            }
        }
    }

    async fn reload(&mut self) {
        if let Some(reads) = &self.reads {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.stamp = fingerprint(&self.path);
        let bytes = match read_capped(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.last_seen.take().is_some() {
                    self.publisher.reject(format!(
                        "{} was removed; keeping the last good config until it is re-created",
                        self.path.display()
                    ));
                }
                return;
            }
            Err(e) => {
                self.last_seen = None;
                self.publisher
                    .reject(format!("cannot read {}: {e}", self.path.display()));
                return;
            }
        };
        if self.last_seen.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        let result = document_text(&bytes)
            .and_then(parse)
            .map_err(|e| e.to_string());
        self.last_seen = Some(bytes);
        match result {
            Ok(parsed) => self.publisher.accept(parsed),
            Err(e) => self.publisher.reject(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::testing::wait_for;
    use std::io::Write;

    fn doc(level: &str) -> String {
        format!("spec:\n  sidecar:\n    logLevel: {level}\n")
    }

    fn level(s: &Snapshot) -> &'static str {
        s.config.spec.sidecar.log_level.as_str()
    }

    async fn setup(
        options: Options,
    ) -> (tempfile::TempDir, PathBuf, watch::Receiver<Arc<Snapshot>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh-config.yaml");
        std::fs::write(&path, doc("info")).unwrap();
        let rx = start(path.clone(), options).await.unwrap();
        assert_eq!(rx.borrow().generation, 1);
        assert_eq!(rx.borrow().source, path.display().to_string());
        (dir, path, rx)
    }

    #[tokio::test]
    async fn atomic_rename_over() {
        let (dir, path, mut rx) = setup(Options::default()).await;
        let tmp = dir.path().join(".mesh-config.yaml.tmp");
        std::fs::write(&tmp, doc("debug")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let s = wait_for(&mut rx, "debug", |s| level(s) == "debug").await;
        assert_eq!(s.generation, 2);
        assert_eq!(s.last_error, None);
    }

    #[tokio::test]
    async fn truncate_then_write() {
        let (_dir, path, mut rx) = setup(Options::default()).await;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let text = doc("trace");
        let (a, b) = text.split_at(10);
        f.write_all(a.as_bytes()).unwrap();
        f.write_all(b.as_bytes()).unwrap();
        drop(f);
        let s = wait_for(&mut rx, "trace", |s| {
            level(s) == "trace" && s.last_error.is_none()
        })
        .await;
        assert_eq!(s.generation, 2);
    }

    #[tokio::test]
    async fn in_place_append() {
        let (_dir, path, mut rx) = setup(Options::default()).await;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"metadata:\n  name: appended\n").unwrap();
        drop(f);
        let s = wait_for(&mut rx, "appended", |s| {
            s.config.metadata.name == "appended"
        })
        .await;
        assert_eq!(s.generation, 2);
        assert_eq!(level(&s), "info");
    }

    #[tokio::test]
    async fn delete_keeps_last_good_until_recreated() {
        let (_dir, path, mut rx) = setup(Options::default()).await;
        std::fs::remove_file(&path).unwrap();
        let s = wait_for(&mut rx, "removal noticed", |s| s.last_error.is_some()).await;
        assert_eq!(s.generation, 1);
        assert_eq!(level(&s), "info");
        std::fs::write(&path, doc("warn")).unwrap();
        let s = wait_for(&mut rx, "warn", |s| level(s) == "warn").await;
        assert_eq!(s.generation, 2);
        assert_eq!(s.last_error, None);
    }

    #[tokio::test]
    async fn invalid_keeps_last_good_then_valid_applies() {
        let (_dir, path, mut rx) = setup(Options::default()).await;
        std::fs::write(
            &path,
            "spec:\n  observability:\n    tracing:\n      port: 70000\n",
        )
        .unwrap();
        let s = wait_for(&mut rx, "rejection", |s| s.last_error.is_some()).await;
        assert_eq!(s.generation, 1);
        assert_eq!(*s.config, crate::parse(&doc("info")).unwrap().config);
        assert!(s
            .last_error
            .as_deref()
            .unwrap()
            .contains("spec.observability.tracing.port: 70000 is out of range 1..=65535"));
        std::fs::write(&path, doc("error")).unwrap();
        let s = wait_for(&mut rx, "error level", |s| level(s) == "error").await;
        assert_eq!(s.generation, 2);
        assert_eq!(s.last_error, None);
    }

    #[tokio::test]
    async fn identical_content_is_not_a_new_generation() {
        let (dir, path, mut rx) = setup(Options::default()).await;
        let tmp = dir.path().join("same.tmp");
        std::fs::write(&tmp, doc("info")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&path, doc("debug")).unwrap();
        let s = wait_for(&mut rx, "debug", |s| level(s) == "debug").await;
        assert_eq!(s.generation, 2);
    }

    #[tokio::test]
    async fn reading_the_file_does_not_trigger_a_read() {
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let options = Options {
            notify: true,
            reads: Some(reads.clone()),
        };
        let (_dir, path, mut rx) = setup(options).await;
        // One real change makes the watcher read the file, which opens and closes it.
        std::fs::write(&path, doc("debug")).unwrap();
        wait_for(&mut rx, "debug", |s| level(s) == "debug").await;
        // Others reading it (kubectl, an editor, `cat`) are not changes either.
        for _ in 0..20 {
            std::fs::read(&path).unwrap();
        }
        let settled = reads.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let after = reads.load(std::sync::atomic::Ordering::Relaxed);
        // A read per event would be ~20 a second here, each triggering the next.
        assert!(
            after <= settled + 1,
            "{} reads in 1.5 s with no change",
            after - settled
        );
    }

    #[tokio::test]
    async fn poll_alone_finds_changes() {
        let (dir, path, mut rx) = setup(Options {
            notify: false,
            reads: None,
        })
        .await;
        let tmp = dir.path().join("x.tmp");
        std::fs::write(&tmp, doc("warn")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let s = wait_for(&mut rx, "warn", |s| level(s) == "warn").await;
        assert_eq!(s.generation, 2);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, doc("trace")).unwrap();
        let s = wait_for(&mut rx, "trace", |s| level(s) == "trace").await;
        assert_eq!(s.generation, 3);
    }

    #[tokio::test]
    async fn a_file_over_the_bound_is_refused_unread() {
        // A file that never ends: only a read that stops at the bound returns.
        let endless = tokio::time::timeout(
            Duration::from_secs(10),
            start(
                "/dev/zero".into(),
                Options {
                    notify: false,
                    reads: None,
                },
            ),
        )
        .await
        .expect("the read stops at the bound");
        match endless {
            Err(WatchError::Config {
                error: crate::ConfigError::Bounds(crate::Bound::Size { limit }),
                ..
            }) => assert_eq!(limit, MAX_DOCUMENT_BYTES),
            other => panic!("expected a size refusal, got {other:?}"),
        }

        // A watched file grown past the bound keeps the last good config.
        let (_dir, path, mut rx) = setup(Options::default()).await;
        let big = format!("{}# {}\n", doc("debug"), "x".repeat(MAX_DOCUMENT_BYTES));
        std::fs::write(&path, big).unwrap();
        let s = wait_for(&mut rx, "refusal", |s| s.last_error.is_some()).await;
        assert_eq!((s.generation, level(&s)), (1, "info"));
        let error = s.last_error.clone().unwrap();
        assert!(
            error.contains("larger than the limit of 1048576 bytes"),
            "{error}"
        );
        std::fs::write(&path, doc("debug")).unwrap();
        let s = wait_for(&mut rx, "debug", |s| level(s) == "debug").await;
        assert_eq!((s.generation, s.last_error.clone()), (2, None));
    }

    #[tokio::test]
    async fn initial_load_must_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.yaml");
        assert!(matches!(
            start(missing, Options::default()).await,
            Err(WatchError::Read { .. })
        ));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "spec:\n  sidecar:\n    logLevel: loud\n").unwrap();
        let err = start(bad, Options::default()).await.unwrap_err();
        assert!(err.to_string().contains("spec.sidecar.logLevel"), "{err}");
    }
}
