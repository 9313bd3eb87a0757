//! Bodies, streamed both ways: never buffered whole.
//!
//! [`RequestBody`] enforces the body size limit frame by frame (a request without a
//! Content-Length cannot be refused up front) and knows whether any of it was read: a
//! body that no upstream has touched can be sent again, which is what makes a retry after
//! a connect failure safe. [`ResponseBody`] carries the request's [`RequestLog`] and its
//! place in the endpoint's outstanding count until the last byte has gone to the client.
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::error::{BoxError, ProxyError};
use super::log::RequestLog;
use super::upstream::PooledConn;

// Independent facts about one stream, each read on its own by the retry and timeout
// rules.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
struct RequestBodyState {
    inner: Incoming,
    polled: bool,
    seen: u64,
    limit: u64,
    too_large: bool,
    client_failed: bool,
    /// When body data last moved on (a frame read from the client and handed over).
    moved_at: Option<Instant>,
    /// When the end of the body was handed over.
    ended_at: Option<Instant>,
    /// The last read found the client with nothing to give.
    waiting_on_client: bool,
    /// `mirror-target`: the copy of the request that gets each frame too.
    tee: Option<super::mirror::Tee>,
}

/// How far a request body has gone upstream, for the exchange's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// All of it (at that time; None: there was no body).
    Sent(Option<Instant>),
    /// On its way: data last moved at that time (None: not yet), and whether the client
    /// is the one holding it up.
    Sending {
        moved_at: Option<Instant>,
        waiting_on_client: bool,
    },
}

/// The client's request body on its way upstream. Cloning gives another handle on the
/// same stream (used only to send an untouched body again). A request without a body
/// (the common GET) needs no shared state at all.
#[derive(Debug, Clone)]
pub struct RequestBody(Option<Arc<Mutex<RequestBodyState>>>);

impl RequestBody {
    /// No body at all.
    pub fn empty() -> Self {
        RequestBody(None)
    }

    pub fn new(inner: Incoming, limit: u64) -> Self {
        if inner.is_end_stream() {
            // Nothing to read, nothing to count: the same as an empty `Incoming` to the
            // upstream (end of stream, an exact size of 0).
            return RequestBody(None);
        }
        RequestBody(Some(Arc::new(Mutex::new(RequestBodyState {
            inner,
            polled: false,
            seen: 0,
            limit,
            too_large: false,
            client_failed: false,
            moved_at: None,
            ended_at: None,
            waiting_on_client: false,
            tee: None,
        }))))
    }

