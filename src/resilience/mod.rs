//! Protecting providers and the app from each other: circuit breakers,
//! rate limits and provider back-pressure, each a plain type with an
//! injected clock that the egress proxy calls; and the sidecar from a
//! burst, with the memory budget the ingress and publishing ask.

pub mod breaker;
pub mod cooldown;
pub mod global;
pub mod memory;
pub mod ratelimit;
pub mod retry;
