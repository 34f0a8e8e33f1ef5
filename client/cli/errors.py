"""How failures become exit codes: ``CliError`` and the mapping of library exceptions to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from client.cli.schemas import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_INSECURE,
    EXIT_REJECTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from client.errors import ClientError
from client.local.errors import InvalidRequest, NotAllowed, NotFound, NotLoggedIn


class CliError(ClientError):
    """A failure to report with an exit code (and a stable ``code`` for ``--json``)."""

    def __init__(self, exit_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code
        self.message = message
        #: What happened before the failure and must not be lost with it (booking events learnt
        #: before a peer went away): ``(event as JSON, line for a person)``, printed by :func:`fail`.
        self.happened: list[tuple[dict[str, Any], str]] = []


def classify(exc: BaseException) -> CliError | None:
    """The exit code and error code of a library exception (None: unexpected)."""
    if isinstance(exc, CliError):
        return exc
    # A failed certificate check is not an outage (client.sync.tls is loaded by whatever made one).
    tls = sys.modules.get("client.sync.tls")
    if tls is not None and tls.tls_failure(exc) is not None:
        return CliError(EXIT_INSECURE, "relay_insecure", f"relay failed the TLS check: {exc}")
    # client.sync.service is imported only by the commands that sync: if it is not loaded, none of its
    # exceptions can have been raised.
    sync = sys.modules.get("client.sync.service")
    if sync is not None and isinstance(exc, sync.SyncLoginRequired):
        return CliError(EXIT_AUTH, "login_required", f"{exc}: log in again")
    if sync is not None and isinstance(exc, sync.SyncRelayUnreachable):
        return CliError(EXIT_UNREACHABLE, "relay_unreachable", f"relay unreachable: {exc}")
    if sync is not None and isinstance(exc, sync.SyncStopped):
        return CliError(EXIT_REJECTED, "relay_stopped", str(exc))
    if isinstance(exc, NotLoggedIn):
        return CliError(EXIT_AUTH, "login_required", f"{exc}: log in again")
    # client.sync.auth (httpx, the device keys) is loaded by whatever raised one of its errors.
    auth = sys.modules.get("client.sync.auth")
    if auth is not None and isinstance(exc, auth.LoginRequired):
        return CliError(EXIT_AUTH, "login_required", f"{exc}: log in again")
    if auth is not None and isinstance(exc, auth.AuthError):
        if exc.status == 401:
            return CliError(EXIT_AUTH, exc.code, f"{exc.code}: {exc.message or 'authentication failed'}")
        if exc.status in (400, 422):
            return CliError(EXIT_USAGE, exc.code, str(exc))
        return CliError(EXIT_REJECTED, exc.code, str(exc))
    if auth is not None and isinstance(exc, auth.RelayUnavailable):
        return CliError(EXIT_UNREACHABLE, "relay_unreachable", f"relay unreachable: {exc}")
    if isinstance(exc, InvalidRequest):
        return CliError(EXIT_USAGE, "invalid", str(exc))
    if isinstance(exc, NotAllowed):
        return CliError(EXIT_REJECTED, "not_allowed", str(exc))
    if isinstance(exc, NotFound):
        return CliError(EXIT_REJECTED, "not_found", str(exc))
    if isinstance(exc, ClientError):
        return CliError(EXIT_FAILURE, "client_error", str(exc))
    return None


def fail(err: CliError, as_json: bool) -> int:
    if as_json:
        payload: dict[str, Any] = {"code": err.code, "message": err.message, "exit_code": err.exit_code}
        if err.happened:
            payload["events"] = [event for event, _line in err.happened]
        print(json.dumps({"error": payload}, default=str))
    else:
        for _event, line in err.happened:
            print(line, flush=True)
    from crdt_core.schema import printable  # never raw control characters on a terminal

    print(printable(f"quickslot: {err.message}", multiline=True), file=sys.stderr)
    return err.exit_code


def profile_error(exc: BaseException, home: Path) -> CliError | None:
    """A failure of the profile's own files, with its path and what to do (None: not one)."""
    import sqlite3  # loaded already by the store that raised; not at start-up

    from client.storage.store import DB_FILE

    db = home / DB_FILE
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in str(exc) or "not a database" in str(exc)):
        return CliError(
            EXIT_FAILURE,
            "local_database_damaged",
            f"the profile's database {db} is damaged ({exc}): move it aside (`mv {db} {db}.broken`), "
            "then `quickslot login` and `quickslot sync` fetch your data again from the relay "
            "(changes that were never sent are lost)",
        )
    if isinstance(exc, sqlite3.Error | OSError):
        return CliError(
            EXIT_FAILURE,
            "local_database_unavailable",
            f"cannot use the profile at {home} ({db}: {exc}): check that the directory exists or can be "
            "created and that you may read and write it (pick another one with --home or $QUICKSLOT_HOME)",
        )
    return None
