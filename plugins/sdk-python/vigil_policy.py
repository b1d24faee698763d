"""vigil_policy: write a vigil policy plugin in Python.

The Python counterpart of the Rust `vigil-sdk`. A policy is a class with typed parameters, a state
kept as a dict, and a pure `decide`; `export` turns it into the `WitWorld` class componentize-py
builds into a component of the `vigil:policy` world:

    from dataclasses import dataclass, field
    from vigil_policy import Policy, Decision, Mode, export

    @dataclass
    class Params:
        failures: int = 3                 # a missing key takes the default
        services: list[str] = field(default_factory=list)

    class MyPolicy(Policy):
        Params = Params

        def decide(self, params, tick, state):
            peer = tick.peers[0] if tick.peers else None
            if tick.node.mode == Mode.STANDBY and peer and peer.consecutive_failures >= params.failures:
                state["took_over"] = True
                return Decision.to(Mode.ACTIVE, "peer lost").start(*params.services)
            return Decision.keep()

    WitWorld = export(MyPolicy)

Parameters arrive as the policy file's `[params]` table. They are read into the `Params` dataclass:
an unknown key, a missing key without a default, or a value of the wrong type is refused at load time
with a message naming the parameter (`params.failures: expected an integer, got "3"`), exactly as the
Rust SDK does. Extra checks go in `validate` (raise `ValueError("params.x: ...")`).

State is a dict serialized as JSON between ticks, so scenario files can check it
(`state = { took_over = true }`) the same way for a Rust or a Python plugin. State that does not
parse (written by an older version of the plugin) is replaced by `{}` and logged.

The first tick of a starting node is presented as the Rust SDK presents it: the mode the node had
before a restart of the daemon (or standby on a fresh start), never `starting`.

The component has no WASI capabilities (no files, network, clock or environment): everything a
policy knows is in the tick. Its only import is `log`.
"""

import dataclasses
import json
import typing

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports import types as wit

# The interface types, under the names the Rust SDK uses.
Mode = wit.Mode
Role = wit.Role
Level = wit.Level
ServiceState = wit.ServiceState
InitialSync = wit.InitialSync
OperatorRequest = wit.OperatorRequest
PeerCommand = wit.PeerCommand
Tick = wit.Tick
Remote = wit.Remote

INTERFACE_VERSION = "0.3.0"

_WORDS = {
    Mode.ACTIVE: "ACTIVE",
    Mode.STANDBY: "STANDBY",
    Mode.OFF: "OFF",
    Mode.FAILED: "FAILED",
    Mode.HOLD_OFF: "HOLD-OFF",
    Mode.STARTING: "STARTING",
}


def mode_word(mode):
    """The word `/role` and operator logs use for a mode: ACTIVE, STANDBY, OFF, FAILED, HOLD-OFF, STARTING."""
    return _WORDS[mode]


def log(level, message):
    """Write a line to the host's log, tagged with the plugin's name."""
    host.log(level, message)


class Decision:
    """What a tick decides: a mode (None keeps the current one), actions in order, and a reason.

    Built as one expression: `Decision.to(Mode.ACTIVE, "peer lost").start("app").command(None, PeerCommand.GO_STANDBY)`.
    """

    def __init__(self, mode=None, reason=""):
        self.mode = mode
        self.reason = reason
        self.actions = []

    @staticmethod
    def keep(reason=""):
        """Keep the current mode."""
        return Decision(None, reason)

    @staticmethod
    def to(mode, reason):
        """Switch to `mode` (or stay in it), saying why."""
        return Decision(mode, reason)

    @staticmethod
    def because(reason):
        """Keep the current mode, saying why."""
        return Decision(None, reason)

    def start(self, *services):
        self.actions.extend(wit.Action_Start(s) for s in services)
        return self

    def stop(self, *services):
        self.actions.extend(wit.Action_Stop(s) for s in services)
        return self

    def restart(self, *services):
        self.actions.extend(wit.Action_Restart(s) for s in services)
        return self

    def hook(self, name, *args):
        self.actions.append(wit.Action_Hook(wit.HookCall(name=name, args=[str(a) for a in args])))
        return self

    def claim_vip(self):
        self.actions.append(wit.Action_ClaimVip())
        return self

    def release_vip(self):
        self.actions.append(wit.Action_ReleaseVip())
        return self

    def route(self, target):
        self.actions.append(wit.Action_Route(target))
        return self

    def command(self, peer, command):
        """Send `command` to `peer` (None: every peer)."""
        self.actions.append(wit.Action_Command(wit.PeerMessage(peer=peer, command=command)))
        return self

    def sync(self):
        self.actions.append(wit.Action_Sync())
        return self

    def alarm(self, severity, message):
        self.actions.append(wit.Action_Alarm(wit.Alarm(severity=severity, message=message)))
        return self

    def and_because(self, more):
        """Add to the reason, after a `; `."""
        self.reason = f"{self.reason}; {more}" if self.reason else more
        return self


class Policy:
    """A policy: subclass it, set `Params` to a dataclass, and implement `decide`."""

    #: The `[params]` table's shape: a dataclass, or None to take the table as a plain dict.
    Params = None

    def validate(self, params):
        """Extra checks beyond the types: raise ValueError("params.NAME: ...") to refuse the policy."""

    def decide(self, params, tick, state):
        """Decide one tick. `state` is the dict the previous tick left (empty on the first); change it in place."""
        raise NotImplementedError


