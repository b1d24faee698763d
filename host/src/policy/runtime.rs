//! The plugin runtime: wasmtime narrowed to the few choices vigil needs.
//!
//! - **One engine per process**, with epoch interruption; a background thread advances the epoch every
//!   [`EPOCH_TICK`], so a call's wall-time deadline is exact to about a millisecond.
//! - **Compile once, instantiate per call.** A plugin is compiled into a [`Plugin`] holding a
//!   pre-instance (imports resolved, types checked). Every call gets a fresh `Store` and instance:
//!   nothing a plugin does can leak into the next call, which enforces the interface's promise that
//!   a decision depends only on the tick, and bounds memory per call rather than over the daemon's
//!   lifetime. The instance's memories and tables come from a [`Pool`] of slots reserved at start and
//!   reset to the plugin's initial image after each call (only the dirtied pages, with
//!   `PAGEMAP_SCAN`): a tick costs ~16 µs instead of ~45 µs with a `mmap`/`munmap` per call.
//! - **Compiled artifacts are cached on disk**, keyed by the plugin's sha256 and the engine's
//!   compatibility hash, so restarts and reloads of an unchanged plugin skip compilation.
//! - **No capability.** Plugins built with Rust's std import WASI; they get an empty context: no
//!   preopened directories, no network, no environment, no arguments, a clock frozen at the Unix epoch
//!   and a fixed random sequence (a plugin that tries to be non-deterministic gets the same answer
//!   every call). Their stdout and stderr are captured (bounded) and sent to `tracing`.
//! - **Every misbehaviour is a typed [`Fault`]**: out of time, out of memory, a trap. The store is
//!   dropped with the instance, and the next call starts clean.
//!
//! The one `unsafe` here is deserializing a cached artifact, which wasmtime cannot verify: the cache
//! directory belongs to the daemon (its data directory), and an artifact from another engine build is
//! refused by wasmtime's own compatibility check and recompiled.

use super::file::Limits;
use crate::model;
use sha2::{Digest, Sha256};
use std::fmt;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Generated bindings of the `vigil:policy@0.3.0` world (the current interface, `wit/policy.wit`).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
    });
}

/// Generated bindings of `vigil:policy@0.2.0` (`wit/v0.2.0/policy.wit`): plugins built before 0.3.0
/// still load and decide (without the arbiter).
pub(crate) mod bindings_v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "policy",
    });
}

/// Generated bindings of `vigil:policy@0.1.0` (`wit/v0.1.0/policy.wit`): plugins built before 0.2.0
/// still load and decide.
pub(crate) mod bindings_v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "policy",
    });
}

/// The interface versions the host loads, newest first.
pub const INTERFACE_VERSIONS: &[&str] = &["0.3.0", "0.2.0", "0.1.0"];

/// How often the epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Captured stdout + stderr per call; more is dropped.
const OUTPUT_CAPACITY: usize = 16 * 1024;
/// Log lines a plugin may write per call through the `log` import; more are dropped.
const LOG_LINES_PER_CALL: u32 = 64;
/// Longest log line kept.
const LOG_LINE_MAX: usize = 2048;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read plugin: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a WebAssembly file (expected the \\0asm header)")]
    NotWasm { path: PathBuf },
    #[error("{path}: a core WebAssembly module, not a component (build with --target wasm32-wasip2, or wrap it with `wasm-tools component new`)")]
    CoreModule { path: PathBuf },
    #[error("{path}: not a vigil:policy component (this host loads versions 0.3.0, 0.2.0 and 0.1.0): {detail}")]
    WrongWorld { path: PathBuf, detail: String },
    #[error("{path}: invalid component: {detail}")]
    Compile { path: PathBuf, detail: String },
}

/// A plugin call that went wrong. The call's instance is discarded; the host applies the policy's
/// fallback and the next call starts clean.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("ran past its time limit of {limit_ms} ms")]
    Timeout { limit_ms: u64 },
    #[error("reached its memory limit of {limit_mib} MiB")]
    Memory { limit_mib: u64 },
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned an invalid decision: {0}")]
    InvalidDecision(String),
}

impl Fault {
    /// A short word for metrics and the event log.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Timeout { .. } => "timeout",
            Fault::Memory { .. } => "memory",
            Fault::Trap(_) => "trap",
            Fault::InvalidDecision(_) => "invalid-decision",
        }
    }
}

