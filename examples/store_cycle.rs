//! The embedded store's hot path with nothing else around it, for counting
//! instructions (wall-clock time on a shared machine wanders; instruction
//! counts do not): each round accepts 64 events with one target each in
//! one group commit, leases the 64 jobs and acks them in another, as the
//! writer thread does under load.
//!
//!     cargo build --release --example store_cycle
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/store_cycle ROUNDS
//!
//! Run with two round counts; the difference of the instruction totals over
//! the difference of jobs is one job's cost, opening the store excluded.

use std::time::Duration;

use wedsync_sidecar::event::{EventMeta, Priority};
use wedsync_sidecar::store::embedded::engine::{LocalStore, Write, Written};
use wedsync_sidecar::store::records::{Job, LeaseRequest, NewEvent};

/// Writes per group commit: `BATCH=16 store_cycle 40` (default 64).
fn batch() -> usize {
    setting("BATCH", 64)
}

/// Bytes per event body: `BODY=64 store_cycle 40` (default 2048).
fn body_size() -> usize {
    setting("BODY", 2048)
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let batch = batch();
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("store-cycle-{}", std::process::id()));
    let store = LocalStore::open(&dir).expect("open the store");
    let body = vec![b'x'; body_size()];
    let targets: Vec<wedsync_sidecar::names::UpstreamName> = vec!["notify".into()];
    let room: Vec<(wedsync_sidecar::names::UpstreamName, u32)> =
        vec![("notify".into(), batch as u32)];
    let webhook = wedsync_sidecar::names::WebhookName::new("stripe");
    for round in 0..rounds {
        let metas: Vec<EventMeta> = (0..batch)
            .map(|i| EventMeta {
                id: format!("evt_{round}_{i}").into(),
                dedup: format!("evt_{round}_{i}"),
                event_type: "payment_intent.succeeded".into(),
                context: vec![("wedding_id".into(), "w-1".into())],
                priority: Priority::Normal,
                targets: targets.clone(),
                trace: None,
                recovered: false,
            })
            .collect();
        let now_ms = 1_000 + round as u64;
        let accepts: Vec<Write<'_>> = metas
            .iter()
            .map(|meta| {
                let event = NewEvent {
                    webhook: &webhook,
                    meta,
                    content_type: Some("application/json"),
                    headers: &[],
                    body: &body,
                };
                Write::Accept(event, now_ms, Duration::from_secs(3600))
            })
            .collect();
        store.apply(&accepts).expect("accept");
        let lease = LeaseRequest {
            priority: Priority::Normal,
            now_ms,
            visibility: Duration::from_secs(30),
            room: room.clone(),
            max: batch,
        };
        let leased: Vec<Job> = match store.apply(&[Write::Lease(&lease)]).expect("lease").pop() {
            Some(Ok(Written::Leased(jobs))) => jobs,
            other => panic!("a lease answers with jobs, not {other:?}"),
        };
        assert_eq!(leased.len(), batch, "every job accepted is due");
        let acks: Vec<Write<'_>> = leased.iter().map(|job| Write::Ack(job, None)).collect();
        store.apply(&acks).expect("ack");
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