# ---- helpers on the tick, as the Rust SDK's TickExt -------------------------------------------------

def peer(tick, id):
    """The peer named `id`, or None."""
    return next((p for p in tick.peers if p.id == id), None)


def service(tick, name):
    """The service named `name`, or None."""
    return next((s for s in tick.services if s.name == name), None)


def peers_in(tick, mode):
    """The reachable peers reporting `mode`."""
    return [p for p in tick.peers if p.reachable and p.report is not None and p.report.mode == mode]


def role_holder(tick):
    """Who holds the arbiter's role key, or None (no arbiter, or nobody)."""
    return tick.arbiter.holder if tick.arbiter is not None else None


def role_held_elsewhere(tick):
    """The node holding the role key when it is not this one."""
    holder = role_holder(tick)
    return holder if holder is not None and holder != tick.node.id else None


def holds_role(tick):
    """Whether this node holds the role key; without an arbiter, True."""
    return tick.arbiter is None or tick.arbiter.held


# ---- parameters -------------------------------------------------------------------------------------

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}


def _describe(value):
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__


def _convert(path, kind, value):
    """`value` (from JSON) as `kind` (a type annotation), or ValueError naming `path`."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is typing.Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(path, inner[0], value)
        return value
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {_describe(value)}")
        item = args[0] if args else typing.Any
        return [_convert(f"{path}[{i}]", item, v) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a table, got {_describe(value)}")
        item = args[1] if len(args) == 2 else typing.Any
        return {k: _convert(f"{path}.{k}", item, v) for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return _read_dataclass(path, kind, value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected a boolean, got {_describe(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {_describe(value)}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string, got {_describe(value)}")
        return value
    return value


def _read_dataclass(path, cls, table):
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a table, got {_describe(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"{path}.{key}: unknown parameter (known: {known})")
    values = {}
    for name, f in fields.items():
        if name in table:
            values[name] = _convert(f"{path}.{name}", hints.get(name, typing.Any), table[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{path}.{name}: missing (expected {_TYPE_WORDS.get(hints.get(name), 'a value')})")
    return cls(**values)


def _read_params(policy, text):
    try:
        table = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ValueError(f"params: not JSON ({e})")
    if policy.Params is None:
        return table
    return _read_dataclass("params", policy.Params, table)


# ---- the first tick after a start (the Rust SDK's restart::present) ----------------------------------

def _present(tick):
    """(tick, mode to keep, why): a starting node's tick as the policy sees it."""
    if tick.node.mode != Mode.STARTING:
        return tick, None, None
    restart = tick.node.restart
    if restart is None:
        tick.node.mode = Mode.STANDBY
        return tick, None, "first start (no restart to resume)"
    down = restart.downtime_ms
    if not tick.state:
        tick.state = restart.state
    fresh = None
    if restart.mode == Mode.ACTIVE:
        active = next((p.id for p in peers_in(tick, Mode.ACTIVE)), None)
        holder = role_held_elsewhere(tick)
        asks = next((c for c in tick.commands if c.command == PeerCommand.GO_STANDBY), None)
        if active is not None:
            fresh = f"restarted after {down} ms, was ACTIVE, but peer {active} reports ACTIVE: not resuming"
        elif holder is not None:
            fresh = f"restarted after {down} ms, was ACTIVE, but node {holder} holds the role key: not resuming"
        elif tick.operator == OperatorRequest.STANDBY:
            fresh = f"restarted after {down} ms, was ACTIVE, but the operator asks for standby: not resuming"
        elif asks is not None:
            fresh = f"restarted after {down} ms, was ACTIVE, but peer {asks.from_} asks for standby: not resuming"
    if fresh is None and restart.mode == Mode.STARTING:
        fresh = f"restarted after {down} ms before the first decision"
    if fresh is not None:
        tick.node.mode = Mode.STANDBY
        return tick, None, fresh
    tick.node.mode = restart.mode
    tick.node.mode_since_ms = restart.mode_since_ms
    return tick, restart.mode, f"restarted after {down} ms: resuming {mode_word(restart.mode)}"


def export(policy_class):
    """The `WitWorld` class componentize-py exports: assign it to `WitWorld` in the app module."""
    policy = policy_class()

    class Export(wit_world.WitWorld):
        def validate(self, params):
            try:
                policy.validate(_read_params(policy, params))
            except ValueError as e:
                raise Err(str(e))

        def decide(self, params, tick):
            tick, keep, why = _present(tick)
            # validate() accepted these very params: a failure here is a host bug, and the trap reports it.
            values = _read_params(policy, params)
            state = {}
            if tick.state:
                try:
                    state = json.loads(bytes(tick.state))
                    if not isinstance(state, dict):
                        raise ValueError("not a table")
                except ValueError as e:
                    log(Level.WARN, f"previous state unreadable ({e}); starting from defaults")
                    state = {}
            d = policy.decide(values, tick, state)
            if d is None:
                d = Decision.keep()
            mode = d.mode if d.mode is not None else keep
            reason = d.reason
            if why is not None:
                reason = f"{why}; {reason}" if reason else why
            out = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
            return wit.Decision(mode=mode, actions=d.actions, state=out, reason=reason)

    return Export
