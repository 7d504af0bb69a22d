//! The cluster CA: created once under the coordinator's data dir (`ca.crt`, and `ca.key`
//! 0600), it signs the coordinator's server certificate and the certificates of nodes and
//! operators from their CSRs. What a certificate says comes from the CA's policy, never from
//! the CSR: only the CSR's public key is kept (rcgen copies the requested SANs, key usages
//! and even `is_ca` into its parameters, so they are overwritten, as Swarm's CSR whitelist
//! does).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

use crate::identity::Peer;
use crate::{COORDINATOR_NAME, SecurityError, files};

/// File name of the CA certificate bundle under the data dir (the signing CA first).
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA's private key under the data dir.
pub const CA_KEY_FILE: &str = "ca.key";
/// How long the CA itself is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start being valid a little before now, as clocks of a fleet differ: an
/// hour, or a tenth of a short lifetime (so that renewing at half the validity still falls
/// before the end).
fn backdate(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(3600))
}

/// SHA-256 of a CA certificate's DER, as tokens carry it (base32, lower case, 52 chars).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest(pub [u8; 32]);

impl CaDigest {
    /// The digest of a certificate in DER.
    pub fn of(der: &[u8]) -> CaDigest {
        CaDigest(Sha256::digest(der).into())
    }

    /// Parses the token form.
    pub fn parse(text: &str) -> Result<CaDigest, SecurityError> {
        let bytes = data_encoding::BASE32_NOPAD
            .decode(text.to_ascii_uppercase().as_bytes())
            .map_err(|e| SecurityError::Token(format!("CA digest {text:?}: {e}")))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
            SecurityError::Token(format!("CA digest {text:?} is not 32 bytes long"))
        })?;
        Ok(CaDigest(bytes))
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &data_encoding::BASE32_NOPAD
                .encode(&self.0)
                .to_ascii_lowercase(),
        )
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial number, hex (lower case).
    pub serial: String,
    /// End of its validity, ms since the Unix epoch.
    pub not_after_unix_ms: u64,
}

/// The cluster's certificate authority.
pub struct ClusterCa {
    /// PEM of the trust bundle: the signing CA first, then CAs still trusted (rotation).
    bundle_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, SecurityError> {
        let key = KeyPair::generate().map_err(|e| SecurityError::cert("the CA key", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| SecurityError::cert("the CA", e))?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Drover cluster CA ({cluster_id})"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| SecurityError::cert("the CA", e))?;
        Ok(ClusterCa {
            bundle_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads the CA kept in `dir`, or creates it there. The flag says whether it was created.
    pub fn load_or_create(
        dir: &Path,
        cluster_id: &str,
    ) -> Result<(ClusterCa, bool), SecurityError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (
            files::read_optional(&cert_path)?,
            files::read_optional(&key_path)?,
        ) {
            (Some(bundle), Some(key)) => Ok((ClusterCa::from_pem(&bundle, &key)?, false)),
            (None, None) => {
                let ca = ClusterCa::generate(cluster_id)?;
                // The key first: a certificate without its key would be refused next start.
                files::write_atomic(&key_path, ca.key.serialize_pem().as_bytes(), true)?;
                files::write_atomic(&cert_path, ca.bundle_pem.as_bytes(), false)?;
                Ok((ca, true))
            }
            (Some(_), None) => Err(SecurityError::cert(
                key_path.display().to_string(),
                format!(
                    "is missing but {} exists: restore the key from a backup (a new CA would \
                     lock out every node), or remove both to start a new cluster CA",
                    cert_path.display()
                ),
            )),
            (None, Some(_)) => Err(SecurityError::cert(
                cert_path.display().to_string(),
                format!(
                    "is missing but {} exists: restore the certificate from a backup, or remove \
                     both to start a new cluster CA",
                    key_path.display()
                ),
            )),
        }
    }

    /// A CA from its bundle (signing CA first) and key, both PEM.
    pub fn from_pem(bundle_pem: &str, key_pem: &str) -> Result<ClusterCa, SecurityError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| SecurityError::cert("the CA key", e))?;
        let first = crate::identity::certs_from_pem(bundle_pem, "the CA bundle")?
            .into_iter()
            .next()
            .ok_or_else(|| SecurityError::cert("the CA bundle", "holds no certificate"))?;
        // The key must be the first certificate's: a mismatch would issue unverifiable certs.
        let (_, parsed) = x509_parser::parse_x509_certificate(&first)
            .map_err(|e| SecurityError::cert("the CA certificate", e))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(SecurityError::cert(
                "the CA key",
                "does not belong to the first certificate of the CA bundle",
            ));
        }
        Ok(ClusterCa {
            bundle_pem: bundle_pem.to_string(),
            cert_der: first,
            key,
        })
    }

    /// Digest of the signing CA, as tokens carry it.
    pub fn digest(&self) -> CaDigest {
        CaDigest::of(&self.cert_der)
    }

    /// The trust bundle every member verifies against, PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The signing CA's certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Signs `csr_pem` for `peer`, valid for `ttl`. Only the CSR's public key is used.
    pub fn sign(
        &self,
        csr_pem: &str,
        peer: &Peer,
        ttl: Duration,
    ) -> Result<IssuedCert, SecurityError> {
        let what = || format!("the CSR of {peer}");
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SecurityError::cert(what(), e))?;
        request.params = leaf_params(
            &peer.dns_name(),
            &peer.to_string(),
            ExtendedKeyUsagePurpose::ClientAuth,
            ttl,
        )?;
        let serial = hex(&request
            .params
            .serial_number
            .as_ref()
            .map(SerialNumber::to_bytes)
            .unwrap_or_default());
        let not_after_unix_ms = unix_ms(request.params.not_after);
        let issuer = self.issuer()?;
        let cert = request
            .signed_by(&issuer)
            .map_err(|e| SecurityError::cert(what(), e))?;
        Ok(IssuedCert {
            pem: cert.pem(),
            serial,
            not_after_unix_ms,
        })
    }

    /// A fresh server certificate and key for a coordinator, valid for `ttl`: the chain
    /// (leaf, then the CA, so a newcomer can pin the CA by its digest) and the key, PEM.
    pub fn server_identity(&self, ttl: Duration) -> Result<(String, String), SecurityError> {
        let key = KeyPair::generate().map_err(|e| SecurityError::cert("the coordinator key", e))?;
        let params = leaf_params(
            COORDINATOR_NAME,
            "Drover coordinator",
            ExtendedKeyUsagePurpose::ServerAuth,
            ttl,
        )?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| SecurityError::cert("the coordinator certificate", e))?;
        let ca_pem = crate::identity::pem_of(&self.cert_der);
        Ok((format!("{}{ca_pem}", cert.pem()), key.serialize_pem()))
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, SecurityError> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(|e| SecurityError::cert("the CA certificate", e))
    }
}

/// What every leaf certificate says: one DNS name, the given purpose, a random serial and a
/// bounded validity (rcgen's default runs to the year 4096).
fn leaf_params(
    dns_name: &str,
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
    ttl: Duration,
) -> Result<CertificateParams, SecurityError> {
    let name = dns_name
        .try_into()
        .map_err(|e| SecurityError::cert(format!("DNS name {dns_name:?}"), e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = vec![SanType::DnsName(name)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, ttl);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, ttl: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - backdate(ttl);
    params.not_after = now + ttl;
}

fn random_serial() -> SerialNumber {
    // Positive (top bit clear) and never zero-led, 16 bytes: unique without coordination.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn unix_ms(at: time::OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}
