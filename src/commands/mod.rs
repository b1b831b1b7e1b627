//! Subcommands that are one-shot tools rather than the daemon: each turns its
//! arguments into a domain call and the result into its documented output.

pub mod health_check;
pub mod news2_cli;
pub mod pair;
pub mod provision;
pub mod support;
