"""slixmpp-based XMPP client for the e2e tests.

Owns: :class:`Client`, a real slixmpp ``ClientXMPP`` connected to an
explicit host:port (never DNS/SRV: the domain is only used for SNI,
certificate name checks and the stream ``to``), with TLS verified against
the test CA only, and every wait bounded (``asyncio.wait_for``).  Also
:func:`run`, which runs a coroutine under ``asyncio.run`` with a hard
timeout (there is no pytest-asyncio on Debian's python here, so tests are
plain functions calling ``run(...)``).

Transport choice:

* ``direct_tls=True``: XEP-0368, TLS from the first byte.
* ``starttls=True`` (default): STARTTLS is *required*; if the server's
  features do not offer it the connection is aborted with
  ``ConnectFailed("starttls not offered")`` (slixmpp 1.8 itself ignores
  ``force_starttls`` and would silently continue in plaintext).
* ``starttls=False``: never negotiate TLS (plaintext backend tests).
  slixmpp uses SCRAM over plaintext by default; PLAIN over plaintext is
  only used if ``allow_plain_unencrypted=True`` (slixmpp option
  ``feature_mechanisms.unencrypted_plain``).

``mechanisms=["PLAIN"]`` restricts which SASL mechanisms slixmpp may pick.

After ``await client.connect()``:

* ``features``: list of every ``<stream:features>`` element received, in
  order (xml.etree elements, deep copies); ``sasl_mechanisms``: the
  mechanism names offered (from the features that carried them);
  ``offered_starttls``: whether any features offered STARTTLS;
  ``sasl_mechanism_used``.
* ``tls_version``, ``peer_cert_der`` (None in plaintext).
* ``jid``: the bound full JID (str).
* ``stream_errors``: list of (condition, text) received; ``await
  wait_stream_error(timeout)`` returns the next condition string, e.g.
  ``"system-shutdown"``.
* ``get_roster()``, ``send_message()``, ``next_message()``,
  ``subscribe()``, ``next_presence()``, ``send_raw()``, ``disconnect()``,
  ``wait_disconnected()``.

Use as ``async with Client(...) as c:`` (connects, and disconnects on exit).
"""

from __future__ import annotations

import asyncio
import copy
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Iterable, TypeVar

import slixmpp

from .defaults import DOMAIN
from .raw import FEATURES_TAG, NS_SASL, NS_TLS, make_client_context

__all__ = ["Client", "ConnectFailed", "ReceivedMessage", "ReceivedPresence", "run"]

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop, failing after ``timeout`` s."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class ConnectFailed(AssertionError):
    """Login did not complete.  ``reason`` is one of: "connection failed",
    "tls failed", "starttls not offered", "auth failed", "stream error",
    "disconnected", "timeout" (``detail`` says more; ``client`` keeps
    features/stream_errors for assertions)."""

    def __init__(self, reason: str, detail: Any, client: "Client"):
        super().__init__(f"{client.requested_jid}: {reason}: {detail}")
        self.reason, self.detail, self.client = reason, detail, client


@dataclass(frozen=True)
class ReceivedMessage:
    from_: str
    to: str
    type: str
    body: str
    id: str
    xml: str


@dataclass(frozen=True)
class ReceivedPresence:
    from_: str
    to: str
    type: str  # available, unavailable, subscribe, subscribed, ...
    xml: str


class _XMPP(slixmpp.ClientXMPP):
    """ClientXMPP that never resolves DNS: the target is the explicit
    address, whatever the JID's domain."""

    async def get_dns_records(self, domain, port=None):  # type: ignore[override]
        return [(self.default_domain, self.address[0], self.address[1])]


