//! One test suite run against every `Store` implementation.

use drover_proto::model::{
    Allocation, DesiredState, NodeFlags, Resources, Secret, Traffic, WorkloadSpec,
};

use std::path::{Path, PathBuf};

use super::{
    CORRUPTED_EVENT, EventRecord, MemoryStore, RedbStore, RevisionRecord, Rollout, RolloutPhase,
    SealedStore, SecretsKey, Store, StoreError, TrafficBaseline, WorkloadRecord, Write, counters,
};

fn service(name: &str, revision: u64) -> WorkloadRecord {
    let mut record = WorkloadRecord::new(name, revision, 3, Traffic::default(), 1);
    record.updated_unix_ms = 2;
    record
}

fn revision(name: &str, revision: u64) -> RevisionRecord {
    RevisionRecord {
        service: name.into(),
        revision,
        spec: {
            let mut spec = WorkloadSpec::new(name, format!("{name}:{revision}"));
            let secret = Secret::new(format!("hunter2-{name}-{revision}"));
            spec.secret_env.insert("DB_PASSWORD".into(), secret);
            spec
        },
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
            Write::PutWorkload(web.clone()),
            Write::PutRevision(revision("web", 1)),
            Write::PutRevision(revision("web", 2)),
            Write::PutWorkload(service("db", 1)),
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
    assert_eq!(state.workloads["web"], web, "the rollout is durable");
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
            Write::DeleteWorkload("web".into()),
            Write::DeleteAllocation("web-1".into()),
        ])
        .expect("commit delete");
    let state = store.load().expect("load");
    assert!(!state.workloads.contains_key("web"));
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

fn has_an_identity(store: &dyn Store) {
    let id = store.load().expect("load").store_id;
    assert_eq!(id.len(), 32, "{id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
    store
        .commit(&[Write::PutWorkload(service("web", 1))])
        .expect("commit");
    assert_eq!(store.load().expect("load").store_id, id, "commits keep it");
}

#[test]
fn memory_store_identity() {
    has_an_identity(&MemoryStore::new());
    assert_ne!(
        MemoryStore::new().load().expect("load").store_id,
        MemoryStore::default().load().expect("load").store_id,
        "each store has its own"
    );
}

#[test]
fn redb_store_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    has_an_identity(&RedbStore::open(&dir.path().join("state.redb")).expect("open"));
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
fn sealed_stores_round_trip() {
    round_trip(&SealedStore::new(
        MemoryStore::new(),
        SecretsKey::ephemeral(),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = RedbStore::open(&dir.path().join("state.redb")).expect("open");
    round_trip(&SealedStore::new(redb, SecretsKey::ephemeral()));
}

fn sealed_at(dir: &Path) -> SealedStore<RedbStore> {
    let store = RedbStore::open(&dir.join("state.redb")).expect("open");
    let key = SecretsKey::load_or_create(&dir.join("secrets.key")).expect("key");
    SealedStore::new(store, key)
}

#[test]
fn secret_values_are_sealed_in_the_store_file_and_open_on_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = sealed_at(dir.path());
        store
            .commit(&[Write::PutRevision(revision("web", 1))])
            .expect("commit");
        let raw = store.inner().load().expect("raw load");
        let sealed = raw.revisions[&("web".into(), 1)].spec.secret_env["DB_PASSWORD"].expose();
        assert!(sealed.starts_with("sealed:1:"), "{sealed}");
    }
    let bytes = std::fs::read(dir.path().join("state.redb")).expect("read the file");
    let needle = b"hunter2-web-1";
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "the store file holds the secret in the clear"
    );
    let state = sealed_at(dir.path()).load().expect("load");
    assert_eq!(state.revisions[&("web".into(), 1)], revision("web", 1));
}

#[test]
fn another_key_does_not_open_the_secrets_and_the_error_says_which_key_is_needed() {
    let dir = tempfile::tempdir().expect("tempdir");
    sealed_at(dir.path())
        .commit(&[Write::PutRevision(revision("web", 1))])
        .expect("commit");
    let key_file = dir.path().join("secrets.key");
    std::fs::remove_file(&key_file).expect("lose the key");
    let err = sealed_at(dir.path())
        .load()
        .expect_err("a new key cannot open them");
    let text = err.to_string();
    assert!(text.contains("revisions/web/1"), "{text}");
    assert!(
        text.contains("secret env DB_PASSWORD cannot be opened"),
        "{text}"
    );
    assert!(text.contains("it was sealed with key"), "{text}");
    assert!(text.contains(&key_file.display().to_string()), "{text}");
}

