//! The pure load-balancing core of the service proxy: which replica gets the next connection.
//!
//! No I/O and no clock: every call that depends on time takes `now` ([`tokio::time::Instant`],
//! so tests may use paused time or plain offsets). Randomness comes from a generator seeded by
//! [`Balancer::new`], so a balancer is deterministic given its seed and its inputs. The
//! algorithms and their defaults follow notes/dataplane-autoscale.md §1–§2.
//!
//! # Choice
//!
//! 1. **Revision** (canaries), only when the revision weights are non-empty: revisions with a
//!    positive weight and at least one eligible endpoint compete by their weight — smooth
//!    weighted round robin across revisions for [`Strategy::RoundRobin`], weighted random for
//!    the others. A revision with weight 0, absent from the map, or without an eligible
//!    endpoint gets nothing, so the others take its share. With an empty map every endpoint is
//!    in one pool and revisions are ignored.
//! 2. **Endpoint** within the revision (or the single pool), by strategy:
//!    - `round_robin`: nginx smooth weighted round robin (SWRR): every eligible endpoint adds
//!      its effective weight to its `current`; the largest `current` wins (ties: lowest id)
//!      and gives back the sum of the weights. {5,1,1} gives `a a b a c a a`.
//!    - `random`: weighted random.
//!    - `least_conn`: power of two choices: two distinct endpoints sampled by weight, the one
//!      with the lower `active / weight` wins; ties go to fewer active connections, then to the
//!      first one sampled (random, so idle pools are not skewed towards low ids).
//!
//! An endpoint is *eligible* when its effective weight is positive, it is not in the
//! caller's `exclude` list (replicas already tried for this client connection) and it is not
//! ejected — unless the balancer is in panic (below), or unless this is a retry (non-empty
//! `exclude`) with no un-ejected endpoint left, when an ejected endpoint is a better last
//! resort than failing the client connection.
//!
//! # Weights
//!
//! Effective weight = endpoint weight × slow-start factor, kept as integers scaled by
//! [`WEIGHT_SCALE`] (1000) so slow start is smooth. An endpoint that joins a pool already
//! serving traffic starts at `min_weight_percent`% and grows linearly to 100% over
//! `slow_start` (Envoy's `slow_start_config` with aggression 1.0, floor 10%). A pool serves
//! traffic when one of its members that stays, with a positive weight, has connections open
//! or was picked within the last `slow_start`. An endpoint joining a pool that serves nothing
//! (a new service, a new revision, replicas turning ready one after another before the
//! first request) starts warm: ramping it would only skew the first requests towards whichever
//! replica happened to be ready first, since slow start shares traffic relative to the pool's
//! other members (HAProxy ramps only a server coming back, Envoy warns against ramping when
//! all hosts are new). Weight 0 means "no new connections" (drain).
//!
//! # Schedule state across updates
//!
//! [`Balancer::update`] keeps every surviving endpoint's state (SWRR `current`, slow-start
//! start, active count, failures, ejection), so periodic updates with the same set change
//! nothing. Where a pool's members or weights change (or the revision weights change), the
//! carried `current`s are re-centred to sum 0 and then clamped into `[-T/2, T/2]`, `T` the
//! pool's new total weight. Stale SWRR credit from the old weights is what causes a catch-up
//! burst after a change (nginx SWRR 9:1 → 1:1 gives three in a row with unbounded credit, and
//! still with a `[-T, T]` clamp); with at most half a round of credit left, no endpoint is more
//! than about one pick ahead of or behind its new share (tests: 90/10 → 50/50 and 9:1 → 1:1
//! never give more than two consecutive picks of one side). The schedule is not reset, which
//! would cause the opposite burst towards the heaviest endpoint.
//!
//! When a pool's schedule starts from nothing (first update, or a pool none of whose members
//! existed before) it is advanced by a seed-derived number of pre-picks in `[0, Σ weights)`
//! (Envoy's fix for the EDF first-pick herd), so agents with different seeds start at
//! different phases of the same cycle. The pre-picks are capped at about 2^20 endpoint visits.
//!
//! # Passive health
//!
//! `eject_after` consecutive connect failures eject an endpoint until
//! `now + base_ejection × 2^(n-1)` (capped at `max_ejection`), `n` the number of times it
//! has been ejected. A success resets the failure count and lifts an ejection early. After the
//! ejection ends the failure count is *not* reset, so one more failure (before any success)
//! ejects it again for twice as long (like nginx's single trial request); `n` starts over once
//! the endpoint has stayed un-ejected for `max_ejection`. `eject_after = 0` disables ejection.
//!
//! Panic: when fewer than `panic_threshold_percent`% of the endpoints that could get traffic
//! (positive weight, routable revision) are un-ejected, ejection is ignored and connections
//! spread over all of them (Envoy's `healthy_panic_threshold`, default 50%).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::Strategy;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

/// Effective weights are integers in thousandths of a configured weight unit.
pub const WEIGHT_SCALE: u64 = 1000;

/// Upper bound on endpoint visits spent on seed-derived pre-picks when a schedule starts.
const PREPICK_BUDGET: u64 = 1 << 20;

/// One replica the proxy may forward to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Allocation id; identifies the endpoint across updates.
    pub id: String,
    /// Where to connect.
    pub address: SocketAddr,
    /// Traffic pool (a revision of a workload) the weights of [`Balancer::update`] apply to.
    pub pool: u64,
    /// Relative weight within its pool (≥1 normally; 0 = no new connections).
    pub weight: u32,
    /// Workload of the replica, for counting outcomes.
    pub workload: Arc<str>,
    /// Revision of the workload the replica runs, for counting outcomes.
    pub revision: u64,
}

impl Endpoint {
    /// A replica of `revision` of `workload` with weight 1, in the pool of its revision (as
    /// a service selecting one workload has it).
    pub fn new(
        id: impl Into<String>,
        address: SocketAddr,
        workload: &str,
        revision: u64,
    ) -> Endpoint {
        Endpoint {
            id: id.into(),
            address,
            pool: revision,
            weight: 1,
            workload: Arc::from(workload),
            revision,
        }
    }
}

/// Tuning of a [`Balancer`]; defaults in the field docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerConfig {
    /// Warm-up window of a new endpoint (default 10 s; zero = no slow start).
    pub slow_start: Duration,
    /// Share of its weight a new endpoint starts with, in percent (default 10).
    pub min_weight_percent: u32,
    /// Consecutive connect failures that eject an endpoint (default 3; 0 = never eject).
    pub eject_after: u32,
    /// First ejection time; doubles with each further ejection (default 1 s).
    pub base_ejection: Duration,
    /// Cap on one ejection (default 30 s).
    pub max_ejection: Duration,
    /// Below this percentage of un-ejected endpoints ejection is ignored (default 50).
    pub panic_threshold_percent: u32,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            slow_start: Duration::from_secs(10),
            min_weight_percent: 10,
            eject_after: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            panic_threshold_percent: 50,
        }
    }
}

