"""An LXC container's network seen from the host: its links, cut off their bridges while it is frozen
(isolate) and put back (reconnect, with any network lock a killed CRIU left removed), taken down
before a copy that moved on is killed (silence), and its addresses announced once restored."""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Callable
from pathlib import Path

from lxdmig import proc
from lxdmig.backends.base import Backend
from lxdmig.backends.lxc_rules import network_unlock_commands, nft_unlock_commands
from lxdmig.errors import BackendError, CommandError

log = logging.getLogger(__name__)

_TIMEOUT = 60.0


class LxcNetwork(Backend):
    """LxcBackend's network side (its mixin: LxcBackend has the rest)."""

    @abc.abstractmethod
    def _args(self, container: str) -> list[str]:
        """lxc-* tools' arguments naming ``container``."""

    @abc.abstractmethod
    def init_pid(self, container: str) -> int:
        """The host pid of the container's init (BackendError if it does not run)."""

    def links(self, container: str) -> list[str]:
        try:
            out = proc.run(["lxc-info", *self._args(container), "-H"], timeout=_TIMEOUT).stdout
        except CommandError as e:
            raise BackendError(f"lxc-info failed for {container!r}: {e}") from None
        return [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Link:")]

    def isolate(self, container: str) -> dict[str, str]:
        # Detach the host side of each NIC from its bridge rather than taking
        # it down: a link that goes down marks the container's routes
        # LINKDOWN, and CRIU then cannot restore them on the destination.
        detached = {}
        for link in self.links(container):
            master = Path(f"/sys/class/net/{link}/master")
            if not master.exists():
                continue
            bridge = master.resolve().name
            self._ip("link", "set", "dev", link, "nomaster")
            detached[link] = bridge
        return detached

    def reconnect(self, container: str, detached: dict[str, str]) -> None:
        for link, bridge in detached.items():
            self._ip("link", "set", "dev", link, "master", bridge)
        self._remove_network_lock(container)

    def _remove_network_lock(self, container: str) -> None:
        """Remove the network lock a killed CRIU left in the container (it would drop every packet)."""
        try:
            netns = ["nsenter", "-t", str(self.init_pid(container)), "-n"]
        except BackendError:
            return  # not running: no network namespace, no lock
        # (how to list, the tool that removes, which removals): iptables and ip6tables chains, nftables tables
        checks: list[tuple[list[str], str, Callable[[str], list[list[str]]]]] = [
            ([f"{tool}-save"], tool, network_unlock_commands) for tool in ("iptables", "ip6tables")]
        checks.append((["nft", "list", "tables"], "nft", nft_unlock_commands))
        for listing, tool, removals in checks:
            try:
                commands = removals(proc.run([*netns, *listing], timeout=_TIMEOUT, check=False).stdout)
                for args in commands:
                    proc.run([*netns, tool, *args], timeout=_TIMEOUT, check=False)
            except CommandError as e:  # not installed here: CRIU could not have locked with it either
                log.info("no check for a network lock left in %s: %s", container, e)
                continue
            if commands:
                log.warning("removed the network lock a killed CRIU left in %s (%s)", container, tool)

    def _ip(self, *args: str) -> None:
        """iproute2's ``ip``, not pyroute2 (measured 2026-12-04 on the test machine: ``ip`` takes 1.85 ms
        per call, pyroute2 0.42 ms, but importing pyroute2 takes 113 ms in every ``lxdmig move``, which
        runs 2-4 of these: a dependency that costs more than it saves)."""
        try:
            proc.run(["ip", *args], timeout=_TIMEOUT)
        except CommandError as e:
            raise BackendError(str(e)) from None

    def silence(self, container: str) -> None:
        """Take the container's links down before it is thawed to be killed: its dying tasks close their
        sockets, and the FINs of a source copy whose twin now runs elsewhere would reach the twin's peers
        (a link detached from its bridge still delivers to this host's own addresses, and a forwarding
        host routes them on) and end their connections."""
        for link in self.links(container):
            proc.run(["ip", "link", "set", "dev", link, "down"], timeout=_TIMEOUT, check=False)

    def announce(self, container: str, log_dir: Path) -> tuple[list[proc.Child], list[str]]:
        pid = self.init_pid(container)
        enter = ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
        try:
            out = proc.run([*enter, "ip", "-json", "-4", "address", "show", "scope", "global"], timeout=_TIMEOUT)
        except CommandError as e:
            raise BackendError(f"cannot list {container!r}'s addresses: {e}") from None
        children, announced = [], []
        for link in json.loads(out.stdout or "[]"):
            for addr in link.get("addr_info", []):
                # Gratuitous ARP, 3 times 1 s apart, in the background: the
                # container already runs, nobody should wait for this.
                children.append(proc.Child([*enter, "arping", "-U", "-c", "3", "-I", link["ifname"], addr["local"]],
                                           log_file=log_dir / "arping.log"))
                announced.append(f"{addr['local']} on {link['ifname']}")
        return children, announced
