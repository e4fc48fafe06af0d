//! One conformance suite for both event stores: every check runs against
//! the embedded store (a fresh redb file), against the Redis store on a
//! private `redis-server` and on a private Redis Cluster (three masters,
//! three replicas), through the `Store` trait alone; the embedded store
//! both with the event log (the default) and without it. Times are
//! passed in, so leases, visibility timeouts and retry times are exact.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use support::{RedisCluster, RedisServer};
use wedsync_sidecar::event::{EventMeta, Priority};
use wedsync_sidecar::store::embedded::EmbeddedStore;
use wedsync_sidecar::store::history::{EventFilter, EventStatus, HistoryLimits, Redelivered};
use wedsync_sidecar::store::records::TargetStatus;
use wedsync_sidecar::store::records::HISTORY_LIMIT;
use wedsync_sidecar::store::redis::RedisTarget;
use wedsync_sidecar::store::{
    Acceptance, Attempt, DeadLetterFilter, Job, LeaseRequest, OwnedEvent, Store, StoreError,
};
use wedsync_sidecar::time::unix_time;

const HOUR: Duration = Duration::from_secs(3600);
const VISIBILITY: Duration = Duration::from_secs(30);
const T0: u64 = 1_000_000;

/// A store under test, with what it needs kept alive, and a way to open
/// a second handle on the same data (a restart, another replica).
struct Subject {
    store: Arc<dyn Store>,
    /// Another worker on the same queue: the same handle for the embedded
    /// store (one process owns the file), a second connection for Redis.
    peer: Arc<dyn Store>,
    /// A new handle after `store` is dropped: a restart.
    reopen: Box<dyn Fn() -> Arc<dyn Store>>,
    _redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
    /// The store keeps the event log: an event stays after its last job.
    history: bool,
    /// Its retention runs when the store monitor asks (`prune_history`);
    /// the embedded store runs its own.
    pruned_when_asked: bool,
}

/// An event after its last job: kept and no longer pending where the store
/// keeps the event log, otherwise gone.
async fn assert_finished(subject: &Subject, sequence: u64) {
    let store = &*subject.store;
    let kept = store.event(sequence).await.unwrap();
    if !subject.history {
        assert!(kept.is_none(), "delivered events are cleaned up");
        return;
    }
    let (event, _) = kept.expect("the event log keeps it");
    let pending = EventFilter {
        status: Some(EventStatus::Pending),
        ..EventFilter::default()
    };
    let page = store.events(&pending, None, 500).await.unwrap();
    assert!(
        page.items.iter().all(|(s, _)| *s != sequence),
        "{} is no longer pending",
        event.id
    );
}

fn embedded() -> Subject {
    embedded_keeping(Some(HistoryLimits::default()))
}

fn embedded_without_history() -> Subject {
    embedded_keeping(None)
}

fn embedded_keeping(history: Option<HistoryLimits>) -> Subject {
    let dir = std::env::temp_dir().join(format!(
        "sidecar-conformance-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let open = {
        let dir = dir.clone();
        move || -> Arc<dyn Store> {
            let cache = wedsync_sidecar::store::embedded::engine::DEFAULT_CACHE;
            Arc::new(EmbeddedStore::open_with_cache(&dir, HOUR, None, cache, history).unwrap())
        }
    };
    let store = open();
    Subject {
        peer: Arc::clone(&store),
        store,
        reopen: Box::new(open),
        _redis: None,
        _cluster: None,
        history: history.is_some(),
        pruned_when_asked: false,
    }
}

fn redis() -> Subject {
    let redis = RedisServer::start();
    let url = redis.url();
    let open = move || -> Arc<dyn Store> { Arc::new(support::redis_event_store(&url)) };
    Subject {
        store: open(),
        peer: open(),
        reopen: Box::new(open),
        _redis: Some(redis),
        _cluster: None,
        history: true,
        pruned_when_asked: true,
    }
}

fn redis_cluster() -> Subject {
    let cluster = RedisCluster::start();
    let target = RedisTarget {
        urls: cluster.urls(),
        cluster: true,
        ..RedisTarget::default()
    };
    let open = move || -> Arc<dyn Store> { Arc::new(support::event_store_on(target.clone())) };
    Subject {
        store: open(),
        peer: open(),
        reopen: Box::new(open),
        _redis: None,
        _cluster: Some(cluster),
        history: true,
        pruned_when_asked: true,
    }
}

/// Each check, once per store.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod embedded_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(super::embedded()).await })*
        }
        mod embedded_store_without_history {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(super::embedded_without_history()).await })*
        }
        mod redis_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(super::redis()).await })*
        }
        mod redis_cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(super::redis_cluster()).await })*
        }
    };
}

