#!/usr/bin/env python3
"""Failover under four fault kinds, measured from inside the client namespace.

Run by tests/relays/run as `ip netns exec qrc python3 failover.py CONFIG.json`; python3
stdlib only. It starts `qnet forward` itself (its stderr read in a thread, each line
stamped with time.monotonic()), keeps 4 worker threads opening short connections
through it (connect, "probe N\\n", read "<peer ip> probe N", close, 10-20 ms pause,
3 s timeout; the peer is the relay's address on the destination's side, so it tells
which relay carried the flow), and, TRIALS times per fault kind, breaks the relay that
is carrying the flows:

  kill9     SIGKILL the relay; restarted afterwards with the same command line
  stop      SIGSTOP; SIGCONT afterwards
  linkdown  the client's veth to that relay down; up afterwards
  loss      every packet from the client to that relay lost: tc netem loss 100% on the
            client's veth, or (a kernel without netem) an nftables drop at the veth's
            egress hook (after the stack: as silent as netem), or, without that, an
            nftables drop in the output hook (which the sender sees as EPERM)

T0 is taken right before the fault. Detection: the first "relay <addr> marked down"
line on the client's stderr after T0. Recovery: the end of the first connection that
started after T0 and got its answer through another relay. A trial without both within
10 s fails. The relay is then restored; the next trial starts once the client says the
relay "is back" (at most 5 s later, so each trial starts with three healthy relays),
plus 0.3 s. Since the client goes back to the most preferred healthy relay, that is
nearly always relay 1, and the flows fail over to relay 2.

A recovery near 3 s is a worker artifact, not a slow failover: a flow the relay had
answered just before it went silent is not re-opened elsewhere (its first bytes may
have reached the destination) but reset after 4 s of silence, so a worker holding one
waits for its 3 s timeout; if all four hold one, no connection starts meanwhile. Such
trials are printed with their failed connections.

Speed targets (detection <= 500 ms, recovery <= 1000 ms) are printed, never asserted;
the exit status is non-zero only for functional failures: a trial not detected or not
recovered within 10 s, a reply that is not "<one of the relays> probe N", or a setup
failure. Lines starting "PASS " or "FAIL " are counted by the run script.

Config (JSON): qnet, listen, to, env {..}, client_ns, trials, kinds [..], log (the
forwarder's stderr copy), pids_out (the relays' pids at the end are written there),
relays [{addr, via, ns, dev, pid, cmd [argv], log}]. QNET_RELAYS_VERBOSE=1 prints
every trial.
"""

import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

DETECT_TARGET_MS = 500
RECOVER_TARGET_MS = 1000
TRIAL_LIMIT = 10.0
BACK_LIMIT = 5.0
WORKERS = 4
VERBOSE = os.environ.get("QNET_RELAYS_VERBOSE", "0") not in ("", "0")

cfg = json.load(open(sys.argv[1]))
RELAYS = cfg["relays"]
VIA = {r["via"]: i for i, r in enumerate(RELAYS)}
NS = cfg["client_ns"]
START = time.monotonic()


def now():
    return time.monotonic()


def out(msg=""):
    print(msg, flush=True)


# ---- the forwarder and its stderr ----------------------------------------------------------

events = []  # (monotonic time, line)
events_lock = threading.Lock()


def read_stderr(pipe, copy):
    for raw in iter(pipe.readline, b""):
        t = now()
        line = raw.decode(errors="replace").rstrip("\n")
        with events_lock:
            events.append((t, line))
        copy.write(f"{t - START:9.3f} {line}\n")
        copy.flush()


def find_event(pattern, after):
    rx = re.compile(pattern)
    with events_lock:
        for t, line in events:
            if t >= after:
                m = rx.search(line)
                if m:
                    return t, m
    return None


env = dict(os.environ)
env.update(cfg["env"])
fwd = subprocess.Popen(
    [cfg["qnet"], "forward", "--listen", cfg["listen"], "--to", cfg["to"]],
    env=env,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
)
copy = open(cfg["log"], "a")
threading.Thread(target=read_stderr, args=(fwd.stderr, copy), daemon=True).start()

# ---- the workers ---------------------------------------------------------------------------

records = []  # dicts: start, end, ok, relay (index or None), err
records_lock = threading.Lock()
unexpected = []  # replies from nowhere we know, or with the wrong text
stop_workers = threading.Event()
counter = iter(range(1, 1 << 62))
counter_lock = threading.Lock()
HOST, PORT = cfg["listen"].rsplit(":", 1)


