//! Sockets for the data path's unit tests: a connected loopback pair, and the two ends of a
//! proxied exchange with a half-close.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connected pair of sockets over loopback.
pub(super) async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.expect("connect"), b.expect("accept").0)
}

/// The client sends `request` then half-closes; the server reads it to the end, then sends
/// `answer` and closes. Returns (what the client got, what the server got).
pub(super) async fn exchange(
    client_end: &mut TcpStream,
    server_end: &mut TcpStream,
    request: &[u8],
    answer: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let client = async {
        client_end.write_all(request).await.expect("client write");
        client_end.shutdown().await.expect("client shutdown");
        let mut got = Vec::new();
        client_end.read_to_end(&mut got).await.expect("client read");
        got
    };
    let server = async {
        let mut got = Vec::new();
        server_end.read_to_end(&mut got).await.expect("server read");
        server_end.write_all(answer).await.expect("server write");
        server_end.shutdown().await.expect("server shutdown");
        got
    };
    tokio::join!(client, server)
}
