"""The ``lxdmig-helper`` command: run the daemon, and manage who may talk to it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lxdmig import __version__, config, proc, tls
from lxdmig.dispatch import dispatch
from lxdmig.errors import ConfigError, ExitCode
from lxdmig.remotes import check_name, format_address
from lxdmig.tokens import DEFAULT_LIFETIME, TokenStore

PROG = "lxdmig-helper"
DESCRIPTION = (
    "Per-host lxdmig daemon: receives migrations over mutually authenticated TLS, "
    "runs criu page-server / lazy-pages and restores containers."
)
EPILOG = """\
trust:
  lxdmig-helper trust add NAME        print a one-time token for host NAME; on
                                      NAME run: lxdmig remote add THIS-HOST TOKEN
  lxdmig-helper trust add NAME --cert FILE
                                      trust NAME's certificate file directly
Changes to the trust store take effect in the running daemon after SIGHUP
(systemctl reload lxdmig-helper); redeemed tokens take effect at once.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"config file (default {config.DEFAULT_DIR / config.FILE_NAME}, "
                             "or $LXDMIG_CONFIG_DIR/lxdmig.conf)")
    parser.add_argument("--debug", action="store_true", help="log every step and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon (systemd starts it this way)")
    serve.set_defaults(run=_serve)

    trust = sub.add_parser("trust", help="manage the hosts this helper trusts")
    tsub = trust.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    add = tsub.add_parser("add", help="trust a host: issue a one-time token, or add its certificate",
                          description="Trust a host: issue a one-time token, or add its certificate. " + TRUST_MEANS)
    add.add_argument("name", help="a name for the host being trusted")
    add.add_argument("--cert", type=Path, metavar="FILE", help="trust this PEM certificate instead of issuing a token")
    add.add_argument("--address", action="append", default=[], metavar="ADDR",
                     help="address the other host should use to reach this helper (repeatable; "
                          "default: this host's global addresses)")
    add.add_argument("--expires", type=float, default=DEFAULT_LIFETIME, metavar="SECONDS",
                     help=f"how long the token stays valid (default {DEFAULT_LIFETIME:g})")
    add.set_defaults(run=_trust_add)
    lst = tsub.add_parser("list", help="list trusted certificates and pending tokens")
    lst.add_argument("--json", action="store_true", help="print JSON for scripts")
    lst.set_defaults(run=_trust_list)
    rm = tsub.add_parser("remove", help="stop trusting a host (and drop its pending token)")
    rm.add_argument("name")
    rm.set_defaults(run=_trust_remove)
    show = tsub.add_parser("show", help="print this host's certificate (PEM) and fingerprint")
    show.set_defaults(run=_trust_show)

    cfg = sub.add_parser("config", help="print every config option with its default")
    cfg.set_defaults(run=_config)
    return parser


def _config(args: argparse.Namespace) -> ExitCode:
    print(config.describe(), end="")
    return ExitCode.OK


def _identity(conf: config.Config) -> tls.Identity:
    return tls.ensure_identity(conf.cert, conf.key)


def _serve(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    from lxdmig.helper.server import HelperServer

    return ExitCode(HelperServer(conf).serve())


def _default_addresses(port: int) -> list[str]:
    out = proc.run(["ip", "-json", "address", "show"], timeout=10).stdout
    found = []
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("scope") == "global":
                found.append(format_address(addr["local"], port))
    return found


TRUST_MEANS = ("A trusted host is root here: a migration from it brings the container's definition and root "
               "filesystem, and this helper, running as root, creates and starts that container. Hardened mode "
               "(the default) writes the container's LXC config itself and refuses privileged containers, hooks, "
               "host paths and the like, but the CRIU images still describe what runs here. Trust only hosts "
               "whose root you would trust with this host.")


def _trust_add(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    name = check_name(args.name)
    print(f"note: {TRUST_MEANS}", file=sys.stderr)
    store = tls.TrustStore(conf.trust_dir)
    if args.cert is not None:
        try:
            fp = store.add(name, args.cert.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot trust {args.cert}: {e}") from None
        print(f"trusted {name}: {fp}")
        print("reload the running helper to apply: systemctl reload lxdmig-helper (or kill -HUP its PID)")
        return ExitCode.OK
    ident = _identity(conf)
    listen = ipaddress.ip_address(conf.listen)
    addresses = args.address or ([format_address(conf.listen, conf.port)] if not listen.is_unspecified
                                 else _default_addresses(conf.port))
    if not addresses:
        raise ConfigError("this host has no global address to put in the token: pass --address")
    token = TokenStore(conf.tokens).issue(name, ident.fingerprint, addresses, args.expires)
    print(token.encode())
    print(f"one-time token for {name}, valid {args.expires:g} s; on {name} run:\n"
          f"  lxdmig remote add {socket.gethostname()} TOKEN", file=sys.stderr)
    return ExitCode.OK


def _trust_list(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    store = tls.TrustStore(conf.trust_dir)
    trusted = {name: tls.fingerprint(pem) for name, pem in store.certificates().items()}
    pending = TokenStore(conf.tokens).pending() if conf.tokens.exists() else []
    if args.json:
        print(json.dumps({"trusted": trusted, "pending_tokens": {n: e for n, e in pending}}, sort_keys=True))
        return ExitCode.OK
    for name, fp in trusted.items():
        print(f"{name:<20} {fp}")
    for name, expires in pending:
        print(f"{name:<20} (token pending, expires in {max(0, expires - time.time()):.0f} s)")
    if not trusted and not pending:
        print("no trusted hosts")
    return ExitCode.OK


def _trust_remove(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    dropped_token = TokenStore(conf.tokens).revoke(args.name) if conf.tokens.exists() else False
    try:
        tls.TrustStore(conf.trust_dir).remove(args.name)
    except ConfigError:
        if not dropped_token:
            raise
        print(f"pending token for {args.name} revoked")
        return ExitCode.OK
    print(f"{args.name} is no longer trusted; reload the running helper to apply: "
          "systemctl reload lxdmig-helper (or kill -HUP its PID)")
    return ExitCode.OK


def _trust_show(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    ident = _identity(conf)
    print(ident.cert.read_text(), end="")
    print(f"fingerprint: {ident.fingerprint}", file=sys.stderr)
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The daemon logs with times and threads (journald adds its own prefix too).
    fmt = "%(asctime)s %(levelname)s %(threadName)s: %(message)s" if args.command == "serve" else None
    return dispatch(PROG, parser, args, default_level=logging.INFO, log_format=fmt)
