#!/usr/bin/env python3
"""A second implementation of docs/PROTOCOL.md, written from the spec alone.

It uses only Python's standard library and the `cryptography` package (X25519,
ChaCha20, ChaCha20-Poly1305), never the Rust code. Part one recomputes the spec's
test vectors; part two runs a Noise XK client against a real `qnet-relay` and uses
every frame type, so a drift between the spec and the implementation fails here.

usage: record_spec.py [path/to/qnet-relay]   (default: target/debug/qnet-relay)
"""

import base64
import hashlib
import hmac
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

PROTOCOL_NAME = b"Noise_XK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"qnet/3 Noise_XK_25519_ChaChaPoly_BLAKE2s"
VERSION = 3
MSG1_LEN = 32 + 8 + 2 + 16 + 16
MAX_PAYLOAD = 16384
HEADER = 7
TAG = 16

PADDING, OPEN, OPEN_RESULT, DATA, WINDOW_UPDATE, CLOSE, RESET, PING, PONG, KEY_UPDATE = range(10)

failures = []
passes = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    (passes if cond else failures).append(what)


# ---- primitives ---------------------------------------------------------------


def blake2s_mac(key, msg):
    return hashlib.blake2s(msg, key=key, digest_size=32).digest()


def nonce(counter):
    return b"\0" * 4 + struct.pack("<Q", counter)


def public_bytes(priv):
    return priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(priv):
    return priv.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def dh(priv, pub):
    return priv.exchange(X25519PublicKey.from_public_bytes(pub))


# ---- admission (spec section 2, "Admission") -------------------------------------


def admit_key(client_priv, relay_pub):
    """k_c and the 2-byte hint the client's msg1 carries."""
    k = blake2s_mac(dh(client_priv, relay_pub), b"qnet/3 admit")
    return k, blake2s_mac(k, b"qnet/3 admit hint")[:2]


def admit_tag(k, epub, stamp):
    return blake2s_mac(k, epub + struct.pack(">Q", stamp))[:16]


# ---- Noise XK (Noise spec rev. 34, sections 5 and 7) ---------------------------


def hmac_b2s(key, data):
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf2(ck, ikm):
    temp = hmac_b2s(ck, ikm)
    o1 = hmac_b2s(temp, b"\x01")
    o2 = hmac_b2s(temp, o1 + b"\x02")
    return o1, o2


class Symmetric:
    def __init__(self):
        self.h = hashlib.blake2s(PROTOCOL_NAME).digest() if len(PROTOCOL_NAME) > 32 else PROTOCOL_NAME.ljust(32, b"\0")
        self.ck = self.h
        self.k = None
        self.n = 0

    def mix_hash(self, data):
        self.h = hashlib.blake2s(self.h + data).digest()

    def mix_key(self, ikm):
        self.ck, self.k = hkdf2(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, pt):
        ct = pt if self.k is None else ChaCha20Poly1305(self.k).encrypt(nonce(self.n), pt, self.h)
        if self.k is not None:
            self.n += 1
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ct):
        pt = ct if self.k is None else ChaCha20Poly1305(self.k).decrypt(nonce(self.n), ct, self.h)
        if self.k is not None:
            self.n += 1
        self.mix_hash(ct)
        return pt

    def split(self):
        return hkdf2(self.ck, b"")


def params(stream_window, session_window):
    return bytes([VERSION]) + struct.pack(">II", stream_window, session_window)


def now_ms():
    return int(time.time() * 1000)


