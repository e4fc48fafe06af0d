//! The event log in the engine: outcomes per target, filters and pages,
//! redelivery, and retention, on virtual time.

use super::*;
use crate::event::EventMeta;
use crate::store::history::{EventFilter, EventStatus, HistoryLimits, Redelivered, HISTORY_SHARE};
use crate::store::records::Attempt;
use crate::store::records::DeadLetterFilter;

const HOUR: Duration = Duration::from_secs(3600);

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "sidecar-history-{}-{name}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

fn meta(id: &str, event_type: &str, wedding: &str, targets: &[&str]) -> EventMeta {
    EventMeta {
        id: id.into(),
        dedup: id.into(),
        event_type: event_type.into(),
        context: vec![("wedding_id".into(), wedding.into())],
        priority: Priority::Normal,
        targets: targets.iter().map(|&t| t.into()).collect(),
        trace: None,
        recovered: false,
    }
}

fn accept(store: &LocalStore, webhook: &str, meta: &EventMeta, now_ms: u64) -> u64 {
    let webhook = webhook.into();
    let headers = vec![("stripe-signature".to_string(), "[redacted]".to_string())];
    let event = NewEvent {
        webhook: &webhook,
        meta,
        content_type: Some("application/json"),
        headers: &headers,
        body: b"{\"amount\":4200}",
    };
    match store.accept(&event, now_ms, HOUR).unwrap() {
        Acceptance::Accepted(sequence) => sequence,
        Acceptance::Duplicate => panic!("a new event"),
    }
}

fn lease(store: &LocalStore, now_ms: u64) -> Vec<Job> {
    store
        .lease(&LeaseRequest {
            priority: Priority::Normal,
            now_ms,
            visibility: HOUR,
            room: Vec::new(),
            max: 1000,
        })
        .unwrap()
}

fn attempt(at_ms: u64, status: u16, response: &str) -> Attempt {
    Attempt {
        at_ms,
        duration_ms: 3,
        backend: Some("127.0.0.1:9".into()),
        status: Some(status),
        error: None,
        response: Some(response.into()),
    }
}

fn settle(store: &LocalStore, job: &Job, status: u16, now_ms: u64) {
    let write = match status {
        200..=299 => Write::Ack(job, Some(attempt(now_ms, status, "ok"))),
        400..=499 => Write::DeadLetter {
            held: job,
            attempt: Some(attempt(now_ms, status, "bad")),
            reason: "rejected",
            now_ms,
        },
        _ => Write::Retry(job, attempt(now_ms, status, "busy"), now_ms + 1_000),
    };
    store.apply_one(write).unwrap();
}

fn list(store: &LocalStore, filter: EventFilter) -> Vec<String> {
    let page = store.events(&filter, None, 500).unwrap();
    page.items
        .into_iter()
        .map(|(_, e)| e.id.to_string())
        .collect()
}

fn status(text: &str) -> Option<EventStatus> {
    EventStatus::parse(text)
}

#[test]
fn each_target_outcome_and_attempt_is_kept_after_delivery() {
    let store = LocalStore::open(&dir("outcomes")).unwrap();
    accept(
        &store,
        "stripe",
        &meta("evt_1", "charge.failed", "w-42", &["ok", "no", "flaky"]),
        1_000,
    );
    for job in lease(&store, 1_000) {
        let answer = match job.target.as_str() {
            "ok" => 200,
            "no" => 400,
            _ => 503,
        };
        settle(&store, &job, answer, 1_100);
    }
    let pending = |s| EventFilter {
        status: status(s),
        ..Default::default()
    };
    assert_eq!(
        list(&store, pending("pending")),
        ["evt_1"],
        "one target waits"
    );
    let flaky = lease(&store, 2_100);
    settle(&store, &flaky[0], 200, 2_200);
    assert_eq!(list(&store, pending("partial")), ["evt_1"]);
    assert!(list(&store, pending("pending")).is_empty());
    let by_target = |target: &str, s| EventFilter {
        target: Some(target.into()),
        status: status(s),
        ..Default::default()
    };
    assert_eq!(list(&store, by_target("no", "dead")), ["evt_1"]);
    assert!(list(&store, by_target("ok", "dead")).is_empty());
    assert_eq!(list(&store, by_target("flaky", "delivered")), ["evt_1"]);

    let detail = store.event_detail("stripe", "evt_1").unwrap().unwrap();
    assert_eq!(detail.body, b"{\"amount\":4200}");
    assert_eq!(detail.event.headers[0].1, "[redacted]");
    assert!(
        detail.event.finished_at_ms.is_none(),
        "its dead letter still refers to it: retention never drops it"
    );
    let attempts = |target: &str| -> Vec<(Option<u16>, Option<String>)> {
        let outcome = detail
            .event
            .targets
            .iter()
            .find(|t| t.target == target)
            .unwrap();
        outcome
            .attempts
            .iter()
            .map(|a| (a.status, a.response.clone()))
            .collect()
    };
    assert_eq!(attempts("ok"), [(Some(200), Some("ok".into()))]);
    assert_eq!(attempts("no"), [(Some(400), Some("bad".into()))]);
    assert_eq!(
        attempts("flaky"),
        [
            (Some(503), Some("busy".into())),
            (Some(200), Some("ok".into()))
        ]
    );
    let usage = store.history_usage().unwrap();
    assert_eq!(usage.events, 1);
    assert!(usage.bytes > 100, "{usage:?}");
}

