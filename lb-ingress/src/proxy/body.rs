//! Bodies, streamed both ways: never buffered whole.
//!
//! [`RequestBody`] enforces the body size limit frame by frame (a request without a
//! Content-Length cannot be refused up front) and knows whether any of it was read: a
//! body that no upstream has touched can be sent again, which is what makes a retry after
//! a connect failure safe. [`ResponseBody`] carries the request's [`RequestLog`] and its
//! place in the endpoint's outstanding count until the last byte has gone to the client.
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::error::{BoxError, ProxyError};
use super::log::RequestLog;

#[derive(Debug)]
struct RequestBodyState {
    inner: Incoming,
    polled: bool,
    seen: u64,
    limit: u64,
    too_large: bool,
    client_failed: bool,
}

/// The client's request body on its way upstream. Cloning gives another handle on the
/// same stream (used only to send an untouched body again).
#[derive(Debug, Clone)]
pub struct RequestBody(Arc<Mutex<RequestBodyState>>);

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody(Arc::new(Mutex::new(RequestBodyState {
            inner,
            polled: false,
            seen: 0,
            limit,
            too_large: false,
            client_failed: false,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RequestBodyState> {
        self.0.lock().expect("request body poisoned")
    }

    /// True while no frame has been read: the body can still be sent elsewhere.
    pub fn untouched(&self) -> bool {
        let s = self.state();
        !s.polled || s.inner.is_end_stream() && s.seen == 0
    }

    pub fn too_large(&self) -> bool {
        self.state().too_large
    }

    /// The client's side of the body failed (reset, malformed chunk, gone away).
    pub fn client_failed(&self) -> bool {
        self.state().client_failed
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = self.state();
        s.polled = true;
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.seen += data.len() as u64;
                    if s.seen > s.limit {
                        s.too_large = true;
                        let limit = s.limit;
                        return Poll::Ready(Some(Err(ProxyError::BodyTooLarge { limit }.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                s.client_failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state().inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.state().inner.size_hint()
    }
}

/// What the client receives: the upstream's body or a local one, with the request's
/// log record, written when this is dropped (after the last frame, or when the client
/// goes away).
pub struct ResponseBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    log: Option<Box<RequestLog>>,
}

impl ResponseBody {
    pub fn upstream(body: Incoming, log: Box<RequestLog>) -> Self {
        ResponseBody {
            inner: body.map_err(BoxError::from).boxed_unsync(),
            log: Some(log),
        }
    }

    pub fn local(text: &'static str, log: Option<Box<RequestLog>>) -> Self {
        ResponseBody {
            inner: http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync(),
            log,
        }
    }

    pub fn empty(log: Option<Box<RequestLog>>) -> Self {
        ResponseBody {
            inner: http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            log,
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
