//! Gap repair (`webhooks.<name>.recover`): what a provider sent while the
//! sidecar was down, full or refusing, fetched back from the provider's
//! API and accepted as if its webhook had arrived, once. Runs at start and
//! every `every`, through the egress listener and the service named by
//! `service` (so the provider's credentials are injected and its rate
//! limit, breaker and pauses apply). One replica runs a webhook's recovery
//! at a time (a lease in the store that lapses if its holder dies); the
//! checkpoint lives in the store and moves only when a run got through the
//! whole window, so a run cut short by a 429 or a 500 is done again from
//! the same place, and what it had accepted deduplicates.

pub mod api;
pub mod github;
pub mod state;
pub mod stripe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::access::DynAccess;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use self::state::{RecoverState, RunReport};
use super::Webhooks;
use crate::config::webhooks::{Recover, RecoverKind};
use crate::config::Config;
use crate::metrics::{Metrics, RecoverRunOutcome, RecoveredOutcome};
use crate::net::client::SmallClient;
use crate::store::{Acceptance, Store};
use crate::time::unix_time;

/// How long a run's lease lasts; renewed with every page.
const LEASE: Duration = Duration::from_secs(60);
/// How often the schedule is looked at.
const TICK: Duration = Duration::from_secs(1);
/// After a failed run (a 429, a 500, the egress not up yet), the next one
/// comes this soon, or at `every` if that is sooner.
const AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How long a redelivery asked of a provider is waited for, to be marked
/// recovered when it arrives (GitHub sends within seconds; its own
/// retries of a failed redelivery are not asked for again before the next
/// run).
const ASKED_FOR: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("no webhook {0:?} with recover")]
    NoRecover(String),
    #[error("no egress service {0:?}")]
    NoService(String),
    #[error("{0}")]
    Provider(String),
    #[error("the event store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a run is asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunRequest {
    /// Look this far back instead of from the checkpoint.
    pub since: Option<Duration>,
    /// List and count, accept nothing, move no checkpoint.
    pub dry_run: bool,
}

pub struct GapRepair {
    webhooks: Box<dyn DynAccess<Webhooks> + Send + Sync>,
    config: Box<dyn DynAccess<Arc<Config>> + Send + Sync>,
    store: Arc<dyn Store>,
    /// The egress listener, where the provider's API is called.
    egress: SocketAddr,
    metrics: Arc<Metrics>,
    accepted: Arc<Notify>,
    /// The first run waits until the sidecar is ready (its egress listener
    /// answers).
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// This process, as a lease holder.
    holder: String,
    client: SmallClient,
    /// The webhooks whose recovery runs in this process now: the lease
    /// keeps replicas apart, this the schedule and an operator's run.
    running: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// What one run works on, whichever provider's.
#[derive(Clone, Copy)]
struct Run<'a> {
    ingress: &'a super::ack::IngressWebhook,
    recover: &'a Recover,
    /// Unix seconds the run lists from.
    since: u64,
    dry_run: bool,
}

impl Run<'_> {
    fn webhook(&self) -> &str {
        self.ingress.config.name.as_str()
    }

    /// Whether a route of the webhook takes events of `event_type`: what
    /// none takes is skipped, not stored as unrouted.
    fn routed(&self, event_type: &str) -> bool {
        self.ingress
            .config
            .routes
            .iter()
            .any(|route| route.takes(event_type))
    }
}

