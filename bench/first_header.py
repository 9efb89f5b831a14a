#!/usr/bin/env python3
"""bench/first_header.py: latency from a client's stream header to the server's, after TLS.

Issue 18 finding 10: tsung saw ~40 ms before the gateway's first stream header after TLS (0.4 ms
straight to Prosody) — the signature of a delayed ACK meeting Nagle's algorithm. This probe
repeats what such a client does, with the socket options clients have by default (Nagle on, as
Erlang's gen_tcp and Python have it): TCP connect, TLS (direct, XEP-0368, or STARTTLS), then the
stream header right after the handshake in two writes (the XML declaration, then the stream
tag, as tsung writes it), and times the first bytes of the answer (or, with --until features, the end of the stream features). It reports the median, p90 and maximum in milliseconds as one JSON line.

    bench/first_header.py --port 5223 [--starttls] [--count 200] [--ca bench.crt]

Standard library only; run with any Python 3.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import time

HEADER = ("<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams'>")


def read_until(sock, marker: bytes, deadline: float) -> bytes:
    got = b""
    while marker not in got:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {got[-200:]!r}")
        got += chunk
    return got


def one(args, ctx: ssl.SSLContext) -> float:
    deadline = time.monotonic() + 10
    raw = socket.create_connection((args.host, args.port), timeout=10)
    try:
        header = HEADER.format(domain=args.domain).encode()
        if args.starttls:
            raw.sendall(header)
            read_until(raw, b"</stream:features>", deadline)
            raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            read_until(raw, b"<proceed", deadline)
        tls = ctx.wrap_socket(raw, server_hostname=args.domain)
        t0 = time.perf_counter()
        # Two writes, as tsung writes its header: the second waits (Nagle) until the first is
        # acknowledged, which is where a server that delays its ACK costs 40 ms.
        decl, rest = header.split(b"?>", 1)
        tls.sendall(decl + b"?>")
        tls.sendall(rest)
        if args.until == "header":
            tls.settimeout(10)
            if not tls.recv(4096):
                raise ConnectionError("closed before the stream header")
        else:
            read_until(tls, b"</stream:features>", deadline)
        t1 = time.perf_counter()
        tls.close()
        return (t1 - t0) * 1000
    finally:
        raw.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--domain", default="bench.test")
    p.add_argument("--starttls", action="store_true", help="STARTTLS instead of direct TLS")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--ca", help="CA file to verify against (default: no verification)")
    p.add_argument("--tls12", action="store_true", help="TLS 1.2 at most (older clients, tsung)")
    p.add_argument("--until", choices=["header", "features"], default="header",
                   help="stop the clock at the first bytes of the answer, or at the end of the features")
    p.add_argument("--label", default="")
    args = p.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca) if args.ca else ssl._create_unverified_context()
    if not args.ca:
        ctx.check_hostname = False
    if args.tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    samples = sorted(one(args, ctx) for _ in range(min(args.count, 10_000)))
    q = statistics.quantiles(samples, n=10)
    print(json.dumps({"label": args.label, "port": args.port, "starttls": args.starttls, "tls12": args.tls12, "until": args.until, "count": len(samples),
                      "median_ms": round(statistics.median(samples), 3), "p90_ms": round(q[8], 3),
                      "max_ms": round(samples[-1], 3)}))


if __name__ == "__main__":
    main()
