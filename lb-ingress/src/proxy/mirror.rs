//! Request mirroring (ingress-nginx's `mirror-target`, which is nginx's `mirror`): a copy
//! of each request of a route goes to another URL too, in the background, and its answer
//! is ignored. The copy is made after the access checks (nginx mirrors in its precontent
//! phase), with the head that goes upstream (forwarding headers included), the client's
//! own path and query in `$request_uri`, and `Host` set to `mirror-host` or the target's
//! host.
//!
//! nginx reads the whole request body before it starts the copy, and holds the client
//! connection's next request until the copy is answered. Here the body is streamed: the
//! frames the upstream takes are handed to the copy through a queue ([`Tee`]) bounded in
//! bytes, per copy ([`COPY_QUEUE_BYTES`]) and over all copies ([`QUEUE_BYTES`]). A copy
//! whose target falls that far behind the upstream is cut off (counted `lagged`) rather
//! than holding the request back or keeping the body in memory. The client's request
//! never waits for its copy.
//!
//! Copies in flight are bounded ([`MAX_IN_FLIGHT`]); past that a request is not copied
//! (`skipped`). A copy has the route's response timeout (`proxy-read-timeout`) to answer,
//! counted from when its body is complete.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Request, Uri};
use tokio::sync::{Semaphore, mpsc};
use tracing::debug;

use super::auth::{self, UrlClient};
use crate::metrics::{Metrics, ResultLabel};
use crate::source::annotations::Mirror;

/// Copies in flight at most, over all routes.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Body bytes waiting for one copy's target at most: room for the copy's connection to
/// be made while the upstream, whose connection is pooled, already takes the body.
pub const COPY_QUEUE_BYTES: usize = 8 << 20;
/// Body bytes waiting for all copies' targets at most.
pub const QUEUE_BYTES: usize = 64 << 20;

/// The client, the bound on copies in flight and the bytes queued for them.
#[derive(Debug)]
pub struct Mirrors {
    client: UrlClient<MirrorBody>,
    slots: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
}

impl Default for Mirrors {
    fn default() -> Self {
        Mirrors {
            client: auth::client(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            queued: Arc::default(),
        }
    }
}

/// Where a request's copy goes, and with what.
#[derive(Debug)]
pub struct Destination {
    uri: Uri,
    host: Option<HeaderValue>,
    /// The copy carries the request body (`mirror-request-body: on`).
    pub body: bool,
}

impl Destination {
    /// The copy, by `mirror`, of a request to `host` (as sent) for `request_uri` over
    /// `scheme`: the target with nginx's variables expanded, and the request's own path
    /// and query when the target gives no path (nginx would send its internal mirror
    /// location's path there, which no one wants).
    pub fn new(
        mirror: &Mirror,
        scheme: &str,
        host: &str,
        request_uri: &str,
    ) -> Result<Destination, String> {
        let mut expanded = auth::expand(&mirror.target, scheme, host, request_uri);
        let authority = expanded.split_once("://").map_or("", |(_, rest)| rest);
        if !authority.contains(['/', '?']) {
            expanded.push_str(request_uri);
        }
        let uri: Uri = expanded
            .parse()
            .map_err(|e| format!("mirror target {expanded:?}: {e}"))?;
        Ok(Destination {
            uri,
            host: mirror.host.clone(),
            body: mirror.body,
        })
    }
}

/// How a copy went, as counted in `lb_ingress_mirror_requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered (whatever the status).
    Success,
    /// It failed, or did not answer in time.
    Error,
    /// Not sent: too many copies in flight.
    Skipped,
    /// Cut off: the target took the body slower than the upstream.
    Lagged,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
            Outcome::Lagged => "lagged",
        }
    }
}

impl Mirrors {
    /// The bytes queued for all copies, which each [`Tee`] counts its queue in.
    pub fn queued(&self) -> &Arc<AtomicUsize> {
        &self.queued
    }