#[test]
fn a_sealed_value_moved_into_another_record_does_not_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sealed_at(dir.path());
    store
        .commit(&[Write::PutRevision(revision("web", 1))])
        .expect("commit");
    let raw = store.inner().load().expect("raw load");
    let mut moved = raw.revisions[&("web".into(), 1)].clone();
    moved.revision = 2;
    store
        .inner()
        .commit(&[Write::PutRevision(moved)])
        .expect("write around the sealing");
    let err = store.load().expect_err("bound to web/1");
    assert!(err.to_string().contains("revisions/web/2"), "{err}");
    assert!(err.to_string().contains("changed or moved"), "{err}");

    let mut clear = revision("web", 3);
    clear
        .spec
        .secret_env
        .insert("DB_PASSWORD".into(), Secret::new("plain"));
    store
        .inner()
        .commit(&[
            Write::DeleteRevision("web".into(), 2),
            Write::PutRevision(clear),
        ])
        .expect("write");
    let err = store.load().expect_err("a secret in the clear is refused");
    assert!(err.to_string().contains("not sealed"), "{err}");
}

#[test]
fn the_secrets_key_is_made_once_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secrets.key");
    let first = format!("{:?}", SecretsKey::load_or_create(&path).expect("make"));
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = format!("{:?}", SecretsKey::load_or_create(&path).expect("read"));
    assert_eq!(first, again, "the same key is read back");
    std::fs::write(&path, "not a key\n").expect("write");
    let err = SecretsKey::load_or_create(&path).expect_err("garbage");
    assert!(err.to_string().contains("not a key"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
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
                Write::PutWorkload(service("web", 1)),
                Write::PutRevision(revision("web", 1)),
                Write::PutEvent(event(1)),
            ])
            .expect("commit");
    }
    let store = RedbStore::open(&path).expect("reopen");
    let state = store.load().expect("load");
    assert_eq!(state.workloads["web"], service("web", 1));
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
    // Refused when the store opens (its migration reads the record) or when it loads.
    let text = match RedbStore::open(&path) {
        Err(err) => err.to_string(),
        Ok(store) => store
            .load()
            .expect_err("version 99 is not readable")
            .to_string(),
    };
    assert!(
        text.contains("services/web") && text.contains("99"),
        "{text}"
    );
}

/// A store file with one service (3 replicas, image `nginx:1.25`), one revision, one
/// allocation, a counter and events 1 to 3, closed cleanly.
fn written_store(dir: &Path) -> PathBuf {
    let path = dir.join("coordinator.redb");
    let store = RedbStore::open(&path).expect("open");
    let mut spec = WorkloadSpec::new("web", "nginx:1.25");
    spec.replicas = 1;
    store
        .commit(&[
            Write::PutWorkload(WorkloadRecord::new("web", 1, 3, Traffic::default(), 1)),
            Write::PutRevision(RevisionRecord {
                service: "web".into(),
                revision: 1,
                spec,
                created_unix_ms: 1,
                cause: "apply".into(),
            }),
            Write::PutAllocation(allocation("web-1", "web")),
            Write::PutCounter(counters::NEXT_ALLOC, 2),
            Write::PutEvent(event(1)),
            Write::PutEvent(event(2)),
            Write::PutEvent(event(3)),
        ])
        .expect("commit");
    path
}

/// XORs `mask` into the byte at `offset` past every occurrence of `needle` in the file (stale
/// copies of a page may remain in a redb file); returns how many bytes changed.
fn flip(path: &Path, needle: &[u8], offset: usize, mask: u8) -> usize {
    let mut bytes = std::fs::read(path).expect("read the store file");
    let at: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i + offset)
        .collect();
    for &i in &at {
        bytes[i] ^= mask;
    }
    std::fs::write(path, bytes).expect("write the store file");
    assert!(
        !at.is_empty(),
        "{} not found in {}",
        String::from_utf8_lossy(needle),
        path.display()
    );
    at.len()
}

