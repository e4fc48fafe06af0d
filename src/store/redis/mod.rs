//! Redis: the guarded connection (`connection`) that rate limits, provider
//! pauses and the event queue share, and the event queue on it (`events`).

pub mod connection;
pub mod events;

pub use connection::{
    RedisCallError, RedisStore, CALL_TIMEOUT, EVENT_CALL_TIMEOUT, QUIET_AFTER_FAILURE,
};
pub use events::RedisEventStore;
