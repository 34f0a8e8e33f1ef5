"""The relay over HTTP: the app factory, the REST APIs, and the websocket server's fast path.

:mod:`relay.http.app` (``create_app``), :mod:`relay.http.api` (auth endpoints, health, metrics,
JWKS, error bodies, middleware), :mod:`relay.http.rest_sync` and :mod:`relay.http.projections`
(the sync API over plain HTTP), :mod:`relay.http.ws_protocol` (the only module that touches
uvicorn's or Starlette's private objects).
"""