class NoiseXKInitiator:
    """The client side of XK: knows the responder's static key in advance."""

    def __init__(self, static_priv, relay_pub, my_params):
        self.s = static_priv
        self.rs = relay_pub
        self.params = my_params
        self.sym = Symmetric()
        self.sym.mix_hash(PROLOGUE)
        self.sym.mix_hash(relay_pub)  # pre-message <- s

    def msg1(self, stamp_ms=None, e=None, randomize=True, proof=None):
        """msg1 with the payload of spec section 2: the wall-clock time in ms, big-endian,
        the admission hint and the tag. `proof` is (k_c, hint), by default this client's."""
        self.e = e or X25519PrivateKey.generate()
        epub = public_bytes(self.e)
        self.sym.mix_hash(epub)
        self.sym.mix_key(dh(self.e, self.rs))
        stamp = now_ms() if stamp_ms is None else stamp_ms
        k, hint = proof or admit_key(self.s, self.rs)
        payload = struct.pack(">Q", stamp) + hint + admit_tag(k, epub, stamp)
        body = epub + self.sym.encrypt_and_hash(payload)
        # Spec section 2: the clear top bit of the ephemeral key is replaced by a random bit.
        body = bytearray(body)
        if randomize:
            body[31] |= os.urandom(1)[0] & 0x80
        assert len(body) == MSG1_LEN
        return bytes(body)

    def read_msg2_write_msg3(self, m2):
        assert len(m2) == 57
        m2 = bytearray(m2)
        m2[31] &= 0x7F
        re = bytes(m2[:32])
        self.sym.mix_hash(re)
        self.sym.mix_key(dh(self.e, re))
        relay_params = self.sym.decrypt_and_hash(bytes(m2[32:]))
        out = self.sym.encrypt_and_hash(public_bytes(self.s))
        self.sym.mix_key(dh(self.s, re))
        out += self.sym.encrypt_and_hash(self.params)
        assert len(out) == 73
        k1, k2 = self.sym.split()
        return out, relay_params, k1, k2


# ---- records (spec section 3) ---------------------------------------------------


class Direction:
    def __init__(self, secret):
        self.set(secret)

    def set(self, secret):
        self.secret = secret
        self.aead = ChaCha20Poly1305(blake2s_mac(secret, b"qnet/1 record key"))
        mask_key = blake2s_mac(secret, b"qnet/1 length mask")
        # cryptography's ChaCha20 nonce is the 32-bit LE block counter then the 96-bit nonce.
        self.mask = Cipher(algorithms.ChaCha20(mask_key, b"\0" * 16), mode=None).encryptor()
        self.counter = 0

    def update(self):
        self.set(blake2s_mac(self.secret, b"qnet/1 key update"))

    def seal(self, frame):
        length = len(frame) + TAG
        masked = bytes(a ^ b for a, b in zip(struct.pack(">H", length), self.mask.update(b"\0\0")))
        ct = self.aead.encrypt(nonce(self.counter), frame, b"")
        self.counter += 1
        return masked + ct

    def open_stream(self, buf):
        """Yield frames from the front of buf (a bytearray), consuming them."""
        frames = []
        while True:
            if getattr(self, "pending", None) is None:
                if len(buf) < 2:
                    break
                ks = self.mask.update(b"\0\0")
                length = struct.unpack(">H", bytes(a ^ b for a, b in zip(buf[:2], ks)))[0]
                if not 23 <= length <= 16407:
                    raise ValueError("bad record length %d" % length)
                self.pending = length
            if len(buf) < 2 + self.pending:
                break
            body = bytes(buf[2 : 2 + self.pending])
            del buf[: 2 + self.pending]
            self.pending = None
            frame = self.aead.decrypt(nonce(self.counter), body, b"")
            self.counter += 1
            frames.append(frame)
            if frame[0] == KEY_UPDATE:
                self.update()
                # Frames after this one in buf are under the new key: stop and let the caller loop.
                return frames, True
        return frames, False


# ---- frames (spec section 4) ----------------------------------------------------


def frame(ftype, stream, payload=b"", pad=0):
    return struct.pack(">BIH", ftype, stream, len(payload)) + payload + b"\0" * pad


def parse_frame(f):
    ftype, stream, plen = struct.unpack(">BIH", f[:HEADER])
    payload = f[HEADER : HEADER + plen]
    assert len(payload) == plen, "truncated frame"
    assert all(b == 0 for b in f[HEADER + plen :]), "non-zero padding"
    return ftype, stream, payload


def dest_v4(ip, port):
    return bytes([1]) + socket.inet_aton(ip) + struct.pack(">H", port)


def dest_v6(ip, port):
    return bytes([4]) + socket.inet_pton(socket.AF_INET6, ip) + struct.pack(">H", port)


def dest_name(name, port):
    n = name.encode()
    return bytes([3, len(n)]) + n + struct.pack(">H", port)


