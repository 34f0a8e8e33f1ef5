"""The core of :class:`client.local.client.LocalClient`: one profile's state and its write path."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets as _random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

from client.local import projections as proj
from client.local.errors import ClientError, InvalidRequest, NotLoggedIn
from client.local.events import ClientEvent, LoggedOut, booking_event
from client.local.model import (
    _EVENT_QUEUE_SIZE,
    _META_CERT,
    _META_HLC,
    _META_NODE,
    _META_RELAY_KEYS,
    _META_USER,
    Identity,
    _appended,
    _Loaded,
    _reverdict,
    _slots_touched,
    _system_ms,
    _unchanged_since,
    _Work,
    _writer_client,
)
from client.local.projections import ProjectedRecord
from client.log import get_logger
from client.storage.secrets import SecretStore
from client.storage.store import DB_FILE, DEFAULT_COMPACT_MIN_BYTES, AppendResult, Store, Tx
from crdt_core.authoring import Author, new_id
from crdt_core.certs import CertificateCache, DeviceKey, parse_certificate, public_bytes
from crdt_core.clientids import generation_of
from crdt_core.engine import EngineError, Replica
from crdt_core.errors import ClockSkewError, SchemaError, SignatureError
from crdt_core.hlc import HybridClock, Timestamp
from crdt_core.reader import BookingsState, read_bookings, shop_staff, slot_templates
from crdt_core.schema import (
    SCHEMA_VERSION,
    DocId,
    DocKind,
    Reservation,
    SlotTemplate,
    Stamp,
    StatusEvent,
    TypedRecord,
    parse_doc_id,
    parse_record,
    per_customer_limits,
)
from crdt_core.validation import Rights, day_in_range
from crdt_core.verdict import Verdict, compute_verdict

log = get_logger(__name__)


class LocalBase:
    """One opened profile's state and its write path: lifecycle, identity, events, documents in
    memory, transactions and projections (:mod:`client.local.client` explains the invariants).

    Why over 400 lines: the transaction path (catch up, load, write, project, finish, compact) is
    one unit whose steps share the in-memory documents and verdicts; the features built on it
    (browsing, booking, remote updates) are the subclasses in their own modules.
    """

    def __init__(
        self,
        store: Store,
        secret_store: SecretStore,
        profile_dir: Path,
        now_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.secrets = secret_store
        self.profile_dir = profile_dir
        self._now_ms = now_ms
        self._clock = HybridClock("unset", physical_ms=now_ms)
        self._clock_saved = ""
        self._identity: Identity | None = None
        self._author: Author | None = None
        self._certs: CertificateCache | None = None
        self._docs: dict[str, _Loaded] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._templates: dict[str, dict[str, SlotTemplate]] = {}
        self._data_version: int | None = None
        self.events: asyncio.Queue[ClientEvent] = asyncio.Queue(maxsize=_EVENT_QUEUE_SIZE)
        self.dropped_events = 0

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        profile_dir: str | os.PathLike[str],
        *,
        now_ms: Callable[[], int] | None = None,
        secret_store: SecretStore | None = None,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
    ) -> Self:
        """Open (creating if needed) the profile in ``profile_dir`` (mode 0700 when created).

        Args:
            now_ms: the wall clock (ms); tests pass a fixed one so certificates stay valid.
            secret_store: where tokens and the device key live (default: keyring, else a 0600 file).
        """
        profile = Path(profile_dir)
        profile.mkdir(parents=True, exist_ok=True, mode=0o700)
        clock = now_ms or _system_ms
        store = await Store.open(profile / DB_FILE, now_ms=clock, compact_min_bytes=compact_min_bytes)
        try:
            secrets_at_rest = secret_store
            if secrets_at_rest is None:
                secrets_at_rest = await asyncio.to_thread(SecretStore, profile)
            client = cls(store, secrets_at_rest, profile, clock)
            await client._restore()
        except BaseException:
            await store.close()
            raise
        return client

    async def close(self) -> None:
        await self.store.close()
        self._docs.clear()
        self._verdicts.clear()
        self._templates.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _restore(self) -> None:
        """Read the clock, the relay keys and the identity back from ``meta`` and the secrets."""
        async with self.store.transaction() as tx:
            node = await tx.get_meta(_META_NODE)
            if node is None:
                node = "d" + _random.token_hex(6)
                await tx.set_meta(_META_NODE, node)
            last_text = await tx.get_meta(_META_HLC)
            user_id = await tx.get_meta(_META_USER)
            cert_text = await tx.get_meta(_META_CERT)
            keys_text = await tx.get_meta(_META_RELAY_KEYS)
        last = Timestamp.parse(last_text) if last_text else None
        if last is not None and last.node != node:
            last = Timestamp(last.wall_ms, last.counter, node)
        self._clock = HybridClock(node, physical_ms=self._now_ms, last=last)
        self._clock_saved = last_text or ""
        if keys_text:
            keys = {kid: base64.b64decode(v) for kid, v in json.loads(keys_text).items()}
            self._certs = CertificateCache(keys)
        if user_id and cert_text and self._certs is not None:
            private = await asyncio.to_thread(self.secrets.device_key)
            if private is None:
                log.warning("profile %s has an identity but no device key: log in again", self.profile_dir)
                return
            device = DeviceKey(private, base64.b64decode(cert_text))
            try:
                self._adopt(user_id, device, self._certs.trusted_keys)
            except ClientError as exc:
                log.warning("stored identity unusable (%s): log in again", exc)

    # --- identity ------------------------------------------------------------------------------

    def _adopt(self, user_id: str, device: DeviceKey, relay_keys: Mapping[str, bytes]) -> Identity:
        try:
            cert = parse_certificate(device.certificate, relay_keys)
        except (SchemaError, SignatureError) as exc:
            raise InvalidRequest(f"certificate does not verify: {exc}") from None
        if cert.user_id != user_id:
            raise InvalidRequest("certificate is for another user")
        if cert.device_key != public_bytes(device.private):
            raise InvalidRequest("certificate is for another device key")
        identity = Identity(user_id, device, cert, dict(relay_keys))
        self._identity = identity
        self._author = Author(user_id, device, self._clock)
        return identity

    @property
    def identity(self) -> Identity | None:
        return self._identity

    @property
    def user_id(self) -> str | None:
        return None if self._identity is None else self._identity.user_id

    @property
    def relay_keys(self) -> dict[str, bytes]:
        return {} if self._certs is None else dict(self._certs.trusted_keys)

    async def set_relay_keys(self, relay_keys: Mapping[str, bytes]) -> None:
        """Cache the relay's public keys (``/.well-known/jwks.json``); every update is checked with them."""
        keys = {str(k): bytes(v) for k, v in relay_keys.items()}
        async with self.store.transaction() as tx:
            await tx.set_meta(
                _META_RELAY_KEYS, json.dumps({k: base64.b64encode(v).decode() for k, v in keys.items()})
            )
        self._certs = CertificateCache(keys)

    async def set_identity(
        self, user_id: str, device: DeviceKey, relay_keys: Mapping[str, bytes]
    ) -> Identity:
        """Adopt a login: the device key (kept in the secret store) and its relay-issued certificate."""
        keys = {str(k): bytes(v) for k, v in relay_keys.items()}
        identity = self._adopt(user_id, device, keys)
        await asyncio.to_thread(self.secrets.set_device_key, device.private)
        async with self.store.transaction() as tx:
            await tx.set_meta(_META_USER, user_id)
            await tx.set_meta(_META_CERT, base64.b64encode(device.certificate).decode())
            await tx.set_meta(
                _META_RELAY_KEYS, json.dumps({k: base64.b64encode(v).decode() for k, v in keys.items()})
            )
        self._certs = CertificateCache(keys)
        log.info("profile %s now signs as %s (certificate %s)", self.profile_dir, user_id, device.cert_id)
        return identity

    async def logout(self, reason: str = "logged out") -> None:
        """Forget the tokens and the device key; the local data (and queued changes) stay."""
        await asyncio.to_thread(self.secrets.clear)
        async with self.store.transaction() as tx:
            await tx.delete_meta(_META_USER)
            await tx.delete_meta(_META_CERT)
        self._identity = None
        self._author = None
        self.emit(LoggedOut(at_ms=self._now_ms(), reason=reason))

    async def certificate_on_disk(self) -> bytes | None:
        """The device certificate the profile's store holds now: None once any process sharing
        the profile logged out (this object's :attr:`identity` is only what it read at open)."""
        async with self.store.read() as tx:
            text = await tx.get_meta(_META_CERT)
        return None if text is None else base64.b64decode(text)

    def _require_author(self) -> tuple[Author, Identity]:
        if self._author is None or self._identity is None:
            raise NotLoggedIn("not logged in")
        return self._author, self._identity

    def _require_certs(self) -> CertificateCache:
        if self._certs is None:
            raise NotLoggedIn("no relay keys cached: log in first")
        return self._certs

    # --- events --------------------------------------------------------------------------------

    def emit(self, event: ClientEvent) -> None:
        """Queue an event for the app; when nobody reads, the oldest are dropped (and counted)."""
        while True:
            try:
                self.events.put_nowait(event)
                return
            except asyncio.QueueFull:
                self.events.get_nowait()
                self.dropped_events += 1

    # --- documents in memory -------------------------------------------------------------------

    async def _catch_up(self, tx: Tx) -> None:
        """Apply what other processes committed since our last transaction (cheap when nobody did)."""
        version = await tx.data_version()
        if version == self._data_version:
            return
        first = self._data_version is None
        self._data_version = version
        stored = await tx.get_meta(_META_HLC)
        if stored:
            self._observe(stored)  # another process may have used the clock since we read it
        if first:
            return  # nothing loaded yet: documents are read fresh from disk when first used
        self._verdicts.clear()
        self._templates.clear()
        if self._docs:
            current = await tx.doc_versions(self._docs)
            for doc_id, loaded in list(self._docs.items()):
                now = current.get(doc_id)
                if now is None or now == (loaded.generation, loaded.version):
                    continue
                if now[0] != loaded.generation:
                    # Compacted or rebuilt from the relay (a rebuild drops content and may move
                    # the writer generation): read it afresh on next use.
                    del self._docs[doc_id]
                    continue
                delta = await tx.doc_since(doc_id, loaded.generation, loaded.upto)
                if delta is None:
                    continue
                try:
                    if delta.snapshot:
                        loaded.replica.apply_update(delta.snapshot)
                    for update_id, payload in delta.updates:
                        loaded.replica.apply_update(payload)
                        loaded.upto = max(loaded.upto, update_id)
                except EngineError:
                    self._docs.pop(doc_id, None)
                    raise
                loaded.generation, loaded.version = delta.generation, delta.version
                loaded.bookings = None

    def _observe(self, hlc: str) -> None:
        try:
            self._clock.observe(hlc)
        except (ClockSkewError, SchemaError):
            pass  # a remote clock far ahead is not adopted (crdt_core.hlc); the record stays valid

    async def _load(self, tx: Tx, doc_id: str) -> _Loaded:
        loaded = self._docs.get(doc_id)
        if loaded is not None:
            return loaded
        signer = None if self._identity is None else self._identity.device.cert_id
        client_id = None
        if signer is not None:
            client_id = _writer_client(signer, await tx.writer_generation(doc_id, signer))
        replica = Replica(client_id)
        stored = await tx.load_doc(doc_id)
        generation = upto = version = 0
        if stored is not None:
            try:
                if stored.snapshot:
                    replica.apply_update(stored.snapshot)
                for update_id, payload in stored.updates:
                    replica.apply_update(payload)
                    upto = update_id
            except EngineError as exc:
                raise ClientError(f"document {doc_id} is corrupt in {self.store.path}: {exc}") from None
            generation, version = stored.generation, stored.version
        loaded = _Loaded(replica, generation, upto, version, signer=signer)
        self._docs[doc_id] = loaded
        return loaded

    async def _staff_list(self, tx: Tx, doc: DocId) -> frozenset[str] | None:
        """For a bookings or shop document, the users its shop's staff list names (staff rights)."""
        if doc.kind not in (DocKind.BOOKINGS, DocKind.SHOP) or doc.shop_id is None:
            return None
        shop = DocId.shop(doc.shop_id)
        return shop_staff((await self._load(tx, str(shop))).replica, shop)

    async def _rights_in(self, identity: Identity, shop_id: str) -> Rights:
        """The profile's rights, with staff rights on ``shop_id`` if its staff list names the user."""
        async with self._read() as tx:
            staff = await self._staff_list(tx, DocId.shop(shop_id)) or frozenset()
        return identity.rights.with_shop_staff(shop_id, staff)

    async def _shop_templates(self, tx: Tx, shop_id: str) -> dict[str, SlotTemplate]:
        cached = self._templates.get(shop_id)
        if cached is None:
            doc = DocId.shop(shop_id)
            cached = slot_templates((await self._load(tx, str(doc))).replica, doc)
            self._templates[shop_id] = cached
        return cached

    # --- transactions --------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, *, local: bool, optimistic: bool = False) -> AsyncIterator[_Work]:
        """One client write transaction; on failure the replicas it touched are dropped from memory.

        ``optimistic``: do not ask SQLite first whether another process committed (``_catch_up``,
        a trip to the SQLite thread of its own); check it on the thread, under the write lock,
        just before the transaction's first statement (for a booking with warm caches: right
        before COMMIT, in the same trip). If someone did, the transaction rolls back and
        :class:`_Stale` is raised: the caller runs its body again without ``optimistic``.
        """
        work: _Work | None = None
        try:
            async with self.store.transaction() as tx:
                work = _Work(tx, local)
                seen = self._data_version
                if optimistic and seen is not None:
                    tx.defer_call(lambda conn: _unchanged_since(conn, seen))
                else:
                    await self._catch_up(tx)
                yield work
                await self._finish(work)
                for step in work.epilogue:
                    await step(tx)
        except BaseException:
            if work is not None:
                for doc_id in work.dirty:
                    self._docs.pop(doc_id, None)
                    self._verdicts.pop(doc_id, None)
                self._templates.clear()
                self._clock_saved = ""  # _finish may have counted the clock as saved: save it again
            raise
        self._verdicts.update(work.verdicts)
        for event in work.events:
            self.emit(event)
        due = [d for d, r in work.appended_later.items() if self.store.needs_compaction(r)]
        if due:
            await self._compact(due)

    async def _compact(self, doc_ids: Sequence[str]) -> None:
        """Fold the logs of ``doc_ids`` into new snapshots, in a transaction of its own.

        Why after the write rather than inside it: a local write's append travels with its
        COMMIT (one trip to SQLite fewer), so whether the log outgrew the snapshot is known only
        then. Compaction is maintenance, not part of the write's meaning: it only needs the
        write lock and a replica caught up with the whole log, which this transaction has. It
        runs for about one write in a hundred (the log must outgrow the snapshot). A failure is
        logged, not raised: the write itself is committed, and the next append retries.
        """
        try:
            async with self.store.transaction() as tx:
                await self._catch_up(tx)
                for doc_id in doc_ids:
                    loaded = self._docs.get(doc_id)
                    if loaded is not None:
                        loaded.generation, loaded.version = await tx.compact(
                            doc_id, loaded.replica.encode_state()
                        )
        except Exception as exc:
            log.warning("compacting %s failed (retried after the next write): %s", ", ".join(doc_ids), exc)
            for doc_id in doc_ids:
                self._docs.pop(doc_id, None)
        except BaseException:
            for doc_id in doc_ids:
                self._docs.pop(doc_id, None)
            raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        async with self.store.read() as tx:
            await self._catch_up(tx)
            yield tx

    async def _finish(self, work: _Work) -> None:
        """Projections and verdicts, compaction, and the clock: the tail of every write transaction."""
        await self._project(work)
        for doc_id, appended in work.appended.items():
            if work.tx.needs_compaction(appended):
                loaded = self._docs[doc_id]
                loaded.generation, loaded.version = await work.tx.compact(
                    doc_id, loaded.replica.encode_state()
                )
        stamp = self._clock.last.encode()
        if stamp != self._clock_saved:
            await work.tx.set_meta(_META_HLC, stamp)
            self._clock_saved = stamp

    async def _project(self, work: _Work) -> None:
        tx = work.tx
        bookings: set[str] = set()
        recapacity: set[str] = set()  # bookings docs whose slot capacities may have changed
        for doc_id, records in work.touched.items():
            doc = parse_doc_id(doc_id)
            if doc.kind is DocKind.BOOKINGS:
                bookings.add(doc_id)
            elif doc.kind in (DocKind.CATALOG, DocKind.SHOP):
                slots_changed = await proj.project_records(tx, doc, records)
                if doc.kind is DocKind.SHOP and slots_changed:
                    assert doc.shop_id is not None
                    self._templates.pop(doc.shop_id, None)
                    held = await tx.held_docs(f"bookings:{doc.shop_id}:")
                    bookings.update(held)
                    recapacity.update(held)
        me = self.user_id
        now = self._now_ms()
        for doc_id in sorted(bookings):
            doc = parse_doc_id(doc_id)
            assert doc.shop_id is not None and doc.day is not None
            state = await self._bookings_state(
                tx, await self._load(tx, doc_id), doc, work.touched.get(doc_id, ())
            )
            templates = await self._shop_templates(tx, doc.shop_id)
            capacities = proj.capacities_on(templates, doc.day)
            limits = per_customer_limits(templates)
            baseline = work.verdicts.get(doc_id) or self._verdicts.get(doc_id)
            slots = None
            if baseline is not None and doc_id not in recapacity:
                slots = _slots_touched(state, work.touched.get(doc_id, ()))
            fast = None
            changed: list[str] | None = None
            if baseline is not None and slots is not None and work.local:
                fast = _appended(baseline, state, capacities, work.touched.get(doc_id, ()))
            if fast is not None:
                verdict = fast
                changed = [key for _root, key, _rec in work.touched.get(doc_id, ())]
            elif baseline is None or slots is None:
                verdict = compute_verdict(state, capacities, limits)
            else:
                verdict = _reverdict(baseline, state, capacities, slots, limits)
            changes = await proj.project_bookings(
                tx, doc, state, verdict, baseline, slots=slots, changed=changed
            )
            work.verdicts[doc_id] = verdict
            for change in changes:
                if change.customer != me:
                    continue
                work.changes.append(change)
                event = booking_event(
                    change, verdict.claims[change.reservation_id], doc, now, local=work.local
                )
                if event is not None:
                    work.events.append(event)

    async def _bookings_state(
        self, tx: Tx, loaded: _Loaded, doc: DocId, added: Iterable[ProjectedRecord]
    ) -> BookingsState:
        """The document's claims as the verdict sees them: the cache plus ``added``, or a full read.

        A record the relay refused is in the local document only until the document is rebuilt
        from the relay's (``rebuild_from_relay``), which the next sync does.
        """
        state = loaded.bookings
        if state is None:
            state = read_bookings(loaded.replica, doc)
            loaded.bookings = state
            return state
        for _root, key, rec in added:
            if isinstance(rec, Reservation):
                state.reservations[key] = rec
            elif isinstance(rec, StatusEvent):
                state.events[key] = rec
            elif isinstance(rec, Stamp):
                state.stamps[rec.no] = rec
        return state

    async def _put(
        self,
        work: _Work,
        doc: DocId,
        records: Sequence[TypedRecord],
        entity: tuple[str, str, str],
    ) -> None:
        """Sign ``records`` into ``doc`` and queue the update (the only local-write path).

        The outbox row is deferred to the transaction's next trip to SQLite (at the latest its
        COMMIT): same transaction, one thread hop fewer per write.
        """
        author, identity = self._require_author()
        did = str(doc)
        pairs: list[tuple[TypedRecord, str]] = []
        for rec in records:
            key = getattr(rec, rec.KEY_FIELD) if rec.KEY_FIELD else new_id()
            try:
                parse_record(doc.kind, rec.ROOT, key, rec.KIND, rec.to_fields(), SCHEMA_VERSION)
            except SchemaError as exc:
                raise InvalidRequest(str(exc)) from None
            if isinstance(rec, Reservation) and doc.day is not None and not day_in_range(doc.day, rec.hlc):
                raise InvalidRequest(f"{doc.day.isoformat()} is too far in the past or the future to book")
            hlc = getattr(rec, "hlc", None)
            if hlc is not None and not identity.certificate.valid_at(Timestamp.parse(hlc).wall_ms):
                raise NotLoggedIn("the device certificate is not valid now: log in again")
            pairs.append((rec, key))
        loaded = await self._load(work.tx, did)
        work.dirty.add(did)
        if loaded.signer != identity.device.cert_id:  # loaded before this login: move to its id
            generation = await work.tx.writer_generation(did, identity.device.cert_id)
            loaded.replica = loaded.replica.copy(_writer_client(identity.device.cert_id, generation))
            loaded.signer = identity.device.cert_id
        if generation_of(identity.device.cert_id, loaded.replica.client_id) is None:
            raise NotLoggedIn(f"this device has used up its client ids in {did}: log in again to write there")
        update = author.put(loaded.replica, doc, pairs)

        def appended(result: AppendResult) -> None:  # on the SQLite thread, before COMMIT returns
            loaded.upto, loaded.version = result.update_id, result.version
            work.appended_later[did] = result

        work.tx.append_update_later(did, update, "local", appended)
        work.touched.setdefault(did, []).extend((rec.ROOT, key, rec) for rec, key in pairs)
        entity_type, entity_id, operation = entity
        work.tx.enqueue_later(entity_type, entity_id, operation, update, did)
