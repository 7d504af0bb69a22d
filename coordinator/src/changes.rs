//! A set of store writes and events built by a decision, committed as one transaction.

use crate::state::ClusterState;
use crate::store::{EventRecord, Write, counters};

/// Writes and events of one decision. Ids and sequence numbers are drawn from the counters
/// in the state and written back with the change, so they are never reused, even after a
/// crash.
#[derive(Debug)]
pub struct ChangeSet {
    writes: Vec<Write>,
    events: Vec<EventRecord>,
    next_alloc: u64,
    next_event: u64,
    allocs_drawn: bool,
    now_unix_ms: u64,
}

impl ChangeSet {
    /// An empty change against `state`, at time `now_unix_ms`.
    pub fn new(state: &ClusterState, now_unix_ms: u64) -> ChangeSet {
        ChangeSet {
            writes: Vec::new(),
            events: Vec::new(),
            next_alloc: state.stored.counter(counters::NEXT_ALLOC).max(1),
            next_event: state.stored.counter(counters::NEXT_EVENT).max(1),
            allocs_drawn: false,
            now_unix_ms,
        }
    }

    /// Time the change is made at.
    pub fn now_unix_ms(&self) -> u64 {
        self.now_unix_ms
    }

    /// Adds a write.
    pub fn push(&mut self, write: Write) {
        self.writes.push(write);
    }

    /// Records an event.
    pub fn event(&mut self, kind: &str, subject: &str, message: String) {
        self.events.push(EventRecord {
            seq: self.next_event,
            unix_ms: self.now_unix_ms,
            kind: kind.to_string(),
            subject: subject.to_string(),
            message,
        });
        self.next_event += 1;
    }

    /// A new allocation id for `service`, never used before.
    pub fn alloc_id(&mut self, service: &str) -> String {
        let id = format!("{service}.{}", self.next_alloc);
        self.next_alloc += 1;
        self.allocs_drawn = true;
        id
    }

    /// Whether the change would write anything.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.events.is_empty()
    }

    /// Writes so far (without counters and events).
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// All writes to commit, counters and events included, and the events to publish.
    pub fn finish(mut self) -> (Vec<Write>, Vec<EventRecord>) {
        if self.allocs_drawn {
            self.writes
                .push(Write::PutCounter(counters::NEXT_ALLOC, self.next_alloc));
        }
        if !self.events.is_empty() {
            self.writes
                .push(Write::PutCounter(counters::NEXT_EVENT, self.next_event));
            self.writes
                .extend(self.events.iter().cloned().map(Write::PutEvent));
        }
        (self.writes, self.events)
    }
}
