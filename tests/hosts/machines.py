"""Two real (virtual) hosts, a and b, booted from tests/hosts/image.py's disk under qemu's software
emulation, joined by one virtual network, each driven over SSH.

Each host has two network cards: the migration network (a point-to-point
Ethernet between the two qemu processes, 198.51.100.0/24, nothing else on
it) and a management card (qemu's user-mode network, restricted: no way
out of the machine; SSH reaches it through a port forwarded from
127.0.0.1). Both hosts also carry the same decoy address (198.18.0.1 on a
docker0 of their own). Each boot gets a data disk of its own: the host's
name and addresses, the SSH key, and the packages to install.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc
from tests.hosts import image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MEMORY_MIB = 2048
NETWORK = "198.51.100"  # the migration network (RFC 5737 TEST-NET-2)
MANAGEMENT = "203.0.113.0/24"  # qemu's user-mode network inside each guest (TEST-NET-3), never routed out
DECOY = "198.18.0.1"  # on every host (RFC 2544's range): an address two hosts share
BOOT_TIMEOUT = 600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Machine:
    name: str
    address: str
    ssh_port: int
    key: Path
    console: Path
    qemu: subprocess.Popen[bytes]

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", "-p", str(self.ssh_port), "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                "-o", "BatchMode=yes", "root@127.0.0.1", command]

    def run(self, *argv: str, timeout: float = 600, check: bool = True,
            input_text: str | None = None) -> proc.Completed:
        """``argv`` on this host, as root, through SSH (quoted for its shell)."""
        return proc.run(self.ssh_argv(shlex.join(argv)), timeout=timeout, check=check, input_text=input_text)

    def shell(self, script: str, timeout: float = 600, check: bool = True) -> proc.Completed:
        return proc.run(self.ssh_argv(script), timeout=timeout, check=check)

    def wait_up(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Seconds until SSH answers and systemd says the system is up."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.qemu.poll() is not None:
                raise RuntimeError(f"host {self.name}'s qemu exited with {self.qemu.returncode}:\n{self.tail()}")
            done = proc.run(self.ssh_argv("systemctl is-system-running --wait"), timeout=120, check=False)
            if done.stdout.strip() in ("running", "degraded"):
                return time.monotonic() - start
            time.sleep(2)
        raise RuntimeError(f"host {self.name} was not up within {timeout:g} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console output)"


def _wait_listening(port: int, qemu: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until a's qemu listens on its end of the link (a probe connection would be taken for b: look)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if qemu.poll() is not None:
            raise RuntimeError(f"host a's qemu exited with {qemu.returncode} before listening on its link")
        listening = proc.run(["ss", "-Hltn", f"sport = :{port}"], timeout=10, check=False).stdout
        if f"127.0.0.1:{port}" in listening:
            return
        time.sleep(0.1)
    raise RuntimeError(f"host a's qemu does not listen on 127.0.0.1:{port} after {timeout:g} s")


def _data_disk(path: Path, files: dict[str, bytes], copies: dict[str, Path]) -> None:
    """An ext4 image holding ``files`` (name: content) and ``copies`` (name: file to copy)."""
    root = path.with_suffix(".d")
    shutil.rmtree(root, ignore_errors=True)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    for name, source in copies.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / name)
    size_mib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) * 11 // 10 // 2**20 + 64
    proc.run(["mkfs.ext4", "-q", "-F", "-L", "lxdmig-data", "-d", str(root), str(path), f"{size_mib}M"],
             timeout=300)
    shutil.rmtree(root)


@contextmanager
def two_hosts(work: Path, packages: Sequence[Path] = ()) -> Iterator[tuple[Machine, Machine]]:
    """Hosts a and b booted and up (SSH answers, systemd running); on each one's data disk (/mnt/lxdmig):
    ``packages`` in packages/, a Debian system container image in images/ (image.container_image), the
    test bed's clients (clients.py); both stopped afterwards, whatever happened."""
    base = image.build()
    meta, tree = image.container_image()
    copies = {f"packages/{deb.name}": deb for deb in packages}
    copies |= {"images/meta.tar.xz": meta, "images/rootfs.tar.xz": tree, "clients.py": ROOT / "testbed/clients.py"}
    key = work / "id_ed25519"
    if not key.exists():
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], timeout=30)
    link_port = _free_port()
    hosts_lines = "".join(f"{NETWORK}.{11 + i} {n}\n" for i, n in enumerate("ab"))
    machines: list[Machine] = []
    try:
        for index, name in enumerate("ab"):
            overlay = work / f"{name}.qcow2"
            overlay.unlink(missing_ok=True)
            proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base.disk), str(overlay)],
                     timeout=60)
            address = f"{NETWORK}.{11 + index}"
            machine_id = hashlib.md5(f"lxdmig test host {name} {base.disk}".encode()).hexdigest()
            conf = f"NAME={name}\nADDRESS={address}\nLINK_MAC=52:54:00:00:01:0{index + 1}\nHOSTS='{hosts_lines}'\n"
            data = work / f"{name}-data.img"
            _data_disk(data, {"host.conf": conf.encode(), "first-boot.sh": (HERE / "first-boot.sh").read_bytes(),
                              "ssh/authorized_keys": key.with_suffix(".pub").read_bytes(),
                              "ssh/id_ed25519": key.read_bytes()}, copies)
            ssh_port = _free_port()
            # a listens, b connects: one Ethernet link between the two, nothing else on it.
            link = f"listen=127.0.0.1:{link_port}" if name == "a" else f"connect=127.0.0.1:{link_port}"
            console = work / f"{name}-console.log"
            argv = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1",
                    "-m", str(MEMORY_MIB), "-nographic", "-nodefaults", "-no-reboot",
                    "-serial", f"file:{console}", "-kernel", str(base.kernel), "-initrd", str(base.initrd),
                    # (A machine id of its own: systemd derives interfaces' MAC addresses from it.)
                    "-append", f"root=LABEL=lxdmig-root rw console=ttyS0 quiet systemd.machine_id={machine_id}",
                    "-drive", f"file={overlay},format=qcow2,if=virtio",
                    "-drive", f"file={data},format=raw,if=virtio,readonly=on",
                    "-netdev", f"socket,id=link,{link}",
                    "-device", f"virtio-net-pci,netdev=link,mac=52:54:00:00:01:0{index + 1}",
                    "-netdev", f"user,id=mgmt,restrict=on,net={MANAGEMENT},hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                    "-device", f"virtio-net-pci,netdev=mgmt,mac=52:54:00:00:02:0{index + 1}"]
            with open(work / f"{name}-qemu.log", "wb") as qemu_log:
                qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=qemu_log,
                                        start_new_session=True)
            machines.append(Machine(name, address, ssh_port, key, console, qemu))
            if name == "a":
                _wait_listening(link_port, qemu)  # (b's qemu connects to a's link at once)
        for machine in machines:
            machine.wait_up()
        yield machines[0], machines[1]
    finally:
        for machine in machines:
            if machine.qemu.poll() is None:
                proc.run(machine.ssh_argv("systemctl poweroff"), timeout=30, check=False)
        for machine in machines:
            try:
                machine.qemu.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(machine.qemu.pid, 9)
                machine.qemu.wait()
