"""The offline-first client: a library over one profile, its sync with the relay and peers, a CLI.

Layers, bottom up (each imports only the ones below it; ``tests/test_import_cycles.py``):

* ``storage``: the profile's SQLite store and its secrets at rest;
* ``local``: :class:`~client.local.client.LocalClient`, the offline library API (projections, events);
* ``sync`` and ``peer``: the sync with the relay (websocket or plain HTTP) and with another client;
* ``cli``: the ``quickslot`` command.

Logging: every module logs under ``quickslot.client`` (``quickslot.client.sync.session`` ...)
through :func:`client.log.get_logger`, structured events through :func:`client.log.log_event`.

Exceptions: every error the client raises on purpose derives from :class:`client.errors.ClientError`,
and its message is written for the user::

    ClientError                              client.errors
    ├── NotLoggedIn                          client.local.errors  (log in again)
    ├── NotAllowed                           client.local.errors  (the certificate does not grant it)
    ├── NotFound                             client.local.errors  (no such shop, slot, reservation here)
    ├── InvalidRequest (also ValueError)     client.local.errors  (an argument breaks the schema)
    ├── StoreError                           client.storage.store (newer schema, corrupt file)
    ├── SecretStoreError                     client.storage.secrets
    ├── AuthError                            client.sync.auth     (the relay refused; .status, .code)
    │   └── LoginRequired                                          (no usable tokens)
    ├── RelayUnavailable                     client.sync.auth     (HTTP unreachable, 5xx)
    │   └── RelayInsecure                                          (TLS check failed; nothing sent)
    ├── SyncError                            client.sync.errors   (.code: the close code)
    │   ├── SyncRelayUnreachable
    │   │   ├── SyncRelayInsecure
    │   │   └── SyncWebsocketBlocked
    │   ├── SyncLoginRequired
    │   └── SyncStopped
    ├── PeerError                            client.peer.wire     (.code: the close code)
    │   ├── PeerUnreachable
    │   ├── PeerRefusedUs
    │   ├── PeerUntrusted
    │   ├── PeerProtocolError
    │   └── PeerIsARelay                                           (the URL is a relay's)
    ├── PeerAuthError                        client.peer.auth     (.close_code)
    └── CliError                             client.cli.errors    (.exit_code, .code)

Outside the tree on purpose: :class:`client.sync.tls.PinMismatch` is an
``ssl.SSLCertVerificationError`` (the TLS stack raises it), and ``ValidationError`` and the other
``crdt_core.errors`` come from the core unchanged.
"""