conformance!(
    an_event_is_stored_with_one_job_per_target_leased_in_priority_order,
    duplicates_are_refused_within_the_window_and_accepted_after_it,
    concurrent_copies_of_one_event_store_it_once,
    unrouted_events_are_dead_letters_that_are_never_replayed,
    a_leased_job_is_invisible_until_its_visibility_timeout_then_leased_again,
    a_holder_whose_lease_expired_can_neither_ack_nor_reschedule,
    a_lease_takes_a_batch_within_each_targets_room,
    a_retry_is_due_at_its_time_with_the_attempt_recorded,
    an_acked_job_is_gone_and_its_event_with_the_last_one,
    dead_letters_list_newest_first_filter_and_page,
    a_replay_puts_the_job_back_with_fresh_attempts_and_its_history,
    replay_all_and_delete,
    history_is_bounded,
    queue_depth_and_oldest_event_age,
    what_was_accepted_survives_a_new_handle,
    a_bad_cursor_is_refused,
    the_event_log_keeps_outcomes_and_redelivers,
    an_event_id_with_control_bytes_is_kept_and_dropped_whole,
    gap_repair_state_is_shared_and_one_holder_leases_it_at_a_time,
    gap_repair_knows_what_was_accepted_and_what_it_asked_for,
);

/// `seen` finds an accepted event by its id, whether its dedup key is the
/// id (Stripe's) or a digest (GitHub's), from every handle; a redelivery
/// asked for is known, per webhook, until its time lapses.
async fn gap_repair_knows_what_was_accepted_and_what_it_asked_for(subject: Subject) {
    let store = &*subject.store;
    accept(store, "evt_1", Priority::Normal, &["notify"]).await;
    let mut github = meta("guid-1", Priority::Normal, &["notify"]);
    github.dedup = "sha256:0b5f2c".into();
    assert!(matches!(
        store
            .accept(event("github", github, T0, HOUR))
            .await
            .unwrap(),
        Acceptance::Accepted(_)
    ));
    for (webhook, id, known) in [
        ("stripe", "evt_1", true),
        ("stripe", "evt_2", false),
        ("github", "evt_1", false),
        ("github", "guid-1", true),
    ] {
        assert_eq!(
            subject.peer.seen(webhook, id).await.unwrap(),
            known,
            "{webhook} {id}"
        );
    }
    let ttl = Duration::from_millis(400);
    store
        .note_redeliveries("github", &["guid-2".into(), "guid-3".into()], ttl)
        .await
        .unwrap();
    store.note_redeliveries("github", &[], ttl).await.unwrap();
    assert!(subject
        .peer
        .redelivery_asked("github", "guid-2")
        .await
        .unwrap());
    assert!(subject
        .peer
        .redelivery_asked("github", "guid-3")
        .await
        .unwrap());
    assert!(!subject
        .peer
        .redelivery_asked("github", "guid-1")
        .await
        .unwrap());
    assert!(!subject
        .peer
        .redelivery_asked("stripe", "guid-2")
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !subject
            .peer
            .redelivery_asked("github", "guid-2")
            .await
            .unwrap(),
        "lapsed"
    );
}

