"""The sans-I/O sync protocol, driven in memory: a client and a relay joined by lists of bytes."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from hypothesis import given, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdt_core.engine import Replica
from crdt_core.errors import CodecError, LocalProtocolError
from crdt_core.messages import (
    Ack,
    Auth,
    ClientUpdate,
    CloseAction,
    CloseCode,
    ErrorCode,
    ErrorMessage,
    Limit,
    RelayUpdate,
    Stamped,
    Subscribe,
    Sync,
    Unsubscribe,
    Welcome,
    close_action,
    decode,
    encode_stamped,
    encode_update,
)
from crdt_core.protocol import (
    Acked,
    AuthRequested,
    ClientEvent,
    ClientProtocol,
    ConnState,
    Deadline,
    DocState,
    DocSynced,
    ErrorReceived,
    GapDetected,
    RelayEvent,
    RelayProtocol,
    StampReceived,
    SubscribeRequested,
    UnsubscribeRequested,
    UpdateReceived,
    UpdateSubmitted,
    Welcomed,
)
from crdt_core.state import CONN_TRANSITIONS, DOC_TRANSITIONS, ConnectionMachine, ConnEvent, DocMachine

SV0 = b"\x00"  # the Yjs v1 state vector of an empty document
UPD0 = b"\x00\x00"  # the Yjs v1 update that changes nothing
LIMITS: dict[str, int] = {Limit.MAX_MESSAGE: 1 << 16, Limit.MAX_DOCS: 8}

Role = Literal["client", "relay"]


class ProtocolPair:
    """A client and a relay protocol joined by an in-memory link (no event loop, no sockets).

    ``send(role)`` moves everything ``role`` has queued to the other side and returns the events
    the other side produced; ``expect`` checks them. The link records every message it carried,
    decoded, so tests can assert on the wire as well as on the events.
    """

    def __init__(self, *, header_auth: bool = False, limits: dict[str, int] | None = None) -> None:
        self.client = ClientProtocol(header_auth=header_auth)
        self.relay = RelayProtocol(header_auth=header_auth)
        self.limits = dict(LIMITS if limits is None else limits)
        self.wire: list[tuple[Role, object]] = []

    def send(self, role: Role, expect: list[Any] | None = None) -> list[Any]:
        sender, receiver = (self.client, self.relay) if role == "client" else (self.relay, self.client)
        for data in sender.data_to_send():
            self.wire.append((role, decode(data, max_size=1 << 30)))
            receiver.receive_message(data)
        events: list[Any] = list(receiver.events_received())
        if expect is not None:
            assert events == expect
        return events

    def exchange(self) -> tuple[list[RelayEvent], list[ClientEvent]]:
        """One round trip: the client's queue to the relay, then the relay's back."""
        return self.send("client"), self.send("relay")

    def open(self, user: str = "u1") -> Welcomed:
        if self.relay.state is ConnState.AWAIT_AUTH:
            self.client.authenticate("token-1")
            self.send("client", expect=[AuthRequested("token-1")])
        self.relay.accept_auth(user, "epoch-1", "relay/test", self.limits)
        (welcome,) = self.send("relay")
        assert isinstance(welcome, Welcomed)
        assert self.client.state is self.relay.state is ConnState.OPEN
        return welcome

    def subscribe_live(self, doc: str, seq: int = 0, sv: bytes = SV0) -> None:
        self.client.subscribe(doc, sv)
        self.send("client", expect=[SubscribeRequested(doc, sv)])
        self.relay.send_sync(doc, UPD0, SV0, seq)
        self.send("relay", expect=[DocSynced(doc, UPD0, SV0, seq)])
        assert self.client.doc_state(doc) is self.relay.doc_state(doc) is DocState.LIVE


def opened(**kwargs: Any) -> ProtocolPair:
    pair = ProtocolPair(**kwargs)
    pair.open()
    return pair


def closed_with(proto: ClientProtocol | RelayProtocol, code: int) -> None:
    assert proto.close_expected()
    assert proto.state is ConnState.CLOSING
    assert proto.close_code == code


# --- authentication ------------------------------------------------------------------------------


def test_auth_by_first_message() -> None:
    pair = ProtocolPair()
    states = [pair.relay.state]
    pair.client.authenticate("token-1")
    assert pair.send("client") == [AuthRequested("token-1")]
    states.append(pair.relay.state)
    assert states == [ConnState.AWAIT_AUTH, ConnState.AUTHENTICATING]
    pair.relay.accept_auth("u1", "epoch-1", "relay/test", {Limit.MAX_DOCS: 3})
    assert pair.send("relay") == [
        Welcomed("u1", "epoch-1", "relay/test", {"max_docs": 3, "max_message": pair.relay.max_message_size})
    ]
    assert pair.client.welcome is not None and pair.client.max_outgoing == pair.relay.max_message_size
    assert pair.wire == [
        ("client", Auth("token-1")),
        ("relay", Welcome("u1", "epoch-1", "relay/test", {"max_docs": 3, "max_message": 1 << 20})),
    ]


def test_auth_by_header_skips_the_auth_message() -> None:
    pair = ProtocolPair(header_auth=True)
    assert pair.relay.state is pair.client.state is ConnState.AUTHENTICATING
    with pytest.raises(LocalProtocolError):
        pair.client.authenticate("token-1")
    pair.open()
    assert [kind for kind, _ in pair.wire] == ["relay"]


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (CloseCode.TOKEN_EXPIRED, CloseAction.REFRESH_TOKEN),
        (CloseCode.AUTH_FAILED, CloseAction.LOGIN),
        (CloseCode.SESSION_REVOKED, CloseAction.LOGIN),
        (CloseCode.ACCOUNT_DISABLED, CloseAction.STOP),
    ],
)
def test_rejected_auth_closes_with_a_distinct_code(code: CloseCode, action: CloseAction) -> None:
    pair = ProtocolPair()
    pair.client.authenticate("stale")
    pair.send("client")
    pair.relay.reject_auth(code, "token expired")
    closed_with(pair.relay, code)
    assert pair.relay.close_reason == "token expired"
    assert pair.relay.data_to_send() == []
    assert close_action(pair.relay.close_code or 0) is action
    with pytest.raises(LocalProtocolError):
        pair.relay.accept_auth("u1", "e", "s", {})


def test_auth_deadline_is_reported_and_expires_into_4008() -> None:
    relay = RelayProtocol()
    assert relay.deadlines() == {Deadline.AUTH}
    relay.expire(Deadline.RESPONSE)  # not pending: nothing happens
    assert relay.state is ConnState.AWAIT_AUTH
    relay.expire(Deadline.AUTH)
    closed_with(relay, CloseCode.AUTH_TIMEOUT)
    assert relay.deadlines() == frozenset()

    pair = ProtocolPair()
    assert pair.client.deadlines() == frozenset()  # nothing sent yet
    pair.client.authenticate("t")
    assert pair.client.deadlines() == {Deadline.AUTH}
    pair.send("client")
    pair.relay.accept_auth("u1", "e", "s", {})
    pair.send("relay")
    assert pair.relay.deadlines() == pair.client.deadlines() == frozenset()
    pair.relay.expire(Deadline.AUTH)  # the timer raced with the welcome: a no-op
    assert pair.relay.state is ConnState.OPEN


def test_client_response_deadline() -> None:
    pair = opened()
    pair.client.subscribe("d", SV0)
    assert pair.client.deadlines() == {Deadline.RESPONSE}
    pair.send("client")
    pair.relay.send_sync("d", UPD0, SV0, 0)
    pair.send("relay")
    assert pair.client.deadlines() == frozenset()
    pair.client.send_update("d", 1, UPD0)
    assert pair.client.deadlines() == {Deadline.RESPONSE}
    pair.client.expire(Deadline.RESPONSE)
    closed_with(pair.client, CloseCode.GOING_AWAY)


# --- the sync exchange with real documents ---------------------------------------------------------


def test_sync_exchange_converges_real_documents() -> None:
    doc = "bookings:s1:2025-06-01"
    client_doc, relay_doc = Replica(1), Replica(2)
    client_doc.write([("res", "r-client", b"offline booking")])
    relay_doc.write([("res", "r-other", b"someone else's booking")])
    relay_seq = 5

    pair = opened()
    # Sync step 1: the client's state vector.
    pair.client.subscribe(doc, client_doc.state_vector())
    (request,) = pair.send("client")
    assert isinstance(request, SubscribeRequested)
    # Sync step 2: exactly what the client lacks, the relay's state vector, the current seq.
    pair.relay.send_sync(doc, relay_doc.diff(request.sv), relay_doc.state_vector(), relay_seq)
    (synced,) = pair.send("relay")
    assert isinstance(synced, DocSynced) and synced.seq == relay_seq
    client_doc.apply_update(synced.update)
    assert pair.client.last_seq(doc) == relay_seq and pair.relay.is_live(doc)
    # The client sends back what the relay lacks, as an ordinary update with a uid.
    pair.client.send_update(doc, 1, client_doc.diff(synced.relay_sv))
    assert pair.client.pending_uids == {1}
    (submitted,) = pair.send("client")
    assert isinstance(submitted, UpdateSubmitted) and submitted.uid == 1
    relay_doc.apply_update(submitted.update)
    relay_seq += 1
    pair.relay.ack(doc, 1, relay_seq)  # only after the update is durably stored
    assert pair.send("relay") == [Acked(doc, 1, relay_seq)]
    assert pair.client.pending_uids == frozenset() and pair.relay.unanswered_uids == frozenset()
    assert pair.client.last_seq(doc) == relay_seq
    assert client_doc.to_py() == relay_doc.to_py()
    assert set(client_doc.to_py()["res"]) == {"r-client", "r-other"}


def test_live_updates_acks_and_stamps_advance_the_cursor() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    writer = Replica(7)
    update = writer.write([("res", "r1", b"claim")])
    pair.relay.send_update("d", update, 11)
    assert pair.send("relay") == [UpdateReceived("d", update, 11)]
    pair.client.send_update("d", 1, update)
    pair.send("client")
    pair.relay.ack("d", 1, 12)
    pair.relay.send_stamp("d", 13, UPD0, [(1, "r1")])
    assert pair.send("relay") == [Acked("d", 1, 12), StampReceived("d", UPD0, 13, ((1, "r1"),))]
    assert pair.client.last_seq("d") == 13


def test_duplicates_are_delivered_but_do_not_move_the_cursor() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=4)
    pair.relay.send_update("d", b"\x01\x02", 3)
    pair.relay.send_update("d", b"\x01\x02", 4)
    assert pair.send("relay") == [UpdateReceived("d", b"\x01\x02", 3), UpdateReceived("d", b"\x01\x02", 4)]
    assert pair.client.last_seq("d") == 4
    # An ack at or below the cursor is normal: a re-sent update the relay already had.
    pair.client.send_update("d", 9, b"\x01\x02")
    pair.send("client")
    pair.relay.ack("d", 9, 4)
    assert pair.send("relay") == [Acked("d", 9, 4)]
    assert pair.client.last_seq("d") == 4 and pair.client.doc_state("d") is DocState.LIVE


def test_gap_detection_and_resync() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=4)
    pair.relay.send_update("d", b"\x01\x07", 7)
    assert pair.send("relay") == [GapDetected("d", 5, 7), UpdateReceived("d", b"\x01\x07", 7)]
    assert pair.client.doc_state("d") is DocState.STALE and pair.client.last_seq("d") is None
    # While stale, live messages are still delivered (harmless) but not counted.
    pair.relay.send_update("d", b"\x01\x09", 9)
    assert pair.send("relay") == [UpdateReceived("d", b"\x01\x09", 9)]
    # The shell re-runs the exchange with its current state vector: a fresh sub.
    pair.client.resync("d", b"\x01\x01\x05")
    assert pair.send("client") == [SubscribeRequested("d", b"\x01\x01\x05")]
    assert pair.relay.doc_state("d") is DocState.SYNCING and not pair.relay.is_live("d")
    pair.relay.send_sync("d", UPD0, SV0, 9)
    assert pair.send("relay") == [DocSynced("d", UPD0, SV0, 9)]
    assert pair.client.doc_state("d") is DocState.LIVE and pair.client.last_seq("d") == 9
    assert pair.relay.is_live("d")


def test_an_ack_can_reveal_a_gap() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=1)
    pair.client.send_update("d", 1, UPD0)
    pair.send("client")
    pair.relay.ack("d", 1, 3)
    assert pair.send("relay") == [GapDetected("d", 2, 3), Acked("d", 1, 3)]
    assert pair.client.pending_uids == frozenset()


def test_updates_while_syncing_are_delivered_untracked() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=1)
    pair.client.resync("d", SV0)
    pair.relay.send_update("d", b"\x01", 2)  # in flight before the relay sees the resync
    assert pair.send("relay") == [UpdateReceived("d", b"\x01", 2)]
    assert pair.client.doc_state("d") is DocState.SYNCING


def test_unsubscribe_stops_the_fan_out_and_late_messages_are_ignored() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=1)
    pair.client.send_update("d", 5, UPD0)
    pair.client.unsubscribe("d")
    assert pair.client.doc_state("d") is DocState.ABSENT
    # Sent by the relay before it read the unsub: dropped by the client, no event, no close.
    pair.relay.send_update("d", b"\x01", 2)
    assert pair.send("relay") == []
    assert pair.send("client") == [UpdateSubmitted("d", 5, UPD0), UnsubscribeRequested("d")]
    assert not pair.relay.is_live("d") and pair.relay.send_update("d", b"\x01", 3) is False
    # The pending update is still answered after the unsub.
    pair.relay.ack("d", 5, 3)
    assert pair.send("relay") == [Acked("d", 5, 3)]
    assert pair.client.state is ConnState.OPEN


def test_subscribe_unsubscribe_subscribe_before_any_answer() -> None:
    pair = opened()
    pair.client.subscribe("d", SV0)
    pair.client.unsubscribe("d")
    assert pair.client.doc_state("d") is DocState.DRAINING
    pair.client.subscribe("d", b"\x01\x01\x01")
    assert pair.send("client") == [
        SubscribeRequested("d", SV0),
        UnsubscribeRequested("d"),
        SubscribeRequested("d", b"\x01\x01\x01"),
    ]
    pair.relay.send_sync("d", UPD0, SV0, 1)
    pair.relay.send_sync("d", UPD0, SV0, 2)
    # The first answer is delivered too (applying it is harmless); only the last makes it live.
    events = pair.send("relay")
    assert events == [DocSynced("d", UPD0, SV0, 1), DocSynced("d", UPD0, SV0, 2)]
    assert pair.client.doc_state("d") is pair.relay.doc_state("d") is DocState.LIVE
    assert pair.client.last_seq("d") == 2


def test_answers_to_an_abandoned_subscription_are_absorbed() -> None:
    pair = opened()
    pair.client.subscribe("d", SV0)
    pair.send("client")
    pair.relay.send_sync("d", UPD0, SV0, 1)
    pair.client.unsubscribe("d")
    assert pair.send("relay") == []  # the tombstone took the answer
    assert pair.client.doc_state("d") is DocState.ABSENT
    pair.send("client")
    assert pair.relay.doc_state("d") is DocState.ABSENT


# --- errors that keep the connection up ------------------------------------------------------------


def test_refused_subscription_keeps_the_connection() -> None:
    pair = opened()
    pair.client.subscribe("shop:secret", SV0)
    pair.send("client")
    pair.relay.send_error(ErrorCode.FORBIDDEN, "not your shop", doc="shop:secret")
    assert pair.send("relay") == [ErrorReceived("forbidden", "not your shop", "shop:secret", None, False)]
    assert pair.client.doc_state("shop:secret") is pair.relay.doc_state("shop:secret") is DocState.ABSENT
    assert pair.client.state is pair.relay.state is ConnState.OPEN
    pair.subscribe_live("shop:mine")


def test_rejected_update_is_answered_and_not_retryable() -> None:
    pair = opened()
    pair.subscribe_live("d")
    pair.client.send_update("d", 3, UPD0)
    pair.send("client")
    pair.relay.send_error(ErrorCode.REJECTED, "bad_signature: record r1\n(detail)", uid=3)
    (event,) = pair.send("relay")
    assert event == ErrorReceived("rejected", "bad_signature: record r1?(detail)", "d", 3, False)
    assert pair.client.pending_uids == frozenset() and pair.client.state is ConnState.OPEN


def test_retryable_errors_say_so() -> None:
    pair = opened()
    pair.subscribe_live("d")
    pair.client.send_update("d", 1, UPD0)
    pair.client.send_update("d", 2, UPD0)
    pair.send("client")
    pair.relay.send_error(ErrorCode.MISSING_DEPS, "resync first", uid=1)
    pair.relay.send_error("from_the_future", "newer relay", uid=2, retry=True)
    pair.relay.send_error(ErrorCode.RATE_LIMITED, "slow down")
    assert [(e.code, e.retry) for e in pair.send("relay")] == [
        ("missing_deps", True),
        ("from_the_future", True),
        ("rate_limited", True),
    ]


def test_update_for_an_unsubscribed_doc_gets_not_subscribed() -> None:
    pair = opened()
    pair.relay.receive_message(ClientUpdate("elsewhere", 4, UPD0).to_wire())
    assert pair.relay.events_received() == []
    (reply,) = pair.relay.data_to_send()
    assert decode(reply) == ErrorMessage(
        "not_subscribed", "subscribe to elsewhere before sending updates", "elsewhere", 4, True
    )
    assert pair.relay.state is ConnState.OPEN


def test_max_docs_is_enforced_by_the_relay_protocol() -> None:
    pair = opened(limits={Limit.MAX_DOCS: 1})
    pair.subscribe_live("a")
    pair.client.subscribe("b", SV0)
    assert pair.send("client") == []  # answered without bothering the shell
    assert pair.send("relay") == [
        ErrorReceived("too_many_docs", "at most 1 documents per connection", "b", None, False)
    ]
    assert pair.client.doc_state("b") is pair.relay.doc_state("b") is DocState.ABSENT
    pair.client.resync("a", SV0)  # a re-sub of a subscribed doc is not a new doc
    assert pair.send("client") == [SubscribeRequested("a", SV0)]


# --- protocol violations close with the right code ----------------------------------------------------


def test_first_message_must_be_auth() -> None:
    relay = RelayProtocol()
    relay.receive_message(Subscribe("d", SV0).to_wire())
    closed_with(relay, CloseCode.PROTOCOL_VIOLATION)
    assert "first message must be auth" in relay.close_reason
    assert relay.events_received() == []


@pytest.mark.parametrize(
    ("prepare", "message", "code"),
    [
        ("authenticating", Subscribe("d", SV0), CloseCode.PROTOCOL_VIOLATION),
        ("open", Auth("again"), CloseCode.PROTOCOL_VIOLATION),
        ("open", Welcome("u", "e", "s", {}), CloseCode.PROTOCOL_VIOLATION),
        ("open", RelayUpdate("d", UPD0, 1), CloseCode.PROTOCOL_VIOLATION),
        ("open", Ack("d", 1, 1), CloseCode.PROTOCOL_VIOLATION),
    ],
)
def test_relay_closes_on_violations(prepare: str, message: Any, code: int) -> None:
    pair = ProtocolPair()
    pair.client.authenticate("t")
    pair.send("client")
    if prepare == "open":
        pair.relay.accept_auth("u", "e", "s", {})
        pair.relay.data_to_send()
    pair.relay.receive_message(message.to_wire())
    closed_with(pair.relay, code)


def test_relay_closes_on_a_uid_sent_twice_before_its_answer() -> None:
    pair = opened()
    pair.subscribe_live("d")
    pair.relay.receive_message(ClientUpdate("d", 1, UPD0).to_wire())
    pair.relay.receive_message(ClientUpdate("d", 1, UPD0).to_wire())
    closed_with(pair.relay, CloseCode.PROTOCOL_VIOLATION)
    assert pair.relay.events_received() == [UpdateSubmitted("d", 1, UPD0)]


@pytest.mark.parametrize(
    "message",
    [
        Sync("d", UPD0, SV0, 1),  # no sub pending
        Ack("d", 99, 1),  # unknown uid
        ErrorMessage("internal", "", None, 99, True),  # unknown uid
        ErrorMessage("forbidden", "", "d", None, False),  # no sub pending
        Welcome("u", "e", "s", {}),  # a second welcome
        Subscribe("d", SV0),  # a client-to-relay message
        ClientUpdate("d", 1, UPD0),
    ],
)
def test_client_closes_on_violations(message: Any) -> None:
    pair = opened()
    pair.client.receive_message(message.to_wire())
    closed_with(pair.client, CloseCode.PROTOCOL_VIOLATION)
    assert pair.client.events_received() == []


def test_client_closes_on_an_ack_for_the_wrong_doc() -> None:
    pair = opened()
    pair.subscribe_live("a")
    pair.client.send_update("a", 1, UPD0)
    pair.client.receive_message(Ack("b", 1, 1).to_wire())
    closed_with(pair.client, CloseCode.PROTOCOL_VIOLATION)
    assert pair.client.pending_uids == {1}  # nothing changed before the violation was found


def test_client_closes_on_messages_before_welcome() -> None:
    client = ClientProtocol()
    client.receive_message(Welcome("u", "e", "s", {}).to_wire())  # never authenticated
    closed_with(client, CloseCode.PROTOCOL_VIOLATION)
    client = ClientProtocol(header_auth=True)
    client.receive_message(RelayUpdate("d", UPD0, 1).to_wire())
    closed_with(client, CloseCode.PROTOCOL_VIOLATION)


def test_garbage_and_oversized_input_close_rather_than_raise() -> None:
    relay = RelayProtocol()
    relay.receive_message(b"\xc1garbage")
    closed_with(relay, CloseCode.PROTOCOL_VIOLATION)
    assert relay.close_reason.startswith("bad message:") and relay.parser_exc is not None

    relay = RelayProtocol(max_message_size=128)
    relay.receive_message(Auth("t" * 200).to_wire())
    closed_with(relay, CloseCode.TOO_BIG)

    relay = RelayProtocol()
    relay.receive_message("a text frame")  # type: ignore[arg-type]
    closed_with(relay, CloseCode.PROTOCOL_VIOLATION)


def test_close_reason_fits_a_control_frame() -> None:
    relay = RelayProtocol()
    relay.receive_message(b"\x81\xa1" + "é".encode() * 1 + b"\xc1" * 500)
    assert relay.close_expected()
    assert len(relay.close_reason.encode()) <= 123
    relay = RelayProtocol()
    relay.close(CloseCode.GOING_AWAY, "é" * 200)
    assert len(relay.close_reason.encode()) <= 123 and relay.close_reason.endswith("...")


def test_after_a_close_input_is_ignored_and_eof_ends_it() -> None:
    pair = opened()
    pair.subscribe_live("d")
    pair.relay.close(CloseCode.GOING_AWAY, "restarting")
    closed_with(pair.relay, CloseCode.GOING_AWAY)
    assert not pair.relay.is_live("d") and pair.relay.send_update("d", b"\x01", 1) is False
    pair.relay.receive_message(b"garbage")
    pair.relay.receive_message(Unsubscribe("d").to_wire())
    assert pair.relay.events_received() == [] and pair.relay.close_code == CloseCode.GOING_AWAY
    pair.relay.close(CloseCode.NORMAL)  # the first close wins
    assert pair.relay.close_code == CloseCode.GOING_AWAY
    pair.relay.receive_eof()
    pair.relay.receive_eof()
    assert pair.relay.state is ConnState.CLOSED and not pair.relay.close_expected()
    pair.client.receive_eof()
    assert pair.client.state is ConnState.CLOSED
    assert pair.client.pending_uids == frozenset()


def test_unexpected_internal_errors_close_with_1011(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = RelayProtocol()

    def broken(message: object) -> None:
        raise KeyError("secret detail")

    monkeypatch.setattr(relay, "_handle", broken)
    relay.receive_message(Auth("t").to_wire())
    closed_with(relay, CloseCode.INTERNAL)
    assert relay.close_reason == "internal error" and isinstance(relay.parser_exc, KeyError)


@given(st.binary(max_size=120))
def test_garbage_never_raises_in_any_state(data: bytes) -> None:
    for proto in _protocols_in_every_state():
        before = proto.state
        proto.receive_message(data)
        if proto.close_expected() and before is not ConnState.CLOSING:
            assert proto.close_code in (CloseCode.PROTOCOL_VIOLATION, CloseCode.TOO_BIG)


def _protocols_in_every_state() -> list[ClientProtocol | RelayProtocol]:
    pair = opened()
    pair.subscribe_live("d")
    closing = RelayProtocol()
    closing.close(CloseCode.NORMAL)
    authenticating = ClientProtocol()
    authenticating.authenticate("t")
    return [
        RelayProtocol(),
        RelayProtocol(header_auth=True),
        pair.relay,
        pair.client,
        closing,
        authenticating,
    ]


# --- illegal local calls ---------------------------------------------------------------------------


def test_client_local_misuse_raises_before_changing_state() -> None:
    client = ClientProtocol()
    with pytest.raises(LocalProtocolError, match="AWAIT_AUTH"):
        client.subscribe("d", SV0)
    with pytest.raises(LocalProtocolError, match="token"):
        client.authenticate("bad token")
    assert client.state is ConnState.AWAIT_AUTH and client.data_to_send() == []
    client.authenticate("t")
    with pytest.raises(LocalProtocolError):
        client.authenticate("t")

    pair = opened()
    client = pair.client
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        client.send_update("d", 1, UPD0)
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        client.resync("d", SV0)
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        client.unsubscribe("d")
    with pytest.raises(LocalProtocolError, match="doc"):
        client.subscribe("bad doc", SV0)
    assert client.doc_state("bad doc") is DocState.ABSENT
    client.subscribe("d", SV0)
    with pytest.raises(LocalProtocolError, match="already subscribed"):
        client.subscribe("d", SV0)
    client.send_update("d", 1, UPD0)
    with pytest.raises(LocalProtocolError, match="already pending"):
        client.send_update("d", 1, UPD0)
    with pytest.raises(LocalProtocolError, match="limit"):
        client.send_update("d", 2, b"\x01" * (1 << 16))
    with pytest.raises(LocalProtocolError, match="uid"):
        client.send_update("d", -1, UPD0)
    assert client.pending_uids == {1}
    with pytest.raises(LocalProtocolError, match="may not be sent"):
        client.close(CloseCode.ABNORMAL)


def test_relay_local_misuse_raises_before_changing_state() -> None:
    relay = RelayProtocol()
    with pytest.raises(LocalProtocolError):
        relay.accept_auth("u", "e", "s", {})
    with pytest.raises(LocalProtocolError):
        relay.send_sync("d", UPD0, SV0, 0)
    with pytest.raises(LocalProtocolError):
        relay.reject_auth(CloseCode.AUTH_FAILED, "no auth pending")

    pair = opened()
    relay = pair.relay
    with pytest.raises(LocalProtocolError, match="no pending sub"):
        relay.send_sync("d", UPD0, SV0, 0)
    with pytest.raises(LocalProtocolError, match="not awaiting"):
        relay.ack("d", 1, 1)
    with pytest.raises(LocalProtocolError, match="has none"):
        relay.send_error(ErrorCode.FORBIDDEN, "x", doc="d")
    with pytest.raises(LocalProtocolError):
        relay.accept_auth("u", "e", "s", {})
    with pytest.raises(LocalProtocolError):
        relay.reject_auth(CloseCode.AUTH_FAILED, "too late")
    pair.client.subscribe("d", SV0)
    pair.client.send_update("d", 1, UPD0)
    pair.send("client")
    with pytest.raises(LocalProtocolError, match="was sent for"):
        relay.ack("other", 1, 1)
    with pytest.raises(LocalProtocolError, match="seq"):
        relay.send_sync("d", UPD0, SV0, -1)
    with pytest.raises(LocalProtocolError):
        relay.send_stamp("d", 1, UPD0, [(1, "bad id")])
    assert relay.unanswered_uids == {1} and relay.doc_state("d") is DocState.SYNCING
    assert relay.data_to_send() == []
    relay.close(CloseCode.GOING_AWAY)
    with pytest.raises(LocalProtocolError, match="CLOSING"):
        relay.ack("d", 1, 1)


def test_accept_auth_validates_and_applies_limits() -> None:
    pair = ProtocolPair(header_auth=True)
    with pytest.raises(LocalProtocolError, match="user"):
        pair.relay.accept_auth("", "e", "s", {})
    with pytest.raises(LocalProtocolError, match="too small"):
        pair.relay.accept_auth("u", "e", "s", {Limit.MAX_MESSAGE: 10})
    assert pair.relay.state is ConnState.AUTHENTICATING
    pair.relay.accept_auth("u", "e", "s", {Limit.MAX_MESSAGE: 4096})
    assert pair.relay.max_message_size == 4096
    assert pair.relay.accepted is not None and pair.relay.accepted.user == "u"


# --- fan-out ---------------------------------------------------------------------------------------


def test_fan_out_writes_the_same_bytes_to_every_live_subscriber() -> None:
    pairs = [opened() for _ in range(5)]
    for pair in pairs[:3]:
        pair.subscribe_live("hot", seq=7)
    pairs[3].subscribe_live("other")
    data = encode_update("hot", b"\x01\x02", 8)  # encoded once
    queued = [pair.relay.send_live("hot", data) for pair in pairs]
    assert queued == [True, True, True, False, False]
    for pair in pairs[:3]:
        (sent,) = pair.relay.data_to_send()
        assert sent is data  # the same object: no per-recipient encoding
        pair.client.receive_message(sent)
        assert pair.client.events_received() == [UpdateReceived("hot", b"\x01\x02", 8)]
    assert all(pair.relay.live_docs() == {"hot"} for pair in pairs[:3])


# --- both sides agree, whatever the interleaving --------------------------------------------------------

DOCS = ("a", "b")


class SessionMachine(RuleBasedStateMachine):
    """A client and a relay shell that answers late, with messages crossing in flight.

    The relay shell is a faithful model: it answers every sub in order (sync or refusal, always
    with the doc's current seq), acks updates with the next seq, and fans out updates from
    others. Whatever the interleaving, the connection must never close, no gap may be reported
    (the relay never skips), and once everything is delivered both sides agree on every doc.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pair = opened()
        self.seq = dict.fromkeys(DOCS, 0)
        self.subs: list[str] = []  # SubscribeRequested, oldest first, not yet answered
        self.updates: list[tuple[str, int]] = []  # (doc, uid) awaiting ack
        self.next_uid = 1
        self.gaps: list[GapDetected] = []

    def _client_events(self) -> None:
        for event in self.pair.send("relay"):
            if isinstance(event, GapDetected):
                self.gaps.append(event)

    def _relay_events(self) -> None:
        for event in self.pair.send("client"):
            if isinstance(event, SubscribeRequested):
                self.subs.append(event.doc)
            elif isinstance(event, UpdateSubmitted):
                self.updates.append((event.doc, event.uid))

    @rule(doc=st.sampled_from(DOCS))
    def client_subscribe(self, doc: str) -> None:
        if self.pair.client.doc_state(doc) in (DocState.SYNCING, DocState.LIVE, DocState.STALE):
            self.pair.client.resync(doc, SV0)
        else:
            self.pair.client.subscribe(doc, SV0)

    @rule(doc=st.sampled_from(DOCS))
    def client_unsubscribe(self, doc: str) -> None:
        if self.pair.client.doc_state(doc) in (DocState.SYNCING, DocState.LIVE, DocState.STALE):
            self.pair.client.unsubscribe(doc)

    @rule(doc=st.sampled_from(DOCS))
    def client_update(self, doc: str) -> None:
        if self.pair.client.doc_state(doc) in (DocState.SYNCING, DocState.LIVE, DocState.STALE):
            self.pair.client.send_update(doc, self.next_uid, UPD0)
            self.next_uid += 1

    @rule()
    def deliver_to_relay(self) -> None:
        self._relay_events()

    @rule()
    def deliver_to_client(self) -> None:
        self._client_events()

    @precondition(lambda self: bool(self.subs))
    @rule(accept=st.booleans())
    def relay_answers_a_sub(self, accept: bool) -> None:
        doc = self.subs.pop(0)
        if accept:
            self.pair.relay.send_sync(doc, UPD0, SV0, self.seq[doc])
        else:
            self.pair.relay.send_error(ErrorCode.INTERNAL, "try later", doc=doc)

    @precondition(lambda self: bool(self.updates))
    @rule()
    def relay_acks(self) -> None:
        doc, uid = self.updates.pop(0)
        self.seq[doc] += 1
        self.pair.relay.ack(doc, uid, self.seq[doc])

    @rule(doc=st.sampled_from(DOCS))
    def someone_else_writes(self, doc: str) -> None:
        self.seq[doc] += 1
        self.pair.relay.send_update(doc, b"\x01", self.seq[doc])

    @invariant()
    def connection_stays_up(self) -> None:
        assert self.pair.client.state is ConnState.OPEN and self.pair.relay.state is ConnState.OPEN
        assert self.gaps == []

    def teardown(self) -> None:
        # Quiesce: deliver everything and answer everything, then compare the two sides.
        for _ in range(10):
            self._relay_events()
            while self.subs:
                self.relay_answers_a_sub(True)
            while self.updates:
                self.relay_acks()
            self._client_events()
        client, relay = self.pair.client, self.pair.relay
        assert client.state is relay.state is ConnState.OPEN and self.gaps == []
        assert client.pending_uids == relay.unanswered_uids == frozenset()
        for doc in DOCS:
            assert client.doc_state(doc) is relay.doc_state(doc), doc
            if client.doc_state(doc) is DocState.LIVE:
                assert client.last_seq(doc) == self.seq[doc]


TestSession = SessionMachine.TestCase


# --- the state tables on their own ------------------------------------------------------------------


def test_connection_table_rejects_before_changing_state() -> None:
    with pytest.raises(LocalProtocolError, match="cannot start"):
        ConnectionMachine(ConnState.OPEN)
    machine = ConnectionMachine()
    with pytest.raises(LocalProtocolError, match="can't handle WELCOME"):
        machine.process(ConnEvent.WELCOME)
    assert machine.state is ConnState.AWAIT_AUTH
    assert [
        machine.process(e) for e in (ConnEvent.AUTH, ConnEvent.WELCOME, ConnEvent.CLOSE, ConnEvent.EOF)
    ] == [
        ConnState.AUTHENTICATING,
        ConnState.OPEN,
        ConnState.CLOSING,
        ConnState.CLOSED,
    ]
    assert CONN_TRANSITIONS[ConnState.CLOSED] == {}
    assert all(
        ConnEvent.EOF in row for state, row in CONN_TRANSITIONS.items() if state is not ConnState.CLOSED
    )


def test_doc_table_counts_pending_answers() -> None:
    docs = DocMachine()
    with pytest.raises(LocalProtocolError, match="can't handle UNSUB"):
        docs.unsubscribe("d")
    with pytest.raises(LocalProtocolError, match="not LIVE"):
        docs.set_last_seq("d", 1)
    assert docs.subscribe("d") is DocState.SYNCING
    assert docs.unsubscribe("d") is DocState.DRAINING
    assert docs.subscribe("d") is DocState.SYNCING and docs.pending("d") == 2
    assert list(docs.subscribed()) == ["d"] and docs.count_subscribed() == 1 and docs.any_pending()
    assert docs.refuse("d") is DocState.SYNCING
    assert docs.answer("d") is DocState.LIVE and docs.live == {"d"}
    with pytest.raises(LocalProtocolError, match="can't handle ANSWER_MORE"):
        docs.answer("d")
    assert docs.gap("d") is DocState.STALE and docs.live == set()
    assert docs.unsubscribe("d") is DocState.ABSENT
    assert docs.count_subscribed() == 0 and not docs.any_pending() and docs.last_seq("d") is None
    # GAP is only reachable from LIVE; the relay never fires it.
    assert [state for state, row in DOC_TRANSITIONS.items() if any(e.name == "GAP" for e in row)] == [
        DocState.LIVE
    ]


# --- edges of the local API ------------------------------------------------------------------------


def test_local_construction_rejects_wrong_python_types() -> None:
    with pytest.raises(CodecError, match="doc must be a str, not bytes"):
        Unsubscribe(b"d")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="reason must be a str"):
        ErrorMessage("internal", None)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="close code must be an int"):
        RelayProtocol().close("1000")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="too small"):
        RelayProtocol(max_message_size=10)


