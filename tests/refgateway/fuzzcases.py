"""Malformed input for refgateway's edge, generated from a seeded random.Random.

Each case is (name, stage, data): ``stage`` says where the bytes go:
- "raw": straight onto the connection, before any handshake (ClientHello mutations,
  truncated and oversized records, random bytes, plaintext HTTP);
- "after-handshake-raw": onto the connection after a completed mTLS handshake, not
  encrypted (records the TLS layer must refuse);
- "http1": inside TLS after an mTLS handshake with ALPN http/1.1;
- "h2": inside TLS after an mTLS handshake with ALPN h2 (the client preface is part
  of ``data`` when the case wants it).

Budget: ``REFGATEWAY_FUZZ_CASES`` cases and ``REFGATEWAY_FUZZ_SECONDS`` seconds per test,
whichever ends first (defaults small enough for CI; a manual run sets both high),
``REFGATEWAY_FUZZ_SEED`` to replay a run (the seed is printed on failure).
"""

from __future__ import annotations

import os
import random
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def budget(default_cases: int, default_seconds: float) -> tuple[int, float]:
    cases = int(os.environ.get("REFGATEWAY_FUZZ_CASES", default_cases))
    seconds = float(os.environ.get("REFGATEWAY_FUZZ_SECONDS", default_seconds))
    return cases, seconds


