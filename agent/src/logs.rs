//! A replica's output for the coordinator (`drover logs`): the agent is the one that talks
//! to its engine, so it reads the container's output and sends it over the link in
//! [`pb::LogChunk`]s. Following goes on across restarts of the replica's container (and a
//! new container for the same allocation): when the engine's stream ends, the follower
//! waits for the allocation to run again and reads on from the last line it sent, by
//! timestamp, so that nothing is sent twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::AllocState;
use drover_proto::pb;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::runtime::{ContainerRuntime, LogEntry, LogOptions};
use crate::supervisor::AllocReport;

/// Most lines in one chunk.
const CHUNK_LINES: usize = 256;

/// What the follower needs of the agent.
#[derive(Debug, Clone)]
pub struct LogSource {
    /// The engine.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// The supervisor's statuses: which container an allocation runs in, and its restarts.
    pub statuses: watch::Receiver<BTreeMap<String, AllocReport>>,
}

/// The container an allocation runs in now, as its status says: (id, restarts), or `None`
/// while it has none running.
fn running_container(report: &AllocReport) -> Option<(String, u32)> {
    let up = matches!(
        report.status.state,
        AllocState::Running | AllocState::Healthy | AllocState::Unhealthy
    );
    (up && !report.status.container_id.is_empty())
        .then(|| (report.status.container_id.clone(), report.status.restarts))
}

/// Sends the output `request` asks for to `out`, until it ends or `cancel`.
pub async fn follow(
    source: LogSource,
    request: pb::LogRequest,
    out: mpsc::Sender<pb::AgentMessage>,
    cancel: CancellationToken,
) {
    let error = tokio::select! {
        () = cancel.cancelled() => return,
        error = send_lines(source, &request, &out) => error,
    };
    let _ = out
        .send(end_chunk(request.request_id, error.unwrap_or_default()))
        .await;
}

/// The last chunk of request `id`: `error` says why it failed, if it did.
pub fn end_chunk(id: u64, error: String) -> pb::AgentMessage {
    chunk(pb::LogChunk {
        request_id: id,
        lines: Vec::new(),
        end: true,
        error,
    })
}

fn chunk(chunk: pb::LogChunk) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Logs(chunk)),
    }
}

/// Reads and sends until the output ends for good; `Some(why)` when it could not be read.
async fn send_lines(
    mut source: LogSource,
    request: &pb::LogRequest,
    out: &mpsc::Sender<pb::AgentMessage>,
) -> Option<String> {
    let alloc = &request.allocation_id;
    let since_unix_s = match request.since_seconds {
        0 => 0,
        seconds => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            i64::try_from(now.saturating_sub(seconds)).unwrap_or(0)
        }
    };
    let mut last: Option<String> = None;
    let mut first = true;
    loop {
        let current = source.statuses.borrow_and_update().get(alloc).cloned();
        let Some(report) = current else {
            return first.then(|| format!("allocation {alloc} does not run on this node"));
        };
        let container = match running_container(&report) {
            Some(running) => running,
            // Not running now: read what it wrote (a stopped container keeps its output).
            None if !report.status.container_id.is_empty() => {
                (report.status.container_id.clone(), report.status.restarts)
            }
            None if !request.follow => return None,
            None => {
                source.statuses.changed().await.ok()?;
                continue;
            }
        };
        let options = LogOptions {
            follow: request.follow,
            // From the last line sent on (that second again: lines already sent are skipped).
            since_unix_s: last
                .as_deref()
                .and_then(unix_seconds)
                .unwrap_or(since_unix_s),
            tail: (first && request.tail > 0).then_some(request.tail),
        };
        first = false;
        let mut lines = source.runtime.logs(&container.0, options);
        let mut batch = Vec::new();
        loop {
            let entry = match lines.next().await {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    if !request.follow {
                        return Some(e.to_string());
                    }
                    debug!(alloc = %alloc, error = %e, "reading the replica's output failed; waiting for it to run again");
                    break;
                }
            };
            push(&mut batch, &mut last, alloc, entry);
            // Whatever else is ready goes in the same chunk.
            while batch.len() < CHUNK_LINES {
                match futures_util::FutureExt::now_or_never(lines.next()) {
                    Some(Some(Ok(entry))) => push(&mut batch, &mut last, alloc, entry),
                    _ => break,
                }
            }
            if !batch.is_empty() {
                let lines = std::mem::take(&mut batch);
                let sent = pb::LogChunk {
                    request_id: request.request_id,
                    lines,
                    end: false,
                    error: String::new(),
                };
                if out.send(chunk(sent)).await.is_err() {
                    return None;
                }
            }
        }
        if !request.follow {
            return None;
        }
        // The container stopped: go on once the allocation runs a container again (it
        // restarted, or was replaced), or end once it is gone.
        loop {
            if source.statuses.changed().await.is_err() {
                return None;
            }
            let now = source.statuses.borrow().get(alloc).cloned();
            match now {
                None => return None,
                Some(report) => {
                    if running_container(&report).is_some_and(|running| running != container) {
                        break;
                    }
                }
            }
        }
        // The engine may still be flushing the old container's last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds `entry` to `batch` unless it was sent already (at or before `last`).
fn push(batch: &mut Vec<pb::LogLine>, last: &mut Option<String>, alloc: &str, entry: LogEntry) {
    if last
        .as_deref()
        .is_some_and(|l| entry.timestamp.as_str() <= l)
    {
        return;
    }
    *last = Some(entry.timestamp.clone());
    batch.push(pb::LogLine {
        allocation_id: alloc.to_owned(),
        timestamp: entry.timestamp,
        stderr: entry.stderr,
        text: entry.text,
    });
}

/// The Unix second of an RFC 3339 UTC timestamp as the engine writes them
/// (`2026-12-04T20:10:11.123456789Z`).
fn unix_seconds(timestamp: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339(timestamp).ok()?;
    let seconds = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_timestamps_read_as_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2026-12-04T20:10:11.123456789Z"),
            Some(1_796_415_011)
        );
        assert_eq!(unix_seconds("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(unix_seconds("not a time"), None);
    }

    #[test]
    fn lines_at_or_before_the_last_one_sent_are_skipped() {
        let entry = |t: &str| LogEntry {
            timestamp: t.into(),
            stderr: false,
            text: t.into(),
        };
        let (mut batch, mut last) = (Vec::new(), None);
        for t in [
            "2026-12-04T20:10:11.100000000Z",
            "2026-12-04T20:10:11.200000000Z",
            // Read again after a restart, from that second on.
            "2026-12-04T20:10:11.100000000Z",
            "2026-12-04T20:10:11.200000000Z",
            "2026-12-04T20:10:12.000000000Z",
        ] {
            push(&mut batch, &mut last, "web.1", entry(t));
        }
        let sent: Vec<&str> = batch.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            sent,
            [
                "2026-12-04T20:10:11.100000000Z",
                "2026-12-04T20:10:11.200000000Z",
                "2026-12-04T20:10:12.000000000Z"
            ]
        );
    }
}
