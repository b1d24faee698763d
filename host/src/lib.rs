//! # vigil
//!
//! A hot-standby failover daemon. The host runtime does the mechanics (heartbeats, services, HTTP,
//! replication); every decision is made by a sandboxed WebAssembly policy plugin.
//!
//! ## Layout
//!
//! - [`node`]: the node's mode and the loop: observe → tick the plugin → act → publish
//!   ([`node::NodeCore`] is the deterministic part, [`node::runner`] the daemon around it).
//! - [`policy`]: policy files, the wasmtime plugin runtime, loading, decision checks, hot reload.
//! - [`model`]: the data of the policy interface (modes, ticks, decisions, actions) in host terms.
//! - [`arbiter`]: the etcd arbiter (`[arbiter]`): the lease and the role key that grant the active role.
//! - [`heartbeat`]: probing peers, watched nodes, the LAN and the VIP; counting the results.
//! - [`peer`]: the signed peer protocol (messages, HMAC signing, client).
//! - [`http`]: the HTTP server: public, admin and peer endpoints. [`http_client`]: the client side.
//!   [`tls`]: rustls for both (certificates reloaded when they change, mutual TLS, peer names).
//! - [`executor`]: the ordered action queue. [`services`]: starting, stopping, watching services.
//! - [`replication`]: the replicated configuration store and directories (HLC, last writer wins).
//! - [`events`]: the event log in SQLite. [`state`]: what the loop publishes and the server reads.
//!   [`metrics`]: the `/metrics` registry (OpenMetrics, `prometheus-client`).
//! - [`relay`]: the built-in TCP relay that `route` actions move. [`vip`]: virtual IP addresses.
//!   [`monitors`]: local checks (ports, disks, commands).
//! - [`config`]: the node configuration. [`toml_file`]: TOML errors that name file, key and line.
//! - [`clock`]: time behind a trait, for tests and simulation.
//! - [`scenario`]: golden-timeline replay of a policy (`vigil policy test`).
//! - [`recorder`]: the flight recorder of decided ticks; its export as scenarios (`vigil record`) and
//!   replays of a candidate policy (`vigil policy replay`).
//! - [`systemd`]: `sd_notify` (READY, STATUS, WATCHDOG from the loop, STOPPING) under `Type=notify`.
//! - [`cluster`]: real local groups of `vigil run` processes (demo, tests, benchmarks).
//! - [`cli`]: the `vigil` command line.
#![deny(unsafe_code)]

pub mod arbiter;
pub mod cli;
pub mod cluster;
pub mod clock;
pub mod config;
pub mod events;
pub mod garp;
pub mod executor;
pub mod footprint;
pub mod heartbeat;
pub mod http;
pub mod http_client;
pub mod metrics;
pub mod model;
pub mod monitors;
pub mod node;
pub mod peer;
pub mod policy;
pub mod recorder;
pub mod relay;
pub mod replication;
pub mod scenario;
pub mod services;
pub mod state;
pub mod systemd;
pub mod tls;
pub mod toml_file;
pub mod udp;
pub mod vip;
