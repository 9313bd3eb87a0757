//! A minimal HTTP/1.1 server for the agent's small endpoints (/metrics, /healthz,
//! /readyz, healthCheckNodePorts). hyper does the protocol; this only routes.
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

/// A response: status, content type, body.
pub type Reply = (StatusCode, &'static str, String);

/// Binds `addr` and serves `handler(path)` until the task is dropped. Returns the bound
/// address (port 0 picks a free port).
pub async fn serve<F>(
    addr: SocketAddr,
    handler: F,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (status, ctype, body) = handler(req.uri().path());
                    async move {
                        Response::builder()
                            .status(status)
                            .header("content-type", ctype)
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "http connection ended with an error");
                }
            });
        }
    });
    Ok((bound, task))
}
