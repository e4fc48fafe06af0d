//! Spans exported over OTLP/HTTP (protobuf, `POST <endpoint>/v1/traces`,
//! the OpenTelemetry project's message types from `opentelemetry-proto`)
//! when `tracing.otlp.endpoint` is set: one per egress exchange, one per
//! ingress acknowledgement, one per delivery attempt. Recording a span
//! never waits and never fails a request: spans go into a bounded queue
//! (a full queue drops the span, counted), and one background loop sends
//! them in batches; a collector that is down or slow costs dropped spans,
//! nothing else.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use pingora::http::RequestHeader;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::context::{unit_random, TraceContext};
use crate::net::client::SmallClient;
use crate::net::target::UpstreamTarget;

/// Spans waiting for the exporter at most; more are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export request at most.
const BATCH: usize = 512;
/// A batch goes at least this often while spans wait.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The sidecar answering a caller (an ingress acknowledgement).
    Server = 2,
    /// The sidecar calling out (an egress exchange, a delivery attempt).
    Client = 3,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub context: TraceContext,
    /// The caller's span, when the trace came from outside.
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

/// Where spans go, and which new traces are sampled: swapped whole by a
/// reload (`configure`).
struct Destination {
    target: UpstreamTarget,
    ratio: f64,
    service_name: String,
}

struct Exporter {
    /// None: not exporting (no `tracing.otlp`, or a reload removed it).
    destination: ArcSwapOption<Destination>,
    queue: mpsc::Sender<Span>,
    dropped: IntCounter,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

fn destination() -> Option<Arc<Destination>> {
    EXPORTER.get()?.destination.load_full()
}

/// Whether a new trace is sampled: by the configured ratio when exporting,
/// always otherwise (propagation only: the flag tells the next hop that
/// this one would record).
pub fn sample() -> bool {
    match EXPORTER.get().map(|e| e.destination.load()) {
        Some(destination) => match destination.as_deref() {
            Some(destination) => unit_random() < destination.ratio,
            None => true,
        },
        None => true,
    }
}

/// Whether spans are exported at all (so callers skip building them).
pub fn enabled() -> bool {
    EXPORTER
        .get()
        .is_some_and(|e| e.destination.load().is_some())
}

/// Queues a finished span for export, if exporting and it is sampled.
pub fn record(span: Span) {
    let Some(exporter) = EXPORTER.get() else {
        return;
    };
    if !span.context.sampled() || exporter.destination.load().is_none() {
        return;
    }
    if exporter.queue.try_send(span).is_err() {
        exporter.dropped.inc();
    }
}

/// `tracing.otlp` as the running config has it: where spans go from now
/// on (a batch already being sent goes to the endpoint it started with).
/// None stops exporting. An endpoint the client cannot use is an error,
/// and the exporter keeps its current destination.
pub fn configure(otlp: Option<&crate::config::telemetry::Otlp>) -> Result<(), String> {
    let Some(exporter) = EXPORTER.get() else {
        return Ok(());
    };
    let destination = match otlp {
        None => None,
        Some(otlp) => Some(Arc::new(Destination {
            target: UpstreamTarget::new(otlp.endpoint.clone(), None).map_err(|e| e.to_string())?,
            ratio: otlp.sample_ratio,
            service_name: otlp.service_name.clone(),
        })),
    };
    exporter.destination.store(destination);
    Ok(())
}

/// What the export loop needs.
pub struct ExportLoop {
    spans: mpsc::Receiver<Span>,
    exported: IntCounter,
    dropped: IntCounter,
    failures: FailureLog,
}

/// Installs the exporter for this process, exporting as `otlp` says (none:
/// not until a reload configures it): spans recorded from now on are
/// queued; the returned loop sends them. None when one was installed
/// already.
pub fn install(
    otlp: Option<&crate::config::telemetry::Otlp>,
    exported: IntCounter,
    dropped: IntCounter,
) -> Option<ExportLoop> {
    let (queue, spans) = mpsc::channel(QUEUE);
    EXPORTER
        .set(Exporter {
            destination: ArcSwapOption::empty(),
            queue,
            dropped: dropped.clone(),
        })
        .ok()?;
    if let Err(error) = configure(otlp) {
        tracing::warn!(%error, "cannot export spans to tracing.otlp.endpoint");
    }
    Some(ExportLoop {
        spans,
        exported,
        dropped,
        failures: FailureLog::default(),
    })
}

/// How often a failing export is warned about at most: a collector that
/// is down must be seen in the log, but not once per batch.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Failed exports since the last warning.
#[derive(Default)]
struct FailureLog {
    last_warned: Option<tokio::time::Instant>,
    batches: u64,
    spans: u64,
}

impl FailureLog {
    /// Counts a failed batch; the warning to log now, if one is due.
    fn failed(&mut self, spans: u64, now: tokio::time::Instant) -> Option<(u64, u64)> {
        self.batches += 1;
        self.spans += spans;
        let due = self
            .last_warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if !due {
            return None;
        }
        self.last_warned = Some(now);
        let counts = (self.batches, self.spans);
        (self.batches, self.spans) = (0, 0);
        Some(counts)
    }
}

impl ExportLoop {
    /// Sends batches until every sender is gone or `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let client = SmallClient::default();
        tokio::pin!(stop);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = tokio::select! {
                span = self.spans.recv() => span,
                _ = &mut stop => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, self.spans.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    _ => break,
                }
            }
            self.send(&client, &mut batch).await;
        }
        while let Ok(span) = self.spans.try_recv() {
            batch.push(span);
            if batch.len() == BATCH {
                self.send(&client, &mut batch).await;
            }
        }
        if !batch.is_empty() {
            self.send(&client, &mut batch).await;
        }
    }

    async fn send(&mut self, client: &SmallClient, batch: &mut Vec<Span>) {
        let count = batch.len() as u64;
        let Some(destination) = destination() else {
            // A reload stopped exporting: what was queued goes nowhere.
            batch.clear();
            self.dropped.inc_by(count);
            return;
        };
        let body = encode(&destination.service_name, batch);
        batch.clear();
        let path = format!("{}/v1/traces", destination.target.url.base_path);
        let sent = async {
            let mut request =
                RequestHeader::build("POST", path.as_bytes(), None).map_err(|e| e.to_string())?;
            request
                .insert_header("content-type", "application/x-protobuf")
                .map_err(|e| e.to_string())?;
            let answer = client
                .send(
                    &destination.target,
                    request,
                    Bytes::from(body),
                    EXPORT_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
            match answer.status {
                200..=299 => Ok(()),
                status => Err(format!("the collector answered {status}")),
            }
        };
        match sent.await {
            Ok(()) => self.exported.inc_by(count),
            Err(error) => {
                self.dropped.inc_by(count);
                let endpoint = &destination.target.url;
                match self.failures.failed(count, tokio::time::Instant::now()) {
                    Some((batches, spans)) => tracing::warn!(
                        %error, endpoint = %endpoint, failed_batches = batches, dropped_spans = spans,
                        "could not export spans; dropped (warned at most once a minute, counted in sidecar_trace_spans_dropped_total)"
                    ),
                    None => {
                        tracing::debug!(%error, spans = count, "could not export spans; dropped")
                    }
                }
            }
        }
    }
}

