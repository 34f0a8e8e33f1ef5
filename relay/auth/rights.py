"""The relay's current view of every user's rights, in memory, for validation at arrival time.

Why in memory: validation runs synchronously under a document's lock (``DocumentManager.submit``)
and must ask "may this author still do this?" for whoever signed a record, not only for the
connection's user. A database round trip per record there would serialise every document behind
SQLite. Users with no roles, no shop grants and no disabled flag (most customers) are not stored:
their rights are the default ones. The cache is loaded at start and refreshed by the accounts
hooks (grant, disable), so a removed staff member's next confirm is refused.
"""

from __future__ import annotations

import time

from crdt_core.certs import Certificate
from crdt_core.validation import Rights
from relay.auth.accounts import AccountStore, User


class RightsCache:
    def __init__(self) -> None:
        self._special: dict[str, User] = {}
        self._disabled: set[str] = set()
        #: Device certificates of revoked sessions (logout, refresh reuse, password reset).
        self._revoked_certs: set[str] = set()

    async def load(self, store: AccountStore) -> None:
        for user in await store.list_users():
            self._remember(user)
        self._revoked_certs = set(await store.revoked_cert_ids(now=time.time()))

    async def family_revoked(self, store: AccountStore, family_id: str) -> None:
        """A session ended: the certificates it was given sign nothing new (on every node: the
        accounts' revocation events reach each node's hook)."""
        self._revoked_certs.update(await store.family_cert_ids(family_id, now=time.time()))

    async def refresh(self, store: AccountStore, user_id: str) -> None:
        user = await store.get_user(user_id)
        self._special.pop(user_id, None)
        self._disabled.discard(user_id)
        if user is not None:
            self._remember(user)

    def _remember(self, user: User) -> None:
        if user.disabled:
            self._disabled.add(user.user_id)
        if user.roles or user.owner_of or user.staff_of:
            self._special[user.user_id] = user

    def mark_disabled(self, user_id: str) -> None:
        self._disabled.add(user_id)

    def current(self, user_id: str) -> Rights | None:
        """What the relay grants this user now; None for a disabled account (no rights at all)."""
        if user_id in self._disabled:
            return None
        user = self._special.get(user_id)
        if user is None:
            return Rights(user_id, False, frozenset(), frozenset())
        return Rights(user_id, user.is_admin, frozenset(user.owner_of), frozenset(user.staff_of))

    def is_revoked(self, cert: Certificate) -> bool:
        """A certificate of a disabled account, or of a session that was revoked, signs nothing
        new (see docs/records.md)."""
        return cert.user_id in self._disabled or cert.cert_id in self._revoked_certs

    def can_read(self, user_id: str, doc_id: str) -> bool:
        """Read rights follow the connection's identity (docs/design.md, "Relay").

        Every signed-in user reads the catalog, shops and booking days (availability needs the
        day; records name customers only by opaque id); a ``user:`` document only by its user.
        """
        if user_id in self._disabled:
            return False
        if doc_id.startswith("user:"):
            return doc_id == f"user:{user_id}"
        return True
