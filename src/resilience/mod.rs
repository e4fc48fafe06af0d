//! Protecting providers and the app from each other: circuit breakers,
//! rate limits and provider back-pressure, each a plain type with an
//! injected clock that the egress proxy calls.

pub mod breaker;
pub mod cooldown;
pub mod global;
pub mod ratelimit;
pub mod retry;
