"""go-sendxmpp (0.5.6, a Go XMPP client) as a second, independent client.

Owns: building the go-sendxmpp command line and running it, bounded in
time, with an isolated HOME (no user sendxmpprc is read) and
``SSL_CERT_FILE`` pointing at the test CA — Go's crypto/tls on Linux then
trusts ONLY that CA, and checks the certificate against the JID's domain
(``example.test``), not the ``-j`` address.

go-sendxmpp flags used (``go-sendxmpp --help``): ``-u`` JID, ``-p``
password, ``-j host:port`` (explicit server address, no SRV lookup), ``-t``
direct TLS (XEP-0368; without it STARTTLS is used), ``-n`` skip certificate
verification (never used here), ``--timeout`` seconds, ``-d`` debug (prints
the XML it receives), message text on stdin, recipients as arguments.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .defaults import DOMAIN

__all__ = ["SendResult", "send_message"]


@dataclass(frozen=True)
class SendResult:
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str
    argv: list[str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def send_message(user: str, password: str, host: str, port: int,
                 recipients: str | Sequence[str], body: str, *,
                 ca_file: Path | str, direct_tls: bool = False,
                 domain: str = DOMAIN, timeout: float = 20.0,
                 debug: bool = False, extra_args: Sequence[str] = ()) -> SendResult:
    """Send ``body`` as ``user@domain`` via ``host:port`` to ``recipients``.

    Never raises for a non-zero exit (tests assert on ``.ok`` /
    ``.stderr``); a run longer than ``timeout`` is killed and returned
    with ``returncode=None``.
    """
    if isinstance(recipients, str):
        recipients = [recipients]
    jid = user if "@" in user else f"{user}@{domain}"
    # go-sendxmpp's own network timeout, inside our hard one.
    inner = max(1, int(timeout) - 2)
    argv = ["go-sendxmpp", "-u", jid, "-p", password, "-j", f"{host}:{port}",
            "--timeout", str(inner)]
    if direct_tls:
        argv.append("-t")
    if debug:
        argv.append("-d")
    argv += [*extra_args, *recipients]
    with tempfile.TemporaryDirectory(prefix="go-sendxmpp-home-") as home:
        env = {k: v for k, v in os.environ.items()
               if k not in ("SSL_CERT_DIR", "XDG_CONFIG_HOME")}
        env.update(HOME=home, SSL_CERT_FILE=str(ca_file))
        try:
            p = subprocess.run(argv, input=body, capture_output=True, text=True,
                               timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            return SendResult(None, out, err, argv)
    return SendResult(p.returncode, p.stdout, p.stderr, argv)