/// Marks a webhook's recovery as running in this process until dropped.
struct Running<'a>(&'a GapRepair, String);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl GapRepair {
    pub fn new(
        webhooks: Box<dyn DynAccess<Webhooks> + Send + Sync>,
        config: Box<dyn DynAccess<Arc<Config>> + Send + Sync>,
        store: Arc<dyn Store>,
        egress: SocketAddr,
        metrics: Arc<Metrics>,
        accepted: Arc<Notify>,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sidecar".into());
        Self {
            webhooks,
            config,
            store,
            egress,
            metrics,
            accepted,
            lifecycle,
            holder: format!(
                "{host}/{}/{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            client: SmallClient::default(),
            running: Default::default(),
        }
    }

    /// One run of `webhook`'s recovery now, unless another replica holds
    /// it (then `Ok(None)`).
    pub async fn run(
        &self,
        webhook: &str,
        request: RunRequest,
    ) -> Result<Option<RunReport>, RecoverError> {
        // Taken out of the running snapshot: a reload meanwhile changes the
        // next run, not this one.
        let ingress = {
            let webhooks = self.webhooks.load();
            webhooks.named(webhook).cloned()
        }
        .ok_or_else(|| RecoverError::NoRecover(webhook.to_string()))?;
        let recover = ingress
            .config
            .recover
            .clone()
            .ok_or_else(|| RecoverError::NoRecover(webhook.to_string()))?;
        let config = Arc::clone(&self.config.load());
        let service = config
            .services
            .iter()
            .find(|s| s.name == recover.service)
            .ok_or_else(|| RecoverError::NoService(recover.service.clone()))?;
        let count_run = |outcome: RecoverRunOutcome| {
            self.metrics
                .recover_runs_total
                .with_label_values(&[webhook, outcome.as_str()])
                .inc();
        };
        let newly = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(webhook.to_string());
        if !newly {
            count_run(RecoverRunOutcome::Leased);
            return Ok(None);
        }
        let _running = Running(self, webhook.to_string());
        if !self
            .store
            .lease_recover(webhook, &self.holder, LEASE)
            .await?
        {
            count_run(RecoverRunOutcome::Leased);
            return Ok(None);
        }
        let before = match self.store.recover_state(webhook).await? {
            Some(bytes) => RecoverState::decode(&bytes),
            None => RecoverState::default(),
        };
        let started_s = unix_time().as_secs();
        let since = window_start(&recover, before.checkpoint, request.since, started_s);
        let mut report = RunReport {
            since,
            dry_run: request.dry_run,
            ..RunReport::default()
        };
        let api = api::Api {
            client: &self.client,
            egress: self.egress,
            route: &service.route,
        };
        let run = Run {
            ingress: &ingress,
            recover: &recover,
            since,
            dry_run: request.dry_run,
        };
        let fetched = match recover.kind {
            RecoverKind::StripeEvents => self.stripe_run(&run, api, &mut report).await?,
            RecoverKind::GithubDeliveries => self.github_run(&run, api, &mut report).await?,
        };
        let finished_ms = unix_time().as_millis() as u64;
        let after = RecoverState {
            // Moved only by a run that got through, and never by a dry run.
            checkpoint: match fetched {
                Ok(()) if !request.dry_run => Some(started_s),
                _ => before.checkpoint,
            },
            last_run_ms: Some(finished_ms),
            outcome: Some(if fetched.is_ok() { "ok" } else { "failed" }.into()),
            error: fetched.as_ref().err().cloned(),
            last: Some(report.clone()),
        };
        if !request.dry_run {
            self.store
                .save_recover_state(webhook, &after.encode())
                .await?;
        }
        match fetched {
            Ok(()) => {
                count_run(RecoverRunOutcome::Ok);
                report.checkpoint = after.checkpoint;
                tracing::info!(
                    webhook,
                    accepted = report.accepted,
                    requested = report.requested,
                    duplicate = report.duplicate,
                    skipped = report.skipped,
                    since,
                    dry_run = request.dry_run,
                    "gap repair: a provider's undelivered events fetched back"
                );
                Ok(Some(report))
            }
            Err(error) => {
                count_run(RecoverRunOutcome::Failed);
                tracing::warn!(webhook, %error, accepted = report.accepted, "gap repair stopped; the next run starts again from the checkpoint");
                Err(RecoverError::Provider(error))
            }
        }
    }

    /// Stripe: every undelivered event listed is accepted here. A store
    /// error ends the run (`Err`); the provider's, the fetch (`Ok(Err)`).
    async fn stripe_run(
        &self,
        run: &Run<'_>,
        api: api::Api<'_>,
        report: &mut RunReport,
    ) -> Result<Result<(), String>, RecoverError> {
        let source = stripe::Source {
            api,
            types: stripe::listed_types(&run.ingress.config.routes),
        };
        let mut pages = source.pages(run.since);
        loop {
            match pages.next().await {
                Ok(None) => return Ok(Ok(())),
                Ok(Some(events)) => {
                    for event in events {
                        self.take(run, event, report).await?;
                    }
                    // Still this run's: a long run keeps its lease.
                    self.store
                        .lease_recover(run.webhook(), &self.holder, LEASE)
                        .await?;
                }
                Err(error) => return Ok(Err(error)),
            }
        }
    }

    /// GitHub: the events of the window none of whose deliveries
    /// succeeded and that the store does not know are redelivered by
    /// GitHub itself (so they arrive signed, through the verified path,
    /// and are marked recovered there: they are counted `accepted` when
    /// they arrive, not here).
    async fn github_run(
        &self,
        run: &Run<'_>,
        api: api::Api<'_>,
        report: &mut RunReport,
    ) -> Result<Result<(), String>, RecoverError> {
        let webhook = run.webhook();
        let Some(hook) = run.recover.hook.as_deref() else {
            return Ok(Err("no hook".into()));
        };
        let source = github::Source { api, hook };
        let deliveries = match source.deliveries_since(run.since).await {
            Ok(deliveries) => deliveries,
            Err(error) => return Ok(Err(error)),
        };
        self.store
            .lease_recover(webhook, &self.holder, LEASE)
            .await?;
        let mut to_ask = Vec::new();
        for event in github::undelivered(&deliveries, run.since) {
            report.found += 1;
            if !run.routed(&event.event_type) {
                report.skipped += 1;
                self.count_recovered(run, RecoveredOutcome::Skipped);
            } else if self.store.seen(webhook, &event.guid).await? {
                report.duplicate += 1;
                self.count_recovered(run, RecoveredOutcome::Duplicate);
            } else {
                to_ask.push(event);
            }
        }
        if run.dry_run || to_ask.is_empty() {
            report.requested += to_ask.len() as u64;
            return Ok(Ok(()));
        }
        // Noted first, in one call: a redelivery may arrive before GitHub
        // answers the request for it.
        let guids: Vec<String> = to_ask.iter().map(|e| e.guid.clone()).collect();
        self.store
            .note_redeliveries(webhook, &guids, ASKED_FOR)
            .await?;
        for event in to_ask {
            report.requested += 1;
            if let Err(error) = source.redeliver(event.delivery).await {
                return Ok(Err(error));
            }
        }
        Ok(Ok(()))
    }

    fn count_recovered(&self, run: &Run<'_>, outcome: RecoveredOutcome) {
        if !run.dry_run {
            self.metrics
                .recovered_events_total
                .with_label_values(&[run.webhook(), outcome.as_str()])
                .inc();
        }
    }

    /// One listed event: skipped (another API version, or no route takes
    /// its type), or accepted as if its webhook had arrived.
    async fn take(
        &self,
        run: &Run<'_>,
        event: stripe::ListedEvent,
        report: &mut RunReport,
    ) -> Result<(), RecoverError> {
        report.found += 1;
        let other_version = run
            .recover
            .api_version
            .as_deref()
            .is_some_and(|version| event.api_version.as_deref() != Some(version));
        if other_version || !run.routed(&event.event_type) {
            report.skipped += 1;
            self.count_recovered(run, RecoveredOutcome::Skipped);
            return Ok(());
        }
        if run.dry_run {
            report.accepted += 1;
            return Ok(());
        }
        match run
            .ingress
            .accept_recovered(&*self.store, event.body, unix_time(), &self.accepted)
            .await?
        {
            Acceptance::Accepted(_) => {
                report.accepted += 1;
                self.count_recovered(run, RecoveredOutcome::Accepted);
            }
            Acceptance::Duplicate => {
                report.duplicate += 1;
                self.count_recovered(run, RecoveredOutcome::Duplicate);
            }
        }
        Ok(())
    }

    /// The webhooks with `recover`, and each one's `every`.
    fn scheduled(&self) -> Vec<(String, Duration)> {
        let webhooks = self.webhooks.load();
        webhooks
            .iter()
            .filter_map(|w| {
                w.config
                    .recover
                    .as_ref()
                    .map(|r| (w.config.name.to_string(), r.every))
            })
            .collect()
    }
}

/// Where a run starts listing (Unix seconds): `overlap` before the
/// checkpoint, or `lookback` back on a first run; never further back than
/// `lookback` (itself within the provider's retention). An operator's
/// `since` replaces the checkpoint, within the same bound.
pub fn window_start(
    recover: &Recover,
    checkpoint: Option<u64>,
    since: Option<Duration>,
    now_s: u64,
) -> u64 {
    let furthest = now_s.saturating_sub(recover.lookback.as_secs());
    let from = match (since, checkpoint) {
        (Some(since), _) => now_s.saturating_sub(since.as_secs()),
        (None, Some(checkpoint)) => checkpoint.saturating_sub(recover.overlap.as_secs()),
        (None, None) => furthest,
    };
    from.max(furthest)
}

/// The schedule: gap repair as a housekeeping task, sharing its
/// `GapRepair` with the admin API's runs.
pub struct Schedule(pub Arc<GapRepair>);

#[async_trait]
impl BackgroundService for Schedule {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.scheduled_runs(shutdown).await;
    }
}

