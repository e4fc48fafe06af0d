//! The subcommands beyond `run` and `check`: each does its work here and
//! returns what to print or an error for `main.rs` to show.

pub mod admin_api;
pub mod dlq;
pub mod events;
pub mod inject;
pub mod publish;
pub mod recover;
pub mod sign;

use std::net::SocketAddr;

/// What went wrong with a command that talks to the running sidecar, with
/// the exit code it deserves: 1 for a request refused (or not made), 2 when
/// the sidecar could not be reached or failed.
#[derive(Debug)]
pub struct CommandError {
    pub exit_code: u8,
    pub message: String,
}

impl CommandError {
    /// A request that is refused, or cannot be made: exit 1.
    pub fn refused(message: String) -> Self {
        Self {
            exit_code: 1,
            message,
        }
    }
}

/// Where this host reaches a listener of the config: a wildcard address
/// (`0.0.0.0`, as in a pod) is reached on loopback.
pub fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}
