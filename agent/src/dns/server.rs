//! The DNS server: hickory-server's UDP and TCP loops with a handler that answers from the
//! latest [`Records`] and relays every other query to the host's resolvers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_resolver::config::ResolverConfig;
use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::forward::Forwarder;
use super::records::{Answer, Records};

/// How long an upstream has to answer a forwarded query before the next one is tried.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a TCP client may stay idle between two queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// Attempts at finding a port free for both UDP and TCP when binding port 0.
const BIND_ATTEMPTS: usize = 16;

/// At most one warning per this period about queries no upstream answered.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The UDP socket could not be bound.
    #[error("binding the DNS server's UDP socket on {address}")]
    BindUdp {
        /// The address asked for.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TCP listener could not be bound.
    #[error("binding the DNS server's TCP listener on {address}")]
    BindTcp {
        /// The address asked for.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket's loop ended before the shutdown.
    #[error("the DNS server on {address} stopped")]
    Stopped {
        /// The address it listened on.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: NetError,
    },
}

/// Serves the cluster's names on `address` (UDP and TCP) from the latest `records` and
/// forwards the other queries to `upstreams` ([`FORWARD_TIMEOUT`] each), until `shutdown`.
pub async fn serve(
    address: SocketAddr,
    records: watch::Receiver<Arc<Records>>,
    upstreams: Vec<SocketAddr>,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    DnsListener::bind(address)
        .await?
        .serve(records, upstreams, FORWARD_TIMEOUT, shutdown)
        .await
}

/// The host's resolvers from `/etc/resolv.conf`, on port 53, without `exclude` (the
/// cluster DNS's own address: forwarding to it would loop). Empty, with a warning, when
/// the file cannot be read or names none.
pub fn host_upstreams(exclude: IpAddr) -> Vec<SocketAddr> {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok((config, _)) => upstreams_of(&config, exclude),
        Err(error) => {
            warn!(%error, "no DNS upstream: cannot read the host's resolvers from /etc/resolv.conf");
            Vec::new()
        }
    }
}

