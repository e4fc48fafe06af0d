//! Talking to servers: a small HTTP client over Pingora's connector (token
//! endpoints, deliveries, the dlq CLI), upstream targets (address
//! resolution, TLS roots, pool keys), the cutoff that holds a whole
//! exchange to its deadline, and request ids. No policy: callers bring
//! timeouts and decide what an answer means.

pub mod client;
pub mod cutoff;
pub mod request_id;
pub mod target;
