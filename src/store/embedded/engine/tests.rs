use super::*;
use crate::event::EventMeta;
use crate::store::records::{dedup_key, DeadLetterFilter};
use redb::TableDefinition;

const HOUR: Duration = Duration::from_secs(3600);

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "sidecar-store-{}-{name}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// A high-priority event of `stripe` for `targets`.
fn meta(id: &str, targets: &[&str]) -> EventMeta {
    EventMeta {
        id: id.into(),
        dedup: id.into(),
        event_type: "t".into(),
        context: Vec::new(),
        priority: Priority::High,
        targets: targets.iter().map(|&t| t.into()).collect(),
        trace: None,
        recovered: false,
    }
}

fn event<'a>(webhook: &'a crate::names::WebhookName, meta: &'a EventMeta) -> NewEvent<'a> {
    NewEvent {
        webhook,
        meta,
        content_type: None,
        headers: &[],
        body: b"{}",
    }
}

fn accept(store: &LocalStore, id: &str, now_ms: u64) -> Acceptance {
    let meta = meta(id, &["notify"]);
    store
        .accept(&event(&"stripe".into(), &meta), now_ms, HOUR)
        .unwrap()
}

fn one_high_job(now_ms: u64) -> LeaseRequest {
    LeaseRequest {
        priority: Priority::High,
        now_ms,
        visibility: HOUR,
        room: Vec::new(),
        max: 1,
    }
}

#[test]
fn the_next_due_time_is_the_earliest_queued_job_leased_or_not() {
    let store = LocalStore::open(&dir("next-due")).unwrap();
    assert_eq!(store.next_due_ms().unwrap(), None, "nothing queued");
    accept(&store, "evt_1", 1_000);
    accept(&store, "evt_2", 2_000);
    assert_eq!(store.next_due_ms().unwrap(), Some(1_000));
    // Leased: due again when its lease ends, after the other one.
    store.lease(&one_high_job(1_500)).unwrap();
    assert_eq!(store.next_due_ms().unwrap(), Some(2_000));
}

#[test]
fn expired_dedup_keys_are_pruned() {
    let store = LocalStore::open(&dir("prune")).unwrap();
    accept(&store, "evt_1", 1_000);
    assert_eq!(store.prune_dedup(1_000 + 3_599_999, HOUR).unwrap(), 0);
    assert_eq!(store.prune_dedup(10 * 3_600_000, HOUR).unwrap(), 1);
}

#[test]
fn a_job_leased_by_a_process_that_died_is_due_again_on_reopening() {
    let path = dir("reopen");
    {
        let store = LocalStore::open(&path).unwrap();
        accept(&store, "evt_1", 1_000);
        let leased = store.lease(&one_high_job(1_000)).unwrap();
        assert!(leased[0].leased);
        assert!(store.lease(&one_high_job(1_000)).unwrap().is_empty());
    }
    let store = LocalStore::open(&path).unwrap();
    let again = store
        .lease(&one_high_job(unix_time().as_millis() as u64))
        .unwrap();
    assert_eq!(again.len(), 1, "released on open");
}

#[test]
fn an_unreadable_job_is_set_aside_as_corrupt_and_the_rest_of_its_lease_goes_on() {
    let store = LocalStore::open(&dir("corrupt")).unwrap();
    for id in ["evt_1", "evt_2", "evt_3"] {
        accept(&store, id, 1_000);
    }
    // The first event's job (number 2) no longer decodes.
    store
        .write(true, |tables| {
            tables.jobs.insert(2, b"{\"id\":2,\"event\":1,\"webhook\":\"stripe\",\"event_id\":\"evt_1\",\"priority\":".as_slice()).map_err(failed)?;
            Ok(())
        })
        .unwrap();
    let mut request = one_high_job(1_000);
    request.max = 10;
    let leased = store.lease(&request).unwrap();
    let ids: Vec<&str> = leased.iter().map(|j| j.event_id.as_str()).collect();
    assert_eq!(ids, ["evt_2", "evt_3"], "the others are leased");
    let dead = store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .unwrap()
        .items;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "corrupt");
    assert_eq!(
        (
            dead[0].job.id,
            dead[0].job.webhook.as_str(),
            dead[0].job.event_id.as_str()
        ),
        (2, "stripe", "evt_1"),
        "what could be read is kept"
    );
    assert!(dead[0].last_error().unwrap().contains("could not be read"));
    assert_eq!(
        store.queue_depth().unwrap().high,
        2,
        "counted out of the queue"
    );
    assert!(store.lease(&request).unwrap().is_empty());
}

