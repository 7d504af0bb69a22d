//! The CA, certificates and tokens, end to end over a real TLS handshake on loopback.

use std::sync::Arc;
use std::time::Duration;

use drover_security::transport::ServerTls;
use drover_security::{ClientIdentity, ClusterCa, KeyAndCsr, Peer, PeerCert, Trust};
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

/// A TLS server with the coordinator's identity (the server TLS the coordinator runs);
/// answers "ok" plus the client's identity.
async fn serve(ca: &ClusterCa) -> (std::net::SocketAddr, ServerTls) {
    let (chain, key) = ca
        .server_identity(Duration::from_secs(60))
        .expect("server cert");
    let tls = ServerTls::new(&chain, &key, ca.bundle_pem()).expect("server tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let mut incoming = tls.incoming(listener);
    tokio::spawn(async move {
        use tokio_stream::StreamExt as _;
        while let Some(Ok(mut tls)) = incoming.next().await {
            tokio::spawn(async move {
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
            });
        }
    });
    (address, tls)
}

/// A certificate for node `node` from `ca`, with its key.
fn node_identity(ca: &ClusterCa, node: &str) -> ClientIdentity {
    let request = KeyAndCsr::generate(&Peer::Node(node.into())).expect("csr");
    let issued = ca
        .sign(
            &request.csr_pem,
            &Peer::Node(node.into()),
            Duration::from_secs(60),
        )
        .expect("sign");
    ClientIdentity {
        cert_pem: issued.pem,
        key_pem: request.key_pem,
    }
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
    let (address, _tls) = serve(&ca).await;
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

    let id = node_identity(&ca, "n1");
    let answer = talk(address, Trust::Bundle(ca.bundle_pem().into()), Some(&id))
        .await
        .expect("mutual");
    assert_eq!(answer, "ok node n1");
}

#[tokio::test]
async fn a_ca_rotation_keeps_every_member_talking_and_its_end_drops_the_old_ca() {
    drover_security::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _) = ClusterCa::load_or_create(dir.path(), "test").expect("create");
    let old_bundle = Trust::Bundle(old.bundle_pem().into());
    let old_node = node_identity(&old, "n1");

    let new = old.rotate(dir.path(), "test").expect("rotate");
    assert!(new.rotating());
    assert_eq!(new.trusted_digests(), vec![new.digest(), old.digest()]);
    let (reloaded, created) = ClusterCa::load_or_create(dir.path(), "test").expect("reload");
    assert!(!created && reloaded.rotating());
    assert_eq!(
        reloaded.digest(),
        new.digest(),
        "the new CA signs after a restart"
    );
    let error = reloaded
        .rotate(dir.path(), "test")
        .expect_err("one rotation at a time");
    assert!(error.to_string().contains("finish it first"), "{error}");

    // During the rotation everyone gets through: members that trust only the old CA or pin
    // it by an old token's digest (through the cross-signed CA), newcomers pinning the new
    // one, nodes with certificates of either CA.
    let (address, tls) = serve(&reloaded).await;
    let new_node = node_identity(&reloaded, "n2");
    let new_bundle = Trust::Bundle(reloaded.bundle_pem().into());
    for (trust, id, expected) in [
        (&old_bundle, Some(&old_node), "ok node n1"),
        (&Trust::Pinned(old.digest()), None, "ok anonymous"),
        (&Trust::Pinned(new.digest()), None, "ok anonymous"),
        (&new_bundle, Some(&old_node), "ok node n1"),
        (&new_bundle, Some(&new_node), "ok node n2"),
        (&old_bundle, Some(&new_node), "ok node n2"),
    ] {
        let answer = talk(address, trust.clone(), id).await;
        assert_eq!(answer.as_deref(), Ok(expected), "{trust:?}");
    }

    // Finished: only the new CA, on disk and on the wire from the next connection on.
    let done = reloaded.finish_rotation(dir.path()).expect("finish");
    assert!(!done.rotating());
    assert!(!dir.path().join("ca-cross.crt").exists());
    let (again, _) = ClusterCa::load_or_create(dir.path(), "test").expect("reload");
    assert_eq!(again.trusted_digests(), vec![new.digest()]);
    let (chain, key) = again
        .server_identity(Duration::from_secs(60))
        .expect("server cert");
    tls.replace(&chain, &key, again.bundle_pem())
        .expect("replace");
    let final_bundle = Trust::Bundle(again.bundle_pem().into());
    let answer = talk(address, final_bundle.clone(), Some(&new_node)).await;
    assert_eq!(answer.as_deref(), Ok("ok node n2"));
    let error = talk(address, Trust::Pinned(old.digest()), None)
        .await
        .expect_err("the old digest pins nothing now");
    assert!(error.contains("rotated since"), "{error}");
    talk(address, old_bundle, None)
        .await
        .expect_err("the old CA alone verifies nothing now");
    // A certificate of the old CA is not accepted any more: the handshake or the first
    // read fails.
    let refused = talk(address, final_bundle, Some(&old_node)).await;
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn a_rotation_cut_short_by_a_crash_leaves_one_whole_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _) = ClusterCa::load_or_create(dir.path(), "test").expect("create");
    // Crashed before the key was replaced: the bundle being put in place is dropped.
    let other = ClusterCa::generate("test").expect("other");
    std::fs::write(dir.path().join("ca.next.crt"), other.bundle_pem()).expect("write");
    let (loaded, _) = ClusterCa::load_or_create(dir.path(), "test").expect("load");
    assert_eq!(loaded.digest(), old.digest());
    assert!(!dir.path().join("ca.next.crt").exists());

    // Crashed after the key was replaced, before the rename: the rename is completed.
    let new = old.rotate(dir.path(), "test").expect("rotate");
    std::fs::rename(dir.path().join("ca.crt"), dir.path().join("ca.next.crt")).expect("undo");
    std::fs::write(dir.path().join("ca.crt"), old.bundle_pem()).expect("old bundle");
    let (loaded, _) = ClusterCa::load_or_create(dir.path(), "test").expect("load");
    assert_eq!(loaded.digest(), new.digest());
    assert!(loaded.rotating());
}

