//! Log output: human-readable lines by default, JSON for production
//! (`--log-format json`). The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use crate::access_log::LogFormat;

pub fn init(format: LogFormat) {
    // Pingora logs through the `log` crate; `try_init` also installs the
    // `log` bridge (tracing-subscriber's tracing-log feature), so its
    // records arrive here as events of their module's target. Its
    // per-connection chatter stays off unless RUST_LOG asks for it.
    // An empty RUST_LOG (a manifest's `value: ""`) means the default, not
    // "errors only".
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|_| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    crate::access_log::init(format);
}
