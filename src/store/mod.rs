//! Shared state. The Redis store holds what replicas share (global rate
//! limits, provider pauses); the queue operations come with the webhook
//! ingress.

pub mod redis;