/// What a balancer knows about one endpoint, for metrics and status.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointState {
    /// Allocation id.
    pub id: String,
    /// Where connections go.
    pub address: SocketAddr,
    /// Revision of the replica.
    pub revision: u64,
    /// Configured weight.
    pub weight: u32,
    /// Weight after slow start, in configured units (fractional while warming up). This is
    /// the weight within the endpoint's pool; a revision weight of 0 does not zero it.
    pub effective_weight: f64,
    /// Connections open to it (as reported by `connection_opened`/`connection_closed`).
    pub active: u32,
    /// Consecutive connect failures since the last success.
    pub consecutive_failures: u32,
    /// End of the current ejection, if it is ejected.
    pub ejected_until: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Slot {
    ep: Endpoint,
    /// Start of slow start; `None` when the endpoint was warm from the start.
    warming_since: Option<Instant>,
    /// When it was last picked for a connection.
    last_picked: Option<Instant>,
    /// SWRR credit, in scaled weight units.
    current: i64,
    active: u32,
    failures: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
    last_ejection_end: Option<Instant>,
}

impl Slot {
    fn new(ep: Endpoint, warming_since: Option<Instant>) -> Slot {
        Slot {
            ep,
            warming_since,
            last_picked: None,
            current: 0,
            active: 0,
            failures: 0,
            times_ejected: 0,
            ejected_until: None,
            last_ejection_end: None,
        }
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }
}

/// Pool of an endpoint: its revision when revisions are weighted, else the single pool.
type PoolKey = Option<u64>;

/// Picks replicas for new connections of one service; see the module docs.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    config: BalancerConfig,
    rng: Xoshiro256PlusPlus,
    /// Sorted by endpoint id.
    slots: Vec<Slot>,
    revision_weights: BTreeMap<u64, u32>,
    /// SWRR credit per revision with a positive weight.
    revision_current: BTreeMap<u64, i64>,
    /// Active connection counts of removed endpoints, restored if they come back.
    detached_active: BTreeMap<String, u32>,
    /// Latest time passed in, for [`Balancer::endpoints`].
    last_now: Option<Instant>,
}

impl Balancer {
    /// An empty balancer. `seed` makes its choices deterministic and desynchronises agents
    /// (give each agent and service a different one).
    pub fn new(strategy: Strategy, config: BalancerConfig, seed: u64) -> Balancer {
        Balancer {
            strategy,
            config,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            slots: Vec::new(),
            revision_weights: BTreeMap::new(),
            revision_current: BTreeMap::new(),
            detached_active: BTreeMap::new(),
            last_now: None,
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Switches strategy; all per-endpoint state is kept.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
    }

    /// Replaces the endpoint set and the revision weights. Endpoints that stay (same id) keep
    /// their scheduling and health state; new ones enter slow start from `now` if their pool
    /// serves traffic (see the module docs), else they start warm; removed ones vanish. With
    /// the same id twice, the last one wins.
    pub fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        revision_weights: &BTreeMap<u64, u32>,
        now: Instant,
    ) {
        self.observe(now);
        let old_pools = self.pool_weights();

        let mut incoming: BTreeMap<String, Endpoint> = BTreeMap::new();
        for ep in endpoints {
            incoming.insert(ep.id.clone(), ep);
        }
        // Pools (as the new revision weights make them) that serve traffic through a member
        // that stays; a newcomer ramps only there.
        let pool_key = |revision: u64| (!revision_weights.is_empty()).then_some(revision);
        let serving: BTreeSet<PoolKey> = if self.config.slow_start.is_zero() {
            BTreeSet::new()
        } else {
            self.slots
                .iter()
                .filter(|s| incoming.contains_key(&s.ep.id) && self.serving(s, now))
                .map(|s| pool_key(s.ep.pool))
                .collect()
        };
        let mut old: BTreeMap<String, Slot> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|s| (s.ep.id.clone(), s))
            .collect();
        let mut carried: Vec<bool> = Vec::with_capacity(incoming.len());
        for (id, ep) in incoming {
            match old.remove(&id) {
                Some(mut slot) => {
                    slot.ep = ep;
                    carried.push(true);
                    self.slots.push(slot);
                }
                None => {
                    let ramp = serving.contains(&pool_key(ep.pool));
                    let mut slot = Slot::new(ep, ramp.then_some(now));
                    slot.active = self.detached_active.remove(&id).unwrap_or(0);
                    carried.push(false);
                    self.slots.push(slot);
                }
            }
        }
        for (id, slot) in old {
            if slot.active > 0 {
                self.detached_active.insert(id, slot.active);
            }
        }

        // Revision level.
        let revisions_changed = self.revision_weights != *revision_weights;
        let fresh_revisions = revision_weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .all(|(r, _)| !self.revision_current.contains_key(r));
        self.revision_weights = revision_weights.clone();
        self.revision_current
            .retain(|r, _| revision_weights.get(r).is_some_and(|w| *w > 0));
        for (r, w) in revision_weights {
            if *w > 0 {
                self.revision_current.entry(*r).or_insert(0);
            }
        }
        if !self.revision_current.is_empty() {
            if fresh_revisions {
                self.prepick_revisions();
            } else if revisions_changed {
                let total: u64 = self.revision_weights.values().map(|w| u64::from(*w)).sum();
                let mut currents: Vec<i64> = self.revision_current.values().copied().collect();
                normalise(&mut currents, total);
                for (slot, current) in self.revision_current.values_mut().zip(currents) {
                    *slot = current;
                }
            }
        }