#[test]
fn an_unreadable_job_found_at_start_is_set_aside_too() {
    let path = dir("corrupt-open");
    {
        let store = LocalStore::open(&path).unwrap();
        accept(&store, "evt_1", 1_000);
        store
            .write(true, |tables| {
                tables
                    .jobs
                    .insert(2, b"garbage".as_slice())
                    .map_err(failed)?;
                Ok(())
            })
            .unwrap();
    }
    let store = LocalStore::open(&path).expect("opens despite the bad record");
    let dead = store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .unwrap()
        .items;
    assert_eq!((dead.len(), dead[0].reason.as_str()), (1, "corrupt"));
    assert_eq!(
        dead[0].job.target, "notify",
        "its place in the queue was found"
    );
    assert_eq!(store.queue_depth().unwrap().high, 0);
}

fn lease_all(store: &LocalStore, now_ms: u64) -> Vec<Job> {
    let mut request = one_high_job(now_ms);
    request.max = 100;
    store.lease(&request).unwrap()
}

fn ack(store: &LocalStore, job: &Job) {
    store.apply_one(Write::Ack(job, None)).unwrap();
}

fn counts(store: &LocalStore) -> (usize, usize, usize) {
    let db = store.db().unwrap();
    let txn = db.begin_read().unwrap();
    let len =
        |table: TableDefinition<u64, &[u8]>| txn.open_table(table).unwrap().len().unwrap() as usize;
    let refs = txn.open_table(REFS).unwrap().len().unwrap() as usize;
    (len(EVENTS), len(BODIES), refs)
}

#[test]
fn without_the_event_log_only_an_event_with_several_references_has_a_count_and_the_last_release_removes_it(
) {
    let store = LocalStore::open(&dir("refs")).unwrap().with_history(None);
    accept(&store, "evt_one", 1_000);
    let two = meta("evt_two", &["notify", "analytics"]);
    store
        .accept(&event(&"stripe".into(), &two), 1_000, HOUR)
        .unwrap();
    assert_eq!(
        counts(&store),
        (2, 2, 1),
        "a count for the two-target event only"
    );
    let jobs = lease_all(&store, 1_000);
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        ack(&store, job);
    }
    assert_eq!(
        counts(&store),
        (0, 0, 0),
        "every event and body gone with its last job"
    );
    assert_eq!(store.queue_depth().unwrap().high, 0);
    assert_eq!(store.next_due_ms().unwrap(), None);
}

