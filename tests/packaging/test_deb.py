"""`make deb` builds a Debian package, with Debian's own tooling, whose contents are what contrib/debian says.

scripts/build-deb runs dpkg-buildpackage (debhelper, dh-python/pybuild; the
unit tests run during the build with Debian's python3); the package's
control fields, files and maintainer scripts are read back with dpkg-deb,
it is unpacked into a scratch root, its commands and compiled binding run
from there with Debian's python3, and systemd-analyze verifies its unit.
(Installing it with apt on a real host, under systemd, is the two-host
suite's part.)
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import __version__
from tests.packaging.checks import SYSTEM, binding_loads_from, unit_verifies_in

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def deb() -> Path:
    result = run(str(ROOT / "scripts" / "build-deb"))
    assert result.returncode == 0, result.stdout + result.stderr
    found = [Path(p) for p in result.stdout.split() if Path(p).name == f"lxdmig_{__version__}_amd64.deb"]
    assert len(found) == 1 and found[0].exists(), result.stdout
    return found[0]


def field(deb: Path, name: str) -> str:
    result = run("dpkg-deb", "-f", str(deb), name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_package_depends_on_what_lxdmig_runs(deb: Path) -> None:
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    for name in ("criu (>= 4.0)", "lxc", "rsync", "iproute2", "iputils-arping", "util-linux",
                 "python3-cryptography (>= 38)", "python3-cffi-backend", "liblxc1 (>= 1:3.0.2)"):
        assert name in depends, (name, depends)
    for name in ("python3-lxc", "gcc", "lxc-dev"):  # not used, or build time only
        assert not any(d.startswith(name) for d in depends), name
    assert field(deb, "Architecture") == "amd64"  # (the compiled binding)


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("debroot")
    result = run("dpkg-deb", "-x", str(deb), str(root))
    assert result.returncode == 0, result.stderr
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_package_holds_the_commands_unit_files_and_pages(unpacked: Path) -> None:
    for path in ("usr/bin/lxdmig", "usr/bin/lxdmig-helper", "lib/systemd/system/lxdmig-helper.service",
                 "usr/lib/tmpfiles.d/lxdmig.conf", "usr/lib/sysctl.d/90-lxdmig.conf", "etc/lxdmig/lxdmig.conf",
                 "usr/share/man/man1/lxdmig.1.gz", "usr/share/man/man5/lxdmig.conf.5.gz",
                 "usr/share/man/man8/lxdmig-helper.8.gz", "usr/share/doc/lxdmig/copyright"):
        assert (unpacked / path).exists(), path
    site = unpacked / "usr/lib/python3/dist-packages"
    assert list(site.glob("lxdmig/backends/_liblxc.*.so")), "the compiled binding is missing"
    assert not (site / "testbed").exists() and not (site / "tests").exists()


def test_installing_enables_and_starts_the_helper_and_keeps_the_config(tmp_path: Path, deb: Path) -> None:
    result = run("dpkg-deb", "-e", str(deb), str(tmp_path / "control"))
    assert result.returncode == 0, result.stderr
    postinst = (tmp_path / "control" / "postinst").read_text()
    assert "deb-systemd-helper enable 'lxdmig-helper.service'" in postinst
    assert "deb-systemd-invoke $_dh_action 'lxdmig-helper.service'" in postinst
    assert "sysctl -q -p /usr/lib/sysctl.d/90-lxdmig.conf" in postinst
    assert "systemd-tmpfiles" in postinst and "--create lxdmig.conf" in postinst
    assert "/etc/lxdmig/lxdmig.conf" in (tmp_path / "control" / "conffiles").read_text().split()


def test_its_commands_and_binding_run_with_debians_python(unpacked: Path) -> None:
    site = unpacked / "usr/lib/python3/dist-packages"
    for command in ("lxdmig", "lxdmig-helper"):
        script = unpacked / "usr" / "bin" / command
        assert script.read_text().startswith("#! /usr/bin/python3\n") or \
            script.read_text().startswith("#!/usr/bin/python3\n")
        result = run("/usr/bin/python3", str(script), "--version", env={"PYTHONPATH": str(site), **SYSTEM})
        assert result.returncode == 0 and __version__ in result.stdout, result.stderr
    binding_loads_from(site, "/usr/bin/python3")


def test_systemd_verifies_the_unit_as_unpacked(unpacked: Path) -> None:
    unit_verifies_in(unpacked)


def test_a_criu_lxdmig_can_run_comes_with_it(deb: Path) -> None:
    """Debian 12's criu (3.17) fails on current kernels: make deb builds a CRIU backport from Debian's newer
    source, versioned above every older criu and below Debian's own release of that version. Where the
    release's criu is new enough (Debian 13), that one is the one to install, and nothing is built."""
    from lxdmig import criu

    candidate = run("apt-cache", "policy", "criu").stdout
    release = next((line.split(":", 1)[1].strip() for line in candidate.splitlines() if "Candidate:" in line), "")
    backports = sorted(deb.parent.glob("criu_*.deb"))
    if release and run("dpkg", "--compare-versions", release, "ge", ".".join(map(str, criu.MIN_VERSION))
                       ).returncode == 0:
        assert backports == [], f"this release's criu {release} is new enough; built {backports}"
        return
    assert len(backports) == 1, backports
    version = field(backports[0], "Version")
    assert run("dpkg", "--compare-versions", version, "gt", release or "0").returncode == 0, (version, release)
    upstream = version.split("-", 1)[0]
    assert run("dpkg", "--compare-versions", version, "lt", f"{upstream}-1").returncode == 0, version
    root = deb.parent / "criu-unpacked"
    shutil.rmtree(root, ignore_errors=True)
    assert run("dpkg-deb", "-x", str(backports[0]), str(root)).returncode == 0
    try:
        out = run(str(root / "usr/sbin/criu"), "--version").stdout
        assert f"Version: {upstream}" in out, out
    finally:
        shutil.rmtree(root, ignore_errors=True)