def seed() -> int:
    value = os.environ.get("REFGATEWAY_FUZZ_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


def record(content_type: int, body: bytes, version: bytes = b"\x03\x03", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return bytes([content_type]) + version + struct.pack(">H", n & 0xFFFF) + body


def _flip(rng: random.Random, data: bytes, n: int) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _hello_body(hello: bytes) -> bytes:
    return hello[5:5 + int.from_bytes(hello[3:5], "big")]


def raw_case(rng: random.Random, hello: bytes) -> tuple[str, bytes]:
    """Something to send instead of (or around) a well-formed ClientHello ``hello``."""
    body = _hello_body(hello)
    kind = rng.choice(["bitflip", "truncate", "bad-length", "oversized-record", "fragmented-junk", "random",
                       "plaintext", "hello-then-junk", "bad-inner-lengths", "alert", "ccs", "appdata-first",
                       "sslv2", "empty-records"])
    if kind == "bitflip":
        return kind, _flip(rng, hello, rng.randint(1, 8))
    if kind == "truncate":
        return kind, hello[:rng.randrange(1, len(hello))]
    if kind == "bad-length":
        return kind, record(22, body, length=rng.choice([0, 1, len(body) - 1, len(body) + 1, 0x4000, 0xFFFF]))
    if kind == "oversized-record":
        n = rng.choice([0x4001, 0x4800, 0x4900, 0xFFFF])
        return kind, record(22, bytes(rng.randrange(256) for _ in range(min(n, 20000))), length=n)
    if kind == "fragmented-junk":  # a ClientHello split into tiny records, some of them mutated
        out = b""
        for i in range(0, len(body), 7):
            frag = body[i:i + 7]
            if rng.random() < 0.1:
                frag = _flip(rng, frag, 1)
            out += record(22, frag)
        return kind, out
    if kind == "random":
        return kind, rng.randbytes(rng.randint(1, 4096))
    if kind == "plaintext":
        return kind, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    if kind == "hello-then-junk":
        return kind, hello + rng.randbytes(rng.randint(1, 512))
    if kind == "bad-inner-lengths":  # handshake header or extension lengths that lie
        b = bytearray(body)
        pos = rng.choice([1, 2, 3, 38, 39, 40, rng.randrange(4, len(b))])
        b[pos] = rng.choice([0, 0xFF, b[pos] ^ 0x80])
        return kind, record(22, bytes(b))
    if kind == "alert":
        return kind, record(21, bytes([rng.choice([1, 2, 7]), rng.randrange(256)]))
    if kind == "ccs":
        return kind, record(20, b"\x01") + hello
    if kind == "appdata-first":
        return kind, record(23, rng.randbytes(64)) + hello
    if kind == "sslv2":
        return kind, b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + rng.randbytes(0x2e - 9)
    return kind, record(22, b"") * rng.randint(1, 50) + hello


_H1_PIECES = [
    b"GET / HTTP/1.1\r\n", b"GET /x HTTP/1.0\r\n", b"POST / HTTP/1.1\r\n", b"G\x00T / HTTP/1.1\r\n",
    b"GET  HTTP/1.1\r\n", b"GET / HTTP/9.9\r\n", b"GET http://a.example.com/ HTTP/1.1\r\n",
    b"Host: example.com\r\n", b"Host: a\r\nHost: b\r\n", b"Host\r\n", b": no-name\r\n", b"Bad Header: x\r\n",
    b"X: \x00\x01\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Content-Length: abc\r\n",
    b"Content-Length: 1\r\nContent-Length: 2\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n", b"\r\n", b"\n", b"\r\n\r\n", b"zz\r\n", b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n", b"5\r\nab\r\n", b" folded: header\r\n", PREFACE,
    b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"Upgrade: h2c\r\n",
]


def http1_case(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["pieces", "pieces", "long-line", "many-headers", "random", "valid-then-junk"])
    if kind == "pieces":
        return kind, b"".join(rng.choice(_H1_PIECES) for _ in range(rng.randint(1, 12)))
    if kind == "long-line":
        return kind, b"GET /" + b"a" * rng.choice([17000, 70000]) + b" HTTP/1.1\r\nHost: example.com\r\n\r\n"
    if kind == "many-headers":
        return kind, b"GET / HTTP/1.1\r\nHost: example.com\r\n" + b"X-A: b\r\n" * rng.randint(500, 3000) + b"\r\n"
    if kind == "random":
        return kind, rng.randbytes(rng.randint(1, 2048))
    return kind, (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n" + rng.randbytes(rng.randint(1, 256)))


def _frame(ftype: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", stream & 0xFFFFFFFF) + payload


def h2_case(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["random-frames", "bad-settings", "bad-hpack", "data-on-0", "continuation",
                       "huge-length", "window-0", "no-preface", "priority-self", "ping-flood", "rst-unknown"])
    preface = PREFACE + _frame(4, 0, 0, b"")
    if kind == "random-frames":
        out = preface
        for _ in range(rng.randint(1, 10)):
            out += _frame(rng.randrange(12), rng.randrange(256), rng.choice([0, 1, 2, 3, rng.randrange(1 << 31)]),
                          rng.randbytes(rng.randint(0, 64)))
        return kind, out
    if kind == "bad-settings":
        return kind, PREFACE + _frame(4, 0, 0, rng.randbytes(rng.choice([1, 5, 7, 12])))
    if kind == "bad-hpack":
        return kind, preface + _frame(1, 0x5, 1, rng.randbytes(rng.randint(1, 40)))
    if kind == "data-on-0":
        return kind, preface + _frame(0, 1, 0, b"x")
    if kind == "continuation":
        return kind, preface + _frame(9, 4, 1, b"\x82")
    if kind == "huge-length":
        return kind, preface + _frame(rng.randrange(10), 0, 1, b"", length=rng.choice([(1 << 14) + 1, 0xFFFFFF]))
    if kind == "window-0":
        return kind, preface + _frame(8, 0, 0, b"\x00\x00\x00\x00")
    if kind == "no-preface":
        return kind, _frame(4, 0, 0, b"") + _frame(1, 5, 1, b"\x82\x84\x87")
    if kind == "priority-self":
        return kind, preface + _frame(2, 0, 1, b"\x00\x00\x00\x01\x10")
    if kind == "ping-flood":
        return kind, preface + _frame(6, 0, 0, b"12345678") * rng.randint(100, 2000)
    return kind, preface + _frame(3, 0, rng.choice([1, 7, 99]), b"\x00\x00\x00\x08")


def cases(rng: random.Random, hello: bytes, count: int, seconds: float):
    """Yield (kind, stage, data) until ``count`` cases or ``seconds`` are used up."""
    end = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > end:
            return
        stage = rng.choice(["raw", "raw", "after-handshake-raw", "http1", "http1", "h2", "h2"])
        if stage == "raw":
            kind, data = raw_case(rng, hello)
        elif stage == "after-handshake-raw":
            kind, data = rng.choice(["random", "record"]), (
                rng.randbytes(rng.randint(1, 600)) if rng.random() < 0.5
                else record(rng.choice([20, 21, 22, 23, 24]), rng.randbytes(rng.randint(0, 300))))
        elif stage == "http1":
            kind, data = http1_case(rng)
        else:
            kind, data = h2_case(rng)
        yield f"{i}:{stage}:{kind}", stage, data
