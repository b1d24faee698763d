//! Client commands for a running node: `status`, `switch`, `events`.

use super::CliError;
use crate::config::NodeConfig;
use crate::http_client::HttpClient;
use crate::model::OperatorRequest;
use bytes::Bytes;
use hyper::Method;
use std::path::PathBuf;
use std::time::Duration;

/// Where the node is and how to authenticate, from the flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's base URL (default: from --config, else http://127.0.0.1:7400).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// A node configuration to take the URL and admin token from.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// A file holding the admin token (default: from --config, else $VIGIL_ADMIN_TOKEN).
    #[arg(long = "token-file", global = true)]
    pub token_file: Option<PathBuf>,
    /// For https:// URLs: the CA (PEM) that signed the node's certificate (default: from --config).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) for nodes that require one (mutual TLS; default: from --config).
    #[arg(long = "cert", id = "tls_cert", requires = "tls_key", global = true)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    // Ids apart from the names: a global `key` would clash with `config set KEY VALUE`.
    #[arg(long = "key", id = "tls_key", requires = "tls_cert", global = true)]
    pub key: Option<PathBuf>,
}

/// A resolved target: where, with which token, through which client.
struct Resolved {
    url: String,
    token: Option<String>,
    http: HttpClient,
}

impl Target {
    fn resolve(&self) -> Result<Resolved, CliError> {
        let config = match &self.config {
            Some(path) => Some(NodeConfig::read(path).map_err(|e| CliError::Config(e.into()))?),
            None => None,
        };
        let tls = config.as_ref().and_then(|c| c.tls.as_ref());
        let url = match (&self.url, &config) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(c)) => {
                let addr = c.node.listen;
                let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{host}:{}", addr.port())
            }
            (None, None) => "http://127.0.0.1:7400".to_string(),
        };
        let http = if url.starts_with("https://") {
            let (ca, what) = match (&self.ca, tls) {
                (Some(ca), _) => (ca.clone(), "--ca"),
                (None, Some(t)) => match t.ca.as_ref().or(t.client_ca.as_ref()) {
                    Some(ca) => (ca.clone(), "tls.ca"),
                    None => return Err(CliError::Config(anyhow::anyhow!("{url}: an https:// URL needs --ca FILE (the CA that signed the node's certificate)"))),
                },
                (None, None) => return Err(CliError::Config(anyhow::anyhow!("{url}: an https:// URL needs --ca FILE (the CA that signed the node's certificate)"))),
            };
            let identity = match (&self.cert, &self.key, tls) {
                (Some(cert), Some(key), _) => Some(crate::tls::Identity::load(cert, key).map_err(|e| CliError::Config(anyhow::anyhow!(cli_names(&e))))?),
                (_, _, Some(t)) => Some(crate::tls::Identity::load(&t.cert, &t.key).map_err(|e| CliError::Config(anyhow::anyhow!(e)))?),
                _ => None,
            };
            let min = tls.map_or("1.2", |t| t.min_version.as_str());
            let client = crate::tls::ClientTls::new(&ca, what, identity, min).map_err(|e| CliError::Config(anyhow::anyhow!(e)))?;
            HttpClient::with_tls(Some(&client))
        } else {
            if let Some(host) = remote_host(&url) {
                eprintln!(
                    "warning: {url} is plain HTTP to {host}, not a loopback address: the admin token and the replicated values cross the network in clear text; configure [tls] on the node and use https://"
                );
            }
            HttpClient::new()
        };
        let token = if let Some(file) = &self.token_file {
            Some(read_token(file)?)
        } else if let Some(c) = &config {
            c.read_admin_token().map_err(|e| CliError::Config(e.into()))?
        } else {
            std::env::var("VIGIL_ADMIN_TOKEN").ok()
        };
        Ok(Resolved { url, token, http })
    }
}

/// The host of a plain `http://` URL when it is not a loopback address.
fn remote_host(url: &str) -> Option<String> {
    let authority = url.strip_prefix("http://")?.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| host.to_string())
}