/// Flips `3` into `7` in the replica count after every `replicas`, whether or not the record's
/// JSON is escaped (it is, from format 2 on).
fn flip_replicas_3_to_7(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read the store file");
    let mut flipped = 0;
    let needle = b"replicas";
    for i in 0..bytes.len().saturating_sub(needle.len() + 4) {
        if &bytes[i..i + needle.len()] != needle {
            continue;
        }
        let tail = i + needle.len();
        if let Some(colon) = (tail..tail + 3).find(|&j| bytes[j] == b':')
            && bytes[colon + 1] == b'3'
        {
            bytes[colon + 1] ^= 0x04;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "no replica count 3 in {}", path.display());
    std::fs::write(path, bytes).expect("write the store file");
}

#[test]
fn a_flipped_bit_in_a_service_record_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    flip_replicas_3_to_7(&path);
    let err = RedbStore::open(&path)
        .and_then(|store| store.load())
        .expect_err("a service whose replicas changed from 3 to 7 must not load");
    assert!(matches!(err, StoreError::Corrupted { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("services/web") && text.contains("coordinator.redb"),
        "{text}"
    );
}

#[test]
fn a_flipped_bit_in_a_revision_image_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    // nginx → neinx
    flip(&path, b"nginx:1.25", 1, 0x02);
    let err = RedbStore::open(&path)
        .and_then(|store| store.load())
        .expect_err("a revision whose image changed must not load");
    assert!(err.to_string().contains("revisions/web@1"), "{err}");
}

#[test]
fn a_flipped_bit_in_a_counter_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    // next_alloc 2 → 3. A redb leaf holds its keys, then its values: the only counter's
    // value follows its name.
    let mut needle = b"next_alloc".to_vec();
    needle.extend_from_slice(&2u64.to_le_bytes());
    flip(&path, &needle, b"next_alloc".len(), 0x01);
    let err = RedbStore::open(&path)
        .and_then(|store| store.load())
        .expect_err("a counter changed from 2 to 3 must not load");
    assert!(err.to_string().contains("counters/next_alloc"), "{err}");
}

#[test]
fn a_corrupted_event_is_listed_as_such_and_the_others_still_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    // "event 2" → "event 6"
    flip(&path, b"event 2", 6, 0x04);
    let store = RedbStore::open(&path).expect("open");
    store.load().expect("events are not desired state");
    let events = store.events(0, 10).expect("the listing still works");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(events[0], event(1));
    assert_eq!(events[2], event(3));
    assert_eq!(events[1].kind, CORRUPTED_EVENT);
    assert!(
        events[1].message.contains("event 2 is corrupted"),
        "{:?}",
        events[1]
    );
}

#[test]
fn a_lost_or_emptied_store_file_is_refused_while_its_marker_is_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    let marker = dir.path().join("coordinator.id");
    assert!(marker.exists(), "the store writes its marker");

    std::fs::write(&path, b"").expect("truncate");
    let err = RedbStore::open(&path).expect_err("an emptied store file must be refused");
    let text = err.to_string();
    assert!(
        text.contains("is empty") && text.contains(&marker.display().to_string()),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        0,
        "left alone"
    );

    std::fs::remove_file(&path).expect("remove");
    let err = RedbStore::open(&path).expect_err("a missing store file must be refused");
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("is missing")
            && text.contains(&format!("remove {}", marker.display()))
            && text.contains("to start a new, empty cluster on purpose"),
        "{text}"
    );
    assert!(!path.exists(), "a refused open creates nothing");

    // Removing the marker is how to start fresh on purpose.
    std::fs::remove_file(&marker).expect("remove the marker");
    let store = RedbStore::open(&path).expect("a fresh start on purpose");
    assert!(store.load().expect("load").workloads.is_empty());
}

#[test]
fn a_blank_store_file_is_refused_while_its_marker_is_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    std::fs::remove_file(&path).expect("remove");
    // Something made a valid but blank database in its place.
    drop(redb::Database::create(&path).expect("create"));
    let err = RedbStore::open(&path).expect_err("a blank store file must be refused");
    assert!(err.to_string().contains("holds no cluster state"), "{err}");
}

