#!/usr/bin/env python3
"""A SOCKS5 server (CONNECT; no auth, or any username/password) that logs every target
it connects to and the username it was given.

usage: socks_log.py ADDR PORT LOGFILE   (prints "ready" once listening)
The matrix runs it on the client side to prove which connections went through it.
"""

import socket
import socketserver
import sys
import threading

# Where Handler logs; the command line sets it, servers.py keeps the default.
LOG = "/dev/null"


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise OSError("closed")
        b += d
    return b


def pump(src, dst):
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            dst.sendall(d)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        try:
            _, n = recv_exact(s, 2)
            methods = recv_exact(s, n)
            user = "-"
            if 2 in methods:
                # RFC 1929, any credentials accepted: the log shows which were used.
                s.sendall(b"\x05\x02")
                _, ul = recv_exact(s, 2)
                user = recv_exact(s, ul).decode()
                (pl,) = recv_exact(s, 1)
                recv_exact(s, pl)
                s.sendall(b"\x01\x00")
            else:
                s.sendall(b"\x05\x00")
            _, cmd, _, atyp = recv_exact(s, 4)
            if atyp == 1:
                host = socket.inet_ntop(socket.AF_INET, recv_exact(s, 4))
            elif atyp == 4:
                host = socket.inet_ntop(socket.AF_INET6, recv_exact(s, 16))
            else:
                host = recv_exact(s, recv_exact(s, 1)[0]).decode()
            port = int.from_bytes(recv_exact(s, 2), "big")
            with open(LOG, "a") as f:
                f.write("CONNECT %s %d user=%s\n" % (host, port, user))
            try:
                out = socket.create_connection((host, port), timeout=10)
            except OSError:
                s.sendall(b"\x05\x05\x00\x01" + bytes(6))
                return
            s.sendall(b"\x05\x00\x00\x01" + bytes(6))
            out.settimeout(None)
            t = threading.Thread(target=pump, args=(out, s), daemon=True)
            t.start()
            pump(s, out)
            t.join(30)
            out.close()
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    LOG = sys.argv[3]
    srv = Server((sys.argv[1], int(sys.argv[2])), Handler)
    print("ready", flush=True)
    srv.serve_forever()