    /// Sends `copy` of the request with `method` and `headers` (as they go upstream) in
    /// the background, with `body` (the request's, by [`Tee`]; None: no body), counting
    /// its outcome in `metrics`.
    pub fn send(
        &self,
        copy: Destination,
        method: &Method,
        headers: &HeaderMap,
        body: Option<MirrorBody>,
        timeout: Duration,
        metrics: &Arc<Metrics>,
    ) {
        let count = {
            let metrics = Arc::clone(metrics);
            move |outcome: Outcome| {
                (metrics.mirror_requests)
                    .get_or_create(&ResultLabel {
                        result: outcome.label(),
                    })
                    .inc();
            }
        };
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            count(Outcome::Skipped);
            return;
        };
        let mut h = headers.clone();
        h.remove(header::HOST);
        if let Some(host) = copy.host {
            h.insert(header::HOST, host);
        }
        if body.is_none() {
            h.remove(header::CONTENT_LENGTH);
        }
        let state = body.as_ref().map(|b| Arc::clone(&b.state));
        let mut req = Request::new(body.unwrap_or_default());
        *req.method_mut() = method.clone();
        *req.headers_mut() = h;
        *req.uri_mut() = copy.uri;
        let client = self.client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let uri = req.uri().clone();
            let outcome = match exchange(&client, req, state.as_deref(), timeout).await {
                Ok(()) => Outcome::Success,
                Err(_)
                    if state
                        .as_ref()
                        .is_some_and(|s| s.lagged.load(Ordering::Acquire)) =>
                {
                    debug!(%uri, "mirror: the target took the body too slowly; cut off");
                    Outcome::Lagged
                }
                Err(e) => {
                    debug!(%uri, error = %e, "mirror request failed");
                    Outcome::Error
                }
            };
            count(outcome);
        });
    }
}

