#!/usr/bin/env python3
"""Python cases of tests/matrix/run, run preloaded in the client namespace.

Every check prints "ok <what>" or "FAIL <what>: <why>"; the exit status is 1 after any
failure. The servers exist only behind the relay (see run)."""

import asyncio
import ipaddress
import os
import socket
import ssl
import sys
import time
import urllib.request

NAME4 = "web.qnet.test"
NAME6 = "web6.qnet.test"
ECHO4 = "10.78.0.1"
ECHO6 = "fd78::1"
FAKE4 = ipaddress.ip_network("240.0.0.0/4")
FAKE6 = ipaddress.ip_network("100::/64")

failed = False


def ok(msg):
    print("ok", msg, flush=True)


def fail(msg):
    global failed
    failed = True
    print("FAIL", msg, flush=True)


def check(cond, msg):
    (ok if cond else fail)(msg)


def is_fake(addr):
    ip = ipaddress.ip_address(addr.split("%")[0])
    return ip in (FAKE4 if ip.version == 4 else FAKE6)


def message(tag):
    return f"qnet-matrix {tag} pid={os.getpid()} t={time.monotonic_ns()}\n".encode()


def echo_on(sock, tag):
    msg = message(tag)
    sock.sendall(msg)
    back = b""
    while len(back) < len(msg):
        chunk = sock.recv(65536)
        if not chunk:
            break
        back += chunk
    return back == msg, f"sent {len(msg)} bytes, got {len(back)} back"


def case_urllib(token, cafile):
    for url in (f"http://{NAME4}/token.txt", f"http://{ECHO4}/token.txt", f"http://[{ECHO6}]/token.txt"):
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode().strip()
            check(body == token, f"urllib {url} -> {body[:40]!r}")
        except OSError as e:
            fail(f"urllib {url}: {e!r}")
    ctx = ssl.create_default_context(cafile=cafile)
    url = f"https://{NAME4}/token.txt"
    try:
        body = urllib.request.urlopen(url, timeout=10, context=ctx).read().decode().strip()
        check(body == token, f"urllib {url} (certificate verified) -> {body[:40]!r}")
    except OSError as e:
        fail(f"urllib {url}: {e!r}")


def case_create_connection():
    for host in (NAME4, ECHO4, ECHO6, NAME6):
        try:
            with socket.create_connection((host, 7), timeout=10) as s:
                good, why = echo_on(s, "create_connection")
                peer = s.getpeername()
                check(good, f"create_connection(({host!r}, 7)) echo, peer {peer[0]}: {why}")
        except OSError as e:
            fail(f"create_connection(({host!r}, 7)): {e!r}")
    # sendfile/makefile paths on a tunneled socket
    try:
        with socket.create_connection((NAME4, 7), timeout=10) as s:
            f = s.makefile("rwb")
            msg = message("makefile")
            f.write(msg)
            f.flush()
            back = f.readline()
            check(back == msg, "makefile readline echo")
    except OSError as e:
        fail(f"makefile: {e!r}")


async def _echo_async(host, tag):
    r, w = await asyncio.wait_for(asyncio.open_connection(host, 7), 10)
    msg = message(tag)
    w.write(msg)
    await w.drain()
    back = await asyncio.wait_for(r.readexactly(len(msg)), 10)
    peer = w.get_extra_info("peername")
    w.close()
    await w.wait_closed()
    return back == msg, peer


async def _async_main():
    for host in (NAME4, ECHO4, ECHO6):
        try:
            good, peer = await _echo_async(host, "asyncio")
            check(good, f"asyncio open_connection({host!r}, 7) echo (peer {peer})")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            fail(f"asyncio open_connection({host!r}, 7): {e!r}")
    res = await asyncio.gather(*(_echo_async(NAME4, f"gather{i}") for i in range(30)), return_exceptions=True)
    good = sum(1 for r in res if not isinstance(r, BaseException) and r[0])
    errs = [repr(r) for r in res if isinstance(r, BaseException)][:3]
    check(good == 30, f"30 concurrent asyncio connections: {good} echoed {errs}")
    # a refused port reports ConnectionRefusedError through the event loop
    try:
        await asyncio.wait_for(asyncio.open_connection(ECHO4, 1), 10)
        fail("asyncio connect to a closed port succeeded")
    except ConnectionRefusedError:
        ok("asyncio connect to a closed port -> ConnectionRefusedError")
    except (OSError, asyncio.TimeoutError) as e:
        fail(f"asyncio connect to a closed port -> {e!r} (want ConnectionRefusedError)")