def test_client_observers_and_its_auth_deadline() -> None:
    client = ClientProtocol()
    assert client.max_outgoing is None and client.subscribed_docs() == frozenset()
    client.expire(Deadline.AUTH)  # nothing pending yet: a no-op
    assert client.state is ConnState.AWAIT_AUTH
    client.authenticate("t")
    client.expire(Deadline.AUTH)
    closed_with(client, CloseCode.AUTH_TIMEOUT)
    pair = opened()
    pair.subscribe_live("a")
    pair.client.subscribe("b", SV0)
    assert pair.client.subscribed_docs() == {"a", "b"}


def test_client_closes_on_an_err_for_the_wrong_doc() -> None:
    pair = opened()
    pair.subscribe_live("a")
    pair.client.send_update("a", 1, UPD0)
    pair.client.receive_message(ErrorMessage("internal", "", "b", 1, True).to_wire())
    closed_with(pair.client, CloseCode.PROTOCOL_VIOLATION)


def test_relay_send_update_validates_its_arguments() -> None:
    pair = opened()
    pair.subscribe_live("d")
    with pytest.raises(LocalProtocolError, match="seq"):
        pair.relay.send_update("d", b"\x01", -1)


# --- stamped: a booking and its stamps in one message ------------------------------------------


def test_stamped_to_the_sender_is_its_ack_then_the_stamp() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    pair.client.send_update("d", 1, b"\x01\x02")
    pair.send("client")
    assert pair.relay.ack_stamped("d", 1, 11, b"\x03", [(1, "r1")]) is True
    assert pair.send("relay") == [Acked("d", 1, 11), StampReceived("d", b"\x03", 12, ((1, "r1"),))]
    assert pair.wire[-1] == ("relay", Stamped("d", 11, b"\x03", ((1, "r1"),), uid=1))
    assert pair.client.last_seq("d") == 12
    assert pair.client.pending_uids == frozenset() and pair.relay.unanswered_uids == frozenset()
    assert not pair.relay.is_unanswered(1)