/// The engine every plugin of this process runs in.
pub struct Runtime {
    engine: Engine,
    /// The settings of the engines that compile (see [`Runtime::compile`]).
    compile_config: Config,
    linker: Linker<Sandbox>,
    cache_dir: Option<PathBuf>,
    /// The engine's compatibility hash, part of every cache key.
    compat: String,
    /// The instance pool's size, when the engine has one.
    pool: Option<Pool>,
    _ticker: EpochTicker,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

impl Runtime {
    /// An engine; compiled plugins are cached under `cache_dir` when given.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Deep recursion in a plugin traps instead of growing the host's stack.
        config.max_wasm_stack(1 << 20);
        config.memory_guard_size(GUARD_BYTES);
        // Compiling happens in an engine of its own, dropped after each compile: Cranelift keeps its
        // working buffers (several MiB) in the engine that compiled, for the next compile. Same
        // settings but the instance allocator, which compiled code does not depend on.
        let compile_config = config.clone();
        let (engine, pool) = match pooled_engine(&mut config) {
            Ok(engine) => {
                let size = Pool::SIZE;
                tracing::debug!(
                    instances = size.instances,
                    reserved_gib = size.reserved_bytes() >> 30,
                    dirty_page_reset = PoolingAllocationConfig::is_pagemap_scan_available(),
                    "plugin instance pool reserved (address space only)"
                );
                (engine, Some(size))
            }
            Err(e) => {
                // An address-space limit (`ulimit -v`) can refuse the pool's reservation: every call
                // then maps and unmaps its own memory, as wasmtime does by default (~2× the tick cost).
                tracing::warn!(error = %format!("{e:#}"), "plugin instance pool unavailable; instances are allocated per call");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                (Engine::new(&config)?, None)
            }
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        // A plugin must never block: the epoch deadline interrupts running wasm only, so a sleep (a
        // clock subscription waited on) would hold the host thread past the time limit. Every clock
        // subscription is ready at once — time does not pass for a plugin anyway: its clock is frozen.
        linker.allow_shadowing(true);
        let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
        clock.func_wrap("subscribe-duration", |mut store: wasmtime::StoreContextMut<'_, Sandbox>, (_,): (u64,)| {
            Ok((ready_pollable(&mut store.data_mut().table)?,))
        })?;
        clock.func_wrap("subscribe-instant", |mut store: wasmtime::StoreContextMut<'_, Sandbox>, (_,): (u64,)| {
            Ok((ready_pollable(&mut store.data_mut().table)?,))
        })?;
        linker.allow_shadowing(false);
        bindings::Policy::add_to_linker::<Sandbox, wasmtime::component::HasSelf<Sandbox>>(&mut linker, |s| s)?;
        bindings_v0_2::Policy::add_to_linker::<Sandbox, wasmtime::component::HasSelf<Sandbox>>(&mut linker, |s| s)?;
        bindings_v0_1::Policy::add_to_linker::<Sandbox, wasmtime::component::HasSelf<Sandbox>>(&mut linker, |s| s)?;

        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let compat = hex::encode(&hasher.0.finalize()[..8]);

        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("{}: cannot create the plugin cache directory: {e}", dir.display()))?;
            prune_cache(dir, CACHE_MAX_AGE);
        }
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime { engine, compile_config, linker, cache_dir, compat, pool, _ticker: ticker })
    }

    /// The instance pool every call's instance comes from, or `None` when the address space could not
    /// be reserved and instances are allocated per call.
    pub fn pool(&self) -> Option<Pool> {
        self.pool
    }

    /// Read, check and compile a plugin (or take it from the cache).
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm { path: path.to_path_buf() });
        }
        // The header's layer field: 0 for a core module, 1 for a component.
        if bytes[6..8] != [1, 0] {
            return Err(LoadError::CoreModule { path: path.to_path_buf() });
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let started = Instant::now();
        let (component, from_cache) = self.compile(path, &bytes, &sha256)?;
        let compile_time = started.elapsed();

        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld { path: path.to_path_buf(), detail: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(wrong_world)?;
        // The newest interface first; a plugin built against an older one exports its functions.
        let pre = match bindings::PolicyPre::new(pre.clone()) {
            Ok(current) => Pre::V0_3(current),
            Err(current_error) => match bindings_v0_2::PolicyPre::new(pre.clone()) {
                Ok(old) => Pre::V0_2(old),
                Err(_) => match bindings_v0_1::PolicyPre::new(pre) {
                    Ok(old) => Pre::V0_1(old),
                    Err(_) => return Err(wrong_world(current_error)),
                },
            },
        };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        tracing::debug!(plugin = %name, sha256 = %sha256, from_cache, compile_ms = compile_time.as_millis() as u64, "plugin compiled");
        Ok(Plugin {
            name: name.into(),
            path: path.to_path_buf(),
            sha256,
            size: bytes.len(),
            from_cache,
            pre,
            engine: self.engine.clone(),
            spare: std::sync::Mutex::new(None),
            retired: std::sync::Mutex::new(None),
        })
    }

    fn compile(&self, path: &Path, bytes: &[u8], sha256: &str) -> Result<(Component, bool), LoadError> {
        let cached = self.cache_dir.as_ref().map(|dir| dir.join(format!("{sha256}-{}.cwasm", self.compat)));
        if let Some(cached) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash into the daemon's own cache directory; wasmtime checks the header
            // and version and refuses anything else, in which case we recompile below.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, cached) } {
                Ok(component) => {
                    // Mark it used, so pruning keeps what is still loaded.
                    let _ = std::fs::File::options().append(true).open(cached).and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    return Ok((component, true));
                }
                Err(e) => {
                    tracing::warn!(file = %cached.display(), error = %e, "discarding unusable cached plugin");
                    let _ = std::fs::remove_file(cached);
                }
            }
        }
        // A compiling engine of its own, dropped with everything Cranelift kept (its buffers), and a
        // thread pool of its own, whose threads end with it (with the stack pages the compile
        // touched); then the component is read into the runtime's engine from its serialized form, as
        // a cache hit does. So a daemon that compiled its plugin at start idles at the memory of one
        // that found it cached (19.0 against 28.6 MiB before; `bench/README.md`).
        let compile_error = |e: wasmtime::Error| LoadError::Compile { path: path.to_path_buf(), detail: format!("{e:#}") };
        let serialized = Engine::new(&self.compile_config).and_then(|compiler| match rayon::ThreadPoolBuilder::new().build() {
            Ok(threads) => threads.install(|| compiler.precompile_component(bytes)),
            Err(_) => compiler.precompile_component(bytes),
        });
        let serialized = serialized.map_err(compile_error).inspect_err(|_| crate::footprint::trim_heap())?;
        // SAFETY: the bytes were serialized just now by an engine of the same settings; wasmtime checks
        // the compatibility header all the same, and an error is reported as a compile error.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, &serialized) }.map_err(compile_error)?;
        if let Some(cached) = cached {
            if let Err(e) = write_atomically(&cached, &serialized) {
                // A cache that cannot be written costs start-up time, never correctness.
                tracing::warn!(file = %cached.display(), error = %e, "cannot cache compiled plugin");
            }
        }
        crate::footprint::trim_heap();
        Ok((component, false))
    }
}

