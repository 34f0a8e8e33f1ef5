"""The relay's exception tree: every exception the relay defines derives from :class:`RelayError`.

Each subtree lives beside the code that raises it; this module holds only the root, so any layer
can import it (it imports nothing)::

    RelayError
    ├── AccountError                  relay.auth.account_types: a refused account operation,
    │   ├── InvalidEmail, WeakPassword,   with ``code`` and the HTTP ``status`` the API answers
    │   │   InvalidInput, EmailTaken,
    │   │   InvalidCredentials, AccountDisabled,
    │   │   RefreshTokenReused, SessionRevoked,
    │   │   InvalidResetToken, UserNotFound
    │   └── StoreUnavailable          the account database cannot be reached (503)
    ├── TokenError                    relay.auth.tokens: an access or refresh token refused
    │   ├── TokenInvalid
    │   │   └── ProofFailed           a bound token without a valid proof of possession
    │   ├── TokenExpired
    │   └── TokenRevoked
    ├── KeyStoreError                 relay.auth.keys: signing keys unreadable (also a RuntimeError)
    ├── StoreError                    relay.store.base: a document store operation failed
    │   ├── StoreClosedError
    │   ├── StampConflictError        another node used the stamp numbers first (retried)
    │   └── OutcomeUnknownError       relay.store.group_commit: the commit may or may not be durable
    ├── DocumentsError                relay.documents.results
    │   ├── CapacityError             too many documents pinned to load another
    │   └── ManagerClosedError        the manager is shutting down
    ├── DecodeError                   relay.fanout.base: a fan-out message that does not decode
    │                                 (also a ValueError)
    ├── ApiError                      relay.http.api: an HTTP error answer (status, code, message)
    └── CliError                      relay.cli.errors: a command failed (exit code 1)

Not in the tree, on purpose: what the relay refuses of a client's update is the core's verdict
(:class:`crdt_core.errors.ValidationError`, :class:`crdt_core.errors.EngineError`), answered with
the reason code the core gives; configuration mistakes are ``ValueError`` (argparse turns them
into a usage error); operating-system failures stay ``OSError``.
"""

from __future__ import annotations


class RelayError(Exception):
    """Root of the relay's own exceptions (see the tree above)."""
