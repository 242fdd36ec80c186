//! End-to-end tests: the built `selves` binary, real TLS on loopback, real
//! SQLite files in temporary homes, real processes killed with SIGKILL.

mod capture;
mod cli;
mod crash;
mod daemon;
mod forget;
mod full;
mod harness;
mod identity;
mod join;
mod mcp;
mod memex_conformance;
mod memex_peer;
mod protocol;
mod remote;
mod scripted;
mod security;
mod service;
mod shares;
mod sync;
mod trust;
mod tunnels;
