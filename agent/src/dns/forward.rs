//! Relaying the queries that are not the cluster's to the host's resolvers: the query's
//! bytes as received, to one upstream after the other, until one answers.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

/// Queries being forwarded at once, at most. Each holds a socket for up to the timeout per
/// upstream, so a flood of external names must not exhaust the agent's file descriptors.
const MAX_IN_FLIGHT: usize = 512;

/// Why one upstream gave no usable answer (logged at debug level only: it is per query).
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("exchanging with upstream {upstream}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {upstream} sent a malformed response over TCP")]
    Malformed { upstream: SocketAddr },
    #[error("the query is {length} bytes, more than a TCP message holds")]
    TooLong { length: usize },
}

/// Sends queries to the upstream resolvers, in order.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    upstreams: Arc<[SocketAddr]>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
}

impl Forwarder {
    /// A forwarder to `upstreams`, waiting `timeout` for each.
    pub(crate) fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder {
            upstreams: upstreams.into(),
            timeout,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The upstreams, in the order they are tried.
    pub(crate) fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// A slot for one more forwarded query, or `None` when [`MAX_IN_FLIGHT`] are running.
    pub(crate) fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// The first upstream response to `query` (the raw request: id `id`, question
    /// `question`), over TCP if `tcp` else UDP; `None` when no upstream answered.
    pub(crate) async fn forward(
        &self,
        query: &[u8],
        id: u16,
        question: Option<&Query>,
        tcp: bool,
    ) -> Option<Message> {
        for &upstream in self.upstreams.iter() {
            let exchange = async {
                if tcp {
                    exchange_tcp(upstream, query, id).await
                } else {
                    exchange_udp(upstream, query, id, question).await
                }
            };
            let result = match tokio::time::timeout(self.timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(ExchangeError::Timeout {
                    upstream,
                    timeout: self.timeout,
                }),
            };
            match result {
                Ok(response) => return Some(response),
                Err(error) => debug!(%upstream, id, tcp, error = %error, "DNS upstream failed"),
            }
        }
        None
    }
}

/// Sends `query` from a fresh socket (a random source port, as a resolver should) and
/// waits for the response. The socket is connected, so only the upstream's datagrams
/// arrive; a datagram that is not the response (another id, another question, not a
/// response) is dropped, as it may be forged.
async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: Option<&Query>,
) -> Result<Message, ExchangeError> {
    let io = |source| ExchangeError::Io { upstream, source };
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0)).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    let mut buffer = vec![0; usize::from(u16::MAX)];
    loop {
        // A refused port (ICMP unreachable) fails here, so the next upstream is tried at once.
        let length = socket.recv(&mut buffer).await.map_err(io)?;
        let Some(bytes) = buffer.get(..length) else {
            continue;
        };
        let Ok(response) = Message::from_vec(bytes) else {
            continue;
        };
        if is_response_to(&response, id, question) {
            return Ok(response);
        }
    }
}

/// Sends `query` over a new TCP connection (two-byte length prefix, RFC 1035 4.2.2).
async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> Result<Message, ExchangeError> {
    let io = |source| ExchangeError::Io { upstream, source };
    let length = u16::try_from(query.len()).map_err(|_| ExchangeError::TooLong {
        length: query.len(),
    })?;
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let length = stream.read_u16().await.map_err(io)?;
    let mut buffer = vec![0; usize::from(length)];
    stream.read_exact(&mut buffer).await.map_err(io)?;
    match Message::from_vec(&buffer) {
        Ok(response) if is_response_to(&response, id, None) => Ok(response),
        _ => Err(ExchangeError::Malformed { upstream }),
    }
}

/// Whether `response` answers the query `id` about `question` (an error response may
/// carry no question).
fn is_response_to(response: &Message, id: u16, question: Option<&Query>) -> bool {
    let metadata = &response.metadata;
    let same_question = match (question, response.queries.as_slice()) {
        (_, []) | (None, _) => true,
        (Some(asked), [answered]) => {
            // Name equality ignores case: a resolver may randomize it (0x20 encoding).
            answered.name() == asked.name()
                && answered.query_type() == asked.query_type()
                && answered.query_class() == asked.query_class()
        }
        (Some(_), _) => false,
    };
    metadata.id == id && metadata.message_type == MessageType::Response && same_question
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{OpCode, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query() -> Query {
        Query::query(
            Name::from_ascii("example.test.").expect("a name"),
            RecordType::A,
        )
    }

    fn response(id: u16, name: &str) -> Message {
        let mut message = Message::response(id, OpCode::Query);
        message.add_query(Query::query(
            Name::from_ascii(name).expect("a name"),
            RecordType::A,
        ));
        message
    }

    #[test]
    fn only_the_response_to_the_query_is_accepted() {
        let asked = query();
        assert!(is_response_to(
            &response(7, "Example.TEST."),
            7,
            Some(&asked)
        ));
        assert!(!is_response_to(
            &response(8, "example.test."),
            7,
            Some(&asked)
        ));
        assert!(!is_response_to(
            &response(7, "other.test."),
            7,
            Some(&asked)
        ));
        let mut not_response = response(7, "example.test.");
        not_response.metadata.message_type = MessageType::Query;
        assert!(!is_response_to(&not_response, 7, Some(&asked)));
        let error = Message::error_msg(7, OpCode::Query, ResponseCode::FormErr);
        assert!(is_response_to(&error, 7, Some(&asked)));
    }

    #[tokio::test]
    async fn no_upstream_means_no_answer() {
        let forwarder = Forwarder::new(vec![], Duration::from_millis(10));
        let bytes = response(1, "example.test.").to_vec().expect("encode");
        assert!(forwarder.forward(&bytes, 1, None, false).await.is_none());
    }
}
