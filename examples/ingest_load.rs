//! Webhook ingest load: SENDERS keep-alive connections post Stripe-signed
//! 2 KiB events, each with a fresh id, for SECONDS; prints accepted/s and ack
//! latency p50/p99. Loopback only. With COUNT, each sender stops after
//! COUNT events (SECONDS still bounds it): a fixed amount of work, for
//! instruction counts.
//! Usage: ingest_load URL SECRET [SENDERS] [SECONDS] [COUNT]

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
    let count: u64 = args.next().map_or(u64::MAX, |a| a.parse().expect("COUNT"));
    let events = Arc::new(SignedEvents::new(secret));
    let deadline = Instant::now() + Duration::from_secs(seconds);
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
                n += 1;
                let request = events.request(url.path(), &format!("evt_{run}_{sender}_{n}"));
                if connection.ready().await.is_err() {
                    reconnects += 1;
                    connection = connect(&url).await;
                }
                let started = Instant::now();
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
    println!(
        "accepted {} in {seconds}s = {:.0}/s, refused {}, ack p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / seconds as f64,
        refused.load(std::sync::atomic::Ordering::Relaxed),
        percentile(50).as_secs_f64() * 1000.0,
        percentile(99).as_secs_f64() * 1000.0,
    );
}