/// Gap repair's checkpoint is read by every handle and survives a new
/// one; its lease is held by one holder at a time, renewed by that holder,
/// and taken by another once it lapses.
async fn gap_repair_state_is_shared_and_one_holder_leases_it_at_a_time(subject: Subject) {
    let ttl = Duration::from_millis(300);
    assert_eq!(subject.store.recover_state("stripe").await.unwrap(), None);
    subject
        .store
        .save_recover_state("stripe", br#"{"checkpoint":1}"#)
        .await
        .unwrap();
    subject
        .store
        .save_recover_state("github", b"other")
        .await
        .unwrap();
    assert_eq!(
        subject
            .peer
            .recover_state("stripe")
            .await
            .unwrap()
            .as_deref(),
        Some(&br#"{"checkpoint":1}"#[..])
    );
    assert!(subject
        .store
        .lease_recover("stripe", "pod-a", ttl)
        .await
        .unwrap());
    assert!(!subject
        .peer
        .lease_recover("stripe", "pod-b", ttl)
        .await
        .unwrap());
    assert!(
        subject
            .peer
            .lease_recover("github", "pod-b", ttl)
            .await
            .unwrap(),
        "one lease per webhook"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        subject
            .store
            .lease_recover("stripe", "pod-a", ttl)
            .await
            .unwrap(),
        "renewed by its holder"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !subject
            .peer
            .lease_recover("stripe", "pod-b", ttl)
            .await
            .unwrap(),
        "the renewal counts from when it was made"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        subject
            .peer
            .lease_recover("stripe", "pod-b", ttl)
            .await
            .unwrap(),
        "lapsed: another takes it"
    );
    assert!(!subject
        .store
        .lease_recover("stripe", "pod-a", ttl)
        .await
        .unwrap());
    drop((subject.store, subject.peer));
    let again = (subject.reopen)();
    assert_eq!(
        again.recover_state("github").await.unwrap().as_deref(),
        Some(&b"other"[..])
    );
}

fn meta(id: &str, priority: Priority, targets: &[&str]) -> EventMeta {
    EventMeta {
        id: id.into(),
        dedup: id.into(),
        event_type: "payment_intent.succeeded".into(),
        context: vec![("wedding_id".into(), "w-1".into())],
        priority,
        targets: targets.iter().map(|t| (*t).into()).collect(),
        trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        recovered: false,
    }
}

fn event(webhook: &str, meta: EventMeta, now_ms: u64, window: Duration) -> OwnedEvent {
    OwnedEvent {
        webhook: webhook.into(),
        meta,
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        body: bytes::Bytes::from_static(b"{\"id\":\"evt\"}\xff"),
        now_ms,
        dedup_window: window,
    }
}

async fn accept(store: &dyn Store, id: &str, priority: Priority, targets: &[&str]) -> u64 {
    accept_at(store, "stripe", id, priority, targets, T0).await
}

async fn accept_at(
    store: &dyn Store,
    webhook: &str,
    id: &str,
    priority: Priority,
    targets: &[&str],
    now_ms: u64,
) -> u64 {
    match store
        .accept(event(webhook, meta(id, priority, targets), now_ms, HOUR))
        .await
        .unwrap()
    {
        Acceptance::Accepted(sequence) => sequence,
        Acceptance::Duplicate => panic!("{id} was taken for a duplicate"),
    }
}

fn lease_request(
    priority: Priority,
    now_ms: u64,
    room: &[(String, u32)],
    max: usize,
) -> LeaseRequest {
    LeaseRequest {
        priority,
        now_ms,
        visibility: VISIBILITY,
        room: room.iter().map(|(t, n)| (t.as_str().into(), *n)).collect(),
        max,
    }
}

async fn lease(store: &dyn Store, priority: Priority, now_ms: u64) -> Option<Job> {
    let mut leased = store
        .lease(&lease_request(priority, now_ms, &[], 1))
        .await
        .unwrap();
    assert!(leased.len() <= 1);
    leased.pop()
}

/// Leases every due job, high first, as a worker draining the queue would.
async fn drain(store: &dyn Store, now_ms: u64) -> Vec<Job> {
    let mut jobs = Vec::new();
    for priority in Priority::ALL {
        while let Some(job) = lease(store, priority, now_ms).await {
            jobs.push(job);
        }
    }
    jobs
}

fn failure(at_ms: u64, status: u16) -> Attempt {
    Attempt {
        at_ms,
        duration_ms: 12,
        backend: Some("127.0.0.1:7001".into()),
        status: Some(status),
        error: None,
        response: None,
    }
}

/// A job leased, failed with `status` and dead-lettered at `at_ms`.
async fn kill_job(store: &dyn Store, job: &Job, status: u16, at_ms: u64) {
    store
        .dead_letter(job, Some(failure(at_ms, status)), "rejected", at_ms)
        .await
        .unwrap();
}

async fn an_event_is_stored_with_one_job_per_target_leased_in_priority_order(subject: Subject) {
    let store = &*subject.store;
    accept(store, "evt_low", Priority::Low, &["analytics"]).await;
    accept(store, "evt_normal", Priority::Normal, &["notify"]).await;
    let high = accept(store, "evt_high", Priority::High, &["notify", "supplier"]).await;

    let leased: Vec<_> = drain(store, T0)
        .await
        .into_iter()
        .map(|job| (job.target.to_string(), job.priority, job.attempts))
        .collect();
    assert_eq!(
        leased,
        [
            ("notify".to_string(), Priority::High, 0),
            ("supplier".to_string(), Priority::High, 0),
            ("notify".to_string(), Priority::Normal, 0),
            ("analytics".to_string(), Priority::Low, 0),
        ]
    );
    let (stored, body) = store.event(high).await.unwrap().unwrap();
    assert_eq!(
        (stored.webhook.as_str(), stored.id.as_str()),
        ("stripe", "evt_high")
    );
    assert_eq!(stored.event_type, "payment_intent.succeeded");
    assert_eq!(stored.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        stored.context,
        [("wedding_id".to_string(), "w-1".to_string())]
    );
    assert_eq!(stored.received_at_ms, T0);
    assert_eq!(
        stored.trace.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "the trace that accepted it is kept for its deliveries"
    );
    assert_eq!(
        body, b"{\"id\":\"evt\"}\xff",
        "bodies are kept byte for byte"
    );
}

async fn duplicates_are_refused_within_the_window_and_accepted_after_it(subject: Subject) {
    let store = &*subject.store;
    // The Redis store expires dedup keys on Redis's clock: real time here.
    let window = Duration::from_millis(400);
    let now = || unix_time().as_millis() as u64;
    let first = event(
        "stripe",
        meta("evt_1", Priority::Normal, &["notify"]),
        now(),
        window,
    );
    assert!(matches!(
        store.accept(first.clone()).await.unwrap(),
        Acceptance::Accepted(_)
    ));
    let again = OwnedEvent {
        now_ms: now(),
        ..first.clone()
    };
    assert_eq!(store.accept(again).await.unwrap(), Acceptance::Duplicate);
    let other_webhook = OwnedEvent {
        webhook: "resend".into(),
        now_ms: now(),
        ..first.clone()
    };
    assert!(
        matches!(
            store.accept(other_webhook).await.unwrap(),
            Acceptance::Accepted(_)
        ),
        "dedup is per webhook"
    );
    assert_eq!(
        store.queue_depth().await.unwrap().normal,
        2,
        "a duplicate adds no job"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let later = OwnedEvent {
        now_ms: now(),
        ..first
    };
    assert!(matches!(
        store.accept(later).await.unwrap(),
        Acceptance::Accepted(_)
    ));
}

async fn concurrent_copies_of_one_event_store_it_once(subject: Subject) {
    let results = futures_util::future::join_all((0..20).map(|_| {
        let store = Arc::clone(&subject.store);
        tokio::spawn(async move {
            store
                .accept(event(
                    "stripe",
                    meta("evt_race", Priority::High, &["notify"]),
                    T0,
                    HOUR,
                ))
                .await
                .unwrap()
        })
    }))
    .await;
    let accepted = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Acceptance::Accepted(_)))
        .count();
    assert_eq!(accepted, 1);
    assert_eq!(subject.store.queue_depth().await.unwrap().high, 1);
}

async fn unrouted_events_are_dead_letters_that_are_never_replayed(subject: Subject) {
    let store = &*subject.store;
    let sequence = accept(store, "evt_x", Priority::Normal, &[]).await;
    assert_eq!(store.queue_depth().await.unwrap().total(), 0);
    let page = store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let dead = &page.items[0];
    assert_eq!(
        (dead.reason.as_str(), dead.job.target.as_str()),
        ("unrouted", "")
    );
    assert_eq!((dead.job.event, dead.dead_at_ms), (sequence, T0));
    assert_eq!(store.event(sequence).await.unwrap().unwrap().0.id, "evt_x");
    assert!(!store.replay(dead.job.id, T0).await.unwrap());
    assert_eq!(
        store
            .replay_all(&DeadLetterFilter::default(), T0)
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .dead_letter_by_id(dead.job.id)
            .await
            .unwrap()
            .is_some(),
        "still there"
    );
    assert_eq!(
        store.dead_letter_counts().await.unwrap(),
        [("stripe".to_string(), 1)]
    );
}

async fn a_leased_job_is_invisible_until_its_visibility_timeout_then_leased_again(
    subject: Subject,
) {
    let store = &*subject.store;
    accept(store, "evt_1", Priority::High, &["notify"]).await;
    let first = lease(store, Priority::High, T0).await.expect("due");
    assert!(first.leased);
    assert_eq!(first.due_ms, T0 + VISIBILITY.as_millis() as u64);
    let end = T0 + VISIBILITY.as_millis() as u64;
    assert!(
        lease(store, Priority::High, end - 1).await.is_none(),
        "invisible while leased"
    );
    // The holder died: once the timeout passes, any worker leases it.
    let second = lease(&*subject.peer, Priority::High, end)
        .await
        .expect("reclaimed");
    assert_eq!(second.id, first.id);
    assert!(second.lease > first.lease, "a new lease has a new token");
    assert_eq!(
        store.queue_depth().await.unwrap().high,
        1,
        "leased jobs still count"
    );
}

async fn a_holder_whose_lease_expired_can_neither_ack_nor_reschedule(subject: Subject) {
    let store = &*subject.store;
    accept(store, "evt_1", Priority::High, &["notify"]).await;
    let stale = lease(store, Priority::High, T0).await.unwrap();
    let current = lease(store, Priority::High, T0 + 60_000).await.unwrap();
    let lost = Err(StoreError::LeaseLost(stale.id));
    assert_eq!(store.ack(&stale, None).await, lost);
    assert_eq!(store.retry_at(&stale, failure(T0, 500), T0).await, lost);
    assert_eq!(store.dead_letter(&stale, None, "rejected", T0).await, lost);
    store.ack(&current, None).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap().total(), 0);
    assert_eq!(
        store.ack(&current, None).await,
        Err(StoreError::LeaseLost(current.id)),
        "a job is acked once"
    );
}

