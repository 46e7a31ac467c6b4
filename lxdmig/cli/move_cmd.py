"""``lxdmig move NAME REMOTE:NAME``: live-migrate a container to another host."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from lxdmig import backends, config, lxd_keys
from lxdmig.backends import Backend
from lxdmig.backends.lxd import LxdBackend
from lxdmig.errors import ConfigError, ExitCode
from lxdmig.migrate import policy
from lxdmig.migrate.checks import Plan
from lxdmig.migrate.engine import EngineOptions, make_engine
from lxdmig.migrate.report import MoveFailed, MoveReport, MoveRequest, PreflightFailed
from lxdmig.remotes import RemoteStore

HELP = "live-migrate a running container to a remote host (same shape as 'lxc move')"
MODES_HELP = ("auto (default): pre-copy where this host tracks dirty memory (falling back to post-copy if rounds "
              "do not converge), else post-copy where the destination can restore lazily, else stop-copy; "
              "stop-copy: freeze, copy everything, restore; pre-copy: copy memory in rounds while it runs; "
              "post-copy: restore at once, memory follows on demand; hybrid: pre-copy rounds, then post-copy")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("move", help=HELP, description=HELP[0].upper() + HELP[1:] + ". The container keeps its "
                       "processes, memory, MAC and IP address; if anything fails before the destination "
                       "confirms, it goes on running here as before.")
    p.add_argument("source", metavar="NAME", help="a container on this host")
    p.add_argument("target", metavar="REMOTE:NAME", help="where to: a remote from 'lxdmig remote list' (and the "
                   "same name; 'REMOTE' alone means the same name)")
    add_plan_options(p)
    p.add_argument("--iterations", type=int, metavar="N",
                   help=f"pre-copy: at most N rounds (default {policy.DEFAULT_ITERATIONS}, or the container's "
                        "migration.incremental.memory.iterations)")
    p.add_argument("--goal", type=int, metavar="PERCENT",
                   help=f"pre-copy: stop once this share of pages was unchanged in a round (default "
                        f"{policy.DEFAULT_GOAL}, or migration.incremental.memory.goal)")
    p.add_argument("--downtime-target", type=float, metavar="MS",
                   help="pre-copy: stop as soon as the estimated downtime is within MS; with auto/hybrid, "
                        "switch to post-copy when rounds stop converging")
    p.add_argument("--engine", choices=policy.ENGINES, default="auto",
                   help="LXD and Incus instances: lxdmig (lxdmig's own engine, every mode; needs lxdmig-helper "
                        "on the destination), lxd (LXD's own live migration, wrapped with lxdmig's preflight, "
                        "timeout and rollback; needs the remote's LXD server: 'lxdmig remote add NAME "
                        "https://HOST:8443 --lxd'), incus (the same for Incus instances, with --incus), or auto "
                        "(default: lxdmig where the remote has a helper, else the daemon's own)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="--engine lxd or incus: roll back if the daemon has not finished within this (default "
                        "600)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=run)


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """The options that change what a move checks (``lxdmig move`` and ``lxdmig check`` take them alike)."""
    p.add_argument("--mode", choices=policy.MODES, default="auto", help=MODES_HELP)
    p.add_argument("--allow-drop", action="store_true",
                   help="move even if processes run in the container outside its init's tree (started with "
                        "lxc-attach or lxc exec): CRIU cannot move them, so they are left behind and end with the "
                        "source; the report lists them")
    p.add_argument("--page-transport", choices=config.PAGE_TRANSPORTS,
                   help="how memory pages travel: tls (CRIU's TLS page server), or plain (a TCP connection "
                        "lxdmig authenticates over its TLS control connection, then unencrypted; 2-3x faster; "
                        "only on a network you trust; the destination must set [helper] plain_pages). Default: "
                        "[client] page_transport, tls")


def plan(args: argparse.Namespace, conf: config.Config, name: str, backend: Backend) -> Plan:
    """What add_plan_options() asked, with the container's migration.incremental.memory (auto's choice)."""
    return Plan(args.mode, args.page_transport or conf.page_transport, args.allow_drop,
                incremental=keys(conf, name, backend)[0])


def parse_target(source: str, target: str) -> tuple[str, str]:
    remote, _, name = target.partition(":")
    if not remote:
        raise ConfigError(f"target {target!r} names no remote (use REMOTE:NAME)")
    if ":" in source:
        raise ConfigError(f"the source {source!r} must be a container on this host: run lxdmig on the host "
                          "the container runs on")
    if name and name != source:
        raise ConfigError(f"renaming while moving is not supported: move {source} to {remote}:{source}, "
                          "then rename it there")
    return remote, source


def keys(conf: config.Config, name: str, backend: Backend) -> tuple[bool | None, int | None, int | None]:
    """migration.incremental.memory, .iterations and .goal for the container, None where unset.

    An LXD instance carries them in its own config; an LXC container in a
    [container NAME] section of lxdmig.conf.
    """
    if isinstance(backend, LxdBackend):
        values = lxd_keys.get_keys(backend.client, name)
        raw_inc, raw_it, raw_goal = values[config.INCREMENTAL], values[config.ITERATIONS], values[config.GOAL]
        return (None if raw_inc is None else raw_inc.lower() == "true",
                None if raw_it is None else int(raw_it), None if raw_goal is None else int(raw_goal))
    return (conf.incremental(name), conf.container_int(name, config.ITERATIONS),
            conf.container_int(name, config.GOAL))


def _limits(args: argparse.Namespace, found: tuple[bool | None, int | None, int | None]) -> policy.PrecopyLimits:
    iterations = args.iterations if args.iterations is not None else found[1]
    goal = args.goal if args.goal is not None else found[2]
    try:
        return policy.PrecopyLimits(
            iterations=policy.DEFAULT_ITERATIONS if iterations is None else iterations,
            goal=policy.DEFAULT_GOAL if goal is None else goal,
            downtime_target_ms=args.downtime_target)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the move's rollback


def run(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    remote, name = parse_target(args.source, args.target)
    store = RemoteStore(conf.remotes)
    if remote not in store.names():
        store.get(remote)  # raises, naming the remotes there are
    backend = backends.find(name, conf)
    if backend is None:
        raise MoveFailed(f"no container {name!r} on this host (not in {conf.lxcpath}, not in LXD at "
                         f"{conf.lxd_socket}, not in Incus at {conf.incus_socket})")
    limits_keys = keys(conf, name, backend)
    request = MoveRequest(name, remote, args.mode, _limits(args, limits_keys), incremental=limits_keys[0],
                          allow_drop=args.allow_drop, page_transport=args.page_transport or conf.page_transport)
    engine, why = policy.choose_engine(
        args.engine, manager=backend.name, remote_helper=remote in [r.name for r in store.all()],
        remote_daemon=backend.name in backends.DAEMONS and remote in [r.name for r in store.all_lxd(backend.name)],
        mode=args.mode)
    own = policy.DAEMON_LABELS.get(engine)
    if own and args.allow_drop:
        raise ConfigError(f"--allow-drop works with lxdmig's engine only (--engine lxdmig): {own}'s own move "
                          "cannot leave processes behind")
    if own and args.page_transport == "plain":
        raise ConfigError(f"--page-transport plain works with lxdmig's engine only (--engine lxdmig): {own}'s "
                          "own move uses its own transport")
    progress = (lambda line: None) if args.quiet or args.json else (lambda line: print(line, file=sys.stderr))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        options = EngineOptions(timeout=args.timeout, iterations=args.iterations, goal=args.goal)
        report = make_engine(engine, why, conf, request, progress, backend, options).run()
    except PreflightFailed as e:
        for check in e.checks:
            if check.status.value != "ok":
                print(f"{check.status.value:<5} {check.name:<15} {check.message}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.as_json() if args.json else format_report(report))
    return ExitCode.OK


def format_report(r: MoveReport) -> str:
    lines = [f"moved {r.container} to {r.remote}",
             f"  engine:       {r.engine} ({r.engine_reason})",
             f"  mode:         {r.mode} ({r.mode_reason})"]
    if r.engine != "lxdmig":
        lines += [f"  downtime:     {r.downtime_ms:.0f} ms (from freezing here to running on {r.remote}, "
                  "observed by lxdmig)",
                  f"  total:        {r.total_ms / 1000:.2f} s"]
        lines += [f"  warning:      {w}" for w in r.warnings]
        return "\n".join(lines)
    if r.switched_to_post_copy:
        lines.append(f"  switched:     to post-copy ({r.switched_to_post_copy})")
    lines += [f"  downtime:     {r.downtime_ms:.0f} ms (frozen here until running on {r.remote})",
              f"  total:        {r.total_ms / 1000:.2f} s",
              f"  sent:         {r.bytes_sent / 1e6:.1f} MB",
              f"  filesystem:   initial sync {r.fs_initial_s:.2f} s, final sync {r.fs_final_s:.2f} s"]
    if r.final_pages_lazy:
        lines.append(f"  memory:       {r.final_pages_lazy} pages served on demand after the restore, all in "
                     f"{r.lazy_transfer_s:.2f} s later (until then, touching a page not yet there waits for it)")
    else:
        lines.append(f"  final dump:   {r.final_pages_written} pages, tasks frozen {r.frozen_dump_ms:.0f} ms by CRIU")
    lines.append(f"  restore:      {r.restore_ms:.0f} ms on {r.remote}")
    if r.frozen_steps_ms:
        lines.append("  frozen for:   " + ", ".join(f"{step.replace('_', ' ')} {ms:.0f} ms"
                                                    for step, ms in r.frozen_steps_ms.items()))
    if r.rounds:
        lines.append("  rounds:       #  written  unchanged  seconds  est.downtime  then")
        for rd in r.rounds:
            est = f"{rd.estimated_downtime_ms:.0f} ms" if rd.estimated_downtime_ms is not None else "-"
            lines.append(f"                {rd.number:<2} {rd.pages_written:>8} {rd.unchanged_percent:>9.0f}% "
                         f"{rd.seconds:>8.2f} {est:>13}  {rd.decision}")
    if r.tasks:
        lines.append(f"  processes:    {r.tasks} dumped, {r.tasks} restored")
    if r.dropped:
        lines.append(f"  left behind:  {'; '.join(r.dropped)} (--allow-drop; stopped with the source)")
    if r.announced:
        lines.append(f"  announced:    {', '.join(r.announced)}")
    lines += [f"  warning:      {w}" for w in r.warnings]
    return "\n".join(lines)
