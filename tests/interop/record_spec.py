#!/usr/bin/env python3
"""A second implementation of docs/PROTOCOL.md, written from the spec alone.

It uses Python's standard library, the `cryptography` package (X25519, ChaCha20,
ChaCha20-Poly1305, AES-256-GCM) and the `kyber-py` package (ML-KEM-768, FIPS 203), never
the Rust code. Part one recomputes the spec's test vectors, playing both ends of the handshake;
part two runs a Noise XKpsk2 + ML-KEM client against a real `qnet-relay` and uses every
frame type, with each record cipher the handshake can choose, so a drift between the
spec and the implementation fails here.

usage: record_spec.py [path/to/qnet-relay]   (default: target/debug/qnet-relay)
"""

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from kyber_py.ml_kem import ML_KEM_768

PROTOCOL_NAME = b"Noise_XKpsk2_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"qnet/5 Noise_XKpsk2_25519_ChaChaPoly_BLAKE2s ML-KEM-768"
VERSION = 5  # the transport parameters' version byte
PARAMS_LEN = 10  # version (1), stream_window (4), session_window (4), ciphers (1)
OFFER_AES = 0x01  # bit 0 of the ciphers byte: the sender offers AES-256-GCM for records
EK_LEN = 1184
CT_LEN = 1088
MSG1_LEN = 32 + (8 + 2 + 16 + 2 + EK_LEN) + 16
MSG2_LEN = 32 + (PARAMS_LEN + 2) + 16
MSG3_LEN = 32 + 16 + (PARAMS_LEN + 2) + 16
assert (MSG1_LEN, MSG2_LEN, MSG3_LEN) == (1260, 60, 76)  # spec section 2's table
MAX_PAD = 511
MAX_PAYLOAD = 16384
HEADER = 7
TAG = 16

PADDING, OPEN, OPEN_RESULT, DATA, WINDOW_UPDATE, CLOSE, RESET, PING, PONG, KEY_UPDATE = range(10)

# The records' two AEADs (spec section 3) and the label of each one's record key.
CHACHA = "ChaCha20-Poly1305"
AES_GCM = "AES-256-GCM"
RECORD_AEADS = {
    CHACHA: (ChaCha20Poly1305, b"qnet/1 record key"),
    AES_GCM: (AESGCM, b"qnet/5 record key AES-256-GCM"),
}
# Under AES-256-GCM a sender switches keys right after a key's 2^24th record: the
# KEY_UPDATE that ends the key is its record 2^24 + 1 (section 3).
AES_GCM_RECORD_LIMIT = 1 << 24

failures = []
passes = []
relay_reps = []  # the representative of every msg2 the relay sent in this run


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    (passes if cond else failures).append(what)


# ---- primitives ---------------------------------------------------------------


def blake2s_mac(key, msg):
    return hashlib.blake2s(msg, key=key, digest_size=32).digest()


def digest(data):
    return hashlib.blake2s(data).hexdigest()


def nonce(counter):
    return b"\0" * 4 + struct.pack("<Q", counter)


def chacha20(key, n, length):
    """The spec's ChaCha20(key, n): nonce of eleven zero bytes then n, block counter 0.
    cryptography's 16-byte nonce is the 32-bit LE block counter then the 96-bit nonce."""
    nonce16 = b"\0" * 4 + b"\0" * 11 + bytes([n])
    return Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(b"\0" * length)


def xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def public_bytes(priv):
    return priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(priv):
    return priv.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def dh(priv, pub):
    return priv.exchange(X25519PublicKey.from_public_bytes(pub))


def reader(data):
    """A read(n) over bytes, as a socket's recv_exact is over the stream."""
    buf = bytearray(data)

    def read(n):
        assert len(buf) >= n, "short input"
        out = bytes(buf[:n])
        del buf[:n]
        return out

    return read


# ---- admission, masks and pads (spec section 2) ---------------------------------


def admit_key(client_priv, relay_pub):
    """k_c and the 2-byte hint the client's msg1 carries."""
    k = blake2s_mac(dh(client_priv, relay_pub), b"qnet/3 admit")
    return k, blake2s_mac(k, b"qnet/3 admit hint")[:2]


def admit_tag(k, epub, stamp):
    return blake2s_mac(k, epub + struct.pack(">Q", stamp))[:16]


def mask_key(k_c, epub):
    """m, whose keystreams are pad1 (1), the relay's flight (2) and pad3 (3)."""
    return blake2s_mac(k_c, b"qnet/4 mask" + epub)


def kem_psk(K, ct):
    return blake2s_mac(K, b"qnet/4 psk" + ct)


def draw_pad():
    return secrets.randbelow(MAX_PAD + 1)


def check_pad(pad, expected):
    """A pad must be its keystream byte for byte; a difference fails the handshake."""
    if not hmac.compare_digest(pad, expected):
        raise ValueError("pad differs from its keystream")


def pad_len(field):
    """The 2-byte pad length of a payload; over 511 fails the handshake."""
    n = struct.unpack(">H", field)[0]
    if n > MAX_PAD:
        raise ValueError("pad length %d over %d" % (n, MAX_PAD))
    return n


# ---- ephemeral keys as Elligator2 representatives (spec section 2) -----------------

