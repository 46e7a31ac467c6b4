"""Source-side secrets and pinned certificates (F10): a token or password can come from stdin and
one on the command line gets a note; LXD's pinned certificate goes beside this host's certificate,
not to a shared temporary directory."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from lxdmig import lxd_api, tls
from lxdmig.cli import remote_cmd
from lxdmig.errors import ConfigError
from lxdmig.remotes import LxdRemote


def test_secrets_are_read_from_stdin_and_noted_on_the_command_line(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    args = argparse.Namespace(token="-", password=None)
    remote_cmd._secrets_from_stdin(args)
    assert args.token == "s3cret" and capsys.readouterr().err == ""
    args = argparse.Namespace(token=None, password="visible")
    remote_cmd._secrets_from_stdin(args)
    assert "visible in the process list" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(ConfigError, match="nothing on stdin"):
        remote_cmd._secrets_from_stdin(argparse.Namespace(token="-", password=None))


def test_the_pinned_lxd_certificate_is_written_beside_ours_and_never_through_a_link(tmp_path: Path) -> None:
    ident = tls.ensure_identity(tmp_path / "id" / "c.crt", tmp_path / "id" / "c.key", "b")
    remote = LxdRemote("b", "https://192.0.2.2:8443", ident.cert.read_bytes())
    path = lxd_api._pinned_file(remote, tmp_path)
    assert path.parent == tmp_path and path.read_bytes() == remote.certificate
    victim = tmp_path / "victim"
    victim.write_text("keep")
    path.unlink()
    path.symlink_to(victim)
    assert lxd_api._pinned_file(remote, tmp_path) == path
    assert victim.read_text() == "keep" and not path.is_symlink() and path.read_bytes() == remote.certificate
