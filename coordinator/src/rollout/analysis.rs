//! Canary analysis: the canary's connection outcomes in a step against the stable
//! revision's, from the proxies' own counters. Pure.

use std::fmt;

use drover_proto::model::CanaryAnalysis;

/// Connections and failures in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Connections handed to replicas (every attempt counts).
    pub connections: u64,
    /// Of those, failed: connect refused or timed out, or closed or reset unanswered.
    pub failed: u64,
}

impl Window {
    /// The window from counts `base` to counts `now` (each `(connections, failed)`); counts
    /// that went down (an agent restarted) count from zero.
    pub fn since(now: (u64, u64), base: (u64, u64)) -> Window {
        if now.0 < base.0 || now.1 < base.1 {
            return Window {
                connections: now.0,
                failed: now.1,
            };
        }
        Window {
            connections: now.0 - base.0,
            failed: now.1 - base.1,
        }
    }

    /// Failure rate in basis points (100 = 1 %); 0 without connections.
    pub fn failure_bp(&self) -> u64 {
        if self.connections == 0 {
            return 0;
        }
        self.failed.saturating_mul(10_000) / self.connections
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} connections failed ({})",
            self.failed,
            self.connections,
            percent(self.failure_bp())
        )
    }
}

/// Basis points as a percentage with two decimals at most ("1%", "20.5%").
pub fn percent(bp: u64) -> String {
    let whole = bp / 100;
    let rest = bp % 100;
    if rest == 0 {
        format!("{whole}%")
    } else if rest % 10 == 0 {
        format!("{whole}.{}%", rest / 10)
    } else {
        format!("{whole}.{rest:02}%")
    }
}

/// What the analysis says of a step so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Enough connections, and the canary fails no more than the stable revision plus the
    /// threshold.
    Pass,
    /// Enough connections, and the canary fails more: why.
    Fail(String),
    /// Too few connections to tell.
    Inconclusive,
}

/// Judges a canary window against the stable revision's: the canary fails when it had at
/// least `min_sample` connections and its failure rate exceeds the stable one's by more than
/// `max_failure_bp`.
pub fn judge(canary: Window, stable: Window, analysis: &CanaryAnalysis) -> Verdict {
    if canary.connections < analysis.min_sample.max(1) {
        return Verdict::Inconclusive;
    }
    let excess = canary.failure_bp().saturating_sub(stable.failure_bp());
    if excess > u64::from(analysis.max_failure_bp) {
        return Verdict::Fail(format!(
            "{canary}, the stable revision {}; more than {} above it",
            percent(stable.failure_bp()),
            percent(u64::from(analysis.max_failure_bp))
        ));
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(connections: u64, failed: u64) -> Window {
        Window {
            connections,
            failed,
        }
    }

    #[test]
    fn too_few_connections_are_inconclusive() {
        let analysis = CanaryAnalysis::default();
        assert_eq!(judge(w(99, 99), w(0, 0), &analysis), Verdict::Inconclusive);
    }

    #[test]
    fn fails_only_above_the_stable_rate_plus_threshold() {
        let analysis = CanaryAnalysis::default();
        assert_eq!(judge(w(100, 1), w(100, 0), &analysis), Verdict::Pass);
        let Verdict::Fail(why) = judge(w(100, 20), w(500, 0), &analysis) else {
            panic!("a fifth failed must fail");
        };
        assert_eq!(
            why,
            "20 of 100 connections failed (20%), the stable revision 0%; more than 1% above it"
        );
        // The stable revision fails as much: not the canary's fault.
        assert_eq!(judge(w(100, 20), w(500, 100), &analysis), Verdict::Pass);
    }

    #[test]
    fn counts_that_went_down_restart_from_zero() {
        assert_eq!(Window::since((50, 2), (40, 1)), w(10, 1));
        assert_eq!(Window::since((5, 0), (40, 1)), w(5, 0));
    }

    #[test]
    fn percentages_read_well() {
        assert_eq!(percent(100), "1%");
        assert_eq!(percent(2050), "20.5%");
        assert_eq!(percent(5), "0.05%");
    }
}
