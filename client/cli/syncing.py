"""Sync commands: ``sync`` (once or ``--watch``), ``status``, ``following``, ``unfollow``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import signal
from typing import TYPE_CHECKING, Any

from client.cli.context import (
    Ctx,
    Result,
    drain,
    remember_transport,
    sync_service,
    transport_of,
    write_config,
)
from client.cli.errors import CliError
from client.cli.output import describe_event, entry_json, table
from client.cli.schemas import EXIT_AUTH, EXIT_REJECTED
from client.local.events import ChangeAcked, ClientEvent, LoggedOut, RelayReachable, Synced
from crdt_core.schema import printable

if TYPE_CHECKING:
    from client.sync.service import SyncService, SyncSummary


async def cmd_sync(ctx: Ctx) -> Result:
    svc = sync_service(ctx)
    if ctx.args.watch:
        return await _watch(ctx, svc)
    drain(ctx.local)
    try:
        summary: SyncSummary = await svc.sync_once()
    finally:
        if svc.last_sync_ms is not None:
            write_config(ctx.home, last_sync_ms=svc.last_sync_ms)
        remember_transport(ctx, svc)
    events = drain(ctx.local)
    data = {
        "relay": summary.relay_url, "epoch": summary.epoch, "epoch_changed": summary.epoch_changed,
        "docs": list(summary.docs), "applied": summary.applied, "sent": summary.sent,
        "acked": summary.acked,
        "rejected": [{"entry_id": i, "code": c, "reason": r} for i, c, r in summary.rejected],
        "rebuilt": [{"doc": d, "reason": r} for d, r in sorted(summary.rebuilt.items())],
        "conflicts": [{"doc": d, "reason": r} for d, r in sorted(summary.conflicts.items())],
        "not_synced": [{"doc": d, "reason": r} for d, r in sorted(summary.refused_docs.items())],
        "deferred": list(summary.deferred),
        "pending": summary.pending, "transport": svc.last_transport or svc.transport,
        "transport_reason": svc.transport_reason, "events": [e.to_dict() for e in events],
    }  # fmt: skip
    # Acks are counted in the summary line below, not told one by one.
    lines = [describe_event(e) for e in events if not isinstance(e, Synced | RelayReachable | ChangeAcked)]
    lines.append(
        f"synced {len(summary.docs)} documents: {summary.applied} updates in, {summary.acked} changes "
        f"accepted, {len(summary.rejected)} rejected, {summary.pending} pending"
    )
    if svc.last_transport == "http":
        lines.append(f"over plain HTTP: {svc.transport_reason}")
    lines += [
        f"{d} did not fit the relay's and was rebuilt from it: {r}"
        for d, r in sorted(summary.conflicts.items())
    ]
    lines += [f"{d} was not synced: {r}" for d, r in sorted(summary.refused_docs.items())]
    if summary.deferred:
        lines.append(
            f"{len(summary.deferred)} followed documents did not fit the relay's limit per connection "
            "this time (they sync on a later round; `quickslot following` lists what is followed)"
        )
    if summary.pending:
        # Never a silent "1 pending": say which changes did not go out, and why.
        lines += await _unsent_lines(ctx, summary)
    if summary.rejected or summary.pending:
        ctx.args.exit_code = EXIT_REJECTED
    return data, "\n".join(lines)


async def _unsent_lines(ctx: Ctx, summary: SyncSummary) -> list[str]:
    entries = await ctx.local.pending_entries()
    lines = [f"{len(entries)} change(s) could not be sent this time:"]
    for e in entries[:20]:
        why = summary.refused_docs.get(e.doc_id) or e.last_error
        if why is None and e.doc_id in summary.deferred:
            why = "its document did not fit the relay's limit of documents per connection"
        what = f"{e.entity_type} {e.entity_id} ({e.operation}) in {e.doc_id}"
        lines.append(f"  {e.id}: {what}: {why or 'no answer yet'}")
    if len(entries) > 20:
        lines.append(f"  ... and {len(entries) - 20} more (`quickslot status`)")
    lines.append("they stay queued: run `quickslot sync` again; `quickslot status` shows them")
    return lines


async def _watch(ctx: Ctx, svc: SyncService) -> Result:
    """Stay in sync until SIGINT/SIGTERM, printing each event as a line (JSON lines with --json)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, svc.stop)
    task = asyncio.create_task(svc.run())
    logged_out = False

    def show(event: ClientEvent) -> None:
        nonlocal logged_out
        logged_out = logged_out or isinstance(event, LoggedOut)
        line = json.dumps(event.to_dict(), default=str) if ctx.args.json else describe_event(event)
        print(printable(line, multiline=True), flush=True)
        if isinstance(event, Synced):
            write_config(ctx.home, last_sync_ms=event.at_ms)
            remember_transport(ctx, svc)

    if not ctx.args.json:
        print(f"watching {svc.relay_url} (Ctrl-C to stop)", flush=True)
    while not task.done():
        getter = asyncio.ensure_future(ctx.local.events.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            show(getter.result())
        else:
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
    for event in drain(ctx.local):
        show(event)
    await task
    if logged_out:
        raise CliError(EXIT_AUTH, "login_required", "the relay ended the session: log in again")
    ctx.args.streamed = True
    return {}, ""


async def cmd_following(ctx: Ctx) -> Result:
    followed = await ctx.local.following()
    rows = [{"doc": d, "why": sorted(r)} for d, r in sorted(followed.items())]
    human = table(rows, ["doc", "why"])
    human += (
        "\n(every document here is synced by `quickslot sync`; `quickslot unfollow DOC` stops one "
        "that was browsed or followed; past days that are settled are released by themselves)"
    )
    return {"following": rows}, human


async def cmd_unfollow(ctx: Ctx) -> Result:
    await ctx.local.unfollow(ctx.args.doc)
    return {"unfollowed": ctx.args.doc}, f"no longer following {ctx.args.doc} (its data stays here)"


async def _reachable(url: str, verify: Any = True) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(base_url=url, timeout=2.0, verify=verify) as http:
            return (await http.get("/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def cmd_status(ctx: Ctx) -> Result:
    relay = ctx.relay(required=False)
    counts = await ctx.local.outbox_counts()
    entries = await ctx.local.pending_entries() + await ctx.local.rejected_entries()
    reachable = None if relay is None else await _reachable(relay, ctx.tls().verify())
    raw_last = ctx.config.get("last_sync_ms")
    last = raw_last if isinstance(raw_last, int) else None
    data = {
        "logged_in": ctx.local.identity is not None, "user_id": ctx.local.user_id, "relay": relay,
        "relay_reachable": reachable, "queue_size": counts.total, "pending": counts.pending,
        "rejected": counts.rejected, "entries": [entry_json(e) for e in entries],
        "last_sync_ms": last, "transport": transport_of(ctx),
        "last_transport": _opt_str(ctx.config.get("last_transport")),
        "last_transport_reason": _opt_str(ctx.config.get("last_transport_reason")),
    }  # fmt: skip
    when = "never" if last is None else _dt.datetime.fromtimestamp(last / 1000).isoformat(" ", "seconds")
    lines = [
        f"user:      {ctx.local.user_id or '(not logged in)'}",
        f"relay:     {relay or '-'} ({'reachable' if reachable else 'unreachable' if relay else 'unknown'})",
        f"queue:     {counts.total} ({counts.pending} pending, {counts.rejected} rejected)",
        f"last sync: {when}",
        f"transport: {data['transport']} (last sync: {data['last_transport'] or '-'}"
        + (f", {data['last_transport_reason']})" if data["last_transport_reason"] else ")"),
    ]
    if entries:
        rows = [
            {
                **entry_json(e),
                "why": e.reject_reason or e.last_error,
                "entity": f"{e.entity_type} {e.entity_id}",
            }
            for e in entries
        ]
        lines += ["", table(rows, ["id", "state", "entity", "operation", "doc_id", "retry_count", "why"])]
    if counts.rejected:
        lines.append(
            f"{counts.rejected} change(s) refused by the relay: `quickslot refused` says what to do; "
            "`quickslot retry ID` makes one again, `quickslot discard ID` forgets it"
        )
    return data, "\n".join(lines)
