//! The gossip transport: UDP where every datagram is sealed ([`crate::seal`], when the
//! member has a keyring) and checked ([`crate::wire`]) before chitchat decodes it.
//!
//! Chitchat 0.13 keeps its envelope codec private, so the socket borrows the one of
//! chitchat's own UDP socket over loopback (notes/chitchat.md §4): an incoming datagram is
//! opened, checked, and goes from a "tap" socket to a codec socket (a
//! `chitchat::transport::UdpSocket` on `127.0.0.1:0`), which decodes it; an outgoing
//! envelope goes the other way: the codec encodes it to the tap, the tap's bytes are sealed
//! and sent to the peer from the gossip port. Two loopback syscalls per message and
//! direction, for a few messages a second.
//!
//! In order, for every datagram received on the gossip port:
//! 1. sealed mode: open it with the keyring read at that moment (the primary or any other
//!    key), refusing wrong or removed keys, tampering, stale timestamps, replays and
//!    malformed frames; reassemble fragments;
//! 2. the wire checks ([`crate::wire::inspect`]), sealed or not: a key holder can still be
//!    buggy or compromised;
//! 3. hand it to the codec.
//!
//! Everything is counted in [`GossipCounters`]. Refused datagrams are logged at most once
//! every [`LOG_EVERY`] per kind of refusal: a flood of them must not flood the log.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use tracing::warn;

use crate::seal::{self, KeyringHandle, OpenError, Opened, Opener, Sealer};
use crate::wire::{self, SelfId};

/// Largest datagram chitchat sends or reads (its `MAX_UDP_DATAGRAM_PAYLOAD_SIZE`).
const MAX_DATAGRAM: usize = seal::MAX_DATAGRAM;
/// How long the loopback codec may take to hand a datagram back; it is immediate unless
/// the codec refused it (then the datagram is dropped).
const CODEC_DEADLINE: Duration = Duration::from_millis(200);
/// At most one log line per kind of trouble this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the gossip socket did, since it opened: read them any time (e.g. for metrics),
/// from the [`Arc`] that [`GuardedTransport::counters`] and `Membership::counters` hand out.
/// All counters only grow. Datagrams are wire datagrams (a fragmented message counts as 2);
/// messages are chitchat's.
#[derive(Debug, Default)]
pub struct GossipCounters {
    /// Datagrams read from the gossip port, whatever they held.
    pub datagrams_in: AtomicU64,
    /// Bytes of those datagrams.
    pub bytes_in: AtomicU64,
    /// Datagrams sent from the gossip port.
    pub datagrams_out: AtomicU64,
    /// Bytes of those datagrams.
    pub bytes_out: AtomicU64,
    /// Messages sent in more than one sealed datagram (too big for one).
    pub fragmented_out: AtomicU64,
    /// Messages that passed every check and were handed to chitchat.
    pub delivered: AtomicU64,
    /// Datagrams that did not open: sealed with a key not in the keyring (never held, or
    /// removed), tampered with, forged, not sealed at all, or malformed.
    pub sealed_rejected: AtomicU64,
    /// Authentic datagrams received before (same sender and sequence), or too old for the
    /// replay window.
    pub replayed: AtomicU64,
    /// Authentic datagrams whose timestamp is more than a minute off this member's clock:
    /// replays, or clocks out of sync.
    pub stale: AtomicU64,
    /// Fragmented messages dropped incomplete (a fragment lost or late).
    pub fragments_dropped: AtomicU64,
    /// Messages refused by the wire checks ([`crate::wire`]), sealed or not.
    pub refused: AtomicU64,
    /// Messages that passed the checks yet chitchat did not decode, or that could not be
    /// handed to it.
    pub undecoded: AtomicU64,
}

/// The values of [`GossipCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // The fields mirror `GossipCounters`.
pub struct CountersSnapshot {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub fragmented_out: u64,
    pub delivered: u64,
    pub sealed_rejected: u64,
    pub replayed: u64,
    pub stale: u64,
    pub fragments_dropped: u64,
    pub refused: u64,
    pub undecoded: u64,
}

