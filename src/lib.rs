//! wedsync-sidecar: an egress gateway, webhook ingress and delivery sidecar
//! built on Pingora. `main.rs` is only the CLI; everything else starts here.
#![forbid(unsafe_code)]

pub mod config;
