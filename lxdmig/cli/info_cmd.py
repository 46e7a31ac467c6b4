"""``lxdmig info``: what this host can do as a migration source and destination."""

from __future__ import annotations

import argparse
import json

from lxdmig import capabilities
from lxdmig.errors import ExitCode

HELP = "show this host's CRIU version, kernel features and the migration modes they allow"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("info", help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    p.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> ExitCode:
    caps = capabilities.probe()
    if args.json:
        print(json.dumps(caps.as_dict(), sort_keys=True))
        return ExitCode.OK
    yes_no = {True: "yes", False: "no"}
    print(f"lxdmig:            {caps.lxdmig_version}")
    print(f"kernel:            {caps.kernel_release}")
    print(f"criu:              {caps.criu_version}")
    for name, ok in caps.criu_features.items():
        print(f"  {name + ':':<17}{yes_no[ok]}")
    print(f"soft-dirty pages:  {yes_no[caps.soft_dirty]}")
    print(f"fs.pipe-max-size:  {caps.pipe_max_size}")
    print(f"as source:         {', '.join(caps.source_modes())}")
    print(f"as destination:    {', '.join(caps.destination_modes())}")
    for problem in caps.problems():
        print(f"note: {problem}")
    return ExitCode.OK
