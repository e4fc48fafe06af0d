//! Every metric the sidecar exports, with its help text, in one place. Names
//! are part of the contract. Labels stay low-cardinality: a service name and a
//! status code, never an id. No label is named like one the Prometheus
//! Operator puts on every scraped series (`service`, `namespace`, `pod`,
//! `container`, `endpoint`, `job`, `instance`): it would rename ours to
//! `exported_*`. The egress service is `egress_service`.

use std::sync::OnceLock;

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Latency buckets from 1 ms to 60 s: provider calls are slow next to the proxy.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    pub egress_requests_total: IntCounterVec,
    pub egress_request_duration_seconds: HistogramVec,
    pub oauth2_token_refreshes_total: IntCounterVec,
    pub egress_rejected_total: IntCounterVec,
    pub circuit_state: IntGaugeVec,
    pub circuit_transitions_total: IntCounterVec,
    pub store_errors_total: IntCounterVec,
    pub store_replica_wait_seconds: prometheus::Histogram,
    pub webhooks_received_total: IntCounterVec,
    pub webhook_rejections_total: IntCounterVec,
    pub webhook_ack_duration_seconds: HistogramVec,
    pub deliveries_total: IntCounterVec,
    pub dead_lettered_total: IntCounterVec,
    pub delivery_duration_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub dead_letters: IntGaugeVec,
    pub event_age_seconds: Gauge,
    pub store_used_bytes: IntGauge,
    pub store_capacity_bytes: IntGauge,
    pub store_history_events: IntGauge,
    pub store_history_bytes: IntGauge,
    pub memory_limit_bytes: IntGauge,
    pub upstream_backend_healthy: IntGaugeVec,
    pub upstream_requests_total: IntCounterVec,
    pub wedding_day_events_total: IntCounterVec,
    pub wedding_day_dead_letters_total: IntCounterVec,
    pub trace_spans_exported_total: IntCounter,
    pub trace_spans_dropped_total: IntCounter,
    pub config_reloads_total: IntCounterVec,
    pub recovered_events_total: IntCounterVec,
    pub recover_runs_total: IntCounterVec,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// A fresh registry per sidecar, so that tests can run several in one process.
    pub fn new() -> Self {
        let registry = Registry::new();
        let egress_requests_total = IntCounterVec::new(
            Opts::new("sidecar_egress_requests_total", "Egress requests answered, by egress_service and HTTP status code (the provider's or the sidecar's own)."),
            &["egress_service", "code"],
        )
        .expect("static metric definition");
        let egress_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sidecar_egress_request_duration_seconds",
                "Time from receiving an egress request to the end of its response, by egress_service.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["egress_service"],
        )
        .expect("static metric definition");
        let oauth2_token_refreshes_total = IntCounterVec::new(
            Opts::new("sidecar_oauth2_token_refreshes_total", "OAuth2 token requests to a service's token endpoint, by egress_service and outcome (success, failure)."),
            &["egress_service", "outcome"],
        )
        .expect("static metric definition");
        let egress_rejected_total = IntCounterVec::new(
            Opts::new("sidecar_egress_rejected_total", "Egress requests the sidecar answered without calling the provider, by egress_service and reason (rate_limited, provider_throttled, circuit_open)."),
            &["egress_service", "reason"],
        )
        .expect("static metric definition");
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "sidecar_circuit_state",
                "Circuit breaker state per egress_service: 0 closed, 1 half-open, 2 open.",
            ),
            &["egress_service"],
        )
        .expect("static metric definition");
        let circuit_transitions_total = IntCounterVec::new(
            Opts::new(
                "sidecar_circuit_transitions_total",
                "Circuit breaker state changes per egress_service, by the state entered (closed, open, half_open).",
            ),
            &["egress_service", "to"],
        )
        .expect("static metric definition");
        let store_errors_total = IntCounterVec::new(
            Opts::new(
                "sidecar_store_errors_total",
                "Failed calls to the Redis store, by op: rate_limit, provider_pause (announcing one), pause (reading one), accept, read, lease, ack, retry, dead_letter, replay, delete, replica_wait, check (the readiness probe).",
            ),
            &["op"],
        )
        .expect("static metric definition");
        let store_replica_wait_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sidecar_store_replica_wait_seconds",
                "Time of a Redis write that must survive (accept, dead letter, replay, delete) until store.replicas replicas acknowledged it (WAIT), the write included.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("static metric definition");
        let webhooks_received_total = IntCounterVec::new(
            Opts::new(
                "sidecar_webhooks_received_total",
                "Webhook requests by outcome (accepted, duplicate, rejected).",
            ),
            &["webhook", "outcome"],
        )
        .expect("static metric definition");
        let webhook_rejections_total = IntCounterVec::new(
            Opts::new("sidecar_webhook_rejections_total", "Refused webhook requests by reason (missing_signature, malformed_signature, timestamp_out_of_tolerance, signature_mismatch, payload_too_large, request_timeout, overloaded, headers_too_large, bad_request, store_full); webhook is - when the request named none."),
            &["webhook", "reason"],
        )
        .expect("static metric definition");
        let webhook_ack_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sidecar_webhook_ack_duration_seconds",
                "Time from receiving a webhook to its answer, the durable write included.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["webhook"],
        )
        .expect("static metric definition");
        let deliveries_total = IntCounterVec::new(
            Opts::new("sidecar_deliveries_total", "Delivery attempts to targets, by webhook, target and outcome (delivered, retried, dead_lettered; repeated: delivered, but the store could not record it in time, so the target gets it once more)."),
            &["webhook", "target", "outcome"],
        )
        .expect("static metric definition");
        let dead_lettered_total = IntCounterVec::new(
            Opts::new("sidecar_dead_lettered_total", "Jobs that became dead letters, by webhook and reason (unrouted, rejected, max_attempts, max_age, unknown_target, internal_error, event_missing, corrupt)."),
            &["webhook", "reason"],
        )
        .expect("static metric definition");
        let delivery_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sidecar_delivery_duration_seconds",
                "Time of one delivery attempt to a target, from choosing a backend to its answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["target"],
        )
        .expect("static metric definition");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "sidecar_queue_depth",
                "Delivery jobs waiting or in flight, by priority.",
            ),
            &["priority"],
        )
        .expect("static metric definition");
        let dead_letters = IntGaugeVec::new(
            Opts::new("sidecar_dead_letters", "Dead letters kept, by webhook."),
            &["webhook"],
        )
        .expect("static metric definition");
        let event_age_seconds = Gauge::new(
            "sidecar_event_age_seconds",
            "Age of the oldest event with a delivery still waiting (0 when none waits).",
        )
        .expect("static metric definition");
        let store_used_bytes = IntGauge::new(
            "sidecar_store_used_bytes",
            "Bytes the event store holds: the embedded database's pages in use (while its file is under half the capacity, the file's size), or the Redis masters' used_memory added up.",
        )
        .expect("static metric definition");
        let store_capacity_bytes = IntGauge::new(
            "sidecar_store_capacity_bytes",
            "Bytes the event store may hold before new events are refused (503 store_full): the embedded store's store.max_size or its volume, or the Redis masters' maxmemory times store.max_memory_ratio, less the reserve kept for draining; 0 when nothing bounds it.",
        )
        .expect("static metric definition");
        let store_history_events = IntGauge::new(
            "sidecar_store_history_events",
            "Events the event log keeps (store.history): pending, dead-lettered and finished ones until retention drops them.",
        )
        .expect("static metric definition");
        let store_history_bytes = IntGauge::new(
            "sidecar_store_history_bytes",
            "Bytes of the events the event log keeps (records, attempts and bodies), counted against store.history.max_size.",
        )
        .expect("static metric definition");
        let memory_limit_bytes = IntGauge::new(
            "sidecar_memory_limit_bytes",
            "The memory budget (limits.memory, or 80% of the container's limit): webhooks and published events are answered 503 overloaded while resident memory is near it.",
        )
        .expect("static metric definition");
        let upstream_backend_healthy = IntGaugeVec::new(
            Opts::new(
                "sidecar_upstream_backend_healthy",
                "1 while a backend passes its health checks (or has none), 0 otherwise.",
            ),
            &["upstream", "backend"],
        )
        .expect("static metric definition");
        let upstream_requests_total = IntCounterVec::new(
            Opts::new(
                "sidecar_upstream_requests_total",
                "Calls to the backends of upstream groups (egress services on a group, and deliveries), by upstream, backend and code (the HTTP status, or error when none came back).",
            ),
            &["upstream", "backend", "code"],
        )
        .expect("static metric definition");
        let wedding_day_events_total = IntCounterVec::new(
            Opts::new(
                "sidecar_wedding_day_events_total",
                "Events accepted whose wedding is today (priority.wedding_day): sent in the high lane, by webhook (or published event source).",
            ),
            &["webhook"],
        )
        .expect("static metric definition");
        let wedding_day_dead_letters_total = IntCounterVec::new(
            Opts::new(
                "sidecar_wedding_day_dead_letters_total",
                "Jobs of wedding-day events that became dead letters, by webhook and target.",
            ),
            &["webhook", "target"],
        )
        .expect("static metric definition");
        let trace_spans_exported_total = IntCounter::new(
            "sidecar_trace_spans_exported_total",
            "Spans sent to the OTLP collector (tracing.otlp).",
        )
        .expect("static metric definition");
        let trace_spans_dropped_total = IntCounter::new(
            "sidecar_trace_spans_dropped_total",
            "Spans dropped: the export queue was full, or the collector failed or was too slow.",
        )
        .expect("static metric definition");
        let config_reloads_total = IntCounterVec::new(
            Opts::new(
                "sidecar_config_reloads_total",
                "Config reloads (file change or SIGHUP), by outcome (applied, rejected).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let recovered_events_total = IntCounterVec::new(
            Opts::new(
                "sidecar_recovered_events_total",
                "Events gap repair fetched back from a provider's API, by webhook and outcome (accepted, duplicate: already stored; skipped: another API version, or no route takes its type).",
            ),
            &["webhook", "outcome"],
        )
        .expect("static metric definition");
        let recover_runs_total = IntCounterVec::new(
            Opts::new(
                "sidecar_recover_runs_total",
                "Gap repair runs, by webhook and outcome (ok, failed; leased: another replica, or another run in this one, holds it).",
            ),
            &["webhook", "outcome"],
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sidecar_build_info",
                "Always 1; the version of the running sidecar in its label (a rollout shows as two versions).",
            ),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds ... (Linux /proc), as every exporter has them.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
        for collector in [
            Box::new(egress_requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(egress_request_duration_seconds.clone()),
            Box::new(oauth2_token_refreshes_total.clone()),
            Box::new(egress_rejected_total.clone()),
            Box::new(circuit_state.clone()),
            Box::new(circuit_transitions_total.clone()),
            Box::new(store_errors_total.clone()),
            Box::new(store_replica_wait_seconds.clone()),
            Box::new(webhooks_received_total.clone()),
            Box::new(webhook_rejections_total.clone()),
            Box::new(webhook_ack_duration_seconds.clone()),
            Box::new(deliveries_total.clone()),
            Box::new(dead_lettered_total.clone()),
            Box::new(delivery_duration_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(dead_letters.clone()),
            Box::new(event_age_seconds.clone()),
            Box::new(store_used_bytes.clone()),
            Box::new(store_capacity_bytes.clone()),
            Box::new(store_history_events.clone()),
            Box::new(store_history_bytes.clone()),
            Box::new(memory_limit_bytes.clone()),
            Box::new(upstream_backend_healthy.clone()),
            Box::new(upstream_requests_total.clone()),
            Box::new(wedding_day_events_total.clone()),
            Box::new(wedding_day_dead_letters_total.clone()),
            Box::new(trace_spans_exported_total.clone()),
            Box::new(trace_spans_dropped_total.clone()),
            Box::new(config_reloads_total.clone()),
            Box::new(recovered_events_total.clone()),
            Box::new(recover_runs_total.clone()),
            Box::new(build_info.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            egress_requests_total,
            egress_request_duration_seconds,
            oauth2_token_refreshes_total,
            egress_rejected_total,
            circuit_state,
            circuit_transitions_total,
            store_errors_total,
            store_replica_wait_seconds,
            webhooks_received_total,
            webhook_rejections_total,
            webhook_ack_duration_seconds,
            deliveries_total,
            dead_lettered_total,
            delivery_duration_seconds,
            queue_depth,
            dead_letters,
            event_age_seconds,
            store_used_bytes,
            store_capacity_bytes,
            store_history_events,
            store_history_bytes,
            memory_limit_bytes,
            upstream_backend_healthy,
            upstream_requests_total,
            wedding_day_events_total,
            wedding_day_dead_letters_total,
            trace_spans_exported_total,
            trace_spans_dropped_total,
            config_reloads_total,
            recovered_events_total,
            recover_runs_total,
            build_info,
        }
    }

    /// Drops every series of an egress service a reload removed, so that a
    /// dashboard or alert does not show it forever.
    pub fn forget_service(&self, service: &str) {
        // The codes it was counted under, from the family itself: a service
        // rebuilt by an earlier reload counts into the same series.
        let codes: Vec<String> = prometheus::core::Collector::collect(&self.egress_requests_total)
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == "egress_service" && l.value() == service)
            })
            .filter_map(|metric| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "code")
                    .map(|l| l.value().to_string())
            })
            .collect();
        for code in &codes {
            let _ = self
                .egress_requests_total
                .remove_label_values(&[service, code]);
        }
        let _ = self
            .egress_request_duration_seconds
            .remove_label_values(&[service]);
        let _ = self.circuit_state.remove_label_values(&[service]);
        for to in ["closed", "open", "half_open"] {
            let _ = self
                .circuit_transitions_total
                .remove_label_values(&[service, to]);
        }
        for reason in EgressRejection::ALL {
            let _ = self
                .egress_rejected_total
                .remove_label_values(&[service, reason.as_str()]);
        }
        for outcome in RefreshOutcome::ALL {
            let _ = self
                .oauth2_token_refreshes_total
                .remove_label_values(&[service, outcome.as_str()]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buffer = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        // Encoding in-memory families into a Vec cannot fail.
        let _ = prometheus::Encoder::encode(&encoder, &self.registry.gather(), &mut buffer);
        buffer
    }
}