    fn state(&self) -> Option<std::sync::MutexGuard<'_, RequestBodyState>> {
        self.0
            .as_ref()
            .map(|s| s.lock().expect("request body poisoned"))
    }

    /// A copy of the body for `mirror-target`, fed frame by frame as the upstream takes
    /// them ([`super::mirror::Tee`]). None without a body, or once some was read.
    pub fn tee(
        &self,
        queued: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> Option<super::mirror::MirrorBody> {
        let mut s = self.state()?;
        if s.polled {
            return None;
        }
        let (tee, body) = super::mirror::Tee::pair(s.inner.size_hint(), queued);
        s.tee = Some(tee);
        Some(body)
    }

    /// True while no frame has been read: the body can still be sent elsewhere.
    pub fn untouched(&self) -> bool {
        self.state()
            .is_none_or(|s| !s.polled || s.inner.is_end_stream() && s.seen == 0)
    }

    pub fn too_large(&self) -> bool {
        self.state().is_some_and(|s| s.too_large)
    }

    /// The body size limit it was made with (`u64::MAX` for a body without one).
    pub fn limit(&self) -> u64 {
        self.state().map_or(u64::MAX, |s| s.limit)
    }

    /// The client's side of the body failed (reset, malformed chunk, gone away).
    pub fn client_failed(&self) -> bool {
        self.state().is_some_and(|s| s.client_failed)
    }

    pub fn progress(&self) -> Progress {
        match self.state() {
            None => Progress::Sent(None),
            Some(s) => match s.ended_at {
                Some(at) => Progress::Sent(Some(at)),
                None => Progress::Sending {
                    moved_at: s.moved_at,
                    waiting_on_client: s.waiting_on_client,
                },
            },
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(mut s) = self.state() else {
            return Poll::Ready(None);
        };
        s.polled = true;
        let polled = Pin::new(&mut s.inner).poll_frame(cx);
        s.waiting_on_client = polled.is_pending();
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.seen += data.len() as u64;
                    if s.seen > s.limit {
                        s.too_large = true;
                        s.tee = None;
                        let limit = s.limit;
                        return Poll::Ready(Some(Err(ProxyError::BodyTooLarge { limit }.into())));
                    }
                    if let Some(tee) = &mut s.tee {
                        tee.offer(data);
                    }
                }
                let now = Instant::now();
                s.moved_at = Some(now);
                // With a known length the sender stops at the last frame, never asking
                // for the end.
                if s.inner.is_end_stream() {
                    s.ended_at = Some(now);
                    if let Some(tee) = &mut s.tee {
                        tee.finish();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                s.client_failed = true;
                s.tee = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                s.ended_at.get_or_insert_with(Instant::now);
                if let Some(tee) = &mut s.tee {
                    tee.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state().is_none_or(|s| s.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.state()
            .map_or_else(|| SizeHint::with_exact(0), |s| s.inner.size_hint())
    }
}

enum Inner {
    Upstream(Incoming),
    /// The upstream's body under `limit-rate` (boxed: the common case stays small).
    Paced(Box<Paced>),
    /// A body made here: its one frame until taken (`None`: empty).
    Local(Option<Bytes>),
}

/// What the client receives: the upstream's body or a local one, with the request's
/// log record, written when this is dropped (after the last frame, or when the client
/// goes away), and the upstream connection, given back to its pool when the body was
/// read to the end (closed otherwise).
pub struct ResponseBody {
    inner: Inner,
    ended: bool,
    conn: Option<PooledConn>,
    log: Option<Box<RequestLog>>,
}

impl ResponseBody {
    pub fn upstream(
        body: Incoming,
        log: Box<RequestLog>,
        conn: Option<PooledConn>,
        rate: Option<ResponseRate>,
    ) -> Self {
        ResponseBody {
            inner: match rate {
                None => Inner::Upstream(body),
                Some(rate) => Inner::Paced(Box::new(Paced {
                    body,
                    rate,
                    sent: 0,
                    started: tokio::time::Instant::now(),
                    held: None,
                    wait: None,
                })),
            },
            ended: false,
            conn,
            log: Some(log),
        }
    }

    pub fn local(text: &'static str, log: Option<Box<RequestLog>>) -> Self {
        ResponseBody {
            inner: Inner::Local(
                Some(Bytes::from_static(text.as_bytes())).filter(|b| !b.is_empty()),
            ),
            ended: false,
            conn: None,
            log,
        }
    }

    pub fn empty(log: Option<Box<RequestLog>>) -> Self {
        ResponseBody {
            inner: Inner::Local(None),
            ended: false,
            conn: None,
            log,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Some(conn) = self.conn.take()
            && (self.ended || self.is_end_stream())
        {
            conn.release(now);
        }
        if let Some(log) = self.log.as_deref_mut() {
            log.finished = Some(now);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Inner::Paced(paced) => paced.poll_frame(cx),
            Inner::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if matches!(polled, Poll::Ready(None)) {
            this.ended = true;
        }
        if let Some(log) = this.log.as_deref_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        log.bytes_sent += d.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(e))) => log.body_error = Some(e.to_string()),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Paced(paced) => paced.held.is_none() && paced.body.is_end_stream(),
            Inner::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Paced(paced) => {
                let held = paced.held.as_ref().and_then(Frame::data_ref);
                let held = held.map_or(0, |d| d.len() as u64);
                let inner = paced.body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + held);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
            Inner::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// `limit-rate` / `limit-rate-after`: a response's bytes beyond the first `after` leave
/// at most `per_sec` bytes a second, counted from the response's start (nginx's
/// `limit_rate` and `limit_rate_after`, which are per request too; without nginx's
/// one-second allowance at the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseRate {
    pub per_sec: u64,
    pub after: u64,
}

/// An upstream body paced by a [`ResponseRate`]: a frame is held until the time its
/// last byte is allowed out.
struct Paced {
    body: Incoming,
    rate: ResponseRate,
    /// Data bytes taken from the upstream so far (held frame included).
    sent: u64,
    started: tokio::time::Instant,
    /// A frame waiting for `wait`.
    held: Option<Frame<Bytes>>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Paced {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.held.is_some() {
            if let Some(wait) = &mut self.wait {
                std::task::ready!(wait.as_mut().poll(cx));
            }
            return Poll::Ready(self.held.take().map(Ok));
        }
        let frame = match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(BoxError::from(e)))),
            None => return Poll::Ready(None),
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        self.sent += data.len() as u64;
        let limited = self.sent.saturating_sub(self.rate.after);
        let nanos = u128::from(limited) * 1_000_000_000 / u128::from(self.rate.per_sec.max(1));
        // At most a year ahead: an Instant must not overflow, whatever the numbers.
        let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let due = self.started + wait.min(Duration::from_hours(365 * 24));
        if due <= tokio::time::Instant::now() {
            return Poll::Ready(Some(Ok(frame)));
        }
        // One timer for the whole response, reset for each frame held.
        let wait = (self.wait).get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        wait.as_mut().reset(due);
        if wait.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Ok(frame)));
        }
        self.held = Some(frame);
        Poll::Pending
    }
}
