//! The engine over its event log: records in segments, tables committed
//! without fsync and rebuilt from the log after a crash, segments removed
//! once nothing kept lies in them, bodies of older files still read.

use super::*;
use crate::event::EventMeta;
use crate::names::WebhookName;

const HOUR: Duration = Duration::from_secs(3600);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> TempDir {
    TempDir(std::env::temp_dir().join(format!(
        "sidecar-logged-{}-{name}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )))
}

fn meta(id: &str) -> EventMeta {
    EventMeta {
        id: id.into(),
        dedup: id.into(),
        event_type: "payment_intent.succeeded".into(),
        context: vec![("wedding_id".into(), "w-42".into())],
        priority: Priority::Normal,
        targets: vec!["notify".into(), "ledger".into()],
        trace: None,
    }
}

fn body(n: usize) -> Vec<u8> {
    format!("{{\"id\":\"evt_{n}\",\"pad\":\"{}\"}}", "x".repeat(900)).into_bytes()
}

fn accept(store: &LocalStore, n: usize, now_ms: u64) -> u64 {
    let webhook: WebhookName = "stripe".into();
    let meta = meta(&format!("evt_{n}"));
    let body = body(n);
    let event = NewEvent {
        webhook: &webhook,
        meta: &meta,
        content_type: Some("application/json"),
        headers: &[],
        body: &body,
    };
    match store.accept(&event, now_ms, HOUR).unwrap() {
        Acceptance::Accepted(sequence) => sequence,
        Acceptance::Duplicate => panic!("evt_{n} is new"),
    }
}

fn lease_all(store: &LocalStore, now_ms: u64) -> Vec<Job> {
    store
        .lease(&LeaseRequest {
            priority: Priority::Normal,
            now_ms,
            visibility: HOUR,
            room: Vec::new(),
            max: 10_000,
        })
        .unwrap()
}

/// A copy of the store's files as a crash would leave them: what was
/// written to them, nothing of what redb keeps in memory.
fn crash_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("log")).unwrap();
    std::fs::copy(from.join("events.redb"), to.join("events.redb")).unwrap();
    for entry in std::fs::read_dir(from.join("log")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("log").join(entry.file_name())).unwrap();
    }
}

#[test]
fn accepted_events_whose_commits_were_not_fsynced_come_back_from_the_log() {
    let live = dir("live");
    let store = LocalStore::open(&live.0).unwrap();
    // The first commit after opening is fsynced; the next ones within a
    // second are not: the log alone holds them.
    store.flush().unwrap();
    let sequences: Vec<u64> = (0..50).map(|n| accept(&store, n, 1_000)).collect();
    assert!(
        store.unsynced.load(Ordering::Relaxed),
        "the accepts' commits were not fsynced"
    );
    let crashed = dir("crashed");
    crash_image(&live.0, &crashed.0);
    {
        // The image's tables alone lack them: only the log can bring them back.
        let db = Database::create(crashed.0.join("events.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let places = txn.open_table(PLACES).unwrap().len().unwrap();
        assert!(places < 50, "{places} events in the fsynced tables");
    }
    let reopened = LocalStore::open(&crashed.0).unwrap();
    for (n, sequence) in sequences.iter().enumerate() {
        let (stored, got) = reopened
            .event(*sequence)
            .unwrap()
            .expect("the event is back");
        assert_eq!(stored.id.as_str(), format!("evt_{n}"));
        assert_eq!(got, body(n));
    }
    assert_eq!(reopened.queue_depth().unwrap().normal, 100, "two jobs each");
    // Numbers go on after the replayed ones; a duplicate is still one.
    let next = accept(&reopened, 50, 2_000);
    assert!(next > *sequences.last().unwrap() + 2);
    let webhook: WebhookName = "stripe".into();
    let again = meta("evt_7");
    let event = NewEvent {
        webhook: &webhook,
        meta: &again,
        content_type: None,
        headers: &[],
        body: b"{}",
    };
    assert!(matches!(
        reopened.accept(&event, 2_000, HOUR).unwrap(),
        Acceptance::Duplicate
    ));
    // Replayed once: opening the same image again changes nothing.
    drop(reopened);
    let twice = LocalStore::open(&crashed.0).unwrap();
    assert_eq!(twice.queue_depth().unwrap().normal, 102);
    assert_eq!(twice.history_usage().unwrap().events, 51);
}

#[test]
fn segments_go_once_nothing_kept_lies_in_them_and_a_pending_event_keeps_its_own() {
    let at = dir("segments");
    let store = LocalStore::open_with_segments(&at.0, DEFAULT_CACHE, 16 << 10)
        .unwrap()
        .with_history(None);
    let first = accept(&store, 0, 1_000);
    let held: Vec<Job> = lease_all(&store, 1_000);
    assert_eq!(held.len(), 2);
    for n in 1..200 {
        accept(&store, n, 1_000);
    }
    let log = store.log.get().unwrap();
    let before = log.segments().unwrap().len();
    assert!(before > 10, "{before} segments");
    for job in lease_all(&store, 1_000) {
        store.apply_one(Write::Ack(&job, None)).unwrap();
    }
    store.flush().unwrap();
    let after: Vec<u32> = log.segments().unwrap().iter().map(|s| s.0).collect();
    // The first event, still pending, keeps the first segment; the active
    // one stays; every other one went.
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], 1);
    assert!(store.event(first).unwrap().is_some());
    // Compaction copies the one pending event forward; its segment goes.
    for n in 200..240 {
        accept(&store, n, 1_000);
    }
    assert_eq!(store.compact_log().unwrap(), 1);
    let after: Vec<u32> = log.segments().unwrap().iter().map(|s| s.0).collect();
    assert!(!after.contains(&1), "{after:?}");
    let (stored, got) = store.event(first).unwrap().expect("copied, still there");
    assert_eq!((stored.id.as_str(), got), ("evt_0", body(0)));
    // The copy survives a crash; it is never accepted a second time.
    let crashed = dir("segments-crashed");
    crash_image(&at.0, &crashed.0);
    let reopened = LocalStore::open(&crashed.0).unwrap().with_history(None);
    assert_eq!(reopened.event(first).unwrap().unwrap().1, body(0));
    assert_eq!(reopened.queue_depth().unwrap().normal, 2 + 80);
    drop(reopened);
    for job in &held {
        store.apply_one(Write::Ack(job, None)).unwrap();
    }
    for job in lease_all(&store, 1_000) {
        store.apply_one(Write::Ack(&job, None)).unwrap();
    }
    // Drained: the segment being appended to is closed and goes too, so
    // the room comes back without a new event.
    assert_eq!(store.compact_log().unwrap(), 0);
    store.flush().unwrap();
    assert_eq!(log.segments().unwrap().len(), 1, "only a fresh active one");
    assert!(!log.active_holds_records());
    assert!(store.log_bytes() < 1024, "{}", store.log_bytes());
}