async fn a_lease_takes_a_batch_within_each_targets_room(subject: Subject) {
    let store = &*subject.store;
    for i in 0..3 {
        accept(store, &format!("evt_slow_{i}"), Priority::Normal, &["slow"]).await;
    }
    // A long backlog for a full target, due before everything else, hides
    // nothing: one queue per target.
    let stuck: Vec<String> = (0..1000).map(|i| format!("evt_stuck_{i}")).collect();
    futures_util::future::join_all(
        stuck
            .iter()
            .map(|id| accept_at(store, "stripe", id, Priority::Normal, &["stuck"], T0 - 1)),
    )
    .await;
    accept(store, "evt_fast", Priority::Normal, &["fast"]).await;
    let room = [
        ("slow".to_string(), 1),
        ("fast".to_string(), 5),
        ("stuck".to_string(), 0),
    ];
    let batch = store
        .lease(&lease_request(Priority::Normal, T0, &room, 10))
        .await
        .unwrap();
    let targets: Vec<&str> = batch.iter().map(|j| j.target.as_str()).collect();
    assert_eq!(
        targets,
        ["slow", "fast"],
        "one slow (its room), then the fast one"
    );
    let full = [("slow".to_string(), 0), ("stuck".to_string(), 0)];
    assert!(store
        .lease(&lease_request(Priority::Normal, T0, &full, 10))
        .await
        .unwrap()
        .is_empty());
    let stuck = [("stuck".to_string(), 0)];
    let rest = store
        .lease(&lease_request(Priority::Normal, T0, &stuck, 1))
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "at most `max`");
    let uncapped = store
        .lease(&lease_request(Priority::Normal, T0, &stuck, 10))
        .await
        .unwrap();
    assert_eq!(uncapped.len(), 1, "what is left");
    let oldest = store
        .lease(&lease_request(Priority::Normal, T0, &[], 3))
        .await
        .unwrap();
    let oldest: Vec<&str> = oldest.iter().map(|j| j.event_id.as_str()).collect();
    assert_eq!(oldest.len(), 3);
    assert!(
        oldest.iter().all(|id| id.starts_with("evt_stuck_")),
        "oldest due first: {oldest:?}"
    );
    let ids: BTreeSet<u64> = batch
        .iter()
        .chain(&rest)
        .chain(&uncapped)
        .map(|j| j.id)
        .collect();
    assert_eq!(ids.len(), 4, "each job leased once");
}

