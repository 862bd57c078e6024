#!/usr/bin/env python3
"""Helper of scripts/eval-timing-real: the replayed destination and users, the pcap
parser and the report. Standard library only.

  real.py server  --addr IP --port P --flows FLOWS.csv --epoch NS --out DIR
  real.py user    --user U --port P --flows FLOWS.csv --epoch NS --out DIR
  real.py analyze --dir DIR            (pcaps + logs -> DIR/traces/*.csv, DIR/metrics.json)
  real.py report  --work WORK --profiles a,b,c

FLOWS.csv is `eval_timing --emit-flows`: flow,user,kind,dir,time_ns,bytes with `up` =
client writes (time at the client) and `down` = destination packets (time at the exit),
both relative to the flow set's t = 0, which is EPOCH (CLOCK_REALTIME ns) here. The
replay is open loop like the simulation: each side writes on its own schedule.

Every write is logged with its scheduled time, the time of the write call and the
stream offset after it; every read with its time and the offset after it. The first
up write starts with a 6-byte header `F0007\\n` naming the flow (counted in the offsets).
"""

import argparse
import csv
import json
import os
import re
import select
import socket
import struct
import sys
import threading
import time
from collections import defaultdict

HDR = 6


def load_flows(path):
    flows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            fl = flows.setdefault(int(r["flow"]), {"user": int(r["user"]), "kind": r["kind"], "up": [], "down": []})
            fl[r["dir"]].append((int(r["time_ns"]), int(r["bytes"])))
    for fl in flows.values():
        fl["up"].sort()
        fl["down"].sort()
        fl["start"] = min([t for t, _ in fl["up"]] + [t for t, _ in fl["down"]])
        fl["end"] = max([t for t, _ in fl["up"]] + [t for t, _ in fl["down"]])
    return flows


def sleep_until(ns):
    while True:
        d = ns - time.time_ns()
        if d <= 0:
            return
        time.sleep(min(d / 1e9, 0.5))


def writer(sock, events, epoch, log, header=b""):
    """Writes `events` (time_ns, bytes) on schedule; due events go out in one write."""
    off = 0
    i = 0
    n = len(events)
    first = True
    while i < n:
        sleep_until(epoch + events[i][0])
        now = time.time_ns() - epoch
        j = i
        size = 0
        while j < n and events[j][0] <= now:
            size += events[j][1]
            j += 1
        sched = events[i][0]
        data = b"a" * size
        if first and header:
            data = header + data
            first = False
        t = time.time_ns()
        sock.sendall(data)
        off += len(data)
        log.append(("w", epoch + sched, t, off))
        i = j
    return off


def watchdog(sock, deadline):
    """Unblocks a write stuck past the deadline by shutting the socket down."""

    def fire():
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    t = threading.Timer(max(0.0, (deadline - time.time_ns()) / 1e9), fire)
    t.daemon = True
    t.start()


def dump(path, side, logs):
    with open(path, "w") as f:
        f.write("side,flow,kind,t_sched,t_ns,offset\n")
        for fl, log in sorted(logs.items()):
            for k, ts, t, off in log:
                f.write(f"{side},{fl},{k},{ts},{t},{off}\n")


# ---------------------------------------------------------------- destination


