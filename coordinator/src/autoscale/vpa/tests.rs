//! The recommender against cases worked by hand from VPA's algorithm.
//!
//! Bucket boundaries are `first × (1.05^n − 1) / 0.05`, so with first buckets of 0.01 core
//! and 1e7 bytes they are `0.2 × (1.05^n − 1)` cores and `2e8 × (1.05^n − 1)` bytes. The
//! numbers used below (checked with [`bucket_end`], which walks the boundaries instead of
//! taking the logarithm the histogram uses):
//!
//! | usage   | bucket | its end (truncated) | + 15 % (truncated) |
//! | ------- | ------ | ------------------- | ------------------ |
//! | 100m    | 8      | 110m                | 126m               |
//! | 200m    | 14     | 215m                | 247m               |
//! | 1000m   | 36     | 1016m               | 1168m              |
//! | 80 MiB  | 7      | 95 491 088          | 109 814 751        |
//! | 164 MiB | 12     | 177 129 828         | 203 699 302        |
//! | 300 MiB | 19     | 330 659 541         | 380 258 472        |
//! | 400 MiB | 23     | 445 019 988         | 511 772 986        |
//! | 600 MiB | 29     | 664 388 475         | 764 046 746        |

use super::*;

const HOUR: Millis = 60 * 60 * 1000;
/// A multiple of the one-day half-life, so that a histogram whose first sample is at `T0`
/// (or a whole number of days later) has its reference there and weighs that sample 1.
const T0: Millis = 100 * DAY;
const NONE: Resources = Resources {
    cpu_millis: 0,
    memory_bytes: 0,
};

/// The end of the bucket containing `value`, walking up the boundaries.
fn bucket_end(first: f64, value: f64) -> f64 {
    let start = |n: i32| first * (1.05f64.powi(n) - 1.0) / 0.05;
    let mut n = 1;
    while start(n) <= value {
        n += 1;
    }
    start(n)
}

fn cpu_end_millis(millis: u64) -> u64 {
    (bucket_end(0.01, millis as f64 / 1000.0) * 1000.0) as u64
}

fn memory_end(bytes: u64) -> u64 {
    bucket_end(1e7, bytes as f64) as u64
}

fn mib(n: u64) -> u64 {
    n * MIB
}

/// The default settings without floors, so that small memory peaks show.
fn no_floors() -> Config {
    Config {
        min_cpu_millis: 0,
        min_memory_bytes: 0,
        ..Config::default()
    }
}

fn recommend(r: &Recommender, now: Millis) -> Recommendation {
    r.recommend(now, NONE, NONE).expect("a recommendation")
}

#[test]
fn the_table_matches_the_bucket_formula() {
    assert_eq!(cpu_end_millis(100), 110);
    assert_eq!(cpu_end_millis(200), 215);
    assert_eq!(cpu_end_millis(1000), 1016);
    assert_eq!(memory_end(mib(80)), 95_491_088);
    assert_eq!(memory_end(mib(164)), 177_129_828);
    assert_eq!(memory_end(mib(300)), 330_659_541);
    assert_eq!(memory_end(mib(400)), 445_019_988);
    assert_eq!(memory_end(mib(600)), 664_388_475);
    // And the histogram's own boundaries agree.
    let cpu = Histogram::new(CPU_MAX_CORES, CPU_FIRST_BUCKET_CORES, DAY);
    assert_eq!(cpu.weights.len(), 176);
    assert_eq!(cpu.bucket(0.2), 14);
    assert_eq!((cpu.bucket_start(15) * 1000.0) as u64, 215);
    let memory = Histogram::new(MEMORY_MAX_BYTES, MEMORY_FIRST_BUCKET_BYTES, DAY);
    assert_eq!(memory.weights.len(), 176);
    assert_eq!(memory.bucket(mib(300) as f64), 19);
}

