"""Who may do what: accounts and their stores, tokens, signing keys, device certificates.

:mod:`relay.auth.accounts` (``AuthComponents``, opened by the app before anything else) ties the
parts together: account stores (:mod:`~relay.auth.account_store_sqlite`,
:mod:`~relay.auth.account_store_pg` with its schema :mod:`~relay.auth.account_schema_pg`, types in
:mod:`~relay.auth.account_types`), JWTs (:mod:`~relay.auth.tokens`), signing keys
(:mod:`~relay.auth.keys`, :mod:`~relay.auth.keys_pg`), device certificates
(:mod:`~relay.auth.device_certs`), password hashing (:mod:`~relay.auth.passwords`), reset mail
(:mod:`~relay.auth.mail`) and rate limits (:mod:`~relay.auth.ratelimit`,
:mod:`~relay.auth.ratelimit_pg`). For the sync path: the users' current rights in memory
(:mod:`~relay.auth.rights`) and the per-address cap on unauthenticated sockets
(:mod:`~relay.auth.anonymous_slots`).
"""
