# shellcheck shell=bash
# Section 12 of scripts/bench (sourced: it uses the helpers, peers and results there).
# Issue 16 at scale: $LATE_N flows through one `qnet forward` (one client engine, one
# session) to the echo server, each opened with a 1-byte echo (qbench hold), on a relay of
# its own whose stream cap is raised for them.
#
# First the performance profile (the config's default): each end's memory per idle flow,
# the forward's and the relay's VmRSS increase / N, beside a fresh ss-tunnel and
# ss-server at the same N. Then a forward with QNET_PROFILE=default: FRONT padding, every
# flow draws 20-100 padding departures upstream, Rayleigh-timed over its first seconds
# (docs/TIMING.md), so N flows schedule some 60 N departures on the one engine. The flows
# are held $LATE_SECS s after the last is open; the engine's lateness of those departures
# is then read from its status file (`qnet status --json`, in a runtime directory of this
# run): p50/p99 are the upper bounds of the histogram's buckets (50, 100, 200, 500 us,
# 1, 2, 5 ms), so "100" means at most 100 us. The forward's exit report on SIGTERM gives
# the whole histogram.

on late && step "$LATE_N flows through one qnet forward: memory per idle flow at each end, then the default profile's shaped-departure lateness (held ${LATE_SECS}s)"
LATE_D=$WORK/late
mkdir -p "$LATE_D/run"
chmod 700 "$LATE_D/run"
LATE_SS_N=$LATE_N LATE_FLOOR_P50='' LATE_FLOOR_P99='' LATE_FLOOR_IN100='' LATE_OPEN='' LATE_SP99='' LATE_SCOUNT='' LATE_SIN100='' LATE_P99='' LATE_P50='' LATE_MAX='' LATE_COUNT='' LATE_MEM_FWD='' LATE_MEM_RELAY='' LATE_MEM_SST='' LATE_MEM_SSS=''
if ! on late; then :; elif [ -z "$QB" ]; then
    skip "lateness and memory-at-scale rows" "a C compiler (gcc)"