/// A closed set of label values: one enum per label, its values spelled
/// once (`as_str`), so a typo cannot make a new series.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// `sidecar_dead_lettered_total{reason}`, and the reason a dead letter keeps.
    DeadLetterReason {
        /// The event matched no route.
        Unrouted => "unrouted",
        /// The target answered a status that would fail the same way again.
        Rejected => "rejected",
        MaxAttempts => "max_attempts",
        MaxAge => "max_age",
        /// The job's target is no upstream group of the running config.
        UnknownTarget => "unknown_target",
        /// The sidecar failed making the attempt (a bug).
        InternalError => "internal_error",
        /// The store lost the event or its body.
        EventMissing => "event_missing",
        /// The store holds an unreadable record.
        Corrupt => "corrupt",
    }
}

label_values! {
    /// `sidecar_deliveries_total{outcome}`.
    DeliveryOutcome {
        Delivered => "delivered",
        Retried => "retried",
        DeadLettered => "dead_lettered",
        Repeated => "repeated",
    }
}

label_values! {
    /// `sidecar_webhooks_received_total{outcome}`.
    ReceivedOutcome {
        Accepted => "accepted",
        Duplicate => "duplicate",
        Rejected => "rejected",
    }
}

label_values! {
    /// `sidecar_webhook_rejections_total{reason}`.
    RejectionReason {
        MissingSignature => "missing_signature",
        MalformedSignature => "malformed_signature",
        TimestampOutOfTolerance => "timestamp_out_of_tolerance",
        SignatureMismatch => "signature_mismatch",
        PayloadTooLarge => "payload_too_large",
        RequestTimeout => "request_timeout",
        Overloaded => "overloaded",
        HeadersTooLarge => "headers_too_large",
        BadRequest => "bad_request",
        StoreFull => "store_full",
    }
}

