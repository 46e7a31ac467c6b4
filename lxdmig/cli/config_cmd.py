"""``lxdmig config NAME``: the migration keys of an LXD or Incus instance (show, or set)."""

from __future__ import annotations

import argparse
import json

from lxdmig import backends, config, lxd_keys
from lxdmig.backends.lxd import LxdBackend
from lxdmig.errors import BackendError, ConfigError, ExitCode

HELP = ("show or set an LXD or Incus instance's migration.incremental.memory keys (pre-copy on, rounds, goal) "
        "and, on Incus, migration.stateful")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help=HELP, description=HELP[0].upper() + HELP[1:] + ". Without options it "
                       "shows them; lxdmig move follows them, and its flags override them.")
    p.add_argument("name", help="an LXD or Incus instance on this host")
    p.add_argument("--incremental-memory", metavar="true|false",
                   help="migration.incremental.memory: use pre-copy for this instance")
    p.add_argument("--iterations", metavar="N", help="migration.incremental.memory.iterations: at most N rounds")
    p.add_argument("--goal", metavar="PERCENT",
                   help="migration.incremental.memory.goal: stop once this share of pages was unchanged")
    p.add_argument("--stateful", metavar="true|false",
                   help="Incus only: migration.stateful, which Incus requires for a stateful stop, start or "
                        "snapshot (its live move does not check it)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    wanted = {key: value for key, value in ((config.INCREMENTAL, args.incremental_memory),
                                            (config.ITERATIONS, args.iterations), (config.GOAL, args.goal),
                                            (lxd_keys.STATEFUL, args.stateful))
              if value is not None}
    for key, value in wanted.items():
        lxd_keys.validate(key, value)  # refuse bad input before talking to a daemon
    backend = backends.find(args.name, conf)
    if backend is None:
        raise BackendError(f"no LXD or Incus instance named {args.name!r} here (LXD at {conf.lxd_socket}, Incus "
                           f"at {conf.incus_socket})")
    if not isinstance(backend, LxdBackend):
        raise ConfigError(f"{args.name!r} is an LXC container: its keys go in a [container NAME] section of "
                          "lxdmig.conf")
    label = backend.daemon.label
    keys = lxd_keys.KEYS + ((lxd_keys.STATEFUL,) if backend.name == "incus" else ())
    if lxd_keys.STATEFUL in wanted and backend.name != "incus":
        raise ConfigError(f"--stateful is an Incus key; {args.name!r} is an {label} instance")
    client = backend.client
    values = lxd_keys.set_keys(client, args.name, wanted, keys) if wanted else \
        lxd_keys.get_keys(client, args.name, keys)
    if args.json:
        print(json.dumps(values, sort_keys=True))
        return ExitCode.OK
    for key in keys:
        value = values[key]
        print(f"{key} = {value}" if value is not None else f"{key} = {lxd_keys.DEFAULTS[key]} ({label}'s default)")
    return ExitCode.OK
