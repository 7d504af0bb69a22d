//! The calculation against cases worked from Kubernetes' algorithm.

use super::*;

const NOW: Millis = 10_000_000;

/// Replicas running for an hour, ready, each requesting `request` millicores.
fn running(n: usize, request: i64) -> Vec<Replica> {
    (0..n)
        .map(|i| Replica {
            id: format!("r{i}"),
            phase: Phase::Running,
            started: Some(NOW - 3_600_000),
            readiness: Some(Readiness {
                ready: true,
                since: NOW - 3_500_000,
            }),
            request_milli: Some(request),
        })
        .collect()
}

fn samples(values: &[i64]) -> BTreeMap<String, Sample> {
    values
        .iter()
        .enumerate()
        .map(|(i, &value_milli)| {
            (
                format!("r{i}"),
                Sample {
                    value_milli,
                    at: NOW,
                    window: 15_000,
                },
            )
        })
        .collect()
}

fn cpu(current: u32, replicas: &[Replica], values: &[i64], percent: u32) -> Proposal {
    let samples = samples(values);
    let metric = Metric {
        cpu: true,
        target: Target::Utilization(percent),
        samples: &samples,
    };
    metric_replicas(current, replicas, &metric, &Settings::default(), NOW).expect("proposal")
}

#[test]
fn utilization_above_target_scales_up_by_the_ratio() {
    // 1500m of 3000m requested = 50 %, target 30 %: ceil(3 × 50/30) = 5.
    let proposal = cpu(3, &running(3, 1000), &[300, 500, 700], 30);
    assert_eq!(
        proposal,
        Proposal {
            replicas: 5,
            current: 50
        }
    );
}

#[test]
fn within_the_tolerance_nothing_changes() {
    // 910m of 3000m = 30 % (truncated), target 30 %; 32 % is within 10 % as well.
    assert_eq!(cpu(3, &running(3, 1000), &[300, 300, 310], 30).replicas, 3);
    assert_eq!(cpu(3, &running(3, 1000), &[320, 320, 320], 30).replicas, 3);
    // 33/30 is 1.1 plus a rounding error in floating point, as in Kubernetes: outside.
    assert_eq!(cpu(3, &running(3, 1000), &[330, 330, 330], 30).replicas, 4);
}

#[test]
fn an_unready_replica_counts_as_idle_on_a_scale_up() {
    let mut replicas = running(3, 1000);
    // Started 10 s ago and not ready: its sample is set aside, then counted as 0 %.
    replicas[0].started = Some(NOW - 10_000);
    replicas[0].readiness = Some(Readiness {
        ready: false,
        since: NOW - 10_000,
    });
    // Ready ones: 1200m of 2000m = 60 % → ratio 2; with the unready at 0: 1200/3000 = 40 %
    // → ceil(3 × 40/30) = 4 (not 5).
    assert_eq!(cpu(3, &replicas, &[300, 500, 700], 30).replicas, 4);
}

#[test]
fn a_pending_replica_is_set_aside() {
    let mut replicas = running(3, 1000);
    replicas[2].phase = Phase::Pending;
    // Only r0 and r1 count: 800m of 2000m = 40 %, target 40 %.
    let proposal = cpu(3, &replicas, &[400, 400], 40);
    assert_eq!(proposal.replicas, 3);
}

#[test]
fn missing_samples_count_as_at_target_on_a_scale_down() {
    // r3 has no sample. 300m of 3000m = 10 % → ratio 0.2; r3 at its request: 1300/4000 =
    // 32 % → ceil(4 × 0.64) = 3.
    assert_eq!(cpu(4, &running(4, 1000), &[100, 100, 100], 50).replicas, 3);
}

#[test]
fn missing_samples_that_reverse_the_direction_change_nothing() {
    // 1200/3000 = 40 % → 0.8 (down); r3 at its request: 2200/4000 = 55 % → 1.1 (up).
    assert_eq!(cpu(4, &running(4, 1000), &[400, 400, 400], 50).replicas, 4);
}

#[test]
fn an_average_value_target_divides_the_mean() {
    // Connections per second, target 100 per replica; mean 200 → ceil(2 × 2) = 4.
    let samples = samples(&[150_000, 250_000]);
    let metric = Metric {
        cpu: false,
        target: Target::AverageValue(100_000),
        samples: &samples,
    };
    let proposal =
        metric_replicas(2, &running(2, 0), &metric, &Settings::default(), NOW).expect("proposal");
    assert_eq!(
        proposal,
        Proposal {
            replicas: 4,
            current: 200_000
        }
    );
}

#[test]
fn utilization_needs_every_request_and_some_sample() {
    let mut replicas = running(2, 1000);
    replicas[1].request_milli = None;
    let samples = samples(&[500, 500]);
    let metric = Metric {
        cpu: true,
        target: Target::Utilization(50),
        samples: &samples,
    };
    let settings = Settings::default();
    assert_eq!(
        metric_replicas(2, &replicas, &metric, &settings, NOW),
        Err(MetricError::MissingRequest("r1".into()))
    );
    let none = BTreeMap::new();
    let metric = Metric {
        samples: &none,
        ..metric
    };
    assert_eq!(
        metric_replicas(2, &running(2, 1000), &metric, &settings, NOW),
        Err(MetricError::NoSamples)
    );
    assert_eq!(
        metric_replicas(0, &[], &metric, &settings, NOW),
        Err(MetricError::NoReplicas)
    );
}

