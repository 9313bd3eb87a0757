//! TLS to upstreams (`appProtocol: https`, or the `backend-protocol` annotation's `HTTPS`
//! and `GRPCS`), as ingress-nginx speaks it by default: the endpoint's certificate is
//! not verified (`proxy_ssl_verify off`: pods present certificates for names and CAs the
//! ingress knows nothing of) and no SNI is sent (`proxy_ssl_server_name off`; the
//! connection is made to a pod address). The handshake's signatures are still checked,
//! so the peer holds the key of the certificate it shows. What this buys is encryption
//! on the wire to the pod, not the pod's identity.
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

/// Accepts any certificate, checks the handshake signatures against it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS to one Service's endpoints under an Ingress's `proxy-ssl-*` settings: verified
/// against a CA (`proxy-ssl-verify: on`: the endpoint must show a certificate for
/// `name` signed by it) or not, with a client certificate (`proxy-ssl-secret`'s
/// `tls.crt` and `tls.key`) or not, `name` sent as SNI or not.
#[derive(Clone)]
pub struct UpstreamTls {
    pub h1: TlsConnector,
    pub h2: TlsConnector,
    /// The name the certificate must carry (sent as SNI when asked).
    pub name: ServerName<'static>,
    /// Identifies the CA, client certificate, name and SNI choice, so that connections
    /// made under other settings are never pooled with these.
    pub id: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The CA certificates of a Secret's `ca.crt`.
#[derive(Clone, Debug)]
pub struct UpstreamCa {
    roots: Arc<rustls::RootCertStore>,
    pem: Arc<[u8]>,
}

impl UpstreamCa {
    pub fn from_pem(ca: &[u8]) -> Result<UpstreamCa, String> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| format!("ca.crt: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca.crt: {e}"))?;
        }
        if roots.is_empty() {
            return Err("ca.crt holds no certificate".into());
        }
        Ok(UpstreamCa {
            roots: Arc::new(roots),
            pem: ca.into(),
        })
    }
}

/// The certificate chain and key the proxy shows upstreams that ask for a client
/// certificate (nginx's `proxy_ssl_certificate` / `proxy_ssl_certificate_key`).
#[derive(Debug)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// `tls.crt`, to tell identities apart (the key goes with it).
    pem: Vec<u8>,
}

impl ClientIdentity {
    /// From a Secret's `tls.crt` (the chain, leaf first) and `tls.key`; refused when
    /// either does not parse or the key is not the certificate's.
    pub fn from_pem(crt: &[u8], key: &[u8]) -> Result<ClientIdentity, String> {
        use rustls::pki_types::pem::PemObject as _;
        let chain = CertificateDer::pem_slice_iter(crt)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.crt: {e}"))?;
        if chain.is_empty() {
            return Err("tls.crt holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("tls.key: {e}"))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = (provider.key_provider.load_private_key(key.clone_key()))
            .map_err(|e| format!("tls.key: {e}"))?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing)
            .keys_match()
            .map_err(|e| format!("tls.key is not the key of tls.crt: {e}"))?;
        Ok(ClientIdentity {
            chain,
            key,
            pem: crt.to_vec(),
        })
    }
}

impl UpstreamTls {
    /// Verified against `ca` for `name` when there is one (else any certificate, its
    /// handshake signatures checked), showing `identity` when asked for a client
    /// certificate, `name` sent as SNI when `sni`.
    pub fn new(
        ca: Option<&UpstreamCa>,
        identity: Option<&ClientIdentity>,
        name: &str,
        sni: bool,
    ) -> Result<UpstreamTls, String> {
        use std::hash::{Hash as _, Hasher as _};
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| format!("{name:?} is not a server name"))?;
        let make = |alpn: &[u8]| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("ring supports TLS 1.2 and 1.3");
            let builder = match ca {
                Some(ca) => builder.with_root_certificates(Arc::clone(&ca.roots)),
                None => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
            };
            let mut config = match identity {
                Some(id) => builder
                    .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                    .map_err(|e| format!("tls.crt and tls.key: {e}"))?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![alpn.to_vec()];
            config.enable_sni = sni;
            Ok::<_, String>(TlsConnector::from(Arc::new(config)))
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ca.map(|ca| &*ca.pem), identity.map(|i| &i.pem), name, sni).hash(&mut h);
        Ok(UpstreamTls {
            h1: make(b"http/1.1")?,
            h2: make(b"h2")?,
            name: server_name,
            id: h.finish(),
        })
    }
}

/// A client configuration offering `alpn` (`http/1.1` or `h2`), TLS 1.2 and 1.3, that
/// accepts any certificate (see the module's documentation).
pub fn unverified(alpn: &[u8]) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// A connector for endpoints: [`unverified`], without SNI.
pub fn connector(alpn: &[u8]) -> TlsConnector {
    let mut config = unverified(alpn);
    // The server name is the pod's address, which rustls never sends as SNI.
    config.enable_sni = false;
    TlsConnector::from(Arc::new(config))
}
