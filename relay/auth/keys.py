"""The relay's Ed25519 signing keys: one active key signs, every published key verifies.

Tokens, device certificates and stamps are all signed with the active key, so peers can verify
any of them offline with ``/.well-known/jwks.json``. Rotation adds a new active key and retires
the old one: a retired key's private half is deleted (nothing should sign with it again), its
public half stays in the manifest and in the JWKS because certificates and stamps signed with it
live on in documents. Tokens bound to a retired key stay valid until they expire (see
``relay.auth.tokens``, which also refuses tokens a retired key claims to have issued after retiring).

On disk, under ``DIR/keys/`` (directory 0700)::

    manifest.json   {"version": 1, "active": KID, "keys": [{"kid", "public" (base64url raw
                    32 bytes), "created_at", "retired_at"}]}
    KID.key         PKCS#8 PEM private key of a key that may still sign (mode 0600)

The kid is the RFC 7638 JWK thumbprint of the public key, so it is derived, not invented.
Writes go to a temporary file and are renamed into place under an exclusive ``flock``, so the
operator CLI can rotate while the server runs; the server reloads on the ``keys_rotated`` event.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crdt_core.b64 import b64url, b64url_decode
from crdt_core.certs import SigningKey
from relay.errors import RelayError

MANIFEST = "manifest.json"
LOCKFILE = ".lock"


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint_kid(public_raw: bytes) -> str:
    """RFC 7638 thumbprint of the OKP JWK: members crv, kty, x in lexical order, no spaces."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64url(public_raw)}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class PublicKeyInfo:
    """A published verification key."""

    kid: str
    public: bytes
    created_at: float
    retired_at: float | None

    @property
    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(self.public),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }


@dataclass(frozen=True)
class ActiveKey:
    """The key that signs now. Same shape as ``crdt_core.certs.SigningKey`` (kid, private)."""

    kid: str
    private: Ed25519PrivateKey


class KeyStoreError(RelayError, RuntimeError):
    """The key directory is unusable (corrupt manifest, missing active private key)."""