def one_connection():
    with counter_lock:
        n = next(counter)
    rec = {"start": now(), "ok": False, "relay": None, "err": ""}
    try:
        with socket.create_connection((HOST, int(PORT)), timeout=3) as s:
            s.settimeout(3)
            s.sendall(f"probe {n}\n".encode())
            buf = b""
            while not buf.endswith(b"\n"):
                data = s.recv(4096)
                if not data:
                    break
                buf += data
        reply = buf.decode(errors="replace").strip()
        if not reply:
            rec["err"] = "EOF"
        else:
            ip, _, text = reply.partition(" ")
            if ip in VIA and text == f"probe {n}":
                rec["ok"] = True
                rec["relay"] = VIA[ip]
            else:
                rec["err"] = f"unexpected reply {reply!r}"
                unexpected.append(reply)
    except socket.timeout:
        rec["err"] = "timeout"
    except OSError as e:
        rec["err"] = e.__class__.__name__
    rec["end"] = now()
    with records_lock:
        records.append(rec)


def worker():
    while not stop_workers.is_set():
        one_connection()
        # 10-20 ms, at random: workers in lockstep would all be caught by one fault.
        time.sleep(random.uniform(0.010, 0.020))


def latest_success(since):
    """The successful connection that started last, if it started at or after `since`."""
    with records_lock:
        best = None
        for r in reversed(records[-400:]):
            if r["ok"] and r["start"] >= since and (best is None or r["start"] > best["start"]):
                best = r
        return best


def recovered(t0, bad):
    """The first connection started after t0 that was answered through another relay."""
    with records_lock:
        ends = [r["end"] for r in records if r["start"] > t0 and r["ok"] and r["relay"] != bad]
    return min(ends) if ends else None


# ---- faults --------------------------------------------------------------------------------

restarted = {}  # relay index -> Popen of the relay as restarted here
loss_method = None


def sh(*argv):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)


def nft(script):
    return subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)


def inject(kind, i):
    global loss_method
    r = RELAYS[i]
    if kind == "kill9":
        os.kill(r["pid"], signal.SIGKILL)
    elif kind == "stop":
        os.kill(r["pid"], signal.SIGSTOP)
    elif kind == "linkdown":
        sh("ip", "-n", NS, "link", "set", "dev", r["dev"], "down")
    elif kind == "loss":
        ip = r["addr"].rsplit(":", 1)[0]
        if loss_method in (None, "netem"):
            if sh("tc", "-n", NS, "qdisc", "add", "dev", r["dev"], "root", "netem", "loss", "100%").returncode == 0:
                loss_method = "netem"
                return
        if loss_method in (None, "egress"):
            rule = f'type filter hook egress device "{r["dev"]}" priority 0; policy accept;'
            if nft(f"table netdev qrloss {{\n chain eg {{\n {rule}\n ip daddr {ip} drop\n }}\n}}\n").returncode == 0:
                loss_method = "egress"
                return
        rule = "type filter hook output priority 0; policy accept;"
        res = nft(f"table ip qrloss {{\n chain out {{\n {rule}\n ip daddr {ip} drop\n }}\n}}\n")
        if res.returncode != 0:
            raise RuntimeError(f"cannot drop packets: neither tc netem nor nftables works ({res.stderr.strip()})")
        loss_method = "output"