def cmd_server(a):
    flows = load_flows(a.flows)
    last = max(fl["end"] for fl in flows.values())
    deadline = a.epoch + last + int(a.grace * 1e9)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.addr, a.port))
    ls.listen(128)
    ls.settimeout(0.5)
    print(f"server listening on {a.addr}:{a.port}", flush=True)
    logs = {}
    conns = []
    threads = []

    def serve(c, peer):
        c.settimeout(10)
        watchdog(c, deadline)
        hdr = b""
        try:
            while len(hdr) < HDR:
                b = c.recv(HDR - len(hdr))
                if not b:
                    return
                hdr += b
        except OSError:
            return
        c.settimeout(None)
        t = time.time_ns()
        fl = int(hdr[1:5])
        conns.append((fl, peer[1]))
        log = [("r", t, t, HDR)]
        logs[fl] = log
        f = flows[fl]
        up_total = HDR + sum(n for _, n in f["up"])
        wlog, rlog = [], []
        rt = threading.Thread(target=reader_from, args=(c, HDR, up_total, rlog, deadline))
        rt.start()
        try:
            writer(c, f["down"], a.epoch, wlog)
        except OSError as e:
            print(f"server: flow {fl}: write: {e}", file=sys.stderr, flush=True)
        rt.join()
        log.extend(wlog)
        log.extend(rlog)
        try:
            c.close()
        except OSError:
            pass

    while time.time_ns() < deadline:
        try:
            c, peer = ls.accept()
        except socket.timeout:
            if len(conns) == len(flows) and all(not t.is_alive() for t in threads):
                break
            continue
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        th = threading.Thread(target=serve, args=(c, peer), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(max(0.1, (deadline - time.time_ns()) / 1e9))
    dump(os.path.join(a.out, "server.csv"), "server", logs)
    with open(os.path.join(a.out, "server-conns.csv"), "w") as f:
        f.write("flow,peer_port\n")
        for fl, port in conns:
            f.write(f"{fl},{port}\n")
    print(f"server: {len(conns)} of {len(flows)} flows connected", flush=True)


def reader_from(sock, start, expect, log, deadline, done=None):
    """Reads until EOF (or the deadline); offsets continue from `start`; sets `done`
    once `expect` bytes are in."""
    got = start
    while time.time_ns() < deadline:
        try:
            r, _, _ = select.select([sock], [], [], 0.5)
            if not r:
                continue
            b = sock.recv(262144)
        except (OSError, ValueError):
            break
        t = time.time_ns()
        if not b:
            break
        got += len(b)
        log.append(("r", t, t, got))
        if done is not None and got >= expect:
            done.set()
    if done is not None:
        done.set()
    return got


# ---------------------------------------------------------------- users


def cmd_user(a):
    flows = {k: v for k, v in load_flows(a.flows).items() if v["user"] == a.user}
    logs = {}
    threads = []

    def run(fl, f):
        sleep_until(a.epoch + f["start"])
        deadline = a.epoch + f["end"] + int(a.grace * 1e9)
        try:
            c = socket.create_connection(("127.0.0.1", a.port), timeout=10)
        except OSError as e:
            print(f"user {a.user}: flow {fl}: connect: {e}", file=sys.stderr, flush=True)
            return
        c.settimeout(None)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        watchdog(c, deadline)
        down_total = sum(n for _, n in f["down"])
        wlog, rlog = [], []
        done = threading.Event()
        if down_total == 0:
            done.set()
        rt = threading.Thread(target=reader_from, args=(c, 0, down_total, rlog, deadline, done))
        rt.start()
        try:
            writer(c, f["up"], a.epoch, wlog, header=b"F%04d\n" % fl)
            # Half-close only once the whole download is in: the end of the flow.
            done.wait(max(0.0, (deadline - time.time_ns()) / 1e9))
            c.shutdown(socket.SHUT_WR)
        except OSError as e:
            print(f"user {a.user}: flow {fl}: write: {e}", file=sys.stderr, flush=True)
        rt.join()
        c.close()
        logs[fl] = wlog + rlog
        got = rlog[-1][3] if rlog else 0
        if got < down_total:
            print(f"user {a.user}: flow {fl}: got {got} of {down_total} download bytes", file=sys.stderr, flush=True)

    for fl, f in flows.items():
        th = threading.Thread(target=run, args=(fl, f))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    dump(os.path.join(a.out, f"user-{a.user}.csv"), "user", logs)


# ---------------------------------------------------------------- pcap


def read_pcap(path):
    """Yields (time_ns, src_ip, sport, dst_ip, dport, payload_len) of IPv4/TCP packets."""
    with open(path, "rb") as f:
        gh = f.read(24)
        if len(gh) < 24:
            return
        magic = gh[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            e = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            e = ">"
        else:
            raise SystemExit(f"{path}: not a pcap file")
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack(e + "I", gh[20:24])[0] & 0xFFFF
        l2 = {1: 14, 113: 16, 276: 20, 0: 4, 101: 0, 228: 0}.get(linktype)
        if l2 is None:
            raise SystemExit(f"{path}: link type {linktype} not handled")
        rh = struct.Struct(e + "IIII")
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, _orig = rh.unpack(h)
            d = f.read(incl)
            t = sec * 1_000_000_000 + (frac if nano else frac * 1000)
            ip = d[l2:]
            if linktype == 1 and d[12:14] != b"\x08\x00":
                continue
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            if len(tcp) < 20:
                continue
            sport, dport = struct.unpack(">HH", tcp[:4])
            doff = (tcp[12] >> 4) * 4
            yield t, socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport, total - ihl - doff


def pct(v, q):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * q))]