class KeyStore:
    """Loads, creates, rotates and publishes the relay's signing keys."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self._public: dict[str, PublicKeyInfo] = {}
        self._active: ActiveKey | None = None
        self._manifest_stamp: tuple[int, int] | None = None

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, keys_dir: Path, *, create: bool = True) -> KeyStore:
        """Open the key directory, creating the first key if there is none and ``create``."""
        store = cls(keys_dir)
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(keys_dir, 0o700)
        if create and not (keys_dir / MANIFEST).exists():
            with store._locked():
                if not (keys_dir / MANIFEST).exists():
                    store._add_key_locked(manifest={"version": 1, "active": None, "keys": []})
        store.reload()
        return store

    def reload(self) -> None:
        """Re-read the manifest and the active private key (after an operator rotation).

        Holds the directory lock shared, so it never sees a rotation half done."""
        with self._locked(shared=True):
            self._reload_locked()

    def _reload_locked(self) -> None:
        manifest, stamp = self._read_manifest_with_stamp()
        public: dict[str, PublicKeyInfo] = {}
        for entry in manifest["keys"]:
            raw = b64url_decode(entry["public"])
            if thumbprint_kid(raw) != entry["kid"]:
                raise KeyStoreError(f"manifest entry {entry['kid']} does not match its public key")
            public[entry["kid"]] = PublicKeyInfo(
                kid=entry["kid"],
                public=raw,
                created_at=entry["created_at"],
                retired_at=entry.get("retired_at"),
            )
        active_kid = manifest.get("active")
        if active_kid not in public:
            raise KeyStoreError("manifest has no active key")
        private = self._load_private(active_kid)
        if raw_public(private.public_key()) != public[active_kid].public:
            raise KeyStoreError(f"private key file for {active_kid} does not match the manifest")
        self._install(public, ActiveKey(kid=active_kid, private=private))
        # Only a successful load counts, so reload_if_changed retries after a failure.
        self._manifest_stamp = stamp

    def _install(self, public: dict[str, PublicKeyInfo], active: ActiveKey) -> None:
        """Swap in a loaded key set at once (readers never see half of one)."""
        if active.kid not in public or raw_public(active.private.public_key()) != public[active.kid].public:
            raise KeyStoreError(f"the private key of {active.kid} does not match its public key")
        self._public = public
        self._active = active

    def reload_if_changed(self) -> bool:
        """Reload when the manifest file changed on disk; cheap enough to call every second."""
        try:
            st = (self.keys_dir / MANIFEST).stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._manifest_stamp:
            return False
        self.reload()
        return True

    # -- async face (what the server and the CLI call; the PostgreSQL key store overrides it) -----

    async def reload_async(self) -> None:
        """:meth:`reload` off the event loop (it takes a file lock)."""
        await asyncio.to_thread(self.reload)

    async def reload_if_changed_async(self) -> bool:
        return await asyncio.to_thread(self.reload_if_changed)

    async def rotate_async(self) -> str:
        return await asyncio.to_thread(self.rotate)

    # -- using -----------------------------------------------------------------------------------

    @property
    def active(self) -> ActiveKey:
        if self._active is None:
            raise KeyStoreError("key store not loaded")
        return self._active

    @property
    def active_kid(self) -> str:
        return self.active.kid

    def sign(self, data: bytes) -> tuple[str, bytes]:
        """Sign ``data`` with the active key; returns ``(kid, 64-byte signature)``."""
        key = self.active
        return key.kid, key.private.sign(data)

    def public_keys(self) -> dict[str, bytes]:
        """Every verification key as ``{kid: raw 32-byte public key}`` (active and retired)."""
        return {kid: info.public for kid, info in self._public.items()}

    def key_info(self, kid: str) -> PublicKeyInfo | None:
        return self._public.get(kid)

    def keys(self) -> list[PublicKeyInfo]:
        return sorted(self._public.values(), key=lambda k: k.created_at)

    def jwks(self) -> dict[str, Any]:
        """The JWK Set served at ``/.well-known/jwks.json`` (active key first)."""
        ordered = sorted(self._public.values(), key=lambda k: (k.kid != self.active_kid, -k.created_at))
        return {"keys": [info.jwk() for info in ordered]}

    def signing_key(self) -> SigningKey:
        """The active key as crdt_core sees it: it signs device certificates and stamps."""
        key = self.active
        return SigningKey(kid=key.kid, private=key.private)

    # -- rotating --------------------------------------------------------------------------------

    def rotate(self) -> str:
        """Make a new active key, retire the previous one, and return the new kid."""
        with self._locked():
            manifest = self._read_manifest()
            previous = manifest.get("active")
            kid = self._add_key_locked(manifest=manifest)
            if previous and previous != kid:
                # Nothing signs with a retired key again; its public half stays published.
                (self.keys_dir / f"{previous}.key").unlink(missing_ok=True)
            self._reload_locked()
        return kid

    def _add_key_locked(self, *, manifest: dict[str, Any]) -> str:
        private = Ed25519PrivateKey.generate()
        raw = raw_public(private.public_key())
        kid = thumbprint_kid(raw)
        now = time.time()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._write_atomic(self.keys_dir / f"{kid}.key", pem, 0o600)
        for entry in manifest["keys"]:
            if entry.get("retired_at") is None:
                entry["retired_at"] = now
        manifest["keys"].append({"kid": kid, "public": b64url(raw), "created_at": now, "retired_at": None})
        manifest["active"] = kid
        self._write_atomic(
            self.keys_dir / MANIFEST, json.dumps(manifest, indent=2).encode("utf-8") + b"\n", 0o600
        )
        return kid

    # -- files -----------------------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any]:
        manifest, _ = self._read_manifest_with_stamp()
        return manifest

    def _read_manifest_with_stamp(self) -> tuple[dict[str, Any], tuple[int, int]]:
        path = self.keys_dir / MANIFEST
        try:
            st = path.stat()
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise KeyStoreError(f"no key manifest at {path}") from None
        except ValueError as e:
            raise KeyStoreError(f"corrupt key manifest {path}: {e}") from e
        if not isinstance(manifest, dict) or not isinstance(manifest.get("keys"), list):
            raise KeyStoreError(f"corrupt key manifest {path}")
        return manifest, (st.st_mtime_ns, st.st_ino)

    def _load_private(self, kid: str) -> Ed25519PrivateKey:
        path = self.keys_dir / f"{kid}.key"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise KeyStoreError(f"private key file missing for active key {kid}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError(f"{path} is not an Ed25519 private key")
        return key

    @staticmethod
    def _write_atomic(path: Path, data: bytes, mode: int) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[None]:
        fd = os.open(self.keys_dir / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
