#!/usr/bin/env python3
"""Destination servers for tests/matrix/run, started inside the relay's namespace.

HTTP on :80, HTTPS on :443 (serving --root), TCP echo on :7, on every --addr (IPv4 and
IPv6), and a minimal SOCKS5 server on the first address's :1080 (for proxychains4).
Prints "ready" once everything listens."""

import argparse
import functools
import http.server
import socket
import socketserver
import ssl
import sys
import threading


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


class Server6(Server):
    address_family = socket.AF_INET6


class HTTPServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


class HTTPServer6(HTTPServer):
    address_family = socket.AF_INET6


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(30)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                s.sendall(data)
        except OSError:
            pass


# The relay side's SOCKS server (proxychains' first hop) is socks_log's, logging nowhere.
from socks_log import Handler as Socks5  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--addr", action="append", required=True)
    a = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    handler = functools.partial(Quiet, directory=a.root)
    servers = []
    for addr in a.addr:
        v6 = ":" in addr
        http_cls = HTTPServer6 if v6 else HTTPServer
        tcp_cls = Server6 if v6 else Server
        servers.append(http_cls((addr, 80), handler))
        tls = http_cls((addr, 443), handler)
        # The handshake happens in the handler thread, not in accept.
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
        servers.append(tls)
        servers.append(tcp_cls((addr, 7), Echo))
    servers.append(Server((a.addr[0], 1080), Socks5))
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
