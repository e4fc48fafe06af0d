//! What a stopped sidecar left in its store, read directly.

use std::time::Duration;

/// The embedded store a stopped sidecar left in `dir`.
pub fn embedded_store(dir: &std::path::Path) -> wedsync_sidecar::store::embedded::EmbeddedStore {
    wedsync_sidecar::store::embedded::EmbeddedStore::open(dir, Duration::from_secs(3600), None)
        .unwrap()
}

/// Every waiting job as (target, event, body), leased the way a worker
/// would (and so left leased: read a store once).
pub async fn waiting_jobs(
    store: &dyn wedsync_sidecar::store::Store,
) -> Vec<(String, wedsync_sidecar::store::StoredEvent, Vec<u8>)> {
    let far_future = u64::MAX / 4;
    let mut jobs = Vec::new();
    for priority in wedsync_sidecar::event::Priority::ALL {
        let request = wedsync_sidecar::store::LeaseRequest {
            priority,
            now_ms: far_future,
            visibility: Duration::from_secs(60),
            room: Vec::new(),
            max: 1,
        };
        while let Some(job) = store.lease(&request).await.unwrap().pop() {
            let (event, body) = store.event(job.event).await.unwrap().expect("its event");
            jobs.push((job.target.to_string(), event, body));
        }
    }
    jobs
}
