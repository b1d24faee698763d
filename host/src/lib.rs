//! # vigil
//!
//! A hot-standby failover daemon. The host runtime does the mechanics (heartbeats, services, HTTP,
//! replication); every decision is made by a sandboxed WebAssembly policy plugin.
//!
//! ## Layout
//!
//! - [`model`]: the data of the policy interface (modes, ticks, decisions, actions) in host terms.
//! - [`policy`]: policy files, the wasmtime plugin runtime, loading, decision checks, hot reload.
//! - [`scenario`]: golden-timeline replay of a policy (`vigil policy test`).
//! - [`toml_file`]: TOML reading with errors that name file, key and line.
//! - [`cli`]: the `vigil` command line.
#![deny(unsafe_code)]

pub mod cli;
pub mod events;
pub mod executor;
pub mod model;
pub mod policy;
pub mod scenario;
pub mod services;
pub mod toml_file;