        // Endpoint level, pool by pool.
        let new_pools = self.pool_weights();
        for (key, members) in &new_pools {
            let indices: Vec<usize> = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| self.pool_of(s) == *key)
                .map(|(i, _)| i)
                .collect();
            let fresh = indices.iter().all(|i| !carried[*i]);
            if fresh {
                self.prepick_pool(&indices, now);
            } else if old_pools.get(key) != Some(members) {
                let weighted: Vec<usize> = indices
                    .iter()
                    .copied()
                    .filter(|i| self.slots[*i].ep.weight > 0)
                    .collect();
                let total: u64 = weighted
                    .iter()
                    .map(|i| self.effective(&self.slots[*i], now))
                    .sum();
                let mut currents: Vec<i64> =
                    weighted.iter().map(|i| self.slots[*i].current).collect();
                normalise(&mut currents, total);
                for (i, current) in weighted.iter().zip(currents) {
                    self.slots[*i].current = current;
                }
                for i in &indices {
                    if self.slots[*i].ep.weight == 0 {
                        self.slots[*i].current = 0;
                    }
                }
            }
        }
    }

    /// Picks an endpoint for a new connection, skipping the ids in `exclude` (replicas
    /// already tried for this connection). `None` when no endpoint is eligible.
    pub fn pick(&mut self, now: Instant, exclude: &[&str]) -> Option<Endpoint> {
        self.observe(now);
        let panic = self.panicking(now);
        let mut candidates = self.candidates(now, exclude, panic);
        if candidates.is_empty() && !panic && !exclude.is_empty() {
            // A retry with no un-ejected endpoint left: an ejected one beats a sure failure.
            candidates = self.candidates(now, exclude, true);
        }
        if candidates.is_empty() {
            return None;
        }
        if !self.revision_weights.is_empty() {
            let mut revisions: BTreeMap<u64, u64> = BTreeMap::new();
            for (i, _) in &candidates {
                let r = self.slots[*i].ep.pool;
                revisions.insert(r, u64::from(self.revision_weight(r)));
            }
            let revisions: Vec<(u64, u64)> = revisions.into_iter().collect();
            let revision = match self.strategy {
                Strategy::RoundRobin => self.swrr_revision(&revisions),
                Strategy::Random | Strategy::LeastConn => {
                    revisions[weighted_index(&mut self.rng, &revisions, None)].0
                }
            };
            candidates.retain(|(i, _)| self.slots[*i].ep.pool == revision);
        }
        let chosen = match self.strategy {
            Strategy::RoundRobin => self.swrr_slots(&candidates),
            Strategy::Random => candidates[weighted_index(&mut self.rng, &candidates, None)].0,
            Strategy::LeastConn => self.two_choices(&candidates),
        };
        self.slots[chosen].last_picked = Some(now);
        Some(self.slots[chosen].ep.clone())
    }

    /// Eligible endpoints as (slot index, effective weight), in id order.
    fn candidates(
        &self,
        now: Instant,
        exclude: &[&str],
        ignore_ejection: bool,
    ) -> Vec<(usize, u64)> {
        let by_revision = !self.revision_weights.is_empty();
        let mut candidates: Vec<(usize, u64)> = Vec::with_capacity(self.slots.len());
        for (i, s) in self.slots.iter().enumerate() {
            if exclude.contains(&s.ep.id.as_str())
                || (!ignore_ejection && s.ejected(now))
                || (by_revision && self.revision_weight(s.ep.pool) == 0)
            {
                continue;
            }
            let w = self.effective(s, now);
            if w > 0 {
                candidates.push((i, w));
            }
        }
        candidates
    }

    /// A connect to `id` succeeded: its failure count resets and any ejection ends.
    pub fn connect_succeeded(&mut self, id: &str, now: Instant) {
        self.observe(now);
        if let Some(slot) = self.slot_mut(id) {
            slot.failures = 0;
            if slot.ejected(now) {
                slot.ejected_until = None;
                slot.last_ejection_end = Some(now);
            }
        }
    }

    /// A connect to `id` failed (refused, reset or timed out). After `eject_after`
    /// consecutive failures the endpoint is ejected with exponential backoff.
    pub fn connect_failed(&mut self, id: &str, now: Instant) {
        self.observe(now);
        let config = self.config.clone();
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        slot.failures = slot.failures.saturating_add(1);
        if config.eject_after == 0 || slot.failures < config.eject_after || slot.ejected(now) {
            return;
        }
        if slot
            .last_ejection_end
            .is_some_and(|end| now >= end + config.max_ejection)
        {
            slot.times_ejected = 0;
        }
        slot.times_ejected = slot.times_ejected.saturating_add(1);
        let doublings = (slot.times_ejected - 1).min(31);
        let duration = config
            .base_ejection
            .checked_mul(1u32 << doublings)
            .unwrap_or(config.max_ejection)
            .min(config.max_ejection);
        slot.ejected_until = Some(now + duration);
    }

    /// A connection to `id` was opened (counts for `least_conn`).
    pub fn connection_opened(&mut self, id: &str) {
        if let Some(slot) = self.slot_mut(id) {
            slot.active = slot.active.saturating_add(1);
        } else {
            // Not (or no longer) listed: a connection taken over before the endpoint is
            // known, or one to a removed endpoint; counted for when it is listed again.
            let n = self.detached_active.entry(id.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// A connection to `id` was closed. Closes for endpoints removed meanwhile are counted
    /// against them, so a removed-and-returned endpoint keeps a true count.
    pub fn connection_closed(&mut self, id: &str) {
        if let Some(slot) = self.slot_mut(id) {
            slot.active = slot.active.saturating_sub(1);
        } else if let Some(n) = self.detached_active.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.detached_active.remove(id);
            }
        }
    }

    /// State of every endpoint, by id, as of the latest time passed to the balancer.
    pub fn endpoints(&self) -> Vec<EndpointState> {
        match self.last_now {
            Some(now) => self.endpoints_at(now),
            None => self
                .slots
                .iter()
                .map(|s| state(s, s.ep.weight.into()))
                .collect(),
        }
    }

    /// State of every endpoint, by id, at `now`.
    pub fn endpoints_at(&self, now: Instant) -> Vec<EndpointState> {
        self.slots
            .iter()
            .map(|s| {
                let mut st = state(s, self.effective(s, now) as f64 / WEIGHT_SCALE as f64);
                st.ejected_until = s.ejected_until.filter(|t| now < *t);
                st
            })
            .collect()
    }

    /// Ends ejections that are over and remembers `now`.
    fn observe(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |t| t.max(now)));
        for slot in &mut self.slots {
            if let Some(until) = slot.ejected_until {
                if until <= now {
                    slot.ejected_until = None;
                    slot.last_ejection_end = Some(until);
                }
            }
        }
    }

    fn slot_mut(&mut self, id: &str) -> Option<&mut Slot> {
        let i = self
            .slots
            .binary_search_by(|s| s.ep.id.as_str().cmp(id))
            .ok()?;
        Some(&mut self.slots[i])
    }

    /// Whether the endpoint carries traffic: a positive weight, and connections open or a
    /// pick within the last slow-start window.
    fn serving(&self, slot: &Slot, now: Instant) -> bool {
        let recent = slot
            .last_picked
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.slow_start);
        slot.ep.weight > 0 && (slot.active > 0 || recent)
    }

    fn revision_weight(&self, revision: u64) -> u32 {
        self.revision_weights.get(&revision).copied().unwrap_or(0)
    }

    fn pool_of(&self, slot: &Slot) -> PoolKey {
        (!self.revision_weights.is_empty()).then_some(slot.ep.pool)
    }

    /// Configured weight of every member, per pool.
    fn pool_weights(&self) -> BTreeMap<PoolKey, BTreeMap<String, u32>> {
        let mut pools: BTreeMap<PoolKey, BTreeMap<String, u32>> = BTreeMap::new();
        for slot in &self.slots {
            pools
                .entry(self.pool_of(slot))
                .or_default()
                .insert(slot.ep.id.clone(), slot.ep.weight);
        }
        pools
    }

    /// Weight × slow-start factor, scaled by [`WEIGHT_SCALE`]; at least 1 unless the
    /// configured weight is 0.
    fn effective(&self, slot: &Slot, now: Instant) -> u64 {
        if slot.ep.weight == 0 {
            return 0;
        }
        let window = self.config.slow_start;
        let factor = match slot.warming_since {
            Some(since) if !window.is_zero() => {
                let elapsed = now.saturating_duration_since(since);
                if elapsed >= window {
                    WEIGHT_SCALE
                } else {
                    let floor = u64::from(self.config.min_weight_percent.min(100)) * 10;
                    let grown =
                        u128::from(WEIGHT_SCALE - floor) * elapsed.as_nanos() / window.as_nanos();
                    floor + grown as u64
                }
            }
            _ => WEIGHT_SCALE,
        };
        (u64::from(slot.ep.weight) * factor).max(1)
    }

    /// Whether too few endpoints are un-ejected, so that ejection is ignored.
    fn panicking(&self, now: Instant) -> bool {
        let by_revision = !self.revision_weights.is_empty();
        let (mut routable, mut healthy) = (0u64, 0u64);
        for slot in &self.slots {
            if slot.ep.weight == 0 || (by_revision && self.revision_weight(slot.ep.pool) == 0) {
                continue;
            }
            routable += 1;
            if !slot.ejected(now) {
                healthy += 1;
            }
        }
        routable > 0 && healthy * 100 < routable * u64::from(self.config.panic_threshold_percent)
    }

    /// One SWRR step over `candidates` (slot index, effective weight); returns the winner.
    fn swrr_slots(&mut self, candidates: &[(usize, u64)]) -> usize {
        let total: u64 = candidates.iter().map(|(_, w)| w).sum();
        let mut best: Option<(usize, i64)> = None;
        for (i, w) in candidates {
            let slot = &mut self.slots[*i];
            slot.current += *w as i64;
            if best.is_none_or(|(_, c)| slot.current > c) {
                best = Some((*i, slot.current));
            }
        }
        let (winner, _) = best.expect("candidates is never empty");
        self.slots[winner].current -= total as i64;
        winner
    }

    /// One SWRR step over `revisions` (revision, weight); returns the winner.
    fn swrr_revision(&mut self, revisions: &[(u64, u64)]) -> u64 {
        let total: u64 = revisions.iter().map(|(_, w)| w).sum();
        let mut best: Option<(u64, i64)> = None;
        for (r, w) in revisions {
            let current = self.revision_current.entry(*r).or_insert(0);
            *current += *w as i64;
            if best.is_none_or(|(_, c)| *current > c) {
                best = Some((*r, *current));
            }
        }
        let (winner, _) = best.expect("revisions is never empty");
        if let Some(current) = self.revision_current.get_mut(&winner) {
            *current -= total as i64;
        }
        winner
    }

    /// Power of two choices by weight; lower `active / weight` wins.
    fn two_choices(&mut self, candidates: &[(usize, u64)]) -> usize {
        let first = weighted_index(&mut self.rng, candidates, None);
        if candidates.len() == 1 {
            return candidates[first].0;
        }
        let second = weighted_index(&mut self.rng, candidates, Some(first));
        let (a, wa) = candidates[first];
        let (b, wb) = candidates[second];
        let (active_a, active_b) = (self.slots[a].active, self.slots[b].active);
        let load_a = u128::from(active_a) * u128::from(wb);
        let load_b = u128::from(active_b) * u128::from(wa);
        if load_b < load_a || (load_b == load_a && active_b < active_a) {
            b
        } else {
            a
        }
    }

    /// Advances a fresh pool's schedule by a seed-derived number of picks.
    fn prepick_pool(&mut self, indices: &[usize], now: Instant) {
        let candidates: Vec<(usize, u64)> = indices
            .iter()
            .map(|i| (*i, self.effective(&self.slots[*i], now)))
            .filter(|(_, w)| *w > 0)
            .collect();
        let round: u64 = candidates
            .iter()
            .map(|(i, _)| u64::from(self.slots[*i].ep.weight))
            .sum();
        let steps = self.prepick_count(round, candidates.len());
        for _ in 0..steps {
            self.swrr_slots(&candidates);
        }
    }

    /// Advances a fresh revision schedule by a seed-derived number of picks.
    fn prepick_revisions(&mut self) {
        let revisions: Vec<(u64, u64)> = self
            .revision_weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(r, w)| (*r, u64::from(*w)))
            .collect();
        let round: u64 = revisions.iter().map(|(_, w)| w).sum();
        let steps = self.prepick_count(round, revisions.len());
        for _ in 0..steps {
            self.swrr_revision(&revisions);
        }
    }

    /// A number of pre-picks in `[0, round)`, within [`PREPICK_BUDGET`].
    fn prepick_count(&mut self, round: u64, members: usize) -> u64 {
        if round == 0 || members == 0 {
            return 0;
        }
        let cap = (PREPICK_BUDGET / members as u64).max(1);
        self.rng.random_range(0..round.min(cap))
    }
}

