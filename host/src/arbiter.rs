//! The etcd arbiter (`[arbiter]`, issue 11): who may be active is granted by etcd, one node at a time.
//!
//! A task of its own (on the loop's runtime, never awaited by a tick) keeps a lease of `ttl_ms` alive
//! (a renewal every `ttl/3`), and works the role key `PREFIX/leader`:
//!
//! - **campaign**: while the policy wants the active role and this node does not hold the key, a
//!   transaction puts this node's id on its lease, only if the key does not exist (create revision 0);
//! - **resign**: while the node neither is nor wants to be active and holds the key, a transaction
//!   deletes it, only if it is still on this node's lease;
//! - otherwise it reads the key: its holder and mod revision.
//!
//! Each tick, the runner turns what the task saw into the [`ArbiterView`] of the tick ([`Arbiter::view`]):
//! `held` counts the lease by this node's monotonic clock from the moment the last successful renewal
//! was *sent* (never from etcd's clock, and never from when its answer came back: the lease was renewed
//! at etcd between the two), and ends `safety_margin_ms` before the lease would expire. A lease etcd
//! no longer knows (expired while the node was cut off) is granted again; the key it held is gone.
//!
//! Never: blocks a tick, decides a mode (that is `NodeCore`'s fencing), or trusts a clock but its own.

use crate::clock::Clock;
use crate::config::ArbiterSection;
use crate::model::ArbiterView;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// What the task saw last, shared with the runner and `/status`.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Monotonic ms of the last answer from any endpoint.
    last_ok_mono: Option<u64>,
    /// This node's lease, and until when (monotonic ms, this node's clock) it is known alive.
    lease: Option<i64>,
    lease_until_mono: u64,
    /// The role key: its value (a node id), the lease it is bound to, its mod revision.
    holder: Option<String>,
    holder_lease: i64,
    revision: i64,
    last_error: Option<String>,
    /// Per endpoint: whether it answered its last status request.
    endpoints_up: Vec<bool>,
    campaigns: u64,
    renew_ms: Option<u64>,
    /// Set by the runner after a tick that left the node neither active nor wanting it while it held
    /// the key; cleared by the task once its resign transaction was answered. Nothing counts as held
    /// meanwhile, so no tick can take the role on a key that is being deleted.
    resigning: bool,
}

/// `/status`'s `arbiter` object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ArbiterStatus {
    pub kind: String,
    pub key: String,
    pub endpoints: Vec<String>,
    pub endpoints_up: usize,
    pub reachable: bool,
    pub holder: Option<String>,
    pub held: bool,
    pub lease_left_ms: u64,
    pub revision: i64,
    pub fencing: bool,
    pub campaigns: u64,
    pub last_error: Option<String>,
}

/// The arbiter as the runner sees it.
pub struct Arbiter {
    config: ArbiterSection,
    me: String,
    clock: Arc<dyn Clock>,
    seen: Mutex<Seen>,
    /// What the node is and wants, as of the last tick.
    active: AtomicBool,
    wants_active: AtomicBool,
    /// Wakes the task when the node starts wanting the role (a campaign at once, not at the next beat).
    wake: Notify,
    /// How often the lease is renewed: a third of it.
    beat: Duration,
    /// How often the task works the key: every heartbeat interval, within [50 ms, `beat`].
    period: Duration,
    metrics: crate::metrics::ArbiterMetrics,
}

impl Arbiter {
    /// The arbiter of a node whose heartbeat runs every `interval`.
    pub fn new(config: ArbiterSection, me: &str, interval: Duration, clock: Arc<dyn Clock>, metrics: crate::metrics::ArbiterMetrics) -> Arc<Arbiter> {
        let seen = Seen { endpoints_up: vec![false; config.endpoints.len()], ..Seen::default() };
        let beat = Duration::from_millis(config.ttl_ms / 3);
        Arc::new(Arbiter {
            config,
            me: me.to_string(),
            clock,
            seen: Mutex::new(seen),
            active: AtomicBool::new(false),
            wants_active: AtomicBool::new(false),
            wake: Notify::new(),
            beat,
            period: interval.clamp(Duration::from_millis(50), beat),
            metrics,
        })
    }

