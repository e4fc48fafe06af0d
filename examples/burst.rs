//! A burst of events against one sidecar, for its memory: SENDERS
//! keep-alive connections send 2 KiB events with unique ids at RATE per
//! second in all (`max`: each sender as fast as its answers come back) for
//! SECONDS, then nothing for SETTLE seconds. MODE `webhook` posts
//! Stripe-signed webhooks to URL (SECRET signs them); `publish` posts the
//! app's events to an `events.<name>` path on the egress listener, each
//! with its own `Idempotency-Key`. The sidecar's RSS (process PID) is read
//! every 10 ms throughout.
//!
//! Prints one JSON line: the answers by status, the events sent per
//! second, and RSS in KiB before, at its peak during the burst, at the
//! burst's end and after the settle.
//!
//! Usage: burst MODE URL SECRET PID RATE|max [SECONDS] [SETTLE] [SENDERS]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

mod common;
use common::{connect, rss_kib, SignedEvents};

enum Mode {
    Webhook(SignedEvents),
    Publish(String),
}

impl Mode {
    fn request(&self, path: &str, id: &str) -> hyper::Request<Full<Bytes>> {
        match self {
            Mode::Webhook(events) => events.request(path, id),
            Mode::Publish(padding) => {
                let body = format!(
                    r#"{{"id":"{id}","type":"payment.succeeded","wedding_id":"w_1","pad":"{padding}"}}"#
                );
                hyper::Request::post(path)
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .header("idempotency-key", id)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().expect("MODE");
    let url: hyper::Uri = args.next().expect("URL").parse().expect("a URL");
    let secret = args.next().expect("SECRET");
    let pid = args.next().expect("PID");
    let rate: Option<f64> = match args.next().expect("RATE").as_str() {
        "max" => None,
        rate => Some(rate.parse().expect("RATE")),
    };
    let seconds: f64 = args.next().map_or(8.0, |a| a.parse().expect("SECONDS"));
    let settle: f64 = args.next().map_or(5.0, |a| a.parse().expect("SETTLE"));
    let senders: u64 = args.next().map_or(256, |a| a.parse().expect("SENDERS"));
    let mode = Arc::new(match mode.as_str() {
        "webhook" => Mode::Webhook(SignedEvents::new(secret)),
        "publish" => Mode::Publish("x".repeat(2000)),
        other => panic!("MODE is webhook or publish, not {other}"),
    });

    let before = rss_kib(&pid);
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let (pid, peak, sampling) = (pid.clone(), Arc::clone(&peak), Arc::clone(&sampling));
        move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(&pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });

    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (url, mode, statuses) = (url.clone(), Arc::clone(&mode), Arc::clone(&statuses));
        tasks.push(tokio::spawn(async move {
            let mut connection = connect(&url).await;
            let mut mine: BTreeMap<String, u64> = BTreeMap::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64((n * senders + sender) as f64 / rate);
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                n += 1;
                let request = mode.request(url.path(), &format!("evt_{run}_{sender}_{n}"));
                if connection.ready().await.is_err() {
                    *mine.entry("reconnect".into()).or_default() += 1;
                    connection = connect(&url).await;
                }
                let status = match connection.send_request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16().to_string();
                        let _ = response.into_body().collect().await;
                        status
                    }
                    Err(_) => "error".to_string(),
                };
                *mine.entry(status).or_default() += 1;
            }
            let mut all = statuses.lock().unwrap();
            for (status, count) in mine {
                *all.entry(status).or_default() += count;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let took = start.elapsed().as_secs_f64();
    let at_end = rss_kib(&pid);
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let after = rss_kib(&pid);
    let statuses = statuses.lock().unwrap();
    let sent: u64 = statuses
        .iter()
        .filter(|(s, _)| s.as_str() != "reconnect")
        .map(|(_, n)| n)
        .sum();
    let answers: Vec<String> = statuses
        .iter()
        .map(|(status, n)| format!("\"{status}\": {n}"))
        .collect();
    println!(
        "{{\"rate\": {}, \"sent_per_s\": {:.0}, \"answers\": {{{}}}, \"rss_kib\": {{\"before\": {before}, \"peak\": {}, \"end\": {at_end}, \"settled\": {after}}}}}",
        rate.map_or("\"max\"".to_string(), |r| format!("{r}")),
        sent as f64 / took,
        answers.join(", "),
        peak.load(Ordering::Relaxed),
    );
}