async fn a_retry_is_due_at_its_time_with_the_attempt_recorded(subject: Subject) {
    let store = &*subject.store;
    accept(store, "evt_1", Priority::Normal, &["notify"]).await;
    let job = lease(store, Priority::Normal, T0).await.unwrap();
    store
        .retry_at(&job, failure(T0, 503), T0 + 2_000)
        .await
        .unwrap();
    assert!(lease(store, Priority::Normal, T0 + 1_999).await.is_none());
    let retried = lease(store, Priority::Normal, T0 + 2_000)
        .await
        .expect("due");
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.history, [failure(T0, 503)]);
    // Retries are ordered by due time: an earlier retry goes first.
    accept(store, "evt_2", Priority::Normal, &["notify"]).await;
    let newer = lease(store, Priority::Normal, T0 + 2_000).await.unwrap();
    store
        .retry_at(&retried, failure(T0 + 2_000, 503), T0 + 9_000)
        .await
        .unwrap();
    store
        .retry_at(&newer, failure(T0 + 2_000, 503), T0 + 5_000)
        .await
        .unwrap();
    let first = lease(store, Priority::Normal, T0 + 10_000).await.unwrap();
    assert_eq!(first.id, newer.id);
}

async fn an_acked_job_is_gone_and_its_event_with_the_last_one(subject: Subject) {
    let store = &*subject.store;
    let sequence = accept(store, "evt_1", Priority::High, &["notify", "supplier"]).await;
    let jobs = drain(store, T0).await;
    store.ack(&jobs[0], None).await.unwrap();
    assert!(
        store.event(sequence).await.unwrap().is_some(),
        "one target still waits"
    );
    store.ack(&jobs[1], None).await.unwrap();
    assert_finished(&subject, sequence).await;
    assert_eq!(store.queue_depth().await.unwrap().total(), 0);
    assert!(drain(store, T0 + 3_600_000).await.is_empty());
}

