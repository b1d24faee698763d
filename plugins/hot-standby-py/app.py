"""hot-standby, in Python: the port of `plugins/hot-standby` (Rust) onto the Python SDK (`vigil_policy`).

Two servers behind a load balancer, one active, one standby (deployments.md §1, the vendor's "Fault
tolerant Hot Standby" guide, seed `004_…` §5 and §6.3). It makes the same decisions as the Rust
plugin — same modes, same actions in the same order, same reasons, same state — so the scenario
files in `tests/scenarios/hot-standby/` hold for both (issue 15: the scenarios are a language-neutral
contract).

Every tick the plugin first *observes* (updates its own counters in the state: how long each peer
has failed, how long another node has been seen active while this one is, how long nobody has been
active), then applies the first rule that fires, in this order:

1. `off`/`failed`: only an operator `restart-ha` or `restore` brings the node back;
2. an operator request (explicit human intent beats every automatic rule);
3. a command from a peer (`go-standby`, `go-active`);
4. active: LAN lost (§6.3.4) → two actives (§6.3.3) → watchdog and daily restarts (§6.3.4.1);
5. standby: failover (§6.3.1) → rollback of server #1 (§6.3.2) → nobody active (simultaneous start).

With an arbiter (`tick.arbiter`) the rules ask for the active role only when no other node holds the
role key, an active node that sees another holder gives way, and in a group of more than two nodes
only the first node of the `priority` order that can still serve fails over. Without one, nothing of
this applies.

The Rust SDK's `arbiter` and `handover` modules have no Python counterpart yet: the few pieces this
plugin uses (`Priority`, `describe`, `stopped`, `wait_for`, `nobody_active_wait`, …) are written
here, under the same names. `docs/plugins/hot-standby.md` maps every rule to the seed.
"""

from dataclasses import dataclass, field
from typing import Optional

from vigil_policy import (
    Decision,
    InitialSync,
    Level,
    Mode,
    OperatorRequest,
    PeerCommand,
    Policy,
    Role,
    ServiceState,
    export,
    log,
    mode_word,
    role_held_elsewhere,
)
from wit_world.imports import types as wit

U32_MAX = 2**32 - 1

# =====================================================================================================
# Parameters and state
# =====================================================================================================


@dataclass
class Params:
    """The policy file's `[params]` (unknown keys are refused by the SDK)."""

    #: Consecutive failed checks of the peer before failover, and of "other node seen active" before
    #: the two-actives rule; default: the node's `[heartbeat] failures`.
    failures: Optional[int] = None
    #: Consecutive good checks before server #1 takes the role back; default: `[heartbeat] successes`.
    successes: Optional[int] = None
    #: Count the peer's application error (`/app`) as a failed check, not only "it did not answer".
    switch_on_app_error: bool = False
    #: Server #1 (configured primary) takes the active role back by itself once healthy again.
    first_server_auto_active: bool = False
    #: Use the host's VIP destination test (rollback, two-actives conflicts).
    test_vip_destination: bool = False
    #: Consecutive failed LAN probes before an active node steps down; default: `failures`.
    lan_failures: Optional[int] = None
    #: Service names in start order (stopped in reverse); undeclared ones follow in the policy's order.
    start_order: list[str] = field(default_factory=list)
    #: How long a node taking the role from a live peer waits for it to report STANDBY. Default 30 s.
    handover_timeout_ms: Optional[int] = None
    #: With an arbiter: the group's node ids, highest priority first.
    priority: list[str] = field(default_factory=list)


#: Bounds of `handover_timeout_ms`: at least a second, at most an hour.
HANDOVER_TIMEOUT_MIN_MS = 1_000
HANDOVER_TIMEOUT_MAX_MS = 3_600_000

#: Upper bound for every count: beyond this a typo (e.g. 500 instead of 5) is more likely than intent.
MAX_COUNT = 1000

#: How long a taker waits for its peers to confirm STANDBY when the policy does not say.
DEFAULT_HANDOVER_TIMEOUT_MS = 30_000

#: Stop rounds a node stepping down makes before it gives up and keeps the role.
STOP_ATTEMPTS = 3

#: Checks the primary waits in `nobody_active_wait`.
IDLE_CHECKS = 2


@dataclass
class Handover:
    """A hand-over this node started as the taker: it asked its peers to stand by and waits."""

    why: str
    deadline_ms: int

    @staticmethod
    def new(why, now_ms, timeout_ms):
        return Handover(why, now_ms + timeout_ms)

    def seconds_left(self, now_ms):
        return _div_ceil(max(0, self.deadline_ms - now_ms), 1000)

    def expired(self, now_ms):
        return now_ms >= self.deadline_ms


@dataclass
class StepDown:
    """This node gives up the role: its stops are issued, it reports STANDBY once they finished."""

    why: str
    attempts: int = 0


