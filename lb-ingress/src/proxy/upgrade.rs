//! Upgrade passthrough (WebSocket and any other HTTP/1.1 `Upgrade`): once the upstream
//! answers 101, both connections are handed over by hyper and bytes are copied both
//! ways until either side closes. The tunnel outlives the request: it is not subject
//! to the idle timeout (WebSockets are long-lived by design).
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

pub fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
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
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
            Err(e) => debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
}
