"""A new login while the SDK's outbox still holds writes: they are flushed, and rebuilt if need be.

Each login makes a fresh device key (non-extractable where WebCrypto does Ed25519) and gets a new
certificate, with other Yjs client ids. Writes queued before it were signed by the old certificate
and sit under its client ids; ``QuickSlotClient`` keeps the old certificate while they wait, so
after the relay refuses one of them (a party above ``--max-party``) and the day is rebuilt, the
other is written again under the old certificate's next client id, stored and stamped, and a
booking made after the login goes under the new certificate's ids.
"""

from __future__ import annotations

from tests.support.relay_process import PASSWORD, FixedPortRelay, unique_email
from tests.web.test_sdk_client import DAY, Driver


def test_a_new_login_keeps_the_old_certificate_for_the_writes_it_signed(fresh_relay: FixedPortRelay) -> None:
    shop = "reloginshop"
    email = unique_email("lea")
    web = Driver(fresh_relay.base_url)
    try:
        web("register", email=email, password=PASSWORD)
        web("slots", shop=shop, day=DAY)
        web("sync")
        web("stop")
        too_many = web("book", shop=shop, day=DAY, slot="s-1", party=50)["reservationId"]
        fine = web("book", shop=shop, day=DAY, slot="s-1", party=2)["reservationId"]
        web("login", email=email, password=PASSWORD)  # a new device key and certificate
        later = web("book", shop=shop, day=DAY, slot="s-2", party=1)["reservationId"]  # one claim per slot
        result = web("sync")
        assert result["pending"] == 0, result
        (refused,) = result["refused"]
        assert refused["reservationId"] == too_many and refused["reason"].startswith("party_too_large")
        assert [e["generation"] for e in web.seen if e["event"] == "rebuilt"] == [1]
        views = {r["reservationId"]: r for r in web("reservations")}
        assert set(views) == {fine, later}
        for rid in (fine, later):
            if not views[rid]["final"]:
                web.wait_event("final")
        # both stamped and final ("later" may be first: it never waited behind the refused write)
        views = {r["reservationId"]: (r["final"], r["pending"]) for r in web("reservations")}
        assert views == {fine: (True, False), later: (True, False)}
        assert sorted(r["stamp"] for r in web("reservations")) == [1, 2]
        assert [e["state"] for e in web("outbox")] == ["refused"]
    finally:
        web.close()
