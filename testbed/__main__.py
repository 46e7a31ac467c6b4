"""``scripts/testbed``: bring up two test hosts and run things on them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from lxdmig import proc
from lxdmig.errors import CommandError
from testbed import bed, containers, hosts, images
from testbed.layout import HOSTS, Host, all_hosts

USAGE_EXAMPLES = """\
examples:
  scripts/testbed up
  scripts/testbed container c1 --host a --memory-mib 64 --dirty-rate 4
  scripts/testbed workload a c1
  scripts/testbed exec a -- lxdmig info
  scripts/testbed attach a c1 -- ps
  scripts/testbed down
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="testbed",
        description="Two lxdmig test hosts (a, b) on one machine: network namespaces joined by veth, "
        "their own LXC paths, storage, config dirs and cgroups.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="create the test hosts (idempotent)")
    sub.add_parser("down", help="remove everything the test bed made, containers included")
    st = sub.add_parser("status", help="show the hosts and their containers")
    st.add_argument("--json", action="store_true")
    c = sub.add_parser("container", help="create and start a workload container on a host")
    c.add_argument("name")
    c.add_argument("--host", required=True, choices=HOSTS)
    c.add_argument("--memory-mib", type=int, default=16, help="memory the workload keeps (default 16)")
    c.add_argument("--dirty-rate", type=float, default=1.0, help="MiB/s the workload rewrites (default 1)")
    c.add_argument("--tick-ms", type=int, default=10, help="counter period in ms (default 10)")
    c.add_argument("--image", choices=sorted(images.IMAGES),
                   help="a Debian system container (systemd, redis, postgresql, nginx, openssh) instead of the "
                        "busybox workload; the image is built once and cached")
    c.add_argument("--privileged", action="store_true",
                   help="no user namespace (default: unprivileged, root mapped to host uid 100000)")
    c.add_argument("--stock-config", action="store_true",
                   help="with --image: the LXC config LXC's templates write (common.conf, userns.conf: ttys, "
                        "a console, LXC's seccomp policy) instead of the test bed's")
    d = sub.add_parser("destroy", help="stop and delete a container on a host")
    d.add_argument("host", choices=HOSTS)
    d.add_argument("name")
    w = sub.add_parser("workload", help="print one JSON line about a container's workload")
    w.add_argument("host", choices=HOSTS)
    w.add_argument("name")
    e = sub.add_parser("exec", help="run a command as a host (its namespaces, cgroups, config dir)")
    e.add_argument("host", choices=HOSTS)
    e.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    a = sub.add_parser("attach", help="run a command inside a container on a host")
    a.add_argument("host", choices=HOSTS)
    a.add_argument("name")
    a.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    return p


def _command(argv: list[str]) -> list[str]:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit("testbed: a command is needed after --")
    return argv


def exec_as(host: Host, argv: list[str]) -> None:
    """Replace this process with ``argv`` running as ``host``."""
    hosts.require_up()
    hosts.join_host_cgroups(host, os.getpid())
    env = proc.clean_env(host.env())
    venv_bin = os.path.dirname(sys.executable)
    env["PATH"] = f"{venv_bin}:{env['PATH']}"
    full = hosts.enter_argv(host, argv, cwd=os.getcwd())
    os.execvpe(full[0], full, env)


def status(as_json: bool) -> int:
    up = hosts.is_up()
    report = {
        h.name: {
            "netns": h.netns,
            "address": str(h.address),
            "lxcpath": str(h.lxcpath),
            "containers": {n: containers.lxc_state(h, n) for n in (containers.list_containers(h) if up else [])},
        }
        for h in all_hosts()
    }
    if as_json:
        print(json.dumps({"up": up, "hosts": report}, sort_keys=True))
        return 0
    print(f"test bed: {'up' if up else 'down'}")
    for h in all_hosts():
        states = report[h.name]["containers"]
        assert isinstance(states, dict)
        listed = ", ".join(f"{n} ({s})" for n, s in states.items()) or "no containers"
        print(f"  host {h.name}: {h.netns} {h.address} lxcpath {h.lxcpath}: {listed}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            bed.up()
            print("test bed up: hosts " + ", ".join(f"{h.name} ({h.address})" for h in all_hosts()))
        elif args.command == "down":
            bed.down()
            print("test bed down")
        elif args.command == "status":
            return status(args.json)
        elif args.command == "container":
            hosts.require_up()
            spec = containers.WorkloadSpec(args.memory_mib, args.dirty_rate, args.tick_ms)
            if args.image:
                addr = containers.create_system(Host(args.host), args.name, args.image, privileged=args.privileged,
                                                stock=args.stock_config)
            else:
                addr = containers.create(Host(args.host), args.name, spec, privileged=args.privileged)
            print(f"container {args.name} running on host {args.host}, address {addr}")
        elif args.command == "destroy":
            containers.destroy(Host(args.host), args.name)
        elif args.command == "workload":
            print(json.dumps(containers.read_workload(Host(args.host), args.name), sort_keys=True))
        elif args.command == "exec":
            exec_as(Host(args.host), _command(args.argv))
        elif args.command == "attach":
            h = Host(args.host)
            exec_as(h, ["lxc-attach", "-P", str(h.lxcpath), "-n", args.name, "--", *_command(args.argv)])
    except (hosts.TestbedError, CommandError, ValueError) as e:
        print(f"testbed: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