#[test]
fn a_week_of_constant_usage() {
    // 200m and 300 MiB every hour for a week: every percentile is the same bucket's end.
    let mut r = Recommender::new(Config::default());
    for hour in 0..=7 * 24 {
        r.add_sample("r0", 200, 500, mib(300), T0 + hour * HOUR);
    }
    let rec = recommend(&r, T0 + 7 * DAY);
    // Target: 215m + 32m (15 % of 215, truncated); 330 659 541 + 49 598 931 bytes.
    assert_eq!(
        rec.target,
        Resources {
            cpu_millis: 247,
            memory_bytes: 380_258_472
        }
    );
    // Upper: × (1 + 1/7) for seven days: 282.28…m, 434 581 110.86 bytes.
    assert_eq!(
        rec.upper,
        Resources {
            cpu_millis: 282,
            memory_bytes: 434_581_110
        }
    );
    // Lower: × (1 + 0.001/7)^−2 = 0.999714…: 246.93m, 380 149 849.999 bytes.
    assert_eq!(
        rec.lower,
        Resources {
            cpu_millis: 246,
            memory_bytes: 380_149_849
        }
    );
}

#[test]
fn half_a_day_triples_the_upper_bound() {
    // VPA's comment in recommender.go: "12h history: *3".
    let mut r = Recommender::new(Config::default());
    for hour in 0..=12 {
        r.add_sample("r0", 200, 500, mib(300), T0 + hour * HOUR);
    }
    let rec = recommend(&r, T0 + 12 * HOUR);
    assert_eq!(rec.upper.cpu_millis, 3 * 247);
    assert_eq!(rec.upper.memory_bytes, 3 * 380_258_472);
}

#[test]
fn a_growing_replica_has_one_peak_per_interval() {
    let mut r = Recommender::new(no_floors());
    for (i, size) in [50, 60, 80, 70].into_iter().enumerate() {
        r.add_sample("r0", 100, 100, mib(size), T0 + i as u64 * HOUR);
    }
    // One peak, of 80 MiB, at the interval's end T0 + 1 day (the reference): weight 1, not
    // 4 nor the 50 + 60 + 80 MiB samples.
    assert_eq!(r.memory.total, 1.0);
    assert_eq!(r.memory.percentile(0.01) as u64, memory_end(mib(80)));
    assert_eq!(
        recommend(&r, T0 + 3 * HOUR).target.memory_bytes,
        109_814_751
    );
}

#[test]
fn a_later_interval_keeps_the_old_peak() {
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 100, 100, mib(400), T0);
    r.add_sample("r0", 100, 100, mib(600), T0 + DAY);
    // 400 MiB at T0 + 1 day (weight 1), 600 MiB at T0 + 2 days (weight 2, a half-life
    // later): 400 MiB holds a third of the weight.
    assert_eq!(r.memory.total, 3.0);
    assert_eq!(r.memory.percentile(0.3) as u64, 445_019_988);
    assert_eq!(r.memory.percentile(0.34) as u64, 664_388_475);
    assert_eq!(recommend(&r, T0 + DAY).target.memory_bytes, 764_046_746);
}

#[test]
fn replicas_have_their_own_peaks() {
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 100, 100, mib(400), T0);
    r.add_sample("r1", 100, 100, mib(600), T0);
    assert_eq!(r.memory.total, 2.0);
    // P50 reaches half the weight in the 400 MiB bucket.
    assert_eq!(r.memory.percentile(0.5) as u64, 445_019_988);
    assert_eq!(r.memory.percentile(0.9) as u64, 664_388_475);
}

#[test]
fn a_zero_peak_is_replaced() {
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 100, 100, 0, T0);
    r.add_sample("r0", 100, 100, mib(80), T0 + HOUR);
    assert_eq!(r.memory.total, 1.0);
    assert_eq!(r.memory.percentile(0.01) as u64, 95_491_088);
}

#[test]
fn stale_and_duplicate_samples_are_dropped() {
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 200, 500, mib(300), T0 + HOUR);
    // The same millisecond again: the CPU sample is a duplicate; the memory one counts (no
    // earlier) but is no larger.
    r.add_sample("r0", 1000, 500, mib(300), T0 + HOUR);
    // Earlier: both dropped.
    r.add_sample("r0", 1000, 500, mib(600), T0);
    // The one CPU sample weighs its request, 0.5 core, times 2^(1/24) (an hour after the
    // reference T0); the one memory peak, at T0 + 1 day + 1 hour, 2^(1/24).
    let hour_later = (1.0f64 / 24.0).exp2();
    assert!((r.cpu.total - 0.5 * hour_later).abs() < 1e-12);
    assert!((r.memory.total - hour_later).abs() < 1e-12);
    let rec = recommend(&r, T0 + 2 * HOUR);
    assert_eq!(rec.target.cpu_millis, 247);
    assert_eq!(rec.target.memory_bytes, 380_258_472);
}

