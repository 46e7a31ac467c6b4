"""CRIU as lxdmig sees it: where it is, which version, which features work."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc
from lxdmig.errors import CommandError, CriuError

MIN_VERSION = (4, 0)
# CRIU saves and restores a network namespace's iptables rules with these programs, and locks the
# namespace's network with iptables while it dumps or restores TCP connections.
NETWORK_TOOLS = ("iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore")
_TIMEOUT = 60.0

# Kernel features CRIU can check, and what lxdmig needs each one for.
FEATURE_USES = {
    "mem_dirty_track": "pre-copy and hybrid (pre-dump rounds track dirty memory)",
    "uffd": "post-copy (memory pages fetched on demand)",
    "uffd-noncoop": "post-copy of processes that fork or remap memory",
}


@dataclass(frozen=True)
class CriuInfo:
    """What CRIU and the kernel under it can do on this host."""

    version: tuple[int, ...]
    features: dict[str, bool]

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)


def version() -> tuple[int, ...]:
    """CRIU's version; raises CriuError when it is missing or unusable."""
    try:
        out = proc.run(["criu", "--version"], timeout=_TIMEOUT).stdout
    except proc.CommandNotFound as e:
        raise CriuError(f"criu is not installed: install CRIU >= {'.'.join(map(str, MIN_VERSION))} (Debian 13, "
                        "Ubuntu 24.04 and Fedora: the criu package; Debian 12: the backport docs/packaging.md "
                        "describes)") from e
    except CommandError as e:
        raise CriuError(f"criu does not run: {e}") from e
    match = re.search(r"^Version:\s*([0-9]+(?:\.[0-9]+)*)", out, re.MULTILINE)
    if not match:
        raise CriuError(f"cannot read criu's version from {out.strip()!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def require_version() -> tuple[int, ...]:
    found = version()
    if found < MIN_VERSION:
        raise CriuError(
            f"criu {'.'.join(map(str, found))} is too old: lxdmig needs >= "
            f"{'.'.join(map(str, MIN_VERSION))} (older releases fail on current kernels)"
        )
    return found


def has_feature(name: str) -> bool:
    """``criu check --feature NAME`` exits 0 exactly when the feature works."""
    if name not in FEATURE_USES:
        raise ValueError(f"unknown CRIU feature {name!r}")
    result = proc.run(["criu", "check", "--feature", name], timeout=_TIMEOUT, check=False)
    return result.returncode == 0


def missing_network_tools() -> list[str]:
    """The programs of NETWORK_TOOLS this host lacks."""
    return [tool for tool in NETWORK_TOOLS if not shutil.which(tool, path=proc.SYSTEM_PATH)]


def probe() -> CriuInfo:
    return CriuInfo(
        version=require_version(),
        features={name: has_feature(name) for name in FEATURE_USES},
    )


def tls_options(cert: Path, key: Path, peer_cert: Path) -> list[str]:
    """Options that make a CRIU page server / lazy-pages connection TLS.

    Both ends present their host certificate and trust only the peer's
    (a self-signed certificate used as the only CA: pinning). CN checks are
    off on purpose: CRIU would compare the certificate's name with the IP
    address, and hosts are identified by certificate, not by name.
    """
    return ["--tls", "--tls-cert", str(cert), "--tls-key", str(key), "--tls-cacert", str(peer_cert),
            "--tls-no-cn-verify"]


def config_file_text(argv: list[str]) -> str:
    """CRIU long options as the lines of a CRIU config file (``CRIU_CONFIG_FILE``).

    That is how options reach a criu that liblxc starts (lxc-checkpoint has
    no page-server, TLS or lazy-pages options of its own).
    """
    lines = []
    i = 0
    while i < len(argv):
        option = argv[i]
        if not option.startswith("--"):
            raise ValueError(f"not a long option: {option!r}")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"CRIU config values cannot be empty or contain spaces: {value!r}")
            lines.append(f"{option[2:]} {value}")
            i += 2
        else:
            lines.append(option[2:])
            i += 1
    return "\n".join(lines) + "\n"
