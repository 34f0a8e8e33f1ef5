"""Account commands: ``register``, ``login``, ``logout``, ``whoami``."""

from __future__ import annotations

from client.cli.context import Ctx, Result, read_email, read_password, sync_service, write_config
from client.log import get_logger


async def cmd_register(ctx: Ctx) -> Result:
    email = read_email(ctx.args)
    password = read_password(ctx.args)
    auth = ctx.auth()
    name = ctx.args.name or email.split("@", 1)[0]
    body = await auth.register(email, password, name)
    write_config(ctx.home, relay=auth.base_url, tls=ctx.remember_tls())
    data = {"user_id": str(body.get("id", "")), "email": email, "relay": auth.base_url}
    if ctx.args.no_login:
        return data, f"registered {email} ({data['user_id']}) at {auth.base_url}; now run `quickslot login`"
    # A newcomer's next step is to book: log in now (a fresh device key), as `login` would.
    result = await auth.login(email, password)
    write_config(ctx.home, email=result.email, user_id=result.user_id)
    data["cert_id"] = result.cert_id
    return data, f"registered and logged in as {email} ({result.user_id}) at {auth.base_url}"


async def cmd_login(ctx: Ctx) -> Result:
    email = read_email(ctx.args)
    password = read_password(ctx.args)
    auth = ctx.auth()
    result = await auth.login(email, password)
    write_config(
        ctx.home, relay=auth.base_url, email=result.email, user_id=result.user_id, tls=ctx.remember_tls()
    )
    data = {
        "user_id": result.user_id,
        "email": result.email,
        "relay": auth.base_url,
        "cert_id": result.cert_id,
    }
    return data, f"logged in as {result.email} ({result.user_id}) at {auth.base_url}"


async def cmd_logout(ctx: Ctx) -> Result:
    relay = ctx.relay(required=False)
    flushed: int | None = None
    if relay is not None:
        flushed = await _flush_before_logout(ctx)
        await ctx.auth().logout()
    else:
        await ctx.local.logout("logged out")
    write_config(ctx.home, email=None, user_id=None)
    data = {"logged_out": True, "relay": relay, "flushed": flushed}
    return data, "logged out (tokens and device key removed)"


async def _flush_before_logout(ctx: Ctx) -> int | None:
    """Send queued changes before the session ends: the relay revokes the session's device
    certificates at logout, and what they signed would be refused after it. Best effort: an
    unreachable relay leaves the queue (the session is then not revoked at the relay either)."""
    if ctx.local.identity is None or not (await ctx.local.outbox_counts()).pending:
        return None
    try:
        summary = await sync_service(ctx).sync_once()
    except Exception as exc:  # noqa: BLE001 - logout must not fail because the relay is away
        get_logger(__name__).warning("could not send queued changes before logout: %s", exc)
        return None
    return summary.acked


async def cmd_whoami(ctx: Ctx) -> Result:
    ctx.require_login()
    identity = ctx.local.identity
    assert identity is not None
    cert = identity.certificate
    data = {
        "user_id": identity.user_id,
        "email": ctx.config.get("email"),
        "relay": ctx.relay(required=False),
        "admin": cert.is_admin,
        "owner_of": sorted(cert.owner_of),
        "staff_of": sorted(cert.staff_of),
        "certificate_expires_ms": cert.expires_at_ms,
    }
    roles = ["admin"] if cert.is_admin else []
    roles += [f"owner of {s}" for s in sorted(cert.owner_of)] + [
        f"staff of {s}" for s in sorted(cert.staff_of)
    ]
    text = f"{data['email'] or identity.user_id} ({identity.user_id}) at {data['relay'] or '-'}"
    return data, text + (f"; {', '.join(roles)}" if roles else "")
