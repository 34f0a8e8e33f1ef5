"""Tokens and the device private key at rest, readable by nobody but the profile's owner.

Why this module exists at all: an access token lets anyone act as the user until it expires, a
refresh token for a week, and the device key signs records in the user's name until its
certificate expires (docs/records.md, section 11). So these
three never go into the SQLite store (which is the app's data, backed up and copied around), never
into a log line, and never into a ``repr``.

Where they live:

* the OS keyring through ``keyring`` when a real backend exists (macOS Keychain, Windows
  Credential Locker, Secret Service on a Linux desktop). ``keyring`` falls back to a "fail" or
  "null" backend on a headless machine; those are detected and not used, and neither are the
  plaintext backends of ``keyrings.alt``, which would be no better than our own file;
* otherwise a JSON file ``secrets.json`` in the profile directory, created with mode 0600 from the
  start (``os.open`` with ``O_CREAT | O_EXCL`` and an explicit ``fchmod``, then an atomic rename),
  so there is no moment at which another user could open it. A one-time warning says so. A file
  found with group/other bits is tightened; one owned by another user is refused (it could have
  been planted).

Values are handed out wrapped in :class:`Secret`, whose ``repr``/``str`` are redacted, so an
accidental ``print`` or ``log.debug("%s", tokens)`` shows ``Secret(***)``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import secrets as _random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.errors import ClientError
from client.log import get_logger

__all__ = [
    "ACCESS_TOKEN",
    "DEVICE_KEY",
    "NAMES",
    "REFRESH_TOKEN",
    "FileSecretBackend",
    "KeyringSecretBackend",
    "Secret",
    "SecretBackend",
    "SecretStore",
    "SecretStoreError",
    "Tokens",
    "keyring_is_usable",
]

log = get_logger(__name__)

ACCESS_TOKEN = "access_token"
REFRESH_TOKEN = "refresh_token"
DEVICE_KEY = "device_key"
#: Every name this store may hold; ``clear`` removes all of them (keyring has no listing).
NAMES: tuple[str, ...] = (ACCESS_TOKEN, REFRESH_TOKEN, DEVICE_KEY)
SECRETS_FILE = "secrets.json"

_warned_lock = threading.Lock()
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


class SecretStoreError(ClientError):
    """The secrets could not be read or written safely (the message never contains a secret)."""


class Secret:
    """A secret string whose ``repr`` and ``str`` never show it; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a secret is a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        raise TypeError("secrets are not pickled")


@dataclass(frozen=True)
class Tokens:
    access: Secret
    refresh: Secret


class SecretBackend(Protocol):
    """Where secret strings are kept; ``name`` is for ``status`` output (never a secret)."""

    name: str

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...

    def delete(self, key: str) -> None: ...


def keyring_is_usable(backend: Any) -> bool:
    """True for a keyring backend that really stores secrets in an OS facility."""
    try:
        from keyring.backends import chainer, fail, null
    except ImportError:  # pragma: no cover - keyring is a dependency
        return False
    if isinstance(backend, (fail.Keyring, null.Keyring)):
        return False
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return False
    # keyrings.alt's plaintext and "encrypted" file keyrings are either no safer than our own
    # 0600 file or prompt for a password on a terminal; neither suits a background client.
    return not type(backend).__module__.startswith("keyrings.alt")


class KeyringSecretBackend:
    """Secrets in the OS keyring, one entry per name under a service name unique to the profile."""

    name = "keyring"

    def __init__(self, service: str, backend: Any = None) -> None:
        import keyring

        self.service = service
        self._kr = backend if backend is not None else keyring.get_keyring()
        self.name = f"keyring ({type(self._kr).__module__}.{type(self._kr).__name__})"

    def get(self, key: str) -> str | None:
        from keyring.errors import KeyringError

        try:
            value = self._kr.get_password(self.service, key)
        except KeyringError as exc:
            raise SecretStoreError(f"keyring read failed: {type(exc).__name__}") from None
        return value if isinstance(value, str) else None

    def set(self, key: str, value: str) -> None:
        from keyring.errors import KeyringError

        try:
            self._kr.set_password(self.service, key, value)
        except KeyringError as exc:
            raise SecretStoreError(f"keyring write failed: {type(exc).__name__}") from None

    def delete(self, key: str) -> None:
        from keyring.errors import KeyringError, PasswordDeleteError

        try:
            self._kr.delete_password(self.service, key)
        except PasswordDeleteError:
            pass  # not there: deleting is idempotent
        except KeyringError as exc:
            raise SecretStoreError(f"keyring delete failed: {type(exc).__name__}") from None