#[test]
fn the_identity_survives_reopen_and_a_restored_backup_gets_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    let first = RedbStore::open(&path).expect("open").store_id().to_string();
    let backup = dir.path().join("backup.redb");
    std::fs::copy(&path, &backup).expect("backup");
    let again = RedbStore::open(&path).expect("reopen");
    assert_eq!(again.store_id(), first, "the same store keeps its identity");
    assert_eq!(again.load().expect("load").store_id, first);
    drop(again);

    std::fs::copy(&backup, &path).expect("restore the backup");
    let restored = RedbStore::open(&path).expect("open the restored backup");
    assert_ne!(
        restored.store_id(),
        first,
        "a restored older copy must not pass for the store agents last heard"
    );
    assert_eq!(restored.load().expect("load").workloads.len(), 1);
    let id = restored.store_id().to_string();
    drop(restored);
    assert_eq!(RedbStore::open(&path).expect("reopen").store_id(), id);

    // Another data dir: a store of its own.
    let other = tempfile::tempdir().expect("tempdir");
    let other = RedbStore::open(&other.path().join("coordinator.redb")).expect("open");
    assert_ne!(other.store_id(), id);
}

#[test]
fn a_store_file_moved_without_its_marker_gets_a_new_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    let first = RedbStore::open(&path).expect("open").store_id().to_string();
    std::fs::remove_file(dir.path().join("coordinator.id")).expect("remove the marker");
    let moved = RedbStore::open(&path).expect("open");
    assert_ne!(moved.store_id(), first);
    assert_eq!(moved.load().expect("load").workloads.len(), 1);
}

#[cfg(unix)]
#[test]
fn the_store_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    assert_eq!(mode(&path), 0o600, "created 0600");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    drop(RedbStore::open(&path).expect("reopen"));
    assert_eq!(mode(&path), 0o600, "an existing wider mode is tightened");
}

#[test]
fn a_file_that_is_not_a_store_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("coordinator.redb");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write garbage");
    let err = RedbStore::open(&path).expect_err("garbage is not a store");
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("restore it from a backup"),
        "{text}"
    );
}

#[test]
fn a_panic_of_the_database_becomes_an_error_naming_the_file() {
    let err = super::redb_store::guarded(Path::new("/data/coordinator.redb"), "loading", || {
        if true {
            panic!("page 7 out of range");
        }
        Ok(())
    })
    .expect_err("a panic is an error");
    let text = err.to_string();
    assert!(
        text.contains("/data/coordinator.redb") && text.contains("page 7 out of range"),
        "{text}"
    );
}

/// A file as the coordinator wrote it before checksums and identities: format 1 records.
#[test]
fn a_store_from_before_checksums_loads_and_is_upgraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("coordinator.redb");
    let legacy = |record: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({"v": 1, "record": record})).expect("json")
    };
    let web = service("web", 1);
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let str_table = redb::TableDefinition::<&str, &[u8]>::new;
            let mut services = txn.open_table(str_table("services")).expect("table");
            let bytes = legacy(serde_json::to_value(&web).expect("value"));
            services.insert("web", bytes.as_slice()).expect("insert");
            let mut revisions = txn
                .open_table(redb::TableDefinition::<(&str, u64), &[u8]>::new(
                    "revisions",
                ))
                .expect("table");
            let bytes = legacy(serde_json::to_value(revision("web", 1)).expect("value"));
            revisions
                .insert(("web", 1), bytes.as_slice())
                .expect("insert");
            let mut events = txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("events"))
                .expect("table");
            let bytes = legacy(serde_json::to_value(event(1)).expect("value"));
            events.insert(1, bytes.as_slice()).expect("insert");
            let mut counters = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("counters"))
                .expect("table");
            counters.insert(counters::BOOTS, 4).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let store = RedbStore::open(&path).expect("an old store opens");
    let state = store.load().expect("and loads");
    assert_eq!(state.workloads["web"], web);
    assert_eq!(state.revisions[&("web".to_string(), 1)], revision("web", 1));
    assert_eq!(state.counter(counters::BOOTS), 4);
    assert_eq!(state.store_id.len(), 32, "it is given an identity");
    assert_eq!(store.events(0, 10).expect("events"), vec![event(1)]);
    assert!(dir.path().join("coordinator.id").exists(), "and a marker");
    drop(store);

    // The desired state was rewritten with checksums: a flip is caught from now on.
    flip_replicas_3_to_7(&path);
    let err = RedbStore::open(&path).and_then(|s| s.load());
    assert!(
        err.as_ref()
            .is_err_and(|e| e.to_string().contains("services/web")),
        "{err:?}"
    );
}

