"""The operator's example HAProxy config (deploy/haproxy.cfg) is one HAProxy accepts.

Only the parts that need the operator's machine are swapped out (the TLS certificate and the
runtime socket path); every option, timeout and health check is checked as written.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.relay_process import REPO
from tests.support.servers.haproxy import find_haproxy, unavailable_reason


def test_deploy_haproxy_cfg_is_valid(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    text = (REPO / "deploy" / "haproxy.cfg").read_text()
    assert "option httpchk GET /healthz" in text and "timeout tunnel" in text
    text = text.replace(
        "bind :443 ssl crt /etc/haproxy/certs/quickslot.pem alpn http/1.1",
        "bind 127.0.0.1:8443",  # -c parses, never binds
    )
    text = text.replace("/run/haproxy.sock", str(tmp_path / "haproxy.sock"))
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    exe = find_haproxy()
    assert exe is not None
    check = subprocess.run([exe, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