fn state(slot: &Slot, effective_weight: f64) -> EndpointState {
    EndpointState {
        id: slot.ep.id.clone(),
        address: slot.ep.address,
        revision: slot.ep.revision,
        weight: slot.ep.weight,
        effective_weight,
        active: slot.active,
        consecutive_failures: slot.failures,
        ejected_until: slot.ejected_until,
    }
}

/// Re-centres SWRR credits to sum 0 and clamps them into `[-total/2, total/2]`.
fn normalise(currents: &mut [i64], total: u64) {
    if currents.is_empty() {
        return;
    }
    let sum: i128 = currents.iter().map(|c| i128::from(*c)).sum();
    let mean = sum.div_euclid(currents.len() as i128) as i64;
    let bound = (total / 2).min(i64::MAX as u64) as i64;
    for current in currents.iter_mut() {
        *current = (*current - mean).clamp(-bound, bound);
    }
}

/// Index into `items` (id, weight) drawn with probability proportional to weight, leaving
/// out `skip`. Weights must not all be zero.
fn weighted_index<T>(
    rng: &mut Xoshiro256PlusPlus,
    items: &[(T, u64)],
    skip: Option<usize>,
) -> usize {
    let total: u64 = items
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, (_, w))| w)
        .sum();
    if total == 0 {
        return (0..items.len()).find(|i| Some(*i) != skip).unwrap_or(0);
    }
    let mut r = rng.random_range(0..total);
    for (i, (_, w)) in items.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        if r < *w {
            return i;
        }
        r -= w;
    }
    items.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, revision: u64, weight: u32) -> Endpoint {
        let port = 10_000 + u16::from(id.as_bytes()[0]);
        Endpoint {
            id: id.to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            pool: revision,
            weight,
            workload: Arc::from("web"),
            revision,
        }
    }

    fn revs(pairs: &[(u64, u32)]) -> BTreeMap<u64, u32> {
        pairs.iter().copied().collect()
    }

    fn config() -> BalancerConfig {
        BalancerConfig::default()
    }

    fn balancer(
        strategy: Strategy,
        endpoints: Vec<Endpoint>,
        revision_weights: &[(u64, u32)],
        seed: u64,
        now: Instant,
    ) -> Balancer {
        let mut b = Balancer::new(strategy, config(), seed);
        b.update(endpoints, &revs(revision_weights), now);
        b
    }

    fn picks(b: &mut Balancer, now: Instant, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| b.pick(now, &[]).expect("an endpoint").id)
            .collect()
    }

    fn counts(seq: &[String]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for id in seq {
            *m.entry(id.clone()).or_insert(0) += 1;
        }
        m
    }

    fn count(seq: &[String], id: &str) -> usize {
        seq.iter().filter(|s| *s == id).count()
    }

    /// Longest run of consecutive picks in the same group (`group` maps an id to its side).
    fn max_run(seq: &[String], group: impl Fn(&str) -> u64) -> usize {
        let (mut best, mut run, mut last) = (0, 0, None);
        for id in seq {
            let g = group(id);
            run = if last == Some(g) { run + 1 } else { 1 };
            last = Some(g);
            best = best.max(run);
        }
        best
    }

    fn joined(seq: &[String]) -> String {
        seq.concat()
    }

    fn five_one_one() -> Vec<Endpoint> {
        vec![ep("a", 1, 5), ep("b", 1, 1), ep("c", 1, 1)]
    }

    #[test]
    fn swrr_5_1_1_is_smooth_and_the_seed_only_shifts_the_phase() {
        let now = Instant::now();
        let cycle = "aabacaa";
        let doubled = cycle.repeat(2);
        let mut phases = std::collections::BTreeSet::new();
        for seed in 0..100 {
            let mut b = balancer(Strategy::RoundRobin, five_one_one(), &[], seed, now);
            let first = joined(&picks(&mut b, now, 7));
            let second = joined(&picks(&mut b, now, 7));
            assert_eq!(first, second, "seed {seed}: period 7");
            let phase = doubled.find(&first).expect("a rotation of a a b a c a a");
            phases.insert(phase);
        }
        assert!(phases.contains(&0), "some seed starts at a a b a c a a");
        assert!(phases.len() >= 5, "seeds spread the phase: {phases:?}");
        let seed = (0..100)
            .find(|s| {
                let mut b = balancer(Strategy::RoundRobin, five_one_one(), &[], *s, now);
                joined(&picks(&mut b, now, 7)) == cycle
            })
            .expect("a seed with phase 0");
        let mut b = balancer(Strategy::RoundRobin, five_one_one(), &[], seed, now);
        let seq = picks(&mut b, now, 7);
        assert_eq!(seq, ["a", "a", "b", "a", "c", "a", "a"]);
    }

    #[test]
    fn equal_weights_give_exactly_equal_counts() {
        let now = Instant::now();
        let endpoints = vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1)];
        for seed in 0..5 {
            let mut b = balancer(Strategy::RoundRobin, endpoints.clone(), &[], seed, now);
            let seq = picks(&mut b, now, 3000);
            assert!(
                counts(&seq).values().all(|n| *n == 1000),
                "{:?}",
                counts(&seq)
            );
        }
    }

    fn canary_endpoints() -> Vec<Endpoint> {
        vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1), ep("d", 2, 1)]
    }

    #[test]
    fn revisions_90_10_round_robin_is_exact() {
        let now = Instant::now();
        let mut b = balancer(
            Strategy::RoundRobin,
            canary_endpoints(),
            &[(1, 90), (2, 10)],
            7,
            now,
        );
        let seq = picks(&mut b, now, 10_000);
        let c = counts(&seq);
        assert_eq!(c["d"], 1000);
        assert_eq!(c["a"], 3000);
        assert_eq!(c["b"], 3000);
        assert_eq!(c["c"], 3000);
        // Evenly spaced: exactly one canary pick in every 10 consecutive picks.
        assert!(
            seq.windows(10)
                .all(|w| w.iter().filter(|id| *id == "d").count() == 1)
        );
    }

    #[test]
    fn revisions_90_10_random_and_least_conn_within_two_points() {
        let now = Instant::now();
        for strategy in [Strategy::Random, Strategy::LeastConn] {
            for seed in [1, 2, 3] {
                let mut b = balancer(strategy, canary_endpoints(), &[(1, 90), (2, 10)], seed, now);
                let seq = picks(&mut b, now, 10_000);
                let canary = count(&seq, "d");
                assert!(
                    (800..=1200).contains(&canary),
                    "{strategy:?} seed {seed}: canary {canary} of 10000"
                );
            }
        }
    }

    #[test]
    fn revision_weight_change_applies_at_once_without_a_burst() {
        let start = Instant::now();
        let side = |id: &str| u64::from(id == "d");
        for seed in 0..20 {
            for before in [13, 37, 55] {
                let mut b = balancer(
                    Strategy::RoundRobin,
                    canary_endpoints(),
                    &[(1, 90), (2, 10)],
                    seed,
                    start,
                );
                picks(&mut b, start, before);
                b.update(canary_endpoints(), &revs(&[(1, 50), (2, 50)]), start);
                let after = picks(&mut b, start, 200);
                // Takes effect at once: the canary's share over the next 100 is 50 ± 2.
                let canary = count(&after[..100], "d");
                assert!((48..=52).contains(&canary), "seed {seed}: {canary}");
                // No catch-up burst, not even in the first round.
                assert!(max_run(&after, side) <= 2, "seed {seed}: {after:?}");
                assert_eq!(max_run(&after[2..], side), 1, "alternates after one round");
            }
        }
    }

    #[test]
    fn endpoint_weight_change_applies_at_once_without_a_burst() {
        let now = Instant::now();
        for seed in 0..20 {
            let mut b = balancer(
                Strategy::RoundRobin,
                vec![ep("a", 1, 9), ep("b", 1, 1)],
                &[],
                seed,
                now,
            );
            picks(&mut b, now, 23);
            b.update(vec![ep("a", 1, 1), ep("b", 1, 1)], &BTreeMap::new(), now);
            let after = picks(&mut b, now, 100);
            assert!((48..=52).contains(&count(&after, "b")));
            assert!(max_run(&after, |id| u64::from(id == "a")) <= 2, "{after:?}");
            // And the other way: 1/1 → 9/1 gives the new ratio within one round.
            b.update(vec![ep("a", 1, 9), ep("b", 1, 1)], &BTreeMap::new(), now);
            let after = picks(&mut b, now, 100);
            assert!((9..=11).contains(&count(&after, "b")), "{after:?}");
        }
    }

    /// Randomised: after any weight change, every endpoint's picks in the next round are
    /// within one of its new weight, and the long run is exact.
    #[test]
    fn weight_changes_converge_within_one_round() {
        let now = Instant::now();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
        let mut worst = 0i64;
        for scenario in 0..300 {
            let n = rng.random_range(2..6usize);
            let ids: Vec<String> = (0..n)
                .map(|i| ((b'a' + i as u8) as char).to_string())
                .collect();
            let set = |rng: &mut Xoshiro256PlusPlus| -> Vec<Endpoint> {
                ids.iter()
                    .map(|id| ep(id, 1, rng.random_range(1..10u32)))
                    .collect()
            };
            let mut b = balancer(Strategy::RoundRobin, set(&mut rng), &[], scenario, now);
            for _ in 0..3 {
                let k = rng.random_range(0..40usize);
                picks(&mut b, now, k);
                let endpoints = set(&mut rng);
                b.update(endpoints.clone(), &BTreeMap::new(), now);
                let round: u32 = endpoints.iter().map(|e| e.weight).sum();
                let seq = picks(&mut b, now, round as usize);
                for e in &endpoints {
                    let off = (count(&seq, &e.id) as i64 - i64::from(e.weight)).abs();
                    worst = worst.max(off);
                }
                // From there on, each round is exact.
                let seq = picks(&mut b, now, 3 * round as usize);
                for e in &endpoints {
                    assert_eq!(count(&seq, &e.id), 3 * e.weight as usize);
                }
            }
        }
        assert!(worst <= 1, "an endpoint was {worst} picks off its share");
    }

    #[test]
    fn unchanged_updates_do_not_disturb_the_schedule() {
        let now = Instant::now();
        let mut plain = balancer(Strategy::RoundRobin, five_one_one(), &[], 3, now);
        let mut updated = balancer(Strategy::RoundRobin, five_one_one(), &[], 3, now);
        for round in 0..50 {
            let at = now + Duration::from_secs(round);
            updated.update(five_one_one(), &BTreeMap::new(), at);
            assert_eq!(picks(&mut plain, at, 3), picks(&mut updated, at, 3));
        }
        let mut plain = balancer(
            Strategy::RoundRobin,
            canary_endpoints(),
            &[(1, 9), (2, 1)],
            3,
            now,
        );
        let mut updated = balancer(
            Strategy::RoundRobin,
            canary_endpoints(),
            &[(1, 9), (2, 1)],
            3,
            now,
        );
        for _ in 0..50 {
            updated.update(canary_endpoints(), &revs(&[(1, 9), (2, 1)]), now);
            assert_eq!(picks(&mut plain, now, 3), picks(&mut updated, now, 3));
        }
    }

    #[test]
    fn new_endpoint_warms_up_linearly() {
        let t0 = Instant::now();
        let mut b = balancer(
            Strategy::RoundRobin,
            vec![ep("a", 1, 1), ep("b", 1, 1)],
            &[],
            11,
            t0,
        );
        let joined_at = t0 + Duration::from_secs(60);
        // The pool serves traffic when c joins.
        picks(&mut b, joined_at - Duration::from_secs(1), 5);
        let all = vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1)];
        b.update(all.clone(), &BTreeMap::new(), joined_at);

        let state = |b: &Balancer, at: Instant| {
            b.endpoints_at(at)
                .into_iter()
                .find(|s| s.id == "c")
                .expect("c")
                .effective_weight
        };
        assert!((state(&b, joined_at) - 0.1).abs() < 1e-9);
        assert!((state(&b, joined_at + Duration::from_secs(5)) - 0.55).abs() < 1e-9);
        assert!((state(&b, joined_at + Duration::from_secs(10)) - 1.0).abs() < 1e-9);

        // Early: 0.145 / 2.145 ≈ 6.8% instead of 33%.
        let early = picks(&mut b, joined_at + Duration::from_millis(500), 1000);
        let c_early = count(&early, "c");
        assert!((55..=80).contains(&c_early), "{c_early}");
        // Halfway: 0.55 / 2.55 ≈ 21.6%.
        let mid = picks(&mut b, joined_at + Duration::from_secs(5), 1000);
        let c_mid = count(&mid, "c");
        assert!((200..=230).contains(&c_mid), "{c_mid}");
        // After the window: a full third, and a later update keeps it warm.
        let late = joined_at + Duration::from_secs(10);
        b.update(all, &BTreeMap::new(), late);
        let seq = picks(&mut b, late, 3000);
        let c = counts(&seq);
        assert!(c.values().all(|n| (999..=1001).contains(n)), "{c:?}");
    }

    #[test]
    fn replicas_turning_ready_one_by_one_in_an_idle_pool_go_round_in_turn() {
        // `drover dev --apply examples/seed`: three replicas turn healthy a second or so apart,
        // then the first requests arrive, well within the slow-start window.
        let t0 = Instant::now();
        for strategy in [Strategy::RoundRobin, Strategy::LeastConn] {
            for seed in 0..10 {
                let mut b = Balancer::new(strategy, config(), seed);
                let mut endpoints = Vec::new();
                for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
                    endpoints.push(ep(id, 1, 1));
                    let at = t0 + Duration::from_millis(1200 * i as u64);
                    b.update(endpoints.clone(), &BTreeMap::new(), at);
                }
                let now = t0 + Duration::from_secs(3);
                assert!(
                    b.endpoints_at(now)
                        .iter()
                        .all(|s| s.effective_weight == 1.0),
                    "{strategy:?} seed {seed}: {:?}",
                    b.endpoints_at(now)
                );
                if strategy == Strategy::RoundRobin {
                    let seq = picks(&mut b, now, 30);
                    let c = counts(&seq);
                    assert!(
                        c.len() == 3 && c.values().all(|n| *n == 10),
                        "seed {seed}: {c:?}"
                    );
                    // In turn: every three consecutive picks are the three replicas.
                    for w in seq.windows(3) {
                        assert!(w[0] != w[1] && w[1] != w[2] && w[0] != w[2], "{seq:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn an_endpoint_joining_a_serving_pool_ramps_up() {
        let t0 = Instant::now();
        let c_weight = |b: &Balancer, at: Instant| {
            b.endpoints_at(at)
                .into_iter()
                .find(|s| s.id == "c")
                .expect("c")
                .effective_weight
        };
        let two = vec![ep("a", 1, 1), ep("b", 1, 1)];
        let three = vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1)];

        // Requests went to the pool a moment ago: c ramps from 10%.
        let mut b = balancer(Strategy::RoundRobin, two.clone(), &[], 1, t0);
        picks(&mut b, t0 + Duration::from_secs(1), 10);
        let joined = t0 + Duration::from_secs(2);
        b.update(three.clone(), &BTreeMap::new(), joined);
        assert!((c_weight(&b, joined) - 0.1).abs() < 1e-9);
        let early = picks(&mut b, joined, 100);
        assert!(count(&early, "c") <= 6, "{:?}", counts(&early));

        // No new requests, but a long-lived connection is open: the pool still serves.
        let mut b = balancer(Strategy::LeastConn, two.clone(), &[], 1, t0);
        let held = b.pick(t0, &[]).expect("an endpoint").id;
        b.connection_opened(&held);
        let joined = t0 + Duration::from_secs(60);
        b.update(three.clone(), &BTreeMap::new(), joined);
        assert!((c_weight(&b, joined) - 0.1).abs() < 1e-9);

        // The last request was longer ago than the slow-start window: nothing to protect
        // c from, it starts warm.
        let mut b = balancer(Strategy::RoundRobin, two.clone(), &[], 1, t0);
        picks(&mut b, t0, 10);
        let joined = t0 + Duration::from_secs(11);
        b.update(three.clone(), &BTreeMap::new(), joined);
        assert_eq!(c_weight(&b, joined), 1.0);

        // Only members that stay count: when the serving one leaves as c joins, c is the
        // only member and starts warm.
        let mut b = balancer(Strategy::RoundRobin, vec![ep("a", 1, 1)], &[], 1, t0);
        picks(&mut b, t0, 10);
        b.update(vec![ep("c", 1, 1)], &BTreeMap::new(), t0);
        assert_eq!(c_weight(&b, t0), 1.0);

        // Pools are per revision when revisions are weighted: the canary revision's first
        // replica starts warm although revision 1 serves; its second one ramps once the
        // canary serves too.
        let mut b = balancer(
            Strategy::RoundRobin,
            two.clone(),
            &[(1, 90), (2, 10)],
            1,
            t0,
        );
        picks(&mut b, t0, 10);
        let canary = |ids: &[&str]| {
            let mut all = two.clone();
            all.extend(ids.iter().map(|id| ep(id, 2, 1)));
            all
        };
        b.update(canary(&["c"]), &revs(&[(1, 90), (2, 10)]), t0);
        assert_eq!(c_weight(&b, t0), 1.0);
        let seq = picks(&mut b, t0, 100);
        assert_eq!(count(&seq, "c"), 10);
        b.update(canary(&["c", "d"]), &revs(&[(1, 90), (2, 10)]), t0);
        let d = b
            .endpoints_at(t0)
            .into_iter()
            .find(|s| s.id == "d")
            .expect("d");
        assert!((d.effective_weight - 0.1).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn slow_start_off_and_first_update_are_warm() {
        let t0 = Instant::now();
        let mut b = Balancer::new(
            Strategy::RoundRobin,
            BalancerConfig {
                slow_start: Duration::ZERO,
                ..config()
            },
            1,
        );
        b.update(vec![ep("a", 1, 1)], &BTreeMap::new(), t0);
        assert_eq!(b.endpoints()[0].effective_weight, 1.0);
        b.update(vec![ep("a", 1, 1), ep("b", 1, 1)], &BTreeMap::new(), t0);
        assert!(b.endpoints().iter().all(|s| s.effective_weight == 1.0));
        let seq = picks(&mut b, t0, 100);
        assert_eq!(count(&seq, "b"), 50);
    }

    #[test]
    fn ejection_after_three_failures_with_growing_backoff() {
        let t0 = Instant::now();
        let endpoints = vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1)];
        let mut b = balancer(Strategy::RoundRobin, endpoints, &[], 5, t0);
        b.connect_failed("a", t0);
        b.connect_failed("a", t0);
        assert_eq!(
            count(&picks(&mut b, t0, 30), "a"),
            10,
            "two failures: still in"
        );
        b.connect_failed("a", t0);
        let a = |b: &Balancer, at: Instant| {
            b.endpoints_at(at)
                .into_iter()
                .find(|s| s.id == "a")
                .expect("a")
        };
        assert_eq!(a(&b, t0).ejected_until, Some(t0 + Duration::from_secs(1)));
        assert_eq!(a(&b, t0).consecutive_failures, 3);
        let during = picks(&mut b, t0 + Duration::from_millis(999), 300);
        assert_eq!(count(&during, "a"), 0);

        // Back after 1 s; one more failure before any success ejects it for 2 s.
        let t1 = t0 + Duration::from_secs(1);
        assert!(count(&picks(&mut b, t1, 30), "a") >= 9);
        assert_eq!(a(&b, t1).ejected_until, None);
        b.connect_failed("a", t1);
        assert_eq!(a(&b, t1).ejected_until, Some(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(
            count(&picks(&mut b, t2 - Duration::from_millis(1), 30), "a"),
            0
        );
        b.connect_failed("a", t2);
        assert_eq!(a(&b, t2).ejected_until, Some(t2 + Duration::from_secs(4)));
        // Capped at max_ejection.
        let mut t = t2 + Duration::from_secs(4);
        for expected in [8, 16, 30, 30] {
            b.connect_failed("a", t);
            assert_eq!(
                a(&b, t).ejected_until,
                Some(t + Duration::from_secs(expected))
            );
            t += Duration::from_secs(expected);
        }

        // A success resets the count: three new failures are needed.
        b.connect_succeeded("a", t);
        assert_eq!(a(&b, t).consecutive_failures, 0);
        b.connect_failed("a", t);
        b.connect_failed("a", t);
        assert_eq!(a(&b, t).ejected_until, None);
        // Un-ejected for max_ejection: the backoff starts over at 1 s.
        let later = t + Duration::from_secs(30);
        b.connect_failed("a", later);
        assert_eq!(
            a(&b, later).ejected_until,
            Some(later + Duration::from_secs(1))
        );
        // A success lifts an ejection at once.
        b.connect_succeeded("a", later);
        assert_eq!(a(&b, later).ejected_until, None);
    }

    #[test]
    fn ejection_can_be_disabled() {
        let t0 = Instant::now();
        let mut b = Balancer::new(
            Strategy::RoundRobin,
            BalancerConfig {
                eject_after: 0,
                ..config()
            },
            1,
        );
        b.update(vec![ep("a", 1, 1), ep("b", 1, 1)], &BTreeMap::new(), t0);
        for _ in 0..10 {
            b.connect_failed("a", t0);
        }
        assert_eq!(count(&picks(&mut b, t0, 10), "a"), 5);
    }

    #[test]
    fn panic_threshold_spreads_over_all_endpoints() {
        let t0 = Instant::now();
        let endpoints = vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1)];
        let mut b = balancer(Strategy::RoundRobin, endpoints, &[], 2, t0);
        for _ in 0..3 {
            b.connect_failed("a", t0);
        }
        // 2 of 3 healthy (67% ≥ 50%): a is left out.
        let seq = picks(&mut b, t0, 300);
        assert_eq!(count(&seq, "a"), 0);
        assert!((149..=151).contains(&count(&seq, "b")));
        for _ in 0..3 {
            b.connect_failed("b", t0);
        }
        // 1 of 3 healthy (33% < 50%): panic, all three share.
        let seq = picks(&mut b, t0, 300);
        let c = counts(&seq);
        assert!(c.values().all(|n| (99..=101).contains(n)), "{c:?}");
        for strategy in [Strategy::Random, Strategy::LeastConn] {
            b.set_strategy(strategy);
            let seq = picks(&mut b, t0, 3000);
            let c = counts(&seq);
            assert!(c.values().all(|n| (850..=1150).contains(n)), "{c:?}");
        }
    }

    #[test]
    fn exclude_skips_tried_endpoints() {
        let now = Instant::now();
        for strategy in [Strategy::RoundRobin, Strategy::Random, Strategy::LeastConn] {
            let endpoints = vec![ep("a", 1, 1), ep("b", 1, 5), ep("c", 1, 1)];
            let mut b = balancer(strategy, endpoints, &[], 4, now);
            for _ in 0..300 {
                let picked = b.pick(now, &["b"]).expect("a or c");
                assert_ne!(picked.id, "b");
            }
            assert_eq!(b.pick(now, &["a", "b"]).map(|e| e.id), Some("c".to_owned()));
            assert_eq!(b.pick(now, &["a", "b", "c"]), None);
        }
        // Excluded endpoints are never picked, even in panic.
        let mut b = balancer(
            Strategy::RoundRobin,
            vec![ep("a", 1, 1), ep("b", 1, 1)],
            &[],
            1,
            now,
        );
        for _ in 0..3 {
            b.connect_failed("a", now);
            b.connect_failed("b", now);
        }
        assert_eq!(b.pick(now, &["a"]).map(|e| e.id), Some("b".to_owned()));
        assert_eq!(b.pick(now, &["a", "b"]), None);

        // Not in panic (1 of 2 healthy): a first pick avoids the ejected endpoint, but a
        // retry that has tried the healthy one gets the ejected one rather than nothing.
        let mut b = balancer(
            Strategy::RoundRobin,
            vec![ep("a", 1, 1), ep("b", 1, 1)],
            &[],
            1,
            now,
        );
        for _ in 0..3 {
            b.connect_failed("a", now);
        }
        assert!(picks(&mut b, now, 10).iter().all(|id| id == "b"));
        assert_eq!(b.pick(now, &["b"]).map(|e| e.id), Some("a".to_owned()));
    }

    #[test]
    fn least_conn_prefers_fewer_active_connections() {
        let now = Instant::now();
        let mut b = balancer(
            Strategy::LeastConn,
            vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1)],
            &[],
            9,
            now,
        );
        for _ in 0..5 {
            b.connection_opened("a");
        }
        // Any pair contains b or c, both idle.
        assert_eq!(count(&picks(&mut b, now, 1000), "a"), 0);

        // Two endpoints: always the less loaded one.
        let mut b = balancer(
            Strategy::LeastConn,
            vec![ep("a", 1, 1), ep("b", 1, 1)],
            &[],
            9,
            now,
        );
        for _ in 0..3 {
            b.connection_opened("a");
        }
        b.connection_opened("b");
        assert!(picks(&mut b, now, 100).iter().all(|id| id == "b"));
        b.connection_closed("a");
        b.connection_closed("a");
        b.connection_opened("b");
        assert!(picks(&mut b, now, 100).iter().all(|id| id == "a"));

        // Load is active / weight: a (weight 3, 2 open) beats b (weight 1, 1 open).
        let mut b = balancer(
            Strategy::LeastConn,
            vec![ep("a", 1, 3), ep("b", 1, 1)],
            &[],
            9,
            now,
        );
        b.connection_opened("a");
        b.connection_opened("a");
        b.connection_opened("b");
        assert!(picks(&mut b, now, 100).iter().all(|id| id == "a"));
        assert_eq!(b.endpoints()[0].active, 2);

        // Idle pools are not skewed towards low ids.
        let mut b = balancer(
            Strategy::LeastConn,
            vec![ep("a", 1, 1), ep("b", 1, 1), ep("c", 1, 1)],
            &[],
            9,
            now,
        );
        let c = counts(&picks(&mut b, now, 3000));
        assert!(c.values().all(|n| (900..=1100).contains(n)), "{c:?}");
    }

    #[test]
    fn seeds_change_first_picks_not_proportions() {
        let now = Instant::now();
        let endpoints: Vec<Endpoint> = "abcdefghij"
            .chars()
            .map(|c| ep(&c.to_string(), 1, 1))
            .collect();
        for strategy in [Strategy::RoundRobin, Strategy::Random, Strategy::LeastConn] {
            let mut firsts = std::collections::BTreeSet::new();
            for seed in 0..20 {
                let mut b = balancer(strategy, endpoints.clone(), &[], seed, now);
                firsts.insert(b.pick(now, &[]).expect("one").id);
                let c = counts(&picks(&mut b, now, 10_000));
                assert_eq!(c.len(), 10);
                for n in c.values() {
                    if strategy == Strategy::RoundRobin {
                        assert!((999..=1001).contains(n), "{c:?}");
                    } else {
                        assert!((800..=1200).contains(n), "{strategy:?}: {c:?}");
                    }
                }
            }
            assert!(firsts.len() >= 4, "{strategy:?}: {firsts:?}");
        }
        // Same seed, same choices.
        let mut x = balancer(Strategy::Random, endpoints.clone(), &[], 42, now);
        let mut y = balancer(Strategy::Random, endpoints, &[], 42, now);
        assert_eq!(picks(&mut x, now, 100), picks(&mut y, now, 100));
    }

    #[test]
    fn nothing_eligible_gives_none() {
        let now = Instant::now();
        let mut b = Balancer::new(Strategy::RoundRobin, config(), 0);
        assert_eq!(b.pick(now, &[]), None);
        b.update(Vec::new(), &BTreeMap::new(), now);
        assert_eq!(b.pick(now, &[]), None);
        b.update(vec![ep("a", 1, 0)], &BTreeMap::new(), now);
        assert_eq!(b.pick(now, &[]), None, "weight 0 drains");
        b.update(vec![ep("a", 1, 1)], &revs(&[(2, 100)]), now);
        assert_eq!(b.pick(now, &[]), None, "revision 1 gets no weight");
        b.update(vec![ep("a", 1, 1)], &revs(&[(1, 0), (2, 100)]), now);
        assert_eq!(b.pick(now, &[]), None);
        b.update(vec![ep("a", 1, 1)], &revs(&[(1, 1)]), now);
        assert_eq!(b.pick(now, &[]).map(|e| e.id), Some("a".to_owned()));
    }

    #[test]
    fn revisions_without_eligible_endpoints_are_skipped() {
        let now = Instant::now();
        for strategy in [Strategy::RoundRobin, Strategy::Random, Strategy::LeastConn] {
            let mut b = balancer(strategy, canary_endpoints(), &[(1, 90), (2, 10)], 3, now);
            for _ in 0..3 {
                b.connect_failed("d", now);
            }
            // 3 of 4 healthy: no panic; the canary's share goes to revision 1.
            let seq = picks(&mut b, now, 1000);
            assert_eq!(count(&seq, "d"), 0);
            // A retry that already tried all of revision 1 gets the ejected canary as a last
            // resort rather than nothing.
            assert_eq!(
                b.pick(now, &["a", "b", "c"]).map(|e| e.id),
                Some("d".to_owned())
            );
            // The canary recovers and is back to 10%.
            let later = now + Duration::from_secs(1);
            let seq = picks(&mut b, later, 1000);
            assert!((80..=120).contains(&count(&seq, "d")), "{strategy:?}");
            assert_eq!(b.pick(later, &["d"]).map(|e| e.revision), Some(1));
            assert_eq!(
                b.pick(later, &["a", "b", "c"]).map(|e| e.id),
                Some("d".to_owned())
            );

            // A revision with weight 0 gets nothing.
            b.update(canary_endpoints(), &revs(&[(1, 0), (2, 10)]), later);
            assert!(picks(&mut b, later, 100).iter().all(|id| id == "d"));
        }
    }

    #[test]
    fn endpoint_weights_apply_within_a_revision() {
        let now = Instant::now();
        let endpoints = vec![ep("a", 1, 3), ep("b", 1, 1), ep("c", 2, 1)];
        let mut b = balancer(Strategy::RoundRobin, endpoints, &[(1, 50), (2, 50)], 1, now);
        let c = counts(&picks(&mut b, now, 800));
        assert_eq!((c["a"], c["b"], c["c"]), (300, 100, 400));
    }

    #[test]
    fn state_survives_updates_and_removed_endpoints_vanish() {
        let t0 = Instant::now();
        let mut b = balancer(
            Strategy::LeastConn,
            vec![ep("a", 1, 1), ep("b", 1, 1)],
            &[],
            1,
            t0,
        );
        b.connection_opened("a");
        b.connection_opened("a");
        for _ in 0..3 {
            b.connect_failed("b", t0);
        }
        let moved = Endpoint {
            address: SocketAddr::from(([10, 0, 0, 9], 80)),
            ..ep("a", 1, 1)
        };
        b.update(vec![moved.clone(), ep("b", 1, 1)], &BTreeMap::new(), t0);
        let states = b.endpoints();
        assert_eq!(states[0].active, 2);
        assert_eq!(states[0].address, moved.address);
        assert_eq!(
            states[0].effective_weight, 1.0,
            "no slow start for a survivor"
        );
        assert!(states[1].ejected_until.is_some());

        // Removal: a disappears; its connections closing later do not leak into a newcomer.
        b.update(vec![ep("b", 1, 1)], &BTreeMap::new(), t0);
        assert_eq!(b.endpoints().len(), 1);
        assert_eq!(b.pick(t0, &[]).map(|e| e.id), Some("b".to_owned()));
        b.connection_closed("a");
        b.update(vec![ep("a", 1, 1), ep("b", 1, 1)], &BTreeMap::new(), t0);
        assert_eq!(b.endpoints()[0].active, 1, "one connection still open to a");
        assert!(
            b.endpoints()[0].effective_weight < 1.0,
            "a returns warming up"
        );
        b.connection_closed("a");
        b.connection_closed("a");
        assert_eq!(b.endpoints()[0].active, 0);
    }
}
