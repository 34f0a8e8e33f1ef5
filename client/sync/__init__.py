"""Talking to the relay: ``service`` (``SyncService`` over the websocket), ``http_fallback`` (the
same exchange over plain HTTP when the websocket cannot open), ``auth`` (REST login, tokens,
device certificates) and ``tls`` (CA files and key pins)."""
