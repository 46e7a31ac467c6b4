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


class _Response:
    def __init__(self, status: int, body: dict[str, object]) -> None:
        self.status_code, self._body = status, body

    def json(self) -> dict[str, object]:
        return self._body


class _IncusApi:
    """What lxd_api.trust uses of pylxd's client, answering as Incus 6.0 does."""

    def __init__(self, cert: Path, token: str) -> None:
        self.session = argparse.Namespace(cert=(str(cert), "key"))
        self.token = token
        self.posted: list[dict[str, str]] = []
        self.certificates = argparse.Namespace(post=self._post)
        self.trusted = False

    def _post(self, json: dict[str, str]) -> _Response:
        self.posted.append(json)
        if json.get("trust_token") != self.token:  # (Incus ignores a "password")
            return _Response(403, {"error": "not authorized"})
        self.trusted = True
        return _Response(201, {})

    def get(self) -> _Response:
        return _Response(200, {"metadata": {"auth": "trusted" if self.trusted else "untrusted",
                                            "environment": {"server": "incus"}}})


class _Client:
    def __init__(self, api: _IncusApi) -> None:
        self.api, self.host_info = api, {"auth": "untrusted"}

    @property
    def trusted(self) -> bool:
        return self.host_info["auth"] == "trusted"


@pytest.mark.host  # (pylxd, which lxdmig needs for LXD and Incus instances only)
def test_incus_gets_the_token_as_trust_token_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    ident = tls.ensure_identity(tmp_path / "c.crt", tmp_path / "c.key", "a")
    remote = LxdRemote("b", "https://192.0.2.2:8444", ident.cert.read_bytes(), "incus")
    api = _IncusApi(ident.cert, "tok")
    with pytest.raises(lxd_api.LxdUntrusted, match="Incus of remote b refused the trust token: not authorized"):
        lxd_api.trust(_Client(api), remote, "wrong")
    client = _Client(api)
    lxd_api.trust(client, remote, "tok")
    assert client.trusted and api.posted[-1]["trust_token"] == "tok" and "password" not in api.posted[-1]
    assert "BEGIN" not in api.posted[-1]["certificate"]  # (the certificate's base64 body, as Incus wants it)
    with pytest.raises(ConfigError, match="is Incus, not LXD: add it with --incus"):
        lxd_api.check_kind(client, LxdRemote("b", remote.url, remote.certificate))


def test_a_token_given_as_the_address_is_noted_and_one_from_stdin_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from lxdmig.cli import main

    conf = tmp_path / "lxdmig.conf"
    conf.write_text(f"[tls]\ncert = {tmp_path / 'c.crt'}\nkey = {tmp_path / 'c.key'}\n"
                    f"[client]\nremotes = {tmp_path / 'remotes.json'}\n")
    damaged = "lxdmig1:bm90IGEgdG9rZW4"  # (refused after the note: nothing is contacted)
    assert main(["--config", str(conf), "remote", "add", "b", damaged]) != 0
    err = capsys.readouterr().err
    assert "visible in the process list" in err and "'lxdmig remote add b -'" in err and "damaged" in err, err
    monkeypatch.setattr("sys.stdin", io.StringIO(damaged + "\n"))
    assert main(["--config", str(conf), "remote", "add", "b", "-"]) != 0
    err = capsys.readouterr().err
    assert "visible in the process list" not in err and "damaged" in err, err
