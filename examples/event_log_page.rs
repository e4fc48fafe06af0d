//! How long a page of the event log takes with many events kept: fills an
//! embedded store (under DIR, kept between runs) to COUNT events, each
//! leased and acked (so every one is a finished, delivered event, as the
//! log holds them after a day), then times `GET /admin/events`'s store call
//! for a set of filters, several times each, and prints the median and the
//! worst in ms with what each page found.
//!
//!     cargo run --release --example event_log_page -- DIR 1000000
//!
//! Events: 4 sources, 8 types in two families, 1,000 weddings, 512-byte
//! bodies, received one ms apart.

use std::time::{Duration, Instant};

use wedsync_sidecar::event::{EventMeta, Priority};
use wedsync_sidecar::store::embedded::engine::{LocalStore, Write};
use wedsync_sidecar::store::history::{EventFilter, EventStatus, HistoryLimits};
use wedsync_sidecar::store::records::{LeaseRequest, NewEvent};

const BATCH: usize = 256;
const START_MS: u64 = 1_800_000_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let count: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    // Nothing is dropped while the bench fills it.
    let limits = HistoryLimits {
        retention: Duration::from_secs(10 * 365 * 86_400),
        max_size: u64::MAX,
    };
    let store = LocalStore::open_with_cache(&dir, 64 << 20)
        .expect("open the store")
        .with_history(Some(limits));
    let kept = store.history_usage().expect("usage").events as usize;
    if kept < count {
        fill(&store, kept, count);
    }
    let usage = store.history_usage().expect("usage");
    println!(
        "{} events kept, {} MiB of records and bodies",
        usage.events,
        usage.bytes >> 20
    );
    let newest = START_MS + count as u64;
    let filters: Vec<(&str, EventFilter)> = vec![
        ("no filter", EventFilter::default()),
        (
            "source",
            EventFilter {
                source: Some("stripe".into()),
                ..Default::default()
            },
        ),
        (
            "source + type glob",
            EventFilter {
                source: Some("stripe".into()),
                event_type: Some("payment_intent.*".into()),
                ..Default::default()
            },
        ),
        (
            "wedding (1 in 1,000)",
            EventFilter {
                context: vec![("wedding_id".into(), "w-42".into())],
                ..Default::default()
            },
        ),
        (
            "status dead (none)",
            EventFilter {
                status: Some(EventStatus::Dead),
                ..Default::default()
            },
        ),
        (
            "last 10 minutes, delivered",
            EventFilter {
                since_ms: Some(newest - 600_000),
                status: Some(EventStatus::Delivered),
                ..Default::default()
            },
        ),
    ];
    println!("| filter | items | total_estimate | median ms | worst ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, filter) in &filters {
        let mut times = Vec::new();
        let mut found = (0, 0);
        for _ in 0..7 {
            let started = Instant::now();
            let page = store.events(filter, None, 50).expect("a page");
            times.push(started.elapsed());
            found = (page.items.len(), page.total_estimate);
        }
        times.sort();
        println!(
            "| {name} | {} | {} | {:.1} | {:.1} |",
            found.0,
            found.1,
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
    }
}

/// Accepts events `from..to` in group commits, and leases and acks them.
fn fill(store: &LocalStore, from: usize, to: usize) {
    let started = Instant::now();
    let sources: [wedsync_sidecar::names::WebhookName; 4] =
        ["stripe", "resend", "twilio", "supplier"].map(Into::into);
    let types = [
        "payment_intent.succeeded",
        "payment_intent.failed",
        "charge.succeeded",
        "charge.refunded",
        "email.delivered",
        "email.bounced",
        "message.sent",
        "message.failed",
    ];
    let body = vec![b'x'; 512];
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("stripe-signature".to_string(), "[redacted]".to_string()),
    ];
    let targets: Vec<wedsync_sidecar::names::UpstreamName> = vec!["notify".into()];
    let mut n = from;
    while n < to {
        let end = (n + BATCH).min(to);
        let metas: Vec<EventMeta> = (n..end)
            .map(|i| EventMeta {
                id: format!("evt_{i:08}").into(),
                dedup: format!("evt_{i:08}"),
                event_type: types[i % types.len()].into(),
                context: vec![("wedding_id".into(), format!("w-{}", i % 1000))],
                priority: Priority::Normal,
                targets: targets.clone(),
                trace: None,
                recovered: false,
            })
            .collect();
        let accepts: Vec<Write<'_>> = metas
            .iter()
            .enumerate()
            .map(|(k, meta)| {
                let i = n + k;
                Write::Accept(
                    NewEvent {
                        webhook: &sources[i % sources.len()],
                        meta,
                        content_type: Some("application/json"),
                        headers: &headers,
                        body: &body,
                    },
                    START_MS + i as u64,
                    Duration::from_secs(3600),
                )
            })
            .collect();
        store.apply(&accepts).expect("accept");
        let jobs = store
            .lease(&LeaseRequest {
                priority: Priority::Normal,
                now_ms: START_MS + end as u64,
                visibility: Duration::from_secs(3600),
                room: Vec::new(),
                max: BATCH,
            })
            .expect("lease");
        let acks: Vec<Write<'_>> = jobs.iter().map(|job| Write::Ack(job, None)).collect();
        store.apply(&acks).expect("ack");
        n = end;
        if n % 100_000 < BATCH {
            eprintln!("{n} events in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
}