label_values! {
    /// `sidecar_egress_rejected_total{reason}`.
    EgressRejection {
        RateLimited => "rate_limited",
        ProviderThrottled => "provider_throttled",
        CircuitOpen => "circuit_open",
    }
}

label_values! {
    /// `sidecar_oauth2_token_refreshes_total{outcome}`.
    RefreshOutcome {
        Success => "success",
        Failure => "failure",
    }
}

label_values! {
    /// `sidecar_recovered_events_total{outcome}`.
    RecoveredOutcome {
        Accepted => "accepted",
        Duplicate => "duplicate",
        Skipped => "skipped",
    }
}

label_values! {
    /// `sidecar_recover_runs_total{outcome}`.
    RecoverRunOutcome {
        Ok => "ok",
        Failed => "failed",
        Leased => "leased",
    }
}

label_values! {
    /// `sidecar_config_reloads_total{outcome}`.
    ReloadOutcome {
        Applied => "applied",
        Rejected => "rejected",
    }
}

/// The `webhook` label of a rejection that came before any webhook was
/// matched.
pub const NO_WEBHOOK: &str = "-";

/// The `service` label of an egress request that matched no route.
pub const NO_SERVICE: &str = "-";

/// One service's counters of a `{service, code}` family, looked up by status
/// code without formatting the code or hashing labels on every request.
pub struct StatusCounters {
    family: IntCounterVec,
    service: String,
    /// Index = HTTP status code (0 when no answer was written); each counter
    /// is created on first use, so only codes that occurred are exported.
    by_code: Box<[OnceLock<IntCounter>]>,
}

