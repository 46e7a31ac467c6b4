"""``lxdmig remote add/list/remove``: the helpers this host migrates to."""

from __future__ import annotations

import argparse
import json
import sys

from lxdmig import client, config, lxd_api, tls
from lxdmig.backends.lxd_rules import DAEMONS
from lxdmig.errors import ConfigError, ExitCode
from lxdmig.protocol.messages import RemoteUntrusted
from lxdmig.remotes import LxdRemote, Remote, RemoteStore, check_name, parse_address, parse_lxd_url
from lxdmig.tokens import Token

HELP = "manage remotes: the hosts (lxdmig-helper daemons, LXD and Incus servers) this host can migrate containers to"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("remote", help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    rsub = p.add_subparsers(dest="remote_command", metavar="ACTION", required=True)
    add = rsub.add_parser(
        "add", help="add a remote by address (pinning its certificate) or by trust token",
        description="Add a remote. With a TOKEN from 'lxdmig-helper trust add' on the other host, the helper's "
                    "certificate is checked against the token and the helper learns to trust this host. With an "
                    "ADDRESS, the helper's certificate fingerprint is shown and pinned once you accept it; the "
                    "other host must then trust this host separately ('lxdmig-helper trust add NAME --cert').")
    add.add_argument("name", help="what to call the remote (as in 'lxdmig move c1 NAME:c1')")
    add.add_argument("target", metavar="ADDRESS|TOKEN",
                     help="HOST[:PORT] (default port 8445), or a trust token, or '-' to read the token from stdin "
                          "(keeps it out of the process list)")
    add.add_argument("--token", help="a trust token to redeem at ADDRESS (instead of the token's addresses); "
                                     "'-' reads it from stdin (keeps it out of the process list)")
    add.add_argument("--fingerprint", help="accept the certificate only if its SHA-256 fingerprint is this")
    add.add_argument("--accept-certificate", action="store_true",
                     help="pin whatever certificate the helper shows, without asking (first contact)")
    add.add_argument("--replace", action="store_true", help="replace a remote of the same name")
    add.add_argument("--lxd", action="store_true",
                     help="ADDRESS is the remote's LXD server (https://HOST[:PORT], default port 8443), for "
                          "LXD instances; --token is then a token from 'lxc config trust add' there. A remote "
                          "may have both a helper and an LXD server: add each under the same NAME")
    add.add_argument("--incus", action="store_true",
                     help="ADDRESS is the remote's Incus server (https://HOST[:PORT]), for Incus instances; "
                          "--token is then a token from 'incus config trust add NAME' there")
    add.add_argument("--password", help="with --lxd: the LXD server's core.trust_password instead of a token; "
                                        "'-' reads it from stdin")
    add.set_defaults(run=_add)
    lst = rsub.add_parser("list", help="list remotes")
    lst.add_argument("--json", action="store_true", help="print JSON for scripts")
    lst.set_defaults(run=_list)
    rm = rsub.add_parser("remove", help="forget a remote")
    rm.add_argument("name")
    rm.set_defaults(run=_remove)


def _confirm(fingerprint: str, address: str) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError(f"the helper at {address} has certificate fingerprint {fingerprint}; to pin it, "
                          "run again with --fingerprint " + fingerprint + " (or --accept-certificate)")
    print(f"Certificate fingerprint of {address}: {fingerprint}")
    return input("Pin this certificate? [y/N] ").strip().lower() in ("y", "yes")


def _pin(args: argparse.Namespace, cert: bytes, address: str) -> bool:
    """Whether the user accepts the certificate ``address`` showed (raises if it is not the one expected)."""
    fp = tls.fingerprint(cert)
    if args.fingerprint:
        if args.fingerprint.lower().replace(":", "") != fp:
            raise client.PeerCertificateMismatch(f"{address} has certificate {fp}, not {args.fingerprint}: not added")
        return True
    return bool(args.accept_certificate) or _confirm(fp, address)


def _add_lxd(args: argparse.Namespace, conf: config.Config, name: str, kind: str) -> ExitCode:
    """Add the remote's LXD or (``kind`` incus) Incus server: pin its certificate and, given a token (or
    LXD's trust password), have it trust this host."""
    if kind == "incus" and args.password:
        raise ConfigError("--password: Incus has no trust password; use --token with a token from "
                          "'incus config trust add NAME' on the remote")
    host, port = parse_lxd_url(args.target)
    identity = tls.ensure_identity(conf.cert, conf.key)
    cert = client.fetch_certificate(host, port, conf.connect_timeout, DAEMONS[kind].label)
    if not _pin(args, cert, args.target):
        print("not added")
        return ExitCode.FAILURE
    remote = LxdRemote(name, args.target.rstrip("/"), cert, kind)
    server = lxd_api.connect_remote(remote, conf.cert, conf.key, timeout=conf.connect_timeout,
                                    require_trust=False)
    secret = args.token or args.password
    if not server.trusted and secret:
        lxd_api.trust(server, remote, secret)
    RemoteStore(conf.remotes).add_lxd(remote, replace=args.replace)
    print(f"remote {name} {remote.label} server added: {remote.url}, certificate {remote.fingerprint} (pinned)")
    if server.trusted:
        print(f"{name}'s {remote.label} {server.host_info['environment'].get('server_version', '?')} trusts "
              "this host")
    else:
        trust_add = "lxc config trust add" if kind == "lxd" else "incus config trust add NAME"
        print(f"note: {name}'s {remote.label} does not trust this host yet. There run '{trust_add}' and here "
              f"'lxdmig remote add {name} {remote.url} --{kind} --replace --token TOKEN' (this host's "
              f"certificate fingerprint is {identity.fingerprint}).")
    return ExitCode.OK


def _secrets_from_stdin(args: argparse.Namespace) -> None:
    """``--token -`` and ``--password -`` read the secret from stdin; one given on the command line is
    visible to every user in the process list while lxdmig runs: say so."""
    for option in ("token", "password"):
        value = getattr(args, option)
        if value == "-":
            setattr(args, option, sys.stdin.readline().strip())
            if not getattr(args, option):
                raise ConfigError(f"--{option} -: nothing on stdin")
        elif value:
            print(f"note: a {option} on the command line is visible in the process list while lxdmig runs; "
                  f"'--{option} -' reads it from stdin", file=sys.stderr)


def _add(args: argparse.Namespace) -> ExitCode:
    conf = config.load(args.config)
    name = check_name(args.name)
    _secrets_from_stdin(args)
    if args.lxd and args.incus:
        raise ConfigError("--lxd and --incus: a remote server is one or the other (add each under the same NAME)")
    if args.lxd or args.incus:
        return _add_lxd(args, conf, name, "incus" if args.incus else "lxd")
    if args.password:
        raise ConfigError("--password is for LXD servers (with --lxd)")
    store = RemoteStore(conf.remotes)
    if not args.replace and any(r.name == name for r in store.all()):
        raise ConfigError(f"remote {name!r} exists already; remove it first or pass --replace")
    identity = tls.ensure_identity(conf.cert, conf.key)
    if args.target == "-":
        args.target = sys.stdin.readline().strip()
    elif Token.looks_like_token(args.target):
        print("note: a token on the command line is visible in the process list while lxdmig runs; "
              f"'lxdmig remote add {name} -' reads it from stdin", file=sys.stderr)
    token_text = args.token or (args.target if Token.looks_like_token(args.target) else None)
    if token_text is not None:
        token = Token.decode(token_text)
        if args.token:
            host, port = parse_address(args.target)
            token = Token(token.name, token.fingerprint, (f"{host}:{port}",), token.secret)
        host, port, cert = client.redeem_token(token, identity, conf.connect_timeout)
        how = "certificate matches the token; the helper now trusts this host"
    else:
        host, port = parse_address(args.target)
        cert = client.fetch_certificate(host, port, conf.connect_timeout)
        if not _pin(args, cert, f"the helper at {host}:{port}"):
            print("not added")
            return ExitCode.FAILURE
        how = "certificate pinned"
    remote = Remote(name, host, port, cert)
    store.add(remote, replace=args.replace)
    print(f"remote {name} added: {remote.address}, certificate {remote.fingerprint} ({how})")
    try:
        with client.open_remote(conf, name) as c:
            print(f"{name} is lxdmig-helper {c.peer.host.lxdmig_version} on {c.peer.host.hostname}; "
                  "it trusts this host")
    except RemoteUntrusted:
        print(f"note: {name} does not trust this host yet. On {name} run 'lxdmig-helper trust add "
              f"NAME' and here 'lxdmig remote add {name} TOKEN --replace', or give {name} this host's "
              f"certificate (fingerprint {identity.fingerprint}, printed by 'lxdmig-helper trust show') "
              f"with 'lxdmig-helper trust add NAME --cert FILE'.")
    return ExitCode.OK


def _list(args: argparse.Namespace) -> ExitCode:
    store = RemoteStore(config.load(args.config).remotes)
    rows = [{"name": r.name, "kind": "helper", "address": r.address, "fingerprint": r.fingerprint}
            for r in store.all()]
    rows += [{"name": r.name, "kind": r.kind, "address": r.url, "fingerprint": r.fingerprint}
             for kind in DAEMONS for r in store.all_lxd(kind)]
    rows.sort(key=lambda row: (row["name"], row["kind"]))
    if args.json:
        print(json.dumps(rows))
        return ExitCode.OK
    for row in rows:
        print(f"{row['name']:<16} {row['kind']:<7} {row['address']:<28} {row['fingerprint']}")
    if not rows:
        print("no remotes (add one with: lxdmig remote add NAME ADDRESS|TOKEN)")
    return ExitCode.OK


def _remove(args: argparse.Namespace) -> ExitCode:
    RemoteStore(config.load(args.config).remotes).remove(args.name)
    print(f"remote {args.name} removed")
    return ExitCode.OK
