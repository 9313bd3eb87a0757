//! TLS termination with rustls: TLS 1.2 and 1.3 only, ring as the crypto provider,
//! ALPN h2 and http/1.1, and a certificate chosen per handshake by SNI from the
//! `kubernetes.io/tls` Secrets that the served Ingresses name in `spec.tls`.
//!
//! SNI picks the certificate, the Host header picks the route: the two are independent,
//! as in every Ingress controller. The [`CertResolver`] holds its table in an `ArcSwap`,
//! so a changed Secret is served from the next handshake on, without a restart and
//! without touching established connections.
//!
//! Hosts whose Ingress checks client certificates (`auth-tls-secret`) get a handshake
//! that asks for one: [`Handshakes`] picks the configuration from the ClientHello's SNI
//! before the handshake goes on ([`client_auth`]). Hosts whose Ingress asks for
//! `ssl-passthrough` are not terminated at all ([`passthrough`]).
pub mod certs;
pub mod client_auth;
pub mod passthrough;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use certs::{CertTable, FAKE_CERTIFICATE_NAME, certified_key, fake_certificate};
use client_auth::ClientCa;

/// Chooses the certificate for a handshake from the current [`CertTable`], else the
/// last resort (the [`fake_certificate`] the server makes at start-up).
#[derive(Debug, Default)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
    last_resort: Option<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(last_resort: Option<Arc<CertifiedKey>>) -> Self {
        CertResolver {
            table: ArcSwap::default(),
            last_resort,
        }
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
        (self.table.load().lookup(hello.server_name())).or_else(|| self.last_resort.clone())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 with ring, client certificates
/// asked for with `client` (else not), ALPN h2 then http/1.1.
pub fn server_config(
    resolver: Arc<CertResolver>,
    client: Option<Arc<dyn ClientCertVerifier>>,
) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The configuration for each handshake: the usual one, or for a name whose Ingress
/// checks client certificates, one that asks for them (made once per CA and kept).
#[derive(Debug)]
pub struct Handshakes {
    resolver: Arc<CertResolver>,
    usual: Arc<ServerConfig>,
    by_ca: Mutex<HashMap<u64, Arc<ServerConfig>>>,
}

/// CAs whose configurations are kept; past it the cache starts over (CAs replaced
/// many times over).
const KEPT_CAS: usize = 64;

impl Handshakes {
    pub fn new(resolver: Arc<CertResolver>) -> anyhow::Result<Handshakes> {
        Ok(Handshakes {
            usual: Arc::new(server_config(Arc::clone(&resolver), None)?),
            resolver,
            by_ca: Mutex::new(HashMap::new()),
        })
    }

    /// The current table (certificates, client CAs, passthrough hosts).
    pub fn table(&self) -> Arc<CertTable> {
        self.resolver.table()
    }

    /// The configuration for a ClientHello with `sni`, and the CA it asks for.
    pub fn choose(&self, sni: Option<&str>) -> (Arc<ServerConfig>, Option<Arc<ClientCa>>) {
        let Some(ca) = self.resolver.table.load().client_ca(sni) else {
            return (Arc::clone(&self.usual), None);
        };
        let mut kept = self
            .by_ca
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(config) = kept.get(&ca.id()) {
            return (Arc::clone(config), Some(ca));
        }
        match server_config(Arc::clone(&self.resolver), Some(ca.deferred())) {
            Ok(config) => {
                if kept.len() >= KEPT_CAS {
                    kept.clear();
                }
                let config = Arc::new(config);
                kept.insert(ca.id(), Arc::clone(&config));
                (config, Some(ca))
            }
            // Cannot happen with the versions above; no certificate is asked for, so
            // the routes that need one refuse the requests.
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a TLS configuration that asks for client certificates");
                (Arc::clone(&self.usual), None)
            }
        }
    }
}
