"""The validation baseline: apply the update to a copy of the document, then inspect what changed.

Why it exists: docs/design.md ("Authorship") left open whether to validate by reading the update (``yupdate``)
or by applying it to a scratch copy, "measure before choosing". This is the second way, written to do
the same checks as ``crdt_core.validation`` for the records a bookings document holds
(certificates and reservations; other kinds are refused as unsupported here), so the two can be
compared on equal work: signature and certificate checks, schema, the author's right, no rewrite
or deletion. It uses pycrdt directly, because inspecting per-key changes needs map events that
crdt_core's wrapper does not expose (benchmarks may import anything).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pycrdt

from crdt_core.certs import CertificateCache, cert_id_of
from crdt_core.errors import SchemaError, SignatureError, ValidationError
from crdt_core.hlc import Timestamp
from crdt_core.records import open_record, verify_envelope
from crdt_core.schema import CERTS_ROOT, DocId, Reservation, parse_record

__all__ = ["ApplyInspectValidator"]


def _refuse(code: str, detail: str) -> ValidationError:
    return ValidationError(code, detail)


class ApplyInspectValidator:
    """Validates updates against one document state by applying each to a fresh copy of it."""

    def __init__(self, doc_id: DocId, state: bytes, certs: CertificateCache) -> None:
        self.doc_id = doc_id
        self.doc_name = str(doc_id)
        self.state = state
        self.certs = certs

    @staticmethod
    def _collector(root: str, changes: list[tuple[str, dict[str, Any]]]) -> Callable[[Any], None]:
        # One positional parameter: pycrdt passes the transaction too to callbacks that take two.
        def on_change(event: Any) -> None:
            changes.append((root, event.keys))

        return on_change

    def validate(self, update: bytes) -> list[str]:
        """Returns the keys the update adds; raises ValidationError like ``validate_update``."""
        copy: pycrdt.Doc[Any] = pycrdt.Doc()
        copy.apply_update(self.state)
        maps = {root: copy.get(root, type=pycrdt.Map) for root in self.doc_id.roots}
        changes: list[tuple[str, dict[str, Any]]] = []
        for root, ymap in maps.items():
            ymap.observe(self._collector(root, changes))
        roots_before = set(copy.keys())
        try:
            copy.apply_update(update)
        except ValueError as exc:
            raise _refuse("malformed", str(exc)) from None
        if set(copy.keys()) - roots_before - set(maps):
            raise _refuse("wrong_map", "update creates a map this document kind does not have")

        added: dict[str, dict[str, bytes]] = {}
        for root, keys in changes:
            for key, change in keys.items():
                action = change.get("action")
                if action == "delete":
                    raise _refuse("deletion", f"{root}/{key} removed")
                if action != "add":
                    raise _refuse("rewrite", f"{root}/{key} rewritten")
                value = change.get("newValue")
                if not isinstance(value, (bytes, bytearray)):
                    raise _refuse("shape", f"{root}/{key} is not a binary record")
                added.setdefault(root, {})[key] = bytes(value)

        for key, raw in added.get(CERTS_ROOT, {}).items():
            try:
                self.certs.verify(raw)
            except (SchemaError, SignatureError) as exc:
                raise _refuse("bad_certificate", str(exc)) from None
            if key != cert_id_of(raw):
                raise _refuse("bad_certificate", "certificate stored under the wrong id")

        accepted = list(added.get(CERTS_ROOT, {}))
        for root, entries in added.items():
            if root == CERTS_ROOT:
                continue
            for key, raw in entries.items():
                try:
                    env = open_record(raw)
                    rec = parse_record(self.doc_id.kind, root, key, env.kind, env.fields, env.schema_version)
                except SchemaError as exc:
                    raise _refuse("schema", str(exc)) from None
                if not isinstance(rec, Reservation):
                    raise _refuse("shape", f"the baseline checks reservations only, not {rec.KIND}")
                cert_raw = maps[CERTS_ROOT].get(env.signer)
                if not isinstance(cert_raw, (bytes, bytearray)):
                    raise _refuse("unknown_certificate", f"{root}/{key} signer not in the document")
                cert = self.certs.verify(bytes(cert_raw))
                try:
                    verify_envelope(env, self.doc_name, key, cert.device_key)
                except SignatureError as exc:
                    raise _refuse("bad_signature", str(exc)) from None
                if not cert.valid_at(Timestamp.parse(rec.hlc).wall_ms):
                    raise _refuse("certificate_expired", f"{root}/{key} outside its certificate")
                if rec.customer != cert.user_id:
                    raise _refuse("forbidden", f"reservation {rec.id} is in another customer's name")
                accepted.append(key)
        return accepted