class Client:
    def __init__(self, jid: str, password: str, host: str, port: int, *,
                 direct_tls: bool = False, starttls: bool = True,
                 ca_file: Path | str | None = None, server_name: str = DOMAIN,
                 allow_plain_unencrypted: bool = False,
                 mechanisms: Iterable[str] | None = None,
                 auto_authorize: bool | None = True, auto_subscribe: bool = False,
                 send_presence: bool = True):
        self.requested_jid = jid
        self.host, self.port = host, port
        self.direct_tls = direct_tls
        self.require_tls = direct_tls or starttls
        self.server_name = server_name
        self.send_initial_presence = send_presence
        if self.require_tls and ca_file is None:
            raise ValueError("TLS requested: pass ca_file (the test CA)")

        self.features: list[ET.Element] = []
        self.sasl_mechanisms: list[str] = []
        self.offered_starttls = False
        self.sasl_mechanism_used: str | None = None
        self.failed_auth: list[str] = []
        self.stream_errors: list[tuple[str, str]] = []
        self.tls_version: str | None = None
        self.peer_cert_der: bytes | None = None
        self.jid: str | None = None
        self.messages: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
        self.presences: asyncio.Queue[ReceivedPresence] = asyncio.Queue()
        self._stream_error_q: asyncio.Queue[str] = asyncio.Queue()
        self._outcome: asyncio.Future | None = None
        self._self_presence: asyncio.Future | None = None

        x = self.xmpp = _XMPP(jid, password)
        x.auto_authorize = auto_authorize
        x.auto_subscribe = auto_subscribe
        x.whitespace_keepalive = False
        if ca_file is not None:
            # Trust only the test CA.  ca_certs keeps slixmpp from adding the
            # system store (it calls set_default_verify_paths() otherwise).
            x.ssl_context = make_client_context(ca_file)
            x.ca_certs = Path(ca_file)
        mech = x["feature_mechanisms"]
        mech.unencrypted_plain = allow_plain_unencrypted
        if mechanisms is not None:
            mech.use_mechs = set(mechanisms)
        for name, handler in [
            ("session_start", self._on_session_start),
            ("connection_failed", self._on_connection_failed),
            ("ssl_invalid_chain", self._on_ssl_invalid),
            ("failed_auth", self._on_failed_auth),
            ("failed_all_auth", self._on_failed_all_auth),
            ("auth_success", self._on_auth_success),
            ("stream_error", self._on_stream_error),
            ("disconnected", self._on_disconnected),
            ("message", self._on_message),
            ("message_error", self._on_message_error),
            ("presence", self._on_presence),
        ]:
            x.add_event_handler(name, handler)
        x.add_filter("in", self._filter_in)

    # -- connection -----------------------------------------------------------
    async def connect(self, timeout: float = DEFAULT_TIMEOUT) -> "Client":
        """Connect, (STARTTLS,) authenticate, bind, and (by default) send
        initial presence and wait for the server to reflect it.  Raises
        ConnectFailed."""
        loop = asyncio.get_running_loop()
        self._outcome = loop.create_future()
        x = self.xmpp
        x.connect(address=(self.host, self.port), use_ssl=self.direct_tls,
                  force_starttls=self.require_tls,
                  disable_starttls=not self.require_tls or self.direct_tls)
        x.default_domain = self.server_name  # SNI + certificate name
        try:
            await asyncio.wait_for(asyncio.shield(self._outcome), timeout)
        except asyncio.TimeoutError:
            self._fail("timeout", f"no session after {timeout}s")
        except ConnectFailed:
            pass  # re-raised below, after closing the socket
        exc = self._outcome.exception()
        if exc is not None:
            self._abort()
            raise exc
        if self.require_tls and self.tls_version is None:
            self._abort()
            raise ConnectFailed("tls failed", "session is not encrypted", self)
        if self.send_initial_presence:
            self._self_presence = loop.create_future()
            x.send_presence()
            try:
                await asyncio.wait_for(self._self_presence, timeout)
            except asyncio.TimeoutError:
                self._abort()
                raise ConnectFailed("timeout", "own presence not reflected", self) from None
        return self

    async def __aenter__(self) -> "Client":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.disconnect()

    def _fail(self, reason: str, detail: Any) -> None:
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(ConnectFailed(reason, detail, self))

    def _abort(self) -> None:
        self.xmpp.cancel_connection_attempt()
        try:
            self.xmpp.abort()
        except AttributeError:
            # The peer already closed: asyncio's SSL transport has dropped its protocol and
            # abort() trips over None (seen after a SASL failure closes the stream).
            pass
        # slixmpp leaves its outgoing-filter task running after a failed
        # connect ("Task was destroyed but it is pending" at loop close).
        task = getattr(self.xmpp, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()

    @property
    def connected(self) -> bool:
        return self.xmpp.transport is not None

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Close our stream and wait (bounded) for the TCP close; abort after."""
        if not self.connected:
            self.xmpp.cancel_connection_attempt()
            return
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=min(2.0, timeout)), timeout)
        except asyncio.TimeoutError:
            pass
        if self.connected:
            self._abort()

    async def wait_disconnected(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the server closes the connection (bounded)."""
        if self.connected:
            await asyncio.wait_for(asyncio.shield(self.xmpp.disconnected), timeout)

    # -- event handlers -------------------------------------------------------
    def _filter_in(self, stanza):
        xml = stanza.xml
        if xml.tag == FEATURES_TAG:
            self.features.append(copy.deepcopy(xml))
            mechs = xml.find(f"{{{NS_SASL}}}mechanisms")
            if mechs is not None:
                self.sasl_mechanisms = [m.text for m in mechs if m.text]
            tls_offered = xml.find(f"{{{NS_TLS}}}starttls") is not None
            self.offered_starttls |= tls_offered
            if self.require_tls and not tls_offered and self._tls_object() is None:
                self._fail("starttls not offered", ET.tostring(xml, encoding="unicode"))
                self.xmpp.loop.call_soon(self._abort)
                return None  # do not let slixmpp authenticate in plaintext
        return stanza

    def _tls_object(self) -> ssl.SSLObject | None:
        t = self.xmpp.transport
        return t.get_extra_info("ssl_object") if t is not None else None

    def _on_session_start(self, _event) -> None:
        self.jid = str(self.xmpp.boundjid)
        tls = self._tls_object()
        if tls is not None:
            self.tls_version = tls.version()
            self.peer_cert_der = tls.getpeercert(binary_form=True)
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(True)

    def _on_connection_failed(self, err) -> None:
        self.xmpp.cancel_connection_attempt()  # no reconnect loop
        reason = "tls failed" if isinstance(err, ssl.SSLError) else "connection failed"
        self._fail(reason, err)

    def _on_ssl_invalid(self, err) -> None:
        self._fail("tls failed", err)
        self.xmpp.loop.call_soon(self._abort)

    def _on_auth_success(self, _stanza) -> None:
        mech = getattr(self.xmpp["feature_mechanisms"], "mech", None)
        self.sasl_mechanism_used = getattr(mech, "name", None)

    def _on_failed_auth(self, stanza) -> None:
        self.failed_auth.append(str(stanza))

    def _on_failed_all_auth(self, _event) -> None:
        self._fail("auth failed", self.failed_auth or "no usable mechanism")

    def _on_stream_error(self, err) -> None:
        cond, text = err["condition"], err["text"]
        self.stream_errors.append((cond, text))
        self._stream_error_q.put_nowait(cond)
        self._fail("stream error", f"{cond}: {text}")

    def _on_disconnected(self, reason) -> None:
        self._fail("disconnected", reason)

    def _on_message(self, msg) -> None:
        # slixmpp fires 'message' for every <message> with a <body>, and
        # 'message_error' for every one with an <error>: queue each once.
        if msg["type"] != "error":
            self._on_message_error(msg)

    def _on_message_error(self, msg) -> None:
        self.messages.put_nowait(ReceivedMessage(
            from_=str(msg["from"]), to=str(msg["to"]), type=msg["type"],
            body=msg["body"], id=msg["id"], xml=str(msg)))

    def _on_presence(self, pres) -> None:
        p = ReceivedPresence(from_=str(pres["from"]), to=str(pres["to"]),
                             type=pres["type"], xml=str(pres))
        if (self._self_presence is not None and not self._self_presence.done()
                and p.from_ == self.jid and p.type == "available"):
            self._self_presence.set_result(p)
            return
        self.presences.put_nowait(p)

    # -- actions --------------------------------------------------------------
    async def get_roster(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, dict]:
        """Full roster as ``{bare_jid: {"subscription", "name", "groups"}}``
        (no roster versioning: always the complete list)."""
        iq = self.xmpp.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        iq = await iq.send(timeout=timeout)
        return {str(j): {"subscription": item["subscription"], "name": item["name"],
                         "groups": list(item["groups"])}
                for j, item in iq["roster"]["items"].items()}

    def send_message(self, to: str, body: str, mtype: str = "chat") -> None:
        self.xmpp.send_message(mto=to, mbody=body, mtype=mtype)

    def send_raw(self, data: str) -> None:
        """Write raw text into the (authenticated) stream."""
        self.xmpp.send_raw(data)

    async def next_message(self, timeout: float = DEFAULT_TIMEOUT, *,
                           with_body: bool = True) -> ReceivedMessage:
        """Next received message: slixmpp surfaces messages with a <body>
        and error messages (type "error"; skipped if they carry no body
        unless ``with_body=False``).  asyncio.TimeoutError if none in time."""
        async def _next() -> ReceivedMessage:
            while True:
                m = await self.messages.get()
                if m.body or not with_body:
                    return m
        return await asyncio.wait_for(_next(), timeout)

    async def next_presence(self, timeout: float = DEFAULT_TIMEOUT, *,
                            from_: str | None = None,
                            type: str | None = None) -> ReceivedPresence:
        """Next received presence matching ``from_`` (bare or full JID) and
        ``type``; non-matching ones are dropped."""
        async def _next() -> ReceivedPresence:
            while True:
                p = await self.presences.get()
                if from_ and p.from_ != from_ and p.from_.split("/")[0] != from_:
                    continue
                if type and p.type != type:
                    continue
                return p
        return await asyncio.wait_for(_next(), timeout)

    async def subscribe(self, jid: str, timeout: float = DEFAULT_TIMEOUT) -> ReceivedPresence:
        """Send <presence type='subscribe'/> to ``jid`` and wait for its
        ``subscribed`` (the peer must auto-authorize or approve)."""
        self.xmpp.send_presence_subscription(pto=jid)
        return await self.next_presence(timeout, from_=jid, type="subscribed")

    async def wait_stream_error(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Condition of the next stream error (e.g. ``"system-shutdown"``)."""
        return await asyncio.wait_for(self._stream_error_q.get(), timeout)
