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
/// While a rotation is in progress: the signing CA cross-signed by the previous one, so that
/// members that trust only the previous CA (or pin it by a token's digest) still verify
/// what the new one signs.
pub const CA_CROSS_FILE: &str = "ca-cross.crt";
/// A CA bundle being put in place; see [`ClusterCa::rotate`] for the order of writes.
const CA_NEXT_FILE: &str = "ca.next.crt";
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
    /// During a rotation: the signing CA cross-signed by the previous one, PEM.
    cross_pem: Option<String>,
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
        let cert = ca_params(&format!("Drover cluster CA ({cluster_id})"))?
            .self_signed(&key)
            .map_err(|e| SecurityError::cert("the CA", e))?;
        Ok(ClusterCa {
            bundle_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
            cross_pem: None,
        })
    }

    /// Starts a rotation: a new CA signs from now on, cross-signed by this one, and both
    /// are trusted until [`ClusterCa::finish_rotation`]. Written to `dir` so that a crash at
    /// any point leaves the old CA or the new one, never a certificate without its key:
    /// the cross-signed certificate and the new bundle (`ca.next.crt`) first, then the new
    /// key over `ca.key`, then the bundle renamed over `ca.crt`; a start that finds
    /// `ca.next.crt` completes or undoes it by which key `ca.key` holds.
    pub fn rotate(&self, dir: &Path, cluster_id: &str) -> Result<ClusterCa, SecurityError> {
        if self.rotating() {
            return Err(SecurityError::cert(
                "the CA rotation",
                "a rotation is already in progress: finish it first (drover ca finish)",
            ));
        }
        let now = time::OffsetDateTime::now_utc();
        let name = format!(
            "Drover cluster CA ({cluster_id}, from {}-{:02}-{:02} {:02}:{:02}:{:02} UTC)",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let key = KeyPair::generate().map_err(|e| SecurityError::cert("the new CA key", e))?;
        let params = ca_params(&name)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| SecurityError::cert("the new CA", e))?;
        // The same name and key, issued by the old CA: a path from the new CA's leaves to it.
        let cross = ca_params(&name)?
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| SecurityError::cert("the cross-signed CA", e))?;
        let bundle_pem = format!("{}{}", cert.pem(), crate::identity::pem_of(&self.cert_der));
        files::write_atomic(&dir.join(CA_CROSS_FILE), cross.pem().as_bytes(), false)?;
        files::write_atomic(&dir.join(CA_NEXT_FILE), bundle_pem.as_bytes(), false)?;
        files::write_atomic(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes(), true)?;
        rename(&dir.join(CA_NEXT_FILE), &dir.join(CA_CERT_FILE))?;
        Ok(ClusterCa {
            bundle_pem,
            cert_der: cert.der().clone(),
            key,
            cross_pem: Some(cross.pem()),
        })
    }

    /// Ends a rotation: only the signing CA is trusted from now on.
    pub fn finish_rotation(&self, dir: &Path) -> Result<ClusterCa, SecurityError> {
        if !self.rotating() {
            return Err(SecurityError::cert(
                "the CA rotation",
                "no rotation is in progress (drover ca rotate starts one)",
            ));
        }
        let bundle_pem = crate::identity::pem_of(&self.cert_der);
        files::write_atomic(&dir.join(CA_NEXT_FILE), bundle_pem.as_bytes(), false)?;
        rename(&dir.join(CA_NEXT_FILE), &dir.join(CA_CERT_FILE))?;
        remove(&dir.join(CA_CROSS_FILE))?;
        Ok(ClusterCa {
            bundle_pem,
            cert_der: self.cert_der.clone(),
            key: KeyPair::from_pem(&self.key.serialize_pem())
                .map_err(|e| SecurityError::cert("the CA key", e))?,
            cross_pem: None,
        })
    }

    /// Whether a rotation is in progress (more than one CA is trusted).
    pub fn rotating(&self) -> bool {
        self.trusted_digests().len() > 1
    }

    /// Digests of every CA trusted, the signing one first.
    pub fn trusted_digests(&self) -> Vec<CaDigest> {
        crate::identity::certs_from_pem(&self.bundle_pem, "the CA bundle")
            .map(|certs| certs.iter().map(|c| CaDigest::of(c)).collect())
            .unwrap_or_default()
    }

    /// Loads the CA kept in `dir`, or creates it there. The flag says whether it was created.
    pub fn load_or_create(
        dir: &Path,
        cluster_id: &str,
    ) -> Result<(ClusterCa, bool), SecurityError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        settle_rotation(dir)?;
        match (
            files::read_optional(&cert_path)?,
            files::read_optional(&key_path)?,
        ) {
            (Some(bundle), Some(key)) => {
                let mut ca = ClusterCa::from_pem(&bundle, &key)?;
                let cross_path = dir.join(CA_CROSS_FILE);
                if ca.rotating() {
                    ca.cross_pem = files::read_optional(&cross_path)?;
                } else {
                    remove(&cross_path)?;
                }
                Ok((ca, false))
            }
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
        if !key_matches(&first, &key)? {
            return Err(SecurityError::cert(
                "the CA key",
                "does not belong to the first certificate of the CA bundle",
            ));
        }
        Ok(ClusterCa {
            bundle_pem: bundle_pem.to_string(),
            cert_der: first,
            key,
            cross_pem: None,
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
        request.params = leaf_params(&peer.dns_name(), &peer.to_string(), ttl)?;
        if let Peer::Node(_) = peer {
            // A node also serves its HTTP side (health, metrics) with it, under the name
            // every agent shares, so that one scrape config verifies them all.
            request.params.subject_alt_names.push(SanType::DnsName(
                crate::AGENT_NAME
                    .try_into()
                    .map_err(|e| SecurityError::cert(crate::AGENT_NAME, e))?,
            ));
            request.params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ];
        }
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
        let mut params = leaf_params(COORDINATOR_NAME, "Drover coordinator", ttl)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| SecurityError::cert("the coordinator certificate", e))?;
        // Leaf, then the cross-signed CA and the previous CAs during a rotation (a member
        // that trusts or pins only the previous CA builds its path through them), then the
        // signing CA (a newcomer pins it by its digest).
        let mut chain = cert.pem();
        if let Some(cross) = &self.cross_pem {
            chain.push_str(cross);
        }
        for previous in crate::identity::certs_from_pem(&self.bundle_pem, "the CA bundle")?
            .iter()
            .skip(1)
        {
            chain.push_str(&crate::identity::pem_of(previous));
        }
        chain.push_str(&crate::identity::pem_of(&self.cert_der));
        Ok((chain, key.serialize_pem()))
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, SecurityError> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(|e| SecurityError::cert("the CA certificate", e))
    }
}

