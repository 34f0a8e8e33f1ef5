"""``quickslot-relay serve``: uvicorn with the relay's websocket protocol, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from relay.cli.errors import EXIT_FAILURE, EXIT_OK, CliError
from relay.ops.config import RelayConfig
from relay.ops.logging import get_logger, log_event

log = get_logger(__name__)


SERVE_LOCK = "serve.lock"


def hold_serve_lock(data_dir: Path) -> Any:
    """Held for as long as ``serve`` runs, so offline maintenance can tell the relay is up."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / SERVE_LOCK, "a+")  # noqa: SIM115 - lives as long as the server
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise CliError(f"another relay is already serving {data_dir}", "busy") from None
    return handle


def _fit_open_files(config: RelayConfig) -> RelayConfig:
    """Raise the open-file limit for ``--max-connections``, or lower that to fit (relay.ops.fdlimit)."""
    from relay.ops.fdlimit import RESERVED_FDS, fit_connections

    fit = fit_connections(config.sync.max_connections)
    if fit.raised_from is not None:
        log_event(log, "open_file_limit_raised", soft_before=fit.raised_from, soft=fit.soft_limit)
    if fit.max_connections < config.sync.max_connections:
        log_event(
            log,
            "max_connections_lowered",
            logging.WARNING,
            configured=config.sync.max_connections,
            max_connections=fit.max_connections,
            open_file_limit=fit.soft_limit,
            reserved=RESERVED_FDS,
            hint="raise the hard limit (ulimit -Hn, LimitNOFILE=) to allow more connections",
        )
        config = replace(config, sync=replace(config.sync, max_connections=fit.max_connections))
    return config


def serve(config: RelayConfig, *, forwarded_allow_ips: str | None = None) -> int:
    """Run uvicorn (websockets implementation) until SIGTERM/SIGINT; graceful shutdown."""
    import socket

    import uvicorn

    from relay.http.app import create_app
    from relay.http.sync_socket import sync_socket_first
    from relay.http.ws_protocol import RelayWebSocketProtocol
    from relay.ops.fdlimit import AcceptErrorThrottle
    from relay.ops.malloc_tuning import tune_malloc_and_log

    tune_malloc_and_log()  # before any worker thread takes an arena of its own
    lock = hold_serve_lock(config.data_dir)  # noqa: F841 - held until the process exits
    config = _fit_open_files(config)
    app = create_app(config)
    ctx = app.state.relay

    class RelayServer(uvicorn.Server):
        """Tells the relay it is stopping as soon as the signal arrives, before uvicorn waits
        for connections to drain, so extensions can say goodbye to clients promptly."""

        saying_goodbye = False

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            AcceptErrorThrottle.install(asyncio.get_running_loop())  # see relay.ops.fdlimit
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # A second signal while the relay says goodbye goes straight to uvicorn (which treats
            # it as "exit now"); the first one lets the relay close its clients with 1001 before
            # uvicorn closes the remaining websockets with 1012.
            if self.saying_goodbye or self.should_exit:
                super().handle_exit(sig, frame)
                return
            self.saying_goodbye = True
            ctx.begin_shutdown(then=lambda: uvicorn.Server.handle_exit(self, sig, frame))

    uv_config = uvicorn.Config(
        sync_socket_first(app),
        host=config.host,
        port=config.port,
        # uvicorn's websockets-sansio protocol with the pong backlog bounded (relay.http.ws_protocol).
        ws=RelayWebSocketProtocol,
        # Frames over the sync protocol's message limit are refused by the websocket layer
        # itself (close 1009) before a byte of them is parsed.
        ws_max_size=config.sync.max_message,
        # Compressing every fan-out frame for every subscriber cost the relay ~40% of its CPU per
        # delivery and its p99 latency at 50 clients went 5.8 ms -> 95 ms (benchmarks, relay suite).
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        access_log=True,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        ssl_certfile=str(config.certfile) if config.certfile else None,
        ssl_keyfile=str(config.keyfile) if config.keyfile else None,
        timeout_graceful_shutdown=int(config.graceful_shutdown_s),
        server_header=False,
    )
    server = RelayServer(uv_config)
    # uvicorn handles SIGTERM/SIGINT while serving, then restores the previous handlers and
    # re-raises the signal. With the defaults that would kill the process after a clean
    # shutdown (exit -15); these no-op handlers make a completed graceful shutdown exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: None)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits 1 (bind failed) or 3 (app startup failed)
        return EXIT_FAILURE if e.code else EXIT_OK
    return EXIT_OK if server.started else EXIT_FAILURE
