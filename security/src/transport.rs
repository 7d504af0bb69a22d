//! The one place gRPC transports are set up: the coordinator's server TLS, and the client
//! side every agent and CLI uses.
//!
//! Clients dial through their own connector (tokio-rustls) rather than tonic's TLS, for two
//! things tonic cannot do: pin a CA by its digest on first contact ([`Trust::Pinned`]), and
//! bind a chosen source address. Every client verifies the server as
//! [`crate::COORDINATOR_NAME`], whatever address it dialled.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use crate::ca::CaDigest;
use crate::identity::certs_from_pem;
use crate::{COORDINATOR_NAME, SecurityError};

/// Server TLS for a coordinator: its chain and key, and the CA bundle client certificates
/// must chain to, replaceable while it serves (a CA rotation re-issues the chain and changes
/// the bundle; connections accepted from then on use the new ones, open ones go on). A
/// client certificate is optional at the TLS layer (a newcomer joins with a token before it
/// has one); each service then demands the identity it needs.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// How long a client may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl ServerTls {
    /// Serves `chain_pem` (leaf first) with `key_pem`, accepting client certificates that
    /// chain to `client_ca_pem`.
    pub fn new(
        chain_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> Result<ServerTls, SecurityError> {
        let config = server_config(chain_pem, key_pem, client_ca_pem)?;
        Ok(ServerTls {
            config: Arc::new(RwLock::new(config)),
        })
    }

    /// Serves a new chain, key and client CA bundle from the next connection on.
    pub fn replace(
        &self,
        chain_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> Result<(), SecurityError> {
        let config = server_config(chain_pem, key_pem, client_ca_pem)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TLS connections accepted on `listener`, for tonic's `serve_with_incoming`. Each
    /// handshake runs on its own task (a slow client holds up nobody) with a deadline;
    /// failed handshakes are dropped, counted in the log at most once every 10 s.
    pub fn incoming(
        &self,
        listener: tokio::net::TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    > {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let last_log = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
            loop {
                let tcp = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(e) => {
                            // Out of descriptors and the like: wait rather than spin.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                // No Nagle: a handshake's small writes would each wait for a delayed ACK.
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let tx = tx.clone();
                let failed = failed.clone();
                let last_log = last_log.clone();
                tokio::spawn(async move {
                    let peer = tcp.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        outcome => {
                            let count =
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                            let mut last = last_log.lock().unwrap_or_else(|e| e.into_inner());
                            if last
                                .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(10))
                            {
                                *last = Some(std::time::Instant::now());
                                let error = match outcome {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => "timed out".to_string(),
                                };
                                tracing::info!(?peer, %error, failed_so_far = count, "TLS handshake failed");
                            }
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn server_config(
    chain_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, SecurityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_ca_pem)?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| SecurityError::Tls(format!("the client CA bundle: {e}")))?;
    let chain = certs_from_pem(chain_pem, "the server certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| SecurityError::Tls(format!("the server key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| SecurityError::Tls(format!("the server certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How a client decides the server is its cluster's coordinator.
#[derive(Debug, Clone)]
pub enum Trust {
    /// First contact: the chain the server sends must contain a CA with this digest, and
    /// the server's certificate must chain to it.
    Pinned(CaDigest),
    /// The cluster's CA bundle, PEM.
    Bundle(String),
}

/// A client's own certificate (chain) and key, PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

/// A client TLS setup, ready to dial.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
}

impl ClientTls {
    /// A client that trusts `trust` and presents `identity`, if any.
    pub fn new(
        trust: &Trust,
        identity: Option<&ClientIdentity>,
    ) -> Result<ClientTls, SecurityError> {
        Ok(ClientTls {
            config: client_config(trust, identity)?,
            source: None,
        })
    }

    /// Dial from `source` (an address of this host) instead of letting the kernel choose.
    pub fn with_source(mut self, source: Option<IpAddr>) -> ClientTls {
        self.source = source;
        self
    }

    /// Connects `endpoint` over TLS.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        let config = self.config.clone();
        let source = self.source;
        endpoint
            .connect_with_connector(tower::service_fn(move |uri: tonic::transport::Uri| {
                dial(uri, config.clone(), source)
            }))
            .await
    }
}

/// The rustls client configuration [`ClientTls`] dials with (ALPN h2).
pub fn client_config(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
    {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Tls(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match trust {
            Trust::Bundle(pem) => {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(pem)?), provider.clone())
                    .build()
                    .map_err(|e| SecurityError::Tls(format!("the CA bundle: {e}")))?
            }
            Trust::Pinned(digest) => Arc::new(PinnedVerifier {
                digest: *digest,
                provider: provider.clone(),
            }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match identity {
            Some(id) => {
                let chain = certs_from_pem(&id.cert_pem, "the client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                    .map_err(|e| SecurityError::Tls(format!("the client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| SecurityError::Tls(format!("the client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An endpoint for a coordinator address: `host:port`, `http://host:port` or
/// `https://host:port` (the scheme does not matter: the connection is always TLS).
pub fn endpoint(address: &str) -> Result<Endpoint, SecurityError> {
    let rest = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
        .trim_end_matches('/');
    Endpoint::from_shared(format!("http://{rest}")).map_err(|e| {
        SecurityError::Tls(format!(
            "invalid coordinator address {address:?} (expected host:port, e.g. 10.0.0.2:7400): {e}"
        ))
    })
}

async fn dial(
    uri: tonic::transport::Uri,
    config: Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, std::io::Error> {
    let invalid =
        |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {why}"));
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let port = uri.port_u16().unwrap_or(7400);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let address = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| invalid("the name resolves to no address"))?,
    };
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    let tcp = socket.connect(address).await?;
    let name = ServerName::try_from(COORDINATOR_NAME).map_err(|e| invalid(&e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(tls))
}

fn roots(pem: &str) -> Result<RootCertStore, SecurityError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem, "the CA bundle")? {
        roots
            .add(cert)
            .map_err(|e| SecurityError::Tls(format!("the CA bundle: {e}")))?;
    }
    if roots.is_empty() {
        return Err(SecurityError::Tls(
            "the CA bundle holds no certificate".into(),
        ));
    }
    Ok(roots)
}

/// Verifies a server on first contact: some certificate of the chain it sent must be the CA
/// the token names, and the server's own certificate must chain to that CA.
#[derive(Debug)]
struct PinnedVerifier {
    digest: CaDigest,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| CaDigest::of(cert.as_ref()) == self.digest)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's CA does not have the digest the token names ({}): this is \
                     not the cluster the token was made for, or its CA was rotated since \
                     (the token then needs the new digest: `drover ca status` shows it)",
                    self.digest
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
