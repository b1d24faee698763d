//! The ordered action queue: where a decision's actions are carried out.
//!
//! Owns: running the actions of every decision strictly one at a time, in the order decided, on a
//! task of its own (a slow action never delays a tick); sending each action to the right hand
//! (services to [`Services`], hooks to [`run_command`], everything that needs the network or the
//! node's state to a [`Delegate`]); the results, kept until the next tick takes them; one `tracing`
//! line per action.
//!
//! Never: decides anything or reorders, merges, skips or retries actions (a failed action is reported
//! and the next one runs: the plugin sees every result on its next tick and decides what follows);
//! runs two actions at once; runs a hook through a shell; lets untaken results grow without bound.
//!
//! Each batch carries the policy in force when it was decided, so a hot reload between decision and
//! execution cannot change which command a queued action runs.

use crate::model::{Action, ActionResult};
use crate::policy::file::PolicyFile;
use crate::policy::LoadedPolicy;
use crate::services::{run_command, Services};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Results kept for the next tick; beyond this the oldest are dropped (with a warning).
pub const MAX_RESULTS: usize = 1000;

/// A boxed, sendable future: what [`Delegate::run`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries out the actions that need more than a local command: claim / release the VIP, route,
/// command a peer, sync, alarm. Implemented by the node, which owns the network and its state.
pub trait Delegate: Send + Sync + 'static {
    /// Carry out `action`; `Ok` and `Err` both carry a one-line message for the action result.
    /// `policy` is the policy that decided the action (its VIPs, relay and hooks apply, even if a
    /// reload has replaced it since).
    fn run<'a>(&'a self, action: Action, policy: &'a PolicyFile) -> BoxFuture<'a, Result<String, String>>;
}

/// Called with each result as it finishes (the node writes them to the event log). It runs on the
/// executor's task: keep it short and never block on the executor.
pub type Observer = Arc<dyn Fn(&ActionResult) + Send + Sync>;

/// The services and hooks a batch may use.
#[derive(Clone)]
enum Declared {
    Policy(Arc<LoadedPolicy>),
    File(Arc<PolicyFile>),
}

impl Declared {
    fn file(&self) -> &PolicyFile {
        match self {
            Declared::Policy(policy) => &policy.file,
            Declared::File(file) => file,
        }
    }
}

struct Batch {
    declared: Declared,
    actions: Vec<Action>,
}

/// State shared by the handle and the worker task.
struct Shared {
    results: Mutex<VecDeque<ActionResult>>,
    dropped: Mutex<u64>,
    pending: watch::Sender<u32>,
    observer: RwLock<Option<Observer>>,
}

/// The action queue of one node. Create it inside a tokio runtime; dropping it lets the queued
/// actions finish, then its task ends.
pub struct Executor {
    queue: mpsc::UnboundedSender<Batch>,
    shared: Arc<Shared>,
}

