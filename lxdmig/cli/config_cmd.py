"""``lxdmig config NAME``: LXD's pre-copy keys of an LXD instance (show, or set)."""

from __future__ import annotations

import argparse
import json

from lxdmig import config, lxd_api, lxd_keys
from lxdmig.errors import ExitCode

HELP = "show or set an LXD instance's migration.incremental.memory keys (pre-copy on, rounds, goal)"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help=HELP, description=HELP[0].upper() + HELP[1:] + ". Without options it "
                       "shows them; lxdmig move follows them, and its flags override them.")
    p.add_argument("name", help="an LXD instance on this host")
    p.add_argument("--incremental-memory", metavar="true|false",
                   help="migration.incremental.memory: use pre-copy for this instance")
    p.add_argument("--iterations", metavar="N", help="migration.incremental.memory.iterations: at most N rounds")
    p.add_argument("--goal", metavar="PERCENT",
                   help="migration.incremental.memory.goal: stop once this share of pages was unchanged")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    wanted = {key: value for key, value in ((config.INCREMENTAL, args.incremental_memory),
                                            (config.ITERATIONS, args.iterations), (config.GOAL, args.goal))
              if value is not None}
    for key, value in wanted.items():
        lxd_keys.validate(key, value)  # refuse bad input before talking to LXD
    client = lxd_api.connect_local(conf.lxd_socket)
    keys = lxd_keys.set_keys(client, args.name, wanted) if wanted else lxd_keys.get_keys(client, args.name)
    if args.json:
        print(json.dumps(keys, sort_keys=True))
        return ExitCode.OK
    for key in lxd_keys.KEYS:
        value = keys[key]
        print(f"{key} = {value}" if value is not None else f"{key} = {lxd_keys.DEFAULTS[key]} (LXD's default)")
    return ExitCode.OK