#[test]
fn an_oom_bumps_the_limit_by_at_least_100_mib() {
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 100, 100, mib(40), T0);
    // 64 MiB × 1.2 = 76.8 MiB < 64 + 100 MiB: the peak becomes 164 MiB, replacing 40 MiB.
    r.record_oom("r0", mib(64), T0 + HOUR);
    assert_eq!(r.replicas["r0"].oom_peak, mib(164));
    assert_eq!(r.memory.total, 1.0);
    assert_eq!(recommend(&r, T0 + HOUR).target.memory_bytes, 203_699_302);
    // 1 GiB × 1.2 = 1 288 490 188.8 > 1 GiB + 100 MiB: the ratio wins.
    r.record_oom("r1", 1 << 30, T0 + HOUR);
    assert_eq!(r.replicas["r1"].oom_peak, 1_288_490_188);
}

#[test]
fn an_oom_starts_from_the_usage_peak_when_above_the_limit() {
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 100, 100, mib(600), T0);
    r.record_oom("r0", mib(64), T0 + HOUR);
    assert_eq!(r.replicas["r0"].oom_peak, mib(720));
}

#[test]
fn an_oom_long_before_the_last_sample_is_dropped() {
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 100, 100, mib(40), T0 + 2 * DAY);
    r.record_oom("r0", mib(64), T0 + DAY - 1);
    assert_eq!(r.replicas["r0"].oom_peak, 0);
    r.record_oom("r0", mib(64), T0 + DAY);
    assert_eq!(r.replicas["r0"].oom_peak, mib(164));
}

#[test]
fn an_oom_alone_recommends_memory_and_the_cpu_floor() {
    let mut r = Recommender::new(Config::default());
    r.record_oom("r0", mib(300), T0);
    let rec = recommend(&r, T0);
    // 400 MiB (300 + 100), its bucket's end plus 15 %.
    assert_eq!(
        rec.target,
        Resources {
            cpu_millis: 25,
            memory_bytes: 511_772_986
        }
    );
}

#[test]
fn tiny_usage_gets_the_floors() {
    let mut r = Recommender::new(Config::default());
    for hour in 0..=24 {
        r.add_sample("r0", 1, 0, MIB, T0 + hour * HOUR);
    }
    // The first buckets end at 10m and 1e7 bytes: 11m and 11.5e6 bytes with the margin,
    // 22m and 23e6 for the upper bound after a day; all below 25m and 250 MiB.
    let floors = Resources {
        cpu_millis: 25,
        memory_bytes: mib(250),
    };
    let rec = recommend(&r, T0 + DAY);
    assert_eq!(rec.target, floors);
    assert_eq!(rec.lower, floors);
    assert_eq!(rec.upper, floors);
}

#[test]
fn the_policy_bounds_apply_last_and_the_maximum_wins() {
    let mut r = Recommender::new(Config::default());
    for hour in 0..=24 {
        r.add_sample("r0", 1, 0, MIB, T0 + hour * HOUR);
    }
    let max = Resources {
        cpu_millis: 10,
        memory_bytes: mib(100),
    };
    let rec = r.recommend(T0 + DAY, NONE, max).expect("a recommendation");
    assert_eq!(rec.target, max);
    assert_eq!(rec.upper, max);
    // A minimum above the maximum: the maximum still wins.
    let min = Resources {
        cpu_millis: 500,
        memory_bytes: mib(1000),
    };
    assert_eq!(
        r.recommend(T0 + DAY, min, max)
            .expect("a recommendation")
            .lower,
        max
    );
    // A minimum alone raises, one dimension only.
    let min = Resources {
        cpu_millis: 500,
        memory_bytes: 0,
    };
    let rec = r.recommend(T0 + DAY, min, NONE).expect("a recommendation");
    assert_eq!(
        rec.target,
        Resources {
            cpu_millis: 500,
            memory_bytes: mib(250)
        }
    );
}

/// Ten replicas' samples at 1000m at T0, ten at 100m `days` later.
fn old_high_new_low(days: u64) -> Recommender {
    let mut r = Recommender::new(Config::default());
    for i in 0..10 {
        r.add_sample(&format!("old{i}"), 1000, 1000, mib(300), T0);
        r.add_sample(&format!("new{i}"), 100, 1000, mib(300), T0 + days * DAY);
    }
    r
}

