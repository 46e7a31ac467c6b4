"""CRIU's dump command for an LXC container, built by lxdmig on hosts with cgroup2 only.

liblxc asks a container's monitor for the container's freezer cgroup before
it dumps it. The monitor of a container liblxc *restored* on a host with
cgroup2 only never learns that cgroup2 has a freezer (liblxc sets that in
a finalize step that runs when a container starts, not when one is
restored) and answers nothing: "Failed getting freezer path", and a
container that moved to such a host could never move on. Every liblxc
release distributions ship has this (5.0.x, 6.0.x; fixed in LXC's main
branch by commit f30cbb86, May 2026, in no release yet).

On those hosts lxdmig runs the command liblxc's ``exec_criu`` would run,
from what the host shows instead of what the monitor says: the freezer is
the container's own cgroup (``lxc.payload.NAME``, where its init is), the
bind mounts are the config's ``lxc.mount.entry`` lines, the console is the
container's ``/dev/console``. Two things liblxc also passes are left out
because they do nothing on cgroup2: ``--cgroup-root CONTROLLERS:PATH``
(CRIU names the cgroup2 hierarchy "", which no controller list matches)
and the move of CRIU into the host's base cgroup first (for lxcfs, whose
files answer readers outside the container's cgroups; a host with lxcfs
is not proven yet).

    dump_argv("dump", DIR, init_pid=PID, freezer=FREEZER, mount_maps=[...], tty_id=ID)
"""

from __future__ import annotations

import os
from pathlib import Path

# What liblxc passes to every dump (src/lxc/criu.c, exec_criu).
_COMMON = ("--tcp-established", "--file-locks", "--link-remap", "--manage-cgroups=full", "--ext-mount-map", "auto",
           "--enable-external-sharing", "--enable-external-masters", "--enable-fs", "hugetlbfs",
           "--enable-fs", "tracefs")
TTY_INFO = "tty.info"  # where the console's id goes for liblxc's restore (--inherit-fd on the destination)


def dump_argv(action: str, directory: Path, *, init_pid: int, freezer: Path, mount_maps: list[str], tty_id: str,
              parent: str | None = None, address: str = "", port: int = 0, leave_running: bool = True) -> list[str]:
    """``criu pre-dump|dump ...`` for the container whose init is ``init_pid``, as liblxc builds it:
    ``parent`` chains to the previous pre-dump's images (relative to ``directory``), ``address`` and
    ``port`` name a page server, ``leave_running`` keeps the tasks in place after a dump."""
    if action not in ("pre-dump", "dump"):
        raise ValueError(f"not a dump action: {action!r}")
    argv = ["criu", action, *_COMMON, "-D", str(directory), "-o", str(directory / f"{action}.log")]
    for mapping in mount_maps:
        argv += ["--ext-mount-map", mapping]
    argv += ["-t", str(init_pid), "--skip-in-flight", "--freeze-cgroup", str(freezer)]
    if tty_id:
        argv += ["--ext-mount-map", "/dev/console:console", "--external", tty_id]
    if parent is not None:
        argv += ["--prev-images-dir", parent, "--track-mem"]
    if address and port:
        argv += ["--page-server", "--address", address, "--port", str(port)]
    argv.append("--force-irmap")
    if action == "dump" and leave_running:
        argv.append("--leave-running")
    return argv


def bind_mount_maps(items: list[tuple[str, str]]) -> list[str]:
    """``--ext-mount-map`` values for the config's bind mounts (``lxc.mount.entry`` with bind or rbind;
    an empty ``lxc.mount.entry =`` clears the ones before it, as in liblxc)."""
    targets: list[str] = []
    for key, value in items:
        if key != "lxc.mount.entry":
            continue
        fields = value.split()
        if not fields:
            targets.clear()
            continue
        if len(fields) >= 4 and {"bind", "rbind"} & set(fields[3].split(",")):
            targets.append(fields[1])
    return [f"/{target}:{target}" for target in targets]


def console_id(init_pid: int, items: list[tuple[str, str]]) -> str:
    """CRIU's name for the container's console (``tty[RDEV:DEV]``), "" when it has none
    (``lxc.console.path = none``)."""
    if dict(items).get("lxc.console.path") == "none":  # (the last line of a key wins, as in liblxc)
        return ""
    st = os.stat(f"/proc/{init_pid}/root/dev/console")
    return f"tty[{st.st_rdev:x}:{st.st_dev:x}]"