def case_asyncio():
    loop = asyncio.new_event_loop()
    sel = getattr(loop, "_selector", None)
    ok(f"event loop selector {type(sel).__name__}")
    loop.run_until_complete(_async_main())
    loop.close()


def case_gethostbyname_ex():
    try:
        name, aliases, addrs = socket.gethostbyname_ex(NAME4)
    except OSError as e:
        fail(f"gethostbyname_ex({NAME4!r}): {e!r}")
        return
    check(addrs and all(is_fake(a) for a in addrs), f"gethostbyname_ex -> {name!r} {aliases} {addrs} (fake addresses)")
    if addrs:
        try:
            with socket.create_connection((addrs[0], 7), timeout=10) as s:
                good, why = echo_on(s, "gethostbyname_ex")
                check(good, f"connect to {addrs[0]} (the fake address) echo: {why}")
        except OSError as e:
            fail(f"connect to {addrs[0]}: {e!r}")
        try:
            host = socket.gethostbyaddr(addrs[0])[0]
            check(host == NAME4, f"gethostbyaddr({addrs[0]}) -> {host!r}")
        except OSError as e:
            fail(f"gethostbyaddr({addrs[0]}): {e!r}")
    a = socket.gethostbyname(NAME4)
    check(is_fake(a) and (not addrs or a == addrs[0]), f"gethostbyname -> {a}")
    infos = socket.getaddrinfo(NAME6, 7, socket.AF_INET6, socket.SOCK_STREAM)
    check(infos and is_fake(infos[0][4][0]), f"getaddrinfo({NAME6!r}, AF_INET6) -> {infos[0][4] if infos else None}")
    infos = socket.getaddrinfo(NAME4, 7)  # no hints at all
    check(infos and all(is_fake(i[4][0]) for i in infos), f"getaddrinfo({NAME4!r}) without hints -> {sorted({i[4][0] for i in infos})}")


