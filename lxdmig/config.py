"""lxdmig.conf: one INI file shared by ``lxdmig`` and ``lxdmig-helper``.

The file is ``/etc/lxdmig/lxdmig.conf`` unless ``--config FILE`` or the
``LXDMIG_CONFIG_DIR`` environment variable says otherwise. A missing file
means all defaults. Unknown sections or options are an error (a typo must
not silently fall back to a default). Relative paths are resolved against
the directory holding the file. ``OPTIONS`` documents every option; the
man page and ``lxdmig-helper config`` print it.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lxdmig.errors import ConfigError

DEFAULT_DIR = Path("/etc/lxdmig")
FILE_NAME = "lxdmig.conf"
DEFAULT_PORT = 8445
PAGE_TRANSPORTS = ("tls", "plain")


@dataclass(frozen=True)
class Option:
    section: str
    name: str
    default: str
    help: str


# Every option, its default and what it does. Defaults that are paths are
# relative to the config file's directory.
OPTIONS: tuple[Option, ...] = (
    Option("helper", "listen", "0.0.0.0", "address lxdmig-helper binds to (IPv4 or IPv6 literal)"),
    Option("helper", "port", str(DEFAULT_PORT), "TCP port lxdmig-helper listens on"),
    Option("helper", "work_dir", "/var/lib/lxdmig/migrations",
           "where received checkpoint images are kept, one directory per migration"),
    Option("helper", "max_file_bytes", str(64 * 1024**3), "largest single file a peer may send"),
    Option("helper", "io_timeout", "60", "seconds any single wait on a peer may take before giving up"),
    Option("helper", "shutdown_grace", "120",
           "seconds SIGTERM waits for migrations in flight before rolling them back"),
    Option("helper", "keep_failed", "false",
           "keep the images and CRIU logs of migrations that failed (under work_dir/failed) for debugging"),
    Option("helper", "page_server_ports", "27100-27199",
           "TCP port range for CRIU page servers and lazy-pages started by the helper"),
    Option("helper", "hardened", "true",
           "write a received LXC container's config from what it means, and refuse from a peer what a "
           "migration does not need: privileged containers, hooks, host paths and NICs, another root "
           "filesystem, LXD raw.*/security.* keys and host devices (see docs/helper.md)"),
    Option("helper", "plain_pages", "false",
           "take memory pages from trusted peers that ask for it (lxdmig move --page-transport plain) over a "
           "plain TCP connection lxdmig authenticates, unencrypted: only on a migration network you trust"),
    Option("helper", "allow_privileged", "false",
           "in hardened mode, receive privileged containers (no user namespace: their root is root here) and "
           "LXD/Incus instances with security.privileged=true"),
    Option("helper", "lxc_allow_keys", "",
           "LXC config keys a peer may set anyway in hardened mode, comma-separated: KEY for any value, "
           "KEY=VALUE for that value only (e.g. lxc.apparmor.profile=unconfined)"),
    Option("helper", "lxd_allow_keys", "",
           "LXD instance keys (raw.* or security.*) a peer may set anyway in hardened mode, and profiles of "
           "this host it may name besides default (profiles=NAME), comma-separated"),
    Option("tls", "cert", "server.crt", "this host's certificate (made on first use)"),
    Option("tls", "key", "server.key", "this host's private key (made on first use, mode 0600)"),
    Option("tls", "trust_dir", "trust", "certificates of the hosts allowed to talk to this helper"),
    Option("tls", "tokens", "tokens.json", "pending one-time trust tokens (hashed)"),
    Option("client", "remotes", "remotes.json", "remotes known to the lxdmig command"),
    Option("client", "work_dir", "/var/lib/lxdmig/outgoing",
           "where lxdmig move keeps the images it sends (memory pages go straight to the destination)"),
    Option("client", "lazy_ports", "27200-27299",
           "TCP port range for the page server a post-copy source runs for the destination"),
    Option("client", "page_transport", "tls",
           "how lxdmig move sends memory pages: tls (CRIU's TLS), or plain (unencrypted TCP that lxdmig "
           "authenticates; 1.8-2.7x the page rate of TLS at 1 GiB in the reference run; the destination's "
           "helper must allow it: plain_pages)"),
    Option("client", "connect_timeout", "10", "seconds to wait for a helper to accept a connection"),
    Option("lxc", "lxcpath", "/var/lib/lxc", "LXC's container directory on this host"),
    Option("lxd", "socket", "/var/lib/lxd/unix.socket", "LXD's unix socket on this host (for LXD instances)"),
    Option("incus", "socket", "/var/lib/incus/unix.socket", "Incus's unix socket on this host (for Incus instances)"),
)


def _port_range(text: str, where: str) -> tuple[int, int]:
    try:
        low_s, high_s = text.split("-", 1)
        low, high = int(low_s), int(high_s)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a port range like 27100-27199") from None
    if not 1 <= low <= high <= 65535:
        raise ConfigError(f"{where}: {text!r} is not a port range within 1-65535")
    return low, high


@dataclass(frozen=True)
class Config:
    path: Path
    listen: str
    port: int
    work_dir: Path
    max_file_bytes: int
    io_timeout: float
    shutdown_grace: float
    page_server_ports: tuple[int, int]
    keep_failed: bool
    hardened: bool
    plain_pages: bool
    allow_privileged: bool
    lxc_allow_keys: tuple[str, ...]
    lxd_allow_keys: tuple[str, ...]
    cert: Path
    key: Path
    trust_dir: Path
    tokens: Path
    remotes: Path
    outgoing_dir: Path
    lazy_ports: tuple[int, int]
    page_transport: str
    connect_timeout: float
    lxcpath: Path
    lxd_socket: Path
    incus_socket: Path
    # Per-container LXD migration keys from [container NAME] sections.
    containers: dict[str, dict[str, object]] = field(default_factory=dict)

    def incremental(self, container: str) -> bool | None:
        """migration.incremental.memory for ``container``, None when unset."""
        value = self.containers.get(container, {}).get(INCREMENTAL)
        return value if isinstance(value, bool) else None

    def container_int(self, container: str, key: str) -> int | None:
        value = self.containers.get(container, {}).get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


# LXD's keys, honoured per container in [container NAME] sections.
INCREMENTAL = "migration.incremental.memory"
ITERATIONS = "migration.incremental.memory.iterations"
GOAL = "migration.incremental.memory.goal"


def _option_lines(path: Path) -> dict[tuple[str, str], int]:
    """(section, option) -> the line it is set on, so errors can point at it."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return lines
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
        elif stripped and not stripped.startswith(("#", ";")) and ("=" in stripped or ":" in stripped):
            name = re.split(r"[=:]", stripped, maxsplit=1)[0].strip().lower()
            lines.setdefault((section, name), number)
    return lines