@dataclass
class State:
    """What the plugin remembers between ticks: the Rust `State`, field for field (same JSON)."""

    #: Per peer id: consecutive failed checks, counted only while this node's LAN was up.
    peer_failures: dict = field(default_factory=dict)
    #: Consecutive checks in which another node reported active while this node was active.
    seen_active: int = 0
    #: Consecutive checks in which no node was active.
    idle: int = 0
    #: This node gave the role away; until a peer is seen active it does not grab it back fast.
    yielded: bool = False
    #: The operator switched this node to standby: automatic rollback waits for `restore`/`active`.
    operator_hold: bool = False
    #: Configuration warnings already raised (each is raised once).
    warned: set = field(default_factory=set)
    #: This node takes the role from a live peer and waits for it to report STANDBY.
    handover: Optional[Handover] = None
    #: This node gives the role up: its stops are issued, it reports STANDBY once they finished.
    stepping_down: Optional[StepDown] = None
    #: After an abandoned hand-over, rollback waits until this tick time before asking again.
    rollback_after_ms: Optional[int] = None

    @staticmethod
    def load(d):
        """The state from its JSON dict. Every field defaults (an older state still loads); a field of
        the wrong shape makes the whole state unreadable, as serde does in the Rust plugin."""

        def flag(key):
            v = d.get(key, False)
            if not isinstance(v, bool):
                raise ValueError(f"{key}: expected a boolean, got {v!r}")
            return v

        s = State()
        failures = d.get("peer_failures", {})
        if not isinstance(failures, dict):
            raise ValueError("peer_failures: expected a map")
        s.peer_failures = {str(k): count_of(v, f"peer_failures.{k}") for k, v in failures.items()}
        s.seen_active = count_of(d.get("seen_active", 0), "seen_active")
        s.idle = count_of(d.get("idle", 0), "idle")
        s.yielded = flag("yielded")
        s.operator_hold = flag("operator_hold")
        warned = d.get("warned", [])
        if not isinstance(warned, list) or not all(isinstance(w, str) for w in warned):
            raise ValueError("warned: expected a list of strings")
        s.warned = set(warned)
        h = d.get("handover")
        if h is not None:
            if not isinstance(h, dict) or not isinstance(h.get("why"), str):
                raise ValueError("handover: expected { why, deadline_ms }")
            s.handover = Handover(h["why"], count_of(h.get("deadline_ms"), "handover.deadline_ms"))
        sd = d.get("stepping_down")
        if sd is not None:
            if not isinstance(sd, dict) or not isinstance(sd.get("why"), str):
                raise ValueError("stepping_down: expected { why, attempts }")
            s.stepping_down = StepDown(sd["why"], count_of(sd.get("attempts", 0), "stepping_down.attempts"))
        r = d.get("rollback_after_ms")
        s.rollback_after_ms = None if r is None else count_of(r, "rollback_after_ms")
        return s

    def dump(self):
        """The JSON dict, with the Rust plugin's field names and shapes (a set as a sorted list)."""
        return {
            "peer_failures": dict(sorted(self.peer_failures.items())),
            "seen_active": self.seen_active,
            "idle": self.idle,
            "yielded": self.yielded,
            "operator_hold": self.operator_hold,
            "warned": sorted(self.warned),
            "handover": None if self.handover is None else {"why": self.handover.why, "deadline_ms": self.handover.deadline_ms},
            "stepping_down": None
            if self.stepping_down is None
            else {"why": self.stepping_down.why, "attempts": self.stepping_down.attempts},
            "rollback_after_ms": self.rollback_after_ms,
        }


def count_of(v, path):
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{path}: expected a count, got {v!r}")
    return v


# =====================================================================================================
# Small helpers (Rust: formatting, `TickExt`, `vigil_sdk::handover`, `vigil_sdk::arbiter`)
# =====================================================================================================


