//! Client certificates (`auth-tls-*`), as ingress-nginx's `ssl_verify_client`.
//!
//! The handshake for a host whose Ingress names an `auth-tls-secret` asks the client for
//! a certificate (naming the CA's subject) and checks there only that the client holds
//! the certificate's key: [`Deferred`] signs off the chain itself, so that a missing or
//! refused certificate is not a broken handshake but an HTTP answer the client can read,
//! as with nginx (400 "No required SSL certificate was sent", 400 "The SSL certificate
//! error", or a redirect to `auth-tls-error-page`), and so that `optional_no_ca` can pass
//! a certificate on unverified. Right after the handshake the chain is verified against
//! that host's CA by rustls's WebPKI verifier ([`ClientCert::check`]); the request phases
//! then act on the outcome ([`ClientAuth::admit`]).
//!
//! The CA is chosen by SNI (the handshake happens before any Host header), the route by
//! Host. A request for a host that checks certificates on a connection whose handshake
//! was for another CA (or for none: another name, no SNI) gets 421 Misdirected Request,
//! as nginx answers it, so that an HTTP/2 client that reused a connection opens one for
//! the right name. Plain HTTP never carries a certificate: such requests get 400 unless
//! the route redirects them to https first; nginx would serve them unchecked.
use std::fmt::Write as _;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::source::annotations::{ClientCertSpec, VerifyClient};

/// The headers the upstream gets (ingress-nginx's names).
pub static SSL_CLIENT_VERIFY: HeaderName = HeaderName::from_static("ssl-client-verify");
pub static SSL_CLIENT_SUBJECT_DN: HeaderName = HeaderName::from_static("ssl-client-subject-dn");
pub static SSL_CLIENT_ISSUER_DN: HeaderName = HeaderName::from_static("ssl-client-issuer-dn");
pub static SSL_CLIENT_CERT: HeaderName = HeaderName::from_static("ssl-client-cert");

/// A CA client certificates are checked against: an `auth-tls-secret`'s `ca.crt`, with
/// the revocation lists of its `ca.crl` when it has one.
#[derive(Debug)]
pub struct ClientCa {
    /// Equal for equal contents (PEM bytes hashed): what ties a connection's check to
    /// a route's.
    id: u64,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    pub fn from_pem(ca: &[u8], crl: Option<&[u8]>) -> Result<ClientCa, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| format!("ca.crt: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca.crt: {e}"))?;
        }
        if roots.is_empty() {
            return Err("ca.crt holds no certificate".to_owned());
        }
        let crls: Vec<CertificateRevocationListDer<'static>> = match crl {
            Some(pem) => CertificateRevocationListDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("ca.crl: {e}"))?,
            None => Vec::new(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("ca.crt: {e}"))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ca.hash(&mut h);
        crl.hash(&mut h);
        Ok(ClientCa {
            id: h.finish(),
            verifier,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The handshake's verifier for this CA (see [`Deferred`]).
    pub fn deferred(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Deferred {
            inner: Arc::clone(&self.verifier),
        })
    }
}