    /// How long an endpoint's silence leaves the arbiter reachable. The failsafe (see
    /// `NodeCore::fence`) must take over before the key stops counting as held, or an active node
    /// that loses etcd at the wrong moment is demoted instead. Reads refresh "answered" every period
    /// while the lease is renewed only every `ttl / 3` (plus up to one period of the loop), so the
    /// last answer can come that long after the last renewal: the window is what remains of the held
    /// time (`ttl - margin`) after it. (Half the lease, as it was, lost that race one time in four
    /// with a 2 s lease and 100 ms heartbeats.) At least 50 ms.
    fn reach_window_ms(&self) -> u64 {
        let after_renewal = (self.beat + self.period).as_millis() as u64;
        (self.config.ttl_ms - self.config.margin_ms()).saturating_sub(after_renewal).max(50)
    }

    /// The tick's view at monotonic `now`.
    pub fn view(&self, now: u64) -> ArbiterView {
        let seen = self.seen.lock().expect("arbiter lock");
        self.view_of(&seen, now)
    }

    fn view_of(&self, seen: &Seen, now: u64) -> ArbiterView {
        let lease_left_ms = if seen.lease.is_some() { seen.lease_until_mono.saturating_sub(now) } else { 0 };
        let mine = seen.lease.is_some_and(|l| l == seen.holder_lease) && seen.holder.as_deref() == Some(self.me.as_str());
        ArbiterView {
            reachable: seen.last_ok_mono.is_some_and(|at| now.saturating_sub(at) <= self.reach_window_ms()),
            holder: seen.holder.clone(),
            held: mine && !seen.resigning && lease_left_ms > self.config.margin_ms(),
            lease_left_ms,
            revision: seen.revision,
        }
    }

    /// What the tick decided: the task campaigns while the node wants the role and does not hold it,
    /// and resigns while it neither is nor wants to be active.
    pub fn after_tick(&self, active: bool, wants_active: bool) {
        self.active.store(active, Ordering::Release);
        let before = self.wants_active.swap(wants_active, Ordering::AcqRel);
        if wants_active && !before {
            self.wake.notify_one();
        }
        if !active && !wants_active {
            let mut seen = self.seen.lock().expect("arbiter lock");
            if seen.holder.as_deref() == Some(self.me.as_str()) && seen.lease.is_some_and(|l| l == seen.holder_lease) {
                seen.resigning = true;
            }
        }
        let view = self.view(self.clock.mono_ms());
        self.metrics.reachable.set(i64::from(view.reachable));
        self.metrics.held.set(i64::from(view.held));
    }

    /// `/status`'s view.
    pub fn status(&self) -> ArbiterStatus {
        let seen = self.seen.lock().expect("arbiter lock");
        let view = self.view_of(&seen, self.clock.mono_ms());
        ArbiterStatus {
            kind: self.config.kind.clone(),
            key: self.config.leader_key(),
            endpoints: self.config.endpoints.clone(),
            endpoints_up: seen.endpoints_up.iter().filter(|up| **up).count(),
            reachable: view.reachable,
            holder: view.holder,
            held: view.held,
            lease_left_ms: view.lease_left_ms,
            revision: view.revision,
            fencing: self.config.fencing,
            campaigns: seen.campaigns,
            last_error: seen.last_error.clone(),
        }
    }

    fn ok(&self, mono: u64) {
        let mut seen = self.seen.lock().expect("arbiter lock");
        seen.last_ok_mono = Some(mono);
        seen.last_error = None;
    }

    fn failed(&self, what: &str, error: impl std::fmt::Display) {
        let message = format!("{what}: {error}");
        let mut seen = self.seen.lock().expect("arbiter lock");
        if seen.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(arbiter = %self.config.leader_key(), "{message}");
        }
        seen.last_error = Some(message);
    }

    /// The key as read (absent: no holder, revision 0).
    fn saw_key(&self, kv: Option<&etcd_client::KeyValue>) {
        let mut seen = self.seen.lock().expect("arbiter lock");
        match kv {
            Some(kv) => {
                seen.holder = Some(String::from_utf8_lossy(kv.value()).into_owned());
                seen.holder_lease = kv.lease();
                seen.revision = kv.mod_revision();
            }
            None => {
                seen.holder = None;
                seen.holder_lease = 0;
                seen.revision = 0;
            }
        }
    }
}

