//! `ssl-passthrough`: TLS for a host relayed to its backend unopened (ingress-nginx's
//! annotation of the same name).
//!
//! When some served Ingress asks for it, the HTTPS listener reads each ClientHello
//! without taking it off the socket (`peek`), and a connection whose server name is a
//! passthrough host is joined byte for byte to an endpoint of that host's `/` backend:
//! the backend does the handshake, with its own certificate, and sees the client's
//! requests as sent (no forwarding headers, no routing by path, none of the Ingress's
//! other annotations: they are HTTP, and the proxy never sees the HTTP). Other names
//! are terminated as usual. Without passthrough hosts nothing is peeked.
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::proxy::balance::{Balance, EndpointRegistry, Pool};

/// A passthrough host's backend.
#[derive(Debug)]
pub struct Passthrough {
    /// `namespace/name:port`, for logs.
    pub service: String,
    pub pool: Arc<Pool>,
}

/// The largest ClientHello looked for (TLS records are at most 16 KiB, and a hello
/// with post-quantum key shares is under 2 KiB).
const MAX_HELLO: usize = 16 * 1024 + 5;

/// The server name of the ClientHello at the start of `stream`, read without taking it
/// off the socket; None when the client sent none, or something that is not TLS (the
/// handshake that follows answers that).
pub async fn peek_server_name(stream: &TcpStream) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut seen = 0;
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if n > seen {
            seen = n;
            let mut acceptor = rustls::server::Acceptor::default();
            let mut bytes = &buf[..n];
            while !bytes.is_empty() {
                if acceptor.read_tls(&mut bytes)? == 0 {
                    break;
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return Ok(accepted.client_hello().server_name().map(str::to_owned));
                }
                Ok(None) if n < buf.len() => {}
                Ok(None) | Err(_) => return Ok(None),
            }
        }
        // The rest of the hello is still on its way: peek again shortly (a peek returns
        // at once while unread bytes wait).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Endpoints tried before the client's connection is closed.
const ATTEMPTS: usize = 3;

/// Joins `client` to an endpoint of `target` until either side closes. An endpoint that
/// cannot be reached is ejected and another tried.
pub async fn relay(
    mut client: TcpStream,
    target: &Passthrough,
    registry: &EndpointRegistry,
    connect_timeout: Duration,
    idle: Duration,
) -> io::Result<(u64, u64)> {
    let mut tried = Vec::new();
    for _ in 0..ATTEMPTS {
        let Some(slot) = target.pool.pick(registry, &tried, Balance::LeastRequest) else {
            break;
        };
        let addr = slot.endpoint().addr;
        tried.push(addr);
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                let moved = crate::proxy::upgrade::join(&mut client, &mut upstream, idle).await;
                drop(slot);
                return moved;
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, service = %target.service, "ssl-passthrough: cannot connect");
                registry.eject(slot.endpoint());
            }
            Err(_) => {
                tracing::debug!(%addr, service = %target.service, "ssl-passthrough: connect timed out");
                registry.eject(slot.endpoint());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotConnected,
        format!("no endpoint of {} could be reached", target.service),
    ))
}