/// The instance pool: every call still gets a fresh instance (nothing survives a call), but its
/// memories, tables and instance records come from slots reserved once, at start, instead of being
/// mapped and unmapped per call, which was half of a tick's cost (`mmap`, `mprotect`, `munmap` and
/// their TLB shootdowns). A slot given back is reset to the plugin's initial image: with Linux's
/// `PAGEMAP_SCAN` (6.7+) only the pages the call dirtied are copied back, and stay resident, so the
/// next call takes no page fault; without it they are released with `madvise` as before.
///
/// The reservation is virtual address space only (`PROT_NONE` until a call uses it): [`Pool::SIZE`]
/// says how much. Resident memory is what calls touch, as without a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Plugin instances alive at once (the loop's call, a reload's validation and dry run, tests).
    pub instances: u32,
    /// Linear memories alive at once, and the largest each may grow to (the policies' `memory_mib`
    /// range ends at 4096).
    pub memories: u32,
    pub memory_bytes: u64,
    /// Dirty linear-memory bytes reset by copying (kept resident) rather than released, per memory.
    pub keep_resident: usize,
}

impl Pool {
    /// The pool vigil reserves.
    pub const SIZE: Pool = Pool { instances: 32, memories: 32, memory_bytes: 4 << 30, keep_resident: 4 << 20 };
    /// Core instances per plugin instance a component may hold (a Rust plugin has a few; an
    /// interpreter-based one more).
    const CORE_PER_INSTANCE: u32 = 16;

    /// The virtual address space the memory slots reserve, guard regions included.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.memories) * (self.memory_bytes + GUARD_BYTES)
    }
}

/// The guard region after each linear memory (wasmtime's default on 64-bit hosts).
const GUARD_BYTES: u64 = 32 << 20;

