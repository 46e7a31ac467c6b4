"""``lxdmig check REMOTE [CONTAINER]``: the preflight, before anything is frozen."""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from lxdmig import backends, capabilities, client, config, preflight
from lxdmig.cli.move_cmd import add_plan_options, plan
from lxdmig.errors import ConfigError, CriuError, ExitCode, LxdmigError
from lxdmig.migrate.checks import container_preflight
from lxdmig.preflight import Check, Status
from lxdmig.protocol.messages import RemoteUntrusted

HELP = "check whether a container (or any container) can be moved to a remote, without freezing anything"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help=HELP, description=HELP[0].upper() + HELP[1:] + ". Prints one line per "
                       "check (ok/warn/fail and why) and exits with status 9 if a move would fail (given "
                       "--mode, --allow-drop and --page-transport, as 'lxdmig move' with lxdmig's engine "
                       "would: the same checks, from the same code).")
    p.add_argument("remote", help="a remote added with 'lxdmig remote add'")
    p.add_argument("container", nargs="?", help="an LXC container on this host")
    add_plan_options(p)
    p.add_argument("--trial-dump", action="store_true",
                   help="also let CRIU really dump the container to a scratch directory (it keeps running, "
                        "but is frozen for as long as the dump takes)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(run=run)


def gather(conf: config.Config, args: argparse.Namespace) -> list[Check]:
    remote, container = args.remote, args.container
    try:
        local = capabilities.probe()
    except CriuError as e:
        return [Check("criu", Status.FAIL, f"this host: {e}")]
    try:
        peer = client.open_remote(conf, remote, local)
    except ConfigError as e:
        return [Check("remote", Status.FAIL, str(e))]
    except client.PeerUnreachable as e:
        return [Check("reachable", Status.FAIL, str(e))]
    except (client.PeerCertificateMismatch, RemoteUntrusted) as e:
        return [Check("trust", Status.FAIL, str(e))]
    except LxdmigError as e:
        return [Check("protocol", Status.FAIL, str(e))]
    with peer:
        checks = [Check("reachable", Status.OK, f"{remote} at {peer.remote.address} ({peer.peer.host.hostname})"),
                  Check("trust", Status.OK, f"certificate {peer.remote.fingerprint[:16]}... pinned, "
                                            f"and {remote} trusts this host")]
        if container is None:  # (any container: this host and the destination)
            probe = peer.probe(None, None, ("", ""))
            return checks + preflight.host_checks(local, peer.peer.host, remote) + \
                preflight.destination_checks(probe, None, remote)
        backend = backends.find(container, conf)
        if backend is None:
            return checks + [Check("container", Status.FAIL, f"no container {container!r} here (not in "
                                                             f"{conf.lxcpath}, not in LXD or Incus)")]
        gathered = container_preflight(backend, container, local, peer, remote, plan(args, conf, container, backend))
        checks += gathered.checks
        if args.trial_dump and gathered.facts.running and not preflight.failed(checks):
            checks.append(_trial_dump(backend, container))
    return checks


def _trial_dump(backend: backends.Backend, container: str) -> Check:
    with tempfile.TemporaryDirectory(prefix="lxdmig-trial-") as scratch:
        start = time.monotonic()
        try:
            backend.trial_dump(container, scratch)
        except CriuError as e:
            return Check("trial-dump", Status.FAIL, str(e))
    return Check("trial-dump", Status.OK, f"CRIU dumped {container} in {time.monotonic() - start:.2f} s "
                                          "and it kept running")


def run(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    checks = gather(conf, args)
    bad = preflight.failed(checks)
    if args.json:
        print(json.dumps({"ok": not bad, "checks": [
            {"check": c.name, "status": c.status.value, "message": c.message} for c in checks]}))
    else:
        for c in checks:
            print(f"{c.status.value:<5} {c.name:<15} {c.message}")
        what = args.container or "a container"
        print(f"=> moving {what} to {args.remote} would fail" if bad else f"=> {what} can move to {args.remote}")
    return ExitCode.PREFLIGHT if bad else ExitCode.OK
