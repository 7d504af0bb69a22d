//! One test suite run against every `Store` implementation.

use drover_proto::model::{Allocation, DesiredState, NodeFlags, Resources, ServiceSpec, Traffic};

use super::{
    EventRecord, MemoryStore, RedbStore, RevisionRecord, Rollout, RolloutPhase, ServiceRecord,
    Store, TrafficBaseline, Write, counters,
};

fn service(name: &str, revision: u64) -> ServiceRecord {
    let mut record = ServiceRecord::new(name, revision, 3, Traffic::default(), 1);
    record.updated_unix_ms = 2;
    record
}

fn revision(name: &str, revision: u64) -> RevisionRecord {
    RevisionRecord {
        service: name.into(),
        revision,
        spec: ServiceSpec::new(name, format!("{name}:{revision}")),
        created_unix_ms: 3,
        cause: "apply".into(),
    }
}

fn allocation(id: &str, service: &str) -> Allocation {
    Allocation {
        id: id.into(),
        service: service.into(),
        revision: 1,
        node: "n1".into(),
        resources: Resources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
        },
        desired: DesiredState::Run,
        created_unix_ms: 4,
    }
}

fn event(seq: u64) -> EventRecord {
    EventRecord {
        seq,
        unix_ms: seq,
        kind: "test".into(),
        subject: "s".into(),
        message: format!("event {seq}"),
    }
}

fn round_trip(store: &dyn Store) {
    let mut web = service("web", 2);
    web.stable_revision = Some(1);
    web.failed_revisions
        .insert(3, "image web:3 is not available".into());
    web.rollout = Some(Rollout {
        revision: 2,
        from_revision: Some(1),
        started_by: "apply".into(),
        started_unix_ms: 5,
        progress_unix_ms: 6,
        most_available: 1,
        phase: RolloutPhase::Progressing,
        step: 1,
        step_started_unix_ms: 7,
        baseline: TrafficBaseline {
            boot: 1,
            canary: (10, 1),
            stable: (90, 0),
        },
        cause: String::new(),
        ended_unix_ms: None,
    });
    store
        .commit(&[
            Write::PutService(web.clone()),
            Write::PutRevision(revision("web", 1)),
            Write::PutRevision(revision("web", 2)),
            Write::PutService(service("db", 1)),
            Write::PutRevision(revision("db", 1)),
            Write::PutAllocation(allocation("web-1", "web")),
            Write::PutAllocation(allocation("web-2", "web")),
            Write::PutNodeFlags(
                "n1".into(),
                NodeFlags {
                    cordoned: true,
                    draining: false,
                },
            ),
            Write::PutCounter(counters::NEXT_ALLOC, 3),
            Write::PutEvent(event(1)),
        ])
        .expect("commit");
    let state = store.load().expect("load");
    assert_eq!(state.services["web"], web, "the rollout is durable");
    assert_eq!(state.revisions.len(), 3);
    assert_eq!(state.revisions[&("web".to_string(), 2)], revision("web", 2));
    assert_eq!(state.allocations.len(), 2);
    assert!(state.node_flags["n1"].cordoned);
    assert_eq!(state.counters[counters::NEXT_ALLOC], 3);

    store
        .commit(&[Write::DeleteRevision("web".into(), 1)])
        .expect("commit revision delete");
    let state = store.load().expect("load");
    assert_eq!(state.revisions.len(), 2, "one revision pruned");
    assert!(!state.revisions.contains_key(&("web".to_string(), 1)));

    store
        .commit(&[
            Write::DeleteService("web".into()),
            Write::DeleteAllocation("web-1".into()),
        ])
        .expect("commit delete");
    let state = store.load().expect("load");
    assert!(!state.services.contains_key("web"));
    assert_eq!(
        state.revisions.keys().collect::<Vec<_>>(),
        vec![&("db".to_string(), 1)],
        "deleting a service removes its revisions only"
    );
    assert_eq!(state.allocations.keys().collect::<Vec<_>>(), vec!["web-2"]);
}

fn events_in_order(store: &dyn Store) {
    let writes: Vec<Write> = (1..=20).map(|s| Write::PutEvent(event(s))).collect();
    store.commit(&writes).expect("commit events");
    let got = store.events(5, 3).expect("events");
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6, 7]);
    assert_eq!(store.events(21, 10).expect("events").len(), 0);
}

#[test]
fn memory_store_round_trip() {
    round_trip(&MemoryStore::new());
}

#[test]
fn memory_store_events() {
    events_in_order(&MemoryStore::new());
}

#[test]
fn redb_store_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    round_trip(&RedbStore::open(&dir.path().join("state.redb")).expect("open"));
}

#[test]
fn redb_store_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    events_in_order(&RedbStore::open(&dir.path().join("state.redb")).expect("open"));
}

#[test]
fn redb_store_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let store = RedbStore::open(&path).expect("open");
        store
            .commit(&[
                Write::PutService(service("web", 1)),
                Write::PutRevision(revision("web", 1)),
                Write::PutEvent(event(1)),
            ])
            .expect("commit");
    }
    let store = RedbStore::open(&path).expect("reopen");
    let state = store.load().expect("load");
    assert_eq!(state.services["web"], service("web", 1));
    assert_eq!(store.events(0, 10).expect("events"), vec![event(1)]);
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("services"))
                .expect("table");
            table
                .insert("web", br#"{"v":99,"record":{}}"#.as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let store = RedbStore::open(&path).expect("open");
    let err = store.load().expect_err("version 99 is not readable");
    let text = err.to_string();
    assert!(
        text.contains("services/web") && text.contains("99"),
        "{text}"
    );
}
