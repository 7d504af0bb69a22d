//! The CA, certificates and tokens, end to end over a real TLS handshake on loopback.

use std::sync::Arc;
use std::time::Duration;

use drover_security::identity::certs_from_pem;
use drover_security::{ClientIdentity, ClusterCa, KeyAndCsr, Peer, PeerCert, Trust};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[test]
fn the_ca_keeps_only_the_csr_key_and_names_the_peer_it_chose() {
    let ca = ClusterCa::generate("test").expect("ca");
    // The CSR asks for the coordinator's name; the CA gives the node's.
    let asked = KeyAndCsr::generate(&Peer::Node("coordinator".into())).expect("csr");
    let issued = ca
        .sign(
            &asked.csr_pem,
            &Peer::Node("web-1".into()),
            Duration::from_secs(60),
        )
        .expect("sign");
    let cert = PeerCert::from_pem(&issued.pem).expect("parse");
    assert_eq!(cert.peer, Peer::Node("web-1".into()));
    assert_eq!(cert.serial, issued.serial);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        cert.not_after_unix_ms <= now_ms + 61_000,
        "bounded validity"
    );
    assert!(cert.not_after_unix_ms >= now_ms + 58_000);
    let again = ca
        .sign(
            &asked.csr_pem,
            &Peer::Node("web-1".into()),
            Duration::from_secs(60),
        )
        .expect("sign");
    assert_ne!(
        again.serial, issued.serial,
        "serials are random, not the key's hash"
    );
}

#[test]
fn a_ca_reloads_from_its_files_and_refuses_a_lost_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, created) = ClusterCa::load_or_create(dir.path(), "test").expect("create");
    assert!(created);
    let (again, created) = ClusterCa::load_or_create(dir.path(), "test").expect("load");
    assert!(!created);
    assert_eq!(ca.digest(), again.digest());
    std::fs::remove_file(dir.path().join("ca.key")).expect("rm");
    let error = ClusterCa::load_or_create(dir.path(), "test").expect_err("no key");
    assert!(
        error.to_string().contains("ca.key: is missing but"),
        "{error}"
    );
}

/// A TLS server with the coordinator's identity; answers "ok" plus the client's identity.
async fn serve(ca: &ClusterCa) -> std::net::SocketAddr {
    let (chain, key) = ca
        .server_identity(Duration::from_secs(60))
        .expect("server cert");
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(ca.bundle_pem(), "bundle").expect("bundle") {
        roots.add(cert).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem(&chain, "chain").expect("chain"),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
        )
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let who = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| PeerCert::from_der(c).ok())
                        .map(|c| c.peer.to_string())
                        .unwrap_or_else(|| "anonymous".into());
                    let _ = tls.write_all(format!("ok {who}").as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    address
}

async fn talk(
    address: std::net::SocketAddr,
    trust: Trust,
    id: Option<&ClientIdentity>,
) -> Result<String, String> {
    // A channel needs HTTP/2; here only the handshake matters, so dial by hand with the
    // configuration channels use.
    let config = client_config(&trust, id);
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(drover_security::COORDINATOR_NAME).expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

fn client_config(trust: &Trust, id: Option<&ClientIdentity>) -> Arc<rustls::ClientConfig> {
    drover_security::transport::client_config(trust, id).expect("client config")
}

#[tokio::test]
async fn a_pinned_client_reaches_its_cluster_and_no_other() {
    drover_security::install_crypto_provider();
    let ca = ClusterCa::generate("test").expect("ca");
    let address = serve(&ca).await;
    let answer = talk(address, Trust::Pinned(ca.digest()), None)
        .await
        .expect("pinned");
    assert_eq!(answer, "ok anonymous");

    let other = ClusterCa::generate("other").expect("other ca");
    let error = talk(address, Trust::Pinned(other.digest()), None)
        .await
        .expect_err("wrong digest");
    assert!(
        error.contains("not the cluster the token was made for"),
        "{error}"
    );
    let error = talk(address, Trust::Bundle(other.bundle_pem().into()), None)
        .await
        .expect_err("wrong bundle");
    assert!(error.to_lowercase().contains("unknown"), "{error}");

    let node = KeyAndCsr::generate(&Peer::Node("n1".into())).expect("csr");
    let issued = ca
        .sign(
            &node.csr_pem,
            &Peer::Node("n1".into()),
            Duration::from_secs(60),
        )
        .expect("sign");
    let id = ClientIdentity {
        cert_pem: issued.pem,
        key_pem: node.key_pem,
    };
    let answer = talk(address, Trust::Bundle(ca.bundle_pem().into()), Some(&id))
        .await
        .expect("mutual");
    assert_eq!(answer, "ok node n1");
}
