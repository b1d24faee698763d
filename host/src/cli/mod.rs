//! The `vigil` command line: argument parsing and exit codes.
//!
//! Exit codes: 0 success; 2 bad usage or bad configuration (the message names the file, key and line
//! where known); 1 any other failure. User errors print one message, never a backtrace.

mod assets;
pub mod client;
mod demo;
mod init;
mod kit;
mod policy_cmd;
mod record;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// vigil: hot-standby failover with sandboxed WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// The node configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a real local group of a deployment, inject its failure, show what it does, print the timeline.
    Demo {
        /// The deployment to show: hot-standby (default), xivo, xivo-cc, edge, mail-gateway, voice.
        deployment: Option<String>,
    },
    /// Show a node's status.
    Status {
        #[command(flatten)]
        target: client::Target,
        /// Print the raw JSON of /status.
        #[arg(long)]
        json: bool,
    },
    /// Operator switchover: standby, active, restore (the configured role), restart-ha (leave off),
    /// planned-reboot (tell the peer this node is about to reboot).
    Switch {
        request: crate::model::OperatorRequest,
        #[command(flatten)]
        target: client::Target,
    },
    /// Start a configuration/data sync with every peer now (a full exchange).
    Sync {
        #[command(flatten)]
        target: client::Target,
        /// Release held directory scans first (a directory missing files, emptied, on another
        /// filesystem, or losing more files than `max_delete_*` allows): their deletes are recorded
        /// and replicated. Check the directories (`vigil status`) before confirming.
        #[arg(long)]
        confirm_deletes: bool,
    },
    /// The replicated configuration store.
    Config {
        #[command(subcommand)]
        op: client::ConfigOp,
        #[command(flatten)]
        target: client::Target,
    },
    /// Show the failover event log (oldest first).
    Events {
        #[command(flatten)]
        target: client::Target,
        /// How many of the latest events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check and test policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Export a window of a node's flight recorder as a scenario file (or its raw records), from a
    /// running node (admin API) or a stopped node's data directory.
    Record {
        #[command(flatten)]
        target: client::Target,
        /// Read this data directory (a stopped node's) instead of asking a running node.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Ticks at or after this time: RFC 3339 (2026-12-07T06:00:00Z) or ms since the Unix epoch.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Ticks at or before this time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// The tick of this event (`vigil events --json` shows the ids), with --ticks before and after.
        #[arg(long, value_name = "EVENT_ID")]
        around: Option<u64>,
        /// With --around: how many ticks before and after the event's.
        #[arg(long, default_value_t = 10)]
        ticks: usize,
        /// Write the raw records (JSON lines, for `vigil policy replay`) instead of a scenario.
        #[arg(long)]
        records: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a starting configuration for every node of a deployment: node.toml, the policy, a shared
    /// peer key and admin tokens, commented with what to edit.
    Init {
        /// hot-standby, xivo, xivo-cc, xds, edge, mail-gateway or voice.
        deployment: String,
        /// A node: its id (also its directory's name) and the address its peer reaches it at,
        /// HOST[:PORT]. Twice: the primary (main) first, then the secondary (standby).
        #[arg(long = "node", value_name = "ID=ADDR")]
        nodes: Vec<String>,
        /// Where to write (default: ./vigil-DEPLOYMENT); one directory per node.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Write into a non-empty directory, overwriting the files init writes (new keys and tokens).
        #[arg(long)]
        force: bool,
        /// Every node's data directory (default /var/lib/vigil; a relative path is relative to the
        /// node's node.toml).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Plugin directories written into each node's plugin_dirs (searched before the standard
        /// ones: $VIGIL_PLUGIN_DIR, plugins/ beside the executable's directory, /usr/lib/vigil/plugins).
        #[arg(long = "plugin-dir", value_name = "DIR")]
        plugin_dirs: Vec<PathBuf>,
    },
    /// Write the man pages and shell completions to DIR/man and DIR/completions (`cargo xtask package`).
    #[command(hide = true)]
    GenerateAssets {
        /// The output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load and validate a policy and its plugin: exit 0, or 2 with the file and key at fault.
    Check {
        /// The policy file.
        policy: PathBuf,
        /// Extra directories where plugin names are looked up (before the standard ones).
        #[arg(long = "plugin-dir", value_name = "DIR")]
        plugin_dirs: Vec<PathBuf>,
    },
    /// Replay scenario timelines through the policy's plugin and compare with the expected decisions.
    Test {
        /// The policy file.
        policy: PathBuf,
        /// Scenario files (TOML).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Extra directories where plugin names are looked up (before the standard ones).
        #[arg(long = "plugin-dir", value_name = "DIR")]
        plugin_dirs: Vec<PathBuf>,
        /// Print the timeline of passing scenarios too.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Decide every recorded tick with a candidate policy and show where it differs from what was
    /// decided (mode or actions, with both reasons): exit 0 when nowhere, 1 when it diverges.
    Replay {
        /// The candidate policy file.
        candidate: PathBuf,
        /// Recordings: `vigil record --records` files, or data directories (the whole ring). Several
        /// (a pair's two nodes) merge into one timeline.
        #[arg(required = true)]
        recordings: Vec<PathBuf>,
        /// Extra directories where plugin names are looked up (before the standard ones).
        #[arg(long = "plugin-dir", value_name = "DIR")]
        plugin_dirs: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a new policy project (source with a commented example, policy file, two scenarios,
    /// README) into a fresh directory; it needs nothing from vigil's repository.
    New {
        /// The policy's name (lower-case letters, digits, '-'): the crate, the component file.
        name: String,
        /// The plugin's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: kit::Lang,
        /// Where to write it (default: ./NAME); it must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a policy project into a component (Rust: cargo for wasm32-wasip2; Python:
    /// componentize-py) at the path its policy.toml names, then check it like `vigil policy check`.
    Build {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print the interface (WIT) this vigil runs, to generate bindings in any language.
    Wit,
    /// Set a running node's shadow policy (it decides every tick beside the live one and never
    /// acts), or clear it with --clear.
    Shadow {
        /// The policy file, as a path on the node (made absolute here).
        #[arg(required_unless_present = "clear")]
        policy: Option<PathBuf>,
        /// Stop the shadow policy.
        #[arg(long, conflicts_with = "policy")]
        clear: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// Make a running node's shadow policy its live policy, once it has decided
    /// `[shadow] promote_after_ticks` ticks in a row without a fault (same checks and swap as a hot
    /// reload).
    Promote {
        #[command(flatten)]
        target: client::Target,
    },
}

/// An error that decides the exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or bad configuration: exit 2.
    Config(anyhow::Error),
    /// Anything else: exit 1.
    Failure(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) => ExitCode::from(2),
            CliError::Failure(_) => ExitCode::from(1),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Config(e) | CliError::Failure(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Failure(e)
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run { config } => {
            let config = crate::config::NodeConfig::read(&config).map_err(|e| CliError::Config(e.into()))?;
            daemon_runtime()?.block_on(crate::node::runner::run(config)).map_err(|e| match e {
                crate::node::runner::StartError::Config(e) => CliError::Config(e),
                crate::node::runner::StartError::Other(e) => CliError::Failure(e),
            })
        }
        Command::Demo { deployment } => demo::run(deployment.as_deref()),
        Command::Status { target, json } => runtime()?.block_on(client::status(&target, json)),
        Command::Switch { request, target } => runtime()?.block_on(client::switch(&target, request)),
        Command::Sync { target, confirm_deletes } => runtime()?.block_on(client::sync(&target, confirm_deletes)),
        Command::Config { op, target } => runtime()?.block_on(client::config(&target, &op)),
        Command::Events { target, limit, json } => runtime()?.block_on(client::events(&target, limit, json)),
        Command::Policy(PolicyCommand::Check { policy, plugin_dirs }) => policy_cmd::check(&policy, plugin_dirs),
        Command::Policy(PolicyCommand::Test { policy, scenarios, plugin_dirs, verbose }) => {
            policy_cmd::test(&policy, &scenarios, plugin_dirs, verbose)
        }
        Command::Policy(PolicyCommand::Replay { candidate, recordings, plugin_dirs, json }) => {
            policy_cmd::replay(&candidate, &recordings, plugin_dirs, json)
        }
        Command::Policy(PolicyCommand::New { name, lang, dir }) => kit::new(&name, lang, dir.as_deref()),
        Command::Policy(PolicyCommand::Build { dir }) => kit::build(&dir),
        Command::Policy(PolicyCommand::Wit) => kit::wit(),
        Command::Policy(PolicyCommand::Shadow { policy, clear: _, target }) => runtime()?.block_on(client::shadow(&target, policy.as_deref())),
        Command::Policy(PolicyCommand::Promote { target }) => runtime()?.block_on(client::promote(&target)),
        Command::Record { target, data_dir, since, until, around, ticks, records, output } => {
            record::run(&record::RecordArgs { target, data_dir, since, until, around, ticks, records, output })
        }
        Command::Init { deployment, nodes, out, force, data_dir, plugin_dirs } => {
            init::run(&init::InitArgs { deployment, nodes, out, force, data_dir, plugin_dirs })
        }
        Command::GenerateAssets { out } => assets::generate(&out),
    }
}

/// The daemon's runtime, where its HTTP server runs (the node loop has a runtime of its own): one
/// worker thread, as nginx runs one worker per core. Two workers on a two-core machine that also
/// runs the load balancer's client fight over the same core and hand connections to each other (work
/// stealing): `/active` answered 84 % of nginx's requests per second with the default of one worker per
/// core and 101 % with one (`bench/README.md`). Work that can block (SQLite reads and writes of the
/// admin and peer endpoints, plugin loads) leaves the worker with `block_in_place` or
/// `spawn_blocking`, so the probes keep being answered.
fn daemon_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    // Before any thread of the daemon exists (`footprint`).
    crate::footprint::bound_heap_retention();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_flags_go_before_or_after_a_config_operation() {
        for args in [
            &["vigil", "config", "set", "app.greeting", "hello", "--config", "node.toml"][..],
            &["vigil", "config", "--config", "node.toml", "set", "app.greeting", "hello"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Config { op: client::ConfigOp::Set { key, value }, target } = cli.command else { panic!("{args:?}: not config set") };
            assert_eq!((key.as_str(), value.as_str()), ("app.greeting", "hello"));
            assert_eq!(target.config.as_deref(), Some(std::path::Path::new("node.toml")));
        }
        let cli = Cli::try_parse_from(["vigil", "config", "get", "k", "--cert", "c.pem", "--key", "k.pem"]).unwrap();
        let Command::Config { op: client::ConfigOp::Get { key }, target } = cli.command else { panic!("not config get") };
        assert_eq!((key.as_str(), target.key.as_deref()), ("k", Some(std::path::Path::new("k.pem"))));
        assert!(Cli::try_parse_from(["vigil", "status", "--cert", "c.pem"]).is_err(), "a certificate needs its key");
    }
}
