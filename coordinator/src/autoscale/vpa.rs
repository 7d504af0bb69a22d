//! The Kubernetes VerticalPodAutoscaler's recommender, as a pure state machine: what
//! operators know from Kubernetes is what Drover recommends (kubernetes/autoscaler,
//! `vertical-pod-autoscaler/pkg/recommender`: util/decaying_histogram.go, histogram.go and
//! histogram_options.go; model/aggregate_container_state.go, aggregations_config.go and
//! container.go; logic/recommender.go and estimator.go; the policy clamp of
//! `pkg/utils/vpa/capping.go`).
//!
//! - Usage goes into two decaying histograms with exponential buckets (5 % wider each):
//!   CPU in cores (first bucket 0.01, up to 1000), one sample per report, weighed by the
//!   replica's request (at least 0.1 core); memory in bytes (first bucket 1e7, up to 1e12),
//!   one *peak* per replica per aggregation interval (24 h): a larger sample in the same
//!   interval replaces the interval's peak (the old one is subtracted), a sample of a later
//!   interval starts a new peak and leaves the old one in the histogram. A sample's weight
//!   is multiplied by `2^((t − reference) / half-life)`; the reference moves forward (and
//!   every weight is rescaled) once an exponent would pass 100, so nothing overflows however
//!   long the history.
//! - An OOM kill adds a memory peak of `max(m × 1.2, m + 100 MiB)`, `m` the larger of the
//!   limit and the interval's usage peak (`RecordOOM`).
//! - [`Recommender::recommend`]: target, lower and upper bound are the 90th, 50th and 95th
//!   percentiles (a percentile is the *end* of the bucket where the cumulative weight reaches
//!   it) plus a 15 % margin; the upper bound is then multiplied by `1 + 1/confidence` and the
//!   lower by `(1 + 0.001/confidence)^−2`, `confidence` the history's length in days; then
//!   the floors (25 millicores, 250 MiB) and last the policy's minimum and maximum (the
//!   maximum wins, even below the floors).
//! - Peaks older than `memory_intervals` intervals are not subtracted: VPA relies on the
//!   decay (after 8 half-lives a peak weighs 1/256 of a fresh one), and so does Drover. A
//!   history without a sample for `memory_interval_ms × memory_intervals` (8 days) is
//!   forgotten, as VPA's garbage collection drops such an aggregate.
//!
//! Where Drover differs, and why:
//! - Confidence is the time from the first CPU sample to `now`. VPA takes the smaller of
//!   the first-to-last-sample span and `samples / 1440` (days at one sample a minute); Drover
//!   reports every few seconds without gaps, so the span is always the smaller.
//! - CPU samples weigh `max(request, 0.1 core)`, as VPA up to 1.3 did. VPA 1.4 (Feb. 2025)
//!   weighs every sample 0.1; a caller passing `cpu_request_millis = 0` gets that.
//! - The OOM bump starts from the replica's memory *limit* (Drover reserves memory as a
//!   limit); VPA's OOM observer passes the container's request.
//! - A usage peak of 0 bytes is replaced by a later larger sample of the same interval; VPA
//!   skips the replacement when the old peak is 0, leaving the interval at 0.
//! - An unbounded upper bound is `u64::MAX` (VPA caps every amount at 1e14).
//! - VPA divides the floors among a pod's containers; a Drover replica is one container.
//!
//! Amounts are integers (millicores, bytes) and converted from the histograms' floats by
//! truncation, the margin and confidence factors applied to the integer, as VPA's
//! `ScaleResource` does; Rust's `as` saturates (and maps NaN to 0), so no conversion can
//! wrap. A bucket boundary is `first × (1.05^n − 1) / 0.05`; Go's `math.Pow` and Rust's
//! `powf` may differ in the last bit, which only matters for a boundary within a rounding
//! error of a whole millicore or byte. Time is passed in as milliseconds (any epoch), so a
//! replay is deterministic.

use std::collections::BTreeMap;

use drover_proto::model::Resources;

/// Milliseconds on the caller's clock.
pub type Millis = u64;

const DAY: Millis = 24 * 60 * 60 * 1000;
const MIB: u64 = 1024 * 1024;