/// Sends the copy and reads its answer to the end (so that the connection can be used
/// again), the response head due `timeout` after the body is complete.
async fn exchange(
    client: &UrlClient<MirrorBody>,
    req: Request<MirrorBody>,
    body: Option<&TeeState>,
    timeout: Duration,
) -> Result<(), String> {
    let cut = async {
        match body {
            Some(state) => state.cut.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        done = send(client, req, body, timeout) => done,
        () = cut => Err("the request body was not copied whole".to_owned()),
    }
}

/// [`exchange`] but for the copy being cut off.
async fn send(
    client: &UrlClient<MirrorBody>,
    req: Request<MirrorBody>,
    body: Option<&TeeState>,
    timeout: Duration,
) -> Result<(), String> {
    let sending = || body.is_some_and(|s| !s.ended.load(Ordering::Acquire));
    let answer = client.request(req);
    tokio::pin!(answer);
    let resp = loop {
        match tokio::time::timeout(timeout, &mut answer).await {
            Ok(Ok(resp)) => break resp,
            Ok(Err(e)) => return Err(e.to_string()),
            // Still streaming the body: the client's pace is the main request's
            // timeouts' business, and a body cut short ends the copy anyway.
            Err(_) if sending() => {}
            Err(_) => return Err("no answer in time".to_owned()),
        }
    };
    let mut body = resp.into_body();
    tokio::time::timeout(timeout, async {
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|_| "the answer's body did not end in time".to_owned())?
}

/// What the copy's body knows of the request body.
#[derive(Debug, Default)]
struct TeeState {
    /// The request body was read to its end and all of it queued.
    complete: AtomicBool,
    /// The request body ended, whole or not: nothing more will come.
    ended: AtomicBool,
    /// The queue was full: the copy is cut off.
    lagged: AtomicBool,
    /// Bytes in this copy's queue.
    queued: AtomicUsize,
    /// Signalled when the copy is cut off.
    cut: tokio::sync::Notify,
}

/// A frame in a copy's queue, counted in its queue and in all copies' until taken out or
/// dropped with the queue.
#[derive(Debug)]
struct Queued {
    data: Bytes,
    /// Its length as counted (`data` is emptied when taken).
    len: usize,
    copy: Arc<TeeState>,
    all: Arc<AtomicUsize>,
}

impl Queued {
    fn take(mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.copy.queued.fetch_sub(self.len, Ordering::AcqRel);
        self.all.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// The request body's side: each frame the upstream takes, handed to the copy.
#[derive(Debug)]
pub struct Tee {
    tx: Option<mpsc::UnboundedSender<Queued>>,
    state: Arc<TeeState>,
    /// The bytes queued for all copies.
    all: Arc<AtomicUsize>,
}

impl Tee {
    /// A tee and the copy's body, which has the request body's size; its queue counts in
    /// `all`.
    pub fn pair(size: SizeHint, all: &Arc<AtomicUsize>) -> (Tee, MirrorBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(TeeState::default());
        let tee = Tee {
            tx: Some(tx),
            state: Arc::clone(&state),
            all: Arc::clone(all),
        };
        (
            tee,
            MirrorBody {
                rx: Some(rx),
                state,
                size,
            },
        )
    }

    /// Hands `data` to the copy; a full queue (this copy's or all copies') or a copy gone
    /// ends the copy's body.
    pub fn offer(&mut self, data: &Bytes) {
        let Some(tx) = &self.tx else {
            return;
        };
        let len = data.len();
        let copy = self.state.queued.fetch_add(len, Ordering::AcqRel) + len;
        let all = self.all.fetch_add(len, Ordering::AcqRel) + len;
        // Counted from here on: dropping it (sent or not) uncounts it.
        let queued = Queued {
            data: data.clone(),
            len,
            copy: Arc::clone(&self.state),
            all: Arc::clone(&self.all),
        };
        if copy > COPY_QUEUE_BYTES || all > QUEUE_BYTES {
            self.state.lagged.store(true, Ordering::Release);
            self.cut();
        } else if tx.send(queued).is_err() {
            self.cut();
        }
    }

    /// The request body's end: the copy's ends with it, whole.
    pub fn finish(&mut self) {
        if self.tx.take().is_some() {
            self.state.complete.store(true, Ordering::Release);
        }
        self.state.ended.store(true, Ordering::Release);
    }

    /// The request body failed (or the copy fell behind): the copy's body fails.
    fn cut(&mut self) {
        self.tx = None;
        self.state.ended.store(true, Ordering::Release);
        // The copy may be stuck writing to a target that takes nothing: it is dropped,
        // not left to notice its body's failure.
        self.state.cut.notify_one();
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Neither finished nor cut: the request body went away unfinished.
        if self.tx.is_some() {
            self.cut();
        }
        self.state.ended.store(true, Ordering::Release);
    }
}

/// The copy's body: the request body's frames as the upstream takes them, failing if the
/// request body did not arrive whole.
#[derive(Debug, Default)]
pub struct MirrorBody {
    rx: Option<mpsc::UnboundedReceiver<Queued>>,
    state: Arc<TeeState>,
    size: SizeHint,
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(queued)) => Poll::Ready(Some(Ok(Frame::data(queued.take())))),
            Poll::Ready(None) => {
                self.rx = None;
                if self.state.complete.load(Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(std::io::Error::other(
                        "the request body was not copied whole",
                    ))))
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.rx {
            Some(_) => self.size,
            None => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(target: &str) -> Mirror {
        Mirror {
            target: target.into(),
            body: true,
            host: None,
        }
    }

    #[test]
    fn targets_expand_nginx_variables_and_default_to_the_request_uri() {
        let copy = |t: &str| {
            Destination::new(&mirror(t), "https", "shop.example:8443", "/a/b?x=1")
                .unwrap()
                .uri
                .to_string()
        };
        assert_eq!(
            copy("http://test.env$request_uri"),
            "http://test.env/a/b?x=1"
        );
        assert_eq!(copy("http://test.env"), "http://test.env/a/b?x=1");
        assert_eq!(copy("http://test.env/"), "http://test.env/");
        assert_eq!(
            copy("http://test.env/copy?from=$host&s=$scheme"),
            "http://test.env/copy?from=shop.example&s=https"
        );
        assert!(Destination::new(&mirror("http://$host x/"), "http", "h", "/").is_err());
    }

    #[tokio::test]
    async fn the_copy_gets_the_frames_and_fails_unless_the_body_ended_whole() {
        let all = Arc::new(AtomicUsize::new(0));
        let (mut tee, mut body) = Tee::pair(SizeHint::with_exact(6), &all);
        assert_eq!(body.size_hint().exact(), Some(6));
        tee.offer(&Bytes::from_static(b"abc"));
        tee.offer(&Bytes::from_static(b"def"));
        tee.finish();
        let got = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abcdef");
        assert!(body.is_end_stream());

        let (mut tee, body) = Tee::pair(SizeHint::default(), &all);
        tee.offer(&Bytes::from_static(b"abc"));
        drop(tee);
        assert!(body.collect().await.is_err());
        assert_eq!(
            all.load(Ordering::Acquire),
            0,
            "every byte taken is uncounted"
        );

        // A full queue cuts the copy off, and says so; what it held is uncounted when
        // the copy goes.
        let (mut tee, body) = Tee::pair(SizeHint::default(), &all);
        let mib = Bytes::from(vec![0u8; 1 << 20]);
        for _ in 0..=COPY_QUEUE_BYTES >> 20 {
            tee.offer(&mib);
        }
        assert!(tee.state.lagged.load(Ordering::Acquire));
        assert_eq!(all.load(Ordering::Acquire), COPY_QUEUE_BYTES);
        tee.finish();
        assert!(body.collect().await.is_err());
        assert_eq!(all.load(Ordering::Acquire), 0);

        // So does a full queue over all copies.
        all.store(QUEUE_BYTES, Ordering::Release);
        let (mut tee, body) = Tee::pair(SizeHint::default(), &all);
        tee.offer(&Bytes::from_static(b"x"));
        assert!(tee.state.lagged.load(Ordering::Acquire));
        drop((tee, body));
        assert_eq!(all.load(Ordering::Acquire), QUEUE_BYTES);
    }
}