fn proposal(replicas: u32) -> Result<Proposal, MetricError> {
    Ok(Proposal {
        replicas,
        current: 0,
    })
}

#[test]
fn a_scale_up_is_limited_to_four_replicas_or_double_per_15_s() {
    let behavior = Behavior::default();
    let mut history = History::default();
    let first = decide((1, 100), &behavior, 2, &[proposal(20)], &mut history, 0);
    assert_eq!(
        first,
        Decision {
            replicas: 6,
            reason: Reason::RateLimited
        }
    );
    // Within the same 15 s, the period started at 2: no more.
    let again = decide((1, 100), &behavior, 6, &[proposal(20)], &mut history, 5_000);
    assert_eq!(again.replicas, 6);
    // A period later, from 6: max(6 + 4, 12) = 12.
    let later = decide(
        (1, 100),
        &behavior,
        6,
        &[proposal(20)],
        &mut history,
        15_000,
    );
    assert_eq!(later.replicas, 12);
    // Never above max.
    let capped = decide(
        (1, 14),
        &behavior,
        12,
        &[proposal(20)],
        &mut history,
        30_000,
    );
    assert_eq!(
        capped,
        Decision {
            replicas: 14,
            reason: Reason::Bounded
        }
    );
}

#[test]
fn a_scale_down_waits_for_the_highest_recommendation_of_300_s() {
    let behavior = Behavior::default();
    let mut history = History::default();
    let steady = decide((1, 10), &behavior, 6, &[proposal(6)], &mut history, 0);
    assert_eq!(steady.replicas, 6);
    for t in (15_000..300_000).step_by(15_000) {
        let held = decide((1, 10), &behavior, 6, &[proposal(2)], &mut history, t);
        assert_eq!(
            held,
            Decision {
                replicas: 6,
                reason: Reason::Stabilized
            },
            "at {t} ms"
        );
    }
    // The 6 of t=0 has left the window (only newer than 300 s counts).
    let down = decide((1, 10), &behavior, 6, &[proposal(2)], &mut history, 300_000);
    assert_eq!(
        down,
        Decision {
            replicas: 2,
            reason: Reason::Desired
        }
    );
}

#[test]
fn the_documented_policy_example_removes_8_then_8_per_minute() {
    // Kubernetes' docs: Pods 4/60 s and Percent 10/60 s, from 80 replicas.
    let behavior = Behavior {
        up: Behavior::default().up,
        down: Rules {
            stabilization: 0,
            select: Select::Max,
            policies: vec![
                Policy::Pods {
                    value: 4,
                    period: 60_000,
                },
                Policy::Percent {
                    value: 10,
                    period: 60_000,
                },
            ],
        },
    };
    let mut history = History::default();
    let first = decide((1, 100), &behavior, 80, &[proposal(10)], &mut history, 0);
    assert_eq!(first.replicas, 72);
    let held = decide(
        (1, 100),
        &behavior,
        72,
        &[proposal(10)],
        &mut history,
        30_000,
    );
    assert_eq!(held.replicas, 72);
    let next = decide(
        (1, 100),
        &behavior,
        72,
        &[proposal(10)],
        &mut history,
        60_000,
    );
    assert_eq!(next.replicas, 64);
}

#[test]
fn failed_metrics_never_scale_down_and_a_disabled_direction_never_moves() {
    let behavior = Behavior::default();
    let mut history = History::default();
    let failed = || Err(MetricError::NoSamples);
    assert_eq!(
        decide((1, 10), &behavior, 4, &[failed()], &mut history, 0).reason,
        Reason::NoMetrics
    );
    let mixed = decide(
        (1, 10),
        &behavior,
        4,
        &[failed(), proposal(2)],
        &mut history,
        0,
    );
    assert_eq!(
        mixed,
        Decision {
            replicas: 4,
            reason: Reason::InvalidMetricsScaleDown
        }
    );
    // A failed metric does not stop a scale-up the others ask for.
    assert_eq!(
        decide(
            (1, 10),
            &behavior,
            4,
            &[failed(), proposal(6)],
            &mut history,
            0
        )
        .replicas,
        6
    );
    let frozen = Behavior {
        up: Rules {
            select: Select::Disabled,
            ..Behavior::default().up
        },
        ..Behavior::default()
    };
    let mut history = History::default();
    assert_eq!(
        decide((1, 10), &frozen, 4, &[proposal(8)], &mut history, 0).replicas,
        4
    );
}

#[test]
fn bounds_and_a_workload_at_zero() {
    let behavior = Behavior::default();
    let mut history = History::default();
    assert_eq!(
        decide((2, 5), &behavior, 9, &[proposal(9)], &mut history, 0),
        Decision {
            replicas: 5,
            reason: Reason::Bounded
        }
    );
    assert_eq!(
        decide((2, 5), &behavior, 1, &[proposal(1)], &mut history, 0).replicas,
        2
    );
    assert_eq!(
        decide((2, 5), &behavior, 0, &[proposal(4)], &mut history, 0),
        Decision {
            replicas: 0,
            reason: Reason::ScalingDisabled
        }
    );
}
