#!/usr/bin/env python3
"""Servers and small clients for tests/relays/run (python3, stdlib only).

Servers (they print "ready" once listening, then serve until killed):
  peers.py serve-failover ADDR DIR   :9001 reads a line, answers "<peer ip> <line>" (the
                                     peer tells which relay carried the flow); :8080
                                     serves the files of DIR over HTTP
  peers.py serve-multihop ADDR       :9001 echoes bytes back; :9002 reads until the
                                     client half-closes, answers the sha256 hex of it

Clients (they print one line: OK ... or FAIL ...; exit 0 either way unless noted):
  peers.py echo HOST PORT TEXT       sends TEXT, expects the same bytes back
  peers.py bulk HOST PORT BYTES      sends BYTES random bytes, half-closes, compares sha256
  peers.py refused HOST PORT TEXT    expects no echo: EOF or a reset within 5 s (OK), or
                                     an echo (FAIL) or silence (FAIL)
  peers.py line HOST PORT TEXT       sends TEXT and a newline, prints the reply line
"""

import hashlib
import os
import socket
import socketserver
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


class LineHandler(socketserver.StreamRequestHandler):
    def handle(self):
        self.connection.settimeout(30)
        try:
            line = self.rfile.readline(4096).decode("utf-8", "replace").rstrip("\r\n")
            self.wfile.write(f"{self.client_address[0]} {line}\n".encode())
        except OSError:
            pass


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(60)
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                self.request.sendall(data)
            self.request.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class ShaHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(60)
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                data = self.request.recv(262144)
                if not data:
                    break
                h.update(data)
                n += len(data)
            self.request.sendall(f"{n} {h.hexdigest()}\n".encode())
            self.request.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class QuietHTTP(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(servers):
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def connect(host, port, timeout=10):
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exactly(s, n):
    out = bytearray()
    while len(out) < n:
        data = s.recv(min(65536, n - len(out)))
        if not data:
            break
        out += data
    return bytes(out)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    a = sys.argv[2:]
    if cmd == "serve-failover":
        addr, root = a[0], a[1]
        http = ThreadingHTTPServer((addr, 8080), partial(QuietHTTP, directory=root))
        http.daemon_threads = True
        serve([Server((addr, 9001), LineHandler), http])
    elif cmd == "serve-multihop":
        addr = a[0]
        serve([Server((addr, 9001), EchoHandler), Server((addr, 9002), ShaHandler)])
    elif cmd == "echo":
        text = a[2].encode()
        try:
            with connect(a[0], a[1]) as s:
                s.sendall(text)
                got = recv_exactly(s, len(text))
        except OSError as e:
            print(f"FAIL {e!r}")
            return
        print("OK echoed" if got == text else f"FAIL got {len(got)} of {len(text)} bytes back")
    elif cmd == "bulk":
        n = int(a[2])
        h = hashlib.sha256()
        try:
            with connect(a[0], a[1], timeout=60) as s:
                left = n
                while left:
                    chunk = os.urandom(min(left, 1 << 20))
                    h.update(chunk)
                    s.sendall(chunk)
                    left -= len(chunk)
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while not reply.endswith(b"\n"):
                    data = s.recv(4096)
                    if not data:
                        break
                    reply += data
        except OSError as e:
            print(f"FAIL {e!r}")
            return
        want = f"{n} {h.hexdigest()}"
        got = reply.decode(errors="replace").strip()
        print(f"OK {n} bytes, sha256 {h.hexdigest()[:16]}..." if got == want else f"FAIL sent {want}, the server got {got or 'nothing'}")
    elif cmd == "refused":
        text = a[2].encode()
        try:
            s = connect(a[0], a[1], timeout=5)
        except OSError as e:
            print(f"FAIL cannot connect to the forwarder: {e!r}")
            return
        t0 = time.monotonic()
        with s:
            try:
                s.sendall(text)
                got = s.recv(65536)
                dt = (time.monotonic() - t0) * 1000
                print(f"FAIL an echo came back ({len(got)} bytes)" if got else f"OK EOF after {dt:.0f} ms")
            except socket.timeout:
                print("FAIL no echo, but no EOF or reset either within 5 s")
            except OSError as e:
                print(f"OK {e.__class__.__name__} after {(time.monotonic() - t0) * 1000:.0f} ms")
    elif cmd == "line":
        try:
            with connect(a[0], a[1]) as s:
                s.sendall(a[2].encode() + b"\n")
                print(s.makefile("rb").readline().decode(errors="replace").strip())
        except OSError as e:
            print(f"FAIL {e!r}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