/// The distinct name server addresses of `config` but `exclude`, on port 53.
fn upstreams_of(config: &ResolverConfig, exclude: IpAddr) -> Vec<SocketAddr> {
    let mut upstreams: Vec<SocketAddr> = Vec::new();
    for server in config.name_servers() {
        let upstream = SocketAddr::new(server.ip, 53);
        if server.ip != exclude && !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    upstreams
}

/// The DNS server's sockets, bound but not served yet: [`DnsListener::local_addr`] tells
/// the port when binding port 0 (tests).
#[derive(Debug)]
pub struct DnsListener {
    udp: UdpSocket,
    tcp: TcpListener,
    address: SocketAddr,
}

impl DnsListener {
    /// Binds UDP and TCP on `address`; with port 0, on one port free for both.
    pub async fn bind(address: SocketAddr) -> Result<DnsListener, DnsError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let udp = UdpSocket::bind(address)
                .await
                .map_err(|source| DnsError::BindUdp { address, source })?;
            let bound = udp
                .local_addr()
                .map_err(|source| DnsError::BindUdp { address, source })?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => {
                    return Ok(DnsListener {
                        udp,
                        tcp,
                        address: bound,
                    });
                }
                // Port 0 gave a UDP port whose TCP twin is taken: try another.
                Err(error)
                    if address.port() == 0
                        && error.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < BIND_ATTEMPTS => {}
                Err(source) => return Err(DnsError::BindTcp { address, source }),
            }
        }
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` (see [`serve`]), giving each upstream `timeout`.
    pub async fn serve(
        self,
        records: watch::Receiver<Arc<Records>>,
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), DnsError> {
        let address = self.address;
        info!(%address, ?upstreams, "DNS server listening");
        let handler = Handler {
            records,
            forwarder: Forwarder::new(upstreams, timeout),
            unanswered: Throttle::default(),
        };
        let mut server = Server::new(handler);
        server.register_socket(self.udp);
        server.register_listener(self.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        let stop = server.shutdown_token().clone();
        let link = tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.cancel();
        });
        let result = server.block_until_done().await;
        link.abort();
        info!(%address, "DNS server stopped");
        result.map_err(|source| DnsError::Stopped { address, source })
    }
}

/// Answers from the latest records; relays what is not the cluster's.
#[derive(Debug)]
struct Handler {
    records: watch::Receiver<Arc<Records>>,
    forwarder: Forwarder,
    unanswered: Throttle,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        // EDNS as hickory's Catalog does it: version 0, the client's payload size.
        let response_edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return reply_error(
                request,
                ResponseCode::BADVERS,
                response_edns.as_ref(),
                response_handle,
            )
            .await;
        }
        if request.metadata.op_code != OpCode::Query {
            return reply_error(
                request,
                ResponseCode::NotImp,
                response_edns.as_ref(),
                response_handle,
            )
            .await;
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return reply_error(
                request,
                ResponseCode::FormErr,
                response_edns.as_ref(),
                response_handle,
            )
            .await;
        };
        let query = info.query;
        let answer = if query.query_class() == DNSClass::IN {
            // Clone the Arc out at once: the watch's lock must not be held across an await.
            let records = Arc::clone(&self.records.borrow());
            records.answer(query.original().name(), query.query_type())
        } else {
            Answer::NotOurs
        };

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        let none: &[Record] = &[];
        let (answers, soa, additionals) = match &answer {
            Answer::Records {
                answers,
                additionals,
            } => (answers.as_slice(), None, additionals.as_slice()),
            Answer::NoData { soa } => (none, soa.as_ref(), none),
            Answer::NxDomain { soa } => {
                metadata.response_code = ResponseCode::NXDomain;
                (none, Some(soa), none)
            }
            Answer::NotOurs => {
                return self
                    .forward(request, response_edns.as_ref(), response_handle)
                    .await;
            }
        };
        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            answers,
            none,
            soa,
            additionals,
        );
        send(request, response_handle, response).await
    }
}

impl Handler {
    /// Relays `request` to the upstreams and their response back; SERVFAIL if none answers.
    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        response_edns: Option<&Edns>,
        response_handle: R,
    ) -> ResponseInfo {
        let question = request.queries.queries().first().map(|q| q.original());
        let tcp = !request.protocol().is_datagram();
        let response = match self.forwarder.permit() {
            Some(_permit) => {
                let query = request.as_slice();
                let id = request.metadata.id;
                self.forwarder.forward(query, id, question, tcp).await
            }
            None => {
                self.unanswered.warn(|suppressed| {
                    warn!(
                        suppressed,
                        "DNS: too many queries being forwarded, answering SERVFAIL"
                    );
                });
                None
            }
        };
        let Some(response) = response else {
            if !self.forwarder.upstreams().is_empty() {
                self.unanswered.warn(|suppressed| {
                    warn!(
                        upstreams = ?self.forwarder.upstreams(),
                        name = ?question.map(|q| q.name().to_string()),
                        suppressed,
                        "DNS: no upstream answered, answering SERVFAIL"
                    );
                });
            }
            return reply_error(
                request,
                ResponseCode::ServFail,
                response_edns,
                response_handle,
            )
            .await;
        };
        // hickory-server sends only messages it encodes, so the upstream's response is
        // decoded and re-encoded: its header (id, flags, code), sections and OPT as they
        // were; the question is the client's own bytes.
        let builder = MessageResponseBuilder::new(&request.queries, response.edns.as_ref());
        let relayed = builder.build(
            response.metadata,
            &response.answers,
            &response.authorities,
            &[],
            &response.additionals,
        );
        send(request, response_handle, relayed).await
    }
}

/// Sends `response`; a failure is the client's problem, logged at debug level only.
async fn send<'a, R: ResponseHandler>(
    request: &Request,
    mut response_handle: R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, src = %request.src(), "sending a DNS response failed");
            failed(request)
        }
    }
}

async fn reply_error<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    response_edns: Option<&Edns>,
    response_handle: R,
) -> ResponseInfo {
    let response = MessageResponseBuilder::new(&request.queries, response_edns)
        .error_msg(&request.metadata, code);
    send(request, response_handle, response).await
}

/// What is reported for a response that could not be sent.
fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Lets a repeated warning through once per [`WARN_EVERY`], counting the ones held back.
#[derive(Debug, Default)]
struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// Calls `log` with the number of warnings suppressed since the last one, if due.
    fn warn(&self, log: impl FnOnce(u64)) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, suppressed) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            *suppressed += 1;
            return;
        }
        *last = Some(now);
        let held_back = std::mem::take(suppressed);
        drop(state);
        log(held_back);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_skip_the_cluster_dns_and_repeats() {
        let (config, _) = hickory_resolver::system_conf::parse_resolv_conf(
            "nameserver 10.96.0.10\nnameserver 1.1.1.1\nnameserver 1.1.1.1\nnameserver ::1\n",
        )
        .expect("a resolv.conf");
        let upstreams = upstreams_of(&config, "10.96.0.10".parse().expect("an address"));
        assert_eq!(
            upstreams,
            vec![
                "1.1.1.1:53".parse::<SocketAddr>().expect("an address"),
                "[::1]:53".parse().expect("an address")
            ]
        );
    }

    #[test]
    fn throttle_lets_one_warning_through_per_period() {
        let throttle = Throttle::default();
        let mut logged = Vec::new();
        for _ in 0..3 {
            throttle.warn(|suppressed| logged.push(suppressed));
        }
        assert_eq!(logged, vec![0]);
        throttle.state.lock().expect("not poisoned").0 = Instant::now().checked_sub(WARN_EVERY);
        throttle.warn(|suppressed| logged.push(suppressed));
        assert_eq!(logged, vec![0, 2]);
    }
}
