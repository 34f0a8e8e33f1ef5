"""A relay's URLs from what a user typed (kept apart so the CLI reads them without loading HTTP)."""

from __future__ import annotations


def http_base(relay_url: str) -> str:
    """The relay's HTTP base URL for a ``ws://``/``wss://``/``http(s)://`` URL given by the user."""
    url = relay_url.rstrip("/")
    if url.startswith("ws://"):
        url = "http://" + url[len("ws://") :]
    elif url.startswith("wss://"):
        url = "https://" + url[len("wss://") :]
    for suffix in ("/api/v1/sync",):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url
