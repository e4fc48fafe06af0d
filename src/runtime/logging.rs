//! Log output: human-readable lines by default, JSON for production
//! (`--log-format json`). The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use crate::access_log::LogFormat;

pub fn init(format: LogFormat) {
    // Pingora logs through the `log` crate at warn/error; its per-connection
    // chatter stays off unless asked for.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
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