impl GossipCounters {
    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            datagrams_in: get(&self.datagrams_in),
            bytes_in: get(&self.bytes_in),
            datagrams_out: get(&self.datagrams_out),
            bytes_out: get(&self.bytes_out),
            fragmented_out: get(&self.fragmented_out),
            delivered: get(&self.delivered),
            sealed_rejected: get(&self.sealed_rejected),
            replayed: get(&self.replayed),
            stale: get(&self.stale),
            fragments_dropped: get(&self.fragments_dropped),
            refused: get(&self.refused),
            undecoded: get(&self.undecoded),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Opens the gossip sockets of the member `me`, sealed or plain.
#[derive(Debug, Clone)]
pub struct GuardedTransport {
    me: SelfId,
    keyring: Option<KeyringHandle>,
    counters: Arc<GossipCounters>,
}

impl GuardedTransport {
    /// A plain (unsealed) transport that refuses, among others, deltas about `me`.
    pub fn new(me: SelfId) -> GuardedTransport {
        GuardedTransport {
            me,
            keyring: None,
            counters: Arc::default(),
        }
    }

    /// A transport sealing and opening every datagram with `keyring` (read on every
    /// datagram, so changes apply at once), with the same checks as [`GuardedTransport::new`].
    pub fn sealed(me: SelfId, keyring: KeyringHandle) -> GuardedTransport {
        GuardedTransport {
            keyring: Some(keyring),
            ..GuardedTransport::new(me)
        }
    }

    /// Whether it seals.
    pub fn is_sealed(&self) -> bool {
        self.keyring.is_some()
    }

    /// The counters of the sockets it opens (shared by all of them).
    pub fn counters(&self) -> Arc<GossipCounters> {
        Arc::clone(&self.counters)
    }
}

#[async_trait]
impl Transport for GuardedTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let seal = self.keyring.clone().map(|keyring| Seal {
            keyring,
            sealer: Sealer::new(),
            opener: Opener::new(),
        });
        Ok(Box::new(
            GuardedSocket::open(self.me.clone(), listen, seal, self.counters()).await?,
        ))
    }
}

/// The sealing state of one socket.
struct Seal {
    keyring: KeyringHandle,
    sealer: Sealer,
    opener: Opener,
}

/// One gossip socket: the wire socket peers talk to, and the loopback codec.
struct GuardedSocket {
    me: SelfId,
    /// `None`: plain gossip.
    seal: Option<Seal>,
    counters: Arc<GossipCounters>,
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
    /// One per kind of datagram that did not open ([`OpenError::kind`]), and for dropped
    /// fragments.
    unopened: BTreeMap<&'static str, RateLimit>,
}

impl GuardedSocket {
    async fn open(
        me: SelfId,
        listen: SocketAddr,
        seal: Option<Seal>,
        counters: Arc<GossipCounters>,
    ) -> anyhow::Result<GuardedSocket> {
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
            seal,
            counters,
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
            unopened: BTreeMap::new(),
        })
    }

    /// Drops a datagram that did not pass the wire checks, logging at most once per
    /// [`LOG_EVERY`].
    fn refuse(&mut self, from: SocketAddr, refusal: &wire::Refusal) {
        bump(&self.counters.refused, 1);
        if let Some(count) = self.refused.hit(Instant::now()) {
            warn!(
                %from,
                reason = refusal.kind(),
                refused = count,
                sealed = self.seal.is_some(),
                listen = ?self.wire.local_addr().ok(),
                "dropped gossip datagrams chitchat must not see; latest: {refusal} \
                 (logged at most every {LOG_EVERY:?})"
            );
        }
    }

    /// Drops a datagram that did not open, counting it and logging at most once per
    /// [`LOG_EVERY`] and kind.
    fn reject(&mut self, from: SocketAddr, error: &OpenError) {
        let counter = match error {
            OpenError::Stale { .. } => &self.counters.stale,
            OpenError::Replayed { .. } | OpenError::TooOld { .. } => &self.counters.replayed,
            OpenError::Malformed { .. }
            | OpenError::UnknownKey { .. }
            | OpenError::Forged { .. }
            | OpenError::Fragment(_) => &self.counters.sealed_rejected,
        };
        bump(counter, 1);
        let limit = self
            .unopened
            .entry(error.kind())
            .or_insert_with(|| RateLimit::new(LOG_EVERY));
        if let Some(count) = limit.hit(Instant::now()) {
            warn!(
                %from,
                reason = error.kind(),
                dropped = count,
                listen = ?self.wire.local_addr().ok(),
                "dropped sealed gossip datagrams that do not open; latest: {error} \
                 (logged at most every {LOG_EVERY:?} per reason)"
            );
        }
    }

    /// Counts and logs the incomplete fragmented messages the opener gave up on.
    fn note_dropped_fragments(&mut self, from: SocketAddr) {
        let Some(seal) = &mut self.seal else { return };
        let dropped = seal.opener.take_dropped_messages();
        if dropped == 0 {
            return;
        }
        bump(&self.counters.fragments_dropped, dropped);
        let limit = self
            .unopened
            .entry("fragments_dropped")
            .or_insert_with(|| RateLimit::new(LOG_EVERY));
        if limit.hit(Instant::now()).is_some() {
            warn!(
                %from,
                dropped,
                total = self.counters.fragments_dropped.load(Ordering::Relaxed),
                "dropped incomplete fragmented gossip messages (a fragment was lost or late; \
                 logged at most every {LOG_EVERY:?})"
            );
        }
    }
}

