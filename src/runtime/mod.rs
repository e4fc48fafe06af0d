//! What turns a config into a running process: the Pingora server and its
//! services (`server`), hot reload (`reload`), readiness and shutdown
//! (`lifecycle`), listener ownership checks, the store monitor and log
//! set-up. The only place that knows every direction.

pub mod bind;
pub mod housekeeping;
pub mod listen_owner;
pub mod logging;
pub mod publish;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod store_monitor;
