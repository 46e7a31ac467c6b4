"""What the RPM and the Debian package tests both check of a package unpacked into a scratch root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SYSTEM = {"PATH": "/usr/bin:/bin"}


def binding_loads_from(site: Path, python: str) -> None:
    """The package's compiled liblxc binding loads with ``python`` from ``site``, not the checkout's (-P)."""
    load = "from lxdmig.backends import liblxc_migrate as m; b = m.load(); print(b.__file__, b.lib.MIGRATE_DUMP)"
    binding = subprocess.run([python, "-P", "-c", load], env={"PYTHONPATH": str(site), **SYSTEM},
                             capture_output=True, text=True, timeout=60)
    assert binding.returncode == 0 and binding.stdout.startswith(str(site)) and binding.stdout.endswith(" 1\n"), \
        binding.stdout + binding.stderr


def unit_verifies_in(root: Path) -> None:
    """systemd-analyze verifies the package's unit in ``root``, which gets the host's own units (the
    targets the unit refers to) and /bin/kill."""
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", dirs_exist_ok=True,
                    symlinks=True, ignore_dangling_symlinks=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/kill", root / "bin" / "kill")
    result = subprocess.run(["systemd-analyze", f"--root={root}", "verify", "lxdmig-helper.service"],
                            env={"MANPATH": str(root / "usr/share/man"), "SYSTEMD_LOG_COLOR": "0", **SYSTEM},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