def test_stamped_fan_out_is_an_update_then_the_stamp() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    data = encode_stamped("d", 11, b"\x01\x02", b"\x03", [(1, "r1"), (2, "r2")])
    assert pair.relay.send_live("d", data) is True
    assert pair.send("relay") == [
        UpdateReceived("d", b"\x01\x02", 11),
        StampReceived("d", b"\x03", 12, ((1, "r1"), (2, "r2"))),
    ]
    assert pair.client.last_seq("d") == 12


def test_stamped_after_a_gap_reports_the_gap_then_delivers_both() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    pair.relay.send_live("d", encode_stamped("d", 13, b"\x01\x02", b"\x03", [(1, "r1")]))
    assert pair.send("relay") == [
        GapDetected("d", 11, 13),
        UpdateReceived("d", b"\x01\x02", 13),
        StampReceived("d", b"\x03", 14, ((1, "r1"),)),
    ]
    assert pair.client.doc_state("d") is DocState.STALE


def test_stamped_is_a_plain_ack_when_the_doc_is_not_live() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    pair.client.send_update("d", 1, b"\x01\x02")
    pair.client.resync("d", SV0)  # the sender is syncing again: the stamps reach it in the sync
    pair.send("client")
    assert pair.relay.ack_stamped("d", 1, 11, b"\x03", [(1, "r1")]) is False
    assert pair.send("relay") == [Acked("d", 1, 11)]
    assert pair.wire[-1] == ("relay", Ack("d", 1, 11))