impl StatusCounters {
    pub fn new(family: &IntCounterVec, service: &str) -> Self {
        Self {
            family: family.clone(),
            service: service.to_string(),
            by_code: (0..1000).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn inc(&self, code: u16) {
        match self.by_code.get(usize::from(code)) {
            Some(cell) => cell.get_or_init(|| self.counter(code)).inc(),
            None => self.counter(code).inc(),
        }
    }

    fn counter(&self, code: u16) -> IntCounter {
        self.family
            .with_label_values(&[self.service.as_str(), code.to_string().as_str()])
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters_export_only_the_codes_seen() {
        let metrics = Metrics::new();
        let counters = StatusCounters::new(&metrics.egress_requests_total, "stripe");
        counters.inc(200);
        counters.inc(200);
        counters.inc(0);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text
            .contains("sidecar_egress_requests_total{code=\"200\",egress_service=\"stripe\"} 2"));
        assert!(
            text.contains("sidecar_egress_requests_total{code=\"0\",egress_service=\"stripe\"} 1")
        );
        assert!(!text.contains("code=\"404\""));
    }

    /// Every closed set of label values is listed in its metric's help
    /// text: an operator reading `# HELP` learns every value it can take.
    #[test]
    fn help_texts_list_every_label_value() {
        let metrics = Metrics::new();
        // From the collectors' descriptions: a family without series yet is
        // not gathered.
        let helps: std::collections::HashMap<String, String> = [
            &metrics.dead_lettered_total as &dyn prometheus::core::Collector,
            &metrics.deliveries_total,
            &metrics.webhooks_received_total,
            &metrics.webhook_rejections_total,
            &metrics.egress_rejected_total,
            &metrics.oauth2_token_refreshes_total,
            &metrics.config_reloads_total,
            &metrics.recovered_events_total,
            &metrics.recover_runs_total,
            &metrics.circuit_transitions_total,
            &metrics.store_errors_total,
        ]
        .iter()
        .flat_map(|collector| collector.desc())
        .map(|desc| (desc.fq_name.clone(), desc.help.clone()))
        .collect();
        let help = |name: &str| -> String {
            helps
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} is described"))
        };
        let cases: [(&str, Vec<&str>); 9] = [
            (
                "sidecar_dead_lettered_total",
                DeadLetterReason::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_deliveries_total",
                DeliveryOutcome::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_webhooks_received_total",
                ReceivedOutcome::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_webhook_rejections_total",
                RejectionReason::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_egress_rejected_total",
                EgressRejection::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_oauth2_token_refreshes_total",
                RefreshOutcome::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_config_reloads_total",
                ReloadOutcome::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_recovered_events_total",
                RecoveredOutcome::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "sidecar_recover_runs_total",
                RecoverRunOutcome::ALL.iter().map(|v| v.as_str()).collect(),
            ),
        ];
        for (name, values) in cases {
            let text = help(name);
            for value in values {
                assert!(text.contains(value), "{name}'s help lacks {value}: {text}");
            }
        }
        // The breaker's states, and the Redis store's operations.
        let transitions = help("sidecar_circuit_transitions_total");
        for state in ["closed", "open", "half_open"] {
            assert!(transitions.contains(state), "{transitions}");
        }
        let store = help("sidecar_store_errors_total");
        for op in [
            "rate_limit",
            "provider_pause",
            "pause",
            "accept",
            "read",
            "lease",
            "ack",
            "retry",
            "dead_letter",
            "replay",
            "delete",
            "replica_wait",
            "check",
        ] {
            assert!(store.contains(op), "{store}");
        }
    }
}