async fn dead_letters_list_newest_first_filter_and_page(subject: Subject) {
    let store = &*subject.store;
    for (i, (webhook, target)) in [
        ("stripe", "notify"),
        ("stripe", "supplier"),
        ("resend", "notify"),
        ("stripe", "notify"),
        ("resend", "supplier"),
    ]
    .into_iter()
    .enumerate()
    {
        accept_at(
            store,
            webhook,
            &format!("evt_{i}"),
            Priority::Normal,
            &[target],
            T0,
        )
        .await;
    }
    let jobs = drain(store, T0).await;
    // Die in reverse order of acceptance: the list follows death, not birth.
    for (i, job) in jobs.iter().rev().enumerate() {
        kill_job(store, job, 400, T0 + 10 * i as u64).await;
    }
    let all = store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    let order: Vec<u64> = all.items.iter().map(|d| d.job.id).collect();
    let expected: Vec<u64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(order, expected, "newest dead first");
    assert_eq!(all.next, None);
    let letter = &all.items[0];
    assert_eq!(
        (letter.reason.as_str(), letter.job.attempts),
        ("rejected", 1)
    );
    assert_eq!(letter.last_error().as_deref(), Some("HTTP 400"));

    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .dead_letters(&DeadLetterFilter::default(), cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        paged.extend(page.items.iter().map(|d| d.job.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, expected, "pages cover every dead letter once");

    let stripe_notify = DeadLetterFilter {
        webhook: Some("stripe".into()),
        target: Some("notify".into()),
    };
    let filtered = store.dead_letters(&stripe_notify, None, 1).await.unwrap();
    assert_eq!(filtered.items.len(), 1);
    let rest = store
        .dead_letters(&stripe_notify, filtered.next.as_deref(), 10)
        .await
        .unwrap();
    let both: Vec<u64> = filtered
        .items
        .iter()
        .chain(&rest.items)
        .map(|d| d.job.id)
        .collect();
    // Newest dead first, and the jobs died in reverse of their lease order
    // (across a sharded queue's parts that is not acceptance order).
    let expected: Vec<u64> = jobs
        .iter()
        .filter(|j| j.webhook.as_str() == "stripe" && j.target.as_str() == "notify")
        .map(|j| j.id)
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(both, expected);
    assert_eq!(
        store.dead_letter_counts().await.unwrap(),
        [("resend".to_string(), 2), ("stripe".to_string(), 3)]
    );
}

async fn a_replay_puts_the_job_back_with_fresh_attempts_and_its_history(subject: Subject) {
    let store = &*subject.store;
    let sequence = accept(store, "evt_1", Priority::High, &["notify"]).await;
    let job = lease(store, Priority::High, T0).await.unwrap();
    store.retry_at(&job, failure(T0, 503), T0).await.unwrap();
    let job = lease(store, Priority::High, T0).await.unwrap();
    kill_job(store, &job, 400, T0 + 5).await;
    assert_eq!(store.queue_depth().await.unwrap().total(), 0);
    assert!(
        store.event(sequence).await.unwrap().is_some(),
        "a dead letter keeps its event"
    );

    let dead = store
        .dead_letter_by_id(job.id)
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(dead.job.history, [failure(T0, 503), failure(T0 + 5, 400)]);
    assert!(store.replay(job.id, T0 + 100).await.unwrap());
    assert!(
        !store.replay(job.id, T0 + 100).await.unwrap(),
        "replayed once"
    );
    assert!(store.dead_letter_by_id(job.id).await.unwrap().is_none());
    assert!(
        lease(store, Priority::High, T0 + 99).await.is_none(),
        "due from the replay on"
    );
    let again = lease(store, Priority::High, T0 + 100)
        .await
        .expect("back on the queue");
    assert_eq!(
        (again.id, again.attempts, again.history.len()),
        (job.id, 0, 2)
    );
    assert!(
        again.lease > job.lease,
        "tokens keep counting across a replay"
    );
    assert_eq!(
        store.ack(&job, None).await,
        Err(StoreError::LeaseLost(job.id))
    );
    store.ack(&again, None).await.unwrap();
    assert_finished(&subject, sequence).await;
}

async fn replay_all_and_delete(subject: Subject) {
    let store = &*subject.store;
    let kept = accept(store, "evt_0", Priority::Low, &["notify", "supplier"]).await;
    accept_at(store, "resend", "evt_1", Priority::Low, &["notify"], T0).await;
    for (i, job) in drain(store, T0).await.iter().enumerate() {
        kill_job(store, job, 422, T0 + i as u64).await;
    }
    let notify = DeadLetterFilter {
        target: Some("notify".into()),
        ..DeadLetterFilter::default()
    };
    assert_eq!(store.replay_all(&notify, T0).await.unwrap(), 2);
    assert_eq!(store.queue_depth().await.unwrap().low, 2);
    let remaining = store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(remaining.items.len(), 1);
    let supplier = remaining.items[0].job.clone();
    assert_eq!(supplier.target, "supplier");

    assert!(store.delete_dead_letter(supplier.id).await.unwrap());
    assert!(!store.delete_dead_letter(supplier.id).await.unwrap());
    assert!(
        store.event(kept).await.unwrap().is_some(),
        "its notify job still needs it"
    );
    for job in drain(store, T0).await {
        store.ack(&job, None).await.unwrap();
    }
    assert_finished(&subject, kept).await;
    assert!(store.dead_letter_counts().await.unwrap().is_empty());
}

async fn history_is_bounded(subject: Subject) {
    let store = &*subject.store;
    accept(store, "evt_1", Priority::Normal, &["notify"]).await;
    for i in 0..(HISTORY_LIMIT as u64 + 5) {
        let job = lease(store, Priority::Normal, T0 + i).await.unwrap();
        store
            .retry_at(&job, failure(T0 + i, 500), T0 + i + 1)
            .await
            .unwrap();
    }
    let job = lease(store, Priority::Normal, T0 + 1_000).await.unwrap();
    assert_eq!(job.attempts, HISTORY_LIMIT as u32 + 5);
    assert_eq!(job.history.len(), HISTORY_LIMIT);
    assert_eq!(
        job.history[0].at_ms,
        T0 + 5,
        "the oldest attempts are dropped"
    );
}

async fn queue_depth_and_oldest_event_age(subject: Subject) {
    let store = &*subject.store;
    assert_eq!(store.oldest_pending_ms().await.unwrap(), None);
    accept_at(store, "stripe", "evt_1", Priority::High, &["a", "b"], T0).await;
    accept_at(store, "stripe", "evt_2", Priority::Low, &["a"], T0 + 50).await;
    let depth = store.queue_depth().await.unwrap();
    assert_eq!((depth.high, depth.normal, depth.low), (2, 0, 1));
    assert_eq!(store.oldest_pending_ms().await.unwrap(), Some(T0));
    for job in [
        lease(store, Priority::High, T0).await.unwrap(),
        lease(store, Priority::High, T0).await.unwrap(),
    ] {
        store.ack(&job, None).await.unwrap();
    }
    assert_eq!(store.oldest_pending_ms().await.unwrap(), Some(T0 + 50));
    let low = lease(store, Priority::Low, T0 + 50).await.unwrap();
    kill_job(store, &low, 400, T0).await;
    assert_eq!(
        store.oldest_pending_ms().await.unwrap(),
        None,
        "dead letters are not waiting"
    );
}

async fn what_was_accepted_survives_a_new_handle(subject: Subject) {
    accept(&*subject.store, "evt_1", Priority::High, &["notify"]).await;
    let job = lease(&*subject.store, Priority::High, T0).await.unwrap();
    kill_job(&*subject.store, &job, 400, T0).await;
    accept(&*subject.store, "evt_2", Priority::High, &["notify"]).await;
    drop((subject.store, subject.peer));
    let again = (subject.reopen)();
    assert_eq!(again.queue_depth().await.unwrap().high, 1);
    assert_eq!(
        again
            .accept(event(
                "stripe",
                meta("evt_1", Priority::High, &["notify"]),
                T0,
                HOUR
            ))
            .await
            .unwrap(),
        Acceptance::Duplicate,
        "dedup keys are durable too"
    );
    let next = accept(&*again, "evt_3", Priority::High, &["notify"]).await;
    let newest = lease(&*again, Priority::High, T0).await.unwrap();
    let newest = if newest.event == next {
        newest
    } else {
        lease(&*again, Priority::High, T0).await.unwrap()
    };
    assert_eq!(newest.event, next);
    assert_ne!(newest.id, job.id, "numbers are never given out twice");
    assert_ne!(next, job.event, "numbers are never given out twice");
    assert!(again.dead_letter_by_id(job.id).await.unwrap().is_some());
}

async fn a_bad_cursor_is_refused(subject: Subject) {
    let error = subject
        .store
        .dead_letters(&DeadLetterFilter::default(), Some("nonsense"), 10)
        .await
        .unwrap_err();
    assert_eq!(error, StoreError::InvalidCursor("nonsense".into()));
}

/// The event log through the `Store` trait: each target's outcome and
/// attempts after delivery, filters, one redelivery (a new job for the
/// delivered target, the dead letter replayed), a filtered one with its
/// dry run, the log's counts. Without the log, an event is listed only
/// while a job or dead letter refers to it.
async fn the_event_log_keeps_outcomes_and_redelivers(subject: Subject) {
    let store = &*subject.store;
    let sequence = accept(store, "evt_log", Priority::Normal, &["notify", "supplier"]).await;
    let jobs = drain(store, T0).await;
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        if job.target == "notify" {
            let mut ok = failure(T0 + 10, 200);
            ok.response = Some("thanks".into());
            store.ack(job, Some(ok)).await.unwrap();
        } else {
            kill_job(store, job, 400, T0 + 10).await;
        }
    }
    if !subject.history {
        // Its dead letter keeps it, without outcomes.
        let page = store
            .events(&EventFilter::default(), None, 50)
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1);
        return;
    }
    let filter = |status: Option<EventStatus>, target: Option<&str>| EventFilter {
        status,
        target: target.map(str::to_string),
        ..EventFilter::default()
    };
    let count = |f: EventFilter| async move {
        let page = store.events(&f, None, 50).await.unwrap();
        assert_eq!(page.items.len() as u64, page.total_estimate);
        page.items.len()
    };
    assert_eq!(count(filter(Some(EventStatus::Partial), None)).await, 1);
    assert_eq!(
        count(filter(Some(EventStatus::Dead), Some("supplier"))).await,
        1
    );
    assert_eq!(
        count(filter(Some(EventStatus::Dead), Some("notify"))).await,
        0
    );
    let detail = store
        .event_detail("stripe", "evt_log")
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(detail.sequence, sequence);
    assert!(!detail.body.is_empty());
    let outcome = |detail: &wedsync_sidecar::store::history::EventDetail, target: &str| {
        detail
            .event
            .targets
            .iter()
            .find(|t| t.target == target)
            .cloned()
            .unwrap()
    };
    let notify = outcome(&detail, "notify");
    assert_eq!(notify.status, TargetStatus::Delivered);
    assert_eq!(notify.attempts.len(), 1);
    assert_eq!(notify.attempts[0].response.as_deref(), Some("thanks"));
    assert_eq!(outcome(&detail, "supplier").attempts[0].status, Some(400));

    assert_eq!(
        store.redeliver(sequence, None, T0 + 100).await.unwrap(),
        Some(2)
    );
    assert!(store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
    let again = drain(store, T0 + 100).await;
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|j| j.redelivery && j.event == sequence));
    assert_eq!(count(filter(Some(EventStatus::Pending), None)).await, 1);
    for job in &again {
        store.ack(job, Some(failure(T0 + 110, 200))).await.unwrap();
    }
    assert_eq!(count(filter(Some(EventStatus::Delivered), None)).await, 1);
    let detail = store
        .event_detail("stripe", "evt_log")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome(&detail, "notify").attempts.len(),
        2,
        "both deliveries"
    );
    assert_eq!(
        outcome(&detail, "supplier").attempts.len(),
        2,
        "the rejection and the redelivery"
    );

    let delivered = filter(Some(EventStatus::Delivered), None);
    assert_eq!(
        store
            .redeliver_matching(&delivered, 10, true, T0 + 200)
            .await
            .unwrap(),
        Redelivered::Matched(1)
    );
    assert_eq!(
        store
            .redeliver_matching(&delivered, 10, false, T0 + 200)
            .await
            .unwrap(),
        Redelivered::Queued(1)
    );
    assert_eq!(drain(store, T0 + 200).await.len(), 2);
    let usage = store.history_usage().await.unwrap();
    assert_eq!(usage.events, 1);
    assert!(usage.bytes > 0);
}

