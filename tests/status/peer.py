#!/usr/bin/env python3
"""Both ends of tests/status/run's connections (loopback only).

  peer.py sink                       serve on 127.0.0.1 (port printed as "port N"): every
                                     connection gets REPLY bytes, then is read to EOF
  peer.py hold PORT SEND [udp]       connect to 127.0.0.1:PORT, send SEND bytes, read the
                                     REPLY bytes, print "ready", then hold the connection;
                                     with "udp", first try a UDP send (qnet refuses it)
  peer.py socks PORT DEST SEND       as hold, through the SOCKS5 server at 127.0.0.1:PORT to
                                     127.0.0.1:DEST (no authentication)
  peer.py check PID KIND RELAY SENT [UDP]
                                     exit 0 if the `qnet status --json` listing on stdin
                                     shows PID as KIND through RELAY (its one path, current),
                                     one stream, SENT bytes sent and REPLY received (and UDP
                                     refused UDP sends)
  peer.py once PORT DIR              as hold with 10 bytes, then wait until DIR/status.<pid>
                                     exists (this process published) and exit normally
"""
import json
import os
import socket
import sys
import threading
import time

REPLY = 3000
HOLD_SECS = 60


def serve_one(c):
    with c:
        c.sendall(b"r" * REPLY)
        while c.recv(65536):
            pass


def sink():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    print("port", s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_one, args=(c,), daemon=True).start()


def socks_connect(port, dest):
    c = socket.create_connection(("127.0.0.1", port), timeout=15)
    c.sendall(b"\x05\x01\x00")
    if c.recv(2) != b"\x05\x00":
        sys.exit("SOCKS5: no acceptable method")
    c.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + dest.to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10:
        b = c.recv(10 - len(reply))
        if not b:
            sys.exit("SOCKS5: closed")
        reply += b
    if reply[1] != 0:
        sys.exit("SOCKS5: CONNECT failed with %d" % reply[1])
    return c


def connect(port, send, dest=None):
    if dest is None:
        c = socket.create_connection(("127.0.0.1", port), timeout=15)
    else:
        c = socks_connect(port, dest)
    c.sendall(b"s" * send)
    got = 0
    while got < REPLY:
        b = c.recv(REPLY - got)
        if not b:
            sys.exit("closed early after %d bytes" % got)
        got += len(b)
    return c


def check(pid, kind, relay, sent, udp):
    procs = {str(p["pid"]): p for p in json.load(sys.stdin)}
    p = procs.get(pid)
    ok = (p is not None and p["kind"] == kind and p["session"] is not None
          and p["session"]["relay"] == relay and p["paths"][0]["hops"] == [relay]
          and p["paths"][0]["current"] and p["streams_open"] == 1
          and p["bytes_sent"] == sent and p["bytes_received"] == REPLY and not p["stale"]
          and (udp is None or p["refusals"].get("udp") == udp))
    sys.exit(0 if ok else 1)


def main():
    if sys.argv[1] == "check":
        udp = int(sys.argv[6]) if len(sys.argv) > 6 else None
        check(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), udp)
    elif sys.argv[1] == "sink":
        sink()
    elif sys.argv[1] == "hold":
        if sys.argv[4:] == ["udp"]:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.sendto(b"x", ("127.0.0.1", 9))
                sys.exit("a UDP send was not refused")
            except PermissionError:
                pass
        c = connect(int(sys.argv[2]), int(sys.argv[3]))
        print("ready", flush=True)
        time.sleep(HOLD_SECS)
        c.close()
    elif sys.argv[1] == "socks":
        c = connect(int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[3]))
        print("ready", flush=True)
        time.sleep(HOLD_SECS)
        c.close()
    elif sys.argv[1] == "once":
        c = connect(int(sys.argv[2]), 10)
        mine = os.path.join(sys.argv[3], "status.%d" % os.getpid())
        deadline = time.time() + 10
        while not os.path.exists(mine) and time.time() < deadline:
            time.sleep(0.05)
        print("published" if os.path.exists(mine) else "never published", flush=True)
        c.close()
    else:
        sys.exit("usage: see the docstring")


if __name__ == "__main__":
    main()
