"""`make rpm` builds an RPM for this architecture whose contents are what contrib/lxdmig.spec promises.

The binary RPM is built with Debian's rpmbuild (scripts/build-rpm), its
file list and flags are read back with rpm, it is installed into a scratch
root, and systemd-analyze verifies the unit as installed there.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.checks import binding_loads_from, unit_verifies_in

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def rpm() -> Path:
    result = run(str(ROOT / "scripts" / "build-rpm"))
    assert result.returncode == 0, result.stdout + result.stderr
    source = [Path(p) for p in result.stdout.split() if p.endswith(".src.rpm")]
    binary = [Path(p) for p in result.stdout.split() if p.endswith(".rpm") and Path(p) not in source]
    assert len(binary) == 1 and len(source) == 1 and source[0].exists()
    return binary[0]


def files(rpm: Path) -> dict[str, tuple[str, str]]:
    """path -> (rpm file flags, permissions)."""
    out = run("rpm", "-qp", "--qf", "[%{FILENAMES}\t%{FILEFLAGS:fflags}\t%{FILEMODES:perms}\n]", str(rpm))
    assert out.returncode == 0, out.stderr
    return {path: (flags, perms) for path, flags, perms in (line.split("\t") for line in out.stdout.splitlines())}


def test_the_package_holds_what_the_spec_promises(rpm: Path) -> None:
    found = files(rpm)
    for path in ("/usr/bin/lxdmig", "/usr/bin/lxdmig-helper", "/usr/lib/systemd/system/lxdmig-helper.service",
                 "/usr/lib/tmpfiles.d/lxdmig.conf", "/usr/lib/sysctl.d/90-lxdmig.conf",
                 "/usr/share/licenses/lxdmig-0.1.0/LICENSE"):
        assert path in found, path
    assert any(p.startswith("/usr/share/man/man1/lxdmig.1") for p in found)
    assert any(p.startswith("/usr/share/man/man5/lxdmig.conf.5") for p in found)
    assert any(p.startswith("/usr/share/man/man8/lxdmig-helper.8") for p in found)
    assert any(p.endswith("site-packages/lxdmig/migrate/move.py") for p in found)
    # The liblxc binding comes compiled; the test bed (testbed/, workload.c) stays in the checkout.
    assert any(p.endswith(".so") and "/site-packages/lxdmig/backends/_liblxc." in p for p in found)
    assert not [p for p in found if "testbed" in p or p.endswith("workload.c")]
    assert found["/etc/lxdmig/lxdmig.conf"][0] == "cn", "the config file must be %config(noreplace)"
    assert found["/var/lib/lxdmig"][1] == "drwx------"
    arch = run("rpm", "-qp", "--qf", "%{ARCH}", str(rpm)).stdout
    assert arch == run("rpm", "--eval", "%{_arch}").stdout.strip() != "noarch"
    requires = run("rpm", "-qpR", str(rpm)).stdout.split("\n")
    for name in ("criu >= 4.0", "lxc", "python3-cryptography", "python3-cffi", "rsync"):
        assert name in requires, name
    for name in ("gcc", "lxc-devel", "python3-devel", "python3-lxc"):  # build time only, or not used
        assert name not in requires, name
    scripts = run("rpm", "-qp", "--scripts", str(rpm)).stdout
    assert "postinstall" in scripts and "preuninstall" in scripts


def test_rpmlint_finds_no_errors(rpm: Path) -> None:
    # (contrib/lxdmig-rpmlint.toml: what it reports that is no defect of this package, each with why.)
    source = next(rpm.parent.parent.parent.glob("SRPMS/*.src.rpm"))
    result = run("rpmlint", "-c", "contrib/lxdmig-rpmlint.toml", "contrib/lxdmig.spec", str(source), str(rpm))
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert " 0 errors," in summary, result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("rpmroot")
    assert run("rpm", "--root", str(root), "--initdb").returncode == 0
    result = run("rpm", "--root", str(root), "-i", "--nodeps", "--noscripts", str(rpm))
    assert result.returncode == 0, result.stderr
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_it_installs_and_its_commands_run(installed: Path) -> None:
    site = next(installed.glob("usr/lib/python3*/site-packages"))
    for command in ("lxdmig", "lxdmig-helper"):
        script = installed / "usr" / "bin" / command
        assert script.read_text().startswith("#!/usr/bin/python3\n")
        result = run("python3", str(script), "--version", env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0 and "0.1.0" in result.stdout, result.stderr
    binding_loads_from(site, "python3")


def test_systemd_verifies_the_unit_as_installed(installed: Path) -> None:
    unit_verifies_in(installed)


def test_the_shipped_config_parses_and_sysctl_raises_pipe_size(installed: Path) -> None:
    from lxdmig import config

    conf = config.load(installed / "etc/lxdmig/lxdmig.conf")
    assert conf.port == config.DEFAULT_PORT
    assert "fs.pipe-max-size = 4194304" in (installed / "usr/lib/sysctl.d/90-lxdmig.conf").read_text()
