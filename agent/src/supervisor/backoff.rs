//! Restart decisions for an exited container: pure, from the policy and what happened.

use std::time::Duration;

use drover_proto::model::{RestartMode, RestartPolicy};

/// What to do about a container that exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// The policy says not to restart: the allocation completed.
    Completed,
    /// Out of attempts, or the policy forbids restarting a failure: the allocation failed.
    GiveUp,
}

/// Decides what follows an exit with `code`, after `attempts` restarts since the last
/// stable run. The delay starts at `initial_backoff` and doubles, capped at `max_backoff`.
pub fn after_exit(policy: &RestartPolicy, code: i64, attempts: u32) -> RestartDecision {
    let restart = match policy.mode {
        RestartMode::Always => true,
        RestartMode::OnFailure => code != 0,
        RestartMode::Never => false,
    };
    if !restart {
        return if code == 0 {
            RestartDecision::Completed
        } else {
            RestartDecision::GiveUp
        };
    }
    if attempts >= policy.max_attempts {
        return RestartDecision::GiveUp;
    }
    RestartDecision::RestartAfter(delay(policy, attempts))
}

/// Backoff before restart number `attempts + 1`.
pub fn delay(policy: &RestartPolicy, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX);
    policy
        .initial_backoff
        .checked_mul(factor)
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            mode,
            max_attempts: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn doubles_then_caps_then_gives_up() {
        let p = policy(RestartMode::Always);
        let delays: Vec<_> = (0..4)
            .map(|n| match after_exit(&p, 1, n) {
                RestartDecision::RestartAfter(d) => d.as_secs(),
                other => panic!("attempt {n}: {other:?}"),
            })
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 5]);
        assert_eq!(after_exit(&p, 1, 4), RestartDecision::GiveUp);
        assert_eq!(delay(&p, 200), Duration::from_secs(5));
    }

    #[test]
    fn modes() {
        assert_eq!(
            after_exit(&policy(RestartMode::OnFailure), 0, 0),
            RestartDecision::Completed
        );
        assert!(matches!(
            after_exit(&policy(RestartMode::OnFailure), 2, 0),
            RestartDecision::RestartAfter(_)
        ));
        assert_eq!(
            after_exit(&policy(RestartMode::Never), 2, 0),
            RestartDecision::GiveUp
        );
        assert_eq!(
            after_exit(&policy(RestartMode::Never), 0, 0),
            RestartDecision::Completed
        );
        assert!(matches!(
            after_exit(&policy(RestartMode::Always), 0, 0),
            RestartDecision::RestartAfter(_)
        ));
    }
}
