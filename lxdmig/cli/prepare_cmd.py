"""``lxdmig prepare NAME``: make a running system container movable (or ``--undo`` it)."""

from __future__ import annotations

import argparse

from lxdmig import backends, config, prepare
from lxdmig.backends.lxd import LxdBackend
from lxdmig.errors import BackendError, ExitCode

HELP = "make a running container movable: say what would stop CRIU and change it, one line per change"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prepare", help=HELP, description=HELP[0].upper() + HELP[1:] + ". For a systemd "
                       "container it writes one systemd drop-in that keeps services out of namespaces of their "
                       "own (CRIU cannot move nested ones) and restarts the services that run in such "
                       "namespaces now; the container itself keeps running. See docs/system-containers.md "
                       "for the trade-off.")
    p.add_argument("name", help="an LXC container or LXD instance on this host (running)")
    p.add_argument("--dry-run", action="store_true", help="show the changes, change nothing")
    p.add_argument("--undo", action="store_true", help="revert what lxdmig prepare changed")
    p.add_argument("--restart", action="store_true",
                   help="restart the container when its LXC config or LXD keys changed (settings CRIU cannot "
                        "checkpoint: ttys, console, a privileged container's seccomp policy); without it lxdmig "
                        "says that a restart is needed and restarts nothing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    backend = backends.find(args.name, conf)
    if backend is None:
        raise BackendError(f"no container {args.name!r} here (not in {conf.lxcpath}, not in LXD or Incus)")
    preparer: prepare.Preparer
    if isinstance(backend, LxdBackend):  # (or Incus)
        preparer = prepare.LxdPreparer(backend.client, args.name)
    else:
        preparer = prepare.LxcPreparer(conf.lxcpath, args.name)
    present = preparer.dropin_present()
    init_pid = backend.init_pid(args.name)  # type: ignore[attr-defined]
    if args.undo:
        changes = prepare.undo_plan(dropin_present=present,
                                    config_undo=preparer.config_undo if preparer.config_marked() else None)
    else:
        changes = prepare.plan(systemd=preparer.systemd, dropin_present=present,
                               nested_units=preparer.nested_units(init_pid))
        changes += preparer.config_changes()
    config_changed = (any(c.what.startswith("set ") or c.what == preparer.config_undo for c in changes)
                      or preparer.restart_pending(init_pid))
    if config_changed and args.restart:
        # The restart starts every service afresh: restarting single ones first would be for nothing.
        changes = [c for c in changes if not c.what.startswith("systemctl restart ")]
        changes.append(prepare.restart_change(args.name, preparer.manager))
    if not changes and not config_changed:
        print(f"{args.name}: nothing to {'undo' if args.undo else 'change'}")
        return ExitCode.OK
    for change in changes:
        print(f"{'would ' if args.dry_run else ''}{change.what}: {change.why}", flush=True)
        if not args.dry_run:
            preparer.apply(change)
    if config_changed and not args.restart:
        print(f"{args.name} must restart for its {preparer.manager} config changes to take effect; until then "
              f"lxdmig check names them. `lxdmig prepare {args.name} --restart` restarts it (a stop and start of "
              "the whole container)")
    return ExitCode.OK