/// An engine whose instances come from [`Pool::SIZE`].
fn pooled_engine(config: &mut Config) -> wasmtime::Result<Engine> {
    let size = Pool::SIZE;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(size.instances)
        .total_core_instances(size.instances * Pool::CORE_PER_INSTANCE)
        .max_core_instances_per_component(Pool::CORE_PER_INSTANCE)
        .total_memories(size.memories)
        .max_memories_per_module(2)
        .max_memory_size(size.memory_bytes as usize)
        .total_tables(size.instances * Pool::CORE_PER_INSTANCE)
        .max_tables_per_module(4)
        // Instance records (vmctx): an interpreter's module has many functions.
        .max_core_instance_size(8 << 20)
        .table_keep_resident(16 << 10);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes).linear_memory_keep_resident(size.keep_resident);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(config)
}

/// Compiled plugins unused for this long are removed when a runtime starts.
const CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Remove cached artifacts not used within `max_age` (old plugin versions, other engine builds) and
/// temporary files a crash left behind.
fn prune_cache(dir: &Path, max_age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let now = std::time::SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() > max_age)
            .unwrap_or(false);
        if (name.ends_with(".cwasm") && stale) || name.contains(".tmp") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A compiled plugin, ready to be called any number of times (from any thread).
pub struct Plugin {
    name: Arc<str>,
    path: PathBuf,
    sha256: String,
    size: usize,
    from_cache: bool,
    pre: Pre,
    engine: Engine,
    /// A fresh instance made ahead of the next `decide` ([`Plugin::prepare`]), never called yet.
    spare: std::sync::Mutex<Option<Spare>>,
    /// The store of the last `decide` that used a prepared instance, never called again: dropped (its
    /// pool slot reset) by the next `prepare`, so that the reset is not part of the tick either. A
    /// call without a prepared instance (scenario runs, replays) drops its store at once, holding no
    /// pool slot between calls.
    retired: std::sync::Mutex<Option<Store<Sandbox>>>,
}

/// A fresh store with a fresh instance in it, nothing called yet: what every `decide` starts from.
struct Spare {
    store: Store<Sandbox>,
    output: MemoryOutputPipe,
    instance: Instance,
    /// The limits its store was made with.
    limits: Limits,
}

/// An instance of one interface version.
enum Instance {
    V0_3(bindings::Policy),
    V0_2(bindings_v0_2::Policy),
    V0_1(bindings_v0_1::Policy),
}

/// A pre-instantiated plugin of one interface version.
enum Pre {
    V0_3(bindings::PolicyPre<Sandbox>),
    V0_2(bindings_v0_2::PolicyPre<Sandbox>),
    V0_1(bindings_v0_1::PolicyPre<Sandbox>),
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

impl Plugin {
    /// The file name without `.wasm`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex sha256 of the `.wasm` file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the `.wasm` file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The `vigil:policy` version the plugin was built against: `"0.3.0"`, `"0.2.0"` or `"0.1.0"`.
    pub fn interface_version(&self) -> &'static str {
        match self.pre {
            Pre::V0_3(_) => "0.3.0",
            Pre::V0_2(_) => "0.2.0",
            Pre::V0_1(_) => "0.1.0",
        }
    }

    /// Run the plugin's `validate`: `Ok(Err(message))` when it refuses the parameters.
    pub fn validate(&self, params: &str, limits: &Limits) -> Result<Result<(), String>, Fault> {
        let (mut store, output) = self.store(limits);
        let result = self.instantiate(&mut store).and_then(|instance| match instance {
            Instance::V0_3(i) => i.call_validate(&mut store, params),
            Instance::V0_2(i) => i.call_validate(&mut store, params),
            Instance::V0_1(i) => i.call_validate(&mut store, params),
        });
        self.finish(&store, &output, limits, result)
    }

