//! Redis: the guarded connection (`connection`) that rate limits, provider
//! pauses and the event queue share, and the event queue on it (`events`).

pub mod connection;
pub mod events;
pub mod scripts;
pub mod settings;
pub mod slots;

pub use connection::{
    Connection, RedisCallError, RedisStore, RedisTarget, SentinelTarget, CALL_TIMEOUT,
    EVENT_CALL_TIMEOUT, QUIET_AFTER_FAILURE,
};
pub use events::RedisEventStore;
