"""``quickslot-relay user import FILE``: accounts from the original system, with their hashes.

The original QuickSlot backend stored PBKDF2-SHA256 password hashes (passlib's
``$pbkdf2-sha256$...`` or Django's ``pbkdf2_sha256$...``). Importing keeps each hash as it is:
nobody's password is known or reset, and each user's first login verifies the old hash and
replaces it by an Argon2id one (the login migration in ``relay.auth.accounts``). Argon2id hashes in
the relay's own format are accepted too, so a relay's accounts can be moved to another.

The file has one JSON object per line (blank lines and lines starting with ``#`` are skipped)::

    {"email": "ana@example.com", "name": "Ana", "password_hash": "$pbkdf2-sha256$100000$...", "roles": []}

``name`` defaults to the part of the email before ``@``, ``roles`` to none (``["admin"]`` is the
only role). A line that is not valid, an unknown hash format or an email already taken is
skipped and reported with its line number; the others are imported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.auth.account_types import AccountError, normalize_email
from relay.auth.passwords import known_hash_format

ROLES = frozenset({"admin"})


@dataclass(frozen=True)
class ImportRow:
    line: int
    email: str
    name: str
    password_hash: str
    roles: tuple[str, ...]


def parse_lines(lines: Iterable[str]) -> tuple[list[ImportRow], list[dict[str, Any]]]:
    """The rows to import and the lines skipped (``{"line", "reason"}``), in file order."""
    rows: list[ImportRow] = []
    skipped: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            rows.append(_row(number, json.loads(text)))
        except (ValueError, AccountError) as exc:
            reason = exc.message if isinstance(exc, AccountError) else str(exc)
            skipped.append({"line": number, "reason": reason})
    return rows, skipped


def _row(number: int, item: Any) -> ImportRow:
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    email, hashed = item.get("email"), item.get("password_hash")
    if not isinstance(email, str) or not isinstance(hashed, str):
        raise ValueError("email and password_hash are required strings")
    email = normalize_email(email)
    if known_hash_format(hashed) is None:
        raise ValueError("password_hash is neither PBKDF2-SHA256 (passlib or Django) nor Argon2id")
    name = item.get("name") or email.split("@", 1)[0]
    roles = item.get("roles") or []
    if not isinstance(name, str) or not isinstance(roles, list) or not set(roles) <= ROLES:
        raise ValueError(f"name must be a string and roles a list of {sorted(ROLES)}")
    return ImportRow(number, email, name, hashed, tuple(sorted(roles)))


async def import_users(auth: Any, rows: list[ImportRow], skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """Create each account with its hash as given; an email already taken is skipped."""
    imported: list[dict[str, Any]] = []
    for row in rows:
        try:
            name = auth.service.clean_display_name(row.name)
            user_id = await auth.store.create_user(
                email=row.email, display_name=name, password_hash=row.password_hash, roles=row.roles,
                now=auth.service.clock(),
            )  # fmt: skip
        except AccountError as exc:
            skipped.append({"line": row.line, "email": row.email, "reason": exc.message})
            continue
        imported.append({"line": row.line, "email": row.email, "id": user_id})
    skipped.sort(key=lambda s: int(s["line"]))
    return {"imported": imported, "skipped": skipped}