    /// Run the plugin's `decide` in a fresh instance: the one [`Plugin::prepare`] made, if it did (for
    /// the same limits), else one made now. The decision is returned as the plugin made it; checking
    /// it against the policy is the caller's job (`policy::LoadedPolicy::decide`).
    pub fn decide(&self, params: &str, tick: &model::Tick, limits: &Limits) -> Result<model::Decision, Fault> {
        use super::convert::{v0_1, v0_2, v0_3};
        let spare = self.spare.lock().expect("spare instance lock").take().filter(|spare| spare.limits == *limits);
        let prepared = spare.is_some();
        let (mut store, output, instance) = match spare {
            Some(Spare { mut store, output, instance, .. }) => {
                // The deadline counts from the call, not from when the instance was made.
                store.set_epoch_deadline(deadline_ticks(limits));
                (store, output, Ok(instance))
            }
            None => {
                let (mut store, output) = self.store(limits);
                let instance = self.instantiate(&mut store);
                (store, output, instance)
            }
        };
        let decision = instance.and_then(|instance| match instance {
            Instance::V0_3(i) => i.call_decide(&mut store, params, &v0_3::tick_to_wit(tick)).map(v0_3::decision_from_wit),
            Instance::V0_2(i) => i.call_decide(&mut store, params, &v0_2::tick_to_wit(tick)).map(v0_2::decision_from_wit),
            Instance::V0_1(i) => i.call_decide(&mut store, params, &v0_1::tick_to_wit(tick)).map(v0_1::decision_from_wit),
        });
        let decision = self.finish(&store, &output, limits, decision);
        if prepared {
            // Called the way the loop calls: the next `prepare` drops it, between ticks. (Replacing
            // a store retired before drops that one, if no `prepare` came in between.)
            *self.retired.lock().expect("retired store lock") = Some(store);
        }
        decision
    }

    /// Make the next `decide`'s fresh instance now, between ticks, and reset the last call's pool
    /// slot, so that the tick pays for the call alone. The instance is exactly what `decide` would
    /// make (a new store and a new instance from the pre-instance, in a pool slot reset to the initial
    /// image); it is used once, by the next `decide` with the same limits, and dropped unused
    /// otherwise. Instantiation runs under the same time and memory limits as a call; if it fails,
    /// nothing is kept, and the next `decide` instantiates itself and reports the fault.
    pub fn prepare(&self, limits: &Limits) {
        drop(self.retired.lock().expect("retired store lock").take());
        if self.spare.lock().expect("spare instance lock").is_some() {
            return;
        }
        let (mut store, output) = self.store(limits);
        if let Ok(instance) = self.instantiate(&mut store) {
            *self.spare.lock().expect("spare instance lock") = Some(Spare { store, output, instance, limits: *limits });
        }
    }

    /// A fresh store for one call: an empty sandbox, the memory limit, the time limit from now.
    fn store(&self, limits: &Limits) -> (Store<Sandbox>, MemoryOutputPipe) {
        let output = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let mut store = Store::new(&self.engine, Sandbox::new(self.name.clone(), output.clone(), limits));
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(limits));
        store.epoch_deadline_trap();
        (store, output)
    }

    /// A fresh instance of the plugin in `store`.
    fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<Instance> {
        Ok(match &self.pre {
            Pre::V0_3(pre) => Instance::V0_3(pre.instantiate(&mut *store)?),
            Pre::V0_2(pre) => Instance::V0_2(pre.instantiate(&mut *store)?),
            Pre::V0_1(pre) => Instance::V0_1(pre.instantiate(&mut *store)?),
        })
    }

    /// The call's output logged, its error turned into a [`Fault`].
    fn finish<R>(&self, store: &Store<Sandbox>, output: &MemoryOutputPipe, limits: &Limits, result: wasmtime::Result<R>) -> Result<R, Fault> {
        let said = String::from_utf8_lossy(&output.contents()).trim().to_string();
        if !said.is_empty() {
            tracing::info!(plugin = %self.name, output = %said, "plugin output");
        }
        result.map_err(|error| {
            let fault = if store.data().limiter.hit {
                Fault::Memory { limit_mib: limits.memory_mib }
            } else if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                Fault::Timeout { limit_ms: limits.time_ms }
            } else {
                let trap = match error.downcast_ref::<wasmtime::Trap>() {
                    Some(code) => code.to_string(),
                    None => format!("{error:#}").lines().next().unwrap_or_default().to_string(),
                };
                // A Rust plugin's panic is on its stderr: "… panicked at FILE:L:C:" and the message on
                // the next line. It says more than the trap code.
                let mut lines = said.lines();
                let message = match lines.by_ref().find(|l| l.contains("panicked at")) {
                    Some(at) => {
                        let why = lines.find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
                        let at = at.split("panicked at").nth(1).unwrap_or(at).trim().trim_end_matches(':');
                        format!("panicked at {at}: {why} ({trap})")
                    }
                    None => trap,
                };
                Fault::Trap(message)
            };
            tracing::warn!(plugin = %self.name, fault = fault.kind(), error = %fault, "plugin fault");
            fault
        })
    }
}