/// What became of a datagram from the wire, sealed mode.
enum Unsealed {
    /// A whole message, to check and decode.
    Message(Vec<u8>, usize),
    /// A fragment, kept until its message is complete.
    Fragment,
    /// Not opened.
    Rejected(OpenError),
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
        let message = &self.send_buf[..len];
        let Some(seal) = &mut self.seal else {
            let num_bytes_sent = self
                .wire
                .send_to(message, to)
                .await
                .with_context(|| format!("failed to send a gossip message to {to}"))?;
            bump(&self.counters.datagrams_out, 1);
            bump(&self.counters.bytes_out, num_bytes_sent as u64);
            return Ok(SendOutcome { num_bytes_sent });
        };
        let keyring = seal.keyring.get();
        let frames = seal
            .sealer
            .seal(&keyring, message, seal::unix_ms_now())
            .with_context(|| format!("cannot seal a gossip message to {to}"))?;
        if frames.len() > 1 {
            bump(&self.counters.fragmented_out, 1);
        }
        let mut num_bytes_sent = 0;
        for frame in &frames {
            let sent = self
                .wire
                .send_to(frame, to)
                .await
                .with_context(|| format!("failed to send a sealed gossip message to {to}"))?;
            bump(&self.counters.datagrams_out, 1);
            bump(&self.counters.bytes_out, sent as u64);
            num_bytes_sent += sent;
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from, len)) = self.pending {
                match tokio::time::timeout(CODEC_DEADLINE, self.codec.recv()).await {
                    // Anything else on the loopback port is not ours: skip it.
                    Ok(Ok(outcome)) if outcome.from_addr == self.tap_addr => {
                        self.pending = None;
                        bump(&self.counters.delivered, 1);
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
                        bump(&self.counters.undecoded, 1);
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
            bump(&self.counters.datagrams_in, 1);
            bump(&self.counters.bytes_in, len as u64);
            if len > MAX_DATAGRAM {
                let refusal = wire::Refusal::Malformed {
                    len,
                    why: format!("larger than {MAX_DATAGRAM} bytes"),
                };
                self.refuse(from, &refusal);
                continue;
            }
            // Sealed: open first (no `.await` from here to the hand-off, see `pending`).
            let unsealed = self.seal.as_mut().map(|seal| {
                let keyring = seal.keyring.get();
                let frame = &self.recv_buf[..len];
                match seal
                    .opener
                    .open(&keyring, frame, seal::unix_ms_now(), Instant::now())
                {
                    Ok(Opened::Message {
                        payload,
                        wire_bytes,
                        ..
                    }) => Unsealed::Message(payload, wire_bytes),
                    Ok(Opened::Fragment) => Unsealed::Fragment,
                    Err(e) => Unsealed::Rejected(e),
                }
            });
            if self.seal.is_some() {
                self.note_dropped_fragments(from);
            }
            let (message, wire_len): (&[u8], usize) = match &unsealed {
                None => (&self.recv_buf[..len], len),
                Some(Unsealed::Message(payload, wire_bytes)) => (payload, *wire_bytes),
                Some(Unsealed::Fragment) => continue,
                Some(Unsealed::Rejected(error)) => {
                    self.reject(from, error);
                    continue;
                }
            };
            if let Err(refusal) = wire::inspect(message, &self.me) {
                self.refuse(from, &refusal);
                continue;
            }
            match self.tap.send(message).await {
                Ok(_) => self.pending = Some((from, wire_len)),
                Err(e) => {
                    bump(&self.counters.undecoded, 1);
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