/// The client's options: TLS, user and password, timeouts bounded by the lease.
fn connect_options(config: &ArbiterSection, password: Option<String>) -> anyhow::Result<ConnectOptions> {
    let timeout = Duration::from_millis((config.ttl_ms / 3).max(200));
    let mut options = ConnectOptions::new().with_timeout(timeout).with_connect_timeout(timeout).with_keep_alive(timeout, timeout);
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("arbiter.ca_file: {}: cannot read: {e}", ca.display()))?;
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            let cert = std::fs::read(cert).map_err(|e| anyhow::anyhow!("arbiter.cert_file: {}: cannot read: {e}", cert.display()))?;
            let key = std::fs::read(key).map_err(|e| anyhow::anyhow!("arbiter.key_file: {}: cannot read: {e}", key.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(password)) = (&config.user, password) {
        options = options.with_user(user.clone(), password);
    }
    Ok(options)
}

/// Check what the daemon can check before it runs: the TLS files read.
pub fn check(config: &ArbiterSection, password: Option<String>) -> anyhow::Result<()> {
    connect_options(config, password).map(|_| ())
}

/// One client per endpoint, and the one that answered last: a request goes there first and, when it
/// fails, to the next endpoint at once (a balanced channel keeps sending some requests to a dead member
/// until its connection is retried, which would cost renewals).
struct Endpoints {
    options: ConnectOptions,
    clients: Vec<Option<Client>>,
    current: usize,
    /// The time limit of one attempt.
    attempt: Duration,
}

impl Endpoints {
    /// Run `call` on the current endpoint, then on the others in turn until one answers.
    async fn call<T, F, Fut>(&mut self, arbiter: &Arbiter, what: &str, mut call: F) -> Option<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (self.current + k) % n;
            let endpoint = &arbiter.config.endpoints[i];
            if self.clients[i].is_none() {
                match tokio::time::timeout(self.attempt, Client::connect([endpoint], Some(self.options.clone()))).await {
                    Ok(Ok(c)) => self.clients[i] = Some(c),
                    Ok(Err(e)) => {
                        errors.push(format!("{endpoint}: {e}"));
                        continue;
                    }
                    Err(_) => {
                        errors.push(format!("{endpoint}: connect timed out"));
                        continue;
                    }
                }
            }
            let client = self.clients[i].clone().expect("connected");
            match tokio::time::timeout(self.attempt, call(client)).await {
                Ok(Ok(answer)) => {
                    self.current = i;
                    return Some(answer);
                }
                Ok(Err(e)) => errors.push(format!("{endpoint}: {e}")),
                Err(_) => errors.push(format!("{endpoint}: timed out after {} ms", self.attempt.as_millis())),
            }
        }
        arbiter.failed(what, errors.join("; "));
        None
    }
}

