"""Transport security: ``https``/``wss`` relays, ``--cafile`` and public-key pins, for REST and sync.

Everything is real: a CA and relay certificates made with ``cryptography`` for each run, a relay
process serving TLS (``serve --certfile --keyfile``), the ``quickslot`` CLI in subprocesses, and a
raw TLS server that records what a client sends, to show a failed check sends nothing at all.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import hashlib
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient, RelayInsecure
from client.sync.service import SyncRelayInsecure, SyncService
from client.sync.tls import PinMismatch, TlsSettings, format_pin, parse_pin, pin_of_certificate, tls_failure
from tests.client.test_cli import Cli
from tests.support.relay_process import PASSWORD, FixedPortRelay

EXIT_INSECURE = 6


# --- a throwaway PKI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    chain: Path
    """The relay's certificate followed by the CA's (what ``serve --certfile`` takes)."""
    key: Path
    rotated_chain: Path
    """Another certificate from the same CA, for a new relay key."""
    rotated_key: Path
    pin: str
    rotated_pin: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> Pki:
    now = _dt.datetime.now(_dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("QuickSlot test CA"))
        .issuer_name(_name("QuickSlot test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(_pem(ca))

    def leaf(stem: str) -> tuple[Path, Path, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(hours=1))
            .not_valid_after(now + _dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        chain = directory / f"{stem}-chain.pem"
        chain.write_bytes(_pem(cert) + _pem(ca))
        key_path = directory / f"{stem}-key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return chain, key_path, pin_of_certificate(_pem(cert))

    chain, key, pin = leaf("relay")
    rotated_chain, rotated_key, rotated_pin = leaf("rotated")
    return Pki(directory / "ca.pem", chain, key, rotated_chain, rotated_key, pin, rotated_pin)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsRelay(FixedPortRelay):
    """A relay serving TLS on a fixed port, so its certificate can change under its clients."""

    def __init__(self, data_dir: Path, chain: Path, key: Path) -> None:
        super().__init__(data_dir)
        self.base_extra = list(self.extra)
        self.use(chain, key)

    def use(self, chain: Path, key: Path) -> None:
        self.tls = (chain, key)  # RelayProcess: https base URL, health check trusting the chain
        self.extra = [*self.base_extra, "--certfile", str(chain), "--keyfile", str(key)]


@pytest.fixture(scope="module")
def relay(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRelay]:
    process = TlsRelay(tmp_path_factory.mktemp("tlsrelay") / "data", pki.chain, pki.key)
    process.start()
    yield process
    process.stop()


# --- pins --------------------------------------------------------------------------------------------


def test_pins_take_curl_format_and_mean_the_public_key(pki: Pki) -> None:
    cert = x509.load_pem_x509_certificate(pki.chain.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(spki).digest()
    b64 = base64.b64encode(digest).decode()
    assert pki.pin == f"sha256//{b64}" == format_pin(digest)
    for spelling in (f"sha256//{b64}", f"sha256:{b64}", f"SHA256//{b64}", digest.hex(), b64):
        assert parse_pin(spelling) == digest, spelling
    # The certificate's own hash is not the key's: a pin taken from the wrong thing is refused.
    assert parse_pin(pki.pin) != hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    for bad in ("sha1//" + b64, "sha256//abc", "sha256//" + b64[:-4], "", "sha256//" + "z" * 44):
        with pytest.raises(ValueError):
            parse_pin(bad)
    settings = TlsSettings.create(pki.ca, [pki.pin, f"sha256:{b64}", pki.rotated_pin])
    assert len(settings.pins) == 2  # duplicates collapse
    assert TlsSettings.from_config(settings.to_config()) == settings
    with pytest.raises(ValueError, match="https"):
        settings.check_url("http://127.0.0.1:1")
    settings.check_url("https://relay.example")
    TlsSettings().check_url("http://127.0.0.1:1")  # no TLS settings: plain is the user's choice
    with pytest.raises(ValueError, match="no CA file"):
        TlsSettings.create(pki.ca.parent / "missing.pem")


# --- a failed check sends nothing ----------------------------------------------------------------------


@pytest.fixture
async def listener(pki: Pki) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A raw TLS server (the relay's certificate) recording every byte a client sends after the
    handshake; it answers a plain HTTP 404 so clients finish."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.chain, pki.key)
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await asyncio.wait_for(reader.read(4096), 5)
            received.append(data)
            if data:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError):
            received.append(b"")
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, received
    finally:
        server.close()
        await server.wait_closed()


async def test_a_pin_mismatch_aborts_before_any_byte_is_sent(
    pki: Pki, listener: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, received = listener
    url = f"https://127.0.0.1:{port}"
    local = await LocalClient.open(tmp_path / "p", secret_store=SecretStore(tmp_path / "p", backend="file"))
    try:
        # Control: with the right pin the request does reach the server (so the check below can fail).
        right = AuthClient(local, url, verify=TlsSettings.create(pki.ca, [pki.pin]).verify())
        with pytest.raises(Exception):  # noqa: B017 - the server is no relay; any answer will do
            await right.register("a@example.com", PASSWORD, "A")
        assert received and received[-1].startswith(b"POST /api/v1/auth/register"), received
        received.clear()

        wrong = TlsSettings.create(pki.ca, [pki.rotated_pin])  # the CA trusts it; the pin does not
        with pytest.raises(RelayInsecure, match="pin mismatch"):
            await AuthClient(local, url, verify=wrong.verify()).register("a@example.com", PASSWORD, "A")
        with pytest.raises(PinMismatch) as caught:
            await websockets.connect(f"wss://127.0.0.1:{port}/api/v1/sync", ssl=wrong.ssl_context())
        assert tls_failure(caught.value) is not None
        untrusted = TlsSettings()  # the system CAs do not know the test CA
        with pytest.raises(RelayInsecure, match="not trusted"):
            await AuthClient(local, url, verify=untrusted.verify()).register("a@example.com", PASSWORD, "A")
        await asyncio.sleep(0.2)  # let the server record whatever it got
        assert all(data == b"" for data in received), received  # no password, no token, nothing
    finally:
        await local.close()


# --- against a TLS relay -----------------------------------------------------------------------------


def test_cli_trusts_a_relay_through_cafile_and_refuses_it_without(
    relay: TlsRelay, pki: Pki, tmp_path: Path
) -> None:
    alice = Cli(tmp_path / "alice")
    reg = alice.json(
        "register", "register", "--relay", relay.base_url, "--cafile", str(pki.ca),
        "--email", alice.email, "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    assert reg["relay"] == relay.base_url
    alice.json("login", "login", "--email", alice.email, "--password-stdin", stdin=PASSWORD)  # stored CA
    assert alice.json("sync", "sync")["pending"] == 0
    assert alice.json("status", "status")["relay_reachable"] is True
    assert (alice.home / "relay-ca.pem").read_bytes() == pki.ca.read_bytes()  # kept in the profile
    moved = Cli(tmp_path / "moved")
    alice.home.rename(moved.home)  # a profile restored elsewhere still trusts its relay
    assert moved.json("sync", "sync")["pending"] == 0

    eve = Cli(tmp_path / "eve")
    failed = eve.json(
        "error", "register", "--relay", relay.base_url, "--email", eve.email, "--password-stdin",
        stdin=PASSWORD, code=EXIT_INSECURE,
    )  # fmt: skip
    assert failed["error"]["code"] == "relay_insecure"
    assert "not trusted" in failed["error"]["message"]
    plain = eve.run(
        "register", "--relay", relay.base_url.replace("https", "http"), "--pin", pki.pin,
        "--email", eve.email, "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    assert plain.returncode == 2 and "https" in plain.stderr  # a pin on a plain URL: refused


async def test_sync_service_refuses_an_untrusted_relay(relay: TlsRelay, pki: Pki, tmp_path: Path) -> None:
    home = tmp_path / "dora"
    dora = Cli(home)
    await asyncio.to_thread(
        dora.json, "register", "register", "--relay", relay.base_url, "--cafile", str(pki.ca),
        "--email", dora.email, "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    await asyncio.to_thread(
        dora.json, "login", "login", "--email", dora.email, "--password-stdin", stdin=PASSWORD
    )
    local = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
    try:
        trusted = SyncService(local, relay.base_url, ssl_context=TlsSettings.create(pki.ca).ssl_context())
        assert (await trusted.sync_once()).pending == 0
        for settings in (TlsSettings(), TlsSettings.create(pki.ca, [pki.rotated_pin])):
            svc = SyncService(local, relay.base_url, ssl_context=settings.ssl_context())
            with pytest.raises(SyncRelayInsecure):  # the websocket handshake, before the token
                await svc.sync_once()
        pinned = SyncService(
            local, relay.base_url, ssl_context=TlsSettings.create(pins=[pki.pin]).ssl_context()
        )
        assert (await pinned.sync_once()).pending == 0  # the pin alone is the trust anchor
    finally:
        await local.close()


def test_cli_pins_fail_closed_and_survive_in_the_profile(relay: TlsRelay, pki: Pki, tmp_path: Path) -> None:
    bob = Cli(tmp_path / "bob")
    bob.json(
        "register", "register", "--relay", relay.base_url, "--pin", pki.pin,
        "--email", bob.email, "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    bob.json("login", "login", "--email", bob.email, "--password-stdin", stdin=PASSWORD)
    assert bob.json("sync", "sync")["pending"] == 0  # the stored pin, no CA: pinned key trusted

    carl = Cli(tmp_path / "carl")
    refused = carl.run(
        "--json", "register", "--relay", relay.base_url, "--cafile", str(pki.ca), "--pin", pki.rotated_pin,
        "--email", carl.email, "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    assert refused.returncode == EXIT_INSECURE, refused
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "relay_insecure" and "pin mismatch" in error["message"]  # the CA trusts it
    assert "pin mismatch" in refused.stderr  # the line a person reads

    alice = Cli(tmp_path / "alice2")
    alice.json(
        "register", "register", "--relay", relay.base_url, "--cafile", str(pki.ca),
        "--email", alice.email, "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    alice.json("login", "login", "--email", alice.email, "--password-stdin", stdin=PASSWORD)

    # The relay gets a new key (same CA): the pinned profile refuses it, the CA-only one follows.
    relay.stop()
    relay.use(pki.rotated_chain, pki.rotated_key)
    relay.start()
    try:
        moved = bob.json("error", "sync", code=EXIT_INSECURE)
        assert moved["error"]["code"] == "relay_insecure" and "pin mismatch" in moved["error"]["message"]
        assert alice.json("sync", "sync")["pending"] == 0
    finally:
        relay.stop()
        relay.use(pki.chain, pki.key)
        relay.start()