def _where(path: Path, lines: dict[tuple[str, str], int], section: str, name: str) -> str:
    """``FILE:LINE`` of an option (just ``FILE`` for a default)."""
    line = lines.get((section, name))
    return f"{path}:{line}" if line else str(path)


def _container_keys(path: Path, section: str, items: dict[str, str],
                    lines: dict[tuple[str, str], int]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in items.items():
        value = value.strip()
        if key == INCREMENTAL:
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"{_where(path, lines, section, key)}: [{section}] {key} = {value!r} must be true "
                                  "or false")
            out[key] = value.lower() == "true"
        elif key in (ITERATIONS, GOAL):
            if not value.isdigit() or (key == GOAL and int(value) > 100) or int(value) > 999:
                raise ConfigError(f"{_where(path, lines, section, key)}: [{section}] {key} = {value!r} must be a "
                                  "whole number "
                                  f"({'0-100' if key == GOAL else '0-999'})")
            out[key] = int(value)
        else:
            raise ConfigError(f"{_where(path, lines, section, key)}: unknown option {key!r} in section [{section}] "
                              f"(known: {INCREMENTAL}, "
                              f"{ITERATIONS}, {GOAL})")
    return out


def default_path() -> Path:
    directory = os.environ.get("LXDMIG_CONFIG_DIR")
    return (Path(directory) if directory else DEFAULT_DIR) / FILE_NAME


