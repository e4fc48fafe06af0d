//! Delivery: a Pingora background service that leases jobs from the store
//! and delivers each (event, target) pair to a backend of the target's
//! upstream group. `delivery.workers` deliveries run at once in total,
//! `max_in_flight` per target; priorities share the workers 6:3:1. The
//! files, from the loop down:
//!
//! ```text
//! scheduler  leases as workers come free, runs each attempt as a task
//! lanes      which priority leases next, which targets are full
//! attempt    one attempt: event from the store, request, answer, decision recorded
//! request    the HTTP request of an attempt (signed)
//! outcome    what an answer means: delivered, retry at, dead letter
//! settings   what the config says (policies, signer, caps): the snapshot's Plan
//! gauges     queue depth, oldest event, dead letters, backends
//! ```
//!
//! Shutdown: when Pingora's shutdown begins (after `drain_delay`), no new
//! job is leased; deliveries in flight finish within `shutdown_grace` (they
//! count as in flight for the lifecycle), and whatever is left waits in the
//! store for the next start.

pub mod attempt;
pub mod gauges;
pub mod lanes;
pub mod outcome;
pub mod request;
pub mod scheduler;
pub mod settings;

pub use attempt::{Deliverer, Transport};
pub use scheduler::{DeliveryService, PlanSource};
pub use settings::{Plan, Settings, SettingsError};
