//! Spans exported over OTLP/HTTP (JSON encoding, `POST <endpoint>/v1/traces`)
//! when `tracing.otlp.endpoint` is set: one per egress exchange, one per
//! ingress acknowledgement, one per delivery attempt. Recording a span
//! never waits and never fails a request: spans go into a bounded queue
//! (a full queue drops the span, counted), and one background loop sends
//! them in batches; a collector that is down or slow costs dropped spans,
//! nothing else.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora::http::RequestHeader;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::context::{push_hex, unit_random, TraceContext};
use crate::config::services::UpstreamUrl;
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

struct Exporter {
    ratio: f64,
    queue: mpsc::Sender<Span>,
    dropped: IntCounter,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Whether a new trace is sampled: by the configured ratio when exporting,
/// always otherwise (propagation only: the flag tells the next hop that
/// this one would record).
pub fn sample() -> bool {
    match EXPORTER.get() {
        Some(exporter) => unit_random() < exporter.ratio,
        None => true,
    }
}

/// Whether spans are exported at all (so callers skip building them).
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Queues a finished span for export, if exporting and it is sampled.
pub fn record(span: Span) {
    let Some(exporter) = EXPORTER.get() else {
        return;
    };
    if !span.context.sampled() {
        return;
    }
    if exporter.queue.try_send(span).is_err() {
        exporter.dropped.inc();
    }
}

/// What the export loop needs.
pub struct ExportLoop {
    spans: mpsc::Receiver<Span>,
    target: UpstreamTarget,
    service_name: String,
    exported: IntCounter,
    dropped: IntCounter,
}

/// Starts exporting: spans recorded from now on are queued; the returned
/// loop sends them. None when an exporter was installed already.
pub fn install(
    endpoint: &UpstreamUrl,
    ratio: f64,
    service_name: &str,
    exported: IntCounter,
    dropped: IntCounter,
) -> Option<ExportLoop> {
    let (queue, spans) = mpsc::channel(QUEUE);
    let target = UpstreamTarget::new(endpoint.clone(), None).ok()?;
    EXPORTER
        .set(Exporter {
            ratio,
            queue,
            dropped: dropped.clone(),
        })
        .ok()?;
    Some(ExportLoop {
        spans,
        target,
        service_name: service_name.to_string(),
        exported,
        dropped,
    })
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

    async fn send(&self, client: &SmallClient, batch: &mut Vec<Span>) {
        let count = batch.len() as u64;
        let body = encode(&self.service_name, batch);
        batch.clear();
        let path = format!("{}/v1/traces", self.target.url.base_path);
        let sent = async {
            let mut request =
                RequestHeader::build("POST", path.as_bytes(), None).map_err(|e| e.to_string())?;
            request
                .insert_header("content-type", "application/json")
                .map_err(|e| e.to_string())?;
            let answer = client
                .send(&self.target, request, Bytes::from(body), EXPORT_TIMEOUT)
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
                tracing::debug!(%error, spans = count, "could not export spans; dropped");
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

fn nanos(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// An OTLP `ExportTraceServiceRequest` in its JSON encoding (ids in hex,
/// times as decimal strings of Unix nanoseconds).
pub fn encode(service_name: &str, spans: &[Span]) -> Vec<u8> {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|span| {
            let attributes: Vec<serde_json::Value> = span
                .attributes
                .iter()
                .map(
                    |(key, value)| serde_json::json!({"key": key, "value": {"stringValue": value}}),
                )
                .collect();
            let mut value = serde_json::json!({
                "traceId": hex(&span.context.trace_id),
                "spanId": hex(&span.context.span_id),
                "name": span.name,
                "kind": span.kind as u8,
                "startTimeUnixNano": nanos(span.start),
                "endTimeUnixNano": nanos(span.end),
                "attributes": attributes,
                "status": {"code": if span.error { 2 } else { 1 }},
            });
            if let Some(parent) = span.parent {
                value["parentSpanId"] = hex(&parent).into();
            }
            value
        })
        .collect();
    let request = serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service_name}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "wedsync-sidecar", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&request).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
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
        let value: serde_json::Value =
            serde_json::from_slice(&encode("wedsync-sidecar", &[span])).unwrap();
        let encoded = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(encoded["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(encoded["spanId"], "00f067aa0ba902b7");
        assert_eq!(encoded["parentSpanId"], "0102030405060708");
        assert_eq!(encoded["kind"], 3);
        assert_eq!(encoded["startTimeUnixNano"], "1000000000");
        assert_eq!(encoded["endTimeUnixNano"], "1500000000");
        assert_eq!(
            value["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "wedsync-sidecar"
        );
    }
}