impl Executor {
    /// Start the worker task.
    pub fn start(services: Arc<Services>, delegate: Arc<dyn Delegate>) -> Executor {
        let (queue, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            results: Mutex::new(VecDeque::new()),
            dropped: Mutex::new(0),
            pending: watch::Sender::new(0),
            observer: RwLock::new(None),
        });
        tokio::spawn(work(rx, services, delegate, shared.clone()));
        Executor { queue, shared }
    }

    /// Call `observer` with every result from now on (replacing any previous observer).
    pub fn set_observer(&self, observer: Observer) {
        *self.shared.observer.write().unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    /// Queue the actions of one decision, to run after everything queued before. `policy` is the
    /// policy that decided them: its services and hooks are the ones used.
    pub fn submit(&self, policy: Arc<LoadedPolicy>, actions: Vec<Action>) {
        self.enqueue(Declared::Policy(policy), actions);
    }

    /// [`Executor::submit`] with only a policy file (no compiled plugin): for tools and tests.
    pub fn submit_file(&self, file: Arc<PolicyFile>, actions: Vec<Action>) {
        self.enqueue(Declared::File(file), actions);
    }

    /// The results finished since the previous call, oldest first.
    pub fn take_results(&self) -> Vec<ActionResult> {
        lock(&self.shared.results).drain(..).collect()
    }

    /// Actions queued or running.
    pub fn pending(&self) -> u32 {
        *self.shared.pending.borrow()
    }

    /// Wait until nothing is queued or running (every result so far is then in `take_results`).
    pub async fn idle(&self) {
        let mut rx = self.shared.pending.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn enqueue(&self, declared: Declared, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let count = u32::try_from(actions.len()).unwrap_or(u32::MAX);
        self.shared.pending.send_modify(|n| *n = n.saturating_add(count));
        if self.queue.send(Batch { declared, actions }).is_err() {
            // Only when the worker task died with its runtime; nothing will run these.
            self.shared.pending.send_modify(|n| *n = n.saturating_sub(count));
            tracing::error!(actions = count, "action queue is gone; actions dropped");
        }
    }
}

async fn work(mut rx: mpsc::UnboundedReceiver<Batch>, services: Arc<Services>, delegate: Arc<dyn Delegate>, shared: Arc<Shared>) {
    while let Some(batch) = rx.recv().await {
        for action in batch.actions {
            let started = Instant::now();
            // Its own task, so a panicking delegate fails one action instead of the queue.
            let task = tokio::spawn(perform(services.clone(), delegate.clone(), batch.declared.clone(), action.clone()));
            let outcome = task.await.unwrap_or_else(|e| Err(format!("action task failed: {e}")));
            let duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
            let (ok, message) = match outcome {
                Ok(m) => (true, m),
                Err(m) => (false, m),
            };
            if ok {
                tracing::info!(action = %action, ok, duration_ms, message = %message, "action finished");
            } else {
                tracing::warn!(action = %action, ok, duration_ms, message = %message, "action failed");
            }
            let result = ActionResult { action, ok, message, finished_ms: services.clock().wall_ms(), duration_ms };
            shared.finish(result);
        }
    }
}

impl Shared {
    fn finish(&self, result: ActionResult) {
        let observer = self.observer.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(observer) = observer {
            observer(&result);
        }
        {
            let mut results = lock(&self.results);
            if results.len() >= MAX_RESULTS {
                results.pop_front();
                let mut dropped = lock(&self.dropped);
                *dropped += 1;
                if *dropped == 1 || *dropped % 100 == 0 {
                    tracing::warn!(dropped = *dropped, kept = MAX_RESULTS, "action results not taken; dropping the oldest");
                }
            }
            results.push_back(result);
        }
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn perform(services: Arc<Services>, delegate: Arc<dyn Delegate>, declared: Declared, action: Action) -> Result<String, String> {
    let file = declared.file();
    let service = |name: &str| {
        file.services.get(name).ok_or_else(|| format!("service {name:?} is not declared in the policy"))
    };
    match &action {
        Action::Start(name) => services.start(name, service(name)?).await,
        Action::Stop(name) => services.stop(name, service(name)?).await,
        Action::Restart(name) => services.restart(name, service(name)?).await,
        Action::Hook { name, args } => {
            let hook = file.hooks.get(name).ok_or_else(|| format!("hook {name:?} is not declared in the policy"))?;
            let argv = expand_hook(&hook.command, args).map_err(|e| format!("hook {name}: {e}"))?;
            let outcome = run_command(&argv, Duration::from_millis(hook.timeout_ms)).await;
            if outcome.success {
                Ok(outcome.summary())
            } else {
                Err(outcome.summary())
            }
        }
        Action::ClaimVip
        | Action::ReleaseVip
        | Action::Route(_)
        | Action::Command { .. }
        | Action::Sync
        | Action::Alarm { .. } => delegate.run(action, file).await,
    }
}

/// Replace every `{N}` in each word of a hook template by argument N. The arguments are never parsed
/// again (an argument containing `{1}` or `$(…)` stays literal) and no shell is involved. Braces
/// around anything but a number stay as written.
pub fn expand_hook(template: &[String], args: &[String]) -> Result<Vec<String>, String> {
    template
        .iter()
        .map(|word| {
            let mut out = String::with_capacity(word.len());
            let mut rest = word.as_str();
            while let Some(open) = rest.find('{') {
                out.push_str(&rest[..open]);
                let after = &rest[open + 1..];
                match after.find('}').and_then(|close| after[..close].parse::<usize>().ok().map(|i| (close, i))) {
                    Some((close, i)) => {
                        let arg = args
                            .get(i)
                            .ok_or_else(|| format!("no argument {{{i}}}: got {} argument(s)", args.len()))?;
                        out.push_str(arg);
                        rest = &after[close + 1..];
                    }
                    None => {
                        out.push('{');
                        rest = after;
                    }
                }
            }
            out.push_str(rest);
            Ok(out)
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Level;
    use std::path::Path;

    /// Answers every delegated action, remembering them; alarms with the message "fail" fail, and
    /// "panic" panics.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Action>>);

    impl Delegate for Recorder {
        fn run<'a>(&'a self, action: Action, _policy: &'a PolicyFile) -> BoxFuture<'a, Result<String, String>> {
            Box::pin(async move {
                lock(&self.0).push(action.clone());
                match &action {
                    Action::Alarm { message, .. } if message == "fail" => Err("refused".into()),
                    Action::Alarm { message, .. } if message == "panic" => panic!("delegate bug"),
                    _ => Ok(format!("did {action}")),
                }
            })
        }
    }

    fn policy(text: &str) -> Arc<PolicyFile> {
        Arc::new(toml::from_str(&format!("plugin = \"test\"\n{text}")).expect("test policy parses"))
    }

    fn executor() -> (Executor, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        (Executor::start(Arc::new(Services::new()), recorder.clone()), recorder)
    }

    fn alarm(message: &str) -> Action {
        Action::Alarm { severity: Level::Info, message: message.into() }
    }

    fn hook(name: &str, args: &[&str]) -> Action {
        Action::Hook { name: name.into(), args: args.iter().map(|a| a.to_string()).collect() }
    }

    fn nanos(path: &Path) -> u128 {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim().parse().unwrap()
    }

    #[test]
    fn hook_templates_expand_words_without_reparsing() {
        let t = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            expand_hook(&t(&["ip", "addr", "add", "{0}/24", "dev", "{1}", "{json}", "{"]), &t(&["10.0.0.5", "{0}"])).unwrap(),
            t(&["ip", "addr", "add", "10.0.0.5/24", "dev", "{0}", "{json}", "{"])
        );
        assert_eq!(expand_hook(&t(&["x", "{2}"]), &t(&["a"])).unwrap_err(), "no argument {2}: got 1 argument(s)");
    }

    #[tokio::test]
    async fn actions_run_one_at_a_time_in_order_and_submit_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let file = policy(
            r#"
[hooks.slow]
command = ["/bin/sh", "-c", "date +%s%N > \"$0/slow.start\"; sleep 0.4; date +%s%N > \"$0/slow.end\"", "{0}"]
[hooks.fast]
command = ["/bin/sh", "-c", "date +%s%N > \"$0/fast.start\"", "{0}"]
"#,
        );
        let d = dir.path().to_str().unwrap();
        let (exec, recorder) = executor();
        let submitted = Instant::now();
        exec.submit_file(file.clone(), vec![hook("slow", &[d]), alarm("between")]);
        exec.submit_file(file, vec![hook("fast", &[d])]);
        assert!(submitted.elapsed() < Duration::from_millis(100), "submit waited for the actions");
        assert_eq!(exec.pending(), 3);
        assert!(exec.take_results().is_empty());

        exec.idle().await;
        assert_eq!(exec.pending(), 0);
        let results = exec.take_results();
        let order: Vec<String> = results.iter().map(|r| r.action.to_string()).collect();
        assert_eq!(order, [format!("hook:slow {d}"), "alarm:info:between".into(), format!("hook:fast {d}")]);
        assert!(results.iter().all(|r| r.ok), "{results:?}");
        assert!(results[0].duration_ms >= 400, "{results:?}");
        assert!(results[0].finished_ms <= results[2].finished_ms);
        assert_eq!(*lock(&recorder.0), [alarm("between")]);
        assert!(nanos(&dir.path().join("slow.end")) <= nanos(&dir.path().join("fast.start")), "the second hook started before the first ended");
        assert!(exec.take_results().is_empty(), "results are handed out once");
    }

    #[tokio::test]
    async fn hook_arguments_arrive_in_order_and_literally() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args.txt");
        let pwned = dir.path().join("pwned");
        let file = policy(
            r#"
[hooks.echo]
command = ["/bin/sh", "-c", "printf '%s\n' \"$@\" > \"$0\"", "{0}", "{2}", "x{1}y", "{1}", "--", "{3}"]
[hooks.short]
command = ["/bin/echo", "{3}"]
"#,
        );
        let injection = format!("$(touch {})", pwned.display());
        let (exec, _) = executor();
        let args = [out.to_str().unwrap(), injection.as_str(), "{0} two  words", ""];
        exec.submit_file(file, vec![hook("echo", &args), hook("short", &["only one"]), hook("undeclared", &[])]);
        exec.idle().await;
        let results = exec.take_results();
        assert!(results[0].ok, "{results:?}");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{{0}} two  words\nx{injection}y\n{injection}\n--\n\n")
        );
        assert!(!pwned.exists(), "an argument was run by a shell");
        assert!(!results[1].ok && results[1].message == "hook short: no argument {3}: got 1 argument(s)", "{results:?}");
        assert!(!results[2].ok && results[2].message.contains("not declared"), "{results:?}");
    }

    #[tokio::test]
    async fn service_actions_go_to_services_and_failures_do_not_stop_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let file = policy(&format!(
            r#"
[services.app]
start = "touch {d}/running"
stop = "rm -f {d}/running"
status = "test -e {d}/running"
[hooks.boom]
command = ["/bin/sh", "-c", "echo it broke >&2; exit 2"]
timeout_ms = 1000
"#
        ));
        let (exec, _) = executor();
        exec.submit_file(
            file,
            vec![
                Action::Start("app".into()),
                hook("boom", &[]),
                alarm("fail"),
                alarm("panic"),
                Action::Start("app".into()),
                Action::Stop("ghost".into()),
                Action::ClaimVip,
            ],
        );
        exec.idle().await;
        let results = exec.take_results();
        let summary: Vec<(bool, &str)> = results.iter().map(|r| (r.ok, r.message.as_str())).collect();
        assert!(summary[0].0 && summary[0].1.starts_with("started"), "{summary:?}");
        assert!(!summary[1].0 && summary[1].1.starts_with("exit 2 in ") && summary[1].1.ends_with("it broke"), "{summary:?}");
        assert_eq!(summary[2], (false, "refused"));
        assert!(!summary[3].0 && summary[3].1.contains("panic"), "{summary:?}");
        assert_eq!(summary[4], (true, "already running"));
        assert_eq!(summary[5], (false, "service \"ghost\" is not declared in the policy"));
        assert_eq!(summary[6], (true, "did claim-vip"));
        assert!(dir.path().join("running").exists());
    }

    #[tokio::test]
    async fn untaken_results_are_capped_and_observed() {
        let (exec, _) = executor();
        let seen = Arc::new(Mutex::new(0usize));
        let counter = seen.clone();
        exec.set_observer(Arc::new(move |_r: &ActionResult| *lock(&counter) += 1));
        let file = policy("");
        let total = MAX_RESULTS + 5;
        exec.submit_file(file, (0..total).map(|i| alarm(&i.to_string())).collect());
        exec.idle().await;
        let results = exec.take_results();
        assert_eq!(results.len(), MAX_RESULTS);
        assert_eq!(results[0].action, alarm("5"));
        assert_eq!(results.last().unwrap().action, alarm(&(total - 1).to_string()));
        assert_eq!(*lock(&seen), total);
    }
}