impl GapRepair {
    async fn scheduled_runs(&self, mut shutdown: ShutdownWatch) {
        while self.lifecycle.readiness().is_err() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.changed() => return,
            }
        }
        // At start, then every `every` (as this process counts it; another
        // replica's run in between only makes this one's window short).
        let mut next: Vec<(String, Instant)> = Vec::new();
        loop {
            for (webhook, every) in self.scheduled() {
                let due = next
                    .iter()
                    .find(|(w, _)| *w == webhook)
                    .is_none_or(|(_, at)| Instant::now() >= *at);
                if !due {
                    continue;
                }
                let outcome = tokio::select! {
                    outcome = self.run(&webhook, RunRequest::default()) => outcome,
                    _ = shutdown.changed() => return,
                };
                let wait = match outcome {
                    Err(_) => every.min(AFTER_FAILURE),
                    Ok(_) => every,
                };
                next.retain(|(w, _)| *w != webhook);
                next.push((webhook, Instant::now() + wait));
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recover(lookback_h: u64, overlap_s: u64) -> Recover {
        Recover {
            kind: RecoverKind::StripeEvents,
            service: "stripe".into(),
            every: Duration::from_secs(600),
            overlap: Duration::from_secs(overlap_s),
            lookback: Duration::from_secs(lookback_h * 3600),
            api_version: None,
            hook: None,
        }
    }

    #[test]
    fn a_run_starts_an_overlap_before_the_checkpoint_within_the_lookback() {
        let now = 1_000_000;
        let r = recover(72, 600);
        assert_eq!(
            window_start(&r, None, None, now),
            now - 72 * 3600,
            "first run"
        );
        assert_eq!(
            window_start(&r, Some(now - 3600), None, now),
            now - 3600 - 600
        );
        assert_eq!(
            window_start(&r, Some(now - 100 * 3600), None, now),
            now - 72 * 3600,
            "after a long outage: the lookback bounds it"
        );
        assert_eq!(
            window_start(&r, Some(now - 60), Some(Duration::from_secs(6 * 3600)), now),
            now - 6 * 3600,
            "an operator's since replaces the checkpoint"
        );
        assert_eq!(
            window_start(&r, None, Some(Duration::from_secs(100 * 3600)), now),
            now - 72 * 3600
        );
    }
}