/// Each bucket is this much wider than the previous one (`HistogramBucketSizeGrowth`).
pub const BUCKET_RATIO: f64 = 1.05;
/// The CPU histogram's first bucket, in cores.
pub const CPU_FIRST_BUCKET_CORES: f64 = 0.01;
/// The CPU histogram's last bucket starts at or above this many cores.
pub const CPU_MAX_CORES: f64 = 1000.0;
/// The memory histogram's first bucket, in bytes.
pub const MEMORY_FIRST_BUCKET_BYTES: f64 = 1e7;
/// The memory histogram's last bucket starts at or above this many bytes.
pub const MEMORY_MAX_BYTES: f64 = 1e12;
/// The least weight of a CPU sample, in cores of request (`minSampleWeight`).
pub const MIN_SAMPLE_WEIGHT: f64 = 0.1;
/// A bucket lighter than this counts as empty (`epsilon = 0.001 × minSampleWeight`).
pub const EPSILON: f64 = 0.001 * MIN_SAMPLE_WEIGHT;
/// The percentile of the target (`--target-cpu-percentile`, `--target-memory-percentile`).
pub const TARGET_PERCENTILE: f64 = 0.9;
/// The percentile of the lower bound (`--recommendation-lower-bound-*-percentile`).
pub const LOWER_BOUND_PERCENTILE: f64 = 0.5;
/// The percentile of the upper bound (`--recommendation-upper-bound-*-percentile`).
pub const UPPER_BOUND_PERCENTILE: f64 = 0.95;
/// An OOM kill's memory is this much more than the memory used (`--oom-bump-up-ratio`).
pub const OOM_BUMP_UP_RATIO: f64 = 1.2;
/// ... and at least this much more, in bytes (`--oom-min-bump-up-bytes`).
pub const OOM_MIN_BUMP_UP_BYTES: u64 = 100 * MIB;
/// The unit of confidence: one day of history is a confidence of 1
/// (`--confidence-interval-cpu`, `--confidence-interval-memory`).
pub const CONFIDENCE_INTERVAL: Millis = DAY;
/// Renormalise a histogram before a decay exponent passes this (`maxDecayExponent`).
const MAX_DECAY_EXPONENT: i128 = 100;

/// The recommender's settings (VPA's flags of the same meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// A CPU sample loses half its weight in this time (`--cpu-histogram-decay-half-life`);
    /// 0: no decay.
    pub cpu_half_life_ms: Millis,
    /// A memory peak loses half its weight in this time
    /// (`--memory-histogram-decay-half-life`); 0: no decay.
    pub memory_half_life_ms: Millis,
    /// Each replica records one memory peak per interval this long
    /// (`--memory-aggregation-interval`).
    pub memory_interval_ms: Millis,
    /// The history is forgotten after this many intervals without a sample
    /// (`--memory-aggregation-interval-count`); with `memory_interval_ms`, 0 never forgets.
    pub memory_intervals: u32,
    /// Added to every percentile, as a fraction (`--recommendation-margin-fraction`); a
    /// negative or NaN margin adds nothing.
    pub margin: f64,
    /// The least CPU of the target and bounds (`--pod-recommendation-min-cpu-millicores`).
    pub min_cpu_millis: u64,
    /// The least memory of the target and bounds (`--pod-recommendation-min-memory-mb`).
    pub min_memory_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cpu_half_life_ms: DAY,
            memory_half_life_ms: DAY,
            memory_interval_ms: DAY,
            memory_intervals: 8,
            margin: 0.15,
            min_cpu_millis: 25,
            min_memory_bytes: 250 * MIB,
        }
    }
}

/// What the recommender proposes for each replica of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// The resources to give a replica.
    pub target: Resources,
    /// Below this a replica is short of resources (VPA's updater evicts under it).
    pub lower: Resources,
    /// Above this a replica wastes resources (VPA's updater evicts over it).
    pub upper: Resources,
}

/// The usage history of one workload's replicas (VPA's `AggregateContainerState` with the
/// per-container `ContainerState`s feeding it).
#[derive(Debug, Clone)]
pub struct Recommender {
    config: Config,
    cpu: Histogram,
    memory: Histogram,
    replicas: BTreeMap<String, ReplicaState>,
    /// The earliest accepted CPU sample (`FirstSampleStart`).
    first_sample: Option<Millis>,
    /// The latest accepted CPU sample (`LastSampleStart`).
    last_sample: Option<Millis>,
    /// When the history began, sample or OOM (`CreationTime`, for expiry without samples).
    created: Option<Millis>,
}