class FileSecretBackend:
    """Secrets in one JSON file of the profile directory, mode 0600, replaced atomically.

    Reads need no lock (the file is only ever replaced whole); a read-modify-write holds an
    exclusive ``flock`` on a sibling lock file, so two processes of one profile (the CLI logging
    in while ``sync --watch`` refreshes a token) never lose each other's update.
    """

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _read(self) -> dict[str, str]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SecretStoreError(f"cannot open secrets file: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.getuid():
                raise SecretStoreError(f"{self.path} belongs to another user; refusing to use it")
            if st.st_mode & 0o077:
                log.warning("secrets file %s was readable by others; restricting it to its owner", self.path)
                os.fchmod(fh.fileno(), 0o600)
            raw = fh.read()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise SecretStoreError(f"{self.path} is corrupt") from None
        values = data.get("secrets") if isinstance(data, dict) else None
        if not isinstance(values, dict):
            raise SecretStoreError(f"{self.path} is corrupt")
        return {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, str)}

    def _write(self, values: dict[str, str]) -> None:
        if not values:
            self.path.unlink(missing_ok=True)
            return
        body = json.dumps({"v": 1, "secrets": values}).encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.{_random.token_hex(6)}.tmp")
        # O_EXCL: never reuse a file someone else created; mode 0600 from creation, fchmod in
        # case a umask or an odd filesystem widened it. Only then is anything written.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def set(self, key: str, value: str) -> None:
        with self._exclusive():
            values = self._read()
            values[key] = value
            self._write(values)

    def delete(self, key: str) -> None:
        if not self.path.exists():
            return
        with self._exclusive():
            values = self._read()
            if key in values:
                del values[key]
                self._write(values)


class SecretStore:
    """The profile's tokens and device key, in the keyring when there is one, else a 0600 file.

    Args:
        profile_dir: the profile directory (the file lives there; the keyring service name is
            derived from its absolute path, so two profiles never share entries).
        backend: ``auto`` (keyring if usable, else file), ``keyring`` (fail if unusable) or ``file``.
        keyring_backend: a keyring backend object to use instead of ``keyring.get_keyring()``.
    """

    def __init__(
        self,
        profile_dir: str | os.PathLike[str],
        *,
        backend: Literal["auto", "keyring", "file"] = "auto",
        keyring_backend: Any = None,
    ) -> None:
        self.profile_dir = Path(profile_dir).resolve()
        chosen: SecretBackend
        if backend in ("auto", "keyring"):
            kr = keyring_backend
            if kr is None:
                try:
                    import keyring

                    kr = keyring.get_keyring()
                except Exception:  # noqa: BLE001 - a broken keyring install means "no keyring"
                    kr = None
            if kr is not None and keyring_is_usable(kr):
                digest = hashlib.sha256(str(self.profile_dir).encode()).hexdigest()[:16]
                chosen = KeyringSecretBackend(f"quickslot:{digest}", kr)
            elif backend == "keyring":
                raise SecretStoreError("no usable OS keyring backend")
            else:
                chosen = self._file_backend(warn=True)
        else:
            chosen = self._file_backend(warn=False)
        self._backend = chosen

    def _file_backend(self, *, warn: bool) -> FileSecretBackend:
        path = self.profile_dir / SECRETS_FILE
        if warn:
            _warn_once(
                "file-fallback",
                "no OS keyring available; keeping tokens and the device key in %s, readable only by you",
                path,
            )
        return FileSecretBackend(path)

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def __repr__(self) -> str:
        return f"SecretStore({self.profile_dir}, backend={self.backend_name!r})"

    # --- generic -----------------------------------------------------------------------------

    def get(self, name: str) -> Secret | None:
        value = self._backend.get(name)
        return None if value is None else Secret(value)

    def set(self, name: str, value: str | Secret) -> None:
        if name not in NAMES:
            raise ValueError(f"unknown secret name {name!r}")
        self._backend.set(name, value.reveal() if isinstance(value, Secret) else value)

    def delete(self, name: str) -> None:
        self._backend.delete(name)

    def clear(self) -> None:
        """Remove every secret of this profile (logout, or a refresh the relay refused)."""
        for name in NAMES:
            self._backend.delete(name)
        log.info("secrets of profile %s cleared", self.profile_dir)

    # --- typed helpers -----------------------------------------------------------------------

    def tokens(self) -> Tokens | None:
        access, refresh = self.get(ACCESS_TOKEN), self.get(REFRESH_TOKEN)
        if access is None or refresh is None:
            return None
        return Tokens(access, refresh)

    def set_tokens(self, access: str | Secret, refresh: str | Secret) -> None:
        self.set(ACCESS_TOKEN, access)
        self.set(REFRESH_TOKEN, refresh)

    def device_key(self) -> Ed25519PrivateKey | None:
        held = self.get(DEVICE_KEY)
        if held is None:
            return None
        try:
            raw = base64.b64decode(held.reveal(), validate=True)
            return Ed25519PrivateKey.from_private_bytes(raw)
        except ValueError:
            raise SecretStoreError("stored device key is corrupt") from None

    def set_device_key(self, key: Ed25519PrivateKey) -> None:
        self.set(DEVICE_KEY, base64.b64encode(key.private_bytes_raw()).decode("ascii"))
