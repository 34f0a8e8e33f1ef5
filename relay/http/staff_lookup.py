"""``POST /api/v1/shops/{shop_id}/staff-lookup``: an owner finds the user id behind an email.

Why: an owner names staff in the shop's own data (a ``staff`` record in ``shop:S``, which gives
staff rights at once, everywhere: docs/records.md section 6), and a staff record names a user by
id; what the owner knows is the person's email. Only an owner of the shop (by the relay's current
account data) or an admin may ask, signed in with a device-bound token, so the endpoint does not
let anyone else test which emails have accounts. It answers the user id and display name, never
more of the account.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from relay.auth.accounts import InvalidEmail, normalize_email
from relay.http.api import _ERRORS, ApiError, ClaimsDep, CtxDep, ErrorOut

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/shops", tags=["shops"], responses={**_ERRORS, 404: {"model": ErrorOut}})


class StaffLookupIn(BaseModel):
    email: str = Field(min_length=3, max_length=254)


class StaffLookupOut(BaseModel):
    user_id: str
    display_name: str


@router.post("/{shop_id}/staff-lookup", response_model=StaffLookupOut)
async def staff_lookup(shop_id: str, body: StaffLookupIn, claims: ClaimsDep, ctx: CtxDep) -> StaffLookupOut:
    """The user id of the account with ``email``, for an owner of ``shop_id`` (or an admin)."""
    caller = await ctx.accounts.current_user(claims)
    if not (caller.is_admin or shop_id in caller.owner_of):
        raise ApiError(403, "forbidden", f"only an owner of {shop_id} (or an admin) may look up its staff")
    try:
        email = normalize_email(body.email)
    except InvalidEmail:
        raise ApiError(422, "validation_error", "not an email address") from None
    found = await ctx.accounts.store.get_user_with_hash(email)
    if found is None or found[0].disabled:
        raise ApiError(404, "no_such_user", "no account has that email: ask them to register first")
    user = found[0]
    return StaffLookupOut(user_id=user.user_id, display_name=user.display_name)
