//! Upgrade passthrough (WebSocket and any other HTTP/1.1 `Upgrade`): once the upstream
//! answers 101, both connections are handed over by hyper and bytes are copied both
//! ways until either side closes, or until neither has sent anything for the route's
//! `proxy-read-timeout` (default `--upstream-timeout-ms`), as nginx closes an upgraded
//! connection idle for its `proxy_read_timeout`. The tunnel outlives the request.
//!
//! [`join`] is also the ssl-passthrough relay's copy loop.
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

pub fn tunnel(client: OnUpgrade, upstream: OnUpgrade, idle: Duration) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match join(&mut client, &mut upstream, idle).await {
            Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
            Err(e) => debug!(error = %e, "upgraded connection ended"),
        }
    });
}

/// Copies both ways between `a` and `b` (tokio's `copy_bidirectional`) until both have
/// closed, one fails, or no byte has been read from either for `idle` (then an error of
/// kind `TimedOut`). Returns the bytes copied from `a` to `b` and from `b` to `a`.
pub async fn join<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut a = Watched {
        inner: a,
        activity: &activity,
    };
    let mut b = Watched {
        inner: b,
        activity: &activity,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            moved = &mut copy => return moved,
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing sent either way for {} ms", idle.as_millis()),
                    ));
                }
            }
        }
    }
}

/// When bytes were last read from either side (milliseconds since `start`, so that
/// both sides can note it through a shared reference in one `Send` future).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn note(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a [`join`], noting every read that brings bytes.
struct Watched<'a, T: ?Sized> {
    inner: &'a mut T,
    activity: &'a Activity,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.note();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn a_joined_pair_ends_when_idle_and_not_while_busy() {
        let idle = Duration::from_secs(10);
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let joined = tokio::spawn(async move { join(&mut a, &mut b, idle).await });
        // Traffic every 6 s (either way) keeps the pair open past 10 s.
        for round in 0..4u8 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let (from, to) = if round % 2 == 0 {
                (&mut a_peer, &mut b_peer)
            } else {
                (&mut b_peer, &mut a_peer)
            };
            from.write_all(&[round]).await.unwrap();
            let mut got = [0u8];
            to.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round]);
            assert!(!joined.is_finished(), "closed while busy (round {round})");
        }
        // Then 10 s of nothing ends it.
        let ended = tokio::time::timeout(Duration::from_secs(11), joined).await;
        let e = ended
            .expect("ended by the idle timeout")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_joined_pair_ends_when_both_sides_close() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let joined =
            tokio::spawn(async move { join(&mut a, &mut b, Duration::from_mins(1)).await });
        a_peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_peer.read_exact(&mut got).await.unwrap();
        b_peer.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        a_peer.read_exact(&mut got).await.unwrap();
        drop((a_peer, b_peer));
        assert_eq!(joined.await.unwrap().unwrap(), (4, 5));
    }
}
