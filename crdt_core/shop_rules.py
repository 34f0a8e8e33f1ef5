"""What a bookings document's rules read from its shop's document, in one read.

Why one object: a claim's verdict needs each slot's capacity on the day and its ``per_customer``
limit, and validating a staff member's event needs the shop's staff list. The relay reads all
three from its copy of ``shop:S`` at every booking (``party_too_large``, ``duplicate_booking``,
rights), and caches them while the shop document does not change; clients read the same from
theirs, so every replica applies one rule set.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from crdt_core.engine import Replica
from crdt_core.reader import shop_staff, slot_templates
from crdt_core.schema import DocId, SlotTemplate, capacities_on, per_customer_limits

__all__ = ["ShopRules", "read_shop_rules"]


@dataclass(frozen=True)
class ShopRules:
    templates: dict[str, SlotTemplate]
    """The current template of every slot (``reader.slot_templates``)."""
    staff: frozenset[str]
    """Users the shop's staff list names (``reader.shop_staff``): staff rights in its documents."""

    def capacities(self, day: _dt.date) -> dict[str, int]:
        """Seats per slot on ``day`` (the verdict's ``capacities``)."""
        return capacities_on(self.templates, day)

    def limits(self) -> dict[str, int]:
        """Active claims one customer may hold per slot (the verdict's ``limits``)."""
        return per_customer_limits(self.templates)


def read_shop_rules(replica: Replica, shop_doc: str | DocId) -> ShopRules:
    """The rules ``shop_doc`` (a replica of ``shop:S``) sets for its bookings documents."""
    return ShopRules(slot_templates(replica, shop_doc), shop_staff(replica, shop_doc))