/// Asks for a certificate and checks the client's signature with it, but leaves the
/// chain to [`ClientCert::check`] after the handshake.
#[derive(Debug)]
struct Deferred {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What one connection's handshake established about the client's certificate.
#[derive(Debug)]
pub struct ClientCert {
    /// The CA the handshake asked for ([`ClientCa::id`]).
    ca: u64,
    presented: Option<Presented>,
}

#[derive(Debug)]
struct Presented {
    /// Why the CA does not vouch for it, if it does not.
    refused: Option<String>,
    /// Certificates in the shortest chain from the client's to the CA (the client's and
    /// the intermediates it needs), when the CA vouches for it.
    path_len: usize,
    subject_dn: String,
    issuer_dn: String,
    common_name: Option<String>,
    der: CertificateDer<'static>,
}

impl ClientCert {
    /// Verifies the chain a client presented (if any) against `ca`, now.
    pub fn check(ca: &ClientCa, chain: Option<&[CertificateDer<'static>]>) -> ClientCert {
        let presented = chain.and_then(<[_]>::split_first).map(|(leaf, rest)| {
            let path = shortest_path(&*ca.verifier, leaf, rest, UnixTime::now());
            let names = names(leaf);
            let refused = match &path {
                Err(e) => Some(e.clone()),
                Ok(_) if names.is_none() => Some("unparsable certificate".to_owned()),
                Ok(_) => None,
            };
            Presented {
                refused,
                path_len: path.unwrap_or(usize::MAX),
                subject_dn: names.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
                issuer_dn: names.as_ref().map(|n| n.1.clone()).unwrap_or_default(),
                common_name: names.and_then(|n| n.2),
                der: leaf.clone(),
            }
        });
        ClientCert {
            ca: ca.id,
            presented,
        }
    }
}

/// Intermediates a client sends beyond which the shortest chain is not searched for
/// (each subset is a verification): the chain it sent counts whole.
const SEARCHED_INTERMEDIATES: usize = 4;

/// Certificates in the shortest chain `ca` vouches for from `leaf` through some of the
/// `intermediates` (nginx's `ssl_verify_depth` counts the verified chain, not what the
/// client sent: clients often send their CA's root too), or why there is none.
fn shortest_path(
    ca: &dyn ClientCertVerifier,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<usize, String> {
    ca.verify_client_cert(leaf, intermediates, now)
        .map_err(|e| e.to_string())?;
    let n = intermediates.len();
    if n == 0 || n > SEARCHED_INTERMEDIATES {
        return Ok(n + 1);
    }
    for k in 0..n {
        for mask in (0u32..1 << n).filter(|m| m.count_ones() as usize == k) {
            let subset: Vec<CertificateDer<'static>> = (intermediates.iter().enumerate())
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| c.clone())
                .collect();
            if ca.verify_client_cert(leaf, &subset, now).is_ok() {
                return Ok(k + 1);
            }
        }
    }
    Ok(n + 1)
}

/// A route's client certificate settings, with its CA.
#[derive(Debug)]
pub struct ClientAuth {
    pub ca: Arc<ClientCa>,
    pub spec: ClientCertSpec,
}

/// Why a request is not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 421: the connection's handshake was for another name.
    Misdirected,
    /// 400 (or the error page): no certificate where one is required.
    Missing,
    /// 400 (or the error page): the CA does not vouch for it (with nginx's reason).
    Invalid(String),
    /// 403: `auth-tls-match-cn` does not match.
    CommonName,
}

/// nginx's `$ssl_client_escaped_cert`: every byte but `A-Z a-z 0-9 - . _ ~` escaped.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl ClientAuth {
    /// Whether a request on a connection whose handshake gave `conn` (None: plain HTTP,
    /// or a handshake that asked for no certificate) may go on; if so, the headers for
    /// the upstream: `ssl-client-verify` (`SUCCESS`, `FAILED:reason`, `NONE`), the
    /// subject and issuer DNs (RFC 2253) and, when asked, the certificate.
    pub fn admit(
        &self,
        conn: Option<&ClientCert>,
        tls: bool,
    ) -> Result<Vec<(&'static HeaderName, HeaderValue)>, Refusal> {
        let presented = match conn {
            Some(c) if c.ca == self.ca.id => c.presented.as_ref(),
            // Another name's handshake: the client must come back on a connection of
            // its own for this one.
            _ if tls => return Err(Refusal::Misdirected),
            _ => None,
        };
        let verify = self.spec.verify;
        let Some(cert) = presented else {
            if verify == VerifyClient::On {
                return Err(Refusal::Missing);
            }
            return Ok(vec![(&SSL_CLIENT_VERIFY, HeaderValue::from_static("NONE"))]);
        };
        let refused = cert.refused.clone().or_else(|| {
            (cert.path_len > usize::from(self.spec.depth)).then(|| {
                format!(
                    "a chain of {} certificates is deeper than auth-tls-verify-depth {}",
                    cert.path_len, self.spec.depth
                )
            })
        });
        let status = match &refused {
            Some(why) if verify != VerifyClient::OptionalNoCa => {
                return Err(Refusal::Invalid(why.clone()));
            }
            Some(why) => format!("FAILED:{why}"),
            None => "SUCCESS".to_owned(),
        };
        if let Some(pattern) = &self.spec.match_cn
            && !(cert.common_name.as_deref()).is_some_and(|cn| pattern.0.is_match(cn))
        {
            return Err(Refusal::CommonName);
        }
        let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        let mut headers = vec![
            (&SSL_CLIENT_VERIFY, value(&status)),
            (&SSL_CLIENT_SUBJECT_DN, value(&cert.subject_dn)),
            (&SSL_CLIENT_ISSUER_DN, value(&cert.issuer_dn)),
        ];
        if self.spec.pass_certificate {
            let pem = pem(&cert.der);
            headers.push((
                &SSL_CLIENT_CERT,
                value(&utf8_percent_encode(&pem, URI_COMPONENT).to_string()),
            ));
        }
        Ok(headers)
    }
}

/// A certificate as PEM, 64 characters a line.
fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Subject DN, issuer DN (RFC 2253, as nginx's `$ssl_client_s_dn`) and the subject's
/// first common name; None for a certificate x509-parser cannot read.
fn names(der: &[u8]) -> Option<(String, String, Option<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = (cert.subject().iter_common_name().next())
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    Some((rfc2253(cert.subject()), rfc2253(cert.issuer()), cn))
}

/// A name in RFC 2253's string form: the last RDN first, `,` between them, `+` between
/// the attributes of one, special characters escaped, values that are not strings as
/// `#` and their DER in hex.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|rdn| {
            let attrs: Vec<String> = rdn
                .iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map_or_else(|_| attr.attr_type().to_id_string(), str::to_owned);
                    let value = match attr.as_str() {
                        Ok(s) => escape(s),
                        Err(_) => format!("#{}", hex::encode(attr.as_slice())),
                    };
                    format!("{key}={value}")
                })
                .collect();
            attrs.join("+")
        })
        .collect();
    rdns.join(",")
}

/// RFC 2253 section 2.4 escaping, and control characters as `\XX` so that the result
/// is a valid header value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\{:02X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_are_written_as_rfc_2253_says() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "DE");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc.");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, " alice+bob");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (subject, issuer, cn) = names(cert.der()).unwrap();
        assert_eq!(subject, r"CN=\ alice\+bob,O=Example\, Inc.,C=DE");
        assert_eq!(issuer, subject);
        assert_eq!(cn.as_deref(), Some(" alice+bob"));
        assert_eq!(escape("#a\u{1}b "), r"\#a\01b\ ");
    }

    #[test]
    fn a_certificate_is_passed_as_nginx_escapes_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = pem(cert.der());
        // The same PEM as rcgen writes, line for line.
        assert_eq!(pem.replace("\r\n", "\n"), cert.pem().replace("\r\n", "\n"));
        let escaped = utf8_percent_encode(&pem, URI_COMPONENT).to_string();
        assert!(
            escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{escaped}"
        );
        assert!(
            escaped.ends_with("-----END%20CERTIFICATE-----%0A"),
            "{escaped}"
        );
        assert!(!escaped.contains(['+', '/', '=', ' ', '\n']), "{escaped}");
    }
}
