//! Webhook ingest load: SENDERS keep-alive connections post Stripe-signed
//! 2 KiB events, each with a fresh id, for SECONDS; prints accepted/s and ack
//! latency p50/p99. Loopback only. With COUNT, each sender stops after
//! COUNT events (SECONDS still bounds it): a fixed amount of work, for
//! instruction counts (0: no limit). With RATE, the load is open: events
//! are due at RATE per second in all, spread over the senders, and each
//! latency counts from when its event was due, not from when a sender got
//! round to it, so queueing shows (a closed loop waits for each answer
//! before sending again and hides it).
//! Usage: ingest_load URL SECRET [SENDERS] [SECONDS] [COUNT] [RATE]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;

mod common;
use common::{connect, SignedEvents};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url: hyper::Uri = args.next().expect("URL").parse().expect("a URL");
    let secret = args.next().expect("SECRET");
    let senders: usize = args.next().map_or(64, |a| a.parse().expect("SENDERS"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("SECONDS"));
    let count: u64 = match args.next().map(|a| a.parse().expect("COUNT")) {
        None | Some(0) => u64::MAX,
        Some(count) => count,
    };
    let rate: Option<f64> = args.next().map(|a| a.parse().expect("RATE"));
    let events = Arc::new(SignedEvents::new(secret));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (url, events) = (url.clone(), Arc::clone(&events));
        let (latencies, refused) = (Arc::clone(&latencies), Arc::clone(&refused));
        tasks.push(tokio::spawn(async move {
            let mut connection = connect(&url).await;
            let mut reconnects = 0u64;
            let mut mine = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline && n < count {
                // Open loop: this sender's n-th event is due at
                // (n * senders + sender) / rate seconds from the start.
                let due = rate.map(|rate| {
                    start
                        + Duration::from_secs_f64(
                            (n * senders as u64 + sender as u64) as f64 / rate,
                        )
                });
                if let Some(due) = due {
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                n += 1;
                let request = events.request(url.path(), &format!("evt_{run}_{sender}_{n}"));
                if connection.ready().await.is_err() {
                    reconnects += 1;
                    connection = connect(&url).await;
                }
                let started = due.unwrap_or_else(Instant::now);
                let response = connection.send_request(request).await.unwrap();
                let status = response.status();
                let _ = response.into_body().collect().await;
                if status == 202 {
                    mine.push(started.elapsed());
                } else {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if reconnects > 0 {
                eprintln!("sender {sender}: the server closed the connection {reconnects} times");
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let percentile = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };
    let per_mille = |p: usize| {
        latencies
            .get(latencies.len() * p / 1000)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "accepted {} in {seconds}s = {:.0}/s, refused {}, ack p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / seconds as f64,
        refused.load(std::sync::atomic::Ordering::Relaxed),
        percentile(50).as_secs_f64() * 1000.0,
        percentile(99).as_secs_f64() * 1000.0,
        per_mille(999).as_secs_f64() * 1000.0,
    );
}
