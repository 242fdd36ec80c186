//! One module per group of commands; each turns arguments into calls on
//! the store, server and client crates and prints the outcome.

pub mod capture;
pub mod identity;
pub mod join;
pub mod mcp;
pub mod memory;
pub mod node;
pub mod peers;
pub mod remote;
pub mod serve;
pub mod service;
pub mod shares;
pub mod sync;
pub mod tunnel;
