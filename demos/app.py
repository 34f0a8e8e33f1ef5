"""`make app`: a relay with demo shops on a free loopback port, serving the web app at /app/.

Run it with ``python -m demos.app`` (``--port N`` for a fixed port, ``--data DIR`` to keep the
relay's data). It builds the app when ``web/app/dist`` is missing or older than its sources, makes
an operator account (admin, owner of the demo shops) in a fresh data directory, starts
``relay.cli serve``, creates the demo categories, shops and slots from a ``quickslot`` CLI profile,
prints the app's URL and the operator's login, and serves until Ctrl-C.

Demo only: a cheap password hash (1 MiB, one pass) and generous login limits, so that it starts in
seconds; never run a production relay like that. The tests (tests/web/test_app_browser.py) use
the same helpers to set up their relay.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "web" / "app"
OPERATOR_EMAIL = "owner@demo.quickslot.invalid"
OPERATOR_PASSWORD = "demo password, not a secret"
FAST_HASH = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1", "--argon2-lanes", "1"]
LIMITS = [
    "--login-rate-address", "10000/60", "--login-rate-account", "10000/60",
    "--register-rate-address", "10000/60", "--reset-rate-address", "10000/60",
    "--reset-rate-account", "10000/60",
]  # fmt: skip


@dataclass(frozen=True)
class DemoShop:
    id: str
    name: str
    category: str
    location: str
    #: (slot id, service, start, duration in minutes, capacity)
    slots: tuple[tuple[str, str, str, int, int], ...]


CATEGORIES = (("hair", "Hair"), ("food", "Food"), ("health", "Health"))
DEMO_SHOPS = (
    DemoShop(
        "cutabove", "Cut Above", "hair", "12 Main Street",
        (
            ("cut-09", "haircut", "09:00", 30, 2),
            ("cut-10", "haircut", "10:00", 30, 2),
            ("colour-14", "colour", "14:00", 90, 1),
        ),
    ),
    DemoShop(
        "noodlebar", "Noodle Bar", "food", "3 Harbour Road",
        (("lunch-12", "lunch table", "12:00", 60, 8), ("dinner-19", "dinner table", "19:00", 90, 12)),
    ),
    DemoShop(
        "physio", "Back in Shape Physio", "health", "40 Park Lane",
        (("session-08", "physiotherapy", "08:00", 45, 1),),
    ),
)  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["QUICKSLOT_SECRETS"] = "file"
    env.pop("QUICKSLOT_HOME", None)
    env.pop("QUICKSLOT_RELAY_DATA", None)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_app(force: bool = False) -> Path:
    """``npm ci`` (when node_modules is missing) and ``npm run build`` in web/app, unless dist/
    is newer than every source; returns dist/."""
    dist = APP / "dist"
    sources = [
        *APP.joinpath("src").iterdir(),
        APP / "build.mjs",
        *REPO.joinpath("web", "sdk", "src").iterdir(),
    ]
    newest = max(p.stat().st_mtime for p in sources)
    if not force and (dist / "index.html").is_file() and (dist / "index.html").stat().st_mtime >= newest:
        return dist
    for pkg in (REPO / "web" / "sdk", APP):
        if not (pkg / "node_modules").is_dir():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=pkg, check=True)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=APP, check=True, stdout=subprocess.DEVNULL)
    return dist


def relay_admin(data_dir: Path, *args: str, stdin: str | None = None) -> None:
    """One ``relay.cli`` account command on ``data_dir`` (the relay may be running or not)."""
    cmd = [sys.executable, "-m", "relay.cli", *args, "--data", str(data_dir)]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), input=stdin, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")


def make_operator(data_dir: Path, shops: Sequence[str], email: str = OPERATOR_EMAIL) -> None:
    """An admin account that owns ``shops``, made before the relay starts (no grant to wait for)."""
    relay_admin(
        data_dir, "user", "add", email, "--admin", "--password-stdin", *FAST_HASH, stdin=OPERATOR_PASSWORD
    )
    for shop in shops:
        relay_admin(data_dir, "user", "grant", email, "--owner", shop)


class Profile:
    """A ``quickslot`` CLI profile (``python -m client.cli --home HOME --json ...``)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(self, *args: str, stdin: str | None = None) -> Any:
        cmd = [sys.executable, "-m", "client.cli", "--home", str(self.home), "--json", *args]
        r = subprocess.run(
            cmd, cwd=REPO, env=_env(), input=stdin, capture_output=True, text=True, timeout=120
        )
        if r.returncode != 0:
            output = f"{r.stdout.strip()} {r.stderr.strip()}"
            raise RuntimeError(f"quickslot {' '.join(args)}: exit {r.returncode}: {output}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def many(self, commands: Sequence[Sequence[str]]) -> None:
        """Several commands in one Python process (the client's start-up paid once)."""
        argvs = [["--home", str(self.home), "--json", *c] for c in commands]
        script = (
            "import json, sys\nfrom client.cli import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    code = main(argv)\n"
            "    if code:\n        sys.exit(f'quickslot {argv}: exit {code}')\n"
        )
        cmd = [sys.executable, "-c", script, json.dumps(argvs)]
        r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{r.stderr.strip()} {r.stdout.strip()[-2000:]}")

    def login(self, relay_url: str, email: str = OPERATOR_EMAIL, password: str = OPERATOR_PASSWORD) -> None:
        self("login", "--relay", relay_url, "--email", email, "--password-stdin", stdin=password)


def shop_commands(shop: DemoShop) -> list[list[str]]:
    """The ``quickslot`` commands that create ``shop`` and its slots."""
    out = [
        [
            "shop",
            "create",
            shop.id,
            "--name",
            shop.name,
            "--category",
            shop.category,
            "--location",
            shop.location,
        ]
    ]
    for slot, service, start, duration, capacity in shop.slots:
        out.append(
            [
                "slot", "add", shop.id, slot, "--service", service, "--start", start,
                "--duration", str(duration), "--capacity", str(capacity),
            ]
        )  # fmt: skip
    return out


def seed_catalog(operator: Profile, shops: Sequence[DemoShop] = DEMO_SHOPS) -> None:
    """Categories, shops and slots, written offline by the logged-in operator, then synced."""
    commands = [["category", "add", cat, name] for cat, name in CATEGORIES]
    for shop in shops:
        commands += shop_commands(shop)
    operator.many([*commands, ["sync"]])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the relay exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the relay did not become healthy")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument(
        "--data", type=Path, default=None, help="relay data directory (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    build_app()
    with tempfile.TemporaryDirectory(prefix="quickslot-app-") as tmp:
        data_dir = args.data or Path(tmp) / "relay-data"
        fresh = not (data_dir / "relay.sqlite3").exists() and not any(data_dir.glob("*.sqlite*"))
        if fresh:
            make_operator(data_dir, [s.id for s in DEMO_SHOPS])
        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data", str(data_dir), *FAST_HASH, *LIMITS,
        ]  # fmt: skip
        log = open(Path(tmp) / "relay.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=log)
        try:
            wait_healthy(url, proc)
            if fresh:
                operator = Profile(Path(tmp) / "operator")
                operator.login(url)
                seed_catalog(operator)
            print(f"QuickSlot web app: {url}/app/", flush=True)
            shops = ", ".join(s.name for s in DEMO_SHOPS)
            print(f"  shops: {shops}; sign up as a customer in the app, or log in as", flush=True)
            print(f"  the shops' owner (staff view): {OPERATOR_EMAIL} / {OPERATOR_PASSWORD}", flush=True)
            print("  Ctrl-C stops the relay.", flush=True)
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
