//! Trace context end to end: W3C `traceparent` read, continued and made
//! (`context`), `tracestate` passed on (`state`), and spans exported over OTLP/HTTP when configured
//! (`export`).

pub mod context;
pub mod state;

pub use context::TraceContext;

pub const TRACEPARENT: &str = "traceparent";
pub mod export;

pub use export::sample;
