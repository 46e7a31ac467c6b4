"""Run as a test host: act as a trusted but hostile source. Sends a container whose config asks the
destination for what a migration does not need (hooks that run as root there, host-path mounts in the
forms liblxc reads differently from the text, another root filesystem, an include from /tmp, a host
NIC, host root in its id map, its own capabilities, devices, AppArmor rules, namespaces and routes),
skipping the source's preflight, and asks
the destination to restore it. Prints one JSON line: what the destination answered.

With ``files`` last, the config is one a hardened helper takes and the root filesystem holds what the
container's root could not make (a setuid file of host root, a block device node, a host file
capability).

usage: python hostile_peer.py REMOTE CONTAINER WORKDIR MARKER DECOY [files]
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from lxdmig import capabilities, config, proc
from lxdmig.client import open_remote
from lxdmig.errors import LxdmigError
from lxdmig.migrate.filesystem_sync import RSYNC_OPTIONS
from lxdmig.protocol import messages
from lxdmig.protocol.messages import Hello


def hostile_config(name: str, source: Path, marker: str, decoy: str) -> str:
    return "\n".join([
        f"lxc.uts.name = {name}",
        f"lxc.rootfs.path = dir:{decoy}",
        f"lxc.hook.pre-start = /bin/touch {marker}",
        f"lxc.hook.destroy = /bin/touch {marker}",
        "lxc.mount.entry = /etc host-etc none bind,create=dir 0 0",
        f"lxc.mount.entry = {source}/rootfs/planted mnt none bind,create=dir 0 0",
        "lxc.include = /tmp/lxdmig-hostile.conf",
        "lxc.net.0.type = phys",
        "lxc.net.0.link = lo",
        # What liblxc reads differently from the text, or lets the peer choose its confinement with.
        f"lxc.hook.stop = /proc/1/exe callhook /var/lib/lxd \"default\" \"{name}\" stop; touch {marker}",
        "lxc.mount.entry = '/ host-root none rbind,create=dir 0 0'",
        "lxc.mount.entry = etc host-etc2 none bind,create=dir 0 0",
        "lxc.idmapX = u 0 0 65536",
        "lxc.idmap = u 0 0 65536",
        "lxc.cap.keep = sys_admin sys_module",
        "lxc.cgroup2.devices.allow = a",
        "lxc.apparmor.profile = unconfined",
        "lxc.apparmor.raw = mount,",
        "lxc.cgroup.dir = ../..",
        "lxc.namespace.clone = mount pid",
        "lxc.net.1.type = veth",
        "lxc.net.1.veth.ipv4.route = 0.0.0.0/0",
        "lxc.environment = PATH",
        "",
    ])


def plant_files(source: Path) -> str:
    """An unprivileged container's config a hardened helper takes, with a root filesystem holding what its
    root could not make: a setuid file of host root, a block device node, a host file capability."""
    rootfs = source / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "dev").mkdir()
    for opened in (source, rootfs, rootfs / "dev", rootfs / "usr", rootfs / "usr" / "bin"):
        os.chmod(opened, 0o777)  # (everyone may come in, on the destination too, were it kept)
    evil = rootfs / "usr" / "bin" / "evil"
    evil.write_bytes(b"#!/bin/sh\n")
    os.chown(evil, 0, 0)
    os.chmod(evil, 0o4755)
    os.mknod(rootfs / "dev" / "disk", 0o666 | stat.S_IFBLK, os.makedev(7, 0))
    ping = rootfs / "usr" / "bin" / "ping"
    ping.write_bytes(b"")
    os.setxattr(ping, "security.capability", (0x02000001).to_bytes(4, "little") + (1 << 21).to_bytes(4, "little")
                + bytes(12))  # (cap_sys_admin+ep in the host's user namespace)
    return f"lxc.uts.name = {source.name}\nlxc.rootfs.path = dir:{rootfs}\nlxc.idmap = u 0 100000 65536\n" \
           "lxc.idmap = g 0 100000 65536\n"


def reachable_by_nobody(received: Path) -> list[str]:
    """What an unprivileged local user of this machine (nobody) can look at among the planted files the
    destination received into ``received``, before the restore is asked for."""
    planted = [received / "rootfs" / p for p in ("dev/disk", "usr/bin/evil", "usr/bin/ping")]
    return [str(p) for p in planted
            if proc.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "stat", str(p)],
                        timeout=30, check=False).returncode == 0]


def main(remote: str, name: str, work: Path, marker: str, decoy: str, kind: str = "config",
         received: str = "") -> None:
    conf = config.load()
    source = work / name
    if kind == "files":
        (source / "config").parent.mkdir(parents=True)
        (source / "config").write_text(plant_files(source))
    else:
        (source / "rootfs").mkdir(parents=True)
        (source / "rootfs" / "planted").symlink_to("/root")
        (source / "config").write_text(hostile_config(name, source, marker, decoy))
    images = work / "images"
    (images / "dump").mkdir(parents=True)
    (images / "dump" / "inventory.img").write_bytes(b"\0" * 16)
    local = capabilities.probe()
    result: dict[str, object] = {}
    with open_remote(conf, remote, local) as c:
        mid = c.begin_migration(name, str(source))
        hello = work / "hello.json"
        hello.write_text(json.dumps(Hello(messages.PROTOCOL_VERSION, local).header()))
        tunnel = [sys.executable, "-m", "lxdmig.rsync_tunnel", "--config", str(conf.path), "--hello", str(hello),
                  remote, mid]
        synced = proc.run(["rsync", *RSYNC_OPTIONS, "-e", " ".join(tunnel), f"{source}/", f"{remote}:container/"],
                          timeout=120, check=False)
        result["rsync"] = synced.returncode
        if received:  # (where the destination keeps them until the restore)
            result["nobody_reaches"] = reachable_by_nobody(Path(received))
        c.send_tree(mid, images)
        try:
            c.restore(mid, "dump", lazy=False)
            result["restore"] = "restored"
        except LxdmigError as e:
            result["restore"] = f"{type(e).__name__}: {e}"
        # Then change the files the restore request was judged on (a config with a hook, this time).
        (source / "config").write_text(f"lxc.uts.name = {name}\nlxc.hook.start-host = /bin/touch {marker}\n")
        late = proc.run(["rsync", *RSYNC_OPTIONS, "-e", " ".join(tunnel), f"{source}/", f"{remote}:container/"],
                        timeout=120, check=False)
        result["rsync_after_restore"] = [late.returncode, late.stderr]
        c.abort_migration(mid)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5], *sys.argv[6:8])
