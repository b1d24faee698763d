"""{{name}}: a vigil failover policy for a pair of nodes, in Python.

Once per heartbeat interval vigil gathers what it observed into a tick and calls `decide`; the
Decision it returns says which mode this node should be in and what to do (start and stop services,
send the peer a command). The same tick always gives the same decision: what the policy remembers
between ticks is in `state` (a dict, kept as JSON).

The rules of this example:
- a standby takes the role when its peer has failed `failures` checks in a row (by default the
  node's `[heartbeat] failures`), starts `services` in order and tells the old active to stand by;
- when both nodes are up and neither is active, the primary takes the role;
- of two actives (a link that healed), the secondary steps down;
- with `failback = true`, a secondary holding the role hands it back to the primary once the
  primary has answered `failures` checks in a row;
- an operator's `vigil switch standby|active` and the peer's commands are obeyed.

Change the rules, then `vigil policy build` and `vigil policy test policy.toml scenarios/*.toml`.
The helpers (Decision, Mode, ...) are in vigil_policy.py, shipped with this project.
"""

from dataclasses import dataclass, field
from typing import Optional

from vigil_policy import Decision, Mode, OperatorRequest, PeerCommand, Policy, Role, export, mode_word


@dataclass
class Params:
    """The policy file's [params] table: a typo or a wrong type is refused when the policy loads."""

    # Failed checks in a row before the standby takes over (default: [heartbeat] failures).
    failures: Optional[int] = None
    # Whether the secondary hands the role back to a returning primary.
    failback: bool = False
    # The services this node runs while active, in start order (stopped in reverse).
    services: list[str] = field(default_factory=list)


def describe(peer):
    """`unreachable`, the mode it reports (`STANDBY`), or `reachable` before its first report."""
    if not peer.reachable:
        return "unreachable"
    return mode_word(peer.report.mode) if peer.report is not None else "reachable"


class Example(Policy):
    Params = Params

    def validate(self, params):
        if params.failures is not None and params.failures < 1:
            raise ValueError("params.failures: expected at least 1")
        if len(set(params.services)) != len(params.services):
            raise ValueError("params.services: a service is listed twice")

    def decide(self, params, tick, state):
        needed = params.failures if params.failures is not None else tick.heartbeat.failures
        mode = tick.node.mode
        peer = tick.peers[0] if tick.peers else None

        def start_all(d):
            return d.start(*params.services)

        def stop_all(d):
            return d.stop(*reversed(params.services))

        def took_over(d):
            state["takeovers"] = state.get("takeovers", 0) + 1
            return start_all(d)

        # Off, failed, hold-off: the operator brings the node back (`vigil switch restore`).
        if mode not in (Mode.ACTIVE, Mode.STANDBY):
            return Decision.because(f"{mode_word(mode)}: waiting for the operator")

        # The operator first, then the peer's commands.
        if tick.operator == OperatorRequest.STANDBY and mode == Mode.ACTIVE:
            d = stop_all(Decision.to(Mode.STANDBY, "the operator asks for standby"))
            return d.command(peer.id, PeerCommand.GO_ACTIVE) if peer else d
        if tick.operator == OperatorRequest.ACTIVE and mode == Mode.STANDBY:
            d = took_over(Decision.to(Mode.ACTIVE, "the operator asks for active"))
            return d.command(peer.id, PeerCommand.GO_STANDBY) if peer else d
        for c in tick.commands:
            if c.command == PeerCommand.GO_STANDBY and mode == Mode.ACTIVE:
                return stop_all(Decision.to(Mode.STANDBY, f"peer {c.from_} asks for standby"))
            if c.command == PeerCommand.GO_ACTIVE and mode == Mode.STANDBY:
                return took_over(Decision.to(Mode.ACTIVE, f"peer {c.from_} asks for active"))

        if peer is None:
            if mode == Mode.ACTIVE:
                return Decision.because("ACTIVE, no peer")
            return took_over(Decision.to(Mode.ACTIVE, "no peer: this node takes the role"))
        peer_mode = peer.report.mode if peer.reachable and peer.report is not None else None
        secondary = tick.node.configured_role == Role.SECONDARY

        if mode == Mode.ACTIVE:
            if peer_mode == Mode.ACTIVE:
                if secondary:
                    return stop_all(Decision.to(Mode.STANDBY, f"peer {peer.id} is ACTIVE too: the secondary steps down"))
                return Decision.because(f"peer {peer.id} is ACTIVE too: the primary keeps the role")
            primary_back = (
                peer_mode == Mode.STANDBY
                and peer.report.configured_role == Role.PRIMARY
                and peer.consecutive_successes >= needed
            )
            if params.failback and secondary and primary_back:
                why = f"primary {peer.id} is back ({peer.consecutive_successes} checks in a row): failing back"
                return stop_all(Decision.to(Mode.STANDBY, why)).command(peer.id, PeerCommand.GO_ACTIVE)
            return Decision.because(f"ACTIVE; peer {peer.id} {describe(peer)}")

        # Standby.
        if peer_mode == Mode.ACTIVE:
            return Decision.because(f"peer {peer.id} is ACTIVE")
        if not peer.reachable:
            failed = peer.consecutive_failures
            if failed >= needed:
                why = f"peer {peer.id} failed {failed}/{needed} checks: taking over"
                return took_over(Decision.to(Mode.ACTIVE, why)).command(peer.id, PeerCommand.GO_STANDBY)
            return Decision.because(f"peer {peer.id} failed {failed}/{needed} checks")
        if not secondary:
            return took_over(Decision.to(Mode.ACTIVE, f"peer {peer.id} is {describe(peer)}: the primary takes the role"))
        return Decision.because(f"peer {peer.id} is {describe(peer)}: waiting for the primary")


# The class componentize-py exports as the component's implementation.
WitWorld = export(Example)