def latencies(wlog, rlog):
    """Per write: time until the reader had every byte of it, minus the write call."""
    rt = [x[2] for x in rlog]
    ro = [x[3] for x in rlog]
    out = []
    lost = 0
    import bisect

    for _k, _ts, t, off in wlog:
        i = bisect.bisect_left(ro, off)
        if i == len(ro):
            lost += 1
            continue
        out.append(rt[i] - t)
    return out, lost


def cmd_analyze(a):
    d = a.dir
    tdir = a.traces_out
    flows = load_flows(os.path.join(d, "flows.csv"))
    epoch = int(open(os.path.join(d, "epoch")).read())
    # Entry connections: client port -> user, from `ss -tnp` snapshots and the forwards' pids.
    pid_user = {}
    with open(os.path.join(d, "pids.csv")) as f:
        for r in csv.DictReader(f):
            pid_user[int(r["pid"])] = int(r["user"])
    port_user = {}
    ss_re = re.compile(r":(\d+)\s+\S+:%d\b.*pid=(\d+)" % a.relay_port)
    for line in open(os.path.join(d, "ss.txt")):
        m = ss_re.search(line)
        if m and int(m.group(2)) in pid_user:
            port_user[int(m.group(1))] = pid_user[int(m.group(2))]
    port_flow = {}
    with open(os.path.join(d, "server-conns.csv")) as f:
        for r in csv.DictReader(f):
            port_flow[int(r["peer_port"])] = int(r["flow"])

    os.makedirs(tdir, exist_ok=True)
    unmapped = defaultdict(int)
    def write_trace(pcap, csv_name, header, port, key_of, side):
        """One observer's packets with payload as CSV rows: (rows, [up bytes, down bytes])."""
        rows, nbytes = 0, [0, 0]
        with open(os.path.join(tdir, csv_name), "w") as out:
            out.write(header)
            for t, _s, sp, _d, dp, n in read_pcap(os.path.join(d, pcap)):
                if n <= 0:
                    continue
                if dp == port:
                    peer, dr = sp, "up"
                elif sp == port:
                    peer, dr = dp, "down"
                else:
                    continue
                k = key_of.get(peer)
                if k is None:
                    unmapped[(side, peer)] += n
                    continue
                out.write(f"{k},{t},{n},{dr}\n")
                rows += 1
                nbytes[dr == "down"] += n
        return rows, nbytes

    n_entry, entry_bytes = write_trace(
        "entry.pcap", "entry.csv", "user,time_ns,bytes,direction\n", a.relay_port, port_user, "entry"
    )
    n_exit, exit_bytes = write_trace(
        "exit.pcap", "exit.csv", "flow,time_ns,bytes,direction\n", a.server_port, port_flow, "exit"
    )
    with open(os.path.join(tdir, "flows.csv"), "w") as out:
        out.write("flow,user\n")
        for fl, f in sorted(flows.items()):
            out.write(f"{fl},{f['user']}\n")

    # Latency per write: user write -> server read (up), server write -> user read (down).
    logs = {"user": defaultdict(list), "server": defaultdict(list)}
    for name in os.listdir(d):
        if name.startswith("user-") and name.endswith(".csv") or name == "server.csv":
            with open(os.path.join(d, name)) as f:
                for r in csv.DictReader(f):
                    logs[r["side"]][int(r["flow"])].append((r["kind"], int(r["t_sched"]), int(r["t_ns"]), int(r["offset"])))
    lat = {"up": [], "down": []}
    behind = []
    lost = 0
    incomplete = []
    fct = []
    late_end = []
    for fl, f in sorted(flows.items()):
        ul = logs["user"].get(fl, [])
        sl = logs["server"].get(fl, [])
        uw = [x for x in ul if x[0] == "w"]
        ur = [x for x in ul if x[0] == "r"]
        sw = [x for x in sl if x[0] == "w"]
        sr = [x for x in sl if x[0] == "r"]
        v, l1 = latencies(uw, sr)
        lat["up"] += v
        v, l2 = latencies(sw, ur)
        lat["down"] += v
        lost += l1 + l2
        behind += [(t - ts) for _k, ts, t, _o in sw + uw]
        want_down = sum(n for _, n in f["down"])
        want_up = HDR + sum(n for _, n in f["up"])
        got_down = ur[-1][3] if ur else 0
        got_up = sr[-1][3] if sr else 0
        if got_down < want_down or got_up < want_up:
            incomplete.append(f"flow {fl} ({f['kind']}): up {got_up}/{want_up} down {got_down}/{want_down}")
        last = max([x[2] for x in ur] + [x[2] for x in sr] + [epoch + f["start"]])
        fct.append((last - epoch - f["start"]) / 1e6)
        late_end.append(((last - epoch - f["end"]) / 1e6, fl, f["kind"]))
    both = lat["up"] + lat["down"]
    ms = lambda v, q: round(pct(v, q) / 1e6, 2)  # noqa: E731
    m = {
        "entry_packets": n_entry,
        "exit_packets": n_exit,
        "entry_bytes": entry_bytes,
        "exit_bytes": exit_bytes,
        "overhead": (sum(entry_bytes) / max(1, sum(exit_bytes))) - 1,
        "overhead_up": entry_bytes[0] / max(1, exit_bytes[0]) - 1,
        "overhead_down": entry_bytes[1] / max(1, exit_bytes[1]) - 1,
        "lat_p50_ms": ms(both, 0.5),
        "lat_p99_ms": ms(both, 0.99),
        "lat_up_p50_ms": ms(lat["up"], 0.5),
        "lat_up_p99_ms": ms(lat["up"], 0.99),
        "lat_down_p50_ms": ms(lat["down"], 0.5),
        "lat_down_p99_ms": ms(lat["down"], 0.99),
        "writes": len(both),
        "writes_unmatched": lost,
        "writes_behind_schedule_p99_ms": ms(behind, 0.99),
        "fct_median_ms": round(pct(fct, 0.5), 1),
        # Per flow: last byte delivered minus the schedule's last event (what shaping adds
        # to completion); the worst flow named.
        "end_delay_median_ms": round(pct([x[0] for x in late_end], 0.5), 1),
        "end_delay_max": "%.0f ms (flow %d, %s)" % max(late_end) if late_end else "",
        "incomplete": incomplete,
        "unmapped_bytes": {f"{k[0]}:{k[1]}": v for k, v in unmapped.items()},
        "users_mapped": len(set(port_user.values())),
        "flows_mapped": len(set(port_flow.values())),
    }
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump(m, f, indent=1)
    print(
        f"analyze {d}: {n_entry} entry / {n_exit} exit packets, {m['users_mapped']} users and "
        f"{m['flows_mapped']} flows mapped, {len(both)} writes timed ({lost} never fully arrived)"
    )
    for s in incomplete:
        print(f"  incomplete: {s}")
    if unmapped:
        print(f"  unmapped connections (bytes): {m['unmapped_bytes']}")


