//! Who a certificate speaks for, and the key and CSR a newcomer makes for itself.

use std::fmt;

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::extensions::GeneralName;

use crate::{NODE_SUFFIX, OPERATOR_SUFFIX, SecurityError};

/// The party a certificate identifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A node (its agent), by node id.
    Node(String),
    /// An operator's CLI session, by the id of the token it joined with.
    Operator(String),
}

impl Peer {
    /// The DNS name that carries the identity in the certificate.
    pub fn dns_name(&self) -> String {
        match self {
            Peer::Node(id) => format!("{id}{NODE_SUFFIX}"),
            Peer::Operator(id) => format!("{id}{OPERATOR_SUFFIX}"),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node(id) => write!(f, "node {id}"),
            Peer::Operator(id) => write!(f, "operator token {id}"),
        }
    }
}

/// What a verified peer certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Whom it identifies.
    pub peer: Peer,
    /// Serial number, hex (lower case), as [`crate::IssuedCert::serial`].
    pub serial: String,
    /// Start of validity, ms since the Unix epoch.
    pub not_before_unix_ms: u64,
    /// End of validity, ms since the Unix epoch.
    pub not_after_unix_ms: u64,
}

impl PeerCert {
    /// Reads a leaf certificate (DER) the TLS layer has already verified against the CA.
    pub fn from_der(der: &[u8]) -> Result<PeerCert, SecurityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SecurityError::cert("the peer certificate", e))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| SecurityError::cert("the peer certificate's names", e))?
            .map(|san| san.value.general_names.clone())
            .unwrap_or_default();
        let mut peers = names.iter().filter_map(|name| match name {
            GeneralName::DNSName(dns) => peer_of_dns(dns),
            _ => None,
        });
        let peer = match (peers.next(), peers.next()) {
            (Some(peer), None) => peer,
            (None, _) => {
                return Err(SecurityError::cert(
                    "the peer certificate",
                    "names no node and no operator",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(SecurityError::cert(
                    "the peer certificate",
                    "names more than one identity",
                ));
            }
        };
        let ms = |t: x509_parser::time::ASN1Time| {
            u64::try_from(t.timestamp())
                .unwrap_or(0)
                .saturating_mul(1000)
        };
        Ok(PeerCert {
            peer,
            serial: crate::ca::hex(cert.raw_serial()),
            not_before_unix_ms: ms(cert.validity().not_before),
            not_after_unix_ms: ms(cert.validity().not_after),
        })
    }

    /// Reads the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<PeerCert, SecurityError> {
        let der = certs_from_pem(pem, "the certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| SecurityError::cert("the certificate", "PEM holds no certificate"))?;
        PeerCert::from_der(&der)
    }
}

fn peer_of_dns(dns: &str) -> Option<Peer> {
    if let Some(id) = dns.strip_suffix(NODE_SUFFIX) {
        return (!id.is_empty() && !id.contains('.')).then(|| Peer::Node(id.to_string()));
    }
    if let Some(id) = dns.strip_suffix(OPERATOR_SUFFIX) {
        return (!id.is_empty() && !id.contains('.')).then(|| Peer::Operator(id.to_string()));
    }
    None
}

/// A private key made on this host, and a CSR for it.
pub struct KeyAndCsr {
    /// The private key, PEM: it stays on this host.
    pub key_pem: String,
    /// The CSR, PEM: what is sent.
    pub csr_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

impl KeyAndCsr {
    /// A new key, and a CSR asking for `peer`'s name (the CA decides what it gets anyway).
    pub fn generate(peer: &Peer) -> Result<KeyAndCsr, SecurityError> {
        let key = KeyPair::generate().map_err(|e| SecurityError::cert("a private key", e))?;
        let params = CertificateParams::new(vec![peer.dns_name()])
            .map_err(|e| SecurityError::cert(format!("the CSR of {peer}"), e))?;
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| SecurityError::cert(format!("the CSR of {peer}"), e))?;
        Ok(KeyAndCsr {
            key_pem: key.serialize_pem(),
            csr_pem: csr,
        })
    }
}

/// The certificates of a PEM text, in order; `what` names the text in errors.
pub fn certs_from_pem(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SecurityError::cert(what, e))
}

/// PEM of one certificate.
pub fn pem_of(der: &CertificateDer<'_>) -> String {
    let body = data_encoding::BASE64.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}