/// One replica's state (`ContainerState`).
#[derive(Debug, Clone, Copy, Default)]
struct ReplicaState {
    /// The latest CPU sample taken: others no later are duplicates (`LastCPUSampleStart`).
    last_cpu: Option<Millis>,
    /// The latest memory sample taken: earlier ones are stale (`lastMemorySampleStart`).
    last_memory: Option<Millis>,
    /// The end of the current memory interval, exclusive (`WindowEnd`); the interval's peak
    /// is in the histogram at this time.
    window_end: Option<Millis>,
    /// The largest usage sample of the interval (`memoryPeak`).
    memory_peak: u64,
    /// The largest OOM estimate of the interval (`oomPeak`).
    oom_peak: u64,
}

impl ReplicaState {
    /// The interval's peak as recorded in the histogram (`GetMaxMemoryPeak`).
    fn max_peak(&self) -> u64 {
        self.memory_peak.max(self.oom_peak)
    }
}

impl Recommender {
    /// An empty history.
    pub fn new(config: Config) -> Self {
        Recommender {
            config,
            cpu: Histogram::new(
                CPU_MAX_CORES,
                CPU_FIRST_BUCKET_CORES,
                config.cpu_half_life_ms,
            ),
            memory: Histogram::new(
                MEMORY_MAX_BYTES,
                MEMORY_FIRST_BUCKET_BYTES,
                config.memory_half_life_ms,
            ),
            replicas: BTreeMap::new(),
            first_sample: None,
            last_sample: None,
            created: None,
        }
    }

    /// One usage sample of one replica: CPU in millicores averaged over the agent's
    /// interval, memory working set in bytes; `cpu_request_millis` the replica's request
    /// (weight).
    ///
    /// As VPA, a CPU sample no later than the replica's previous one is dropped as a
    /// duplicate, and a memory sample earlier than its previous one as stale.
    pub fn add_sample(
        &mut self,
        replica: &str,
        cpu_millis: u64,
        cpu_request_millis: u64,
        memory_bytes: u64,
        at_ms: Millis,
    ) {
        self.forget_if_expired(at_ms);
        self.created.get_or_insert(at_ms);
        let interval = self.config.memory_interval_ms;
        let state = self.replicas.entry(replica.to_owned()).or_default();
        if state.last_cpu.is_none_or(|last| at_ms > last) {
            state.last_cpu = Some(at_ms);
            // Millicores to cores (`CoresFromCPUAmount`); u64 to f64 rounds only past 2^53
            // millicores, deep in the last bucket.
            let weight = (cpu_request_millis as f64 / 1000.0).max(MIN_SAMPLE_WEIGHT);
            self.cpu.add(cpu_millis as f64 / 1000.0, weight, at_ms);
            self.first_sample = Some(self.first_sample.map_or(at_ms, |t| t.min(at_ms)));
            self.last_sample = Some(self.last_sample.map_or(at_ms, |t| t.max(at_ms)));
        }
        add_memory_peak(
            state,
            &mut self.memory,
            interval,
            memory_bytes,
            at_ms,
            false,
        );
    }

    /// An OOM kill of `replica` whose memory limit was `limit_bytes`.
    ///
    /// As VPA, a kill from more than an interval before the replica's latest memory sample
    /// is dropped as too old.
    pub fn record_oom(&mut self, replica: &str, limit_bytes: u64, at_ms: Millis) {
        self.forget_if_expired(at_ms);
        self.created.get_or_insert(at_ms);
        let interval = self.config.memory_interval_ms;
        let state = self.replicas.entry(replica.to_owned()).or_default();
        if let Some(last) = state.last_memory
            && at_ms < last.saturating_sub(interval)
        {
            return;
        }
        // The interval's usage peak counts, its OOM peak not, so that repeated kills do not
        // compound.
        let used = limit_bytes.max(state.memory_peak);
        let needed = used
            .saturating_add(OOM_MIN_BUMP_UP_BYTES)
            .max(scale(used, OOM_BUMP_UP_RATIO));
        add_memory_peak(state, &mut self.memory, interval, needed, at_ms, true);
    }

    /// Forgets replica-specific state of replicas not in `alive` (their past samples stay in
    /// the histograms, as in VPA).
    pub fn retain_replicas(&mut self, alive: impl Fn(&str) -> bool) {
        self.replicas.retain(|id, _| alive(id));
    }