else
    # Every flow costs the forward, the relay, the echo server and qbench an fd each.
    if [ "$(ulimit -n)" -lt $((LATE_N + 256)) ]; then
        LATE_N=$(($(ulimit -n) - 256))
        echo "   ulimit -n is $(ulimit -n): $LATE_N flows instead of ${BENCH_LATE_N:-10000}"
    fi
    printf '[server]\nhandshakes_per_sec = 100000\nhandshakes_per_sec_per_addr = 100000\n# all the flows are streams of one session: the default cap (1024) is one person'"'"'s\nstreams_per_session = %s\n' \
        $((LATE_N + 256)) > "$LATE_D/relay.toml"
    QNET_CONFIG="$LATE_D/relay.toml" "${S_BIN[cur]}/qnet-relay" --listen 127.0.0.1:0 --key "$WORK/relay.key" \
        --clients "$WORK/clients" --exit-allow 127.0.0.0/8 > /dev/null 2> "$LATE_D/relay.log" &
    LATE_RELAY_PID=$!
    PIDS+=("$LATE_RELAY_PID")
    relay=$(wait_line "$LATE_D/relay.log" 'listening on' | awk '{print $NF}')
    sed "s/^relay = .*/relay = \"$relay\"/" "${S_CFG[cur]}" > "$LATE_D/client.toml"
    late_forward() { # NAME [VAR=VAL...]: a forward to the echo server through that relay; sets LF_PORT and LF_PID
        local log=$LATE_D/fwd-$1.log
        shift
        env "$@" QNET_CONFIG="$LATE_D/client.toml" "${S_BIN[cur]}/qnet" forward --listen 127.0.0.1:0 --to "127.0.0.1:$ECHO" \
            > /dev/null 2> "$log" &
        LF_PID=$!
        PIDS+=("$LF_PID")
        LF_PORT=$(wait_line "$log" 'listening on' | grep -oE '127\.0\.0\.1:[0-9]+' | head -1 | cut -d: -f2)
    }
    late_forward perf
    note "qnet-relay $relay (streams_per_session $((LATE_N + 256))); qnet forward 127.0.0.1:$LF_PORT -> echo"
    HOLD_N=$LATE_N hold_run lateq "$LF_PORT" "$LF_PID $LATE_RELAY_PID"
    kill "$LF_PID" 2> /dev/null || true
    if [ -n "$SS" ]; then
        # A fresh pair, so memory freed by the earlier sections' flows does not hide any.
        p=$(free_port)
        ss-server -s 127.0.0.1 -p "$p" -k "$SS_PW" -m "$CIPHER" -n 65536 > "$LATE_D/ss-server.log" 2>&1 &
        l_sss=$!
        PIDS+=("$l_sss")
        wait_port "$p"
        l_port=$(free_port)
        ss-tunnel -s 127.0.0.1 -p "$p" -b 127.0.0.1 -l "$l_port" -L "127.0.0.1:$ECHO" \
            -k "$SS_PW" -m "$CIPHER" -n 65536 > "$LATE_D/ss-tunnel.log" 2>&1 &
        l_sst=$!
        PIDS+=("$l_sst")
        wait_port "$l_port"
        # ss-tunnel holds two fds a flow (client and server side): at most what the limit allows.
        LATE_SS_N=$(((($(ulimit -n) - 256) / 2) < LATE_N ? ($(ulimit -n) - 256) / 2 : LATE_N))
        [ "$LATE_SS_N" = "$LATE_N" ] || note "ss-tunnel needs two fds a flow: $LATE_SS_N flows through it (ulimit -n $(ulimit -n), which cannot be raised here)"
        HOLD_N=$LATE_SS_N hold_run latess "$l_port" "$l_sst $l_sss"
        kill "$l_sst" "$l_sss" 2> /dev/null || true
    fi
    lm() { if [ -s "$WORK/res/mem.$1" ]; then calc '%.2f' "$(cat "$WORK/res/mem.$1") / $2"; fi; } # KEY N
    LATE_MEM_FWD=$(lm lateq.d0 "$LATE_N") LATE_MEM_RELAY=$(lm lateq.d1 "$LATE_N")
    LATE_MEM_SST=$(lm latess.d0 "$LATE_SS_N") LATE_MEM_SSS=$(lm latess.d1 "$LATE_SS_N")
    printf '   %-40s %16s %16s\n' "per idle flow, KiB (VmRSS increase / N)" "client end" "server end"
    printf '   %-40s %16s %16s\n' "qnet forward + qnet-relay, $LATE_N flows" "${LATE_MEM_FWD:-n/a}" "${LATE_MEM_RELAY:-n/a}"
    [ -n "$SS" ] && printf '   %-40s %16s %16s\n' "ss-tunnel + ss-server, $LATE_SS_N flows" "${LATE_MEM_SST:-n/a}" "${LATE_MEM_SSS:-n/a}"

    # The default profile: the status file goes to this run's own runtime directory.
    late_forward default XDG_RUNTIME_DIR="$LATE_D/run" QNET_PROFILE=default
    LD_PID=$LF_PID
    note "qnet forward, QNET_PROFILE=default 127.0.0.1:$LF_PORT -> echo; status in $LATE_D/run/qnet"
    c0=$(cpu_ticks "$LD_PID") t0=$(date +%s%N)
    "$QB" hold 127.0.0.1 "$LF_PORT" "$LATE_N" > "$LATE_D/hold.out" 2> "$LATE_D/hold.err" < /dev/null &
    hp=$!
    PIDS+=("$hp")
    # Opening is bounded too: at most $LATE_OPEN_SECS s, then what is open is held.
    for _ in $(seq $((LATE_OPEN_SECS * 10))); do
        grep -q '^ready' "$LATE_D/hold.out" 2> /dev/null && break
        kill -0 "$hp" 2> /dev/null || break
        sleep 0.1
    done
    t1=$(date +%s%N)
    # The histogram once all are open: what follows is the steady state of N open flows.
    XDG_RUNTIME_DIR=$LATE_D/run "${S_BIN[cur]}/qnet" status --json > "$LATE_D/status0.json" 2> /dev/null || true
    if grep -q '^ready' "$LATE_D/hold.out"; then
        LATE_OPEN=$LATE_N
        note "$LATE_N flows open in $(calc '%.1f' "($t1 - $t0) / 1e9") s; held ${LATE_SECS}s"
    else
        echo "   WARNING: not all $LATE_N flows open after $(calc '%.1f' "($t1 - $t0) / 1e9") s: $(tail -n 2 "$LATE_D/hold.err" | tr '\n' ' ')"
    fi
    # The machine's own floor, under the same load: a bare timerfd's wakeups (qbench
    # timer: 20-500 us sleeps, timer slack 1 us as in the engines), run while the flows are held.
    "$QB" timer 20000 > "$LATE_D/timer.out" 2>&1 &
    tp=$!
    sleep "$LATE_SECS"
    wait "$tp" 2> /dev/null || true
    read -r _ LATE_FLOOR_P50 _ LATE_FLOOR_P99 _ _ _ _ _ LATE_FLOOR_IN100 < "$LATE_D/timer.out" || true
    ok "${LATE_FLOOR_P99:-}" && note "a bare timerfd meanwhile (the floor): wakeup late p50 $LATE_FLOOR_P50 us, p99 $LATE_FLOOR_P99 us; $LATE_FLOOR_IN100 % within 100 us"
    c1=$(cpu_ticks "$LD_PID") t2=$(date +%s%N)
    if XDG_RUNTIME_DIR=$LATE_D/run "${S_BIN[cur]}/qnet" status --json > "$LATE_D/status.json" 2> "$LATE_D/status.err" &&
        out=$(python3 -c 'import json,sys
for p in json.load(open(sys.argv[1])):
    if p["pid"] == int(sys.argv[2]):
        l = p["lateness"]
        print(p["streams_open"], l["count"], l["p50_us"], l["p99_us"], l["max_us"], p["profile"])' "$LATE_D/status.json" "$LD_PID") &&
        [ -n "$out" ]; then
        read -r l_open LATE_COUNT LATE_P50 LATE_P99 LATE_MAX l_prof <<< "$out"
        [ -n "$LATE_OPEN" ] || LATE_OPEN=$l_open
        note "status: profile $l_prof, $l_open streams open, $LATE_COUNT departures timed: late p50 <= $LATE_P50 us, p99 <= $LATE_P99 us, max $LATE_MAX us"
        [ "$LATE_COUNT" -gt 0 ] || { echo "   WARNING: no shaped departure was timed: the lateness row is empty"; LATE_P99=; }
        # The same percentiles of the departures after all were open (the difference of
        # the two readings' histograms; bucket bounds as in the status file).
        out=$(python3 -c 'import json,sys
def buckets(f):
    for p in json.load(open(f)):
        if p["pid"] == int(sys.argv[3]):
            return p["lateness"]["buckets"]
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
d = [y - x for x, y in zip(a, b)]
n, bounds = sum(d), [50, 100, 200, 500, 1000, 2000, 5000, 99999]
def pct(q):
    need, seen = -(-n * q // 100), 0
    for i, k in enumerate(d):
        seen += k
        if seen >= need:
            return bounds[i]
if n:
    print(n, pct(50), pct(99), round(100 * sum(d[:2]) / n, 2))' "$LATE_D/status0.json" "$LATE_D/status.json" "$LD_PID" 2> /dev/null) &&
            [ -n "$out" ] && read -r LATE_SCOUNT LATE_SP50 LATE_SP99 LATE_SIN100 <<< "$out" &&
            note "after all were open: $LATE_SCOUNT departures, late p50 <= $LATE_SP50 us, p99 <= $LATE_SP99 us (99999: over 5 ms); $LATE_SIN100 % within 100 us"
    else
        echo "FAILED: lateness: no status of pid $LD_PID in qnet status --json: $(tr '\n' ' ' < "$LATE_D/status.err")"
    fi
    note "forward CPU from the first open to the reading: $(calc '%.1f' "($c1 - $c0) / $CLK_TCK") s in $(calc '%.1f' "($t2 - $t0) / 1e9") s; VmRSS $(rss_of "$LD_PID") KiB"
    kill -TERM "$hp" 2> /dev/null || true
    wait "$hp" 2> /dev/null || true
    kill -TERM "$LD_PID" 2> /dev/null || true
    wait "$LD_PID" 2> /dev/null || true
    r=$(grep -m1 -oE 'shaped departures late by .*' "$LATE_D/fwd-default.log" || true)
    [ -n "$r" ] && note "the forward's exit report: $r"
    kill "$LATE_RELAY_PID" 2> /dev/null || true
fi
