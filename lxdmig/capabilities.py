"""What this host can do as a migration source or destination."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import socket
from dataclasses import dataclass

from lxdmig import __version__, criu, kernel, proc

# CRIU's lazy page server enlarges its pipes to ~3.2 MiB; without
# CAP_SYS_RESOURCE that fails above fs.pipe-max-size and lazy transfer
# breaks with a misleading "tee" error.
LAZY_PIPE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class HostCapabilities:
    lxdmig_version: str
    hostname: str
    kernel_release: str
    cpu_model: str
    criu_version: str
    criu_features: dict[str, bool]
    soft_dirty: bool
    pipe_max_size: int
    cap_sys_resource: bool
    backends: tuple[str, ...]

    @classmethod
    def withheld(cls) -> HostCapabilities:
        """What a helper tells a stranger (an untrusted client) about its host: nothing."""
        return cls("", "", "", "", "", {}, False, 0, False, ())

    @property
    def can_track_dirty_memory(self) -> bool:
        """Pre-copy and hybrid need this on the source."""
        return self.criu_features.get("mem_dirty_track", False) and self.soft_dirty

    @property
    def can_size_lazy_pipes(self) -> bool:
        """Post-copy's page server (source) and lazy-pages daemon need this."""
        return self.cap_sys_resource or self.pipe_max_size >= LAZY_PIPE_BYTES

    @property
    def can_restore_lazily(self) -> bool:
        """Post-copy and hybrid need userfaultfd on the destination."""
        return self.criu_features.get("uffd-noncoop", False)

    def source_modes(self) -> list[str]:
        """Migration modes this host can start as the source."""
        modes = ["stop-copy"]
        if self.can_track_dirty_memory:
            modes.append("pre-copy")
        if self.can_size_lazy_pipes:
            modes.append("post-copy")
            if self.can_track_dirty_memory:
                modes.append("hybrid")
        return modes

    def destination_modes(self) -> list[str]:
        """Migration modes this host can receive."""
        modes = ["stop-copy", "pre-copy"]
        if self.can_restore_lazily and self.can_size_lazy_pipes:
            modes += ["post-copy", "hybrid"]
        return modes

    def problems(self) -> list[str]:
        """Why a mode is missing, in words an operator can act on."""
        out = []
        if not self.can_track_dirty_memory:
            out.append(
                "no dirty-memory tracking (kernel without CONFIG_MEM_SOFT_DIRTY): "
                "pre-copy and hybrid cannot start from this host"
            )
        if not self.can_size_lazy_pipes:
            out.append(
                f"fs.pipe-max-size is {self.pipe_max_size} and CAP_SYS_RESOURCE is missing: "
                f"post-copy needs pipes of {LAZY_PIPE_BYTES} bytes "
                f"(fix: sysctl -w fs.pipe-max-size={LAZY_PIPE_BYTES})"
            )
        if not self.can_restore_lazily:
            out.append("no uffd-noncoop in CRIU's check: post-copy cannot restore on this host")
        return out

    def wire(self) -> dict[str, object]:
        """The measured facts only, as JSON-able values (what a peer is told)."""
        return {
            "lxdmig_version": self.lxdmig_version,
            "hostname": self.hostname,
            "kernel_release": self.kernel_release,
            "cpu_model": self.cpu_model,
            "criu_version": self.criu_version,
            "criu_features": dict(self.criu_features),
            "soft_dirty": self.soft_dirty,
            "pipe_max_size": self.pipe_max_size,
            "cap_sys_resource": self.cap_sys_resource,
            "backends": list(self.backends),
        }

    def as_dict(self) -> dict[str, object]:
        return {
            **self.wire(),
            "source_modes": self.source_modes(),
            "destination_modes": self.destination_modes(),
            "problems": self.problems(),
        }


def cpu_model() -> str:
    """The CPU's model name; CRIU restores only onto compatible CPUs."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.machine()


def available_backends() -> tuple[str, ...]:
    """Container managers lxdmig can drive on this host: LXC through its tools (``lxc-start``,
    ``lxc-checkpoint``; iptables's for CRIU) and lxdmig's own binding of liblxc's migrate() (python3-lxc
    is not used); LXD and Incus through pylxd."""
    found = []
    if shutil.which("lxc-checkpoint", path=proc.SYSTEM_PATH) and not criu.missing_network_tools() and \
            importlib.util.find_spec("lxdmig.backends._liblxc") is not None:
        found.append("lxc")
    if importlib.util.find_spec("pylxd") is not None:
        found.append("lxd")
    return tuple(found)


def probe() -> HostCapabilities:
    info = criu.probe()
    return HostCapabilities(
        lxdmig_version=__version__,
        hostname=socket.gethostname(),
        kernel_release=platform.release(),
        cpu_model=cpu_model(),
        backends=available_backends(),
        criu_version=info.version_text,
        criu_features=info.features,
        soft_dirty=kernel.soft_dirty_supported(),
        pipe_max_size=kernel.pipe_max_size(),
        cap_sys_resource=kernel.has_cap_sys_resource(),
    )
