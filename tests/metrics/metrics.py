#!/usr/bin/env python3
"""Helpers of tests/metrics/run: workloads against a relay, scrapes, and the checks.

  metrics.py random HOST PORT             a connection sending 4000 random bytes (a prober:
                                          more than msg1, whose ML-KEM key alone is 1184)
  metrics.py silent HOST PORT SECS        a connection that sends nothing, held SECS
  metrics.py record LISTEN_PORT RELAY_PORT FILE
                                          a TCP relay in front of the relay that saves what
                                          the first client sends (to replay it), one connection
  metrics.py replay PORT FILE             send those bytes again on a fresh connection
  metrics.py scrape URL OUT [openmetrics] fetch /metrics into OUT (Accept decides the format)
  metrics.py check BEFORE AFTER EXPECT    parse both scrapes with prometheus_client's own
                                          parsers and compare the deltas with EXPECT (JSON)

Everything is on 127.0.0.1. The parsers are the Prometheus project's Python ones (Debian's
python3-prometheus-client): prometheus_client.parser for the 0.0.4 text format and
prometheus_client.openmetrics.parser for OpenMetrics.
"""
import json
import os
import socket
import sys
import threading
import time
import urllib.request


def random_probe(host, port):
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(os.urandom(4000))
        time.sleep(0.2)


def silent(host, port, secs):
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.settimeout(float(secs))
        try:
            s.recv(1)
        except socket.timeout:
            pass


def record(listen_port, relay_port, out):
    """Forward one connection to the relay, saving the client's bytes (up to 64 KiB)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(listen_port)))
    srv.listen(1)
    print("ready", flush=True)
    c, _ = srv.accept()
    r = socket.create_connection(("127.0.0.1", int(relay_port)))
    saved = bytearray()

    def down():
        try:
            while True:
                b = r.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    t = threading.Thread(target=down, daemon=True)
    t.start()
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            if len(saved) < 65536:
                saved += b[: 65536 - len(saved)]
            r.sendall(b)
    except OSError:
        pass
    try:
        r.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    t.join(5)
    with open(out, "wb") as f:
        f.write(saved)


def replay(port, path):
    data = open(path, "rb").read()
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
        s.sendall(data)
        s.settimeout(1.0)
        got = b""
        try:
            got = s.recv(1)
        except socket.timeout:
            pass
    if got:
        print("the relay answered a replay", file=sys.stderr)
        sys.exit(1)


def scrape(url, out, openmetrics=False):
    req = urllib.request.Request(url)
    if openmetrics:
        req.add_header("Accept", "application/openmetrics-text; version=1.0.0")
    with urllib.request.urlopen(req, timeout=5) as r:
        ctype = r.headers.get("Content-Type", "")
        body = r.read().decode()
    with open(out, "w") as f:
        f.write(body)
    want = "application/openmetrics-text" if openmetrics else "text/plain; version=0.0.4"
    if not ctype.startswith(want):
        print(f"content type {ctype!r}, wanted {want!r}", file=sys.stderr)
        sys.exit(1)


def parse(path):
    """{(name, frozenset(labels)): value} and the families, by the format the file is in."""
    text = open(path).read()
    if text.rstrip().endswith("# EOF"):
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    fams = list(text_string_to_metric_families(text))
    samples = {}
    for f in fams:
        for s in f.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return fams, samples, text


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


# Every label the relay may use, and its values (closed sets: no key, address or destination).
ALLOWED_LABELS = {
    "result": {
        "ok", "unknown_key", "replay", "stale", "garbage", "timeout", "closed",
        "replay_cache_full", "refused", "timed_out", "net_unreachable", "host_unreachable",
        "name_not_found", "forbidden", "too_many_streams", "failure", "dialled", "failed",
    },
    "direction": {"in", "out", "up", "down"},
    "limit": {
        "max_connections", "max_connections_per_addr", "handshakes_per_sec",
        "handshakes_per_sec_per_addr", "sessions_per_key", "streams_per_session",
        "dials_per_key", "lookups_per_key", "output_high_water", "replay_cache",
    },
    "loop": None,  # a small integer
    "le": None,  # histogram bounds
}


def check(before_path, after_path, expect_path):
    expect = json.load(open(expect_path))
    ok = True

    def verdict(name, good, why=""):
        nonlocal ok
        print(f"PASS {name}" if good else f"FAIL {name}: {why}")
        ok &= good

    try:
        _, before, _ = parse(before_path)
        fams, after, text = parse(after_path)
    except Exception as e:  # the parser's own complaint is the finding
        verdict("metrics-parse", False, f"{type(e).__name__}: {e}")
        sys.exit(1)
    verdict("metrics-parse", len(fams) >= 20, f"only {len(fams)} families")

    # Counters: the family's samples carry _total exactly once.
    bad = [s.name for f in fams if f.type == "counter" for s in f.samples
           if not s.name.endswith("_total") and not s.name.endswith("_created")
           or "_total_total" in s.name]
    verdict("metrics-total-suffix", not bad and "_total_total" not in text, f"{bad[:5]}")

    # Labels: only the closed sets.
    stray = []
    for f in fams:
        for s in f.samples:
            for k, v in s.labels.items():
                allowed = ALLOWED_LABELS.get(k, set())
                if allowed is None:
                    if k == "loop" and not v.isdigit():
                        stray.append((s.name, k, v))
                elif v not in allowed:
                    stray.append((s.name, k, v))
    verdict("metrics-labels-closed", not stray, f"{stray[:5]}")
    leaked = [w for w in expect.get("absent", []) if w in text]
    verdict("metrics-no-key-or-address", not leaked, f"found {leaked}")

    # The workload's deltas.
    for row in expect["deltas"]:
        name, labels = row["name"], row.get("labels", {})
        d = value(after, name, **labels) - value(before, name, **labels)
        lo, hi = row.get("min", row.get("eq")), row.get("max", row.get("eq"))
        good = (lo is None or d >= lo) and (hi is None or d <= hi)
        shown = name + ("{" + ",".join(f"{k}={v}" for k, v in labels.items()) + "}" if labels else "")
        verdict(f"delta {shown}", good, f"moved by {d:g}, wanted [{lo}, {hi}]")
    sys.exit(0 if ok else 1)


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "random":
        random_probe(*args)
    elif cmd == "silent":
        silent(*args)
    elif cmd == "record":
        record(*args)
    elif cmd == "replay":
        replay(*args)
    elif cmd == "scrape":
        scrape(args[0], args[1], len(args) > 2 and args[2] == "openmetrics")
    elif cmd == "check":
        check(*args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