# ---- part one: test vectors -----------------------------------------------------


def vectors():
    aead = ChaCha20Poly1305(b"\x07" * 32)
    check(
        aead.encrypt(nonce(1), b"qnet", b"").hex() == "cb3d55141f6859329b3de20490ba61a492dc10b0",
        "vector: AEAD nonce layout and empty AAD",
    )
    d = Direction(b"\x01" * 32)
    rec = d.seal(frame(DATA, 1, b"golden"))
    check(
        rec.hex() == "7fa6833d594ecfcba9c6271bead6d0e2e20bd3e04ce7121f3c3da53791874d",
        "vector: first record (KDF labels, length mask, nonce, frame layout)",
    )
    o = Direction(b"\x01" * 32)
    buf = bytearray(rec + d.seal(frame(KEY_UPDATE, 0)))
    fr, updated = o.open_stream(buf)
    d.update()
    buf += d.seal(frame(DATA, 1, b"after", pad=5))
    fr2, _ = o.open_stream(buf)
    check(
        [parse_frame(f) for f in fr + fr2]
        == [(DATA, 1, b"golden"), (KEY_UPDATE, 0, b""), (DATA, 1, b"after")] and updated,
        "vector: key update and padding round-trip in this implementation",
    )
    relay_pub = public_bytes(X25519PrivateKey.from_private_bytes(b"\x02" * 32))
    client = X25519PrivateKey.from_private_bytes(b"\x01" * 32)
    e = X25519PrivateKey.from_private_bytes(b"\x03" * 32)
    k, hint = admit_key(client, relay_pub)
    tag = admit_tag(k, public_bytes(e), 1_700_000_000_000)
    check(
        hint.hex() == "c0ab" and tag.hex() == "0b79ec7d45dbad49c91392db2629a1e6",
        "vector: admission hint and tag (k_c from the static-static X25519) match src/proto/noise.rs",
    )
    hs = NoiseXKInitiator(client, relay_pub, params(1 << 18, 1 << 24))
    m1 = hs.msg1(1_700_000_000_000, e, randomize=False)
    check(
        m1.hex() == "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22612932c4eb22713978d715a30d8e63ec4e9e793404f1810b955dc7e9aa5055c35bc03e43d0d74e5567dd",
        "vector: msg1 (prologue qnet/3, timestamp, hint and tag) matches src/proto/noise.rs",
    )
    check(
        frame(OPEN, 1, bytes([2]) + dest_v4("192.0.2.7", 443) + b"hi")
        == bytes([0x01, 0, 0, 0, 1, 0, 10, 2, 1, 192, 0, 2, 7, 0x01, 0xBB]) + b"hi",
        "vector: OPEN frame golden bytes match src/proto/frame.rs",
    )


# ---- part two: a live session with qnet-relay ----------------------------------


class Echo:
    """A TCP echo server on loopback that closes its side after the client's EOF."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            c, _ = self.sock.accept()
            threading.Thread(target=self.echo, args=(c,), daemon=True).start()

    @staticmethod
    def echo(c):
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(d)


class Client:
    def __init__(self, addr, static_priv, relay_pub, stream_window=1 << 18, session_window=1 << 24):
        self.sock = socket.create_connection(addr, timeout=10)
        self.hs = NoiseXKInitiator(static_priv, relay_pub, params(stream_window, session_window))
        self.rx = bytearray()
        self.frames = []
        self.next_stream = 1

    def recv_exact(self, n):
        while len(self.rx) < n:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("relay closed")
            self.rx += d
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    def handshake(self):
        self.msg1 = self.hs.msg1()
        self.sock.sendall(self.msg1)
        m2 = self.recv_exact(57)
        m3, relay_params, k1, k2 = self.hs.read_msg2_write_msg3(m2)
        self.relay_params = relay_params
        self.tx = Direction(k1)
        self.rxd = Direction(k2)
        self.pending_out = m3  # msg3 goes out together with the first record(s)

    def send(self, *frames, flush=True):
        out = self.pending_out
        self.pending_out = b""
        for f in frames:
            out += self.tx.seal(f)
        self.sock.sendall(out)

    def send_key_update(self):
        self.send(frame(KEY_UPDATE, 0))
        self.tx.update()

    def next_frame(self):
        while not self.frames:
            while True:
                fr, again = self.rxd.open_stream(self.rx)
                self.frames += [parse_frame(f) for f in fr]
                if not again:
                    break
            if self.frames:
                break
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("relay closed")
            self.rx += d
        return self.frames.pop(0)

    def open(self, dest, data=b""):
        sid = self.next_stream
        self.next_stream += 2
        self.send(frame(OPEN, sid, bytes([0]) + dest + data))
        return sid


def wait_quiet(sock, seconds):
    """Bytes the peer sends within `seconds` (the relay must send none after a failure)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while True:
            d = sock.recv(4096)
            if not d:
                break
            got += d
    except socket.timeout:
        pass
    return got