    /// The recommendation at `now_ms`, clamped to [min_allowed, max_allowed] (a 0 dimension
    /// = no bound), or None without samples.
    ///
    /// Also None once the history has expired (no sample for `memory_interval_ms ×
    /// memory_intervals`). With OOM kills but no usage sample yet, CPU is at the floor and
    /// memory from the kills, as in VPA.
    pub fn recommend(
        &self,
        now_ms: Millis,
        min_allowed: Resources,
        max_allowed: Resources,
    ) -> Option<Recommendation> {
        if (self.cpu.is_empty() && self.memory.is_empty()) || self.expired(now_ms) {
            return None;
        }
        // Days of history, as a float: exact enough for any span (2^53 ms is 285 000 years).
        let confidence = self.first_sample.map_or(0.0, |first| {
            now_ms.saturating_sub(first) as f64 / CONFIDENCE_INTERVAL as f64
        });
        let config = &self.config;
        // Percentiles to amounts, truncated as VPA's `CPUAmountFromCores` and
        // `MemoryAmountFromBytes` (an empty histogram gives 0, then the floor).
        let cpu = |p: f64| with_margin((self.cpu.percentile(p) * 1000.0) as u64, config.margin);
        let memory = |p: f64| with_margin(self.memory.percentile(p) as u64, config.margin);
        let resources = |cpu_millis: u64, memory_bytes: u64| Resources {
            cpu_millis: cpu_millis.max(config.min_cpu_millis),
            memory_bytes: memory_bytes.max(config.min_memory_bytes),
        };
        let target = resources(cpu(TARGET_PERCENTILE), memory(TARGET_PERCENTILE));
        let lower = resources(
            lower_confidence(cpu(LOWER_BOUND_PERCENTILE), confidence),
            lower_confidence(memory(LOWER_BOUND_PERCENTILE), confidence),
        );
        let upper = resources(
            upper_confidence(cpu(UPPER_BOUND_PERCENTILE), confidence),
            upper_confidence(memory(UPPER_BOUND_PERCENTILE), confidence),
        );
        let bounded = |r: Resources| Resources {
            cpu_millis: clamp(r.cpu_millis, min_allowed.cpu_millis, max_allowed.cpu_millis),
            memory_bytes: clamp(
                r.memory_bytes,
                min_allowed.memory_bytes,
                max_allowed.memory_bytes,
            ),
        };
        Some(Recommendation {
            target: bounded(target),
            lower: bounded(lower),
            upper: bounded(upper),
        })
    }

    /// Whether VPA's garbage collection would have dropped this history by `now`
    /// (`isExpired`): no CPU sample, or no event at all when there never was a sample, for
    /// the memory aggregation window.
    fn expired(&self, now: Millis) -> bool {
        let window = self
            .config
            .memory_interval_ms
            .saturating_mul(u64::from(self.config.memory_intervals));
        if window == 0 {
            return false;
        }
        match self.last_sample.or(self.created) {
            Some(last) => now.saturating_sub(last) >= window,
            None => false,
        }
    }

    /// Starts afresh if the history has expired by `now`.
    fn forget_if_expired(&mut self, now: Millis) {
        if self.expired(now) {
            *self = Recommender::new(self.config);
        }
    }
}

/// Takes a memory sample (or an OOM estimate) of one replica into its interval's peak
/// (`ContainerState.addMemorySample`).
fn add_memory_peak(
    state: &mut ReplicaState,
    histogram: &mut Histogram,
    interval: Millis,
    bytes: u64,
    at: Millis,
    oom: bool,
) {
    if !oom && state.last_memory.is_some_and(|last| at < last) {
        return;
    }
    state.last_memory = Some(at);
    let window_end = *state.window_end.get_or_insert(at);
    // Bytes as a float: exact below 2^53 (8 PiB), past the last bucket's start anyway.
    let add = if at < window_end {
        let old = state.max_peak();
        // VPA also requires `old != 0`; every interval records its first sample, so a zero
        // peak is in the histogram too and is replaced like any other.
        if bytes > old {
            histogram.subtract(old as f64, 1.0, window_end);
        }
        bytes > old
    } else {
        // The next interval containing `at`: whole intervals past the current end, plus one
        // (with a 0 interval, every sample is its own interval).
        let late = at - window_end;
        let skipped = match interval {
            0 => late,
            _ => late - late % interval,
        };
        state.window_end = Some(window_end.saturating_add(skipped).saturating_add(interval));
        state.memory_peak = 0;
        state.oom_peak = 0;
        true
    };
    if add {
        let end = state.window_end.unwrap_or(at);
        histogram.add(bytes as f64, 1.0, end);
        if oom {
            state.oom_peak = bytes;
        } else {
            state.memory_peak = bytes;
        }
    }
}