# ---------------------------------------------------------------- report

LATE_RE = re.compile(r"late by (.*?) max=(\d+)us; (\d+) shaped streams failed closed")


def lateness(path_list):
    """Sums the engines' lateness histograms (`<=50us:N ... >5000us:N max=Xus`)."""
    tot = None
    mx = 0
    failed = 0
    n = 0
    for p in path_list:
        try:
            text = open(p).read()
        except OSError:
            continue
        for m in LATE_RE.finditer(text):
            parts = m.group(1).split()
            counts = [int(x.split(":")[1]) for x in parts]
            labels = [x.split(":")[0] for x in parts]
            tot = counts if tot is None else [a + b for a, b in zip(tot, counts)]
            mx = max(mx, int(m.group(2)))
            failed += int(m.group(3))
            n += 1
    if tot is None:
        return None
    total = sum(tot)
    s = " ".join(f"{lb}:{c}" for lb, c in zip(labels, tot))
    over1 = sum(c for lb, c in zip(labels, tot) if lb in (">5000us", "<=2000us", "<=5000us"))
    return f"{s} max={mx}us ({n} engine(s), {total} departures, {100 * over1 / max(1, total):.2f} % later than 1 ms; {failed} streams failed closed)"


def read_summary(path):
    rows = {}
    if not os.path.exists(path):
        return rows
    for line in open(path):
        f = line.strip().split(",")
        if len(f) < 13:
            continue
        rows[f[1]] = {
            "users": int(f[2]),
            "seeds": int(f[3]),
            "corr": f[4],
            "chance": float(f[5]),
            "acc": float(f[6]),
            "acc_sd": float(f[7]),
            "auc": float(f[8]),
            "auc_sd": float(f[9]),
            "over": float(f[10]),
            "p50": f[11],
            "p99": f[12],
        }
    return rows