/// The task: until `stop`, keep the lease, campaign, resign, read.
pub async fn run(arbiter: Arc<Arbiter>, password: Option<String>, mut stop: watch::Receiver<bool>) {
    let config = arbiter.config.clone();
    let key = config.leader_key();
    let (beat, period) = (arbiter.beat, arbiter.period);
    let options = match connect_options(&config, password.clone()) {
        Ok(options) => options,
        Err(e) => return arbiter.failed("configuration", e),
    };
    // Every endpoint tried within one renewal period (at least 100 ms each).
    let attempt = (beat / config.endpoints.len().max(1) as u32).max(Duration::from_millis(100));
    let mut endpoints = Endpoints { options: options.clone(), clients: vec![None; config.endpoints.len()], current: 0, attempt };
    let mut probes: Vec<Option<Client>> = vec![None; config.endpoints.len()];
    let mut next_renew = 0u64;
    let mut next_probe = 0u64;
    loop {
        let now = arbiter.clock.mono_ms();
        if now >= next_probe {
            next_probe = now + config.ttl_ms;
            probe_endpoints(&arbiter, &options, &mut probes).await;
        }
        if now >= next_renew {
            next_renew = now + beat.as_millis() as u64;
            renew(&arbiter, &mut endpoints).await;
        }
        work_key(&arbiter, &mut endpoints, &key).await;
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = arbiter.wake.notified() => {}
            _ = stop.changed() => break,
        }
    }
    // A clean stop of a node that is not active gives its lease back at once. An active node's lease
    // ends by itself: its services stop after the loop, and the key must not be free before that.
    let lease = arbiter.seen.lock().expect("arbiter lock").lease.filter(|_| !arbiter.active.load(Ordering::Acquire));
    if let Some(lease) = lease {
        endpoints.call(&arbiter, "lease revoke", |mut c| async move { c.lease_revoke(lease).await }).await;
    }
}

/// Keep the lease alive (or grant one): its new end counts from when the renewal was sent.
async fn renew(arbiter: &Arbiter, endpoints: &mut Endpoints) {
    let ttl_ms = arbiter.config.ttl_ms;
    let lease = arbiter.seen.lock().expect("arbiter lock").lease;
    let mut sent = arbiter.clock.mono_ms();
    let started = std::time::Instant::now();
    let clock = arbiter.clock.clone();
    let sent_at = Arc::new(AtomicU64::new(sent));
    let granted = match lease {
        None => {
            let ttl_s = ttl_ms.div_ceil(1000) as i64;
            let at = sent_at.clone();
            endpoints
                .call(arbiter, "lease grant", |mut c| {
                    at.store(clock.mono_ms(), Ordering::Release);
                    async move { c.lease_grant(ttl_s, None).await.map(|r| (r.id(), r.ttl())) }
                })
                .await
        }
        Some(id) => {
            let at = sent_at.clone();
            endpoints
                .call(arbiter, "lease keep-alive", |mut c| {
                    at.store(clock.mono_ms(), Ordering::Release);
                    async move {
                        let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                        keeper.keep_alive().await?;
                        match stream.message().await? {
                            Some(r) => Ok((id, r.ttl())),
                            None => Err(etcd_client::Error::InvalidArgs("the keep-alive stream ended".into())),
                        }
                    }
                })
                .await
        }
    };
    let Some((id, ttl_s)) = granted else { return };
    sent = sent_at.load(Ordering::Acquire);
    arbiter.ok(arbiter.clock.mono_ms());
    arbiter.metrics.renew_latency.observe(started.elapsed().as_secs_f64());
    let mut seen = arbiter.seen.lock().expect("arbiter lock");
    seen.renew_ms = Some(started.elapsed().as_millis() as u64);
    if ttl_s <= 0 {
        // etcd no longer knows the lease (it expired while this node was cut off): a new one next beat.
        seen.lease = None;
        seen.lease_until_mono = 0;
        seen.last_error = Some(format!("lease {id:x} expired; granting a new one"));
        return;
    }
    seen.lease = Some(id);
    seen.lease_until_mono = sent + ttl_ms.min(ttl_s as u64 * 1000);
}