#[test]
fn old_high_samples_decay_against_new_low_ones() {
    // Three half-lives: the new samples weigh 8 each, 80 of 90 = 0.89 < 0.9, so the
    // target's P90 is still in the 1000m bucket.
    assert_eq!(
        recommend(&old_high_new_low(3), T0 + 3 * DAY)
            .target
            .cpu_millis,
        1168
    );
    // Four: 160 of 170 = 0.94, the 100m bucket.
    assert_eq!(
        recommend(&old_high_new_low(4), T0 + 4 * DAY)
            .target
            .cpu_millis,
        126
    );
    // Without decay the counts are even: P90 in the 1000m bucket, P50 in the 100m one.
    let mut r = Recommender::new(Config {
        cpu_half_life_ms: 0,
        ..Config::default()
    });
    for i in 0..10 {
        r.add_sample(&format!("old{i}"), 1000, 1000, mib(300), T0);
        r.add_sample(&format!("new{i}"), 100, 1000, mib(300), T0 + 4 * DAY);
    }
    assert_eq!(r.cpu.total, 20.0);
    assert_eq!(recommend(&r, T0 + 4 * DAY).target.cpu_millis, 1168);
    assert_eq!((r.cpu.percentile(0.5) * 1000.0) as u64, 110);
}

#[test]
fn requests_weigh_samples() {
    // One sample at 1000m requesting 4 cores, nine at 100m requesting 0 (weight 0.1 each):
    // the 100m bucket holds 0.9 of 4.9, so P90 is in the 1000m bucket.
    let mut r = Recommender::new(Config::default());
    r.add_sample("big", 1000, 4000, mib(300), T0);
    for i in 0..9 {
        r.add_sample(&format!("small{i}"), 100, 0, mib(300), T0);
    }
    assert!((r.cpu.total - 4.9).abs() < 1e-12);
    assert_eq!(recommend(&r, T0).target.cpu_millis, 1168);
    assert_eq!((r.cpu.percentile(0.18) * 1000.0) as u64, 110);
}

#[test]
fn the_reference_moves_instead_of_overflowing() {
    // Never expire, so that 150 days apart the two samples stay one history.
    let mut r = Recommender::new(Config {
        memory_intervals: 0,
        ..Config::default()
    });
    r.add_sample("r0", 1000, 1000, mib(300), T0);
    assert_eq!(r.cpu.reference, Some(i128::from(T0)));
    r.add_sample("r0", 100, 1000, mib(300), T0 + 150 * DAY);
    // Past 100 half-lives: the reference moves to the new sample, the old one is scaled by
    // 2^−150 and falls below epsilon.
    assert_eq!(r.cpu.reference, Some(i128::from(T0 + 150 * DAY)));
    assert_eq!(r.cpu.total, 1.0);
    assert_eq!(r.cpu.min_bucket, 8);
    assert_eq!(recommend(&r, T0 + 150 * DAY).target.cpu_millis, 126);
    // Three years of hourly samples: every weight stays finite.
    for hour in 0..3 * 365 * 24 {
        r.add_sample("r1", 200, 500, mib(300), T0 + 151 * DAY + hour * HOUR);
    }
    assert!(r.cpu.total.is_finite() && r.memory.total.is_finite());
    assert_eq!(recommend(&r, T0 + 1246 * DAY).target.cpu_millis, 247);
}

#[test]
fn one_sample_leaves_the_bounds_open() {
    let mut r = Recommender::new(Config::default());
    r.add_sample("r0", 200, 500, mib(300), T0);
    let rec = recommend(&r, T0);
    assert_eq!(
        rec.target,
        Resources {
            cpu_millis: 247,
            memory_bytes: 380_258_472
        }
    );
    assert_eq!(
        rec.upper,
        Resources {
            cpu_millis: u64::MAX,
            memory_bytes: u64::MAX
        }
    );
    // The lower bound is 0 before the floors, as in VPA.
    assert_eq!(
        rec.lower,
        Resources {
            cpu_millis: 25,
            memory_bytes: mib(250)
        }
    );
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 200, 500, mib(300), T0);
    assert_eq!(recommend(&r, T0).lower, NONE);
    let max = Resources {
        cpu_millis: 4000,
        memory_bytes: 1 << 33,
    };
    assert_eq!(
        r.recommend(T0, NONE, max).expect("a recommendation").upper,
        max
    );
}

