#!/usr/bin/env python3
"""A client that never authenticates, as an attacker would run it against a branch's
endpoint: it sends a StartupMessage, reads the server's first answer, and hangs up before
the password exchange. Used by e2e/local/attacks.sh and e2e/k8s/run.sh to show that such
clients neither keep a branch awake nor get past the proxy's connection caps.

  wake_flood.py reconnect HOST PORT SECONDS [PER_SECOND]
      reconnect again and again for SECONDS (default 5 connections a second)
  wake_flood.py hold HOST PORT N [SECONDS]
      open N connections at once, each waiting at its password challenge, keep them
      open SECONDS (default 0), then close all

Prints one JSON line: attempts, challenged (the server asked for a password: the client
reached Postgres), refused_53300 (too_many_connections, from the proxy or from Postgres),
proxy_cap (those refused by the proxy's own cap), other (anything else, e.g. a connection
that could not be made), and the first message of each kind seen.
Talks only to the HOST it is given (the test's own loopback or port-forward).
"""

import json
import socket
import struct
import sys
import time


def startup_message() -> bytes:
    params = b"user\0app\0database\0app\0application_name\0wake-flood\0\0"
    body = struct.pack("!I", 196608) + params
    return struct.pack("!I", len(body) + 4) + body


def first_answer(sock: socket.socket) -> tuple[str, str]:
    """The kind of the server's first message and, for an error, its SQLSTATE and text."""
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            return ("closed", "")
        head += chunk
    kind = chr(head[0])
    length = struct.unpack("!I", head[1:5])[0]
    body = b""
    while len(body) < length - 4 and len(body) < 8192:
        chunk = sock.recv(length - 4 - len(body))
        if not chunk:
            break
        body += chunk
    if kind == "E":
        fields = dict(
            (f[:1].decode(), f[1:].decode(errors="replace")) for f in body.split(b"\0") if f
        )
        return ("E" + fields.get("C", "?"), fields.get("M", ""))
    return (kind, "")


def classify(result: dict, kind: str, text: str) -> None:
    result["attempts"] += 1
    if kind == "R":
        key = "challenged"
    elif kind == "E53300":
        key = "refused_53300"
        if "the proxy allows" in text:
            result["proxy_cap"] += 1
    else:
        key = "other"
    result[key] += 1
    result["seen"].setdefault(key, f"{kind} {text}".strip())


def connect(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(startup_message())
    return s


def reconnect(host: str, port: int, seconds: float, per_second: float, result: dict) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            with connect(host, port) as s:
                classify(result, *first_answer(s))
        except OSError as e:
            classify(result, "error", str(e))
        time.sleep(max(0.0, 1.0 / per_second - (time.monotonic() - started)))


def hold(host: str, port: int, n: int, linger: float, result: dict) -> None:
    socks = []
    try:
        for _ in range(n):
            try:
                s = connect(host, port)
                socks.append(s)
                classify(result, *first_answer(s))
            except OSError as e:
                classify(result, "error", str(e))
        time.sleep(linger)
    finally:
        for s in socks:
            s.close()


def main() -> int:
    if len(sys.argv) < 5 or sys.argv[1] not in ("reconnect", "hold"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = {
        "attempts": 0, "challenged": 0, "refused_53300": 0, "proxy_cap": 0, "other": 0, "seen": {},
    }
    if mode == "reconnect":
        per_second = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
        reconnect(host, port, float(sys.argv[4]), per_second, result)
    else:
        linger = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
        hold(host, port, int(sys.argv[4]), linger, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
