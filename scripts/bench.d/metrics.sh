# shellcheck shell=bash
# Section 11 of scripts/bench (sourced: it uses the helpers and results there).
# What the relay's Prometheus metrics cost (issue 15): two relays of this tree, the same but
# for --metrics on one, which a scraper reads once a second all along (Prometheus scrapes
# every 15 s by default: this is harsher). Each gets its own `qnet forward` to the echo and
# iperf3 servers; rounds alternate which goes first. Bulk Gbit/s and the stream-open rate
# (connect + 100-byte echo + close through the forward, as in section 2) with metrics on,
# against off.

step "metrics: a relay with --metrics (scraped every second) against one without, $METRICS_ROUNDS alternating rounds"
MET_D=$WORK/metrics
mkdir -p "$MET_D"
met_relay() { # NAME [ARGS...]: a relay of this tree and a forward to echo and iperf3 through it
    local name=$1 relay
    shift
    QNET_CONFIG="$WORK/relay.toml" "${S_BIN[cur]}/qnet-relay" --listen 127.0.0.1:0 --key "$WORK/relay.key" \
        --clients "$WORK/clients" --exit-allow 127.0.0.0/8 "$@" > /dev/null 2> "$MET_D/$name.log" &
    PIDS+=($!)
    MET_PID[$name]=$!
    relay=$(wait_line "$MET_D/$name.log" 'listening on' | awk '{print $NF}')
    sed "s/^relay = .*/relay = \"$relay\"/" "${S_CFG[cur]}" > "$MET_D/$name.toml"
    local p log
    for p in ${ECHO:+echo:$ECHO} ${IPERF:+iperf:$IPERF}; do
        log=$MET_D/fwd-$name-${p%%:*}.log
        QNET_CONFIG="$MET_D/$name.toml" "${S_BIN[cur]}/qnet" forward --listen 127.0.0.1:0 --to "127.0.0.1:${p#*:}" \
            > /dev/null 2> "$log" &
        PIDS+=($!)
        MET_FWD[$name-${p%%:*}]=$(wait_line "$log" 'listening on' | grep -oE '127\.0\.0\.1:[0-9]+' | head -1 | cut -d: -f2)
    done
}
declare -A MET_PID MET_FWD
met_relay off
met_relay on --metrics 0
MET_URL=$(wait_line "$MET_D/on.log" 'metrics on' | awk '{print $NF}')
(while sleep 1; do curl -s -o /dev/null "$MET_URL" || true; done) &
MET_SCRAPER=$!
PIDS+=($MET_SCRAPER)
note "relay on: metrics at $MET_URL, scraped every second"
for r in $(seq "$METRICS_ROUNDS"); do
    order="off on"
    [ $((r % 2)) = 0 ] && order="on off"
    for side in $order; do
        [ -n "${QB:-}" ] && [ -n "${MET_FWD[$side-echo]:-}" ] && conn_run "met$side" "${MET_FWD[$side-echo]}"
        [ -n "${IPERF:-}" ] && bulk_run "met$side" "${MET_FWD[$side-iperf]}" "${MET_PID[$side]}"
    done
    echo "   round $r done"
done
kill "$MET_SCRAPER" 2> /dev/null || true
scrapes=$(curl -s "$MET_URL" | grep -c '^qnet_relay_' || true)
printf '   %-30s %8s %20s %10s %14s\n' relay Gbit/s "relay CPU ns/byte" "conn us" "streams/s"
for side in off on; do
    g=$(res "bulk.met$side") c=$(res "conn.met$side")
    printf '   %-30s %8s %20s %10s %14s\n' "metrics $side" "$(fmt2 "$g")" "$(res "bulkcpu.met$side")" \
        "$(fmt1 "$c")" "$(ok "$c" && calc '%.0f' "1e6 / $c" || echo n/a)"
done
MET_BULK_ON=$(res bulk.meton) MET_BULK_OFF=$(res bulk.metoff)
MET_CONN_ON=$(res conn.meton) MET_CONN_OFF=$(res conn.metoff)
met_ratio() { if ok "${1:-}" && ok "${2:-}"; then calc '%.3fx' "$1 / $2"; else echo n/a; fi; }
note "bulk on/off: $(met_ratio "$MET_BULK_ON" "$MET_BULK_OFF"); stream-open rate on/off: $(met_ratio "$MET_CONN_OFF" "$MET_CONN_ON") (target >= 0.98x each)"
note "the scraped relay's last answer had $scrapes samples"
