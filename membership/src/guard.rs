//! The gossip transport: plain UDP, where every datagram is checked ([`crate::wire`]) before
//! chitchat decodes it.
//!
//! Chitchat 0.13 keeps its envelope codec private, so the socket borrows the one of
//! chitchat's own UDP socket over loopback (notes/chitchat.md §4): a checked datagram goes
//! from a "tap" socket to a codec socket (a `chitchat::transport::UdpSocket` on
//! `127.0.0.1:0`), which decodes it; an outgoing envelope goes the other way, and the tap
//! forwards the bytes to the peer from the gossip port. Two loopback syscalls per message
//! and direction, for a few messages a second.
//!
//! Refused datagrams are counted and logged at most once every [`LOG_EVERY`]: a flood of
//! them must not flood the log.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use tracing::warn;

use crate::wire::{self, SelfId};

/// Largest datagram chitchat sends or reads (its `MAX_UDP_DATAGRAM_PAYLOAD_SIZE`).
const MAX_DATAGRAM: usize = 65_507;
/// How long the loopback codec may take to hand a datagram back; it is immediate unless
/// the codec refused it (then the datagram is dropped).
const CODEC_DEADLINE: Duration = Duration::from_millis(200);
/// At most one log line per kind of trouble this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Opens [`GuardedSocket`]s for the member `me`.
#[derive(Debug, Clone)]
pub struct GuardedTransport {
    me: SelfId,
}

impl GuardedTransport {
    /// A transport that refuses, among others, deltas about `me`.
    pub fn new(me: SelfId) -> GuardedTransport {
        GuardedTransport { me }
    }
}

#[async_trait]
impl Transport for GuardedTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(
            GuardedSocket::open(self.me.clone(), listen).await?,
        ))
    }
}

/// One gossip socket: the wire socket peers talk to, and the loopback codec.
struct GuardedSocket {
    me: SelfId,
    wire: tokio::net::UdpSocket,
    codec: UdpSocket,
    /// Connected to the codec: only the codec's datagrams reach it.
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    /// A checked datagram handed to the codec and not yet decoded: its sender and size. Set
    /// with no `.await` after the hand-off, so a `recv` cancelled in between (chitchat's
    /// loop selects on it) is finished by the next one.
    pending: Option<(SocketAddr, usize)>,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    refused: RateLimit,
    recv_errors: RateLimit,
    codec_misses: RateLimit,
}

impl GuardedSocket {
    async fn open(me: SelfId, listen: SocketAddr) -> anyhow::Result<GuardedSocket> {
        let wire = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("failed to bind to {listen}/UDP for gossip"))?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = UdpSocket::open(loopback)
            .await
            .context("cannot open the loopback gossip codec socket")?;
        let codec_addr = codec.local_addr()?;
        let tap = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("cannot open the loopback gossip tap socket")?;
        tap.connect(codec_addr)
            .await
            .context("cannot connect the gossip tap to its codec")?;
        let tap_addr = tap.local_addr()?;
        Ok(GuardedSocket {
            me,
            wire,
            codec,
            tap,
            tap_addr,
            pending: None,
            // One byte more than the largest datagram, to tell an oversized one.
            recv_buf: vec![0; MAX_DATAGRAM + 1],
            send_buf: vec![0; MAX_DATAGRAM + 1],
            refused: RateLimit::new(LOG_EVERY),
            recv_errors: RateLimit::new(LOG_EVERY),
            codec_misses: RateLimit::new(LOG_EVERY),
        })
    }

    /// Drops a datagram that did not pass, logging at most once per [`LOG_EVERY`].
    fn refuse(&mut self, from: SocketAddr, refusal: &wire::Refusal) {
        if let Some(count) = self.refused.hit(Instant::now()) {
            warn!(
                %from,
                reason = refusal.kind(),
                refused = count,
                listen = ?self.wire.local_addr().ok(),
                "dropped gossip datagrams chitchat must not see; latest: {refusal} \
                 (logged at most every {LOG_EVERY:?})"
            );
        }
    }
}

#[async_trait]
impl Socket for GuardedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.wire
            .local_addr()
            .context("failed to get the gossip socket's address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Leftovers of a send cancelled mid-way (chitchat does not cancel sends, but be safe).
        while self.tap.try_recv(&mut self.send_buf).is_ok() {}
        self.codec.send(self.tap_addr, envelope).await?;
        let len = tokio::time::timeout(CODEC_DEADLINE, self.tap.recv(&mut self.send_buf))
            .await
            .context("the loopback gossip codec did not hand back an encoded message")?
            .context("cannot read an encoded gossip message from the loopback codec")?;
        let num_bytes_sent = self
            .wire
            .send_to(&self.send_buf[..len], to)
            .await
            .with_context(|| format!("failed to send a gossip message to {to}"))?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from, len)) = self.pending {
                match tokio::time::timeout(CODEC_DEADLINE, self.codec.recv()).await {
                    // Anything else on the loopback port is not ours: skip it.
                    Ok(Ok(outcome)) if outcome.from_addr == self.tap_addr => {
                        self.pending = None;
                        return Ok(RecvOutcome {
                            from_addr: from,
                            envelope: outcome.envelope,
                            num_bytes_received: len,
                        });
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(e.context("the loopback gossip codec failed")),
                    Err(_) => {
                        // Checked, yet chitchat did not decode it: dropped.
                        self.pending = None;
                        if let Some(count) = self.codec_misses.hit(Instant::now()) {
                            warn!(%from, len, dropped = count, "chitchat did not decode a gossip datagram that passed the checks");
                        }
                        continue;
                    }
                }
            }
            let (len, from) = match self.wire.recv_from(&mut self.recv_buf).await {
                Ok(received) => received,
                Err(e) if is_transient(&e) => {
                    if let Some(count) = self.recv_errors.hit(Instant::now()) {
                        warn!(error = %e, errors = count, "transient UDP receive error on the gossip socket");
                    }
                    continue;
                }
                Err(e) => return Err(e).context("fatal UDP receive error on the gossip socket"),
            };
            let verdict = if len > MAX_DATAGRAM {
                Err(wire::Refusal::Malformed {
                    len,
                    why: format!("larger than {MAX_DATAGRAM} bytes"),
                })
            } else {
                wire::inspect(&self.recv_buf[..len], &self.me)
            };
            if let Err(refusal) = verdict {
                self.refuse(from, &refusal);
                continue;
            }
            match self.tap.send(&self.recv_buf[..len]).await {
                Ok(_) => self.pending = Some((from, len)),
                Err(e) => {
                    if let Some(count) = self.codec_misses.hit(Instant::now()) {
                        warn!(%from, error = %e, dropped = count, "cannot hand a gossip datagram to the loopback codec");
                    }
                }
            }
        }
    }
}

/// Like chitchat's own socket: errors a later receive may not see again.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Decides when a recurring event is logged: the first one at once, then at most one line
/// per period, reporting how many happened since the last line. Pure.
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl RateLimit {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Records one event at `now`; returns `Some(events since the last line, this one
    /// included)` when a line is due, `None` to stay quiet.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_one_line_per_period_with_the_count() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.hit(t0), Some(1));
        let quiet = (1..1000)
            .map(|i| limit.hit(t0 + Duration::from_millis(i)))
            .filter(Option::is_some)
            .count();
        assert_eq!(quiet, 0);
        // The next line reports everything since the last one.
        assert_eq!(limit.hit(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(limit.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.hit(t0 + Duration::from_secs(25)), Some(2));
    }
}
