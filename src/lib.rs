//! wedsync-sidecar: an egress gateway, webhook ingress and delivery sidecar
//! built on Pingora. `main.rs` is only the CLI; `server::run` starts it all.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod client;
pub mod config;
pub mod delivery;
pub mod dlq;
pub mod egress;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod inject;
pub mod lifecycle;
pub mod listen_owner;
pub mod logging;
pub mod problem;
pub mod reload;
pub mod resilience;
pub mod server;
pub mod store;
pub mod store_monitor;
pub mod upstreams;
pub mod webhooks;
