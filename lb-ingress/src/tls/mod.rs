//! TLS termination with rustls: TLS 1.2 and 1.3 only, ring as the crypto provider,
//! ALPN h2 and http/1.1, and a certificate chosen per handshake by SNI from the
//! `kubernetes.io/tls` Secrets that the served Ingresses name in `spec.tls`.
//!
//! SNI picks the certificate, the Host header picks the route: the two are independent,
//! as in every Ingress controller. The [`CertResolver`] holds its table in an `ArcSwap`,
//! so a changed Secret is served from the next handshake on, without a restart and
//! without touching established connections.
pub mod certs;
pub mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use certs::{CertTable, certified_key};

/// Chooses the certificate for a handshake from the current [`CertTable`].
#[derive(Debug, Default)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
}

impl CertResolver {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn swap(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    pub fn table(&self) -> Arc<CertTable> {
        self.table.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().lookup(hello.server_name())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 with ring, no client certificates,
/// ALPN h2 then http/1.1.
pub fn server_config(resolver: Arc<CertResolver>) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