def case_probe_fails(max_blocking="15", app_timeout=""):
    """The connect must fail with an errno (relay down, bad config), never hang or succeed.
    A plain blocking connect (no resolver involved) must give up within max_blocking seconds.
    With app_timeout, the non-blocking connects use that timeout and its expiry is an
    acceptable failure (the relay may stay silent longer; the app decides)."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect((ECHO4, 7))  # blocking; a numeric address skips getaddrinfo
        fail(f"blocking connect to {ECHO4}:7 succeeded")
    except OSError as e:
        took = time.monotonic() - t0
        check(e.errno is not None and took <= float(max_blocking),
              f"blocking connect to {ECHO4}:7 -> {e!r} after {took:.1f}s (limit {max_blocking}s)")
    finally:
        s.close()
    for host in (ECHO4, NAME4):
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, 7), timeout=float(app_timeout or 15)) as s:
                good, why = echo_on(s, "should-fail")
                fail(f"create_connection(({host!r}, 7)) connected (echo {good})")
        except socket.gaierror as e:
            ok(f"create_connection(({host!r}, 7)) -> resolver error {e!r}")
        except socket.timeout:
            check(bool(app_timeout), f"create_connection(({host!r}, 7)) timed out after {time.monotonic() - t0:.1f}s (the app's timeout)")
        except OSError as e:
            check(e.errno is not None, f"create_connection(({host!r}, 7)) -> {e!r} after {time.monotonic() - t0:.1f}s")


def case_system_popen(token):
    """unsetenv("LD_PRELOAD"), then clearenv(): system() and popen() start /bin/sh through
    glibc's internal posix_spawn, which no exec hook sees, and the shell and its curl
    ran untunneled. Both must keep the library (the leak counter sees a direct curl)."""
    import ctypes
    libc = ctypes.CDLL(None)  # the preloaded definitions first, as a C program gets them
    libc.popen.restype = ctypes.c_void_p
    libc.popen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.pclose.argtypes = [ctypes.c_void_p]
    libc.fileno.argtypes = [ctypes.c_void_p]
    libc.getenv.restype = ctypes.c_char_p
    config = os.environ["QNET_CONFIG"].encode()
    curl = "curl -sS --max-time 10 http://web.qnet.test/"
    for how in ("unsetenv", "clearenv"):
        if how == "unsetenv":
            libc.unsetenv(b"LD_PRELOAD")
        else:
            libc.clearenv()
            libc.setenv(b"PATH", b"/usr/local/bin:/usr/bin:/bin", 1)
            libc.setenv(b"QNET_CONFIG", config, 1)
        check(libc.getenv(b"LD_PRELOAD") is None, f"{how}: LD_PRELOAD gone from the program's own environment")
        out = f"/tmp/qnet-system-{os.getpid()}"
        st = libc.system(f"{curl}f3.txt >{out}; echo \"$LD_PRELOAD\" >>{out}".encode())
        with open(out) as f:
            got = f.read().split("\n")
        os.unlink(out)
        check(st == 0 and got[0] == f"{token}-3" and "libqnet" in got[1],
              f"{how}: system(curl) -> status {st}, body {got[0]!r}, shell's LD_PRELOAD {got[1]!r}")
        fp = libc.popen(f"{curl}f4.txt".encode(), b"r")
        body = b""
        if fp:
            while True:
                b = os.read(libc.fileno(fp), 4096)
                if not b:
                    break
                body += b
        st = libc.pclose(fp) if fp else -1
        check(st == 0 and body.decode().strip() == f"{token}-4", f"{how}: popen(curl) -> status {st}, body {body!r}")


def case_fexecve(token, suid):
    """fexecve and execveat (a dirfd and a name, and AT_EMPTY_PATH) of curl with an
    environment lacking LD_PRELOAD stay tunneled; of a setuid copy they are refused
    (EPERM) and it never runs. Each runs in a forked child; its stdout is read here."""
    import ctypes
    import shutil
    libc = ctypes.CDLL(None, use_errno=True)  # the preloaded execveat, as C gets it
    curl = shutil.which("curl")
    bare = {"PATH": os.environ["PATH"], "QNET_CONFIG": os.environ["QNET_CONFIG"]}

    def carr(items):
        return (ctypes.c_char_p * (len(items) + 1))(*[i.encode() for i in items], None)

    def execveat(dirfd, path, argv, env, flags):
        envs = [f"{k}={v}" for k, v in env.items()]
        libc.execveat(dirfd, path.encode(), carr(argv), carr(envs), flags)
        raise OSError(ctypes.get_errno(), "execveat")

    def child(fn):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.dup2(w, 1)
            try:
                fn()
            except OSError as e:
                print("errno", e.errno, flush=True)
            os._exit(3)
        os.close(w)
        out = b""
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            out += b
        os.close(r)
        return out.decode(errors="replace").strip(), os.waitpid(pid, 0)[1]

    def args(n):
        return ["curl", "-sS", "--max-time", "10", f"http://web.qnet.test/f{n}.txt"]

    def fd_of(path, flags=os.O_RDONLY):
        return os.open(path, flags)

    fd = fd_of(curl)
    out, st = child(lambda: os.execve(fd, args(5), bare))  # Python calls fexecve
    check(out == f"{token}-5" and st == 0, f"fexecve(curl) without LD_PRELOAD -> {out!r}, status {st}")
    d = fd_of(os.path.dirname(curl), os.O_PATH | os.O_DIRECTORY)
    out, st = child(lambda: execveat(d, "curl", args(6), bare, 0))
    check(out == f"{token}-6" and st == 0, f"execveat(dirfd, 'curl') without LD_PRELOAD -> {out!r}, status {st}")
    out, st = child(lambda: execveat(fd, "", args(8), bare, 0x1000))
    check(out == f"{token}-8" and st == 0, f"execveat(fd, '', AT_EMPTY_PATH) without LD_PRELOAD -> {out!r}, status {st}")
    sfd = fd_of(suid)
    out, st = child(lambda: os.execve(sfd, args(1), dict(os.environ)))
    check(out == "errno 1", f"fexecve(setuid copy) -> {out!r} (want EPERM, nothing run)")
    sd = fd_of(os.path.dirname(suid), os.O_PATH | os.O_DIRECTORY)
    out, st = child(lambda: execveat(sd, os.path.basename(suid), args(1), dict(os.environ), 0))
    check(out == "errno 1", f"execveat(dirfd, setuid copy) -> {out!r} (want EPERM, nothing run)")
    out, st = child(lambda: execveat(sfd, "", args(1), dict(os.environ), 0x1000))
    check(out == "errno 1", f"execveat(setuid fd, '', AT_EMPTY_PATH) -> {out!r} (want EPERM, nothing run)")


def main():
    which = sys.argv[1]
    fn = globals().get("case_" + which)
    if fn is None:
        print("unknown case", which, file=sys.stderr)
        return 2
    fn(*sys.argv[2:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
