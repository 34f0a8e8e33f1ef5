"""Peer commands (docs/peer.md): ``peer sync`` and ``peer serve``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

from client.cli.context import Ctx, Result, drain
from client.cli.errors import CliError
from client.cli.output import describe_event
from client.cli.schemas import EXIT_AUTH, EXIT_FAILURE, EXIT_REJECTED, EXIT_UNREACHABLE, EXIT_USAGE
from crdt_core.schema import printable


def peer_error(exc: Exception) -> CliError:
    """The exit code of a failed peer exchange (see the ``peer sync`` schema's comment)."""
    from client.peer.auth import PeerAuthError
    from client.peer.dialer import PeerRefusedUs, PeerUnreachable, PeerUntrusted
    from client.peer.wire import PeerIsARelay

    if isinstance(exc, PeerIsARelay):
        return CliError(EXIT_USAGE, "not_a_peer", str(exc))
    if isinstance(exc, PeerAuthError):
        return CliError(EXIT_AUTH, "login_required", exc.reason)
    if isinstance(exc, PeerRefusedUs):
        return CliError(EXIT_AUTH, "peer_refused_us", f"the peer refused this device's credentials: {exc}")
    if isinstance(exc, PeerUntrusted):
        return CliError(EXIT_REJECTED, "peer_untrusted", str(exc))
    if isinstance(exc, PeerUnreachable):
        return CliError(EXIT_UNREACHABLE, "peer_unreachable", str(exc))
    return CliError(EXIT_FAILURE, "peer_failed", str(exc))


async def _peer_shops(ctx: Ctx, roles: dict[str, str]) -> list[dict[str, Any]]:
    """The peer's shops with their names as this device knows them (no subscription made)."""
    out = []
    for shop_id, role in sorted(roles.items()):
        detail = await ctx.local.shop(shop_id, subscribe=False)
        head = None if detail is None else detail.summary or detail.profile
        out.append({"shop_id": shop_id, "role": role, "name": getattr(head, "name", None)})
    return out


async def cmd_peer_sync(ctx: Ctx) -> Result:
    """One exchange with a peer; nothing it acks leaves the outbox (only the relay's acks do)."""
    from client.peer.auth import PeerAuthError
    from client.peer.dialer import PeerError, describe, peer_sync

    ctx.require_login()
    url = str(ctx.args.url)
    if not url.startswith(("ws://", "wss://")):
        raise CliError(EXIT_USAGE, "usage", f"peer sync: not a ws:// or wss:// URL: {url!r}")
    drain(ctx.local)
    try:
        summary = await peer_sync(ctx.local, url, timeout_s=ctx.args.timeout)
    except (PeerAuthError, PeerError) as exc:
        # What was applied before the peer went away stays applied, so its notices (now
        # waitlisted...) would never come again: say them with the failure.
        err = peer_error(exc)
        err.happened = [(e.to_dict(), describe_event(e)) for e in drain(ctx.local)]
        raise err from exc
    events = drain(ctx.local)
    queued = await ctx.local.pending_entries()
    pending = len(queued)
    # What the relay still lacks of this user's own changes; carried ones ("forward") are others'.
    own = sum(1 for e in queued if e.operation != "forward")
    shops = await _peer_shops(ctx, summary.peer_shops)
    data = {
        **describe(summary), "pending": pending, "own_pending": own, "carried": pending - own,
        "peer_shops": shops, "events": [e.to_dict() for e in events],
    }  # fmt: skip
    who = summary.peer_user
    if shops:  # a shop's tablet: named by its shop, as the customer knows it
        named = ", ".join(f"{s['role']} of {s['name'] or s['shop_id']} ({s['shop_id']})" for s in shops)
        who = f"{named}, user {summary.peer_user}"
    lines = [describe_event(e) for e in events]
    lines += [f"the peer refused an update of {d}: {c}: {r}" for d, c, r in summary.rejected]
    lines += [f"refused an update of {d} from the peer: {c}: {r}" for d, c, r in summary.refused]
    lines += [
        f"{d} differs from the peer's copy although both hold the same updates: a device signed "
        "two versions of one update (equivocation)"
        for d in summary.diverged
    ]
    lines.append(
        f"exchanged {len(summary.docs)} documents with {who} at {url}: {summary.received} "
        f"updates in, {summary.sent} stored by the peer; {own} of your changes wait for the relay "
        "(bookings stay tentative until the relay stamps them)"
        + (f"; {pending - own} updates of others are carried for it" if pending > own else "")
    )
    if summary.rejected or summary.refused or summary.diverged:
        ctx.args.exit_code = EXIT_REJECTED
    return data, "\n".join(lines)


async def cmd_peer_serve(ctx: Ctx) -> Result:
    """Accept peers until SIGINT/SIGTERM, printing one structured line per event."""
    from client.peer.auth import PeerAuthError
    from client.peer.server import PeerServer

    ctx.require_login()
    as_json = bool(ctx.args.json)

    def emit(kind: str, fields: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps({"type": kind, "at_ms": int(time.time() * 1000), **fields}), flush=True)
        else:
            print(printable(" ".join([kind, *(f"{k}={v}" for k, v in fields.items())])), flush=True)

    server = PeerServer(ctx.local, host=ctx.args.host, port=ctx.args.port, log=emit)
    try:
        await server.start()
    except PeerAuthError as exc:
        raise peer_error(exc) from exc
    except OSError as exc:
        where = f"{ctx.args.host}:{ctx.args.port}"
        raise CliError(EXIT_FAILURE, "listen_failed", f"cannot listen on {where}: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    ended = asyncio.ensure_future(server.stopped.wait())  # logged out, or the certificate expired
    try:
        while not stop.is_set() and not server.stopped.is_set():
            getter = asyncio.ensure_future(ctx.local.events.get())
            await asyncio.wait({getter, stopping, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
                break
            event = getter.result()
            if as_json:
                print(json.dumps(event.to_dict(), default=str), flush=True)
            else:
                print(printable(describe_event(event), multiline=True), flush=True)
    finally:
        stopping.cancel()
        ended.cancel()
        await server.stop()
    if server.ended is not None:
        raise CliError(EXIT_AUTH, "peer_serve_ended", server.ended)
    ctx.args.streamed = True
    return {}, ""
