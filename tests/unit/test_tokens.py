"""One-time trust tokens: used once, expire, and only a hash is stored."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lxdmig.tokens import Token, TokenError, TokenStore

FP = "ab" * 32


def test_token_round_trip() -> None:
    t = Token("host-a", FP, ("192.0.2.2:8445",), "s3cret")
    assert Token.decode(t.encode()) == t
    assert Token.looks_like_token(t.encode()) and not Token.looks_like_token("192.0.2.2")


@pytest.mark.parametrize("text", ["192.0.2.2:8445", "lxdmig1:!!!", "lxdmig1:e30",
                                  Token("x", "short", ("a",), "s").encode(), Token("x", FP, (), "s").encode()])
def test_damaged_tokens_are_refused(text: str) -> None:
    with pytest.raises(TokenError):
        Token.decode(text)


def test_redeem_once_and_only_a_hash_is_kept(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("host-a", FP, ["192.0.2.2:8445"])
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert token.secret not in store.path.read_text()
    assert [n for n, _ in store.pending()] == ["host-a"]
    with pytest.raises(TokenError):
        store.redeem("wrong")
    assert store.redeem(token.secret) == "host-a"
    with pytest.raises(TokenError, match="unknown, used or expired"):
        store.redeem(token.secret)
    assert store.pending() == []


def test_expired_token_is_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("host-a", FP, ["x"], lifetime=-1)
    with pytest.raises(TokenError):
        store.redeem(token.secret)


def test_new_token_replaces_pending_one_and_revoke(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    old = store.issue("h", FP, ["x"])
    new = store.issue("h", FP, ["x"])
    with pytest.raises(TokenError):
        store.redeem(old.secret)
    assert store.revoke("h") and not store.revoke("h")
    with pytest.raises(TokenError):
        store.redeem(new.secret)


def test_a_failed_redeem_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """A stranger's guess costs a read, never a write: the file is not rewritten (a flood of guesses
    must not wear the disk or race a real redeem)."""
    store = TokenStore(tmp_path / "tokens.json")
    store.issue("a", "f" * 64, ["192.0.2.2:8445"])
    before = (tmp_path / "tokens.json").stat()
    for _ in range(3):
        with pytest.raises(TokenError):
            store.redeem("a guess")
    after = (tmp_path / "tokens.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_change_replaces_the_file_whole(tmp_path: Path) -> None:
    """The file is replaced by rename, so a reader sees the old list or the new one, never half; a symlink
    planted where it lives is replaced, not followed."""
    path = tmp_path / "tokens.json"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    path.symlink_to(victim)
    store = TokenStore(path)
    with pytest.raises(OSError):  # (reading through the planted link is refused)
        store.issue("a", "f" * 64, ["192.0.2.2:8445"])
    path.unlink()
    token = store.issue("a", "f" * 64, ["192.0.2.2:8445"])
    inode = path.stat().st_ino
    assert store.redeem(token.secret) == "a"
    assert path.stat().st_ino != inode and json.loads(path.read_text()) == []
    assert victim.read_text() == "keep" and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock", "victim"]