P = 2**255 - 19
A = 486662  # Curve25519's Montgomery coefficient
Z = 2  # RFC 9380's Z for curve25519
SQRT_M1 = pow(2, (P - 1) // 4, P)


def is_square(x):
    """Legendre symbol: 0 and the quadratic residues mod p."""
    x %= P
    return x == 0 or pow(x, (P - 1) // 2, P) == 1


def inv(x):
    return pow(x, P - 2, P)  # 0 for 0, as RFC 9380's inv0


def sqrt(x):
    """The square root of x mod p below (p - 1)/2, or None when x is not a square
    (p = 5 mod 8: x^((p+3)/8), times sqrt(-1) if that squares to -x)."""
    x %= P
    if not is_square(x):
        return None
    c = pow(x, (P + 3) // 8, P)
    if c * c % P != x:
        c = c * SQRT_M1 % P
    assert c * c % P == x
    return min(c, P - c)


def decode(r):
    """The spec's decode: RFC 9380 6.7.1 map_to_curve_elligator2 for curve25519, the
    u-coordinate only. r is 32 bytes, little-endian, its top two bits ignored."""
    v = (int.from_bytes(r, "little") & ((1 << 254) - 1)) % P
    d = (1 + Z * v * v) % P
    x1 = (-A * inv(d)) % P if d else (-A) % P
    g = (x1 * x1 * x1 + A * x1 * x1 + x1) % P
    e = x1 if is_square(g) else (-x1 - A) % P
    return e.to_bytes(32, "little")


def encode(epub):
    """A representative of the public key epub with random top two bits, or None when
    epub has none (about half of all keys). The spec's two formulas, r^2 = -e / (Z (e + A))
    and r^2 = -(e + A) / (Z e), have a root for the same keys (their product is 1/Z^2) and
    give two r that both decode to e, through decode's second and first branch: one drawn
    at random, since a sender that always took one would be told by that branch."""
    u = int.from_bytes(epub, "little")
    if u == 0 or (u + A) % P == 0:
        return None
    if secrets.randbelow(2):
        r = sqrt(-u * inv(Z * (u + A)))
    else:
        r = sqrt(-(u + A) * inv(Z * u))
    if r is None:
        return None
    rep = r.to_bytes(32, "little")
    assert decode(rep) == epub, "representative does not decode to its key"
    return rep[:31] + bytes([rep[31] | (os.urandom(1)[0] & 0xC0)])


def ephemeral():
    """A fresh ephemeral key with a representative: (private key, representative).
    This test client represents the clean key [k]B, without the low-order point the spec
    adds: the spec says such a sender interoperates but is easy to spot (its keys all lie
    in the prime-order subgroup), which does not matter for a test client."""
    while True:
        priv = X25519PrivateKey.generate()
        rep = encode(public_bytes(priv))
        if rep is not None:
            return priv, rep


def top_bits(rep):
    """The top two bits of a representative (bits 7 and 6 of byte 31)."""
    return rep[31] >> 6


# ---- Noise XKpsk2 (Noise spec rev. 34, sections 5, 7 and 9) ---------------------


def hmac_b2s(key, data):
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf(ck, ikm, outputs):
    temp = hmac_b2s(ck, ikm)
    out = [hmac_b2s(temp, b"\x01")]
    for i in range(2, outputs + 1):
        out.append(hmac_b2s(temp, out[-1] + bytes([i])))
    return out


class Symmetric:
    def __init__(self, protocol_name, prologue):
        self.h = hashlib.blake2s(protocol_name).digest() if len(protocol_name) > 32 else protocol_name.ljust(32, b"\0")
        self.ck = self.h
        self.k = None
        self.n = 0
        self.mix_hash(prologue)

    def mix_hash(self, data):
        self.h = hashlib.blake2s(self.h + data).digest()

    def mix_key(self, ikm):
        self.ck, self.k = hkdf(self.ck, ikm, 2)
        self.n = 0

    def mix_key_and_hash(self, ikm):
        self.ck, temp_h, self.k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
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
        return hkdf(self.ck, b"", 2)


def params(stream_window, session_window, ciphers):
    """A transport parameter block (spec section 2): 10 bytes."""
    return bytes([VERSION]) + struct.pack(">IIB", stream_window, session_window, ciphers)


def parse_params(block):
    """The peer's parameter block: (stream_window, session_window, ciphers), with the
    ciphers byte's unknown bits dropped. A block that breaks a rule fails the handshake."""
    if len(block) != PARAMS_LEN:
        raise ValueError("transport parameters of %d bytes" % len(block))
    version, stream_window, session_window, ciphers = struct.unpack(">BIIB", block)
    if version != VERSION:
        raise ValueError("transport parameters of version %d" % version)
    if stream_window < 16384 or session_window < stream_window:
        raise ValueError("windows %d, %d break the rules" % (stream_window, session_window))
    return stream_window, session_window, ciphers & OFFER_AES


def record_cipher(mine, theirs):
    """Spec section 3: AES-256-GCM when bit 0 is set in both ends' blocks, else ChaCha20-Poly1305.
    `mine` and `theirs` are the two parameter blocks."""
    both = mine[PARAMS_LEN - 1] & theirs[PARAMS_LEN - 1] & OFFER_AES
    return AES_GCM if both else CHACHA


def now_ms():
    return int(time.time() * 1000)


class Initiator:
    """The client side of XKpsk2 + ML-KEM: knows the relay's static key in advance."""

    def __init__(self, static_priv, relay_pub, my_params, prologue=PROLOGUE):
        self.s = static_priv
        self.rs = relay_pub
        self.params = my_params
        self.sym = Symmetric(PROTOCOL_NAME, prologue)
        self.sym.mix_hash(relay_pub)  # pre-message <- s

    def msg1(self, stamp_ms=None, e=None, kem=None, pad=None, proof=None):
        """msg1 then pad1. msg1 starts with the representative of the ephemeral key; Noise,
        the tag and the mask see the key it decodes to. The payload is the time in ms, the
        admission hint and tag, pad1's length and a fresh ML-KEM encapsulation key; `e` is
        (private key, representative), `kem` (ek, dk), `proof` (k_c, hint), by default
        fresh ones and this client's own."""
        self.e, rep = e or ephemeral()
        self.ek, self.dk = kem or ML_KEM_768.keygen()
        epub = decode(rep)
        self.sym.mix_hash(epub)
        self.sym.mix_key(epub)  # the psk modifier's extra MixKey on each e
        self.sym.mix_key(dh(self.e, self.rs))
        stamp = now_ms() if stamp_ms is None else stamp_ms
        self.k_c, hint = proof or admit_key(self.s, self.rs)
        self.m = mask_key(self.k_c, epub)
        n = draw_pad() if pad is None else pad
        tag = admit_tag(self.k_c, epub, stamp)
        payload = struct.pack(">Q", stamp) + hint + tag + struct.pack(">H", n) + self.ek
        body = rep + self.sym.encrypt_and_hash(payload)
        assert len(body) == MSG1_LEN
        return body + chacha20(self.m, 1, n)

    def read_flight(self, read):
        """The relay's flight from read(n): masked ct, msg2 (under the ML-KEM psk), pad2.
        Raises InvalidTag when msg2 does not authenticate. Returns the relay's parameters."""
        ks = chacha20(self.m, 2, CT_LEN + MAX_PAD)
        ct = xor(read(CT_LEN), ks)
        K = ML_KEM_768.decaps(self.dk, ct)
        m2 = read(MSG2_LEN)
        self.relay_rep = m2[:32]
        relay_reps.append(self.relay_rep)
        self.re = decode(self.relay_rep)  # Noise reads the key, not its representative
        self.sym.mix_hash(self.re)
        self.sym.mix_key(self.re)
        self.sym.mix_key(dh(self.e, self.re))
        self.sym.mix_key_and_hash(kem_psk(K, ct))
        payload = self.sym.decrypt_and_hash(m2[32:])
        n = pad_len(payload[PARAMS_LEN : PARAMS_LEN + 2])
        check_pad(read(n), ks[CT_LEN : CT_LEN + n])
        return payload[:PARAMS_LEN]

    def msg3(self, pad=None):
        """msg3 then pad3, and the split: (bytes, k1, k2)."""
        out = self.sym.encrypt_and_hash(public_bytes(self.s))
        self.sym.mix_key(dh(self.s, self.re))
        n = draw_pad() if pad is None else pad
        out += self.sym.encrypt_and_hash(self.params + struct.pack(">H", n))
        assert len(out) == MSG3_LEN
        k1, k2 = self.sym.split()
        return out + chacha20(self.m, 3, n), k1, k2


class Responder:
    """The relay side, for the test vectors: one allowed client key, no clock or replay cache."""

    def __init__(self, static_priv, client_pub, my_params):
        self.s = static_priv
        self.k_c, self.hint = admit_key(static_priv, client_pub)
        self.client_pub = client_pub
        self.params = my_params
        self.sym = Symmetric(PROTOCOL_NAME, PROLOGUE)
        self.sym.mix_hash(public_bytes(static_priv))

    def read_msg1(self, read):
        """msg1 and pad1; checks admission and the pad, returns the time."""
        m1 = read(MSG1_LEN)
        epub = decode(m1[:32])
        self.sym.mix_hash(epub)
        self.sym.mix_key(epub)
        self.sym.mix_key(dh(self.s, epub))
        payload = self.sym.decrypt_and_hash(m1[32:])
        stamp = struct.unpack(">Q", payload[:8])[0]
        assert payload[8:10] == self.hint, "hint names no allowed key"
        assert hmac.compare_digest(payload[10:26], admit_tag(self.k_c, epub, stamp)), "wrong tag"
        n = pad_len(payload[26:28])
        self.m = mask_key(self.k_c, epub)
        check_pad(read(n), chacha20(self.m, 1, n))
        self.re = epub
        self.ek = payload[28:]
        return stamp

    def flight(self, e, m, pad):
        """Masked ct, msg2 and pad2, with ephemeral key `e` (private key, representative)
        and encapsulation randomness `m`."""
        self.e, rep = e
        K, ct = ML_KEM_768._encaps_internal(self.ek, m)
        self.ct, self.psk = ct, kem_psk(K, ct)
        epub = decode(rep)
        self.sym.mix_hash(epub)
        self.sym.mix_key(epub)
        self.sym.mix_key(dh(self.e, self.re))
        self.sym.mix_key_and_hash(self.psk)
        m2 = rep + self.sym.encrypt_and_hash(self.params + struct.pack(">H", pad))
        assert len(m2) == MSG2_LEN
        ks = chacha20(self.m, 2, CT_LEN + pad)
        return xor(ct, ks) + m2 + ks[CT_LEN:]

    def read_msg3(self, read):
        """msg3 and pad3; returns the client's parameters and the split."""
        m3 = read(MSG3_LEN)
        client_pub = self.sym.decrypt_and_hash(m3[:48])
        assert client_pub == self.client_pub, "msg3's key is not the one msg1 proved"
        self.sym.mix_key(dh(self.e, client_pub))
        payload = self.sym.decrypt_and_hash(m3[48:])
        n = pad_len(payload[PARAMS_LEN : PARAMS_LEN + 2])
        check_pad(read(n), chacha20(self.m, 3, n))
        k1, k2 = self.sym.split()
        return payload[:PARAMS_LEN], k1, k2


def old_msg1(version, client_priv, relay_pub, stamp=None, e=None):
    """msg1 of an older version: Noise_XK without psk, prologue qnet/<version>, and that
    version's payload (1: empty; 2: the time; 3: the time, admission hint and tag)."""
    sym = Symmetric(b"Noise_XK_25519_ChaChaPoly_BLAKE2s", b"qnet/%d Noise_XK_25519_ChaChaPoly_BLAKE2s" % version)
    sym.mix_hash(relay_pub)
    e = e or X25519PrivateKey.generate()
    epub = public_bytes(e)
    sym.mix_hash(epub)
    sym.mix_key(dh(e, relay_pub))
    stamp = now_ms() if stamp is None else stamp
    payload = b"" if version == 1 else struct.pack(">Q", stamp)
    if version == 3:
        k, hint = admit_key(client_priv, relay_pub)
        payload += hint + admit_tag(k, epub, stamp)
    return epub + sym.encrypt_and_hash(payload)


# ---- records (spec section 3) ---------------------------------------------------


class Direction:
    """One direction's records under the session's AEAD, `cipher` (CHACHA or AES_GCM)."""

    def __init__(self, secret, cipher):
        self.cipher = cipher
        self.set(secret)

    def set(self, secret):
        self.secret = secret
        aead, label = RECORD_AEADS[self.cipher]
        self.aead = aead(blake2s_mac(secret, label))
        mask_key = blake2s_mac(secret, b"qnet/1 length mask")
        # cryptography's ChaCha20 nonce is the 32-bit LE block counter then the 96-bit nonce.
        self.mask = Cipher(algorithms.ChaCha20(mask_key, b"\0" * 16), mode=None).encryptor()
        self.counter = 0

    def update(self):
        self.set(blake2s_mac(self.secret, b"qnet/1 key update"))

    def seal_one(self, frame):
        if self.cipher == AES_GCM:
            assert self.counter < AES_GCM_RECORD_LIMIT or (
                self.counter == AES_GCM_RECORD_LIMIT and frame[0] == KEY_UPDATE
            ), "AES-256-GCM key used for more than 2^24 records before its KEY_UPDATE"
        length = len(frame) + TAG
        masked = bytes(a ^ b for a, b in zip(struct.pack(">H", length), self.mask.update(b"\0\0")))
        ct = self.aead.encrypt(nonce(self.counter), frame, b"")
        self.counter += 1
        return masked + ct

    def seal(self, frame):
        """The record(s) for one frame. A KEY_UPDATE is the last record under its key, so
        the sender switches right after sealing it; under AES-256-GCM a KEY_UPDATE goes
        first by itself once the key has sealed 2^24 records."""
        out = b""
        if self.cipher == AES_GCM and frame[0] != KEY_UPDATE and self.counter == AES_GCM_RECORD_LIMIT:
            out += self.seal(struct.pack(">BIH", KEY_UPDATE, 0, 0))
        out += self.seal_one(frame)
        if frame[0] == KEY_UPDATE:
            self.update()
        return out

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

# Spec section 8, copied here as hex. None: not in the spec yet (the check fails saying so).
SPEC = {
    # AEAD, key = 32 bytes of 0x07, counter 1, plaintext "qnet": ciphertext || tag.
    "aead chacha": "cb3d55141f6859329b3de20490ba61a492dc10b0",
    "aead aes": "4ef416bec63abafeee31995a814a323b50b0d1c1",
    # The first record of a direction whose traffic secret is 32 bytes of 0x01: DATA on
    # stream 1, payload "golden", no padding.
    "record chacha": "7fa6833d594ecfcba9c6271bead6d0e2e20bd3e04ce7121f3c3da53791874d",
    "record aes": "7fa625bcb37e302d3dd2855a31e9fa39688264ff50d547e3952fa02b480c4c",
    # A whole handshake.
    "e rep": "6fa44919e3f6dfc49fa6423edb7b196acea1de1d700007a9d2d730d17794f117",
    "e": "418edeb9799ab80953b72e4a98fefa25a1094dc27847b649de014c0a43b13d76",
    "relay e rep": "5b5cb64e6907695dccbe5d4facbce5e7cd0433317b5dac7e8b57dec9d2e60b21",
    "hint": "c0ab",
    "tag": "3856b08472b980eac858cbdd70bb77d5",
    "ek digest": "14319c7bc1aa830f17c8fa34d6017693781169297460540e21d1f07c848f4da2",
    "ct digest": "5cd6293f83679a90424091accf9de399216658de4ec0b14e82fec565bdbef43d",
    "psk": "cdf7867c0bc2df2693cd4e6877b3bf4c4b8ad19c335593077f115589c8335b2e",
    "msg1 digest": "5052994957eee1c2b13b46de0eada6580321c4f1f78713e3af2bfefa3443e134",
    "flight first 32": "855201daf2ffba384075d43c042b816be83b8cf20baa71c5acaa78cd0acc350c",
    "flight digest": "7ce92b3fe23a32e04345d7c338d48327ec861358c8450b3a3ac5a3b07aa395fa",
    "msg3 digest": "d0aa5cf7bd4945797e624481a6157e2e26566e0ff44cb555464c24a208cdb84a",
    "handshake hash": "117f5edab1778a288c082445a7c9eb6a27285298feed0dd128aeb5b394b63aba",
    "k1": "4b1bad605383e198c891ecdcd0d3ddcedc151f3a398ff4c81f16957d4d1290f9",
    "k2": "9ebf2c2d7de9309fb38dd726e0cf8052a60be655f5bb1638dd9e24abd664b70c",
}


def spec_check(cond_fn, key, what):
    """A check against SPEC[key] (or several keys): FAIL, saying so, while the spec has no value."""
    keys = key if isinstance(key, tuple) else (key,)
    missing = [k for k in keys if SPEC[k] is None]
    if missing:
        check(False, what + " (no value in spec section 8 yet: %s)" % ", ".join(missing))
    else:
        check(cond_fn(*[SPEC[k] for k in keys]), what)


def vectors():
    plain = b"qnet"
    spec_check(
        lambda v: ChaCha20Poly1305(b"\x07" * 32).encrypt(nonce(1), plain, b"").hex() == v,
        "aead chacha",
        "vector: ChaCha20-Poly1305 AEAD nonce layout and empty AAD",
    )
    aes = AESGCM(b"\x07" * 32).encrypt(nonce(1), plain, b"")
    spec_check(lambda v: aes.hex() == v, "aead aes", "vector: AES-256-GCM AEAD nonce layout and empty AAD")

    for cipher, key in ((CHACHA, "record chacha"), (AES_GCM, "record aes")):
        d = Direction(b"\x01" * 32, cipher)
        rec = d.seal(frame(DATA, 1, b"golden"))
        spec_check(
            lambda v: rec.hex() == v,
            key,
            "vector: first %s record (its record key label, length mask, nonce, frame layout)" % cipher,
        )
        o = Direction(b"\x01" * 32, cipher)
        buf = bytearray(rec + d.seal(frame(KEY_UPDATE, 0)))
        fr, updated = o.open_stream(buf)
        buf += d.seal(frame(DATA, 1, b"after", pad=5))
        fr2, _ = o.open_stream(buf)
        check(
            [parse_frame(f) for f in fr + fr2]
            == [(DATA, 1, b"golden"), (KEY_UPDATE, 0, b""), (DATA, 1, b"after")] and updated,
            "vector: %s key update and padding round-trip in this implementation" % cipher,
        )
    # The two ciphers' record keys differ (own labels): a ChaCha record does not open as AES-GCM.
    try:
        Direction(b"\x01" * 32, AES_GCM).open_stream(bytearray(Direction(b"\x01" * 32, CHACHA).seal(frame(DATA, 1, b"golden"))))
        check(False, "vector: a ChaCha20-Poly1305 record does not open under AES-256-GCM")
    except InvalidTag:
        check(True, "vector: a ChaCha20-Poly1305 record does not open under AES-256-GCM")
    # The 2^24-record limit of an AES-256-GCM key, with the counter moved near it.
    d, o = Direction(b"\x01" * 32, AES_GCM), Direction(b"\x01" * 32, AES_GCM)
    d.counter = o.counter = AES_GCM_RECORD_LIMIT - 1
    buf = bytearray(d.seal(frame(PING, 0, b"11111111")) + d.seal(frame(PING, 0, b"22222222")))
    fr, _ = o.open_stream(buf)
    fr2, _ = o.open_stream(buf)
    check(
        [parse_frame(f) for f in fr + fr2] == [(PING, 0, b"11111111"), (KEY_UPDATE, 0, b""), (PING, 0, b"22222222")]
        and d.counter == o.counter == 1,
        "vector: an AES-256-GCM sender ends a key with KEY_UPDATE as its record 2^24 + 1 (this implementation)",
    )
    check(
        frame(OPEN, 1, bytes([2]) + dest_v4("192.0.2.7", 443) + b"hi")
        == bytes([0x01, 0, 0, 0, 1, 0, 10, 2, 1, 192, 0, 2, 7, 0x01, 0xBB]) + b"hi",
        "vector: OPEN frame golden bytes match src/proto/frame.rs",
    )
    check(
        params(1 << 18, 1 << 24, OFFER_AES).hex() == "05000400000100000001"
        and parse_params(params(1 << 18, 1 << 24, 0x81)) == (1 << 18, 1 << 24, OFFER_AES)
        and record_cipher(params(1 << 18, 1 << 24, 0x81), params(1 << 18, 1 << 24, OFFER_AES)) == AES_GCM
        and record_cipher(params(1 << 18, 1 << 24, 0x80), params(1 << 18, 1 << 24, OFFER_AES)) == CHACHA
        and record_cipher(params(1 << 18, 1 << 24, OFFER_AES), params(1 << 18, 1 << 24, 0)) == CHACHA,
        "vector: 10-byte transport parameters, ciphers byte (unknown bits ignored) and the cipher rule",
    )

    # Spec section 8, "A whole handshake": both ends played here, from the spec's inputs.
    stamp = 1_700_000_000_000
    relay_priv = X25519PrivateKey.from_private_bytes(b"\x02" * 32)
    client = X25519PrivateKey.from_private_bytes(b"\x01" * 32)
    e = X25519PrivateKey.from_private_bytes(b"\x03" * 32)
    relay_e = X25519PrivateKey.from_private_bytes(b"\x07" * 32)
    # Both ephemeral keys carry a low-order point, which this script does not add: it
    # takes their representatives from the spec and only decodes them.
    e_rep = bytes.fromhex(SPEC["e rep"])
    relay_e_rep = bytes.fromhex(SPEC["relay e rep"])
    epub = decode(e_rep)
    check(
        epub.hex() == SPEC["e"] and epub != public_bytes(e),
        "vector: the client's representative decodes to the listed e (not the clean 0x03.. key)",
    )
    check(
        dh(e, decode(relay_e_rep)) == dh(relay_e, epub) == dh(e, public_bytes(relay_e)),
        "vector: ee agrees both ways with the decoded dirty keys (clamping cancels the low-order points)",
    )
    relay_pub = public_bytes(relay_priv)
    k, hint = admit_key(client, relay_pub)
    tag = admit_tag(k, epub, stamp)
    check(
        hint.hex() == SPEC["hint"] and tag.hex() == SPEC["tag"],
        "vector: admission hint and tag (k_c from the static-static X25519, tag over the decoded e)",
    )
    # The version-3 msg1 the silence check below sends, against that version's vector.
    check(
        old_msg1(3, client, relay_pub, stamp, e).hex()
        == "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22612932c4eb22713978d715a30d8e63ec4e9e793404f1810b955dc7e9aa5055c35bc03e43d0d74e5567dd",
        "vector: version-3 msg1 (Noise_XK, prologue qnet/3) as version 3's spec gave it",
    )
    # The version-4 msg1 the silence check below sends, against that version's vector
    # (version 4's spec, section 8: same inputs, prologue qnet/4).
    v4 = Initiator(client, relay_pub, None, b"qnet/4 Noise_XKpsk2_25519_ChaChaPoly_BLAKE2s ML-KEM-768")
    check(
        digest(v4.msg1(stamp, (e, e_rep), ML_KEM_768._keygen_internal(b"\x04" * 32, b"\x05" * 32), pad=5))
        == "7ef7e5fa5dea8765bcedbab7a1ad4f9bd98c2b59ea02968124f53c53afc9431c",
        "vector: version-4 msg1 (prologue qnet/4) as version 4's spec gave it",
    )
    kem = ML_KEM_768._keygen_internal(b"\x04" * 32, b"\x05" * 32)
    check(digest(kem[0]) == SPEC["ek digest"], "vector: ML-KEM-768 ek from KeyGen_internal(d, z)")
    both = params(1 << 18, 1 << 24, OFFER_AES)  # both ends: 262144, 16777216, ciphers 0x01
    ini = Initiator(client, relay_pub, both)
    res = Responder(relay_priv, public_bytes(client), both)
    out1 = ini.msg1(stamp, (e, e_rep), kem, pad=5)
    spec_check(
        lambda v: len(out1) == 1265 and out1[:32] == e_rep and digest(out1) == v,
        "msg1 digest",
        "vector: msg1 then pad1 (representative, prologue qnet/5, XKpsk2 MixKey(e), time, hint, tag, pad length, ek, keystream pad)",
    )
    got_stamp = res.read_msg1(reader(out1))
    check(got_stamp == stamp and res.ek == kem[0], "vector: the relay side reads msg1, its admission proof and pad1")
    flight = res.flight((relay_e, relay_e_rep), b"\x06" * 32, pad=3)
    check(digest(res.ct) == SPEC["ct digest"], "vector: ML-KEM-768 ct from Encaps_internal(ek, m)")
    check(res.psk.hex() == SPEC["psk"], "vector: psk = BLAKE2s-MAC(K, \"qnet/4 psk\" || ct)")
    spec_check(
        lambda first, v: len(flight) == 1088 + 60 + 3
        and flight[:32].hex() == first
        and flight[CT_LEN : CT_LEN + 32] == relay_e_rep
        and digest(flight) == v,
        ("flight first 32", "flight digest"),
        "vector: the relay's flight, masked ct then msg2 (representative, ee, psk, 10-byte params) then pad2",
    )
    relay_params = ini.read_flight(reader(flight))
    check(
        relay_params == both and parse_params(relay_params)[2] == OFFER_AES and record_cipher(both, relay_params) == AES_GCM,
        "vector: the client side unmasks ct, decapsulates and reads msg2 and pad2; both offer AES-256-GCM",
    )
    out3, k1, k2 = ini.msg3(pad=2)
    spec_check(
        lambda v: len(out3) == 76 + 2 and digest(out3) == v,
        "msg3 digest",
        "vector: msg3 then pad3 (s, se under the psk-mixed keys, 10-byte params)",
    )
    client_params, rk1, rk2 = res.read_msg3(reader(out3))
    check(
        client_params == both and (rk1, rk2) == (k1, k2),
        "vector: the relay side reads msg3 and pad3, same split",
    )
    spec_check(lambda v: ini.sym.h.hex() == v and res.sym.h == ini.sym.h, "handshake hash", "vector: handshake hash")
    spec_check(
        lambda v1, v2: k1.hex() == v1 and k2.hex() == v2,
        ("k1", "k2"),
        "vector: k1 (client -> relay) and k2 (relay -> client) from Split()",
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
    def __init__(self, addr, static_priv, relay_pub, stream_window=1 << 18, session_window=1 << 24, ciphers=OFFER_AES):
        self.sock = socket.create_connection(addr, timeout=10)
        self.hs = Initiator(static_priv, relay_pub, params(stream_window, session_window, ciphers))
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

    def handshake(self, pad=None, flip=False):
        """msg1 and pad1, the relay's flight, then msg3 and pad3 wait for the first record.
        `pad` is both pads' length, by default each drawn; `flip` flips the top two bits of
        msg1's representative after it is written."""
        self.msg1 = self.hs.msg1(pad=pad)
        if flip:
            self.msg1 = self.msg1[:31] + bytes([self.msg1[31] ^ 0xC0]) + self.msg1[32:]
        self.sock.sendall(self.msg1)
        self.relay_params = self.hs.read_flight(self.recv_exact)
        self.relay_windows = parse_params(self.relay_params)[:2]  # a broken rule raises here
        self.cipher = record_cipher(self.hs.params, self.relay_params)
        m3, self.k1, self.k2 = self.hs.msg3(pad=pad)
        self.tx = Direction(self.k1, self.cipher)
        self.rxd = Direction(self.k2, self.cipher)
        self.pending_out = m3  # msg3 goes out together with the first record(s)

    def send(self, *frames, flush=True):
        out = self.pending_out
        self.pending_out = b""
        for f in frames:
            out += self.tx.seal(f)
        self.sock.sendall(out)

    def send_key_update(self):
        self.send(frame(KEY_UPDATE, 0))  # Direction.seal switches keys after it

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

    def collect(self, sid, want):
        """Frames until `want` bytes of stream sid, a PONG and an OPEN_RESULT arrived:
        (the echoed bytes, the OPEN_RESULT payload, the PONG payload)."""
        got, result, pong = b"", None, None
        while len(got) < want or pong is None or result is None:
            t, s, p = self.next_frame()
            if t == OPEN_RESULT:
                result = p
            elif t == DATA and s == sid:
                got += p
            elif t == PONG:
                pong = p
        return got, result, pong

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


def hardware_aes():
    """Whether this CPU has what spec section 2 names for AES-256-GCM in hardware (x86-64:
    AES-NI and PCLMULQDQ; AArch64: AES and PMULL), from /proc/cpuinfo; None if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None
    flags = set()
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    machine = os.uname().machine
    if machine == "x86_64":
        return {"aes", "pclmulqdq"} <= flags
    if machine in ("aarch64", "arm64"):
        return {"aes", "pmull"} <= flags
    return None


def start_relay(relay_bin, tmp, name, key_path, clients, config):
    """A qnet-relay on 127.0.0.1 with `config` as its config file: (process, address)."""
    cfg = os.path.join(tmp, name + ".toml")
    with open(cfg, "w") as f:
        f.write(config)
    proc = subprocess.Popen(
        [relay_bin, "--listen", "127.0.0.1:0", "--key", key_path, "--clients", clients,
         "--exit-allow", "127.0.0.1/32", "--exit-allow", "[::1]/128", "--connect-timeout", "3"],
        stderr=subprocess.PIPE,
        env=dict(os.environ, QNET_CONFIG=cfg),
    )
    line = proc.stderr.readline().decode()
    if not line.startswith("qnet-relay listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError("relay (%s) did not start: %r" % (name, line + proc.stderr.read().decode()[:500]))
    host, port = line.split()[-1].rsplit(":", 1)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, (host, int(port))


def part(fn, *args):
    """Run one group of live checks; an exception is a FAIL line, and the next group runs."""
    try:
        fn(*args)
    except Exception as ex:  # noqa: BLE001 - every failure is reported, none stops the run
        check(False, "%s: stopped by %s" % (fn.__name__, repr(ex)))


def live(relay_bin):
    del relay_reps[:]  # the vectors' one is not the relay's
    tmp = tempfile.mkdtemp(prefix="qnet-interop-")
    relay_priv = X25519PrivateKey.generate()
    client_priv = X25519PrivateKey.generate()
    stranger = X25519PrivateKey.generate()
    relay_pub = public_bytes(relay_priv)
    key_path = os.path.join(tmp, "relay.key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(private_bytes(relay_priv)) + b"\n")
    os.close(fd)
    clients = os.path.join(tmp, "clients")
    with open(clients, "w") as f:
        f.write("# the interop client\n" + base64.b64encode(public_bytes(client_priv)).decode() + "\n")
    # Unauthenticated connections close after 0.3-0.7 s (spec section 2, "Failure"), so
    # the refusals below can wait for the close.
    drain = "[server]\ndrain_min_ms = 300\ndrain_max_ms = 700\n"
    procs = []

    def relay(name, config):
        proc, addr = start_relay(relay_bin, tmp, name, key_path, clients, config)
        procs.append(proc)
        return addr

    def main_relay():
        addr = relay("relay", drain)
        part(session, addr, relay_pub, client_priv)
        part(chacha_session, addr, relay_pub, client_priv)
        part(cipher_choice, addr, relay_pub, client_priv)
        part(handshakes, addr, relay_pub, client_priv)
        part(refusals, addr, relay_pub, stranger, client_priv)

    def chacha_only_relay():
        # A relay whose config turns AES-256-GCM off (spec section 2, transport parameters).
        chacha_relay(relay("relay-chacha", drain + '[session]\ncipher = "chacha20-poly1305"\n'), relay_pub, client_priv)

    try:
        part(main_relay)
        part(chacha_only_relay)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def session(addr, relay_pub, client_priv):
    """The whole live session, the client offering AES-256-GCM: the records use what the
    cipher rule picks from the relay's offer (AES-256-GCM where the relay offers it too)."""
    echo = Echo()
    c = Client(addr, client_priv, relay_pub, ciphers=OFFER_AES)
    c.handshake()
    check(
        len(c.relay_params) == PARAMS_LEN and c.relay_params[0] == VERSION and c.relay_params[9] & ~OFFER_AES == 0,
        "handshake: relay sends version-%d transport parameters (10 bytes, unknown cipher bits 0): %s"
        % (VERSION, c.relay_params.hex()),
    )
    relay_aes = bool(c.relay_params[9] & OFFER_AES)
    hw = hardware_aes()
    print(
        "note  the relay %s AES-256-GCM (ciphers byte 0x%02x); this CPU runs AES in hardware: %s; "
        "client offers 0x01, so records use %s"
        % ("offers" if relay_aes else "does not offer", c.relay_params[9], {True: "yes", False: "no", None: "unknown"}[hw], c.cipher)
    )
    if hw is not None:
        check(relay_aes == hw, "relay (default config) offers AES-256-GCM exactly when the CPU runs it in hardware")
    stream_window, session_window = c.relay_windows
    on = "[%s] " % c.cipher  # names the cipher in each check below

    # OPEN by IPv4 with first data, padding on the record, then DATA and a PING.
    sid = c.open(dest_v4("127.0.0.1", echo.port), b"first ")
    c.send(frame(DATA, sid, b"second", pad=300), frame(PADDING, 0, pad=1000), frame(PING, 0, b"12345678"))
    got, result, pong = c.collect(sid, 12)
    check(result == b"\x00", on + "OPEN by IPv4: OPEN_RESULT connected")
    check(got == b"first second", on + "OPEN first data and padded DATA echoed through the relay")
    check(pong == b"12345678", on + "PING answered by PONG with the same 8 bytes")

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
    check(bytes(received) == blob, on + "after KEY_UPDATE, %d bytes echoed with WINDOW_UPDATE credit both ways" % len(blob))

    # Half-close: our CLOSE reaches the echo server as EOF, it closes, the relay sends CLOSE.
    c.send(frame(CLOSE, sid))
    while True:
        t, s, p = c.next_frame()
        if s == sid and t == CLOSE:
            break
        if t == WINDOW_UPDATE:
            continue
        check(t == DATA, on + "only DATA or CLOSE on a half-closed stream (got type %d)" % t)
    check(True, on + "CLOSE answered by the destination's CLOSE (half-close both ways)")

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
    check(streams[sid] == b"by name" and results[sid] == b"\x00", on + "OPEN by hostname: resolved at the relay, echoed")
    if echo6:
        check(streams[sid6] == b"by v6", on + "OPEN by IPv6 echoed")

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
        check(seen[s] == code, on + what + " (got %d)" % seen[s])
    c.send(frame(RESET, sid, b"\x00"))
    c.send(frame(PING, 0, b"87654321"))
    while True:
        t, s, p = c.next_frame()
        if t == PONG:
            break
    check(p == b"87654321", on + "session alive after RESET")

    # A protocol violation (DATA for a stream never opened) ends the session without a reply.
    c.send(frame(DATA, 1001, b"x"))
    check(wait_quiet(c.sock, 2) == b"", on + "protocol violation: the relay closes without replying")


def ping(c, payload):
    """True when a PING with these 8 bytes is answered by its PONG (other frames skipped)."""
    c.send(frame(PING, 0, payload))
    while True:
        t, s, p = c.next_frame()
        if t == PONG:
            return p == payload


def sealed_with(c, cipher, f):
    """msg3 and pad3, then a first record holding frame `f` sealed with `cipher` under the
    session's k1, whatever the handshake chose."""
    c.sock.sendall(c.pending_out + Direction(c.k1, cipher).seal(f))
    c.pending_out = b""


def chacha_session(addr, relay_pub, client_priv):
    """A shorter session with the client offering ChaCha20-Poly1305 only (ciphers 0x00):
    ChaCha20-Poly1305 records both ways, whatever the relay offers; AES-256-GCM refused."""
    echo = Echo()
    c = Client(addr, client_priv, relay_pub, ciphers=0x00)
    c.handshake()
    check(c.cipher == CHACHA, "cipher rule: client offers ChaCha20-Poly1305 only, records use %s" % c.cipher)
    on = "[%s, client ciphers 0x00] " % c.cipher
    sid = c.open(dest_v4("127.0.0.1", echo.port), b"chacha ")
    c.send(frame(DATA, sid, b"records", pad=200), frame(PING, 0, b"chachaPi"))
    got, result, pong = c.collect(sid, 14)
    check(
        result == b"\x00" and got == b"chacha records" and pong == b"chachaPi",
        on + "OPEN with first data, padded DATA and PING: connected, echoed, PONG",
    )
    # KEY_UPDATE, then data within the relay's first stream window (no credit needed).
    c.send_key_update()
    blob = os.urandom(min(15000, c.relay_windows[0] - 14))
    for i in range(0, len(blob), 5000):
        c.send(frame(DATA, sid, blob[i : i + 5000]))
    c.send(frame(CLOSE, sid))
    received, closed = b"", False
    while not closed:
        t, s, p = c.next_frame()
        if t == DATA and s == sid:
            received += p
        elif t == CLOSE and s == sid:
            closed = True
    check(received == blob, on + "after KEY_UPDATE, %d bytes echoed, then CLOSE both ways" % len(blob))
    c.sock.close()

    # The same offer, a first record sealed with AES-256-GCM: the relay ends the session.
    c = Client(addr, client_priv, relay_pub, ciphers=0x00)
    c.handshake()
    sealed_with(c, AES_GCM, frame(PING, 0, b"aes-gcm!"))
    check(
        silent_until_close(c.sock, 3),
        "client offers ChaCha20-Poly1305 only, first record sealed with AES-256-GCM: the relay closes without replying",
    )


def cipher_choice(addr, relay_pub, client_priv):
    """A record under the cipher the rule did not pick is refused; unknown bits of the
    ciphers byte are accepted and ignored."""
    c = Client(addr, client_priv, relay_pub, ciphers=OFFER_AES)
    c.handshake()
    relay_aes = bool(c.relay_params[9] & OFFER_AES)
    if relay_aes:
        sealed_with(c, CHACHA, frame(PING, 0, b"chacha!!"))
        check(
            silent_until_close(c.sock, 3),
            "both offer AES-256-GCM, first record sealed with ChaCha20-Poly1305: the relay closes without replying",
        )
    else:
        print("note  the relay does not offer AES-256-GCM: the wrong-cipher case for AES is not run here")
        c.sock.close()

    # Bit 7 is no cipher: 0x81 is read as 0x01, 0x80 as 0x00.
    for ciphers in (0x81, 0x80):
        c = Client(addr, client_priv, relay_pub, ciphers=ciphers)
        c.handshake()
        expect = AES_GCM if ciphers & OFFER_AES and relay_aes else CHACHA
        check(
            c.cipher == expect and ping(c, b"bits%04x" % ciphers),
            "client ciphers byte 0x%02x (unknown bit 7 set): accepted, ignored; %s records answer a PING" % (ciphers, expect),
        )
        c.sock.close()


def chacha_relay(addr, relay_pub, client_priv):
    """A relay whose config says cipher = "chacha20-poly1305", the client offering AES-256-GCM."""
    c = Client(addr, client_priv, relay_pub, ciphers=OFFER_AES)
    c.handshake()
    check(
        c.relay_params[9] == 0x00,
        "relay with [session] cipher = \"chacha20-poly1305\": ciphers byte 0x%02x (no AES-256-GCM offer)" % c.relay_params[9],
    )
    check(
        c.cipher == CHACHA and ping(c, b"chachaRL"),
        "client offers AES-256-GCM, relay does not: %s records answer a PING" % c.cipher,
    )
    c.sock.close()
    c = Client(addr, client_priv, relay_pub, ciphers=OFFER_AES)
    c.handshake()
    sealed_with(c, AES_GCM, frame(PING, 0, b"aes-gcm!"))
    check(
        silent_until_close(c.sock, 3),
        "client offers AES-256-GCM, relay does not, first record sealed with AES-256-GCM: the relay closes without replying",
    )


def handshakes(addr, relay_pub, client_priv, count=40):
    """Handshakes with pads at both ends of their range, then drawn, and representatives
    with random top bits; then one whose msg1 has its representative's top bits flipped."""
    answered = 0
    for i in range(count):
        c = Client(addr, client_priv, relay_pub, ciphers=i % 2)  # both record ciphers, in turn
        c.handshake(pad=(0, MAX_PAD)[i] if i < 2 else None)
        c.send(frame(PING, 0, b"%08d" % i))
        answered += c.next_frame() == (PONG, 0, b"%08d" % i)
        c.sock.close()
    check(
        answered == count,
        "%d handshakes (pads 0, 511, then drawn; random representative top bits in msg1; client ciphers 0x00 and 0x01 in turn) each answer a PING" % count,
    )

    # The top two bits do not take part in decode: a fresh msg1 with both flipped stands
    # for the same key, so the relay answers it as it would the unflipped one.
    c = Client(addr, client_priv, relay_pub)
    c.handshake(flip=True)
    c.send(frame(PING, 0, b"flipped!"))
    written = c.msg1[:31] + bytes([c.msg1[31] ^ 0xC0])  # the representative as msg1() wrote it
    check(
        c.next_frame() == (PONG, 0, b"flipped!") and decode(c.msg1[:32]) == decode(written),
        "msg1 with its representative's top two bits flipped (fresh, not a replay): answered, same key",
    )
    c.sock.close()

    # Fixed top bits would mark every connection. Over n flights (the session's, the 40
    # above and the flipped one: n = 42) a given value of the four is missing with
    # probability (3/4)^n, so at most 4 (3/4)^42, about 1 in 44,000 runs, fails here by chance.
    bits = {top_bits(r) for r in relay_reps}
    check(
        bits == {0, 1, 2, 3},
        "the relay's msg2 representatives' top two bits take all four values (in %d handshakes)" % len(relay_reps),
    )


def refusals(addr, relay_pub, stranger, client_priv):
    # A key not on the allow-list: its msg1 proves nothing, so not even the relay's flight
    # comes back; the relay closes at its drain deadline without a byte.
    c = Client(addr, stranger, relay_pub)
    c.sock.sendall(c.hs.msg1())
    check(silent_until_close(c.sock), "client not on the allow-list: no flight, silence until the relay closes")

    # The allowed key's hint with a tag under another key: silence, as for a stranger.
    c = Client(addr, client_priv, relay_pub)
    c.sock.sendall(c.hs.msg1(proof=(os.urandom(32), admit_key(client_priv, relay_pub)[1])))
    check(silent_until_close(c.sock), "allowed key's hint with a wrong tag: silence until the relay closes")

    # msg1 proving the allowed key, msg3 presenting another: the flight comes, then nothing.
    c = Client(addr, stranger, relay_pub)
    c.sock.sendall(c.hs.msg1(proof=admit_key(client_priv, relay_pub)))
    relay_params = c.hs.read_flight(c.recv_exact)
    m3, k1, _ = c.hs.msg3()
    c.sock.sendall(m3 + Direction(k1, record_cipher(c.hs.params, relay_params)).seal(frame(PING, 0, b"abcdefgh")))
    check(wait_quiet(c.sock, 1.5) == b"", "msg3 with another key than msg1 proved: no byte after msg2")

    # msg3 whose transport parameters carry another version byte: a rule broken, no byte after msg2.
    c = Client(addr, client_priv, relay_pub)
    c.hs.params = bytes([4]) + c.hs.params[1:]
    c.handshake()
    c.send(frame(PING, 0, b"abcdefgh"))
    check(wait_quiet(c.sock, 1.5) == b"", "msg3 with version-4 transport parameters: no byte after msg2")

    # An allowed client's handshake, whose msg1 and pad1 are replayed below.
    c = Client(addr, client_priv, relay_pub)
    c.handshake()

    # The wrong relay key: msg1 fails at the relay, which answers nothing.
    wrong = Client(addr, client_priv, public_bytes(X25519PrivateKey.generate()))
    wrong.sock.sendall(wrong.hs.msg1())
    check(silent_until_close(wrong.sock), "wrong relay key: no reply bytes")

    # A replayed msg1 (the one c sent above, on a fresh connection): no reply, not even the flight.
    s = socket.create_connection(addr)
    s.sendall(c.msg1)
    check(silent_until_close(s), "replayed msg1: no reply bytes")

    # A msg1 stamped 10 minutes off the relay's clock (either way): no reply.
    for off, what in ((-600_000, "behind"), (600_000, "ahead")):
        stale = Client(addr, client_priv, relay_pub)
        stale.sock.sendall(stale.hs.msg1(now_ms() + off))
        check(silent_until_close(stale.sock), "msg1 stamped 10 min %s: no reply bytes" % what)

    # An encapsulation key that fails FIPS 203's modulus check (12-bit fields of 4095, not
    # below 3329) in an otherwise valid msg1: the relay cannot encapsulate, so no flight.
    c = Client(addr, client_priv, relay_pub)
    c.sock.sendall(c.hs.msg1(kem=(b"\xff" * EK_LEN, None)))
    check(silent_until_close(c.sock), "msg1 with an invalid ML-KEM ek: no reply bytes")

    # pad1 with one byte changed: the pad is checked against its keystream, so no flight.
    c = Client(addr, client_priv, relay_pub)
    first = bytearray(c.hs.msg1(pad=100))
    first[MSG1_LEN + 50] ^= 1
    c.sock.sendall(first)
    check(silent_until_close(c.sock), "msg1 whose pad1 has a changed byte: no reply bytes")

    # A pad length over 511, with that many keystream bytes after msg1: no flight.
    c = Client(addr, client_priv, relay_pub)
    c.sock.sendall(c.hs.msg1(pad=MAX_PAD + 1))
    check(silent_until_close(c.sock), "msg1 announcing a 512-byte pad1: no reply bytes")

    # The masked ciphertext with one bit flipped before the client reads it: decapsulation
    # yields another K (implicit rejection), so another psk, and msg2 fails to authenticate.
    c = Client(addr, client_priv, relay_pub)
    c.sock.sendall(c.hs.msg1())
    # Flip it as it arrives and put it back, so read_flight takes it from the stream as usual.
    head = bytearray(c.recv_exact(CT_LEN))
    head[500] ^= 1
    c.rx[:0] = head
    try:
        c.hs.read_flight(c.recv_exact)
        check(False, "tampered masked ct: msg2 still authenticated")
    except InvalidTag:
        check(True, "tampered masked ct: the client's msg2 decryption fails")

    # A version-4 client: its msg1 has a version-5 msg1's length but the prologue qnet/4,
    # so it fails check 1 and gets no reply.
    v4 = Initiator(client_priv, relay_pub, None, b"qnet/4 Noise_XKpsk2_25519_ChaChaPoly_BLAKE2s ML-KEM-768")
    s = socket.create_connection(addr)
    s.sendall(v4.msg1())
    check(silent_until_close(s), "version-4 msg1 (prologue qnet/4, same length): no reply bytes")

    # Clients of older versions: their prologue and msg1 payload, no reply.
    for version, length in ((3, 74), (2, 56), (1, 48)):
        m1 = old_msg1(version, client_priv, relay_pub)
        s = socket.create_connection(addr)
        s.sendall(m1)
        check(
            len(m1) == length and silent_until_close(s),
            "version-%d msg1 (%d bytes): no reply bytes" % (version, length),
        )

    # Random bytes: no reply.
    s = socket.create_connection(addr)
    s.sendall(os.urandom(500))
    check(silent_until_close(s), "random bytes: no reply bytes")

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