/// A call's time limit in epoch ticks. +1: the current epoch period is already partly over.
fn deadline_ticks(limits: &Limits) -> u64 {
    limits.time().as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64 + 1
}

/// What one plugin call's store holds.
struct Sandbox {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    log_lines: u32,
}

impl Sandbox {
    fn new(plugin: Arc<str>, output: MemoryOutputPipe, limits: &Limits) -> Sandbox {
        let wasi = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5e, 0xed]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0x5e, 0xed]))
            .insecure_random_seed(0)
            .build();
        Sandbox {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter { memory_bytes: limits.memory_bytes(), used: 0, hit: false },
            log_lines: 0,
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl bindings::vigil::policy::types::Host for Sandbox {}
impl bindings_v0_2::vigil::policy::types::Host for Sandbox {}
impl bindings_v0_1::vigil::policy::types::Host for Sandbox {}

impl bindings::vigil::policy::host::Host for Sandbox {
    fn log(&mut self, level: bindings::vigil::policy::types::Level, message: String) {
        use bindings::vigil::policy::types::Level as L;
        let level = match level {
            L::Trace => model::Level::Trace,
            L::Debug => model::Level::Debug,
            L::Info => model::Level::Info,
            L::Warn => model::Level::Warn,
            L::Error => model::Level::Error,
        };
        self.log_line(level, message);
    }
}

impl bindings_v0_2::vigil::policy::host::Host for Sandbox {
    fn log(&mut self, level: bindings_v0_2::vigil::policy::types::Level, message: String) {
        use bindings_v0_2::vigil::policy::types::Level as L;
        let level = match level {
            L::Trace => model::Level::Trace,
            L::Debug => model::Level::Debug,
            L::Info => model::Level::Info,
            L::Warn => model::Level::Warn,
            L::Error => model::Level::Error,
        };
        self.log_line(level, message);
    }
}

impl bindings_v0_1::vigil::policy::host::Host for Sandbox {
    fn log(&mut self, level: bindings_v0_1::vigil::policy::types::Level, message: String) {
        use bindings_v0_1::vigil::policy::types::Level as L;
        let level = match level {
            L::Trace => model::Level::Trace,
            L::Debug => model::Level::Debug,
            L::Info => model::Level::Info,
            L::Warn => model::Level::Warn,
            L::Error => model::Level::Error,
        };
        self.log_line(level, message);
    }
}

impl Sandbox {
    fn log_line(&mut self, level: model::Level, message: String) {
        use model::Level as L;
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            if self.log_lines == LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin log lines over {LOG_LINES_PER_CALL} per call dropped");
            }
            return;
        }
        let mut message = message;
        if message.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            L::Trace => tracing::trace!(plugin, "{message}"),
            L::Debug => tracing::debug!(plugin, "{message}"),
            L::Info => tracing::info!(plugin, "{message}"),
            L::Warn => tracing::warn!(plugin, "{message}"),
            L::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// A pollable that is always ready: what a plugin's clock subscriptions return.
struct Ready;

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for Ready {
    async fn ready(&mut self) {}
}

fn ready_pollable(table: &mut ResourceTable) -> wasmtime::Result<wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>> {
    let ready = table.push(Ready)?;
    wasmtime_wasi::p2::subscribe(table, ready)
}

/// Caps linear memory and remembers that it did, so the trap that follows is reported as a memory
/// fault rather than a generic one.
struct Limiter {
    memory_bytes: usize,
    /// Linear memory of every memory of the instance, together: a component may hold several.
    used: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.memory_bytes {
            self.hit = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.memory_bytes);
        }
        self.used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The only time a plugin can read through WASI: the Unix epoch. Time comes in the tick.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("vigil-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Feeds `Hash` output into sha256, to turn wasmtime's compatibility hash into a stable file name part.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_removes_stale_artifacts_and_leftover_temporaries_only() {
        let dir = tempfile::tempdir().unwrap();
        let (old, fresh, tmp) = (dir.path().join("old.cwasm"), dir.path().join("fresh.cwasm"), dir.path().join("x.tmp42"));
        for f in [&old, &fresh, &tmp] {
            std::fs::write(f, b"x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(60 * 24 * 3600);
        std::fs::File::options().append(true).open(&old).unwrap().set_modified(long_ago).unwrap();
        prune_cache(dir.path(), CACHE_MAX_AGE);
        assert!(!old.exists() && !tmp.exists());
        assert!(fresh.exists());
    }
}