#[test]
fn a_delivered_event_is_redelivered_with_a_new_job_and_a_dead_one_replayed() {
    let store = LocalStore::open(&dir("redeliver")).unwrap();
    let sequence = accept(
        &store,
        "stripe",
        &meta("evt_1", "t", "w-1", &["ok", "no"]),
        1_000,
    );
    for job in lease(&store, 1_000) {
        settle(
            &store,
            &job,
            if job.target == "ok" { 200 } else { 400 },
            1_100,
        );
    }
    assert_eq!(
        store.redeliver(sequence, Some("ok"), 5_000).unwrap(),
        Some(1)
    );
    let again = lease(&store, 5_000);
    assert_eq!(again.len(), 1);
    assert!(again[0].redelivery, "says x-redelivery");
    assert_eq!((again[0].event, again[0].target.as_str()), (sequence, "ok"));
    assert_eq!(
        list(
            &store,
            EventFilter {
                status: status("pending"),
                ..Default::default()
            }
        ),
        ["evt_1"]
    );
    settle(&store, &again[0], 200, 5_100);
    // Both targets: the dead one's letter is replayed, not copied.
    assert_eq!(store.redeliver(sequence, None, 6_000).unwrap(), Some(2));
    assert!(store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .unwrap()
        .items
        .is_empty());
    let jobs = lease(&store, 6_000);
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.redelivery));
    for job in &jobs {
        settle(&store, job, 200, 6_100);
    }
    let detail = store.event_detail("stripe", "evt_1").unwrap().unwrap();
    let ok = detail
        .event
        .targets
        .iter()
        .find(|t| t.target == "ok")
        .unwrap();
    assert_eq!(ok.attempts.len(), 3, "every delivery's attempt is kept");
    assert_eq!(
        store.event(sequence).unwrap().unwrap().1,
        b"{\"amount\":4200}"
    );
    assert_eq!(
        store.redeliver(sequence + 1_000, None, 7_000).unwrap(),
        None
    );
}

