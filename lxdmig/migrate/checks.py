"""The preflight of lxdmig's engine for one container, gathered once: the checks ``lxdmig check`` prints
and the ones ``lxdmig move`` refuses on come from this function, so that ``lxdmig check`` (given the
same --mode, --page-transport and --allow-drop) exits 9 exactly when that move would stop before
freezing anything. preflight.py holds the checks themselves (pure functions of what was measured);
this module measures: it asks the container's backend and the destination's helper."""

from __future__ import annotations

from dataclasses import dataclass

from lxdmig import preflight
from lxdmig.backends import Backend, ContainerFacts, Problem, Severity
from lxdmig.capabilities import HostCapabilities
from lxdmig.client import HelperClient
from lxdmig.migrate import policy
from lxdmig.preflight import Check, Status
from lxdmig.protocol.messages import ProbeResult


@dataclass(frozen=True)
class Plan:
    """What to move and how, as the operator asked (``lxdmig move``'s options that change the checks)."""

    mode: str = "auto"
    page_transport: str = "tls"
    allow_drop: bool = False
    incremental: bool | None = None  # LXD's migration.incremental.memory, for auto's choice


@dataclass(frozen=True)
class Gathered:
    checks: list[Check]
    facts: ContainerFacts
    probe: ProbeResult
    local_pages: str  # why a stop-copy's final dump writes its pages here ("": it streams them)
    choice: policy.ModeChoice | None  # None: no mode can run (a failed "mode" check says why)


def container_preflight(backend: Backend, name: str, local: HostCapabilities, client: HelperClient, remote: str,
                        plan: Plan = Plan()) -> Gathered:
    """Every check of moving ``name`` to ``remote`` (whose helper ``client`` reached) as ``plan`` says."""
    facts = backend.facts(name)
    checks = preflight.host_checks(local, client.peer.host, remote)
    problems = backend.dump_problems(name) if facts.running else []
    if plan.allow_drop:
        problems = [Problem(Severity.WARN, f"will be left behind (--allow-drop): {p.left_behind}")
                    if p.left_behind else p for p in problems]
    checks += preflight.container_checks(facts, problems)
    probe = client.probe(name, facts, backend.peer_config(name))
    checks += preflight.destination_checks(probe, facts, remote)
    refusals = [*probe.config_refusals, *backend.hardened_refusals(name, probe.lxd_allow_keys)] \
        if probe.hardened else []
    checks += preflight.hardened_checks(probe, refusals, remote)
    checks += preflight.page_transport_checks(probe, plan.page_transport, remote)
    # (A plain page connection has no TLS session for CRIU's shared-memory child to break.)
    local_pages = backend.local_pages_reason(name) if facts.running and plan.page_transport == "tls" else ""
    choice = None
    try:
        choice = policy.choose_mode(plan.mode, local, client.peer.host, incremental=plan.incremental,
                                    local_pages=local_pages)
        checks.append(Check("mode", Status.OK, f"{choice.mode}: {choice.reason}"))
    except policy.ModeUnavailable as e:
        checks.append(Check("mode", Status.FAIL, str(e)))
    return Gathered(checks, facts, probe, local_pages, choice)
