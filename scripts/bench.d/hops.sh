# shellcheck shell=bash
# Section 10 of scripts/bench (sourced: it uses the helpers, peers and results there).
# Routes (issue 14): `qnet forward` through two relays against one, and against the
# nearest peer, ss-tunnel chained twice (ss-tunnel -> ss-server -> ss-tunnel -> ss-server);
# then, as root, the failover figures of tests/relays/run.
#
# Relay A listens on 127.0.0.2 and extends to relay B on 127.0.0.3, which exits to
# 127.0.0.0/8; the client reaches A from 127.0.0.1. Distinct loopback addresses, since a
# relay never extends straight back to the address a session came from.

fmt1() { if ok "${1:-}"; then calc '%.1f' "$1"; else echo "n/a"; fi; }
fmt2() { if ok "${1:-}"; then calc '%.2f' "$1"; else echo "n/a"; fi; }

step "routes: qnet forward through two relays against one, and ss-tunnel chained twice ($CONN_ROUNDS rounds)"
HOPS_D=$WORK/hops
mkdir -p "$HOPS_D"
hops_relay() { # NAME LISTEN [ARGS...]: starts a relay, sets HOP_ADDR to its address
    local name=$1 listen=$2
    shift 2
    (umask 077 && "${S_BIN[cur]}/qnet" keygen > "$HOPS_D/$name.key")
    # Not in $(...): the relay would hold the substitution's pipe open for ever.
    QNET_CONFIG="$WORK/relay.toml" "${S_BIN[cur]}/qnet-relay" --listen "$listen" --key "$HOPS_D/$name.key" \
        --clients "$WORK/clients" "$@" > /dev/null 2> "$HOPS_D/$name.log" &
    PIDS+=($!)
    HOP_ADDR=$(wait_line "$HOPS_D/$name.log" 'listening on' | awk '{print $NF}')
}
hops_forward() { # TARGET_PORT: starts a two-hop forward, sets HOP_PORT to its local port
    local log=$HOPS_D/fwd-$1.log
    QNET_CONFIG="$WORK/empty.toml" QNET_KEY="$WORK/client.key" QNET_HOPS="$HOPS" \
        "${S_BIN[cur]}/qnet" forward --listen 127.0.0.1:0 --to "127.0.0.1:$1" > /dev/null 2> "$log" &
    PIDS+=($!)
    HOP_PORT=$(wait_line "$log" 'listening on' | grep -oE '127\.0\.0\.1:[0-9]+' | head -1 | cut -d: -f2)
}
hops_relay b 127.0.0.3:0 --exit-allow 127.0.0.0/8 --routes
HOP_B=$HOP_ADDR@$("${S_BIN[cur]}/qnet" pubkey < "$HOPS_D/b.key")
hops_relay a 127.0.0.2:0 --extend-to "$HOP_B"
HOP_A=$HOP_ADDR@$("${S_BIN[cur]}/qnet" pubkey < "$HOPS_D/a.key")
HOPS="$HOP_A,$HOP_B"
note "relay A ${HOP_A%@*} extends to relay B ${HOP_B%@*}"
H2_ECHO=
H2_IPERF=
if [ -n "${ECHO:-}" ]; then
    hops_forward "$ECHO"
    H2_ECHO=$HOP_PORT
    note "qnet forward, 2 hops 127.0.0.1:$H2_ECHO -> echo"
fi
if [ -n "${IPERF:-}" ]; then
    hops_forward "$IPERF"
    H2_IPERF=$HOP_PORT
    note "qnet forward, 2 hops 127.0.0.1:$H2_IPERF -> iperf3"
fi