/// An id may hold any byte, separators the stores use among them: the
/// event is found by it, and dropped whole when it goes.
async fn an_event_id_with_control_bytes_is_kept_and_dropped_whole(subject: Subject) {
    let store = &*subject.store;
    let odd = "evt\u{1e}odd\u{1f}id";
    let sequence = accept(store, odd, Priority::Normal, &["notify"]).await;
    for job in drain(store, T0).await {
        store.ack(&job, None).await.unwrap();
    }
    if !subject.history {
        assert!(store.event(sequence).await.unwrap().is_none());
        return;
    }
    let detail = store
        .event_detail("stripe", odd)
        .await
        .unwrap()
        .expect("found by its id");
    assert_eq!(detail.sequence, sequence);
    // Far past the retention: a store that the monitor asks drops it now
    // (the embedded store's own cleaner does it on its schedule).
    let later = unix_time().as_millis() as u64 + 30 * 24 * 3_600_000;
    let dropped = store.prune_history(later).await.unwrap();
    assert_eq!(dropped > 0, subject.pruned_when_asked);
    if subject.pruned_when_asked {
        assert!(store.event(sequence).await.unwrap().is_none());
        assert!(store.event_detail("stripe", odd).await.unwrap().is_none());
        assert_eq!(store.history_usage().await.unwrap().events, 0);
    }
}
