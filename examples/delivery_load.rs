//! End-to-end delivery load: SENDERS keep-alive connections post
//! Stripe-signed 2 KiB events with fresh ids to the sidecar for SECONDS, at
//! RATE events/s in total (0: as fast as they are acknowledged), while a
//! receiver on TARGET (the sidecar's upstream) records when each event
//! arrives. Prints accepted/s, delivered/s over the same span, and the
//! latency from each 202 to the event's arrival at the target. Loopback
//! only. Usage: delivery_load URL SECRET TARGET SENDERS SECONDS RATE

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

mod common;
use common::{connect, SignedEvents};

type Times = Arc<Mutex<HashMap<String, Instant>>>;

/// Records the arrival of every event at the target and answers 204.
async fn receive(addr: String, arrivals: Times) {
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind the target");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let arrivals = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let arrivals = Arc::clone(&arrivals);
                    async move {
                        let id = request
                            .headers()
                            .get("x-event-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let _ = request.into_body().collect().await;
                        if let Some(id) = id {
                            arrivals
                                .lock()
                                .unwrap()
                                .entry(id)
                                .or_insert_with(Instant::now);
                        }
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(response)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url: hyper::Uri = args.next().expect("URL").parse().expect("a URL");
    let secret = args.next().expect("SECRET");
    let target = args.next().expect("TARGET");
    let senders: usize = args.next().map_or(64, |a| a.parse().expect("SENDERS"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("SECONDS"));
    let rate: f64 = args.next().map_or(0.0, |a| a.parse().expect("RATE"));
    let arrivals: Times = Arc::default();
    tokio::spawn(receive(target, Arc::clone(&arrivals)));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let events = Arc::new(SignedEvents::new(secret));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let acks: Times = Arc::default();
    // Send to 202, from when the send was due (paced senders: open loop,
    // so a queue in front of the sidecar counts), in ms.
    let ack_latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (url, events, acks) = (url.clone(), Arc::clone(&events), Arc::clone(&acks));
        let ack_latencies = Arc::clone(&ack_latencies);
        tasks.push(tokio::spawn(async move {
            let mut connection = connect(&url).await;
            // Paced senders start spread over one interval.
            let interval = (rate > 0.0).then(|| Duration::from_secs_f64(senders as f64 / rate));
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(sender as f64 / senders as f64)
                });
            let mut n = 0u64;
            while Instant::now() < deadline {
                let due = match interval {
                    Some(interval) => {
                        tokio::time::sleep_until(next.into()).await;
                        next += interval;
                        next - interval
                    }
                    None => Instant::now(),
                };
                n += 1;
                let id = format!("evt_{run}_{sender}_{n}");
                let request = events.request(url.path(), &id);
                if connection.ready().await.is_err() {
                    break;
                }
                let response = connection.send_request(request).await.unwrap();
                let status = response.status();
                let _ = response.into_body().collect().await;
                if status == 202 {
                    let now = Instant::now();
                    acks.lock().unwrap().insert(id, now);
                    ack_latencies
                        .lock()
                        .unwrap()
                        .push(now.duration_since(due).as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let sent_for = started.elapsed();
    let accepted = acks.lock().unwrap().len();
    // Let the queue drain, for at most 30 s.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < accepted && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let arrivals = arrivals.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    let last_arrival = arrivals.values().max().copied().unwrap_or(started);
    let mut latencies: Vec<f64> = acks
        .iter()
        .filter_map(|(id, acked)| {
            let arrived = arrivals.get(id)?;
            // A delivery can beat the 202 to its reader: that counts as 0.
            Some(arrived.saturating_duration_since(*acked).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let delivered = latencies.len();
    let mut ack = ack_latencies.lock().unwrap().clone();
    ack.sort_by(f64::total_cmp);
    let ack_at = |p: usize| ack.get(ack.len() * p / 100).copied().unwrap_or(f64::NAN);
    println!(
        "accepted {accepted} = {:.0}/s, delivered {delivered} ({} missing) = {:.0}/s, 202->target p50 {:.2} ms, p99 {:.2} ms, ack p50 {:.2} ms, p99 {:.2} ms",
        accepted as f64 / sent_for.as_secs_f64(),
        accepted - delivered,
        delivered as f64 / last_arrival.duration_since(started).as_secs_f64().max(sent_for.as_secs_f64()),
        percentile(50),
        percentile(99),
        ack_at(50),
        ack_at(99),
    );
}