/// Bytes flipped all over a real store file: whatever redb makes of it, the store reports an
/// error (naming the file or the record) and never panics, not even when it is dropped.
#[test]
fn a_corrupted_file_never_panics_out_of_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    let marker = dir.path().join("coordinator.id");
    let original = std::fs::read(&path).expect("read");
    let original_marker = std::fs::read(&marker).expect("read the marker");
    let shown = path.display().to_string();
    let mut panicked = 0;
    let step = (original.len() / 200).max(1);
    // Besides the even spread: bytes of the allocator state where a byte-by-byte scan of this
    // file (redb 4.6) found flips that make redb panic again when the database closes.
    let closing = [49_182, 53_382, 57_484]
        .into_iter()
        .filter(|&o| o < original.len());
    for offset in (0..original.len()).step_by(step).chain(closing) {
        let mut bytes = original.clone();
        bytes[offset] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        std::fs::write(&marker, &original_marker).expect("write the marker");
        let outcome = std::panic::catch_unwind(|| {
            let store = RedbStore::open(&path)?;
            store.load()?;
            store.events(0, 10)?;
            store.commit(&[Write::PutEvent(event(4))])
        });
        let Ok(result) = outcome else {
            panic!("a flip at byte {offset} made the store panic");
        };
        if let Err(e) = result {
            panicked += usize::from(matches!(e, StoreError::Panicked { .. }));
            let text = e.to_string();
            assert!(
                text.contains(&shown) || text.starts_with("store record"),
                "flip at {offset}: {text}"
            );
        }
    }
    // redb 4.6 panics on some of these flips (debug builds assert more); should an upgrade
    // stop it, this line goes, the rest of the test stays.
    #[cfg(debug_assertions)]
    assert!(
        panicked > 0,
        "no flip made redb panic: the guard went untested"
    );
}

/// A store from before services and workloads were apart: a workload's published port
/// (`service_port`) becomes a service of its name when the store opens, once.
#[test]
fn published_ports_of_an_old_store_become_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("coordinator.redb");
    let legacy = |record: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({"v": 1, "record": record})).expect("json")
    };
    let web = service("web", 1);
    let mut old_revision = serde_json::to_value(revision("web", 1)).expect("value");
    old_revision["spec"]["ports"] = serde_json::json!([
        {"name": null, "container_port": 8080, "service_port": 80, "host_port": null, "protocol": "tcp"}
    ]);
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let str_table = redb::TableDefinition::<&str, &[u8]>::new;
            let mut services = txn.open_table(str_table("services")).expect("table");
            let bytes = legacy(serde_json::to_value(&web).expect("value"));
            services.insert("web", bytes.as_slice()).expect("insert");
            let mut revisions = txn
                .open_table(redb::TableDefinition::<(&str, u64), &[u8]>::new(
                    "revisions",
                ))
                .expect("table");
            let bytes = legacy(old_revision);
            revisions
                .insert(("web", 1), bytes.as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let store = RedbStore::open(&path).expect("an old store opens");
    let state = store.load().expect("and loads");
    let made = &state.services["web"].service;
    assert_eq!(made.kind, drover_proto::model::ServiceType::LoadBalancer);
    assert_eq!(made.ports.len(), 1);
    assert_eq!(made.ports[0].port, 80);
    assert_eq!(
        made.ports[0].target,
        drover_proto::model::TargetPort::Number(8080)
    );
    assert!(made.selects(&state.revisions[&("web".to_string(), 1)].spec));
    // Deleted since, it stays deleted: the migration ran once, at format 3.
    store
        .commit(&[Write::DeleteService("web".into())])
        .expect("delete");
    drop(store);
    let store = RedbStore::open(&path).expect("reopens");
    assert!(store.load().expect("loads").services.is_empty());
}