/// Campaign, resign or read the role key, as the node wants.
async fn work_key(arbiter: &Arbiter, endpoints: &mut Endpoints, key: &str) {
    let (lease, view, resigning) = {
        let seen = arbiter.seen.lock().expect("arbiter lock");
        (seen.lease, arbiter.view_of(&seen, arbiter.clock.mono_ms()), seen.resigning)
    };
    let wants = arbiter.wants_active.load(Ordering::Acquire);
    let get = TxnOp::get(key, None::<GetOptions>);
    let (txn, what) = match lease {
        Some(lease) if wants && !resigning && !view.held && view.holder.is_none() => {
            let put = TxnOp::put(key, arbiter.me.as_bytes(), Some(PutOptions::new().with_lease(lease)));
            (Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([put, get.clone()]).or_else([get]), "campaign")
        }
        Some(lease) if resigning => {
            let delete = TxnOp::delete(key, None);
            (Txn::new().when([Compare::lease(key, CompareOp::Equal, lease)]).and_then([delete, get.clone()]).or_else([get]), "resign")
        }
        _ => (Txn::new().and_then([get]), "read"),
    };
    if what == "campaign" {
        arbiter.seen.lock().expect("arbiter lock").campaigns += 1;
        arbiter.metrics.campaigns.inc();
    }
    let Some(r) = endpoints.call(arbiter, what, |mut c| { let txn = txn.clone(); async move { c.txn(txn).await } }).await else { return };
    arbiter.ok(arbiter.clock.mono_ms());
    let kv = r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
        _ => None,
    });
    arbiter.saw_key(kv.flatten().as_ref());
    if what == "resign" {
        arbiter.seen.lock().expect("arbiter lock").resigning = false;
    }
    if r.succeeded() && what != "read" {
        tracing::info!(key, "{}", if what == "campaign" { "role key taken" } else { "role key given back" });
    }
}

/// Ask each endpoint for its status (one client each): `/status` counts the endpoints up.
async fn probe_endpoints(arbiter: &Arbiter, options: &ConnectOptions, probes: &mut [Option<Client>]) {
    let timeout = Duration::from_millis((arbiter.config.ttl_ms / 3).max(200));
    let endpoints = arbiter.config.endpoints.clone();
    let asks = probes.iter_mut().zip(&endpoints).map(|(probe, endpoint)| async move {
        if probe.is_none() {
            *probe = Client::connect([endpoint], Some(options.clone())).await.ok();
        }
        let Some(c) = probe.as_mut() else { return false };
        matches!(tokio::time::timeout(timeout, c.status()).await, Ok(Ok(_)))
    });
    let up = futures_util::future::join_all(asks).await;
    arbiter.seen.lock().expect("arbiter lock").endpoints_up = up;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arbiter(interval_ms: u64) -> Arc<Arbiter> {
        let config = ArbiterSection {
            kind: "etcd".into(),
            endpoints: vec!["http://127.0.0.1:1".into()],
            prefix: "/g".into(),
            ttl_ms: 1_000,
            safety_margin_ms: Some(250),
            fencing: true,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            password_file: None,
        };
        let metrics = crate::metrics::Metrics::new(&[]);
        Arbiter::new(config, "a", Duration::from_millis(interval_ms), crate::clock::SystemClock::new(), metrics.arbiter.clone())
    }

    #[test]
    fn held_counts_the_lease_by_the_local_clock_minus_the_margin() {
        let seen_once = |a: &Arbiter| {
            let mut seen = a.seen.lock().unwrap();
            seen.last_ok_mono = Some(1_000);
            seen.lease = Some(7);
            seen.lease_until_mono = 2_000;
            seen.holder = Some("a".into());
            seen.holder_lease = 7;
            seen.revision = 12;
        };
        let a = arbiter(100);
        assert_eq!(a.view(0), ArbiterView::default(), "nothing seen: unreachable, nothing held");
        seen_once(&a);
        let v = a.view(1_100);
        assert!(v.reachable && v.held && v.lease_left_ms == 900 && v.revision == 12, "{v:?}");
        assert!(!a.view(1_760).held, "within the margin of the lease's end: no longer held");
        // ttl 1000, margin 250, renewals every 333 ms, the loop every 100 ms: unreachable once silent
        // for more than 750 - 433 = 317 ms, before the key stops counting as held (at 1_750 for a
        // renewal sent at 1_000, and the last answer may have come up to 433 ms after it).
        assert!(a.view(1_317).reachable && !a.view(1_318).reachable, "{:?}", a.view(1_318));
        let slow = arbiter(1_000);
        seen_once(&slow);
        assert!(slow.view(1_084).reachable && !slow.view(1_085).reachable, "with a 1 s heartbeat the loop runs every 333 ms: 84 ms");
        a.seen.lock().unwrap().holder_lease = 8;
        assert!(!a.view(1_100).held, "the key on another lease (an earlier run of this node) is not held");
    }
}