def test_stamped_for_an_update_that_is_not_pending_is_a_violation() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    pair.client.receive_message(Stamped("d", 11, b"\x03", ((1, "r1"),), uid=5).to_wire())
    closed_with(pair.client, CloseCode.PROTOCOL_VIOLATION)
    assert pair.client.events_received() == []
    with pytest.raises(LocalProtocolError, match="not awaiting"):
        opened().relay.ack_stamped("d", 5, 11, b"\x03", [])


def test_stamped_across_an_unsubscribe_is_ignored() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    pair.client.unsubscribe("d")
    pair.client.receive_message(encode_stamped("d", 11, b"\x01", b"\x03", [(1, "r1")]))
    assert pair.client.events_received() == [] and not pair.client.close_expected()


def test_ack_stamped_validates_its_arguments_before_answering() -> None:
    pair = opened()
    pair.subscribe_live("d", seq=10)
    pair.client.send_update("d", 1, b"\x01")
    pair.send("client")
    with pytest.raises(LocalProtocolError, match="not empty|must not be empty"):
        pair.relay.ack_stamped("d", 1, 11, b"", [(1, "r1")])
    with pytest.raises(LocalProtocolError, match="room"):
        pair.relay.ack_stamped("d", 1, 2**63 - 1, b"\x03", [(1, "r1")])
    assert pair.relay.is_unanswered(1)  # nothing was answered by the failed calls
    pair.relay.ack("d", 1, 11)
    assert pair.send("relay") == [Acked("d", 1, 11)]