/// The export loop as a housekeeping task: it sends until the server stops.
pub struct ExportService(std::sync::Mutex<Option<ExportLoop>>);

impl ExportService {
    pub fn new(export: ExportLoop) -> Self {
        Self(std::sync::Mutex::new(Some(export)))
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ExportService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let export = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(export) = export {
            export
                .run(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
        }
    }
}

/// An OTLP `ExportTraceServiceRequest`, protobuf-encoded (OTLP/HTTP's
/// default encoding), with the OpenTelemetry project's message types.
pub fn encode(service_name: &str, spans: &[Span]) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Status};
    use prost::Message;

    let text = |key: &str, value: &str| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    };
    let nanos = |at: SystemTime| {
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64
    };
    let spans = spans
        .iter()
        .map(|s| opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: s.context.trace_id.to_vec(),
            span_id: s.context.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: u32::from(s.context.flags),
            name: s.name.to_string(),
            kind: match s.kind {
                SpanKind::Server => span::SpanKind::Server,
                SpanKind::Client => span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s.attributes.iter().map(|(k, v)| text(k, v)).collect(),
            status: Some(Status {
                code: if s.error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Ok
                } as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", service_name),
                    text("service.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "wedsync-sidecar".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn failed_exports_are_warned_at_most_once_a_minute_with_what_was_dropped_since() {
        let mut log = super::FailureLog::default();
        let start = tokio::time::Instant::now();
        assert_eq!(log.failed(10, start), Some((1, 10)), "the first at once");
        assert_eq!(log.failed(5, start + Duration::from_secs(30)), None);
        assert_eq!(log.failed(7, start + Duration::from_secs(59)), None);
        assert_eq!(
            log.failed(1, start + Duration::from_secs(60)),
            Some((3, 13)),
            "the batches and spans since the last warning"
        );
    }

    use super::*;

    #[test]
    fn spans_encode_as_an_otlp_export_request() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use prost::Message;
        let context =
            TraceContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap();
        let span = Span {
            context,
            parent: Some([1, 2, 3, 4, 5, 6, 7, 8]),
            name: "egress",
            kind: SpanKind::Client,
            start: UNIX_EPOCH + Duration::from_secs(1),
            end: UNIX_EPOCH + Duration::from_millis(1500),
            attributes: vec![("http.response.status_code", "200".into())],
            error: false,
        };
        let request =
            ExportTraceServiceRequest::decode(&encode("wedsync-sidecar", &[span])[..]).unwrap();
        let resource = &request.resource_spans[0];
        let service = &resource.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        assert_eq!(
            service.value.as_ref().unwrap().value,
            Some(Value::StringValue("wedsync-sidecar".into()))
        );
        let encoded = &resource.scope_spans[0].spans[0];
        assert_eq!(
            encoded.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            encoded.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(encoded.parent_span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            (encoded.name.as_str(), encoded.kind, encoded.flags),
            ("egress", 3, 1)
        );
        assert_eq!(
            (encoded.start_time_unix_nano, encoded.end_time_unix_nano),
            (1_000_000_000, 1_500_000_000)
        );
        assert_eq!(encoded.attributes[0].key, "http.response.status_code");
    }
}
