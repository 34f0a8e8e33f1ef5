"""Outgoing mail (password reset) through SMTP, or into ``DIR/mail/`` as .eml files.

A relay on a laptop or in a test has no mail server, and a reset must still be possible, so the
default backend writes each message to a file the operator can read (mode 0600: the message
holds a reset token) and logs a line saying where it went (without the token). With ``--smtp``
the message goes to that server through ``smtplib`` in a worker thread, so a slow mail server
never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from relay.ops.config import RelayConfig, SmtpSettings
from relay.ops.logging import get_logger, log_event

log = get_logger(__name__)


class Mailer(Protocol):
    """Anything that can deliver an email message."""

    async def send(self, message: EmailMessage) -> None: ...


class FileMailer:
    """Writes each message as ``<UTC time>-<random>.eml`` under a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: EmailMessage) -> None:
        path = await asyncio.to_thread(self._write, message)
        log_event(log, "mail written", to=message["To"], subject=message["Subject"], path=str(path))

    def _write(self, message: EmailMessage) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{secrets.token_hex(4)}.eml"
        path = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(message.as_bytes())
            f.flush()
            os.fsync(f.fileno())
        # Rename last so a reader polling the directory never sees a half-written message.
        os.replace(tmp, path)
        return path


class SmtpMailer:
    """Sends through an SMTP server (optionally STARTTLS and login), in a thread."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._send, message)
        log_event(
            log,
            "mail sent",
            to=message["To"],
            subject=message["Subject"],
            smtp=f"{self.settings.host}:{self.settings.port}",
        )

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.username:
                smtp.login(s.username, s.password or "")
            smtp.send_message(message)


def make_mailer(config: RelayConfig) -> Mailer:
    """SMTP when configured, else the file backend under ``DIR/mail/``."""
    if config.smtp is not None:
        return SmtpMailer(config.smtp)
    return FileMailer(config.mail_dir)


def build_message(*, sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain="quickslot-relay")
    message.set_content(body)
    return message
