//! The admin channel: a Unix socket at `<root>/_berth/admin.sock` through which commands such as
//! `berth gc` and `berth scrub` reach the server that owns the root. Owns the socket's life
//! (stale file removed at start-up, mode 0600, removed at shutdown), its routes, and the client
//! the CLI uses; it must not contain registry logic (a pass is the engine's `Registry::gc` or
//! `Registry::scrub`) or listen on a network address.
//!
//! The protocol is HTTP/1.1. `POST /gc?dry_run=true|false&repo=NAME` and
//! `POST /scrub?repair=true|false&repo=NAME` answer `application/x-ndjson`: one JSON line per
//! progress event of the pass (`GcEvent` or `ScrubEvent`, tagged by `"event"`) as it happens, then
//! `{"event":"report", ...}` with the `GcReport` or `ScrubReport` fields, or
//! `{"event":"error","message":...}` if the pass failed or the request was invalid.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use berth_oci::RepoName;
use berth_store::scrub::ScrubOptions;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::reload::Live;
use crate::serve::GcPasses;

/// The admin socket, relative to the root.
pub const SOCKET: &str = "_berth/admin.sock";

/// The media type of the `POST /gc` and `POST /scrub` answers.
pub const NDJSON: &str = "application/x-ndjson";

/// The admin socket of `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(SOCKET)
}

/// Binds the admin socket of `root`, whose lock the caller holds (so any socket file there is a
/// stale one of ours). The socket is bound under a temporary name, restricted to the owner (0600)
/// and only then renamed into place, so it is never reachable with looser permissions.
pub(crate) fn bind(root: &Path) -> io::Result<UnixListener> {
    let path = socket_path(root);
    let staging = path.with_extension("sock.tmp");
    for stale in [&path, &staging] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let listener = UnixListener::bind(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staging, &path)?;
    Ok(listener)
}

/// Serves the admin routes on `listener` until `stop` turns true (letting a streaming pass
/// finish), then removes the socket file.
pub(crate) fn spawn(
    listener: UnixListener,
    root: &Path,
    admin: Admin,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let path = socket_path(root);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let app = Router::new()
            .route("/gc", post(post_gc))
            .route("/scrub", post(post_scrub))
            .with_state(admin);
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the admin channel failed");
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the admin socket");
            }
            _ => {}
        }
    })
}

/// What the admin routes work with.
#[derive(Clone)]
pub(crate) struct Admin {
    /// Runs passes (garbage collection and scrub) one at a time and lets shutdown wait for them.
    pub passes: GcPasses,
    /// The server's settings as last (re)loaded; a garbage collection request takes the pass
    /// settings from there and may add a dry run and a repository.
    pub live: watch::Receiver<Live>,
}

/// The query of `POST /gc`.
#[derive(Debug, Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
    repo: Option<String>,
}

/// The query of `POST /scrub`.
#[derive(Debug, Deserialize)]
struct ScrubQuery {
    #[serde(default)]
    repair: bool,
    repo: Option<String>,
}

/// The last line of a pass's answer: the report (any `Serialize` struct, whose fields follow the
/// tag) or why there is none.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Outcome<'a, R> {
    Report(&'a R),
    Error { message: &'a str },
}

/// One NDJSON line.
fn line(value: &impl Serialize) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!(r#"{{"event":"error","message":"cannot encode a line: {e}"}}"#).into_bytes()
    });
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn ndjson(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(NDJSON),
    );
    response
}

/// A refused request: 400 with the one error line.
fn bad_request(message: &str) -> Response {
    let refusal: Outcome<'_, ()> = Outcome::Error { message };
    ndjson(StatusCode::BAD_REQUEST, Body::from(line(&refusal)))
}

/// The query of a pass route, and its `repo` parsed; why not if either is invalid.
fn pass_query<Q>(
    query: Result<Query<Q>, QueryRejection>,
    repo: impl FnOnce(&Q) -> Option<&str>,
) -> Result<(Q, Option<RepoName>), String> {
    let Query(query) = query.map_err(|e| e.body_text())?;
    let repo = repo(&query)
        .map(RepoName::parse)
        .transpose()
        .map_err(|e| format!("repo: {e}"))?;
    Ok((query, repo))
}

/// Where a pass sends its progress events: each becomes one line of the answer.
struct Progress(mpsc::UnboundedSender<Bytes>);