#[test]
fn bodies_of_a_file_written_before_the_log_are_still_read() {
    let at = dir("upgrade");
    let webhook: WebhookName = "stripe".into();
    let meta = meta("evt_old");
    let sequence = {
        let store = LocalStore::open(&at.0).unwrap();
        // As an earlier version wrote it: the body in the BODIES table.
        let accepted = store
            .write(true, |tables| {
                tables.log = None;
                tables.insert(
                    &NewEvent {
                        webhook: &webhook,
                        meta: &meta,
                        content_type: None,
                        headers: &[],
                        body: b"{\"kept\":true}",
                    },
                    1_000,
                    HOUR,
                )
            })
            .unwrap();
        match accepted {
            Acceptance::Accepted(sequence) => sequence,
            Acceptance::Duplicate => unreachable!(),
        }
    };
    let store = LocalStore::open(&at.0).unwrap();
    let (_, got) = store.event(sequence).unwrap().unwrap();
    assert_eq!(got, b"{\"kept\":true}");
    let detail = store.event_detail("stripe", "evt_old").unwrap().unwrap();
    assert_eq!(detail.body, b"{\"kept\":true}");
    let new = accept(&store, 1, 2_000);
    assert!(store.event(new).unwrap().is_some());
}

fn owned(n: usize, now_ms: u64) -> crate::store::records::OwnedEvent {
    crate::store::records::OwnedEvent {
        webhook: "stripe".into(),
        meta: meta(&format!("evt_{n}")),
        content_type: None,
        headers: Vec::new(),
        body: bytes::Bytes::from(body(n)),
        now_ms,
        dedup_window: HOUR,
    }
}

#[test]
fn accepted_into_the_log_ahead_of_the_tables_an_event_is_a_duplicate_at_once_and_applied_once() {
    let at = dir("ahead");
    let store = LocalStore::open(&at.0).unwrap();
    let batch: Vec<_> = (0..10)
        .map(|n| owned(n, 1_000))
        .chain([owned(3, 1_000)])
        .collect();
    let answers = store.accept_into_log(&batch).unwrap().unwrap();
    // The same event twice in one batch: the second is a duplicate.
    assert!(matches!(answers[10].0, Acceptance::Duplicate));
    assert_eq!(store.unapplied(), 10);
    // Not applied yet, and already a duplicate for the next batch.
    let again = store.accept_into_log(&[owned(7, 1_500)]).unwrap().unwrap();
    assert!(matches!(again[0].0, Acceptance::Duplicate));
    // The writer applies half, then its batch fails and gives the rest up.
    let mut answers = answers.into_iter();
    let mut applied = Vec::new();
    for (_, logged) in answers.by_ref().take(5) {
        let (logged, ticket) = logged.unwrap();
        applied.push((logged, ticket));
    }
    let writes: Vec<Write<'_>> = applied
        .iter()
        .zip(&batch)
        .map(|((logged, _), event)| Write::Apply(event.borrowed(), event.now_ms, *logged))
        .collect();
    store.apply(&writes).unwrap();
    drop(writes);
    drop(applied);
    let given_up: Vec<_> = answers.collect();
    store.needs_replay.store(true, Ordering::SeqCst);
    drop(given_up);
    // The next transaction applies the log again: every event once.
    store.flush().unwrap();
    assert_eq!(store.unapplied(), 0);
    assert_eq!(
        store.queue_depth().unwrap().normal,
        20,
        "two jobs each, once"
    );
    assert_eq!(store.history_usage().unwrap().events, 10);
    for n in 0..10 {
        let detail = store
            .event_detail("stripe", &format!("evt_{n}"))
            .unwrap()
            .unwrap();
        assert_eq!(detail.body, body(n));
    }
    // And a crash image of it opens to the same.
    let crashed = dir("ahead-crashed");
    crash_image(&at.0, &crashed.0);
    let reopened = LocalStore::open(&crashed.0).unwrap();
    assert_eq!(reopened.queue_depth().unwrap().normal, 20);
}
