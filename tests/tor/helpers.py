#!/usr/bin/env python3
"""Small servers and a Tor controller for tests/tor/run. Everything binds to loopback
addresses inside the test's own network namespace.

  helpers.py dns ADDR PORT LOG NAME=IP...   a DNS server (UDP) answering A queries for
                                            the given names, NXDOMAIN for everything else;
                                            logs "QUERY name type from peer"
  helpers.py http ADDR PORT ROOT LOG        an HTTP server serving ROOT; logs
                                            "GET path from peer"
  helpers.py events PORT LOG                logs a Tor control port's STREAM and CIRC events
  helpers.py getinfo PORT KEY...            prints GETINFO answers
  helpers.py count ADDR PORT LOG            accepts and closes TCP connections; logs
                                            "CONNECT from peer" (what was dialled at all)

The servers print "ready" once they listen.
"""

import functools
import http.server
import socket
import struct
import sys
import time


def log_line(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


# ---- DNS ----------------------------------------------------------------------------------


def dns(addr, port, log, pairs):
    names = {}
    for p in pairs:
        n, ip = p.split("=", 1)
        names[n.lower().rstrip(".")] = socket.inet_aton(ip)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    print("ready", flush=True)
    while True:
        q, peer = s.recvfrom(4096)
        try:
            (qid, flags, qd) = struct.unpack(">HHH", q[:6])
            i = 12
            labels = []
            while q[i]:
                labels.append(q[i + 1 : i + 1 + q[i]].decode("ascii", "replace"))
                i += 1 + q[i]
            i += 1
            qtype, qclass = struct.unpack(">HH", q[i : i + 4])
            question = q[12 : i + 4]
        except (IndexError, struct.error):
            continue
        name = ".".join(labels).lower()
        log_line(log, "QUERY %s type=%d from %s:%d" % (name, qtype, peer[0], peer[1]))
        rd = flags & 0x0100
        if name in names:
            answers = b""
            count = 0
            if qtype == 1:
                answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + names[name]
                count = 1
            head = struct.pack(">HHHHHH", qid, 0x8080 | rd, 1, count, 0, 0)
        else:
            head = struct.pack(">HHHHHH", qid, 0x8083 | rd, 1, 0, 0, 0)
            answers = b""
        s.sendto(head + question + answers, peer)


# ---- HTTP ---------------------------------------------------------------------------------


class Logged(http.server.SimpleHTTPRequestHandler):
    LOG = "/dev/null"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        log_line(self.LOG, "GET %s from %s:%d" % (self.path, self.client_address[0], self.client_address[1]))
        super().do_GET()


class HTTPServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve_http(addr, port, root, log):
    Logged.LOG = log
    h = functools.partial(Logged, directory=root)
    srv = HTTPServer((addr, int(port)), h)
    print("ready", flush=True)
    srv.serve_forever()


# ---- Tor control port ---------------------------------------------------------------------


class Control:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
        self.f = self.s.makefile("rb")
        self.cmd("AUTHENTICATE")

    def line(self):
        b = self.f.readline()
        if not b:
            raise EOFError("control connection closed")
        return b.decode("utf-8", "replace").rstrip("\r\n")

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\r\n")
        out = []
        while True:
            ln = self.line()
            if ln.startswith("650"):  # an asynchronous event between replies
                continue
            out.append(ln)
            if ln[3:4] == "+":  # a data reply, up to a lone "."
                while True:
                    d = self.line()
                    if d == ".":
                        break
                    out.append(d)
            elif ln[3:4] == " ":
                break
        if not out[-1].startswith("250"):
            raise RuntimeError("%s -> %s" % (c, out[-1]))
        return out


def events(port, log):
    c = Control(port)
    c.cmd("SETEVENTS STREAM CIRC")
    c.s.settimeout(None)
    print("ready", flush=True)
    while True:
        ln = c.line()
        if ln.startswith("650 "):
            log_line(log, "%.3f %s" % (time.time(), ln[4:]))


def getinfo(port, keys):
    c = Control(port)
    for ln in c.cmd("GETINFO " + " ".join(keys)):
        if ln != "250 OK":
            print(ln[4:] if ln[:3] == "250" else ln)


def count(addr, port, log):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        log_line(log, "CONNECT from %s:%d" % peer)
        c.close()


def main(argv):
    if len(argv) >= 5 and argv[1] == "dns":
        dns(argv[2], argv[3], argv[4], argv[5:])
    elif len(argv) == 6 and argv[1] == "http":
        serve_http(*argv[2:])
    elif len(argv) == 4 and argv[1] == "events":
        events(argv[2], argv[3])
    elif len(argv) == 5 and argv[1] == "count":
        count(*argv[2:])
    elif len(argv) >= 4 and argv[1] == "getinfo":
        getinfo(argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
