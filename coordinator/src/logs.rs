//! Replicas' output for `drover logs`: the coordinator asks each replica's agent (agents
//! stay the only ones that talk to their engine) over its link with a `LogRequest`, and
//! routes the `LogChunk`s that come back to the client's stream. [`LogRouter`] keeps the
//! open requests; [`replicas_named`] is the pure part: which allocations a name means.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use drover_proto::model::{Allocation, DesiredState};
use drover_proto::pb;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::state::ClusterState;

/// Chunks waiting for a slow client, per request; more are dropped and the client told.
pub const BUFFERED_CHUNKS: usize = 256;

/// The replicas `name` means, in id order: an allocation id (that one), a workload (its
/// replicas that should run) or a service (the replicas that should run of every workload
/// it selects).
pub fn replicas_named(state: &ClusterState, name: &str) -> Result<Vec<Allocation>, Error> {
    if let Some(allocation) = state.stored.allocations.get(name) {
        return Ok(vec![allocation.clone()]);
    }
    let workloads: Vec<String> = if state.stored.workloads.contains_key(name) {
        vec![name.to_owned()]
    } else if let Some(record) = state.stored.services.get(name) {
        state
            .selected_workloads(&record.service)
            .into_iter()
            .map(|spec| spec.name)
            .collect()
    } else {
        return Err(Error::NotFound {
            kind: "service, workload or allocation",
            name: name.to_owned(),
        });
    };
    Ok(state
        .stored
        .allocations
        .values()
        .filter(|a| workloads.contains(&a.service) && a.desired == DesiredState::Run)
        .cloned()
        .collect())
}

/// One open request: the node it went to, and where its chunks go.
#[derive(Debug)]
struct Open {
    node: String,
    tx: mpsc::Sender<pb::LogChunk>,
    /// Lines dropped since the client last had a chunk (it read too slowly).
    dropped: u64,
}

/// The open log requests, by id.
#[derive(Debug, Default)]
pub struct LogRouter {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

impl LogRouter {
    /// A new request to `node`: its id, and where its chunks arrive.
    pub fn open(&self, node: &str) -> (u64, mpsc::Receiver<pb::LogChunk>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(BUFFERED_CHUNKS);
        let open = Open {
            node: node.to_owned(),
            tx,
            dropped: 0,
        };
        self.lock().insert(id, open);
        (id, rx)
    }

    /// Hands `chunk` from `node` to its request's client. A chunk for a request that is
    /// not open, or that went to another node, is refused (`false`): an agent answers only
    /// what was asked of it. A client too slow to keep up loses lines, and is told how many
    /// with the next chunk it gets.
    pub fn deliver(&self, node: &str, mut chunk: pb::LogChunk) -> bool {
        let mut open = self.lock();
        let Some(request) = open.get_mut(&chunk.request_id) else {
            return false;
        };
        if request.node != node {
            return false;
        }
        let (id, lines) = (chunk.request_id, chunk.lines.len() as u64);
        if request.dropped > 0 {
            let alloc = chunk
                .lines
                .first()
                .map(|l| l.allocation_id.clone())
                .unwrap_or_default();
            chunk.lines.insert(
                0,
                pb::LogLine {
                    allocation_id: alloc,
                    timestamp: String::new(),
                    stderr: true,
                    text: format!(
                        "[drover: {} lines dropped: the client read too slowly]",
                        request.dropped
                    ),
                },
            );
        }
        match request.tx.try_send(chunk) {
            Ok(()) => request.dropped = 0,
            Err(mpsc::error::TrySendError::Full(_)) => request.dropped += lines,
            // The client is gone; its handler cancels the request at the agent.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                open.remove(&id);
            }
        }
        true
    }

    /// Ends every request open on `node`, whose session ended for `cause` (its agent
    /// stops their followers with it): each client gets a last chunk that says so, instead
    /// of waiting for lines that never come.
    pub fn node_gone(&self, node: &str, cause: &str) {
        let mut open = self.lock();
        let ids: Vec<u64> = open
            .iter()
            .filter(|(_, request)| request.node == node)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(request) = open.remove(&id) {
                let _ = request.tx.try_send(pb::LogChunk {
                    request_id: id,
                    lines: Vec::new(),
                    end: true,
                    error: format!("node {node} disconnected ({cause})"),
                });
            }
        }
    }

    /// Forgets request `id`; the node it went to, if it was open.
    pub fn close(&self, id: u64) -> Option<String> {
        self.lock().remove(&id).map(|open| open.node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: u64, lines: usize) -> pb::LogChunk {
        pb::LogChunk {
            request_id: id,
            lines: (0..lines)
                .map(|i| pb::LogLine {
                    allocation_id: "web.1".into(),
                    timestamp: format!("t{i}"),
                    stderr: false,
                    text: format!("line {i}"),
                })
                .collect(),
            end: false,
            error: String::new(),
        }
    }

    #[test]
    fn chunks_reach_only_the_request_of_the_node_that_was_asked() {
        let router = LogRouter::default();
        let (id, mut rx) = router.open("n1");
        assert!(!router.deliver("n2", chunk(id, 1)), "another node's answer");
        assert!(
            !router.deliver("n1", chunk(id + 1, 1)),
            "a request never made"
        );
        assert!(router.deliver("n1", chunk(id, 2)));
        assert_eq!(rx.try_recv().expect("delivered").lines.len(), 2);
        assert!(
            rx.try_recv().is_err(),
            "the refused ones were not delivered"
        );
        assert_eq!(router.close(id).as_deref(), Some("n1"));
        assert!(!router.deliver("n1", chunk(id, 1)), "closed");
    }

    #[test]
    fn requests_on_a_node_whose_session_ended_end_saying_why() {
        let router = LogRouter::default();
        let (gone, mut gone_rx) = router.open("n1");
        let (other, mut other_rx) = router.open("n2");
        router.node_gone("n1", "stream closed by agent");
        let last = gone_rx.try_recv().expect("a last chunk");
        assert!(
            last.end && last.error.contains("node n1 disconnected"),
            "{last:?}"
        );
        assert_eq!(router.close(gone), None, "no longer open");
        assert!(other_rx.try_recv().is_err());
        assert_eq!(router.close(other).as_deref(), Some("n2"));
    }

    #[test]
    fn a_slow_client_is_told_how_many_lines_it_lost() {
        let router = LogRouter::default();
        let (id, mut rx) = router.open("n1");
        for _ in 0..BUFFERED_CHUNKS {
            assert!(router.deliver("n1", chunk(id, 1)));
        }
        // Full: these are dropped.
        assert!(router.deliver("n1", chunk(id, 3)));
        assert!(router.deliver("n1", chunk(id, 4)));
        for _ in 0..BUFFERED_CHUNKS {
            rx.try_recv().expect("buffered");
        }
        assert!(router.deliver("n1", chunk(id, 1)));
        let next = rx.try_recv().expect("the next chunk");
        assert_eq!(next.lines.len(), 2);
        assert!(
            next.lines[0].text.contains("7 lines dropped"),
            "{:?}",
            next.lines[0]
        );
    }
}
