//! `tracing`: trace context is always propagated (W3C `traceparent`);
//! `tracing.otlp` also exports spans to an OpenTelemetry collector.

use serde::Serialize;

use super::decode::{Decoder, Node};
use super::services::UpstreamUrl;
use super::units::parse_ratio;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracing {
    /// Trace context is read, continued and sent on (off: the sidecar
    /// neither adds nor stores any; an app's own header passes through).
    pub propagate: bool,
    pub otlp: Option<Otlp>,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            propagate: true,
            otlp: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Otlp {
    /// The collector's OTLP/HTTP base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: UpstreamUrl,
    /// The share of new traces sampled (a trace that arrives keeps its
    /// caller's decision).
    pub sample_ratio: f64,
    pub service_name: String,
}

pub fn decode_tracing(d: &mut Decoder, node: &Node) -> Option<Tracing> {
    let f = d.fields(node, &["propagate", "otlp"])?;
    let propagate = d.or(&f, "propagate", true, |d, n| d.boolean(n));
    let otlp = match f.get("otlp") {
        Some(n) => decode_otlp(d, &n).map(Some),
        None => Some(None),
    };
    if propagate == Some(false) && otlp.as_ref().is_some_and(|o| o.is_some()) {
        d.error(
            &f.path.key("otlp"),
            "exporting spans needs propagate: true (a span without its trace context is an orphan)",
        );
        return None;
    }
    Some(Tracing {
        propagate: propagate?,
        otlp: otlp?,
    })
}

fn decode_otlp(d: &mut Decoder, node: &Node) -> Option<Otlp> {
    let f = d.fields(node, &["endpoint", "sample_ratio", "service_name"])?;
    let endpoint = d
        .required(&f, "endpoint")
        .and_then(|n| d.parsed(&n, UpstreamUrl::parse));
    let sample_ratio = d.or(&f, "sample_ratio", 1.0, |d, n| d.parsed(n, parse_ratio));
    let service_name = d.or(&f, "service_name", "wedsync-sidecar".to_string(), |d, n| {
        d.non_empty_string(n)
    });
    Some(Otlp {
        endpoint: endpoint?,
        sample_ratio: sample_ratio?,
        service_name: service_name?,
    })
}