/// The CLI's names for the files of `--cert`/`--key` in a TLS error.
fn cli_names(message: &str) -> String {
    message.replacen("tls.cert: ", "--cert: ", 1).replacen("tls.key: ", "--key: ", 1)
}

fn read_token(file: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(file)
        .map(|t| t.trim().to_string())
        .map_err(|e| CliError::Config(anyhow::anyhow!("{}: cannot read the token file: {e}", file.display())))
}

const TIMEOUT: Duration = Duration::from_secs(5);

async fn call(http: &HttpClient, method: Method, url: &str, token: Option<&str>) -> Result<crate::http_client::Answer, CliError> {
    call_with(http, method, url, token, Bytes::new(), TIMEOUT).await
}

async fn call_with(
    http: &HttpClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Bytes,
    timeout: Duration,
) -> Result<crate::http_client::Answer, CliError> {
    let headers: Vec<(&str, String)> = token.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
    let answer = http
        .send(method, url, &headers, body, timeout)
        .await
        .map_err(|e| CliError::Failure(anyhow::anyhow!(e)))?;
    if answer.status >= 400 {
        return Err(CliError::Failure(anyhow::anyhow!("{url}: {} {}", answer.status, String::from_utf8_lossy(&answer.body).trim())));
    }
    Ok(answer)
}

/// `vigil status`.
pub async fn status(target: &Target, as_json: bool) -> Result<(), CliError> {
    let Resolved { url, http, .. } = target.resolve()?;
    let answer = call(&http, Method::GET, &format!("{url}/status"), None).await?;
    if as_json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(());
    }
    let s: serde_json::Value = serde_json::from_slice(&answer.body).map_err(|e| CliError::Failure(anyhow::anyhow!("{url}/status: {e}")))?;
    print!("{}", render_status(&s));
    Ok(())
}

/// The human-readable status.
pub fn render_status(s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let mut out = String::new();
    let node = &s["node"];
    let _ = writeln!(
        out,
        "node {} — configured {}, mode {} — {}",
        str_of(&node["id"]),
        str_of(&node["configured_role"]),
        str_of(&node["mode"]).to_uppercase(),
        str_of(&node["reason"])
    );
    for p in s["peers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  peer {:<10} {:<11} failures {:<3} successes {:<3} reports {:<8} skew {}",
            str_of(&p["id"]),
            if p["reachable"].as_bool() == Some(true) { "reachable" } else { "UNREACHABLE" },
            p["consecutive_failures"],
            p["consecutive_successes"],
            p["reported_mode"].as_str().unwrap_or("-"),
            p["clock_skew_ms"].as_i64().map_or("-".to_string(), |v| format!("{v} ms")),
        );
        if p["reachable"].as_bool() != Some(true) {
            if let Some(error) = p["last_error"].as_str() {
                let _ = writeln!(out, "    last error: {error}");
            }
        }
    }
    for w in s["watched"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  watch {:<9} {:<11} reports {}", str_of(&w["id"]), if w["reachable"].as_bool() == Some(true) { "reachable" } else { "UNREACHABLE" }, w["reported_mode"].as_str().unwrap_or("-"));
    }
    for svc in s["services"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  service {:<16} {}", str_of(&svc["name"]), str_of(&svc["state"]));
    }
    let a = &s["arbiter"];
    if a.is_object() {
        let _ = writeln!(
            out,
            "  arbiter {} {} — endpoints up {}/{}, holder {}, {}, lease left {} ms, revision {}{}",
            str_of(&a["kind"]),
            str_of(&a["key"]),
            a["endpoints_up"],
            a["endpoints"].as_array().map_or(0, Vec::len),
            a["holder"].as_str().unwrap_or("-"),
            if a["held"].as_bool() == Some(true) { "held by this node" } else { "not held" },
            a["lease_left_ms"],
            a["revision"],
            if a["reachable"].as_bool() == Some(true) { "" } else { " — UNREACHABLE" },
        );
        if let Some(e) = a["last_error"].as_str() {
            let _ = writeln!(out, "    last error: {e}");
        }
    }
    let p = &s["policy"];
    let _ = writeln!(out, "  policy {} (plugin {}), faults {}, reloads {}", str_of(&p["name"]), str_of(&p["plugin"]), p["faults"], p["reloads"]);
    let sh = &s["shadow"];
    if sh.is_object() {
        let _ = writeln!(
            out,
            "  shadow {} — {} ticks, {} divergences, {} faults, {} skipped, last call {} µs (max {}); {} clean ticks{}",
            str_of(&sh["policy"]),
            sh["ticks"],
            sh["divergences"],
            sh["faults"],
            sh["skipped"],
            sh["last_us"],
            sh["max_us"],
            sh["clean_ticks"],
            if sh["promotable"].as_bool() == Some(true) { ", promotable".to_string() } else { format!(", promotable after {}", sh["promote_after"]) },
        );
        for d in sh["recent"].as_array().into_iter().flatten().take(3) {
            let side = |x: &serde_json::Value| {
                let actions: Vec<String> = x["actions"].as_array().into_iter().flatten().map(&str_of).collect();
                format!("{} [{}] ({})", str_of(&x["mode"]), actions.join(", "), str_of(&x["reason"]))
            };
            let _ = writeln!(out, "    tick {}: live {} · shadow {}", d["tick"], side(&d["live"]), side(&d["shadow"]));
        }
        if let Some(e) = sh["last_fault"].as_str() {
            let _ = writeln!(out, "    last fault: {e}");
        }
        if let Some(e) = sh["reload_error"].as_str() {
            let _ = writeln!(out, "    reload failed: {e}");
        }
    }
    if let Some(e) = p["last_error"].as_str() {
        let _ = writeln!(out, "  last reload error: {e}");
    }
    out
}

