//! wedsync-sidecar: an egress gateway, webhook ingress and delivery sidecar
//! built on Pingora. `main.rs` is only the CLI; `runtime::server::run`
//! starts it all. The modules, from the bottom up (README, "Architecture";
//! `scripts/layers` checks the directions):
//! - what everything speaks: `time`, `problem`, `metrics`, `event`, `config`;
//! - building blocks: `signing`, `net`, `access_log`, then `resilience`,
//!   `store`, `upstreams`;
//! - the directions, which never import each other: `egress` (the app's
//!   calls out), `webhooks` (providers' calls in), `delivery` (events on
//!   to internal services);
//! - what wires them: `admin`, `runtime`; and the command line: `cli`.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod egress;
pub mod event;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod lifecycle;
pub mod metrics;
pub mod names;
pub mod net;
pub mod os;
pub mod problem;
pub mod resilience;
pub mod runtime;
pub mod signing;
pub mod store;
pub mod time;
pub mod trace;
pub mod upstreams;
pub mod webhooks;
pub mod wedding_day;