def silent_until_close(sock, limit=5):
    """True when the peer closes within `limit` seconds without sending a byte."""
    sock.settimeout(limit)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def live(relay_bin):
    tmp = tempfile.mkdtemp(prefix="qnet-interop-")
    relay_priv = X25519PrivateKey.generate()
    client_priv = X25519PrivateKey.generate()
    stranger = X25519PrivateKey.generate()
    key_path = os.path.join(tmp, "relay.key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(private_bytes(relay_priv)) + b"\n")
    os.close(fd)
    clients = os.path.join(tmp, "clients")
    with open(clients, "w") as f:
        f.write("# the interop client\n" + base64.b64encode(public_bytes(client_priv)).decode() + "\n")
    # Unauthenticated connections close after 0.3-0.7 s (spec section 2, "Failure"), so
    # the refusals below can wait for the close.
    empty_cfg = os.path.join(tmp, "relay.toml")
    with open(empty_cfg, "w") as f:
        f.write("[server]\ndrain_min_ms = 300\ndrain_max_ms = 700\n")
    proc = subprocess.Popen(
        [relay_bin, "--listen", "127.0.0.1:0", "--key", key_path, "--clients", clients,
         "--exit-allow", "127.0.0.1/32", "--exit-allow", "[::1]/128", "--connect-timeout", "3"],
        stderr=subprocess.PIPE,
        env=dict(os.environ, QNET_CONFIG=empty_cfg),
    )
    try:
        line = proc.stderr.readline().decode()
        assert line.startswith("qnet-relay listening on "), line
        host, port = line.split()[-1].rsplit(":", 1)
        addr = (host, int(port))
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        session(addr, public_bytes(relay_priv), client_priv)
        refusals(addr, public_bytes(relay_priv), stranger, client_priv)
    finally:
        proc.kill()
        proc.wait()


def session(addr, relay_pub, client_priv):
    echo = Echo()
    c = Client(addr, client_priv, relay_pub)
    c.handshake()
    check(c.relay_params[0] == VERSION and len(c.relay_params) == 9, "handshake: relay sends version-3 transport parameters")
    stream_window, session_window = struct.unpack(">II", c.relay_params[1:])

    # OPEN by IPv4 with first data, padding on the record, then DATA and a PING.
    sid = c.open(dest_v4("127.0.0.1", echo.port), b"first ")
    c.send(frame(DATA, sid, b"second", pad=300), frame(PADDING, 0, pad=1000), frame(PING, 0, b"12345678"))
    got, result, pong = b"", None, None
    while len(got) < 12 or pong is None:
        t, s, p = c.next_frame()
        if t == OPEN_RESULT:
            result = p
        elif t == DATA and s == sid:
            got += p
        elif t == PONG:
            pong = p
    check(result == b"\x00", "OPEN by IPv4: OPEN_RESULT connected")
    check(got == b"first second", "OPEN first data and padded DATA echoed through the relay")
    check(pong == b"12345678", "PING answered by PONG with the same 8 bytes")

    # Key update mid-stream, then more data than a stream window: credit must flow back.
    c.send_key_update()
    blob = os.urandom(3 * stream_window + 12345)
    sent = 0
    credit = stream_window - 12  # "first second" spent 12 bytes of this stream's credit
    received = bytearray()
    consumed = 0
    while len(received) < len(blob):
        while sent < len(blob) and credit > 0:
            n = min(MAX_PAYLOAD, credit, len(blob) - sent)
            c.send(frame(DATA, sid, blob[sent : sent + n]))
            sent += n
            credit -= n
        t, s, p = c.next_frame()
        if t == WINDOW_UPDATE and s == sid:
            credit += struct.unpack(">I", p)[0]
        elif t == DATA and s == sid:
            received += p
            consumed += len(p)
            if consumed >= stream_window // 2:  # return credit as the spec's receiver would
                c.send(frame(WINDOW_UPDATE, sid, struct.pack(">I", consumed)),
                       frame(WINDOW_UPDATE, 0, struct.pack(">I", consumed)))
                consumed = 0
    check(bytes(received) == blob, "after KEY_UPDATE, %d bytes echoed with WINDOW_UPDATE credit both ways" % len(blob))

    # Half-close: our CLOSE reaches the echo server as EOF, it closes, the relay sends CLOSE.
    c.send(frame(CLOSE, sid))
    while True:
        t, s, p = c.next_frame()
        if s == sid and t == CLOSE:
            break
        if t == WINDOW_UPDATE:
            continue
        check(t == DATA, "only DATA or CLOSE on a half-closed stream (got type %d)" % t)
    check(True, "CLOSE answered by the destination's CLOSE (half-close both ways)")

    # Hostname resolved by the relay, and IPv6.
    echo6 = None
    try:
        echo6 = Echo(socket.AF_INET6, "::1")
    except OSError:
        print("note  no IPv6 loopback here; IPv6 case not run")
    sid = c.open(dest_name("localhost", echo.port), b"by name")
    streams = {sid: b""}
    if echo6:
        sid6 = c.open(dest_v6("::1", echo6.port), b"by v6")
        streams[sid6] = b""
    results = {}
    while len(results) < len(streams) or any(len(v) == 0 for v in streams.values()):
        t, s, p = c.next_frame()
        if t == OPEN_RESULT:
            results[s] = p
            if p != b"\x00":
                streams[s] = b"(failed)"
        elif t == DATA:
            streams[s] += p
    check(streams[sid] == b"by name" and results[sid] == b"\x00", "OPEN by hostname: resolved at the relay, echoed")
    if echo6:
        check(streams[sid6] == b"by v6", "OPEN by IPv6 echoed")

    # Failures map to their codes: refused port, exit policy, unknown name; RESET is accepted.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    cases = {
        c.open(dest_v4("127.0.0.1", dead_port)): (1, "refused port gives code 1 (ECONNREFUSED)"),
        c.open(dest_v4("127.0.0.2", echo.port)): (6, "destination outside the exit policy gives code 6 (EACCES)"),
        c.open(dest_name("no-such-host.invalid", 80)): (5, "unresolvable name gives code 5"),
    }
    seen = {}
    while len(seen) < len(cases):
        t, s, p = c.next_frame()
        if t == OPEN_RESULT and s in cases:
            seen[s] = p[0]
    for s, (code, what) in cases.items():
        check(seen[s] == code, what + " (got %d)" % seen[s])
    c.send(frame(RESET, sid, b"\x00"))
    c.send(frame(PING, 0, b"87654321"))
    while True:
        t, s, p = c.next_frame()
        if t == PONG:
            break
    check(p == b"87654321", "session alive after RESET")

    # A protocol violation (DATA for a stream never opened) ends the session without a reply.
    c.send(frame(DATA, 1001, b"x"))
    check(wait_quiet(c.sock, 2) == b"", "protocol violation: the relay closes without replying")