#[test]
fn a_file_written_by_an_earlier_version_with_counts_of_one_and_an_age_index_reads_the_same() {
    let path = dir("earlier");
    {
        let store = LocalStore::open(&path).unwrap();
        accept(&store, "evt_1", 1_000);
        accept(&store, "evt_2", 2_000);
        // What an earlier version kept: a count of one for every event
        // and an index of ages.
        store
            .write(true, |tables| {
                tables.refs.insert(1, 1).map_err(failed)?;
                tables.refs.insert(3, 1).map_err(failed)?;
                Ok(())
            })
            .unwrap();
        let db = store.db().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut age = txn.open_table(AGE).unwrap();
            age.insert((1_000, 2), ()).unwrap();
            age.insert((2_000, 4), ()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = LocalStore::open(&path).unwrap().with_history(None);
    {
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        assert!(
            txn.open_table(AGE).unwrap().is_empty().unwrap(),
            "emptied on open"
        );
    }
    assert_eq!(store.oldest_pending_ms().unwrap(), Some(1_000));
    let jobs = lease_all(&store, unix_time().as_millis() as u64);
    ack(&store, &jobs[0]);
    assert_eq!(store.oldest_pending_ms().unwrap(), Some(2_000));
    ack(&store, &jobs[1]);
    assert_eq!(counts(&store), (0, 0, 0));
    assert_eq!(store.oldest_pending_ms().unwrap(), None);
}

#[test]
fn counts_changed_earlier_in_a_batch_are_seen_by_its_lease() {
    let store = LocalStore::open(&dir("batch-counts")).unwrap();
    let webhook = "stripe".into();
    let one = meta("evt_1", &["notify"]);
    let request = one_high_job(1_000);
    let answers = store
        .apply(&[
            Write::Accept(event(&webhook, &one), 1_000, HOUR),
            Write::Lease(&request),
        ])
        .unwrap();
    match &answers[1] {
        Ok(Written::Leased(jobs)) => assert_eq!(jobs.len(), 1, "the job accepted before it"),
        other => panic!("a lease answers with jobs, not {other:?}"),
    }
    assert_eq!(
        store.queue_depth().unwrap().high,
        1,
        "leased jobs still count"
    );
}

/// `apply`, measuring redb's pages in use just before the commit: the
/// transaction's peak (what it copied is freed only by the commit).
fn apply_measuring_peak(store: &LocalStore, writes: &[Write<'_>]) -> u64 {
    let db = store.db().unwrap();
    let txn = db.begin_write().unwrap();
    let mut leases = store.leases.lock().unwrap().clone();
    {
        let mut tables = Tables::open(&txn).unwrap();
        for write in writes {
            write.apply(&mut tables, &mut leases).unwrap();
        }
        tables.write_counts().unwrap();
    }
    let stats = txn.stats().unwrap();
    store
        .commit(txn, writes.iter().any(Write::needs_fsync))
        .unwrap();
    *store.leases.lock().unwrap() = leases;
    stats.allocated_pages() * stats.page_size() as u64
}

/// What draining a full store costs in pages beyond what it held: the
/// figure behind `room::RESERVE_BYTES`. 3,000 events of 2 KiB leased in
/// the writer's batches of 256, half acked (committed without fsync),
/// half dead-lettered (fsynced), each batch's peak taken inside its
/// transaction; then the dead letters replayed one by one.
#[test]
fn draining_a_full_store_needs_less_than_half_the_reserve() {
    let store = LocalStore::open(&dir("drain-room")).unwrap();
    let body = vec![b'x'; 2048];
    let webhook = "stripe".into();
    let metas: Vec<EventMeta> = (0..3000)
        .map(|n| meta(&format!("evt_{n:05}_{}", "k".repeat(20)), &["notify"]))
        .collect();
    for chunk in metas.chunks(64) {
        let writes: Vec<Write<'_>> = chunk
            .iter()
            .map(|m| {
                Write::Accept(
                    NewEvent {
                        webhook: &webhook,
                        meta: m,
                        content_type: None,
                        headers: &[],
                        body: &body,
                    },
                    1_000,
                    HOUR,
                )
            })
            .collect();
        store.apply(&writes).unwrap();
    }
    let full = store.used_bytes().unwrap();
    let per_event = full / 3000;
    let mut peak = full;
    let now_ms = unix_time().as_millis() as u64;
    let mut drained = 0;
    loop {
        let mut request = one_high_job(now_ms);
        request.max = 256;
        let jobs = store.lease(&request).unwrap();
        if jobs.is_empty() {
            break;
        }
        // Acks first (committed without fsync), then dead letters
        // (fsynced): both kinds of drain.
        let writes: Vec<Write<'_>> = jobs
            .iter()
            .map(|job| {
                if drained < 1500 {
                    Write::Ack(job, None)
                } else {
                    Write::DeadLetter {
                        held: job,
                        attempt: None,
                        reason: "max_attempts",
                        now_ms,
                    }
                }
            })
            .collect();
        peak = peak.max(apply_measuring_peak(&store, &writes));
        drained += jobs.len();
    }
    assert_eq!(drained, 3000);
    let dead = store
        .dead_letters(&DeadLetterFilter::default(), None, 2000)
        .unwrap()
        .items;
    let after_drain = store.used_bytes().unwrap();
    let mut replay_peak = after_drain;
    for letter in &dead {
        assert!(store.replay(letter.job.id, now_ms).unwrap());
        replay_peak = replay_peak.max(store.used_bytes().unwrap());
    }
    println!(
        "ROOM | full {full} B ({per_event} B per event) | drain peak +{} B | after drain {after_drain} B | replay peak +{} B",
        peak - full,
        replay_peak - after_drain
    );
    let reserve = super::super::room::RESERVE_BYTES;
    assert!(peak - full < reserve / 2, "drain grew by {}", peak - full);
    assert!(
        replay_peak - after_drain < reserve / 2,
        "replays grew by {}",
        replay_peak - after_drain
    );
    assert!(after_drain < full, "the drain freed pages");
}

#[test]
fn a_bad_cursor_is_refused() {
    let store = LocalStore::open(&dir("cursor")).unwrap();
    let error = store
        .dead_letters(&DeadLetterFilter::default(), Some("nonsense"), 10)
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidCursor(_)));
}

#[test]
fn dedup_keys_of_an_earlier_file_still_count_and_an_event_is_found_by_id_either_way() {
    let store = LocalStore::open(&dir("dedup-ids")).unwrap();
    // An earlier version's dedup key: in the DEDUP table only.
    store
        .write(true, |tables| {
            tables
                .dedup
                .insert(dedup_key("stripe", "evt_old").as_str(), 1_000)
                .map_err(failed)?;
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        accept(&store, "evt_old", 2_000),
        Acceptance::Duplicate
    ));
    // Its dedup key is its id: found by id through the dedup table.
    assert!(matches!(
        accept(&store, "evt_new", 2_000),
        Acceptance::Accepted(_)
    ));
    let found = store.event_detail("stripe", "evt_new").unwrap().unwrap();
    assert_eq!(found.event.id.as_str(), "evt_new");
    // Its dedup key is a digest: found through the lookup by id.
    let mut digest = meta("evt_unsigned", &["notify"]);
    digest.dedup = "sha256:0123".into();
    let accepted = store
        .accept(&event(&"stripe".into(), &digest), 2_000, HOUR)
        .unwrap();
    assert!(matches!(accepted, Acceptance::Accepted(_)));
    let found = store
        .event_detail("stripe", "evt_unsigned")
        .unwrap()
        .unwrap();
    assert_eq!(found.event.id.as_str(), "evt_unsigned");
    assert!(store
        .event_detail("stripe", "sha256:0123")
        .unwrap()
        .is_none());
    // Both tables are pruned by age; a key that found a kept event by id
    // hands that lookup over as it goes.
    let later = 2_000 + 2 * 3_600_000;
    assert_eq!(store.prune_dedup(later, HOUR).unwrap(), 3);
    let found = store.event_detail("stripe", "evt_new").unwrap().unwrap();
    assert_eq!(found.event.id.as_str(), "evt_new");
    assert!(store
        .event_detail("stripe", "evt_unsigned")
        .unwrap()
        .is_some());
    assert!(store
        .event_detail("stripe", "sha256:0123")
        .unwrap()
        .is_none());
    // The lookup goes with its event.
    store
        .write(true, |tables| tables.remove_event(found.sequence))
        .unwrap();
    assert!(store.event_detail("stripe", "evt_new").unwrap().is_none());
}
