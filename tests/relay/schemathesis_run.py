"""Schemathesis against a real relay process, driven by the relay's own OpenAPI document.

A relay starts on a free loopback port with a seeded catalogue (so catalogue pages carry rows and
their schema is checked too), a user logs in for a bearer token (no device key: the fuzzer cannot
sign proofs of possession), and ``schemathesis run`` generates requests for every operation but
``logout`` (which would end that token), in all its phases, with these checks:

* ``not_a_server_error``: no 5xx, whatever the body, parameters or content type;
* ``response_schema_conformance``, ``status_code_conformance``, ``content_type_conformance``:
  every answer is one the OpenAPI documents.

The normal test suite runs a bounded pass (``tests/relay/http/test_rest_sync_schema.py``);
``make schemathesis`` runs a long one::

    python -m tests.relay.schemathesis_run --max-examples 500 --seed 7

It prints the run's figures and exits non-zero on any failure or error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.relay_process import GENEROUS_LIMITS, REPO, RelayProcess, login, register, unique_email
from tests.support.rest_helpers import seed_catalogue

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    generated: int
    with_failures: int
    errored: int
    operations_tested: int
    failures: list[Any]
    errors: list[Any]
    seconds: float
    output: str

    @property
    def clean(self) -> bool:
        return self.exit_code == 0 and self.with_failures == 0 and self.errored == 0 and not self.errors


def run(workdir: Path, *, max_examples: int, seed: int, extra: list[str] | None = None) -> Outcome:
    """Start a relay under ``workdir``, seed it, run schemathesis against it; stop it."""
    report = workdir / "schemathesis.json"
    with RelayProcess(workdir / "data", *GENEROUS_LIMITS, "--events-poll", "0.2") as relay:
        with relay.client() as http:
            seed_catalogue(relay, http, ["bakery", "barber", "gym"], 120)
            email = unique_email("fuzz")
            register(http, email)
            token = login(http, email)["access_token"]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["SCHEMATHESIS_HOOKS"] = "tests.relay.schemathesis_hooks"
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{relay.base_url}/openapi.json",
            "-H", f"Authorization: Bearer {token}", "--checks", CHECKS,
            "--exclude-path", "/api/v1/auth/logout", "--max-examples", str(max_examples),
            "--seed", str(seed), "--workers", "1", "--no-color", "--generation-database", "none",
            "--report", "json", "--report-json-path", str(report), *(extra or []),
        ]  # fmt: skip
        # In the work directory: schemathesis keeps a cache (.schemathesis/) where it runs.
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
    data = json.loads(report.read_text()) if report.exists() else {}
    cases = data.get("test_cases", {})
    return Outcome(
        exit_code=done.returncode,
        generated=int(cases.get("generated", 0)),
        with_failures=int(cases.get("with_failures", 0)),
        errored=int(cases.get("errored", 0)),
        operations_tested=int(data.get("operations", {}).get("tested", 0)),
        failures=list(data.get("failures", [])),
        errors=list(data.get("errors", [])),
        seconds=float(data.get("running_time", 0.0)),
        output=done.stdout[-20000:] + done.stderr[-5000:],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=500, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the relay's data and report here")
    parser.add_argument("extra", nargs="*", help="more schemathesis run options (after --)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="schemathesis-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = run(workdir, max_examples=args.max_examples, seed=args.seed, extra=args.extra)
    print(outcome.output)
    print(
        f"schemathesis: {outcome.generated} cases over {outcome.operations_tested} operations in "
        f"{outcome.seconds:.0f} s; {outcome.with_failures} with failures (server errors or schema "
        f"violations), {outcome.errored} errored; report {workdir / 'schemathesis.json'}"
    )
    return 0 if outcome.clean else 1


if __name__ == "__main__":
    sys.exit(main())