impl Progress {
    fn send(&self, event: &impl Serialize) {
        // A client that went away no longer reads; the pass goes on regardless.
        let _ = self.0.send(line(event));
    }
}

/// Answers with a pass streamed as NDJSON: `pass` runs on its own task (a client that goes away
/// stops reading, not the pass) and sends its progress events; its outcome is the last line.
fn stream_pass<R, F>(pass: impl FnOnce(Progress) -> F) -> Response
where
    R: Serialize + Send + 'static,
    F: Future<Output = Result<R, String>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let running = pass(Progress(tx.clone()));
    tokio::spawn(async move {
        let outcome = running.await;
        let last: Outcome<'_, R> = match &outcome {
            Ok(report) => Outcome::Report(report),
            Err(message) => Outcome::Error { message },
        };
        let last = line(&last);
        let _ = tx.send(last);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    ndjson(StatusCode::OK, Body::from_stream(stream))
}

/// `POST /gc`: runs a garbage collection pass and streams its progress, then its report.
async fn post_gc(
    State(admin): State<Admin>,
    query: Result<Query<GcQuery>, QueryRejection>,
) -> Response {
    let (query, repo) = match pass_query(query, |q: &GcQuery| q.repo.as_deref()) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(&message),
    };
    let mut opts = admin.live.borrow().gc.clone();
    opts.dry_run |= query.dry_run;
    opts.repo = repo;
    stream_pass(move |progress| async move {
        admin
            .passes
            .run(&opts, "admin", move |event| progress.send(&event))
            .await
    })
}

/// `POST /scrub`: runs a scrub and streams its progress, then its report.
async fn post_scrub(
    State(admin): State<Admin>,
    query: Result<Query<ScrubQuery>, QueryRejection>,
) -> Response {
    let (query, repo) = match pass_query(query, |q: &ScrubQuery| q.repo.as_deref()) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(&message),
    };
    let opts = ScrubOptions {
        repo,
        repair: query.repair,
    };
    stream_pass(move |progress| async move {
        admin
            .passes
            .run_scrub(&opts, "admin", move |event| progress.send(&event))
            .await
    })
}

/// A line of a pass's answer (`POST /gc` or `POST /scrub`) as the client reads it. Both passes
/// report progress with the same events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PassLine {
    /// The pass is about to visit this many repositories.
    Started { repositories: usize },
    /// The pass is at repository `done + 1` of `total`.
    Repository {
        done: usize,
        total: usize,
        name: String,
    },
    /// The pass sweeps (or checks) the shared store.
    SharedStore,
    /// The pass finished: the `GcReport` or `ScrubReport` fields.
    Report(Map<String, Value>),
    /// The pass failed or the request was refused.
    Error { message: String },
    /// An event this client does not know (from a newer server).
    #[serde(other)]
    Other,
}

/// Why a request over the admin channel failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Reading or writing the socket failed.
    #[error("talking to the server over {}: {source}", socket.display())]
    Io {
        /// The admin socket.
        socket: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The server answered something that is not the admin protocol.
    #[error("unexpected answer from the server over {}: {reason}", socket.display())]
    Protocol {
        /// The admin socket.
        socket: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The server refused the request or the pass failed there.
    #[error("the server could not run the pass: {0}")]
    Failed(String),
}

/// Connects to the admin socket of `root`; `None` when nothing answers there (no server, or a
/// socket file left by one that died).
pub async fn connect(root: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(root)).await.ok()
}

/// Asks the server at the other end of `stream` (see [`connect`]) for a garbage collection pass,
/// hands each progress line to `progress` as it arrives and returns the report's fields.
pub async fn request_gc(
    stream: UnixStream,
    socket: &Path,
    dry_run: bool,
    repo: Option<&RepoName>,
    progress: impl FnMut(&PassLine),
) -> Result<Map<String, Value>, AdminError> {
    let target = pass_target("gc", "dry_run", dry_run, repo);
    request_pass(stream, socket, &target, progress).await
}

/// Asks the server at the other end of `stream` (see [`connect`]) for a scrub, hands each
/// progress line to `progress` as it arrives and returns the report's fields.
pub async fn request_scrub(
    stream: UnixStream,
    socket: &Path,
    repair: bool,
    repo: Option<&RepoName>,
    progress: impl FnMut(&PassLine),
) -> Result<Map<String, Value>, AdminError> {
    let target = pass_target("scrub", "repair", repair, repo);
    request_pass(stream, socket, &target, progress).await
}

