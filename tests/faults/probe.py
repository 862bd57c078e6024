"""Servers and probes for tests/faults/run (Python 3, standard library only).

serve ADDR          echo on ADDR:9001, a "hello" that then holds the connection on ADDR:9003
echo HOST PORT N    send N random bytes, read the echo, print "OK <sha256>" or "BAD <why>"
hold HOST PORT      (through QNET_FAULTS_SOCKS=host:port if set) read "hello", print "ready", block in recv: print what ends it
                    (RESET for ConnectionResetError, EOF for a clean end)
write HOST PORT     read "hello", print "ready", send 1 KiB every 10 ms: print what ends
                    it (RESET, EPIPE for BrokenPipeError)
"""
import hashlib
import os
import socket
import sys
import threading
import time


def serve(addr):
    def echo(c):
        with c:
            while True:
                b = c.recv(65536)
                if not b:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(b)

    def hold(c):
        c.sendall(b"hello\n")
        try:
            while c.recv(65536):  # until the relay's side goes away
                pass
        except OSError:
            pass
        c.close()

    def listen(port, handler):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(64)
        while True:
            c, _ = s.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    for port, h in ((9001, echo), (9003, hold)):
        threading.Thread(target=listen, args=(port, h), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def echo_client(host, port, n):
    data = os.urandom(n)
    s = socket.create_connection((host, port), timeout=60)
    sent = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
    sent.start()
    h, got = hashlib.sha256(), 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        h.update(b)
        got += len(b)
    sent.join()
    want = hashlib.sha256(data).hexdigest()
    if got != n or h.hexdigest() != want:
        print(f"BAD {got} of {n} bytes, sha256 {h.hexdigest()} != {want}")
    else:
        print(f"OK {want}")


def connect(host, port):
    """A TCP connection to host:port; through the SOCKS5 server in QNET_FAULTS_SOCKS
    (host:port, no authentication) when it is set."""
    proxy = os.environ.get("QNET_FAULTS_SOCKS")
    if not proxy:
        return socket.create_connection((host, port), timeout=20)
    phost, pport = proxy.rsplit(":", 1)
    s = socket.create_connection((phost, int(pport)), timeout=20)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        raise OSError("SOCKS: no acceptable method")
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
    reply = s.recv(10)
    if len(reply) < 2 or reply[1] != 0:
        raise OSError(f"SOCKS: CONNECT refused {reply!r}")
    return s


def hold_client(host, port):
    s = connect(host, port)
    line = s.recv(6)
    if line != b"hello\n":
        print(f"BAD greeting {line!r}")
        return
    print("ready", flush=True)
    s.settimeout(30)
    try:
        b = s.recv(1)
        print("EOF" if not b else f"DATA {b!r}")
    except ConnectionResetError:
        print("RESET")
    except OSError as e:
        print(f"ERROR {e!r}")


def write_client(host, port):
    s = socket.create_connection((host, port), timeout=20)
    if s.recv(6) != b"hello\n":
        print("BAD greeting")
        return
    print("ready", flush=True)
    chunk = b"w" * 1024
    try:
        for _ in range(3000):  # 30 s at most
            s.send(chunk)
            time.sleep(0.01)
        print("NO ERROR")
    except ConnectionResetError:
        print("RESET")
    except BrokenPipeError:
        print("EPIPE")
    except OSError as e:
        print(f"ERROR {e!r}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(sys.argv[2])
    elif cmd == "echo":
        echo_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "hold":
        hold_client(sys.argv[2], int(sys.argv[3]))
    elif cmd == "write":
        write_client(sys.argv[2], int(sys.argv[3]))
