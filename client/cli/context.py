"""What a command runs with: the profile (``Ctx``, its ``cli.json``), credentials read from the
user, and the sync service built from the profile's settings."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.cli.errors import CliError
from client.cli.schemas import EXIT_AUTH, EXIT_USAGE
from client.local.client import LocalClient
from client.local.events import ClientEvent
from client.storage.secrets import SecretStore
from client.sync.urls import http_base

if TYPE_CHECKING:
    from client.sync.auth import AuthClient
    from client.sync.service import SyncService
    from client.sync.tls import TlsSettings

CONFIG_FILE = "cli.json"
#: The ``--cafile`` given at login, copied into the profile so later commands do not depend on it.
RELAY_CA_FILE = "relay-ca.pem"


# --- the profile ----------------------------------------------------------------------------------------


def default_home() -> Path:
    env = os.environ.get("QUICKSLOT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".quickslot"


def read_config(home: Path) -> dict[str, Any]:
    try:
        data = json.loads((home / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_config(home: Path, **changes: Any) -> None:
    config = read_config(home)
    config.update(changes)
    path = home / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class Ctx:
    """What a command runs with: the opened profile and the parsed arguments."""

    args: argparse.Namespace
    home: Path
    local: LocalClient

    @property
    def config(self) -> dict[str, Any]:
        return read_config(self.home)

    def relay(self, required: bool = True) -> str | None:
        url = getattr(self.args, "relay", None) or self.config.get("relay")
        if url is None and required:
            raise CliError(EXIT_AUTH, "no_relay", "no relay known for this profile: log in with --relay URL")
        return None if url is None else http_base(str(url))

    def auth(self) -> AuthClient:
        from client.sync.auth import AuthClient  # httpx and the device keys: only when talking to a relay

        url = self.relay()
        assert url is not None
        return AuthClient(self.local, url, verify=self.tls().verify())

    def tls(self) -> TlsSettings:
        """How to trust the relay: ``--cafile``/``--pin`` when given, else what login stored.

        Naming a different relay without them starts from the defaults (the system's CAs), so a
        pin never leaks onto a relay it was not meant for.
        """
        from client.sync.tls import TlsSettings

        cafile = getattr(self.args, "cafile", None)
        pins = getattr(self.args, "pin", None) or []
        given = getattr(self.args, "relay", None)
        try:
            if cafile is not None or pins:
                settings = TlsSettings.create(cafile, pins)
            elif given and http_base(str(given)) != self.config.get("relay"):
                settings = TlsSettings()
            else:
                settings = TlsSettings.from_config(self.config.get("tls"), base=self.home)
            url = self.relay(required=False)
            if url is not None:
                settings.check_url(url)
        except ValueError as exc:
            raise CliError(EXIT_USAGE, "bad_tls", str(exc)) from None
        return settings

    def remember_tls(self) -> dict[str, Any]:
        """The TLS settings to store in the profile (a ``--cafile`` is copied into it first, and
        stored relative to it, so the profile does not depend on where the file came from)."""
        settings = self.tls()
        config = settings.to_config()
        if getattr(self.args, "cafile", None) is not None and settings.cafile is not None:
            target = self.home / RELAY_CA_FILE
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(settings.cafile.read_bytes())
            os.replace(tmp, target)
            config["cafile"] = RELAY_CA_FILE
        elif settings.cafile is not None and settings.cafile.parent == self.home:
            config["cafile"] = settings.cafile.name  # kept from an earlier login
        return config

    def require_login(self) -> None:
        if self.local.identity is None:
            raise CliError(EXIT_AUTH, "not_logged_in", "not logged in: run `quickslot login`")


def secret_store(home: Path) -> SecretStore:
    backend = os.environ.get("QUICKSLOT_SECRETS", "auto")
    if backend not in ("auto", "keyring", "file"):
        raise CliError(EXIT_USAGE, "bad_env", "QUICKSLOT_SECRETS must be auto, keyring or file")
    return SecretStore(home, backend=backend)  # type: ignore[arg-type]


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise CliError(EXIT_USAGE, "no_password", "--password-stdin: no password on stdin")
        return line
    if not sys.stdin.isatty():
        raise CliError(EXIT_USAGE, "no_password", "no terminal to prompt on: use --password-stdin")
    return getpass.getpass("password: ")


def read_email(args: argparse.Namespace) -> str:
    if args.email:
        return str(args.email)
    if not sys.stdin.isatty() or args.password_stdin:
        raise CliError(EXIT_USAGE, "no_email", "--email is required")
    return input("email: ").strip()


Result = tuple[dict[str, Any], str]
"""A command's JSON object and its human rendering."""


def drain(local: LocalClient) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while not local.events.empty():
        out.append(local.events.get_nowait())
    return out


def sync_service(ctx: Ctx) -> SyncService:
    from client.sync.service import SyncService

    ctx.require_login()
    url = ctx.relay()
    assert url is not None
    given = getattr(ctx.args, "transport", None)
    if given is not None and given != ctx.config.get("transport"):
        write_config(ctx.home, transport=given)
    transport = transport_of(ctx)
    fallback = None
    if transport != "websocket":
        from client.sync.http_fallback import HttpFallback

        fallback = HttpFallback()
    return SyncService(
        ctx.local,
        url,
        ssl_context=ctx.tls().ssl_context(),
        backoff_initial_s=0.5,
        backoff_max_s=30.0,
        transport=transport,
        http_poll_s=getattr(ctx.args, "poll", None) or 5.0,
        fallback=fallback,
    )


def transport_of(ctx: Ctx) -> str:
    """``--transport``, else the one remembered in the profile, else auto."""
    value = getattr(ctx.args, "transport", None) or ctx.config.get("transport")
    return value if value in ("auto", "websocket", "http") else "auto"


def remember_transport(ctx: Ctx, svc: SyncService) -> None:
    if svc.last_transport is not None:
        write_config(ctx.home, last_transport=svc.last_transport, last_transport_reason=svc.transport_reason)
