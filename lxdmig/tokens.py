"""One-time trust tokens: how a new host gets trusted without copying files.

``lxdmig-helper trust add NAME`` on the destination issues a token that
carries the helper's addresses, its certificate fingerprint and a random
secret. ``lxdmig remote add NAME TOKEN`` on the source connects without a
client certificate, checks the helper's fingerprint against the token (no
prompt needed) and redeems the secret with its own certificate; the helper
adds that certificate to its trust store under NAME. A token works once
and expires. Only a hash of the secret is stored.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lxdmig.errors import ConfigError

DEFAULT_LIFETIME = 3600.0
_PREFIX = "lxdmig1:"


class TokenError(ConfigError):
    """A token that is malformed, unknown, used or expired."""


@dataclass(frozen=True)
class Token:
    name: str
    fingerprint: str
    addresses: tuple[str, ...]
    secret: str

    def encode(self) -> str:
        body = json.dumps({"name": self.name, "fingerprint": self.fingerprint,
                           "addresses": list(self.addresses), "secret": self.secret}, separators=(",", ":"))
        return _PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Token:
        text = text.strip()
        if not text.startswith(_PREFIX):
            raise TokenError("not an lxdmig trust token (it should start with 'lxdmig1:')")
        raw = text[len(_PREFIX):]
        try:
            body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            token = cls(str(body["name"]), str(body["fingerprint"]), tuple(str(a) for a in body["addresses"]),
                        str(body["secret"]))
        except (ValueError, KeyError, TypeError) as e:
            raise TokenError(f"damaged trust token: {e}") from None
        if not token.addresses or len(token.fingerprint) != 64:
            raise TokenError("damaged trust token: no address or no certificate fingerprint")
        return token

    @staticmethod
    def looks_like_token(text: str) -> bool:
        return text.strip().startswith(_PREFIX)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Pending tokens of this helper, in a JSON file shared by the CLI and the daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, object]]]:
        """The pending tokens, under a lock shared by the CLI and the daemon; written back only when the
        block changed them and ends without an error, by replacing the file whole (a reader, or a crash,
        never sees half of it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"),
                       os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            now = time.time()
            entries = [e for e in entries if isinstance(e, dict) and float(str(e.get("expires", 0))) > now]
            before = json.dumps(entries)
            yield entries
            if json.dumps(entries) != before or not self.path.exists():
                self._replace(entries)
        finally:
            os.close(lock)

    def _read(self) -> list[dict[str, object]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd) as fh:
            text = fh.read()
        try:
            entries = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path} is damaged ({e}); delete it to drop all pending tokens") from None
        if not isinstance(entries, list):
            raise ConfigError(f"{self.path} is damaged (not a list); delete it to drop all pending tokens")
        return entries

    def _replace(self, entries: list[dict[str, object]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(entries, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def issue(self, name: str, fingerprint: str, addresses: list[str],
              lifetime: float = DEFAULT_LIFETIME) -> Token:
        token = Token(name, fingerprint, tuple(addresses), secrets.token_urlsafe(32))
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.get("name") != name]  # one pending token per name
            entries.append({"name": name, "sha256": _digest(token.secret), "expires": time.time() + lifetime})
        return token

    def redeem(self, secret: str) -> str:
        """The name the secret was issued for; the token is used up."""
        digest = _digest(secret)
        with self._locked() as entries:
            for entry in entries:
                if hmac.compare_digest(str(entry.get("sha256", "")), digest):
                    entries.remove(entry)
                    return str(entry["name"])
        raise TokenError("unknown, used or expired trust token")

    def pending(self) -> list[tuple[str, float]]:
        with self._locked() as entries:
            return [(str(e["name"]), float(str(e["expires"]))) for e in entries]

    def revoke(self, name: str) -> bool:
        with self._locked() as entries:
            before = len(entries)
            entries[:] = [e for e in entries if e.get("name") != name]
            return len(entries) != before
