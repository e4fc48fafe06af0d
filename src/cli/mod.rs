//! The subcommands beyond `run` and `check`: each does its work here and
//! returns what to print or an error for `main.rs` to show.

pub mod dlq;
pub mod inject;
pub mod publish;
pub mod sign;
