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

/// Certificates by SNI name: exact names, then one-label wildcards, then a default (an
/// Ingress `spec.tls` entry without hosts) for clients that send no or an unknown name.
/// The client CAs (`auth-tls-secret`) of the hosts that check client certificates are
/// looked up the same way.
#[derive(Debug, Default)]
pub struct CertTable {
    exact: HashMap<String, (Rank, Arc<CertifiedKey>)>,
    wildcard: HashMap<String, (Rank, Arc<CertifiedKey>)>,
    default: Option<(Rank, Arc<CertifiedKey>)>,
    ca_exact: HashMap<String, (Rank, Arc<ClientCa>)>,
    ca_wildcard: HashMap<String, (Rank, Arc<ClientCa>)>,
    ca_default: Option<(Rank, Arc<ClientCa>)>,
    /// `ssl-passthrough` hosts.
    pt_exact: HashMap<String, (Rank, Arc<Passthrough>)>,
    pt_wildcard: HashMap<String, (Rank, Arc<Passthrough>)>,
}

/// Puts `value` in `slot` unless an older Ingress's is there; the one that stays.
fn put_oldest<T>(slot: &mut Option<(Rank, Arc<T>)>, rank: &Rank, value: Arc<T>) {
    if slot.as_ref().is_none_or(|(held, _)| rank < held) {
        *slot = Some((rank.clone(), value));
    }
}

/// [`put_oldest`] for the entry `key` of `map`.
fn put_oldest_in<T>(
    map: &mut HashMap<String, (Rank, Arc<T>)>,
    key: String,
    rank: &Rank,
    value: Arc<T>,
) {
    let mut slot = map.remove(&key);
    put_oldest(&mut slot, rank, value);
    map.extend(slot.map(|s| (key, s)));
}

impl CertTable {
    /// Adds a certificate for `host` (None: the default); the oldest Ingress wins a
    /// host named by several, as for routes.
    pub fn add(&mut self, rank: &Rank, host: Option<&str>, key: Arc<CertifiedKey>) {
        match host.map(|h| HostRule::parse(Some(h))) {
            None | Some(HostRule::Any) => put_oldest(&mut self.default, rank, key),
            Some(HostRule::Exact(h)) => put_oldest_in(&mut self.exact, h, rank, key),
            Some(HostRule::Wildcard(s)) => put_oldest_in(&mut self.wildcard, s, rank, key),
        }
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
        let slot = match host {
            HostRule::Any => {
                put_oldest(&mut self.ca_default, rank, Arc::clone(ca));
                self.ca_default.as_ref()
            }
            HostRule::Exact(h) => {
                put_oldest_in(&mut self.ca_exact, h.clone(), rank, Arc::clone(ca));
                self.ca_exact.get(h)
            }
            HostRule::Wildcard(s) => {
                put_oldest_in(&mut self.ca_wildcard, s.clone(), rank, Arc::clone(ca));
                self.ca_wildcard.get(s)
            }
        };
        slot.filter(|(_, held)| held.id() != ca.id())
            .map(|(winner, _)| winner.clone())
    }

    /// The CA to ask client certificates for in a handshake for `sni`: its name's, else
    /// (no name, or a name with no certificate of its own) the one of the Ingresses
    /// without a host.
    pub fn client_ca(&self, sni: Option<&str>) -> Option<Arc<ClientCa>> {
        if self.ca_exact.is_empty() && self.ca_wildcard.is_empty() && self.ca_default.is_none() {
            return None;
        }
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.ca_default.as_ref().map(|(_, ca)| Arc::clone(ca));
        };
        let suffix = wildcard_suffix(&name);
        if let Some((_, ca)) =
            (self.ca_exact.get(&name)).or_else(|| suffix.and_then(|s| self.ca_wildcard.get(s)))
        {
            return Some(Arc::clone(ca));
        }
        let own_certificate =
            self.exact.contains_key(&name) || suffix.is_some_and(|s| self.wildcard.contains_key(s));
        (!own_certificate)
            .then(|| self.ca_default.as_ref().map(|(_, ca)| Arc::clone(ca)))
            .flatten()
    }

    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = sni.map(str::to_ascii_lowercase).and_then(|name| {
            self.exact
                .get(&name)
                .or_else(|| wildcard_suffix(&name).and_then(|s| self.wildcard.get(s)))
                .map(|(_, k)| Arc::clone(k))
        });
        by_name.or_else(|| self.default.as_ref().map(|(_, k)| Arc::clone(k)))
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
        match host {
            HostRule::Any => return false,
            HostRule::Exact(h) => put_oldest_in(&mut self.pt_exact, h.clone(), rank, target),
            HostRule::Wildcard(s) => put_oldest_in(&mut self.pt_wildcard, s.clone(), rank, target),
        }
        true
    }

    pub fn has_passthrough(&self) -> bool {
        !(self.pt_exact.is_empty() && self.pt_wildcard.is_empty())
    }

    /// The passthrough backend for a ClientHello's server name.
    pub fn passthrough(&self, sni: &str) -> Option<Arc<Passthrough>> {
        let name = sni.to_ascii_lowercase();
        (self.pt_exact.get(&name))
            .or_else(|| wildcard_suffix(&name).and_then(|s| self.pt_wildcard.get(s)))
            .map(|(_, t)| Arc::clone(t))
    }

    /// Whether `host` has a certificate of its own (for `--redirect-https`).
    pub fn has_host(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || wildcard_suffix(host).is_some_and(|s| self.wildcard.contains_key(s))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.default.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
