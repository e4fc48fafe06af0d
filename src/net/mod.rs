//! Talking to servers: a small HTTP client over Pingora's connector (token
//! endpoints, deliveries, the dlq CLI) and upstream targets (address
//! resolution, TLS roots, pool keys). No policy: callers bring timeouts
//! and decide what an answer means.

pub mod client;
pub mod target;
