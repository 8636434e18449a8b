//! Per-request observation: the route class of a request, its body bytes counted as they
//! stream, one access-log line (target `berth::access`) and the [`RequestObserver`] hook through
//! which the composition root keeps its metrics. Owns no metric and names no metrics library.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::Method;
use http_body::{Frame, SizeHint};

/// The class of a request's route: the kind of [`crate::Endpoint`] its path names, never the path
/// itself, so a label built from it has a handful of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    UploadStart,
    Upload,
    Referrers,
    /// A path outside the distribution API.
    Unknown,
}

impl Route {
    /// Every route class, for metrics that want to show zeros.
    pub const ALL: [Route; 9] = [
        Route::Base,
        Route::Catalog,
        Route::Tags,
        Route::Manifest,
        Route::Blob,
        Route::UploadStart,
        Route::Upload,
        Route::Referrers,
        Route::Unknown,
    ];

    /// The class's name: `base`, `catalog`, `tags`, `manifest`, `blob`, `upload_start`,
    /// `upload`, `referrers` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags => "tags",
            Route::Manifest => "manifest",
            Route::Blob => "blob",
            Route::UploadStart => "upload_start",
            Route::Upload => "upload",
            Route::Referrers => "referrers",
            Route::Unknown => "unknown",
        }
    }
}

/// A finished request, as the access log and the observer see it.
#[derive(Debug, Clone)]
pub struct Exchange<'a> {
    pub request_id: &'a str,
    pub method: &'a Method,
    pub route: Route,
    /// The repository named by the path, when it parsed.
    pub repository: Option<&'a str>,
    /// The response status; 499 when the client went away before the answer was ready.
    pub status: u16,
    /// Request body bytes the handler read.
    pub bytes_in: u64,
    /// Response body bytes: the answer's `Content-Length` (0 for `HEAD`).
    pub bytes_out: u64,
    /// Time until the response head was ready (a blob body streams after it).
    pub duration: Duration,
}

/// Watches every request of the API; implemented by the composition root (metrics). Methods
/// are called on the request path and must not block.
pub trait RequestObserver: Send + Sync {
    /// A request arrived and is about to be handled.
    fn started(&self, route: Route, method: &Method);
    /// `n` bytes of a request body were read by its handler.
    fn bytes_in(&self, route: Route, n: u64);
    /// `n` bytes of a response body were handed to the connection.
    fn bytes_out(&self, route: Route, n: u64);
    /// A request ended: answered, or abandoned by its client (status 499). Called exactly once
    /// for each [`RequestObserver::started`].
    fn finished(&self, exchange: &Exchange<'_>);
}

#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// A body that counts its data bytes as they are polled.
struct Counted {
    inner: Body,
    direction: Direction,
    route: Route,
    total: Arc<AtomicU64>,
    observer: Option<Arc<dyn RequestObserver>>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.total.fetch_add(n, Ordering::Relaxed);
                if let Some(o) = &self.observer {
                    match self.direction {
                        Direction::In => o.bytes_in(self.route, n),
                        Direction::Out => o.bytes_out(self.route, n),
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request from arrival to answer: counts its body, then logs it and tells the observer
/// once, when answered ([`InFlight::finish`]) or, if its handler is dropped first because the
/// client went away, with status 499.
pub(crate) struct InFlight {
    observer: Option<Arc<dyn RequestObserver>>,
    request_id: String,
    method: Method,
    route: Route,
    repository: Option<String>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    done: bool,
}

impl InFlight {
    pub(crate) fn start(
        observer: Option<Arc<dyn RequestObserver>>,
        request_id: String,
        method: Method,
        route: Route,
    ) -> Self {
        if let Some(o) = &observer {
            o.started(route, &method);
        }
        InFlight {
            observer,
            request_id,
            method,
            route,
            repository: None,
            started: Instant::now(),
            bytes_in: Arc::default(),
            done: false,
        }
    }

    pub(crate) fn set_repository(&mut self, name: &str) {
        self.repository = Some(name.to_owned());
    }

    /// The request body, counted as the handler reads it.
    pub(crate) fn request_body(&self, body: Body) -> Body {
        Body::new(Counted {
            inner: body,
            direction: Direction::In,
            route: self.route,
            total: self.bytes_in.clone(),
            observer: self.observer.clone(),
        })
    }

    /// The response body, counted as it is sent (only when someone observes).
    pub(crate) fn response_body(&self, body: Body) -> Body {
        match &self.observer {
            Some(o) => Body::new(Counted {
                inner: body,
                direction: Direction::Out,
                route: self.route,
                total: Arc::default(),
                observer: Some(o.clone()),
            }),
            None => body,
        }
    }

    /// The request was answered with `status` and a body of `bytes_out` bytes.
    pub(crate) fn finish(mut self, status: u16, bytes_out: u64) {
        self.record(status, bytes_out);
    }

    fn record(&mut self, status: u16, bytes_out: u64) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let exchange = Exchange {
            request_id: &self.request_id,
            method: &self.method,
            route: self.route,
            repository: self.repository.as_deref(),
            status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            duration: self.started.elapsed(),
        };
        tracing::info!(
            target: "berth::access",
            request_id = exchange.request_id,
            method = %exchange.method,
            route = exchange.route.as_str(),
            repository = exchange.repository.unwrap_or("-"),
            status = exchange.status,
            bytes_in = exchange.bytes_in,
            bytes_out = exchange.bytes_out,
            duration_ms = exchange.duration.as_secs_f64() * 1000.0,
            user = "-",
            "request"
        );
        if let Some(o) = &self.observer {
            o.finished(&exchange);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // 499: the client closed the request before the answer was ready (nginx's convention).
        self.record(499, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Seen {
        started: Mutex<u32>,
        finished: Mutex<Vec<(Route, u16, u64, u64)>>,
    }

    impl RequestObserver for Seen {
        fn started(&self, _: Route, _: &Method) {
            *self.started.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
        fn bytes_in(&self, _: Route, _: u64) {}
        fn bytes_out(&self, _: Route, _: u64) {}
        fn finished(&self, e: &Exchange<'_>) {
            self.finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((e.route, e.status, e.bytes_in, e.bytes_out));
        }
    }

    fn seen(s: &Seen) -> Vec<(Route, u16, u64, u64)> {
        s.finished.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    #[tokio::test]
    async fn a_request_is_reported_once_with_the_body_bytes_read() {
        let observer = Arc::new(Seen::default());
        let flight = InFlight::start(
            Some(observer.clone()),
            "1".into(),
            Method::PUT,
            Route::Manifest,
        );
        let body = flight.request_body(Body::from("12345"));
        let read = axum::body::to_bytes(body, 100).await.ok().map(|b| b.len());
        assert_eq!(read, Some(5));
        flight.finish(201, 0);
        assert_eq!(seen(&observer), [(Route::Manifest, 201, 5, 0)]);
        assert_eq!(
            *observer.started.lock().unwrap_or_else(|e| e.into_inner()),
            1
        );
    }

    #[test]
    fn a_request_dropped_before_its_answer_is_reported_as_499() {
        let observer = Arc::new(Seen::default());
        let flight = InFlight::start(
            Some(observer.clone()),
            "2".into(),
            Method::PATCH,
            Route::Upload,
        );
        drop(flight);
        assert_eq!(seen(&observer), [(Route::Upload, 499, 0, 0)]);
    }
}