SS2_ECHO=
SS2_IPERF=
if [ -n "${SS:-}" ]; then
    SS2_PORT=$(free_port)
    ss-server -s 127.0.0.1 -p "$SS2_PORT" -k "$SS_PW" -m "$CIPHER" -n 65536 > "$WORK/ss-server2.log" 2>&1 &
    SS2_PID=$!
    PIDS+=("$SS2_PID")
    wait_port "$SS2_PORT"
    ss_chain() { # TARGET_PORT: sets SS_CHAIN to the first tunnel's port (tunnel 1 -> server 1 -> tunnel 2 -> server 2 -> target)
        local inner
        inner=$(free_port)
        ss-tunnel -s 127.0.0.1 -p "$SS2_PORT" -b 127.0.0.1 -l "$inner" -L "127.0.0.1:$1" \
            -k "$SS_PW" -m "$CIPHER" -n 65536 > "$WORK/ss-chain-in-$1.log" 2>&1 &
        PIDS+=($!)
        wait_port "$inner"
        SS_CHAIN=$(free_port)
        ss-tunnel -s 127.0.0.1 -p "$SS_PORT" -b 127.0.0.1 -l "$SS_CHAIN" -L "127.0.0.1:$inner" \
            -k "$SS_PW" -m "$CIPHER" -n 65536 > "$WORK/ss-chain-out-$1.log" 2>&1 &
        PIDS+=($!)
        wait_port "$SS_CHAIN"
    }
    if [ -n "${ECHO:-}" ]; then ss_chain "$ECHO"; SS2_ECHO=$SS_CHAIN; fi
    if [ -n "${IPERF:-}" ]; then ss_chain "$IPERF"; SS2_IPERF=$SS_CHAIN; fi
    note "ss-tunnel chained twice: through ss-server :$SS_PORT, then ss-server :$SS2_PORT"
fi

for r in $(seq "$CONN_ROUNDS"); do
    if [ -n "${QB:-}" ]; then
        conn_run hop1 "${S_FWD_ECHO[cur]}"
        [ -n "${H2_ECHO:-}" ] && conn_run hop2 "$H2_ECHO"
        [ -n "${SST_ECHO:-}" ] && conn_run ss1 "$SST_ECHO"
        [ -n "${SS2_ECHO:-}" ] && conn_run ss2 "$SS2_ECHO"
    fi
    if [ -n "${IPERF:-}" ]; then
        bulk_run hop1 "${S_FWD_IPERF[cur]}" "${S_FWD_IPERF_PID[cur]} ${S_RELAY_PID[cur]}"
        [ -n "${H2_IPERF:-}" ] && bulk_run hop2 "$H2_IPERF" ""
        [ -n "${SST_IPERF:-}" ] && bulk_run ss1 "$SST_IPERF" ""
        [ -n "${SS2_IPERF:-}" ] && bulk_run ss2 "$SS2_IPERF" ""
    fi
    echo "   round $r done"
done
printf '   %-34s %10s %10s %8s\n' path "conn us" "p90 us" Gbit/s
for k in hop1:"qnet forward, 1 relay" hop2:"qnet forward, 2 relays (A -> B)" ss1:"ss-tunnel" ss2:"ss-tunnel chained twice"; do
    key=${k%%:*}
    c=$(res "conn.$key") g=$(res "bulk.$key")
    { ok "$c" || ok "$g"; } || continue
    printf '   %-34s %10s %10s %8s\n' "${k#*:}" "$(fmt1 "$c")" "$(fmt1 "$(res "connp90.$key")")" "$(fmt2 "$g")"
done
HOP_C2=$(res conn.hop2) HOP_C1=$(res conn.hop1) HOP_CS2=$(res conn.ss2)
HOP_B2=$(res bulk.hop2) HOP_B1=$(res bulk.hop1) HOP_BS2=$(res bulk.ss2)
note "conn = connect + 100-byte echo + close through the local forward (median of $CONN_N per round, median of rounds)"

if [ "$(id -u)" -eq 0 ] && [ -x tests/relays/run ]; then
    step "failover: tests/relays/run's trials (network namespaces; ${BENCH_FAILOVER_TRIALS:-20} per fault kind)"
    if ! QNET_RELAYS_BUILD=0 QNET_RELAYS_ONLY=failover QNET_RELAYS_TRIALS="${BENCH_FAILOVER_TRIALS:-20}" \
        QNET_RELAYS_BIN="${S_BIN[cur]}" tests/relays/run > "$WORK/failover.out" 2>&1; then
        echo "FAILED: failover: $(tail -n 5 "$WORK/failover.out" | tr '\n' ' ')"
    fi
    sed -n '/^failover: .* worker threads/,/^ *elapsed:/p' "$WORK/failover.out" | sed 's/^/   /'
else
    skip "failover rows" "root (network namespaces)"
fi