/// What a CA certificate says: its name, CA use only, no intermediate below it.
fn ca_params(common_name: &str) -> Result<CertificateParams, SecurityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| SecurityError::cert("the CA", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// Whether `key` is the key of the certificate `der`.
fn key_matches(der: &CertificateDer<'_>, key: &KeyPair) -> Result<bool, SecurityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| SecurityError::cert("the CA certificate", e))?;
    Ok(parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Completes or undoes a rotation's writes that a crash interrupted: with `ca.next.crt`
/// there, `ca.key` holding its first certificate's key means the key was replaced (rename
/// the bundle into place); any other key means it was not (drop the bundle).
fn settle_rotation(dir: &Path) -> Result<(), SecurityError> {
    let next = dir.join(CA_NEXT_FILE);
    let Some(bundle) = files::read_optional(&next)? else {
        return Ok(());
    };
    let key =
        files::read_optional(&dir.join(CA_KEY_FILE))?.and_then(|pem| KeyPair::from_pem(&pem).ok());
    let first = crate::identity::certs_from_pem(&bundle, "the CA bundle being put in place")
        .ok()
        .and_then(|certs| certs.into_iter().next());
    let completed = match (key, first) {
        (Some(key), Some(first)) => key_matches(&first, &key)?,
        _ => false,
    };
    if completed {
        rename(&next, &dir.join(CA_CERT_FILE))
    } else {
        remove(&next)
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), SecurityError> {
    std::fs::rename(from, to).map_err(|source| SecurityError::Io {
        path: to.display().to_string(),
        action: "put in place",
        source,
    })
}

fn remove(path: &Path) -> Result<(), SecurityError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SecurityError::Io {
            path: path.display().to_string(),
            action: "remove",
            source: e,
        }),
        _ => Ok(()),
    }
}

/// What every leaf certificate says: its DNS name, client authentication (a coordinator's
/// and a node's add what they serve), a random serial and a bounded validity (rcgen's
/// default runs to the year 4096).
fn leaf_params(
    dns_name: &str,
    common_name: &str,
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
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
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