/// `/<route>?<flag>=<value>[&repo=<repo>]`.
fn pass_target(route: &str, flag: &str, value: bool, repo: Option<&RepoName>) -> String {
    let mut target = format!("/{route}?{flag}={value}");
    if let Some(repo) = repo {
        // Repository names are `[a-z0-9._/-]`: nothing to escape in a query.
        target.push_str(&format!("&repo={repo}"));
    }
    target
}

/// Sends `POST <target>` to a pass route and reads the NDJSON answer: progress lines go to
/// `progress`, the report's fields are returned.
async fn request_pass(
    stream: UnixStream,
    socket: &Path,
    target: &str,
    mut progress: impl FnMut(&PassLine),
) -> Result<Map<String, Value>, AdminError> {
    let io_err = |source| AdminError::Io {
        socket: socket.to_owned(),
        source,
    };
    let protocol = |reason: String| AdminError::Protocol {
        socket: socket.to_owned(),
        reason,
    };
    let (read, mut write) = stream.into_split();
    write
        .write_all(
            format!(
                "POST {target} HTTP/1.1\r\nHost: berth\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .map_err(io_err)?;
    let mut body = ResponseBody::read_head(BufReader::new(read))
        .await
        .map_err(io_err)?
        .map_err(protocol)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut unparsed = Vec::new();
    while let Some(data) = body.next_data().await.map_err(io_err)? {
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<PassLine>(&raw) {
                Ok(PassLine::Report(report)) => return Ok(report),
                Ok(PassLine::Error { message }) => return Err(AdminError::Failed(message)),
                Ok(other) => progress(&other),
                Err(_) => unparsed.push(String::from_utf8_lossy(&raw).trim().to_owned()),
            }
        }
    }
    unparsed.push(String::from_utf8_lossy(&pending).trim().to_owned());
    unparsed.retain(|s| !s.is_empty());
    Err(protocol(format!(
        "HTTP {}, the answer ended without a report{}",
        body.status,
        if unparsed.is_empty() {
            String::new()
        } else {
            format!(": {}", unparsed.join(" "))
        }
    )))
}

/// How the body of a response is delimited (RFC 9112, section 6).
#[derive(Debug)]
enum Framing {
    Chunked { done: bool },
    Length(u64),
    Close,
}

/// The body of an HTTP/1.1 response, read as it arrives.
struct ResponseBody<R> {
    reader: R,
    status: u16,
    framing: Framing,
}

impl<R: tokio::io::AsyncBufRead + Unpin> ResponseBody<R> {
    /// Reads the status line and the headers. The inner error says what is not HTTP.
    async fn read_head(mut reader: R) -> io::Result<Result<Self, String>> {
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await?;
        let status = match status_line.split_whitespace().collect::<Vec<_>>()[..] {
            [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().ok(),
            _ => None,
        };
        let Some(status) = status else {
            return Ok(Err(format!(
                "not an HTTP response: {:?}",
                status_line.trim()
            )));
        };
        let mut framing = Framing::Close;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(Err("the headers ended early".into()));
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                return Ok(Err(format!("bad header line {header:?}")));
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().ends_with("chunked")
            {
                framing = Framing::Chunked { done: false };
            } else if name.eq_ignore_ascii_case("content-length")
                && !matches!(framing, Framing::Chunked { .. })
            {
                match value.parse() {
                    Ok(n) => framing = Framing::Length(n),
                    Err(_) => return Ok(Err(format!("bad Content-Length {value:?}"))),
                }
            }
        }
        Ok(Ok(ResponseBody {
            reader,
            status,
            framing,
        }))
    }

    /// The next piece of the body, `None` at its end.
    async fn next_data(&mut self) -> io::Result<Option<Vec<u8>>> {
        match &mut self.framing {
            Framing::Chunked { done: true } | Framing::Length(0) => Ok(None),
            Framing::Chunked { done } => {
                let mut size_line = String::new();
                if self.reader.read_line(&mut size_line).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let hex = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(hex, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {hex:?}"),
                    )
                })?;
                if size == 0 {
                    *done = true;
                    // Trailers, up to the empty line (or the end of the connection).
                    let mut trailer = String::new();
                    while self.reader.read_line(&mut trailer).await? > 0
                        && !trailer.trim_end().is_empty()
                    {
                        trailer.clear();
                    }
                    return Ok(None);
                }
                let mut data = vec![0; size];
                self.reader.read_exact(&mut data).await?;
                let mut crlf = [0; 2];
                self.reader.read_exact(&mut crlf).await?;
                Ok(Some(data))
            }
            Framing::Length(left) => {
                let mut data = vec![0; (*left).min(64 * 1024) as usize];
                let n = self.reader.read(&mut data).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                data.truncate(n);
                *left -= n as u64;
                Ok(Some(data))
            }
            Framing::Close => {
                let mut data = vec![0; 64 * 1024];
                let n = self.reader.read(&mut data).await?;
                data.truncate(n);
                Ok((n > 0).then_some(data))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::gc::GcReport;
    use berth_store::scrub::{ScrubEvent, ScrubReport};

    async fn body_of(raw: &str) -> (u16, String) {
        let mut body = ResponseBody::read_head(BufReader::new(raw.as_bytes()))
            .await
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        while let Some(d) = body.next_data().await.unwrap() {
            out.extend(d);
        }
        (body.status, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn chunked_bodies_are_reassembled_across_chunks() {
        let raw = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                   transfer-encoding: chunked\r\n\r\n\
                   5\r\n{\"a\":\r\n4;ext=1\r\n1}\n\n\r\n0\r\n\r\n";
        assert_eq!(body_of(raw).await, (200, "{\"a\":1}\n\n".to_owned()));
    }

    #[tokio::test]
    async fn length_and_close_delimited_bodies_are_read() {
        let raw = "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(body_of(raw).await, (400, "abc".to_owned()));
        let raw = "HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert_eq!(body_of(raw).await, (200, "until the end".to_owned()));
    }

    #[test]
    fn lines_read_as_events_and_unknown_events_are_tolerated() {
        let l: PassLine =
            serde_json::from_str(r#"{"event":"repository","done":1,"total":2,"name":"a"}"#)
                .unwrap();
        assert_eq!(
            l,
            PassLine::Repository {
                done: 1,
                total: 2,
                name: "a".into()
            }
        );
        let l: PassLine = serde_json::from_str(r#"{"event":"report","tags":3}"#).unwrap();
        let PassLine::Report(fields) = l else {
            panic!("expected a report")
        };
        assert_eq!(fields.get("tags"), Some(&Value::from(3)));
        assert!(!fields.contains_key("event"));
        let l: PassLine = serde_json::from_str(r#"{"event":"newer","x":1}"#).unwrap();
        assert_eq!(l, PassLine::Other);
    }

    #[test]
    fn outcome_lines_are_tagged() {
        let report = GcReport::default();
        let text = String::from_utf8(line(&Outcome::Report(&report)).to_vec()).unwrap();
        assert!(
            text.starts_with(r#"{"event":"report","dry_run":false"#),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        let report = ScrubReport::default();
        let text = String::from_utf8(line(&Outcome::Report(&report)).to_vec()).unwrap();
        assert!(
            text.starts_with(r#"{"event":"report","repair":false"#),
            "{text}"
        );
        let refusal: Outcome<'_, ()> = Outcome::Error { message: "no" };
        let text = String::from_utf8(line(&refusal).to_vec()).unwrap();
        assert_eq!(text, "{\"event\":\"error\",\"message\":\"no\"}\n");
    }

    #[test]
    fn scrub_events_read_as_pass_lines() {
        let events = [
            (
                ScrubEvent::Started { repositories: 2 },
                PassLine::Started { repositories: 2 },
            ),
            (
                ScrubEvent::Repository {
                    done: 0,
                    total: 2,
                    name: "a".into(),
                },
                PassLine::Repository {
                    done: 0,
                    total: 2,
                    name: "a".into(),
                },
            ),
            (ScrubEvent::SharedStore, PassLine::SharedStore),
        ];
        for (event, want) in events {
            let l: PassLine = serde_json::from_slice(&line(&event)).unwrap();
            assert_eq!(l, want);
        }
    }

    #[test]
    fn pass_targets_carry_the_flag_and_the_repository() {
        assert_eq!(pass_target("gc", "dry_run", true, None), "/gc?dry_run=true");
        let repo = RepoName::parse("team/app").unwrap();
        assert_eq!(
            pass_target("scrub", "repair", false, Some(&repo)),
            "/scrub?repair=false&repo=team/app"
        );
    }
}