/// `amount × factor`, truncated and saturated (`ScaleResource`): a negative or NaN product
/// is 0, one past `u64::MAX` is `u64::MAX`.
fn scale(amount: u64, factor: f64) -> u64 {
    (amount as f64 * factor) as u64
}

/// `amount` plus the margin (`cpuMarginEstimator`, `memoryMarginEstimator`).
fn with_margin(amount: u64, margin: f64) -> u64 {
    amount.saturating_add(scale(amount, margin))
}

/// The upper bound's confidence factor, `(1 + 1/confidence)^1`; without history (confidence
/// 0) unbounded, as VPA's `+Inf`.
fn upper_confidence(amount: u64, confidence: f64) -> u64 {
    if confidence > 0.0 {
        scale(amount, 1.0 + 1.0 / confidence)
    } else {
        u64::MAX
    }
}

/// The lower bound's confidence factor, `(1 + 0.001/confidence)^−2`; without history
/// (confidence 0) 0, as VPA's `+Inf^−2`.
fn lower_confidence(amount: u64, confidence: f64) -> u64 {
    if confidence > 0.0 {
        scale(amount, (1.0 + 0.001 / confidence).powi(-2))
    } else {
        0
    }
}

/// The policy's bounds, the minimum first so that the maximum wins (`applyVPAPolicy`);
/// 0 is no bound.
fn clamp(amount: u64, min: u64, max: u64) -> u64 {
    let amount = if min != 0 { amount.max(min) } else { amount };
    if max != 0 { amount.min(max) } else { amount }
}

/// A histogram with exponential buckets whose samples decay (`decayingHistogram` over
/// `histogram` with `exponentialHistogramOptions`).
#[derive(Debug, Clone)]
struct Histogram {
    /// The first bucket's size; bucket `n` is `BUCKET_RATIO^n` times as wide.
    first_bucket: f64,
    /// Each bucket's weight.
    weights: Vec<f64>,
    /// The sum of the weights.
    total: f64,
    /// The first bucket of weight at least `EPSILON`, or the last bucket.
    min_bucket: usize,
    /// The last bucket of weight at least `EPSILON`, or 0.
    max_bucket: usize,
    /// The decay's half-life; 0: no decay.
    half_life: Millis,
    /// The time at which a sample weighs its own weight, a multiple of `half_life`; set by
    /// the first sample. `i128`, as rounding up to a multiple may pass `u64::MAX`.
    reference: Option<i128>,
}

impl Histogram {
    /// Buckets from 0 to the first starting at or above `max_value`
    /// (`NewExponentialHistogramOptions`): 176 for both CPU and memory.
    fn new(max_value: f64, first_bucket: f64, half_life: Millis) -> Self {
        let buckets = ((max_value * (BUCKET_RATIO - 1.0) / first_bucket + 1.0).ln()
            / BUCKET_RATIO.ln())
        .ceil() as usize
            + 1;
        Histogram {
            first_bucket,
            weights: vec![0.0; buckets],
            total: 0.0,
            min_bucket: buckets - 1,
            max_bucket: 0,
            half_life,
            reference: None,
        }
    }

    fn last_bucket(&self) -> usize {
        self.weights.len() - 1
    }

    /// The bucket of `value` (`FindBucket`): `floor(log_ratio(value × (ratio − 1) / first +
    /// 1))`, at most the last. The float-to-index cast saturates.
    fn bucket(&self, value: f64) -> usize {
        if value < self.first_bucket {
            return 0;
        }
        let bucket = ((value * (BUCKET_RATIO - 1.0) / self.first_bucket + 1.0).ln()
            / BUCKET_RATIO.ln()) as usize;
        bucket.min(self.last_bucket())
    }

