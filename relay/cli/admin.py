"""The operator's commands: ``user``, ``keys``, ``stats`` and ``compact``.

They open the relay's SQLite file and key directory directly (or, with ``--store``, the shared
PostgreSQL database); see :mod:`relay.cli.commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from relay.cli.errors import CliError
from relay.cli.parser import config_from_args
from relay.cli.serve import hold_serve_lock
from relay.ops.config import DB_FILENAME, RelayConfig

#: A stats section: given the config, return name -> value (printed by ``stats``).
StatsProvider = Callable[[RelayConfig], Awaitable[Mapping[str, Any]]]


def _stats_providers() -> dict[str, StatsProvider]:
    """Extra ``stats`` sections beside ``accounts``: the document store's sizes."""
    return {"documents": _document_stats}


async def _document_stats(config: RelayConfig) -> Mapping[str, Any]:
    from relay.store.open import open_document_store

    store = await open_document_store(config, auto_compact=False)
    try:
        st = await store.stats()
        return {
            "documents": st.documents,
            "log_rows": st.log_rows,
            "log_bytes": st.log_bytes,
            "snapshot_bytes": st.snapshot_bytes,
        }
    finally:
        await store.close()


async def _compact(config: RelayConfig) -> dict[str, Any]:
    """Fold every document's log into its snapshot. The running relay compacts by itself (when a
    log outgrows its snapshot); this is for maintenance while it is stopped, since the server
    keeps each document's head in memory. On a PostgreSQL store (``--store``) it is also safe
    while other nodes serve: each compaction locks the document's head row in the database and
    deletes only the rows its snapshot covers (relay/store/postgres.py)."""
    from relay.store.open import open_document_store

    lock = hold_serve_lock(config.data_dir)
    try:
        store = await open_document_store(config, auto_compact=False)
        try:
            results = await store.compact_all()
            return {"compacted": len(results), "documents": [dataclasses.asdict(r) for r in results]}
        finally:
            await store.close()
    finally:
        lock.close()


def _require_data_dir(config: RelayConfig) -> None:
    if config.store_url is not None:
        return  # the data is in the database; connecting tells whether it is there
    if not (config.data_dir / DB_FILENAME).exists():
        raise CliError(f"no relay data in {config.data_dir} (start the relay or 'user add' first)", "no_data")


async def _with_auth(config: RelayConfig, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from relay.auth.accounts import open_auth

    auth = await open_auth(config, origin=f"cli:{os.getpid()}", warm_up=False)
    try:
        return await fn(auth)
    finally:
        await auth.aclose()


def _user_row(user: Any) -> dict[str, Any]:
    row: dict[str, Any] = user.public()
    row["created_at"] = _iso(row["created_at"])
    return row


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise CliError("no password on stdin", "no_password")
    return password


async def _user_add(auth: Any, args: argparse.Namespace, password: str) -> dict[str, Any]:
    name = args.name or args.email.split("@", 1)[0]
    roles = ["admin"] if args.admin else []
    user = await auth.service.register(args.email, password, name, roles=roles)
    return _user_row(user)


async def _user_list(auth: Any) -> list[dict[str, Any]]:
    return [_user_row(u) for u in await auth.store.list_users()]


async def _keys_rotate(auth: Any) -> dict[str, Any]:
    previous = auth.keys.active_kid
    kid = await auth.keys.rotate_async()
    await auth.service.record_keys_rotated()
    return {"active_kid": kid, "retired_kid": previous}


async def _loaded_keys(auth: Any) -> Any:
    return auth.keys


def _keys_list(config: RelayConfig) -> list[dict[str, Any]]:
    from relay.auth.keys import KeyStore

    if config.store_url is not None:  # keys live in the database (relay.auth.keys_pg)
        store = asyncio.run(_with_auth(config, _loaded_keys))
    else:
        store = KeyStore.open(config.keys_dir, create=False)
    return [
        {
            "kid": k.kid,
            "active": k.kid == store.active_kid,
            "created_at": _iso(k.created_at),
            "retired_at": _iso(k.retired_at),
        }
        for k in store.keys()
    ]


async def _stats(auth: Any, config: RelayConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"epoch": auth.epoch, "accounts": await auth.store.counts(now=time.time())}
    for name, provider in _stats_providers().items():
        out[name] = dict(await provider(config))
    return out


def run(args: argparse.Namespace) -> Any:
    """Execute a parsed command; returns the JSON-able result (or raises :class:`CliError`)."""
    from relay.auth.accounts import AccountError

    config = config_from_args(args)
    try:
        if args.command == "user":
            if args.user_command == "add":
                password = _read_password()
                return asyncio.run(_with_auth(config, lambda a: _user_add(a, args, password)))
            _require_data_dir(config)
            if args.user_command == "import":
                from relay.auth.user_import import import_users, parse_lines

                with open(args.file, encoding="utf-8") as source:
                    rows, skipped = parse_lines(source)
                return asyncio.run(_with_auth(config, lambda a: import_users(a, rows, skipped)))
            if args.user_command == "list":
                return asyncio.run(_with_auth(config, _user_list))
            if args.user_command in ("disable", "enable"):
                disabled = args.user_command == "disable"
                user = asyncio.run(_with_auth(config, lambda a: a.service.set_disabled(args.email, disabled)))
                return _user_row(user)
            if args.user_command == "grant":
                user = asyncio.run(
                    _with_auth(
                        config,
                        lambda a: a.service.grant(
                            args.email,
                            role="admin" if args.admin else None,
                            owner=args.owner,
                            staff=args.staff,
                        ),
                    )
                )
                return _user_row(user)
        if args.command == "keys":
            _require_data_dir(config)
            if args.keys_command == "rotate":
                return asyncio.run(_with_auth(config, _keys_rotate))
            return _keys_list(config)
        if args.command == "stats":
            _require_data_dir(config)
            return asyncio.run(_with_auth(config, lambda a: _stats(a, config)))
        if args.command == "compact":
            _require_data_dir(config)
            return asyncio.run(_compact(config))
    except AccountError as e:
        raise CliError(e.message, e.code) from None
    raise CliError(f"unknown command {args.command}", "usage")  # pragma: no cover
