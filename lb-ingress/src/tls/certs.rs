//! Certificates from `kubernetes.io/tls` Secrets, and the table SNI is looked up in.
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::client_auth::ClientCa;
use super::passthrough::Passthrough;
use crate::routes::{HostRule, Rank, wildcard_suffix};

/// Parses `tls.crt` (PEM chain) and `tls.key` (PEM key) of a Secret. `stringData` is
/// read too, as a manifests directory may carry it (the API server would have merged
/// it into `data`).
pub fn certified_key(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    let field = |key: &str| secret_field(secret, key);
    if let Some(t) = secret.type_.as_deref()
        && t != "kubernetes.io/tls"
    {
        return Err(format!("type is {t}, not kubernetes.io/tls"));
    }
    let crt = field("tls.crt").ok_or("tls.crt is missing")?;
    let key = field("tls.key").ok_or("tls.key is missing")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("tls.key: {e}"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not belong to tls.crt: {e}"))?;
    Ok(Arc::new(certified))
}

/// The subject of the certificate served when nothing else covers a name: ingress-nginx's
/// ("Kubernetes Ingress Controller Fake Certificate"), which users and their probes
/// already recognise as "this host has no certificate configured".
pub const FAKE_CERTIFICATE_NAME: &str = "Kubernetes Ingress Controller Fake Certificate";

/// A self-signed certificate made at start-up (ECDSA P-256, subject
/// [`FAKE_CERTIFICATE_NAME`], name `ingress.local`), served last: a client that asks for
/// a name no Secret and no `--default-ssl-certificate` covers still gets a handshake and
/// the route its Host picks (`curl -k` works, as with ingress-nginx), while any client
/// that verifies sees a certificate it cannot trust rather than a bare handshake
/// failure.
pub fn fake_certificate() -> anyhow::Result<Arc<CertifiedKey>> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    (params.distinguished_name).push(rcgen::DnType::CommonName, FAKE_CERTIFICATE_NAME);
    (params.distinguished_name).push(rcgen::DnType::OrganizationName, "Acme Co");
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

/// The bytes of `key` in a Secret (`stringData` as manifests carry it, else `data`).
pub fn secret_field(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.clone())
        })
}

/// Values by host name as Ingress rules name them: exact names, one-label wildcards, and
/// one for rules without a host; the oldest Ingress's value when several name a host,
/// as for routes.
#[derive(Debug)]
struct ByHost<T> {
    exact: HashMap<String, (Rank, Arc<T>)>,
    wildcard: HashMap<String, (Rank, Arc<T>)>,
    default: Option<(Rank, Arc<T>)>,
}

impl<T> Default for ByHost<T> {
    fn default() -> Self {
        ByHost {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        }
    }
}

impl<T> ByHost<T> {
    /// Puts `value` for `host` unless an older Ingress's is there; the one that stays.
    fn add(&mut self, rank: &Rank, host: &HostRule, value: Arc<T>) -> &(Rank, Arc<T>) {
        let fresh = || (rank.clone(), Arc::clone(&value));
        let slot = match host {
            HostRule::Any => self.default.get_or_insert_with(fresh),
            HostRule::Exact(h) => self.exact.entry(h.clone()).or_insert_with(fresh),
            HostRule::Wildcard(s) => self.wildcard.entry(s.clone()).or_insert_with(fresh),
        };
        if *rank < slot.0 {
            *slot = (rank.clone(), value);
        }
        slot
    }

    /// The value for a (lowercase) name: exact, then wildcard.
    fn named(&self, name: &str) -> Option<&Arc<T>> {
        (self.exact.get(name))
            .or_else(|| wildcard_suffix(name).and_then(|s| self.wildcard.get(s)))
            .map(|(_, v)| v)
    }

    fn default(&self) -> Option<&Arc<T>> {
        self.default.as_ref().map(|(_, v)| v)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.default.is_some())
    }
}

/// What the TLS listener looks up by SNI name: certificates (exact names, then
/// one-label wildcards, then a default, an Ingress `spec.tls` entry without hosts, for
/// clients that send no or an unknown name), the client CAs of the hosts that check
/// client certificates (`auth-tls-secret`), and the `ssl-passthrough` hosts.
#[derive(Debug, Default)]
pub struct CertTable {
    certs: ByHost<CertifiedKey>,
    cas: ByHost<ClientCa>,
    passthrough: ByHost<Passthrough>,
    /// `--default-ssl-certificate`: for names nothing else has a certificate for.
    fallback: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    /// Adds a certificate for `host` (None: the default); the oldest Ingress wins a
    /// host named by several, as for routes.
    pub fn add(&mut self, rank: &Rank, host: Option<&str>, key: Arc<CertifiedKey>) {
        self.certs.add(rank, &HostRule::parse(host), key);
    }

    /// Asks for client certificates checked against `ca` in the handshakes for `host`
    /// (the oldest Ingress's CA when several name one). An Ingress that got another
    /// CA's: the rank of the one that won.
    pub fn add_client_ca(
        &mut self,
        rank: &Rank,
        host: &HostRule,
        ca: &Arc<ClientCa>,
    ) -> Option<Rank> {
        let (winner, held) = self.cas.add(rank, host, Arc::clone(ca));
        (held.id() != ca.id()).then(|| winner.clone())
    }

    /// The CA to ask client certificates for in a handshake for `sni`: its name's, else
    /// (no name, or a name with no certificate of its own) the one of the Ingresses
    /// without a host.
    pub fn client_ca(&self, sni: Option<&str>) -> Option<Arc<ClientCa>> {
        if self.cas.is_empty() {
            return None;
        }
        let name = sni.map(str::to_ascii_lowercase);
        let ca = match &name {
            Some(name) => (self.cas.named(name)).or_else(|| {
                (self.certs.named(name).is_none())
                    .then(|| self.cas.default())
                    .flatten()
            }),
            None => self.cas.default(),
        };
        ca.map(Arc::clone)
    }

    /// The certificate served last, when neither the name nor a `spec.tls` entry
    /// without hosts has one.
    pub fn set_fallback(&mut self, key: Arc<CertifiedKey>) {
        self.fallback = Some(key);
    }

    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni.map(str::to_ascii_lowercase);
        (name.and_then(|name| self.certs.named(&name)))
            .or_else(|| self.certs.default())
            .or(self.fallback.as_ref())
            .map(Arc::clone)
    }

    /// Relays the TLS connections for `host` to `target` unopened (`ssl-passthrough`;
    /// the oldest Ingress's backend when several ask for one host). False for a rule
    /// without a host: passthrough is chosen by the server name.
    pub fn add_passthrough(
        &mut self,
        rank: &Rank,
        host: &HostRule,
        target: Arc<Passthrough>,
    ) -> bool {
        if *host == HostRule::Any {
            return false;
        }
        self.passthrough.add(rank, host, target);
        true
    }

    pub fn has_passthrough(&self) -> bool {
        !self.passthrough.is_empty()
    }

    /// The passthrough backend for a ClientHello's server name.
    pub fn passthrough(&self, sni: &str) -> Option<Arc<Passthrough>> {
        self.passthrough
            .named(&sni.to_ascii_lowercase())
            .map(Arc::clone)
    }

    /// Whether `host` has a certificate of its own (for `--redirect-https`).
    pub fn has_host(&self, host: &str) -> bool {
        self.certs.named(host).is_some()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}