/// A client that trusts `ca` and verifies the server as `name` (what Prometheus or curl
/// does with the CA file): the server's answer, or why the handshake failed.
async fn verify_as(
    address: std::net::SocketAddr,
    ca: &ClusterCa,
    name: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
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

#[tokio::test]
async fn a_node_serves_tls_under_the_agents_shared_name_and_still_names_itself() {
    drover_security::install_crypto_provider();
    let ca = ClusterCa::generate("test").expect("ca");
    let node = node_identity(&ca, "web-1");
    // The node's identity for the coordinator is unchanged by the second name.
    let cert = PeerCert::from_pem(&node.cert_pem).expect("parse");
    assert_eq!(cert.peer, Peer::Node("web-1".into()));
    let tls = ServerTls::new(&node.cert_pem, &node.key_pem, ca.bundle_pem()).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let mut incoming = tls.incoming(listener);
    tokio::spawn(async move {
        use tokio_stream::StreamExt as _;
        while let Some(Ok(mut tls)) = incoming.next().await {
            tokio::spawn(async move {
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    assert_eq!(
        verify_as(address, &ca, drover_security::AGENT_NAME).await,
        Ok("ok".to_string())
    );
    assert_eq!(
        verify_as(address, &ca, "web-1.node.drover").await,
        Ok("ok".to_string())
    );
    // Not the coordinator's name: a node cannot pass for it.
    let error = verify_as(address, &ca, drover_security::COORDINATOR_NAME)
        .await
        .expect_err("a node is not the coordinator");
    assert!(error.contains("certificate"), "{error}");

    // An operator's certificate serves nothing: client authentication only.
    let request = KeyAndCsr::generate(&Peer::Operator("tok1".into())).expect("csr");
    let issued = ca
        .sign(
            &request.csr_pem,
            &Peer::Operator("tok1".into()),
            Duration::from_secs(60),
        )
        .expect("sign");
    let tls = ServerTls::new(&issued.pem, &request.key_pem, ca.bundle_pem()).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let mut incoming = tls.incoming(listener);
    tokio::spawn(async move {
        use tokio_stream::StreamExt as _;
        while let Some(Ok(mut tls)) = incoming.next().await {
            let _ = tls.write_all(b"ok").await;
        }
    });
    let error = verify_as(address, &ca, "tok1.operator.drover")
        .await
        .expect_err("an operator certificate is for clients");
    assert!(error.contains("certificate"), "{error}");
}