def test_a_peer_never_sends_or_accepts_stamped() -> None:
    client, relay = ClientProtocol(peer=True), RelayProtocol(peer=True)

    def carry(src: ClientProtocol | RelayProtocol, dst: ClientProtocol | RelayProtocol) -> list[Any]:
        for data in src.data_to_send():
            dst.receive_message(data)
        return list(dst.events_received())

    client.hello(b"n" * 16, b"cert-a")
    carry(client, relay)
    relay.challenge(b"m" * 16, b"cert-b", b"proof-b")
    carry(relay, client)
    client.authenticate("token-a", b"proof-a")
    carry(client, relay)
    relay.accept_auth("u1", "epoch-1", "peer/test", LIMITS)
    carry(relay, client)
    client.subscribe("d", SV0)
    carry(client, relay)
    relay.send_sync("d", UPD0, SV0, 0)
    carry(relay, client)
    client.send_update("d", 1, b"\x01")
    carry(client, relay)
    with pytest.raises(LocalProtocolError, match="never stamps"):
        relay.ack_stamped("d", 1, 1, b"\x03", [(1, "r1")])
    assert relay.is_unanswered(1)
    client.receive_message(encode_stamped("d", 1, b"\x01", b"\x03", [(1, "r1")]))
    closed_with(client, CloseCode.PROTOCOL_VIOLATION)
