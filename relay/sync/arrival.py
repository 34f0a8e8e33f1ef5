"""What the relay checks when a client's update arrives, before it orders it into a document.

The writer rules are the core's (``crdt_core.validation.validate_update``, the same function
every replica runs), judged by the relay's clock and the users' current rights (the arrival
rules: docs/design.md, "Authorship"). On top: the party limits (``relay.sync.hub``, "Impossible
parties"), the per-customer limit of a slot (``crdt_core.repeats``), staff rights from the shop's
staff list (``crdt_core.shop_rules``), and the re-send check (:func:`refuse_equivocation`).
"""

from __future__ import annotations

from collections.abc import Callable

from crdt_core.certs import CertificateCache
from crdt_core.engine import Replica
from crdt_core.equivocation import find_equivocation
from crdt_core.errors import ValidationError
from crdt_core.repeats import refuse_repeat_bookings
from crdt_core.schema import DocId, DocKind, parse_doc_id
from crdt_core.shop_rules import ShopRules, read_shop_rules
from crdt_core.validation import ArrivalPolicy, Reason, ValidatedUpdate, validate_update
from crdt_core.verdict import exceeds_capacity
from relay.auth.rights import RightsCache
from relay.documents.manager import DocumentManager
from relay.ops.config import SyncLimits

#: Shop documents whose slot templates are kept parsed (by seq) for the party check at arrival.
TEMPLATE_CACHE_DOCS = 1024


class ArrivalRules:
    """The checks of one hub: signatures against the relay's current keys, rights, party limits."""

    def __init__(
        self,
        *,
        manager: DocumentManager,
        rights: RightsCache,
        trusted_keys: Callable[[], dict[str, bytes]],
        limits: SyncLimits,
        clock_ms: Callable[[], int],
    ) -> None:
        self.manager = manager
        self.rights = rights
        self._trusted_keys = trusted_keys
        self.limits = limits
        self.clock_ms = clock_ms
        self._certs = CertificateCache(trusted_keys())
        #: Shop document -> (seq, its slot templates and staff list), for the checks at arrival.
        self._templates: dict[str, tuple[int, ShopRules]] = {}

    def certs(self) -> CertificateCache:
        """The certificate cache, rebuilt when the relay's key set changes (keys rotate)."""
        keys = self._trusted_keys()
        if keys != self._certs.trusted_keys:
            self._certs = CertificateCache(keys)
        return self._certs

    def checker(
        self, doc: str, shop: tuple[ShopRules, DocId] | None = None
    ) -> Callable[[Replica, bytes], ValidatedUpdate]:
        def check(replica: Replica, update: bytes) -> ValidatedUpdate:
            policy = ArrivalPolicy(
                now_ms=self.clock_ms(),
                is_revoked=self.rights.is_revoked,
                current_rights=self.rights.current,
            )
            staff = shop[0].staff if shop is not None else None
            checked = validate_update(doc, replica, update, self.certs(), policy, staff)
            if shop is not None:
                rules, day_doc = shop
                assert day_doc.day is not None
                capacities = rules.capacities(day_doc.day)
                self.refuse_impossible_parties(checked, capacities)
                refuse_repeat_bookings(
                    replica, checked.new_reservations, rules.limits(), capacities, checked.new_events
                )
            return checked

        return check

    def refuse_impossible_parties(self, checked: ValidatedUpdate, capacities: dict[str, int]) -> None:
        """Refuse (``party_too_large``) a new reservation over ``--max-party`` or its open slot's capacity."""
        for res in checked.new_reservations:
            capacity = capacities.get(res.slot, 0)
            what = f"reservation {res.id}: a party of {res.party}"
            if res.party > self.limits.max_party:
                why = f"{what} is over this relay's limit of {self.limits.max_party}"
                raise ValidationError(Reason.PARTY_TOO_LARGE.value, why)
            if exceeds_capacity(res.party, capacity):
                why = f"{what} cannot fit slot {res.slot!r} ({capacity} seats that day)"
                raise ValidationError(Reason.PARTY_TOO_LARGE.value, why)

    async def shop_rules(self, doc: str) -> tuple[ShopRules, DocId] | None:
        """For a bookings document, what the relay's copy of its shop document says (slot
        capacities and limits, the staff list: ``crdt_core.shop_rules``) and the parsed doc id;
        None for other kinds."""
        parsed = parse_doc_id(doc)
        if parsed.kind is not DocKind.BOOKINGS:
            return None
        assert parsed.shop_id is not None
        shop_doc = str(DocId.shop(parsed.shop_id))

        def rules(replica: Replica, seq: int) -> ShopRules:
            held = self._templates.get(shop_doc)
            if held is not None and held[0] == seq:
                return held[1]
            found = read_shop_rules(replica, shop_doc)
            if len(self._templates) >= TEMPLATE_CACHE_DOCS:
                self._templates.clear()
            self._templates[shop_doc] = (seq, found)
            return found

        return await self.manager.read(shop_doc, rules), parsed


def refuse_equivocation(replica: Replica, update: bytes) -> None:
    """Refuse a "re-send" that names Yjs ids the document holds with different content.

    The engine skips a struct whose (client, clock) it already holds, so such an update would be
    acknowledged as a re-send and dropped: a device that signed two versions of one id
    (equivocation), or a writer that took another device's next id first (that device's offline
    booking would be acknowledged and lost). Refused, the id is named and the sender's outbox
    shows the entry as failed. The rule is ``crdt_core.equivocation.find_equivocation``, the one
    peers apply to each other: only structs the document has integrated are compared.

    Raises:
        ValidationError: code ``equivocation``.
    """
    clash = find_equivocation(replica, update)
    if clash is not None:
        raise ValidationError("equivocation", clash)