/// `vigil switch`.
pub async fn switch(target: &Target, request: OperatorRequest) -> Result<(), CliError> {
    let Resolved { url, token, http } = target.resolve()?;
    let token = admin_token(token)?;
    call(&http, Method::POST, &format!("{url}/admin/switch/{request}"), Some(&token)).await?;
    println!("{request}: accepted by {url}; the policy sees it on the next tick");
    Ok(())
}

/// `vigil events`.
pub async fn events(target: &Target, limit: usize, as_json: bool) -> Result<(), CliError> {
    let Resolved { url, token, http } = target.resolve()?;
    let token = admin_token(token)?;
    let answer = call(&http, Method::GET, &format!("{url}/events?limit={limit}"), Some(&token)).await?;
    if as_json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(());
    }
    let events: Vec<serde_json::Value> = serde_json::from_slice(&answer.body).map_err(|e| CliError::Failure(anyhow::anyhow!("{url}/events: {e}")))?;
    for e in events.iter().rev() {
        let at = e["at_ms"].as_i64().and_then(chrono::DateTime::from_timestamp_millis);
        let at = at.map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S%.3f").to_string()).unwrap_or_default();
        println!("{at}  {:<8} {}", e["kind"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// `GET /admin/recording?QUERY`: the flight recorder's records in a window, as JSON lines.
pub async fn recording(target: &Target, query: &str) -> Result<String, CliError> {
    let Resolved { url, token, http } = target.resolve()?;
    let token = admin_token(token)?;
    let answer = call_with(&http, Method::GET, &format!("{url}/admin/recording?{query}"), Some(&token), Bytes::new(), Duration::from_secs(60)).await?;
    String::from_utf8(answer.body.to_vec()).map_err(|e| CliError::Failure(anyhow::anyhow!("{url}/admin/recording: {e}")))
}

fn admin_token(token: Option<String>) -> Result<String, CliError> {
    token.ok_or_else(|| CliError::Config(anyhow::anyhow!("no admin token: use --token-file, --config or $VIGIL_ADMIN_TOKEN")))
}

/// `vigil sync`: a full exchange with every peer, now (after releasing held scans when
/// `confirm_deletes`).
pub async fn sync(target: &Target, confirm_deletes: bool) -> Result<(), CliError> {
    let Resolved { url, token, http } = target.resolve()?;
    let token = admin_token(token)?;
    let query = if confirm_deletes { "?confirm_deletes=true" } else { "" };
    let answer = call_with(&http, Method::POST, &format!("{url}/admin/sync{query}"), Some(&token), Bytes::new(), Duration::from_secs(120)).await?;
    let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    println!("sync done: {}", v["synced"].as_str().unwrap_or("(no peers)"));
    for held in v["held"].as_array().into_iter().flatten() {
        println!("still held: {}", held.as_str().unwrap_or_default());
    }
    Ok(())
}

/// `vigil policy shadow PATH` (`None`: `--clear`).
pub async fn shadow(target: &Target, policy: Option<&std::path::Path>) -> Result<(), CliError> {
    let Resolved { url, token, http } = target.resolve()?;
    let token = admin_token(token)?;
    let answer = match policy {
        Some(path) => {
            let path = std::path::absolute(path).map_err(|e| CliError::Config(anyhow::anyhow!("{}: {e}", path.display())))?;
            let body = serde_json::json!({ "policy": path.display().to_string() }).to_string();
            call_with(&http, Method::POST, &format!("{url}/admin/shadow"), Some(&token), Bytes::from(body), Duration::from_secs(60)).await?
        }
        None => call_with(&http, Method::DELETE, &format!("{url}/admin/shadow"), Some(&token), Bytes::new(), Duration::from_secs(10)).await?,
    };
    let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    println!("{}", v["note"].as_str().unwrap_or_default());
    Ok(())
}

/// `vigil policy promote`.
pub async fn promote(target: &Target) -> Result<(), CliError> {
    let Resolved { url, token, http } = target.resolve()?;
    let token = admin_token(token)?;
    let answer = call_with(&http, Method::POST, &format!("{url}/admin/shadow/promote"), Some(&token), Bytes::new(), Duration::from_secs(60)).await?;
    let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    println!("{}", v["note"].as_str().unwrap_or_default());
    Ok(())
}

/// A configuration store operation.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigOp {
    /// Print a key's value.
    Get { key: String },
    /// Set a key (replicated unless local-only).
    Set { key: String, value: String },
    /// Delete a key (the delete replicates).
    Rm { key: String },
    /// List keys, optionally under a prefix.
    Ls { prefix: Option<String> },
}

fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `vigil config …`.
pub async fn config(target: &Target, op: &ConfigOp) -> Result<(), CliError> {
    let Resolved { url, token, http } = target.resolve()?;
    let token = admin_token(token)?;
    match op {
        ConfigOp::Get { key } => {
            let a = call(&http, Method::GET, &format!("{url}/config/{}", escape(key)), Some(&token)).await?;
            println!("{}", String::from_utf8_lossy(&a.body));
        }
        ConfigOp::Set { key, value } => {
            let a = call_with(&http, Method::PUT, &format!("{url}/config/{}", escape(key)), Some(&token), Bytes::from(value.clone()), TIMEOUT).await?;
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
            let scope = if v["local_only"].as_bool() == Some(true) { " (local-only: not replicated)" } else { "" };
            println!("{key} set{scope}");
        }
        ConfigOp::Rm { key } => {
            call(&http, Method::DELETE, &format!("{url}/config/{}", escape(key)), Some(&token)).await?;
            println!("{key} deleted");
        }
        ConfigOp::Ls { prefix } => {
            let query = prefix.as_deref().map(|p| format!("?prefix={}", escape(p))).unwrap_or_default();
            let a = call(&http, Method::GET, &format!("{url}/config/{query}"), Some(&token)).await?;
            let entries: Vec<serde_json::Value> = serde_json::from_slice(&a.body).map_err(|e| CliError::Failure(anyhow::anyhow!("{url}/config/: {e}")))?;
            for e in entries {
                let local = if e["local_only"].as_bool() == Some(true) { "  (local-only)" } else { "" };
                println!("{} = {}{local}", e["key"].as_str().unwrap_or(""), e["value"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}