def load(path: Path | None = None) -> Config:
    """Read the config file (defaults for whatever it does not set)."""
    path = (path or default_path()).absolute()
    parser = configparser.ConfigParser(interpolation=None)
    known = {(o.section, o.name): o for o in OPTIONS}
    parser.read_dict({o.section: {} for o in OPTIONS})
    containers: dict[str, dict[str, object]] = {}
    lines = _option_lines(path)
    for o in OPTIONS:
        parser.set(o.section, o.name, o.default)
    if path.exists():
        overrides = configparser.ConfigParser(interpolation=None)
        try:
            overrides.read(path)
        except (configparser.Error, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        for section in overrides.sections():
            if section.startswith("container "):
                containers[section[len("container "):].strip()] = _container_keys(
                    path, section, dict(overrides.items(section, raw=True)), lines)
                continue
            for name, value in overrides.items(section, raw=True):
                if (section, name) not in known:
                    raise ConfigError(f"{_where(path, lines, section, name)}: unknown option {name!r} in section "
                                      f"[{section}]")
                parser.set(section, name, value)
    base = path.parent

    def text(section: str, name: str) -> str:
        return parser.get(section, name).strip()

    def number(section: str, name: str, minimum: float) -> float:
        value = text(section, name)
        try:
            result = float(value)
        except ValueError:
            raise ConfigError(f"{_where(path, lines, section, name)}: [{section}] {name} = {value!r} is not a "
                              "number") from None
        if result < minimum:
            raise ConfigError(f"{_where(path, lines, section, name)}: [{section}] {name} = {value} is below "
                              f"{minimum:g}")
        return result

    def boolean(section: str, name: str) -> bool:
        value = text(section, name).lower()
        if value not in ("true", "false", "yes", "no", "1", "0"):
            raise ConfigError(f"{_where(path, lines, section, name)}: [{section}] {name} = {value!r} must be true "
                              "or false")
        return value in ("true", "yes", "1")

    def a_path(section: str, name: str) -> Path:
        return base / text(section, name)  # an absolute value replaces base

    listen = text("helper", "listen")
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        raise ConfigError(f"{_where(path, lines, 'helper', 'listen')}: [helper] listen = {listen!r} is not an IP "
                          "address") from None
    page_transport = text("client", "page_transport")
    if page_transport not in PAGE_TRANSPORTS:
        raise ConfigError(f"{_where(path, lines, 'client', 'page_transport')}: [client] page_transport = "
                          f"{page_transport!r} is not one of {', '.join(PAGE_TRANSPORTS)}")
    port = int(number("helper", "port", 1))
    if port > 65535:
        raise ConfigError(f"{_where(path, lines, 'helper', 'port')}: [helper] port = {port} is above 65535")
    return Config(
        path=path,
        listen=listen,
        port=port,
        work_dir=a_path("helper", "work_dir"),
        max_file_bytes=int(number("helper", "max_file_bytes", 1)),
        io_timeout=number("helper", "io_timeout", 1),
        shutdown_grace=number("helper", "shutdown_grace", 0),
        page_server_ports=_port_range(text("helper", "page_server_ports"),
                                      f"{_where(path, lines, 'helper', 'page_server_ports')}: "
                                      "[helper] page_server_ports"),
        keep_failed=boolean("helper", "keep_failed"),
        hardened=boolean("helper", "hardened"),
        plain_pages=boolean("helper", "plain_pages"),
        allow_privileged=boolean("helper", "allow_privileged"),
        lxc_allow_keys=_listed(text("helper", "lxc_allow_keys")),
        lxd_allow_keys=_listed(text("helper", "lxd_allow_keys")),
        cert=a_path("tls", "cert"),
        key=a_path("tls", "key"),
        trust_dir=a_path("tls", "trust_dir"),
        tokens=a_path("tls", "tokens"),
        remotes=a_path("client", "remotes"),
        outgoing_dir=a_path("client", "work_dir"),
        lazy_ports=_port_range(text("client", "lazy_ports"),
                                f"{_where(path, lines, 'client', 'lazy_ports')}: [client] lazy_ports"),
        page_transport=page_transport,
        connect_timeout=number("client", "connect_timeout", 0.1),
        lxcpath=a_path("lxc", "lxcpath"),
        lxd_socket=a_path("lxd", "socket"),
        incus_socket=a_path("incus", "socket"),
        containers=containers,
    )


def _listed(value: str) -> tuple[str, ...]:
    """A comma-separated option's items (blanks around each removed; around ``=`` too)."""
    return tuple("=".join(p.strip() for p in k.split("=", 1)) for k in value.split(",") if k.strip())


def describe() -> str:
    """Every option with its default, as a commented example file."""
    lines: list[str] = []
    section = ""
    for o in OPTIONS:
        if o.section != section:
            section = o.section
            lines += ["", f"[{section}]"] if lines else [f"[{section}]"]
        lines += [f"# {o.help}", f"#{o.name} = {o.default}"]
    return "\n".join(lines) + "\n"