    /// Where `bucket` starts (`GetBucketStart`): `first × (ratio^bucket − 1) / (ratio − 1)`.
    fn bucket_start(&self, bucket: usize) -> f64 {
        if bucket == 0 {
            return 0.0;
        }
        self.first_bucket * (BUCKET_RATIO.powf(bucket as f64) - 1.0) / (BUCKET_RATIO - 1.0)
    }

    /// Adds `weight` (before decay) at `value`.
    fn add(&mut self, value: f64, weight: f64, at: Millis) {
        let weight = weight * self.decay(at);
        let bucket = self.bucket(value);
        self.weights[bucket] += weight;
        self.total += weight;
        if bucket < self.min_bucket && self.weights[bucket] >= EPSILON {
            self.min_bucket = bucket;
        }
        if bucket > self.max_bucket && self.weights[bucket] >= EPSILON {
            self.max_bucket = bucket;
        }
    }

    /// Removes `weight` (before decay) at `value`, clamping what is left below `EPSILON` to
    /// 0 (`SubtractSample`, `safeSubtract`).
    fn subtract(&mut self, value: f64, weight: f64, at: Millis) {
        let weight = weight * self.decay(at);
        let bucket = self.bucket(value);
        let safe = |w: f64| {
            if w - weight < EPSILON {
                0.0
            } else {
                w - weight
            }
        };
        self.total = safe(self.total);
        self.weights[bucket] = safe(self.weights[bucket]);
        self.update_min_max();
    }

    /// Whether no bucket has weight (`IsEmpty`).
    fn is_empty(&self) -> bool {
        self.weights[self.min_bucket] < EPSILON
    }

    /// The end of the bucket in which the cumulative weight reaches `p` of the total (the
    /// start of the last bucket, which has no end); 0 when empty (`Percentile`).
    fn percentile(&self, p: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let threshold = p * self.total;
        let mut partial = 0.0;
        let mut bucket = self.min_bucket;
        while bucket < self.max_bucket {
            partial += self.weights[bucket];
            if partial >= threshold {
                break;
            }
            bucket += 1;
        }
        if bucket < self.last_bucket() {
            self.bucket_start(bucket + 1)
        } else {
            self.bucket_start(bucket)
        }
    }

    /// The weight factor of a sample at `at`, `2^((at − reference) / half_life)`, moving the
    /// reference to `at` first when the exponent would pass `MAX_DECAY_EXPONENT` (or on the
    /// first sample) (`decayFactor`). A sample long before the reference weighs 0, never
    /// infinity.
    fn decay(&mut self, at: Millis) -> f64 {
        if self.half_life == 0 {
            return 1.0;
        }
        let half_life = i128::from(self.half_life);
        let at = i128::from(at);
        let reference = match self.reference {
            Some(reference) if at <= reference + half_life * MAX_DECAY_EXPONENT => reference,
            _ => self.shift_reference(at),
        };
        ((at - reference) as f64 / half_life as f64).exp2()
    }

    /// Moves the reference to `at` rounded to a multiple of the half-life (halves up, as
    /// Go's `Time.Round`), rescaling every weight by the whole number of half-lives moved
    /// (`shiftReferenceTimestamp`). Buckets falling below `EPSILON` become empty.
    fn shift_reference(&mut self, at: i128) -> i128 {
        let half_life = i128::from(self.half_life.max(1));
        let rest = at.rem_euclid(half_life);
        let reference = if 2 * rest >= half_life {
            at - rest + half_life
        } else {
            at - rest
        };
        if let Some(old) = self.reference {
            let exponent = (old - reference) / half_life;
            self.scale(f64::exp2(exponent as f64));
        }
        self.reference = Some(reference);
        reference
    }

    /// Multiplies every weight by `factor`, non-negative (`scale`).
    fn scale(&mut self, factor: f64) {
        for bucket in self.min_bucket..=self.max_bucket {
            self.weights[bucket] *= factor;
        }
        self.total *= factor;
        self.update_min_max();
    }

    /// Narrows `min_bucket` and `max_bucket` after weights decreased
    /// (`updateMinAndMaxBucket`).
    fn update_min_max(&mut self) {
        let last = self.last_bucket();
        while self.weights[self.min_bucket] < EPSILON && self.min_bucket < last {
            self.min_bucket += 1;
        }
        while self.weights[self.max_bucket] < EPSILON && self.max_bucket > 0 {
            self.max_bucket -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