def restore(kind, i):
    r = RELAYS[i]
    if kind == "kill9":
        old = restarted.pop(i, None)
        if old is not None:
            old.wait()
        size = os.path.getsize(r["log"])
        log = open(r["log"], "ab")
        p = subprocess.Popen(r["cmd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        restarted[i] = p
        r["pid"] = p.pid
        deadline = now() + 5
        while now() < deadline:
            with open(r["log"], "rb") as f:
                f.seek(size)
                if b"qnet-relay listening on" in f.read():
                    return
            time.sleep(0.02)
        raise RuntimeError(f"relay {r['addr']} did not restart (see {r['log']})")
    elif kind == "stop":
        os.kill(r["pid"], signal.SIGCONT)
    elif kind == "linkdown":
        sh("ip", "-n", NS, "link", "set", "dev", r["dev"], "up")
    elif kind == "loss":
        if loss_method == "netem":
            sh("tc", "-n", NS, "qdisc", "del", "dev", r["dev"], "root")
        elif loss_method == "egress":
            nft("delete table netdev qrloss")
        else:
            nft("delete table ip qrloss")


# ---- trials --------------------------------------------------------------------------------

results = {}  # kind -> list of trial dicts
windows = []  # (relay index, T0, restore time): when a relay was broken on purpose


def trial(kind, n):
    # The relay carrying flows now: the last connection to succeed, started within 1 s.
    deadline = now() + 5
    cur = None
    while now() < deadline:
        cur = latest_success(now() - 1.0)
        if cur:
            break
        time.sleep(0.05)
    if cur is None:
        return {"ok": False, "why": "no connection had succeeded for a second before the trial"}
    i = cur["relay"]
    addr = re.escape(RELAYS[i]["addr"])
    res = {"relay": i, "detect": None, "recover": None, "back": None, "reason": None}
    t0 = res["t0"] = now()
    inject(kind, i)
    try:
        end = t0 + TRIAL_LIMIT
        while now() < end:
            if res["detect"] is None:
                ev = find_event(rf"relay {addr} marked down: (.*)", t0)
                if ev:
                    res["detect"] = (ev[0] - t0) * 1000
                    res["reason"] = re.sub(r"\d+", "N", ev[1].group(1))
            if res["recover"] is None:
                t = recovered(t0, i)
                if t is not None:
                    res["recover"] = (t - t0) * 1000
            if res["detect"] is not None and res["recover"] is not None:
                break
            time.sleep(0.01)
    finally:
        t_restore = now()
        windows.append((i, t0, t_restore))
        restore(kind, i)
    res["t_restore"] = t_restore
    res["ok"] = res["detect"] is not None and res["recover"] is not None
    if not res["ok"]:
        res["why"] = "no 'marked down' line" if res["detect"] is None else ""
        if res["recover"] is None:
            res["why"] += ("; " if res["why"] else "") + "no connection answered through another relay"
        res["why"] += f" within {TRIAL_LIMIT:.0f} s"
    # Wait for the relay to be back, so the next trial starts with every relay healthy.
    ev = None
    deadline = now() + BACK_LIMIT
    while now() < deadline:
        ev = find_event(rf"relay {addr} is back", t_restore)
        if ev:
            res["back"] = (ev[0] - t_restore) * 1000
            break
        time.sleep(0.02)
    time.sleep(0.3)
    return res


def stats(xs):
    if not xs:
        return "      -/     -/     -"
    return f"{min(xs):6.0f}/{statistics.median(xs):6.0f}/{max(xs):6.0f}"


def main():
    t_start = now()
    deadline = now() + 10
    while now() < deadline and not find_event(r"qnet forward listening on", 0):
        if fwd.poll() is not None:
            break
        time.sleep(0.02)
    if not find_event(r"qnet forward listening on", 0):
        out(f"FAIL failover setup: qnet forward did not start (see {cfg['log']})")
        return 1
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    deadline = now() + 10
    while now() < deadline and not latest_success(0):
        time.sleep(0.05)
    if not latest_success(0):
        out(f"FAIL failover setup: no connection through qnet forward succeeded within 10 s (see {cfg['log']})")
        return 1
    first = latest_success(0)
    out(f"   the first connection went through relay {RELAYS[first['relay']]['addr']}")

    trials = int(cfg["trials"])
    faulted = set()
    try:
        for kind in cfg["kinds"]:
            t_kind = now()
            rs = []
            for n in range(trials):
                if fwd.poll() is not None:
                    raise RuntimeError(f"qnet forward exited ({fwd.returncode})")
                r = trial(kind, n)
                rs.append(r)
                if "relay" in r:
                    faulted.add(r["relay"])
                if not r["ok"]:
                    where = RELAYS[r["relay"]]["addr"] if "relay" in r else "?"
                    out(f"   {kind} trial {n + 1}: relay {where}: {r['why']}")
            results[kind] = rs
            extra = f" (loss by {loss_method})" if kind == "loss" else ""
            out(f"   {kind}: {trials} trials in {now() - t_kind:.1f} s{extra}")
    except Exception as e:  # a broken harness is a failure, after the relays are restored
        out(f"FAIL failover: the harness stopped: {e}")
        return 1
    finally:
        stop_workers.set()
        for t in threads:
            t.join(timeout=5)
        fwd.send_signal(signal.SIGTERM)
        try:
            fwd.wait(timeout=5)
        except subprocess.TimeoutExpired:
            fwd.kill()
        # Nothing stays broken: every relay runs and every link is up.
        for i, r in enumerate(RELAYS):
            try:
                os.kill(r["pid"], signal.SIGCONT)
            except OSError:
                pass
            sh("ip", "-n", NS, "link", "set", "dev", r["dev"], "up")
        with open(cfg["pids_out"], "w") as f:
            f.write(" ".join(str(r["pid"]) for r in RELAYS) + "\n")

    # Per trial: the connections in flight at T0 or started before the restore that got
    # no answer (counted now: a stuck one ends up to 3 s after its trial).
    with records_lock:
        failed_recs = [r for r in records if not r["ok"]]
    for kind, rs in results.items():
        for n, r in enumerate(rs):
            if "t0" not in r:
                continue
            bad = [c for c in failed_recs if c["end"] > r["t0"] and c["start"] < r["t_restore"]]
            r["failed_conns"] = len(bad)
            slow = r["ok"] and (r["detect"] > DETECT_TARGET_MS or r["recover"] > RECOVER_TARGET_MS)
            if r["ok"] and (slow or VERBOSE):
                detail = ", ".join(
                    f"{c['err']} (started {(c['start'] - r['t0']) * 1000:+.0f} ms, ended {(c['end'] - r['t0']) * 1000:+.0f} ms)"
                    for c in bad[:4]
                )
                out(
                    f"   {kind} trial {n + 1}: relay {RELAYS[r['relay']]['addr']}: detection {r['detect']:.0f} ms, "
                    f"recovery {r['recover']:.0f} ms{' (over a target)' if slow else ''}; T0 at {r['t0'] - START:.3f} s; "
                    f"{len(bad)} connections failed{': ' + detail if detail else ''}"
                )

    # "marked down" lines for a relay while it was not broken on purpose: false alarms.
    with events_lock:
        downs = [(t, line) for t, line in events if " marked down: " in line]
    false_alarms = []
    for t, line in downs:
        m = re.search(r"relay (\S+) marked down", line)
        i = next((k for k, r in enumerate(RELAYS) if m and r["addr"] == m.group(1)), None)
        if not any(w[0] == i and w[1] <= t <= w[2] + 0.5 for w in windows):
            false_alarms.append(f"{t - START:.3f} {line}")

    # ---- report ----
    out("")
    out(f"failover: {WORKERS} worker threads, {trials} trials per fault kind; targets: detection <= {DETECT_TARGET_MS} ms, recovery <= {RECOVER_TARGET_MS} ms (printed, not asserted)")
    out(f"{'kind':9} {'trials':>6} {'ok':>3}  {'detection ms min/med/max':>24}  {'recovery ms min/med/max':>24}  {'det<=500':>8} {'rec<=1000':>9}  {'failed conns':>12}  {'back after restore ms (median)':>30}")
    all_ok = True
    for kind, rs in results.items():
        ok = [r for r in rs if r["ok"]]
        det = [r["detect"] for r in rs if r.get("detect") is not None]
        rec = [r["recover"] for r in rs if r.get("recover") is not None]
        back = [r["back"] for r in rs if r.get("back") is not None]
        det_in = sum(1 for x in det if x <= DETECT_TARGET_MS)
        rec_in = sum(1 for x in rec if x <= RECOVER_TARGET_MS)
        fc = sum(r.get("failed_conns", 0) for r in rs)
        back_s = f"{statistics.median(back):.0f} ({len(back)}/{len(rs)} back)" if back else f"- (0/{len(rs)} back)"
        out(f"{kind:9} {len(rs):6} {len(ok):3}  {stats(det):>24}  {stats(rec):>24}  {det_in:4}/{len(rs):<3} {rec_in:5}/{len(rs):<3}  {fc:12}  {back_s:>30}")
    out("")
    for kind, rs in results.items():
        reasons = {}
        for r in rs:
            if r.get("reason"):
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        relays = {}
        for r in rs:
            if "relay" in r:
                a = RELAYS[r["relay"]]["addr"]
                relays[a] = relays.get(a, 0) + 1
        out(f"   {kind}: why marked down: " + "; ".join(f"{k!r} x{v}" for k, v in reasons.items()) + "; relays broken: " + ", ".join(f"{k} x{v}" for k, v in sorted(relays.items())))
    with records_lock:
        total = len(records)
        failed = sum(1 for r in records if not r["ok"])
        kinds_of_failure = {}
        for r in records:
            if not r["ok"]:
                kinds_of_failure[r["err"]] = kinds_of_failure.get(r["err"], 0) + 1
    out(f"   connections: {total} in all, {failed} failed ({', '.join(f'{k} {v}' for k, v in sorted(kinds_of_failure.items())) or 'none'})")
    out(f"   'marked down' lines: {len(downs)} for {len(windows)} faults; {len(false_alarms)} for a relay that was not broken then")
    for line in false_alarms[:10]:
        out(f"      {line}")
    out(f"   elapsed: {now() - t_start:.1f} s")
    out("")

    for kind, rs in results.items():
        bad = [r for r in rs if not r["ok"]]
        name = f"failover {kind}: every trial detected and recovered through another relay within {TRIAL_LIMIT:.0f} s"
        if bad:
            all_ok = False
            out(f"FAIL {name}: {len(bad)} of {len(rs)} did not")
        else:
            out(f"PASS {name} ({len(rs)} trials)")
    if unexpected:
        all_ok = False
        out(f"FAIL failover: every reply came from a relay and matched its probe: {len(unexpected)} did not, e.g. {unexpected[0]!r}")
    else:
        out(f"PASS failover: every reply came from a relay and matched its probe ({total - failed} replies)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
