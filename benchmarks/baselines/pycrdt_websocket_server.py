"""The pycrdt-websocket baseline server for the relay suite: one process, one port, loopback only.

pycrdt-websocket's ``WebsocketServer`` (one ``YRoom`` per path, y-protocols sync) behind its
``ASGIServer`` on uvicorn with the same websocket implementation the QuickSlot relay uses
(``websockets-sansio``) and, like the relay, without permessage-deflate (uvicorn's default is on;
compressing every frame for every recipient would dominate its CPU), so the two differ in what
they do per message, not in the socket layer.
Rooms are kept when their last client leaves (``auto_clean_rooms=False``): the suite measures
idle loaded documents, and pycrdt-websocket without a store would otherwise forget them.
It persists nothing (no YStore), like the y-websocket baseline.

    python benchmarks/baselines/pycrdt_websocket_server.py --port P [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging


async def main(host: str, port: int) -> None:
    import uvicorn
    from pycrdt.websocket import ASGIServer, WebsocketServer

    websocket_server = WebsocketServer(auto_clean_rooms=False, log=logging.getLogger("pycrdt-ws"))
    app = ASGIServer(websocket_server)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    async with websocket_server:
        await server.serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="pycrdt-websocket baseline server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.host, args.port))