def refusals(addr, relay_pub, stranger, client_priv):
    # A key not on the allow-list: its msg1 proves nothing, so not even msg2 comes back;
    # the relay closes at its drain deadline without a byte.
    c = Client(addr, stranger, relay_pub)
    c.sock.sendall(c.hs.msg1())
    check(silent_until_close(c.sock), "client not on the allow-list: no msg2, silence until the relay closes")

    # The allowed key's hint with a tag under another key: silence, as for a stranger.
    c = Client(addr, client_priv, relay_pub)
    c.sock.sendall(c.hs.msg1(proof=(os.urandom(32), admit_key(client_priv, relay_pub)[1])))
    check(silent_until_close(c.sock), "allowed key's hint with a wrong tag: silence until the relay closes")

    # msg1 proving the allowed key, msg3 presenting another: msg2 comes, then nothing.
    c = Client(addr, stranger, relay_pub)
    c.sock.sendall(c.hs.msg1(proof=admit_key(client_priv, relay_pub)))
    m3, _, k1, _ = c.hs.read_msg2_write_msg3(c.recv_exact(57))
    c.sock.sendall(m3 + Direction(k1).seal(frame(PING, 0, b"abcdefgh")))
    check(wait_quiet(c.sock, 1.5) == b"", "msg3 with another key than msg1 proved: no byte after msg2")

    # An allowed client's handshake, whose msg1 is replayed below.
    c = Client(addr, client_priv, relay_pub)
    c.handshake()

    # The wrong relay key: msg1 fails at the relay, which answers nothing.
    wrong = Client(addr, client_priv, public_bytes(X25519PrivateKey.generate()))
    wrong.sock.sendall(wrong.hs.msg1())
    check(wait_quiet(wrong.sock, 1.5) == b"", "wrong relay key: no reply bytes")

    # A replayed msg1 (the one c sent above, on a fresh connection): no reply, not even msg2.
    s = socket.create_connection(addr)
    s.sendall(c.msg1)
    check(wait_quiet(s, 1.5) == b"", "replayed msg1: no reply bytes")

    # A msg1 stamped 10 minutes off the relay's clock (either way): no reply.
    for off, what in ((-600_000, "behind"), (600_000, "ahead")):
        stale = Client(addr, client_priv, relay_pub)
        stale.sock.sendall(stale.hs.msg1(now_ms() + off))
        check(wait_quiet(stale.sock, 1.5) == b"", "msg1 stamped 10 min %s: no reply bytes" % what)

    # Clients of older versions: their prologue and msg1 payload, no reply.
    def old_msg1(version, payload):
        """msg1 of protocol `version` (prologue qnet/<version>) carrying `payload`."""
        old = NoiseXKInitiator(client_priv, relay_pub, bytes([version]) + struct.pack(">II", 1 << 18, 1 << 24))
        old.sym = Symmetric()
        old.sym.mix_hash(b"qnet/%d Noise_XK_25519_ChaChaPoly_BLAKE2s" % version)
        old.sym.mix_hash(relay_pub)
        e = X25519PrivateKey.generate()
        old.sym.mix_hash(public_bytes(e))
        old.sym.mix_key(dh(e, relay_pub))
        return public_bytes(e) + old.sym.encrypt_and_hash(payload)

    # Version 2: the timestamp alone as msg1's payload.
    s = socket.create_connection(addr)
    s.sendall(old_msg1(2, struct.pack(">Q", now_ms())))
    check(silent_until_close(s), "version-2 msg1: no reply bytes")
    # Version 1: an empty msg1 payload.
    s = socket.create_connection(addr)
    s.sendall(old_msg1(1, b""))
    check(wait_quiet(s, 1.5) == b"", "version-1 msg1: no reply bytes")

    # Random bytes: no reply.
    s = socket.create_connection(addr)
    s.sendall(os.urandom(500))
    check(wait_quiet(s, 1.5) == b"", "random bytes: no reply bytes")

    # A tampered record after a good handshake: the session ends silently.
    c = Client(addr, client_priv, relay_pub)
    c.handshake()
    rec = bytearray(c.tx.seal(frame(PING, 0, b"tampered")))
    rec[5] ^= 1
    c.sock.sendall(c.pending_out + bytes(rec))
    check(wait_quiet(c.sock, 1.5) == b"", "tampered record: no reply bytes")


def main():
    vectors()
    relay = sys.argv[1] if len(sys.argv) > 1 else "target/debug/qnet-relay"
    if not os.access(relay, os.X_OK):
        print("FAIL  no relay binary at %s (build it first)" % relay)
        sys.exit(1)
    t = time.monotonic()
    live(relay)
    print("live session checks took %.1f s" % (time.monotonic() - t))
    print("record_spec: %d passed, %d failed" % (len(passes), len(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
