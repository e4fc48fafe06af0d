//! Durable and shared state. `local` is the embedded event store (redb):
//! accepted webhook events, their dedup keys, delivery jobs and dead
//! letters. `redis` is the connection replicas share for global rate limits
//! and provider pauses; its queue operations come with the webhook ingress.

pub mod group_commit;
pub mod local;
pub mod redis;
pub mod redis_events;