#[test]
fn a_filtered_redelivery_queues_exactly_what_its_dry_run_matched() {
    let store = LocalStore::open(&dir("bulk")).unwrap();
    for n in 0..30 {
        let wedding = if n % 3 == 0 { "w-42" } else { "w-7" };
        let kind = if n % 2 == 0 {
            "payment.succeeded"
        } else {
            "invoice.paid"
        };
        accept(
            &store,
            "stripe",
            &meta(&format!("evt_{n}"), kind, wedding, &["ok"]),
            1_000 + n,
        );
    }
    for job in lease(&store, 2_000) {
        settle(&store, &job, 200, 2_100);
    }
    let filter = EventFilter {
        event_type: Some("payment.*".into()),
        context: vec![("wedding_id".into(), "w-42".into())],
        ..Default::default()
    };
    let matched = store.redeliver_matching(&filter, 100, true, 3_000).unwrap();
    assert_eq!(matched, Redelivered::Matched(5), "n = 0, 6, 12, 18, 24");
    assert!(lease(&store, 3_000).is_empty(), "a dry run queues nothing");
    assert_eq!(
        store.redeliver_matching(&filter, 4, false, 3_000).unwrap(),
        Redelivered::Matched(5),
        "over max: counted, not queued"
    );
    assert!(lease(&store, 3_000).is_empty());
    assert_eq!(
        store
            .redeliver_matching(&filter, 100, false, 3_000)
            .unwrap(),
        Redelivered::Queued(5)
    );
    let ids: Vec<String> = lease(&store, 3_000)
        .iter()
        .map(|j| j.event_id.to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(ids
        .iter()
        .all(|id| ["evt_0", "evt_6", "evt_12", "evt_18", "evt_24"].contains(&id.as_str())));
}

#[test]
fn pages_go_newest_first_with_cursors_and_an_exact_total_when_all_was_read() {
    let store = LocalStore::open(&dir("pages")).unwrap();
    for n in 0..120 {
        accept(
            &store,
            "stripe",
            &meta(&format!("evt_{n:03}"), "t", "w", &["ok"]),
            1_000 + n,
        );
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .events(&EventFilter::default(), cursor.as_deref(), 50)
            .unwrap();
        assert_eq!(page.total_estimate, 120);
        seen.extend(page.items.iter().map(|(_, e)| e.id.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 120);
    assert_eq!(seen[0], "evt_119");
    assert_eq!(seen[119], "evt_000");
    let since = EventFilter {
        since_ms: Some(1_100),
        ..Default::default()
    };
    let page = store.events(&since, None, 500).unwrap();
    assert_eq!((page.items.len(), page.total_estimate), (20, 20));
    assert!(matches!(
        store.events(&EventFilter::default(), Some("x"), 5),
        Err(StoreError::InvalidCursor(_))
    ));
}

#[test]
fn retention_drops_only_finished_events_oldest_first() {
    let limits = HistoryLimits {
        retention: Duration::from_millis(10_000),
        max_size: 1 << 30,
    };
    let store = LocalStore::open(&dir("retention"))
        .unwrap()
        .with_history(Some(limits));
    accept(
        &store,
        "stripe",
        &meta("old_delivered", "t", "w", &["ok"]),
        1_000,
    );
    accept(
        &store,
        "stripe",
        &meta("old_dead", "t", "w", &["no"]),
        1_001,
    );
    accept(
        &store,
        "stripe",
        &meta("old_pending", "t", "w", &["flaky"]),
        1_002,
    );
    accept(
        &store,
        "stripe",
        &meta("new_delivered", "t", "w", &["ok"]),
        30_000,
    );
    for job in lease(&store, 30_000) {
        let answer = match job.target.as_str() {
            "ok" => 200,
            "no" => 400,
            _ => 503,
        };
        settle(&store, &job, answer, 30_100);
    }
    assert_eq!(store.prune_history(30_200).unwrap(), 1);
    let kept = list(&store, EventFilter::default());
    assert_eq!(kept, ["new_delivered", "old_pending", "old_dead"]);
    assert_eq!(store.history_usage().unwrap().events, 3);
    // Over its size, the oldest finished go first, whatever their age.
    let store = store.with_history(Some(HistoryLimits {
        retention: HOUR,
        max_size: 1,
    }));
    assert_eq!(store.prune_history(30_300).unwrap(), 1);
    assert_eq!(
        list(&store, EventFilter::default()),
        ["old_pending", "old_dead"]
    );
    // The dedup key outlives the event: the same id is still a duplicate.
    let webhook = "stripe".into();
    let again = meta("new_delivered", "t", "w", &["ok"]);
    let event = NewEvent {
        webhook: &webhook,
        meta: &again,
        content_type: None,
        headers: &[],
        body: b"{}",
    };
    assert_eq!(
        store.accept(&event, 30_400, HOUR).unwrap(),
        Acceptance::Duplicate
    );
}

#[test]
fn the_log_survives_reopening_and_a_file_from_before_it_is_counted_once() {
    let path = dir("reopen");
    {
        let store = LocalStore::open(&path).unwrap();
        accept(&store, "stripe", &meta("evt_1", "t", "w", &["ok"]), 1_000);
        for job in lease(&store, 1_000) {
            settle(&store, &job, 200, 1_100);
        }
        // What a file from before the log holds: no counts.
        store
            .write(true, |tables| {
                for key in [HISTORY_EVENTS, HISTORY_BYTES, HISTORY_COUNTED] {
                    tables.counters.remove(key).map_err(failed)?;
                }
                Ok(())
            })
            .unwrap();
    }
    let store = LocalStore::open(&path).unwrap();
    assert_eq!(list(&store, EventFilter::default()), ["evt_1"]);
    let usage = store.history_usage().unwrap();
    assert_eq!(usage.events, 1, "counted on opening");
    drop(store);
    let store = LocalStore::open(&path).unwrap();
    assert_eq!(store.history_usage().unwrap(), usage, "and only once");
}

#[test]
fn past_half_the_capacity_finished_events_go_whatever_their_age() {
    let store = LocalStore::open(&dir("crowded")).unwrap();
    accept(&store, "stripe", &meta("done", "t", "w", &["ok"]), 1_000);
    accept(
        &store,
        "stripe",
        &meta("waiting", "t", "w", &["flaky"]),
        1_001,
    );
    for job in lease(&store, 1_000) {
        settle(
            &store,
            &job,
            if job.target == "ok" { 200 } else { 503 },
            1_100,
        );
    }
    store.set_room(false, HISTORY_SHARE - 0.01);
    assert_eq!(
        store.prune_history(2_000).unwrap(),
        0,
        "young, and room enough"
    );
    store.set_room(false, HISTORY_SHARE);
    assert_eq!(store.prune_history(2_000).unwrap(), 1);
    assert_eq!(list(&store, EventFilter::default()), ["waiting"]);
}
