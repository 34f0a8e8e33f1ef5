"""Direct sync between two clients with no relay (docs/peer.md): ``dialer`` (``peer sync``),
``server`` (``peer serve``), ``auth`` (the mutual proof-of-possession handshake), ``data`` (what
is exchanged and stored) and ``wire`` (framing over the websocket)."""