#[test]
fn no_samples_no_recommendation() {
    let r = Recommender::new(Config::default());
    assert_eq!(r.recommend(T0, NONE, NONE), None);
}

#[test]
fn a_silent_history_expires() {
    let mut r = Recommender::new(Config::default());
    r.add_sample("r0", 1000, 1000, mib(300), T0);
    assert!(r.recommend(T0 + 8 * DAY - 1, NONE, NONE).is_some());
    assert_eq!(r.recommend(T0 + 8 * DAY, NONE, NONE), None);
    // A sample after that starts afresh: no trace of 1000m, no confidence.
    r.add_sample("r0", 200, 500, mib(300), T0 + 9 * DAY);
    let rec = recommend(&r, T0 + 9 * DAY);
    assert_eq!(rec.target.cpu_millis, 247);
    assert_eq!(rec.upper.cpu_millis, u64::MAX);
}

#[test]
fn forgotten_replicas_keep_their_peaks() {
    // Kept: 300 MiB in the same interval is below the 400 MiB peak, nothing changes.
    let mut kept = Recommender::new(no_floors());
    kept.add_sample("r0", 100, 100, mib(400), T0);
    kept.add_sample("r0", 100, 100, mib(300), T0 + HOUR);
    assert_eq!(kept.memory.total, 1.0);
    assert_eq!(kept.memory.percentile(0.3) as u64, 445_019_988);
    // Forgotten: the 400 MiB peak stays, and the same id's 300 MiB is a new replica's
    // peak, in an interval of its own.
    let mut r = Recommender::new(no_floors());
    r.add_sample("r0", 100, 100, mib(400), T0);
    r.retain_replicas(|_| false);
    assert!(r.replicas.is_empty());
    r.add_sample("r0", 100, 100, mib(300), T0 + HOUR);
    assert!((r.memory.total - (1.0 + (1.0f64 / 24.0).exp2())).abs() < 1e-12);
    assert_eq!(r.memory.percentile(0.3) as u64, memory_end(mib(300)));
    assert_eq!(r.memory.percentile(0.9) as u64, 445_019_988);
    // Kept replicas keep their state.
    r.add_sample("r1", 100, 100, mib(300), T0 + HOUR);
    r.retain_replicas(|id| id == "r1");
    assert_eq!(r.replicas.keys().collect::<Vec<_>>(), ["r1"]);
}

#[test]
fn huge_inputs_do_not_panic() {
    let mut r = Recommender::new(Config::default());
    r.add_sample("r0", u64::MAX, u64::MAX, u64::MAX, u64::MAX);
    r.add_sample("r0", u64::MAX, u64::MAX, u64::MAX, u64::MAX);
    r.record_oom("r0", u64::MAX, u64::MAX);
    r.record_oom("r1", u64::MAX, 0);
    // The last buckets start at 1021.1 cores and 1.02e12 bytes.
    let rec = recommend(&r, u64::MAX);
    assert!(rec.target.cpu_millis >= 1_000_000);
    assert!(rec.target.memory_bytes >= 1_000_000_000_000);
    // `now` before the first sample: no confidence.
    assert_eq!(recommend(&r, 0).upper.cpu_millis, u64::MAX);
    r.add_sample("r2", 0, 0, 0, 0);
    assert!(recommend(&r, u64::MAX).target.cpu_millis >= 1_000_000);
    let mut r = Recommender::new(Config {
        cpu_half_life_ms: u64::MAX,
        memory_half_life_ms: 1,
        memory_interval_ms: u64::MAX,
        memory_intervals: u32::MAX,
        margin: f64::MAX,
        min_cpu_millis: u64::MAX,
        min_memory_bytes: u64::MAX,
    });
    r.add_sample("r0", 1, 1, 1, 0);
    r.add_sample("r0", 2, 2, 2, u64::MAX);
    r.record_oom("r0", 1, u64::MAX / 2);
    assert!(r.recommend(u64::MAX, NONE, NONE).is_some());
    let mut r = Recommender::new(Config {
        memory_interval_ms: 0,
        margin: f64::NAN,
        ..Config::default()
    });
    r.add_sample("r0", 200, 500, mib(300), T0);
    r.add_sample("r0", 200, 500, mib(300), T0);
    assert_eq!(r.memory.total, 2.0);
    assert_eq!(recommend(&r, T0).target.cpu_millis, 215);
}