def _div_ceil(a, b):
    return -(-a // b)


def debug_str(s):
    """A string quoted as Rust's `{:?}` writes it: `"framework"`."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif not ch.isprintable():
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def check_names(param, names):
    """A parameter listing names: none empty, none twice (ValueError naming the parameter)."""
    seen = set()
    for name in names:
        if not name.strip():
            raise ValueError(f"{param}: expected names, got an empty one")
        if name in seen:
            raise ValueError(f"{param}: {debug_str(name)} is listed twice")
        seen.add(name)


def services_in_order(tick, order):
    """The declared services in start order (listed first, then the rest), and the unknown names."""
    by_name = {}
    for s in tick.services:
        by_name.setdefault(s.name, s)
    ordered, unknown = [], []
    for name in order:
        if name in by_name:
            ordered.append(by_name[name])
        else:
            unknown.append(name)
    ordered.extend(s for s in tick.services if s.name not in order)
    return ordered, unknown


def app_healthy(tick):
    """Every service marked for application checks runs."""
    return all(s.state == ServiceState.RUNNING for s in tick.services if s.app_check)


def reports_active(p):
    return p.reachable and p.report is not None and p.report.mode == Mode.ACTIVE


def confirms_standby(p):
    """The peer proves it serves nothing: it answered this round and reports STANDBY."""
    return p.reachable and p.report is not None and p.report.mode == Mode.STANDBY


def stopped(tick, services):
    """(ok, left): ok when no action of ours is in flight and every service reads stopped; otherwise
    the names not yet stopped (empty while actions are still in flight)."""
    if tick.pending_actions > 0:
        return False, []
    left = [s.name for s in services if s.state != ServiceState.STOPPED]
    return not left, left


def nobody_active_wait(primary, yielded, threshold):
    """Consecutive "nobody active" checks before claiming the role: the primary first, the backup as
    a safety net, a node that just gave the role away later still (no two nodes wait the same)."""
    slow = IDLE_CHECKS + threshold * 2
    gap = max(threshold, 2)
    if primary and not yielded:
        return IDLE_CHECKS
    if not primary and not yielded:
        return slow
    if primary:
        return slow + gap
    return slow + gap * 2


def describe_arbiter(tick):
    """`role key held by node b (revision 7, arbiter reachable)`: the arbiter in a reason."""
    a = tick.arbiter
    if a is None:
        return "no arbiter"
    reach = "arbiter reachable" if a.reachable else "arbiter NOT reachable"
    if a.holder is not None and a.holder == tick.node.id:
        return f"role key held by this node ({a.holder}, lease {a.lease_left_ms} ms left, {reach})"
    if a.holder is not None:
        return f"role key held by node {a.holder} (revision {a.revision}, {reach})"
    return f"role key free ({reach})"


def _out(p):
    """A peer that answers and says it is out of the group (`off`, `failed`): it will not serve."""
    return p.reachable and p.report is not None and p.report.mode in (Mode.OFF, Mode.FAILED)


class Priority:
    """The priority order of a group: the `priority` parameter when given (unlisted nodes after the
    listed ones), else the configured primary first, then the secondaries; ties by id."""

    def __init__(self, order):
        self.order = order

    def _rank(self, id, role):
        if not self.order:
            return (0, 0 if role == Role.PRIMARY else 1, id)
        listed = self.order.index(id) if id in self.order else len(self.order)
        return (listed, 0, id)

    @staticmethod
    def _role_of(p):
        return p.report.configured_role if p.report is not None else None

    def ahead(self, tick, p):
        return self._rank(p.id, self._role_of(p)) < self._rank(tick.node.id, tick.node.configured_role)

    def first_ahead(self, tick, down):
        """The first peer ahead of this node that can still serve (not `down`, not OFF/FAILED)."""
        ahead = [p for p in tick.peers if self.ahead(tick, p) and not down(p) and not _out(p)]
        ahead.sort(key=lambda p: self._rank(p.id, self._role_of(p)))
        return ahead[0] if ahead else None

    def mismatches(self, tick):
        """(listed ids that are no member, members not listed); both empty without the parameter."""
        if not self.order:
            return [], []
        members = [tick.node.id] + [p.id for p in tick.peers]
        return [n for n in self.order if n not in members], [m for m in members if m not in self.order]


# =====================================================================================================
# What one tick looks like to the rules (Rust: Counts, PeerStatus, Lan, Cx)
# =====================================================================================================


@dataclass(frozen=True)
class PeerStatus:
    """One peer as the failover rules see it in this check: `down` (with how), `active`, `idle`
    (standby or hold-off: it does not serve) or `unknown` (answered without a mode)."""

    kind: str
    how: str = ""

    @property
    def down(self):
        return self.kind == "down"


ACTIVE = PeerStatus("active")
IDLE = PeerStatus("idle")
UNKNOWN = PeerStatus("unknown")


def down(how):
    return PeerStatus("down", how)


def classify(peer, app_errors_count):
    """Whether one check of `peer` failed, and how. With `switch_on_app_error` an active peer whose
    application is unhealthy has failed too; a standby peer's `/app` never counts."""
    if not peer.reachable:
        return down("unreachable")
    report = peer.report
    if report is None:
        return UNKNOWN
    if report.mode == Mode.OFF:
        return down("reports OFF")
    if report.mode == Mode.FAILED:
        return down("reports FAILED")
    if report.mode == Mode.ACTIVE:
        return down("application error") if app_errors_count and report.app_healthy is False else ACTIVE
    if report.mode in (Mode.STANDBY, Mode.HOLD_OFF):
        return IDLE
    # STARTING: its daemon just started and has not decided; it may resume ACTIVE. Keep what we do.
    return UNKNOWN


@dataclass(frozen=True)
class Lan:
    """The LAN probe: `not-probed` (assume connected), `not-yet` (no result yet), `up`/`down` with
    the current run length."""

    kind: str
    run: int = 0

    @staticmethod
    def of(tick):
        c = tick.lan
        if c is None:
            return Lan("not-probed")
        if c.consecutive_failures == 0 and c.consecutive_successes == 0:
            return Lan("not-yet")
        if c.ok:
            return Lan("up", c.consecutive_successes)
        return Lan("down", c.consecutive_failures)

    def connected(self):
        return self.kind in ("not-probed", "up")


class Cx:
    """Everything a rule needs, computed once per tick."""

    def __init__(self, params, tick):
        self.params = params
        self.tick = tick
        # A zero in the node configuration would make every rule fire at once; one is the least.
        self.failures = max(1, params.failures if params.failures is not None else tick.heartbeat.failures)
        self.successes = max(1, params.successes if params.successes is not None else tick.heartbeat.successes)
        self.lan_failures = max(1, params.lan_failures if params.lan_failures is not None else self.failures)
        self.lan = Lan.of(tick)
        self.order, self.unknown_services = services_in_order(tick, params.start_order)
        #: (peer, status) in the tick's order.
        self.peers = [(p, classify(p, params.switch_on_app_error)) for p in tick.peers]

    @property
    def me(self):
        return self.tick.node.id

    def is_primary(self):
        return self.tick.node.configured_role == Role.PRIMARY

    def peer_ids(self):
        return [p.id for p, _ in self.peers]

    def priority(self):
        return Priority(self.params.priority)

    def handover_timeout_ms(self):
        t = self.params.handover_timeout_ms
        return t if t is not None else DEFAULT_HANDOVER_TIMEOUT_MS

    def vip_reaches_me(self):
        return self.tick.vip is not None and self.tick.vip.reaches == self.me

    def busy(self):
        """Our own actions (starts, stops, commands) are still queued or running."""
        return self.tick.pending_actions > 0

    def is_backup_against(self, peer):
        """Whether this node gives way to `peer` when both are active: the secondary, or — if both
        claim the same role (a misconfiguration) — the one with the larger id."""
        mine = self.tick.node.configured_role
        theirs = peer.report.configured_role if peer.report is not None else None
        if theirs is not None and theirs == mine:
            return self.me > peer.id
        return mine == Role.SECONDARY


def next_failures(prev, peer, status, lan):
    """The peer's failure streak after this check. Failures seen while this node's own LAN was down
    prove nothing, so the streak never exceeds the LAN's current run of successes; on a fresh state
    the host's own reachability count seeds it."""
    if status.down and not peer.reachable:
        streak = max(prev + 1, peer.consecutive_failures)
    elif status.down:
        streak = prev + 1
    else:
        streak = 0
    if lan.kind == "not-probed":
        return streak
    if lan.kind == "up":
        return min(streak, lan.run)
    return 0


def step_down_after(backup, keeps, n):
    """Consecutive "other node seen active" checks before this active node steps down, or None if it
    keeps the role (§6.3.3). `keeps`: the VIP reaches this node, or (no VIP test) it is the primary."""
    if backup and not keeps:
        return n  # the backup gives way as soon as the conflict is established
    if not backup and not keeps:
        return n * 2  # "if the other server is active two times the number …"
    if backup and keeps:
        return n * 3  # both think the VIP reaches them: still one active node in the end
    return None


# =====================================================================================================
# Building decisions: going active, stepping down, handing over
# =====================================================================================================


def go_active(cx, reason, peers):
    """Switch to active: local services first, then tell `peers` to stand by (§6.3.1, §6.3.2)."""
    d = Decision.to(Mode.ACTIVE, reason).start(*(s.name for s in cx.order))
    for p in peers:
        d.command(p, PeerCommand.GO_STANDBY)
    return d


def step_down(cx, state, reason):
    """Give up the active role break-before-make: stop the services in reverse start order and keep
    reporting ACTIVE until they are stopped (`finish_step_down` then reports STANDBY)."""
    state.handover = None
    ok, _ = stopped(cx.tick, cx.order)
    if ok:
        state.stepping_down = None
        return Decision.to(Mode.STANDBY, f"{reason}: services stopped, STANDBY")
    state.stepping_down = StepDown(reason, 0)
    d = Decision.because(f"{reason}: stopping the services first, STANDBY once they are stopped")
    return d.stop(*(s.name for s in reversed(cx.order)))


def finish_step_down(cx, state, step):
    """A node stepping down: STANDBY once its stops finished and every service reads stopped; a
    service that would not stop is stopped again, and after STOP_ATTEMPTS rounds the node gives up
    and keeps the role with its services started again (one active node, serving)."""
    ok, left = stopped(cx.tick, cx.order)
    if ok:
        state.stepping_down = None
        return Decision.to(Mode.STANDBY, f"{step.why}: services stopped, this node ({cx.me}) now reports STANDBY")
    if not left:
        state.stepping_down = StepDown(step.why, step.attempts)
        return Decision.because(f"{step.why}: waiting for the stop actions before reporting STANDBY")
    attempts = step.attempts + 1
    if attempts >= STOP_ATTEMPTS:
        state.stepping_down = None
        text = (
            f"could not stop {', '.join(left)} after {attempts} attempts: hand-over abandoned, "
            f"this node ({cx.me}) stays ACTIVE"
        )
        return Decision.because(text).alarm(Level.ERROR, text).start(*(s.name for s in cx.order))
    d = Decision.because(
        f"{step.why}: {', '.join(left)} not stopped, stopping again (attempt {attempts + 1}/{STOP_ATTEMPTS}) "
        "before reporting STANDBY"
    )
    d.stop(*reversed(left))
    state.stepping_down = StepDown(step.why, attempts)
    return d


def released(cx, state, peer):
    """This node may take the role without waiting for `peer`: it reports STANDBY, or it has failed
    the full failure threshold."""
    return confirms_standby(peer) or failed_for(state, peer) >= cx.failures


def take_role(cx, state, why):
    """Take the role from live peers break-before-make: when every peer already serves nothing,
    switch now; otherwise command them to stand by and stay STANDBY until they confirm."""
    state.stepping_down = None
    peers = cx.peer_ids()
    waiting = [p for p, _ in cx.peers if not released(cx, state, p)]
    timeout = cx.handover_timeout_ms()
    if not waiting:
        if role_held_elsewhere(cx.tick) is not None:
            # Every peer has let go but the key is still another node's: wait for it, same deadline.
            state.handover = Handover.new(why, cx.tick.now_ms, timeout)
            d = Decision.because(
                f"{why}: {describe_arbiter(cx.tick)}: this node ({cx.me}) stays STANDBY until it is released"
            )
            if cx.tick.node.mode != Mode.STANDBY:
                d.mode = Mode.STANDBY
            return stop_leftovers(cx, d)
        state.handover = None
        return go_active(cx, f"{why}: switch this node ({cx.me}) to ACTIVE, peers to STANDBY", peers)
    state.handover = Handover.new(why, cx.tick.now_ms, timeout)
    names = [p.id for p in waiting]
    d = Decision.because(
        f"{why}: break-before-make: asking {', '.join(f'peer {n}' for n in names)} to stand by; "
        f"this node ({cx.me}) stays STANDBY until {'it' if len(names) == 1 else 'each'} reports STANDBY "
        f"with its services stopped (at most {_div_ceil(timeout, 1000)} s)"
    )
    for n in names:
        d.command(n, PeerCommand.GO_STANDBY)
    # The wait happens in standby (from off or failed too: a restore there means "take the role").
    if cx.tick.node.mode != Mode.STANDBY:
        d.mode = Mode.STANDBY
    return stop_leftovers(cx, d)


def wait_for(h, tick, waiting, timeout_ms, me, peers_now):
    """A hand-over still waiting for `waiting`: (decision, None) while in time — go-standby sent
    again to a peer whose last one failed — or (None, why) once past its deadline."""
    names = ", ".join(f"peer {p.id}" for p in waiting)
    if h.expired(tick.now_ms):
        return None, (
            f"hand-over abandoned ({h.why}): {names} did not report STANDBY within {_div_ceil(timeout_ms, 1000)} s; "
            f"this node ({me}) stays STANDBY"
        )
    d = Decision.because(
        f"hand-over ({h.why}): waiting for {names} to report STANDBY with its services stopped, "
        f"{h.seconds_left(tick.now_ms)} s left; {peers_now}"
    )
    for p in waiting:
        lost = any(
            not r.ok
            and isinstance(r.action, wit.Action_Command)
            and r.action.value.peer == p.id
            and r.action.value.command == PeerCommand.GO_STANDBY
            for r in tick.results
        )
        if lost:
            d.command(p.id, PeerCommand.GO_STANDBY).and_because(f"go-standby to peer {p.id} failed, sent again")
    return d, None


def handover_progress(cx, state):
    """A hand-over under way: switch once every peer is released, give up at the deadline."""
    h = state.handover
    if h is None:
        return None
    now = cx.tick.now_ms
    waiting = [p for p, _ in cx.peers if not released(cx, state, p)]
    if not waiting and role_held_elsewhere(cx.tick) is not None:
        if not h.expired(now):
            text = f"{h.why}: peers released, {describe_arbiter(cx.tick)}: waiting for it ({h.seconds_left(now)} s left)"
            return stop_leftovers(cx, Decision.because(text))
        state.handover = None
        state.rollback_after_ms = now + cx.handover_timeout_ms()
        text = (
            f"{h.why}: {describe_arbiter(cx.tick)}: not released in time, hand-over abandoned; "
            f"this node ({cx.me}) stays STANDBY"
        )
        return stop_leftovers(cx, Decision.because(text).alarm(Level.WARN, text))
    if not waiting:
        state.handover = None
        how = ", ".join(
            f"peer {p.id} reports STANDBY with its services stopped"
            if confirms_standby(p)
            else f"peer {p.id} failed {cx.failures} checks"
            for p, _ in cx.peers
        )
        return go_active(cx, f"{h.why}: {how}: switch this node ({cx.me}) to ACTIVE", [])
    d, abandoned = wait_for(h, cx.tick, waiting, cx.handover_timeout_ms(), cx.me, peer_modes(cx))
    if d is not None:
        return stop_leftovers(cx, d)
    state.handover = None
    state.rollback_after_ms = now + cx.handover_timeout_ms()
    return stop_leftovers(cx, Decision.because(abandoned).alarm(Level.WARN, abandoned))


def stop_leftovers(cx, d):
    """A node that is not active must not run the services: stop any left running (e.g. by a daemon
    restart). Not while our own actions are in flight, whose effect the status does not show yet."""
    if cx.busy():
        return d
    running = [s.name for s in reversed(cx.order) if s.state == ServiceState.RUNNING]
    if not running:
        return d
    return d.and_because(f"stopping {', '.join(running)} left running while not active").stop(*running)


# =====================================================================================================
# Reasons
# =====================================================================================================

_REQUEST_WORDS = {
    OperatorRequest.STANDBY: "standby",
    OperatorRequest.ACTIVE: "active",
    OperatorRequest.RESTORE: "restore",
    OperatorRequest.RESTART_HA: "restart-ha",
    OperatorRequest.PLANNED_REBOOT: "planned-reboot",
}


def count(what, n, limit, unit):
    """`peer a failed 3/5 checks`, or past the limit `peer a failed 7 checks (limit 5)`."""
    return f"{what} {n}/{limit} {unit}" if n <= limit else f"{what} {n} {unit} (limit {limit})"


def failure_counts(cx, state):
    """`peer a failed 3/5 checks (unreachable), peer c failed …`"""
    return ", ".join(
        count(f"peer {p.id} failed", failed_for(state, p), cx.failures, f"checks ({s.how if s.down else 'ok now'})")
        for p, s in cx.peers
    )


def peer_modes(cx):
    """`peer a ACTIVE, peer c STANDBY`"""

    def word(p, s):
        if s.down:
            return f"peer {p.id} down ({s.how})"
        if s == ACTIVE:
            return f"peer {p.id} ACTIVE"
        if s == IDLE:
            return f"peer {p.id} STANDBY"
        return f"peer {p.id} answers without a mode"

    return ", ".join(word(p, s) for p, s in cx.peers)


# =====================================================================================================
# Rules: off/failed, operator requests, peer commands
# =====================================================================================================


def out_of_group(cx, state):
    """`off`/`failed`: out of the group until the operator says otherwise. Services stay stopped."""
    mode = cx.tick.node.mode
    state.handover = None
    state.stepping_down = None
    request = cx.tick.operator
    if request == OperatorRequest.RESTART_HA:
        return Decision.to(
            Mode.STANDBY, f"operator restart-ha: this node ({cx.me}) leaves {mode_word(mode)} and rejoins in STANDBY"
        )
    if request == OperatorRequest.RESTORE:
        return restore(cx, state)
    if request is not None:
        text = f"operator {_REQUEST_WORDS[request]} ignored: this node is {mode_word(mode)}; use restart-ha or restore first"
        return Decision.because(text).alarm(Level.WARN, text)
    return stop_leftovers(cx, Decision.because(f"{mode_word(mode)}: waiting for operator restart-ha or restore"))


def operator(cx, request, state):
    """The operator's requests (delivered once); None lets the other rules decide."""
    if request == OperatorRequest.ACTIVE:
        return take_over_by_operator(cx, state, "operator switch active")
    if request == OperatorRequest.STANDBY:
        return release_by_operator(cx, state, "operator switch standby")
    if request == OperatorRequest.RESTORE:
        return restore(cx, state)
    if state.stepping_down is not None:
        # A step-down under way goes on: restart-ha or planned-reboot changes nothing.
        return None
    if request == OperatorRequest.RESTART_HA:
        return Decision.because(
            f"operator restart-ha: nothing to do, this node is already {mode_word(cx.tick.node.mode)}"
        )
    # Not part of this deployment: a planned reboot costs one ordinary failover.
    return Decision.because("operator planned-reboot: not used by hot-standby")


def restore(cx, state):
    """`restore`: back to the configured role — server #1 active, server #2 standby."""
    if cx.is_primary():
        return take_over_by_operator(cx, state, "operator restore (configured role primary)")
    return release_by_operator(cx, state, "operator restore (configured role secondary)")


def take_over_by_operator(cx, state, why):
    state.operator_hold = False
    if cx.tick.sync.initial == InitialSync.PENDING:
        text = f"{why} refused: the initial configuration sync from the active peer is still pending"
        return Decision.because(text).alarm(Level.WARN, text)
    if cx.tick.node.mode == Mode.ACTIVE:
        # Already active (or stepping down, which this cancels): make sure the services run and the
        # peers know (covers a two-actives state).
        state.stepping_down = None
        d = go_active(cx, f"{why}: this node ({cx.me}) is already ACTIVE; telling peers to stand by", cx.peer_ids())
        d.mode = None
        return d
    return take_role(cx, state, why)


def release_by_operator(cx, state, why):
    state.operator_hold = True
    state.yielded = True
    state.handover = None
    if cx.tick.node.mode == Mode.ACTIVE:
        d = step_down(cx, state, f"{why}: switch this node ({cx.me}) to STANDBY, peers to ACTIVE")
    else:
        d = Decision.because(f"{why}: this node ({cx.me}) is already STANDBY; asking peers to take the role")
    for p in cx.peer_ids():
        d.command(p, PeerCommand.GO_ACTIVE)
    return d


def peer_command(cx, state):
    """Commands from peers: the last `go-standby`/`go-active` of the tick counts."""
    cmd = next(
        (c for c in reversed(cx.tick.commands) if c.command in (PeerCommand.GO_STANDBY, PeerCommand.GO_ACTIVE)), None
    )
    if cmd is None:
        return None
    sender = cmd.from_
    active = cx.tick.node.mode == Mode.ACTIVE
    if cmd.command == PeerCommand.GO_STANDBY and active:
        state.yielded = True
        return step_down(
            cx, state, f"peer {sender} takes the role and commands go-standby: switch this node ({cx.me}) to STANDBY"
        )
    if cmd.command == PeerCommand.GO_ACTIVE and not active:
        if cx.tick.sync.initial == InitialSync.PENDING:
            return Decision.because(f"peer {sender} commands go-active: refused, initial configuration sync still pending")
        if not cx.lan.connected():
            # Taking a role nobody can reach would only bounce it back and forth.
            return Decision.because(f"peer {sender} commands go-active: refused, this node's LAN probe is failing")
        return take_role(cx, state, f"peer {sender} hands over and commands go-active")
    return None


# =====================================================================================================
# Rules of an active node
# =====================================================================================================


def active_rules(cx, state):
    a = cx.tick.arbiter
    holder = role_held_elsewhere(cx.tick) if a is not None and a.reachable else None
    if holder is not None:
        # The arbiter granted the role to another node: never fight it.
        state.yielded = True
        why = f"{describe_arbiter(cx.tick)}: node {holder} has the role: switch this node ({cx.me}) to STANDBY"
        return step_down(cx, state, why)
    if cx.lan.kind == "down" and cx.lan.run >= cx.lan_failures:
        # §6.3.4. Tell the peers to take over: they may still hear us on another link, and would
        # otherwise wait for the slow "nobody active" path.
        state.yielded = True
        d = step_down(
            cx,
            state,
            f"LAN check failed {cx.lan.run}/{cx.lan_failures} checks: switch this node ({cx.me}) to STANDBY, "
            "services nobody can reach are stopped",
        )
        for p in cx.peer_ids():
            d.command(p, PeerCommand.GO_ACTIVE)
        return d
    d = Decision.because(f"ACTIVE; {peer_modes(cx)}")
    if cx.lan.kind == "down":
        d.and_because(f"LAN check failed {cx.lan.run}/{cx.lan_failures} checks")
    d, stepped = two_actives(cx, state, d)
    if stepped:
        return d
    return watchdog(cx, d)


def two_actives(cx, state, d):
    """§6.3.3, counted in `state.seen_active`: (the step-down, True) when this node gives way, else
    (`d` with what the conflict adds to it, False)."""
    seen = state.seen_active
    other = next((p for p, _ in cx.peers if reports_active(p)), None)
    if other is None or seen == 0:
        return d, False
    n = cx.failures
    backup = cx.is_backup_against(other)
    keeps = cx.vip_reaches_me() if cx.params.test_vip_destination else not backup
    who = "backup" if backup else "primary"
    a = cx.tick.arbiter
    if a is not None and a.reachable and a.held:
        # The arbiter settles it: the holder keeps the role (the other sees the holder, gives way).
        backup, keeps, who = False, True, "this node holds the role key"
    elif cx.params.switch_on_app_error:
        # The node whose application is broken gives way, whatever its role: otherwise the healthy
        # one would step down and fail over again, round and round.
        mine = app_healthy(cx.tick)
        theirs = not (other.report is not None and other.report.app_healthy is False)
        if mine and not theirs:
            backup, keeps, who = False, True, "peer has an application error"
        elif not mine and theirs:
            backup, keeps, who = True, False, "this node has an application error"
    if not cx.params.test_vip_destination:
        vip = ""
    else:
        vip = ", VIP reaches this node" if cx.vip_reaches_me() else ", VIP does not reach this node"
    seen_text = f"peer {other.id} seen ACTIVE {seen}/{n} checks while this node is ACTIVE ({who}{vip})"
    limit = step_down_after(backup, keeps, n)
    if limit is not None and seen >= limit:
        state.yielded = True
        why = "this node gives way" if limit == n else f"still two actives after {limit} checks, giving way"
        return step_down(cx, state, f"two actives: {seen_text}: {why}: switch this node ({cx.me}) to STANDBY"), True
    if keeps and seen >= n and seen % n == 0:
        d.and_because(f"two actives: {seen_text}: this node keeps the role, commanding peer {other.id} to STANDBY")
        return d.command(other.id, PeerCommand.GO_STANDBY), False
    return d.and_because(f"possible two actives: {seen_text}"), False


def watchdog(cx, d):
    """§6.3.4.1: a watchdog service that stopped is restarted; a due daily restart is made. The host
    applies its own backoff and cap and refuses a restart beyond them (a failed result)."""
    if cx.busy():
        return d
    for s in cx.order:
        if s.watchdog and s.state == ServiceState.STOPPED:
            refused = any(
                not r.ok and isinstance(r.action, wit.Action_Restart) and r.action.value == s.name
                for r in cx.tick.results
            )
            note = " (the previous restart failed)" if refused else ""
            d.restart(s.name).and_because(f"watchdog: {s.name} stopped, restarting{note}")
        elif s.restart_due:
            d.restart(s.name).and_because(f"daily restart of {s.name}")
    return d


# =====================================================================================================
# Rules of a node that is not active (standby or hold-off)
# =====================================================================================================


def standby_rules(cx, state):
    tick = cx.tick
    if not cx.peers:
        return stop_leftovers(cx, Decision.because("STANDBY: no peer configured, nothing to take over from"))
    if tick.node.tick_count == 0:
        # A fresh daemon has at most one round of evidence: never claim the role on it.
        return stop_leftovers(cx, Decision.because(f"STANDBY: first tick, observing; {peer_modes(cx)}"))
    if tick.sync.initial == InitialSync.PENDING:
        return stop_leftovers(cx, Decision.because("STANDBY: initial configuration sync from the active peer pending"))
    if not cx.lan.connected():
        return stop_leftovers(cx, Decision.because(f"STANDBY: LAN check failing, no failover; {peer_modes(cx)}"))
    peers = cx.peer_ids()
    d = granted(cx, peers)
    if d is not None:
        return d
    n = cx.failures
    failing = any(failed_for(state, p) > 0 for p, _ in cx.peers)
    all_failed = all(failed_for(state, p) >= n for p, _ in cx.peers)
    # With an arbiter, a group of more than two: the active node lost, the others standing by.
    group_failed = (
        tick.arbiter is not None
        and any(failed_for(state, p) >= n for p, _ in cx.peers)
        and all(failed_for(state, p) >= n or s == IDLE for p, s in cx.peers)
    )
    if all_failed or group_failed:
        why = held_back(cx, state)
        if why is not None:
            return stop_leftovers(cx, Decision.because(f"{failure_counts(cx, state)}: {why}: no failover, STANDBY"))
        d = go_active(
            cx,
            f"{failure_counts(cx, state)}: maximum heartbeat fails, switch this node ({cx.me}) to ACTIVE, peers to STANDBY",
            peers,
        )
        return with_sync_note(cx, d)
    for rule in (handover_progress, rollback):
        d = rule(cx, state)
        if d is not None:
            return d
    d = nobody_active(cx, state, peers)
    if d is not None:
        return d
    status = failure_counts(cx, state) if failing else f"STANDBY; {peer_modes(cx)}"
    if tick.arbiter is not None:
        status = f"{status}; {describe_arbiter(tick)}"
    return stop_leftovers(cx, rollback_progress(cx, state, Decision.because(status)))


def granted(cx, peers):
    """With an arbiter: a standby holding the role key asked for the role earlier and the host's
    fencing held it back until the key was its own: ask again, unless a peer serves."""
    a = cx.tick.arbiter
    if a is None or not a.held:
        return None
    if cx.tick.node.mode != Mode.STANDBY or any(reports_active(p) for p, _ in cx.peers):
        return None
    why = (
        f"the arbiter granted this node the role key ({a.lease_left_ms} ms of lease left): "
        f"switch this node ({cx.me}) to ACTIVE"
    )
    return go_active(cx, why, peers)


def failed_for(state, peer):
    """Consecutive failed checks of `peer`, as this plugin counts them."""
    return state.peer_failures.get(peer.id, 0)


def held_back(cx, state):
    """With an arbiter: why this node must not ask for the role by itself — another node holds the
    key, or a node before it in the priority order can still serve. None without an arbiter."""
    if cx.tick.arbiter is None:
        return None
    holder = role_held_elsewhere(cx.tick)
    if holder is not None:
        return f"{describe_arbiter(cx.tick)}: waiting for node {holder} to release it"
    first = cx.priority().first_ahead(cx.tick, lambda p: failed_for(state, p) >= cx.failures)
    if first is None:
        return None
    return f"peer {first.id} comes first in the priority order and can serve"


def with_sync_note(cx, d):
    if cx.tick.sync.initial == InitialSync.FAILED:
        return d.and_because("initial sync failed: running on the local configuration")
    return d


def healthy_for(cx):
    """How many consecutive checks this node has been healthy, as rollback needs it (§6.3.2): the
    LAN probe, every local monitor, and the peers' reachability all good that long."""
    lan = {"not-probed": U32_MAX, "up": cx.lan.run}.get(cx.lan.kind, 0)
    monitors = min((m.consecutive_successes for m in cx.tick.monitors), default=U32_MAX)
    peers = min((p.consecutive_successes for p, _ in cx.peers), default=U32_MAX)
    return min(lan, monitors, peers)


def vip_self_for(cx):
    return cx.tick.vip.consecutive_self if cx.tick.vip is not None and cx.vip_reaches_me() else 0


def rollback(cx, state):
    """§6.3.2: server #1, with `first_server_auto_active`, takes the role back once healthy — from a
    live server #2, break-before-make (`take_role`)."""
    if not cx.is_primary() or not cx.params.first_server_auto_active or state.operator_hold:
        return None
    if state.rollback_after_ms is not None and cx.tick.now_ms < state.rollback_after_ms:
        return None
    s = cx.successes
    if healthy_for(cx) < s:
        return None
    vip = ""
    if cx.params.test_vip_destination:
        seen = vip_self_for(cx)
        if seen < s:
            return None
        vip = f", VIP reaches this node {min(seen, s)}/{s} tests"
    return with_sync_note(cx, take_role(cx, state, f"first server auto-active: local health good {s}/{s} checks{vip}"))


def rollback_progress(cx, state, d):
    """Adds the rollback's progress to a quiet standby decision of server #1."""
    if not cx.is_primary() or not cx.params.first_server_auto_active:
        return d
    if state.operator_hold:
        return d.and_because("rollback held by the operator's switchover (restore hands the role back)")
    s = cx.successes
    text = f"rollback: local health good {min(healthy_for(cx), s)}/{s} checks"
    if cx.params.test_vip_destination:
        text += f", VIP reaches this node {min(vip_self_for(cx), s)}/{s} tests"
    return d.and_because(text)


def nobody_active(cx, state, peers):
    """Nobody is active (both servers restarted together, or a hand-over did not complete): the
    primary — with an arbiter, the first node of the priority order that can serve — claims first."""
    held = held_back(cx, state)
    leads = held is None if cx.tick.arbiter is not None else cx.is_primary()
    fast = leads and not state.yielded
    needed = nobody_active_wait(leads, state.yielded, cx.failures)
    if state.idle < needed:
        return None
    if held is not None:
        return stop_leftovers(
            cx, Decision.because(f"no node ACTIVE for {needed}/{needed} checks ({peer_modes(cx)}): {held}")
        )
    if not fast:
        who = "the primary did not take the role"
    elif cx.tick.arbiter is not None:
        who = "this node comes first in the priority order"
    else:
        who = "the primary runs"
    return go_active(
        cx,
        f"no node ACTIVE for {needed}/{needed} checks ({peer_modes(cx)}; {who}): switch this node ({cx.me}) to ACTIVE",
        peers,
    )


# =====================================================================================================
# Observation, warnings, and the policy itself
# =====================================================================================================


def observe(cx, state):
    """Update the counters in `state` from this tick's observations."""
    state.peer_failures = {
        p.id: next_failures(state.peer_failures.get(p.id, 0), p, s, cx.lan) for p, s in cx.peers
    }
    active = cx.tick.node.mode == Mode.ACTIVE
    other_active = any(reports_active(p) for p, _ in cx.peers)
    # While our own switch is being carried out, the peer's "active" is expected, not a conflict.
    state.seen_active = state.seen_active + 1 if active and other_active and cx.lan.connected() and not cx.busy() else 0
    all_idle = bool(cx.peers) and all(s == IDLE for _, s in cx.peers)
    state.idle = state.idle + 1 if not active and all_idle and cx.lan.connected() else 0
    if other_active:
        state.yielded = False


def warnings(cx, state, d):
    """Configuration problems only the tick can reveal; each raised once as an alarm."""

    def raise_once(key, text):
        if key not in state.warned:
            state.warned.add(key)
            d.alarm(Level.WARN, text)

    # The dry run of `vigil policy check` has no services: there is nothing to compare with.
    if cx.tick.services:
        for name in cx.unknown_services:
            raise_once(
                f"start_order:{name}",
                f"params.start_order names {debug_str(name)}, which the policy does not declare under [services]; ignored",
            )
    unknown, missing = cx.priority().mismatches(cx.tick)
    for name in unknown:
        raise_once(f"priority:{name}", f"params.priority names {debug_str(name)}, which is neither this node nor a peer; ignored")
    for name in missing:
        raise_once(
            f"priority-missing:{name}",
            f"params.priority does not list node {debug_str(name)}: it comes after the listed nodes",
        )
    if cx.params.test_vip_destination and cx.tick.vip is None and cx.peers:
        raise_once(
            "vip",
            "params.test_vip_destination is set but the node does not test the VIP ([vip] in the node configuration): "
            "rollback waits forever and a primary loses two-actives conflicts",
        )
    return d


class HotStandby(Policy):
    Params = Params

    def validate(self, p):
        for name in ("failures", "successes", "lan_failures"):
            v = getattr(p, name)
            if v is not None and not 1 <= v <= MAX_COUNT:
                raise ValueError(f"{name}: expected a count from 1 to {MAX_COUNT}, got {v}")
        ms = p.handover_timeout_ms
        if ms is not None and not HANDOVER_TIMEOUT_MIN_MS <= ms <= HANDOVER_TIMEOUT_MAX_MS:
            raise ValueError(
                f"handover_timeout_ms: expected {HANDOVER_TIMEOUT_MIN_MS} to {HANDOVER_TIMEOUT_MAX_MS} milliseconds, got {ms}"
            )
        check_names("start_order", p.start_order)
        check_names("priority", p.priority)

    def decide(self, params, tick, saved):
        try:
            state = State.load(saved)
        except ValueError as e:
            log(Level.WARN, f"previous state unreadable ({e}); starting from defaults")
            state = State()
        d = self.decide_state(params, tick, state)
        saved.clear()
        saved.update(state.dump())
        return d

    def decide_state(self, params, tick, state):
        cx = Cx(params, tick)
        observe(cx, state)
        if tick.node.restart is not None:
            # A hand-over the previous daemon started, and its back-off, belong to a world that may
            # have moved on while it was down: the rules look again from here.
            state.handover = None
            state.rollback_after_ms = None

        before = tick.node.mode
        if before != Mode.ACTIVE:
            # A step-down ends in standby; one found in another mode is a leftover.
            state.stepping_down = None
        d = None
        if before in (Mode.OFF, Mode.FAILED):
            d = out_of_group(cx, state)
        if d is None and tick.operator is not None:
            d = operator(cx, tick.operator, state)
        if d is None and state.stepping_down is not None:
            # Peer commands wait too: the step-down already does what either would ask.
            d = finish_step_down(cx, state, state.stepping_down)
        if d is None:
            d = peer_command(cx, state)
        if d is None:
            d = active_rules(cx, state) if before == Mode.ACTIVE else standby_rules(cx, state)

        # Counters describe the mode they were counted in; a switch starts them afresh.
        if d.mode == Mode.ACTIVE and before != Mode.ACTIVE:
            state.idle = 0
            state.yielded = False
            state.operator_hold = False
            state.handover = None
            state.rollback_after_ms = None
        elif d.mode is not None and d.mode != Mode.ACTIVE and before == Mode.ACTIVE:
            state.seen_active = 0
        return warnings(cx, state, d)


WitWorld = export(HotStandby)
