//! The Redis event store against a private `redis-server`: the same
//! records and order as the embedded store, atomic dedup, expiry of the
//! dedup window, and data that outlives the sidecar's connection.

mod support;

use std::time::Duration;

use support::RedisServer;
use wedsync_sidecar::store::local::{Acceptance, NewEvent};
use wedsync_sidecar::store::redis_events::RedisEventStore;
use wedsync_sidecar::webhooks::event::{EventMeta, Priority};

fn store(redis: &RedisServer) -> RedisEventStore {
    redis.event_store()
}

fn meta(id: &str, priority: Priority, targets: &[&str]) -> EventMeta {
    EventMeta {
        id: id.into(),
        event_type: "payment_intent.succeeded".into(),
        context: vec![("wedding_id".into(), "w-1".into())],
        priority,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    }
}

async fn accept(store: &RedisEventStore, meta: &EventMeta, window: Duration) -> Acceptance {
    store
        .accept(
            &NewEvent {
                webhook: "stripe",
                meta,
                content_type: Some("application/json"),
                body: b"{\"id\":\"evt\"}\xff",
            },
            1_000,
            window,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn events_jobs_and_dead_letters_are_written_together_in_priority_order() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let hour = Duration::from_secs(3600);
    accept(
        &store,
        &meta("evt_low", Priority::Low, &["analytics"]),
        hour,
    )
    .await;
    accept(
        &store,
        &meta("evt_normal", Priority::Normal, &["notify"]),
        hour,
    )
    .await;
    let Acceptance::Accepted(high) = accept(
        &store,
        &meta("evt_high", Priority::High, &["notify", "supplier"]),
        hour,
    )
    .await
    else {
        panic!("accepted")
    };
    let targets: Vec<_> = store
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|job| (job.target, job.attempts))
        .collect();
    assert_eq!(
        targets,
        [
            ("notify".to_string(), 0),
            ("supplier".to_string(), 0),
            ("notify".to_string(), 0),
            ("analytics".to_string(), 0)
        ]
    );
    let (stored, body) = store.event(high).await.unwrap().unwrap();
    assert_eq!(stored.id, "evt_high");
    assert_eq!(
        stored.context,
        [("wedding_id".to_string(), "w-1".to_string())]
    );
    assert_eq!(
        body, b"{\"id\":\"evt\"}\xff",
        "bodies are kept byte for byte"
    );

    accept(&store, &meta("evt_unrouted", Priority::Normal, &[]), hour).await;
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "unrouted");
    assert_eq!(
        store.event(dead[0].event).await.unwrap().unwrap().0.id,
        "evt_unrouted"
    );
}

#[tokio::test]
async fn duplicates_within_the_window_add_nothing_and_the_window_expires() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let window = Duration::from_millis(300);
    let event = meta("evt_1", Priority::Normal, &["notify"]);
    assert!(matches!(
        accept(&store, &event, window).await,
        Acceptance::Accepted(_)
    ));
    assert_eq!(accept(&store, &event, window).await, Acceptance::Duplicate);
    assert_eq!(store.pending().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        accept(&store, &event, window).await,
        Acceptance::Accepted(_)
    ));
    // Concurrent deliveries of one event: exactly one is accepted.
    let concurrent = meta("evt_race", Priority::High, &["notify"]);
    let results = futures_util::future::join_all(
        (0..20).map(|_| accept(&store, &concurrent, Duration::from_secs(60))),
    )
    .await;
    let accepted = results
        .iter()
        .filter(|r| matches!(r, Acceptance::Accepted(_)))
        .count();
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn a_new_connection_sees_what_was_accepted() {
    let redis = RedisServer::start();
    accept(
        &store(&redis),
        &meta("evt_1", Priority::High, &["notify"]),
        Duration::from_secs(60),
    )
    .await;
    let again = store(&redis);
    assert_eq!(again.pending().await.unwrap().len(), 1);
    assert_eq!(
        accept(
            &again,
            &meta("evt_1", Priority::High, &["notify"]),
            Duration::from_secs(60)
        )
        .await,
        Acceptance::Duplicate
    );
}