def cmd_report(a):
    w = a.work
    profiles = a.profiles.split(",")
    real = read_summary(os.path.join(w, "summary-real.csv"))
    sim1 = read_summary(os.path.join(w, "summary-sim1.csv"))
    simn = read_summary(os.path.join(w, "summary-simn.csv"))
    print()
    print("| profile | real: overhead | real: latency p50 / p99 (ms) | real: top-1 (n, chance) | real: AUC | "
          "sim, same traffic: overhead | sim: added latency p50 / p99 (ms) | sim: top-1 | sim: AUC | "
          "sim, 5 seeds: top-1 | sim, 5 seeds: AUC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in profiles:
        try:
            m = json.load(open(os.path.join(w, p, "metrics.json")))
        except OSError:
            m = None
        r = real.get(p)
        s1 = sim1.get(f"profile:{p}")
        sn = simn.get(f"profile:{p}")
        cells = [p]
        if m and r:
            cells += [
                f"{100 * m['overhead']:+.1f} %",
                f"{m['lat_p50_ms']:.2f} / {m['lat_p99_ms']:.2f}",
                f"{r['acc']:.3f} ({r['users']}, {r['chance']:.2f}) {r['corr']}",
                f"{r['auc']:.3f}",
            ]
        else:
            cells += ["failed"] * 4
        if s1:
            cells += [
                f"{100 * s1['over']:+.1f} %",
                f"{float(s1['p50']):.2f} / {float(s1['p99']):.2f}",
                f"{s1['acc']:.3f} {s1['corr']}",
                f"{s1['auc']:.3f}",
            ]
        else:
            cells += ["-"] * 4
        if sn:
            cells += [f"{sn['acc']:.3f} ± {sn['acc_sd']:.3f}", f"{sn['auc']:.3f} ± {sn['auc_sd']:.3f}"]
        else:
            cells += ["-"] * 2
        print("| " + " | ".join(cells) + " |")
    print()
    print("real: overhead = entry TCP payload bytes (client<->relay, both directions, incl. handshake)")
    print("  / exit TCP payload bytes (relay<->destination) - 1; latency = per app write, write call ->")
    print("  last byte read by the far end (up: user->destination, down: destination->user), pooled;")
    print("  top-1/AUC = the harness's best correlator on the recorded traces (eval_timing --traces).")
    print("sim: the harness on the replayed traffic (seed 1000, same users/flows), overhead = wire /")
    print("  payload - 1, added latency = scheduler wait per DATA frame (no network, no TCP).")
    print()
    for p in profiles:
        pd = os.path.join(w, p)
        try:
            m = json.load(open(os.path.join(pd, "metrics.json")))
        except OSError:
            print(f"{p}: no metrics")
            continue
        print(f"{p}: overhead up {100 * m['overhead_up']:+.1f} %, down {100 * m['overhead_down']:+.1f} %; "
              f"latency up p50 {m['lat_up_p50_ms']} p99 {m['lat_up_p99_ms']} ms, down p50 {m['lat_down_p50_ms']} "
              f"p99 {m['lat_down_p99_ms']} ms; {m['writes']} writes; writes behind schedule p99 "
              f"{m['writes_behind_schedule_p99_ms']} ms; flow end after its last scheduled event: median "
              f"{m['end_delay_median_ms']} ms, max {m['end_delay_max']}")
        if m["incomplete"]:
            print(f"  incomplete flows: {'; '.join(m['incomplete'])}")
        fw = [os.path.join(pd, x) for x in sorted(os.listdir(pd)) if x.startswith("fwd-") and x.endswith(".log")]
        lf = lateness(fw)
        lr = lateness([os.path.join(pd, "relay.log")])
        print(f"  qnet forward (summed over users): {lf or 'no lateness line (no shaped departures)'}")
        print(f"  qnet-relay: {lr or 'no lateness line (no shaped departures)'}")
        drops = os.path.join(pd, "tcpdump-drops.txt")
        if os.path.exists(drops):
            print(f"  tcpdump: {open(drops).read().strip()}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--addr", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--flows", required=True)
    s.add_argument("--epoch", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--grace", type=float, default=48.0)
    u = sub.add_parser("user")
    u.add_argument("--user", type=int, required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--flows", required=True)
    u.add_argument("--epoch", type=int, required=True)
    u.add_argument("--out", required=True)
    u.add_argument("--grace", type=float, default=45.0)
    an = sub.add_parser("analyze")
    an.add_argument("--dir", required=True)
    an.add_argument("--traces-out", required=True)
    an.add_argument("--relay-port", type=int, default=7000)
    an.add_argument("--server-port", type=int, default=9000)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--profiles", required=True)
    a = ap.parse_args()
    {"server": cmd_server, "user": cmd_user, "analyze": cmd_analyze, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
