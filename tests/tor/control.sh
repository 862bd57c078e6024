# Sourced by tests/tor/run: the checks of qnet's Tor control-port client.
#
#   offline         a second Tor with DisableNetwork 1 (it never bootstraps): SocksPort 9150,
#                   ControlPort 9151 and unix:$T/offline/control, cookie and password auth
#   count           a listener on 127.0.0.1:9160 that logs every connection it accepts
#
#   tor-auth              qnet tor status against the offline Tor: SAFECOOKIE (default),
#                         COOKIE, password, the unix socket; a wrong password, a wrong cookie
#                         (Tor's SAFECOOKIE hash does not match it) and an unoffered method fail
#   tor-bootstrap-wait    a client with [tor] on the offline Tor: every connect fails at once
#                         with "qnet: Tor not bootstrapped: 0 % (…)" (LD_PRELOAD and qnet run,
#                         the control port over TCP and a unix socket),
#                         an unreachable control port fails closed too, and the upstream
#                         listener sees no connection; without [tor] it sees one (control)
#   tor-relay-wait        qnet-relay --upstream with [tor] on the offline Tor refuses the stream,
#                         logs "Tor not bootstrapped", and dials nothing
#   tor-circuit-map       three isolated sessions with [tor] on the bootstrapped client Tor:
#                         each names its circuit and exit, the circuit Tor's own STREAM events
#                         give its SOURCE_ADDR, three distinct circuits
#   tor-status-circuit    qnet forward with [tor]: `qnet status --json` shows bootstrap 100 %
#                         and its session's circuit, the one Tor's STREAM events give
#   tor-newnym            fixed credentials: two sessions share a circuit; after
#                         `qnet tor newnym` the next session has another

OFF_SOCKS=9150
OFF_CTL=9151
COUNT_PORT=9160
OFF_PASS=pw-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')

offline_tor_start() {
    mkdir -m 700 "$T/offline"
    local hash
    hash=$(tor --quiet --hash-password "$OFF_PASS" | tail -n 1)
    {
        printf 'DataDirectory %s\nSocksPort 127.0.0.1:%s\n' "$T/offline" "$OFF_SOCKS"
        printf 'ControlPort 127.0.0.1:%s\nControlPort unix:%s\n' "$OFF_CTL" "$T/offline/control"
        printf 'CookieAuthentication 1\nHashedControlPassword %s\nDisableNetwork 1\n' "$hash"
        printf 'Log notice file %s\nRunAsDaemon 0\nShutdownWaitLength 0\n' "$T/offline/notice.log"
        printf 'GeoIPFile /dev/null\nGeoIPv6File /dev/null\n__OwningControllerProcess %s\n' "$$"
    } >"$T/offline/torrc"
    bg "$T/offline/stdout.log" tor -f "$T/offline/torrc"
    : >"$T/count.log"
    bg "$T/count.out" "$PY" -u "$HERE/helpers.py" count 127.0.0.1 "$COUNT_PORT" "$T/count.log"
}

tor_configs() {
    local off="control = \"127.0.0.1:$OFF_CTL\"" up="upstream = \"socks5h://127.0.0.1:$COUNT_PORT\""
    # A relay address nothing listens on: these sessions must never get as far as it (and a
    # path marked down here is none of the other checks' paths).
    local nowhere="$RELAY_IP:7709"
    (umask 077 && printf '%s\n' "$OFF_PASS" >"$T/offline-pass" && head -c 32 /dev/urandom >"$T/bad-cookie")
    client_config "$T/ctl.toml" "$nowhere" "upstream = \"socks5h://127.0.0.1:$OFF_SOCKS\"" "[tor]" "$off"
    client_config "$T/ctl-unix.toml" "$nowhere" "[tor]" "control = \"$T/offline/control\""
    client_config "$T/ctl-pass.toml" "$nowhere" "[tor]" "$off" "password_file = \"$T/offline-pass\""
    client_config "$T/ctl-wrong.toml" "$nowhere" "[tor]" "$off" 'password = "wrong"'
    client_config "$T/ctl-badcookie.toml" "$nowhere" "[tor]" "$off" "cookie_file = \"$T/bad-cookie\""
    client_config "$T/wait.toml" "$nowhere" "$up" "[tor]" "$off"
    client_config "$T/wait-unix.toml" "$nowhere" "$up" "[tor]" "control = \"$T/offline/control\""
    client_config "$T/wait-nocontrol.toml" "$nowhere" "$up" "[tor]" 'control = "127.0.0.1:9"'
    client_config "$T/count-only.toml" "$nowhere" "$up"
    client_config "$T/map.toml" "$RELAY_IP:7700" "upstream = \"socks5://127.0.0.1:$SOCKS\"" \
        "isolate = true" "[tor]" "control = \"127.0.0.1:$CTL\""
    client_config "$T/newnym.toml" "$RELAY_IP:7700" "upstream = \"socks5://bob:pw@127.0.0.1:$SOCKS\"" \
        "[tor]" "control = \"127.0.0.1:$CTL\""
    chmod 600 "$T/ctl-wrong.toml" "$T/newnym.toml"
    printf '[tor]\n%s\n' "$off" >"$T/relay-wait.toml"
    client_config "$T/via-wait.toml" "$RELAY_IP:7702"
}

auth_case() { # ok|err pattern config [--auth method]
    local want=$1 pat=$2 out st=0
    shift 2
    out=$(timeout 30 "$QNET" tor status --config "$@" 2>&1) || st=$?
    printf '%s (exit %s):\n%s\n' "$*" "$st" "$out" | sed '2,$s/^/    /'
    if [ "$want" = ok ] && [ "$st" != 0 ]; then fail_because "${1##*/} ${2:-} ${3:-}: exit $st"; fi
    if [ "$want" = err ] && [ "$st" = 0 ]; then fail_because "${1##*/} ${2:-} ${3:-}: succeeded"; fi
    printf '%s\n' "$out" | grep -q -- "$pat" ||
        fail_because "${1##*/} ${2:-} ${3:-}: want '$pat', got '$(printf '%s' "$out" | head -n 1)'"
}

c_tor_auth() {
    wait_for "$T/offline/notice.log" "Bootstrapped 0%" 10 || fail_because "the offline Tor did not start"
    auth_case ok "authenticated with SAFECOOKIE" "$T/ctl.toml"
    auth_case ok "^bootstrap 0 % (Starting)" "$T/ctl.toml"
    auth_case ok "authenticated with COOKIE" "$T/ctl.toml" --auth cookie
    auth_case ok "authenticated with HASHEDPASSWORD" "$T/ctl-pass.toml"
    auth_case ok "^control $T/offline/control .*SAFECOOKIE" "$T/ctl-unix.toml"
    auth_case err "HASHEDPASSWORD refused: AUTHENTICATE: 515 " "$T/ctl-wrong.toml"
    auth_case err "SAFECOOKIE server hash does not match the cookie read" "$T/ctl-badcookie.toml"
    auth_case err "COOKIE refused: AUTHENTICATE: 515 " "$T/ctl-badcookie.toml" --auth cookie
    auth_case err "Tor does not offer NULL (it offers COOKIE,SAFECOOKIE,HASHEDPASSWORD)" "$T/ctl.toml" --auth null
}

# One failing session: its stderr must carry `want`, and it must fail within 5 s.
refused_session() { # form config want
    local out st=0 t0 ms
    t0=$(date +%s%N)
    out=$(session "$1" "$2" --max-time 10 "http://$WEB_IP:8080/token.txt" 2>&1) || st=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    printf '%s %s: exit %s after %s ms:\n%s\n' "$1" "${2##*/}" "$st" "$ms" "$out"
    [ "$st" != 0 ] || fail_because "$1 ${2##*/}: curl succeeded"
    printf '%s\n' "$out" | grep -qF -- "$3" || fail_because "$1 ${2##*/}: no line '$3'"
    [ "$ms" -lt 5000 ] || fail_because "$1 ${2##*/}: failed only after $ms ms"
}

c_tor_bootstrap_wait() {
    local cm n
    cm=$(mark "$T/count.log")
    refused_session preload "$T/wait.toml" "qnet: Tor not bootstrapped: 0 % (Starting); tunneled connections fail"
    # In the jail the library reaches the control port through the broker.
    refused_session run "$T/wait.toml" "qnet: Tor not bootstrapped: 0 % (Starting)"
    refused_session preload "$T/ctl.toml" "qnet: Tor not bootstrapped: 0 % (Starting)"
    # A unix-socket control port needs no broker: the jail shares the file system.
    refused_session run "$T/wait-unix.toml" "qnet: Tor not bootstrapped: 0 % (Starting)"
    refused_session preload "$T/wait-nocontrol.toml" "qnet: Tor control port 127.0.0.1:9: "
    settle
    n=$(since "$T/count.log" "$cm" | grep -c CONNECT || true)
    [ "$n" = 0 ] || fail_because "the upstream was dialled $n times before Tor bootstrapped"
    # Control: the same client without [tor] does dial the upstream, so the count can show it.
    session preload "$T/count-only.toml" --max-time 10 "http://$WEB_IP:8080/token.txt" >/dev/null 2>&1 || true
    settle
    n=$(since "$T/count.log" "$cm" | grep -c CONNECT || true)
    echo "without [tor]: $n connection(s) to the upstream"
    [ "$n" -ge 1 ] || fail_because "without [tor] the upstream saw no connection either: the count shows nothing"
}

c_tor_relay_wait() {
    local cm out st=0 n
    start_relay "$T/relay-wait.log" 7702 --upstream "socks5://127.0.0.1:$COUNT_PORT" --config "$T/relay-wait.toml"
    cm=$(mark "$T/count.log")
    out=$(session preload "$T/via-wait.toml" --max-time 10 "http://$WEB_IP:8080/token.txt" 2>&1) || st=$?
    settle
    echo "curl: exit $st: $out"
    [ "$st" != 0 ] || fail_because "curl succeeded through a relay whose Tor has not bootstrapped"
    grep "Tor" "$T/relay-wait.log" || true
    grep -q "Tor not bootstrapped: 0 % (Starting): streams through Tor are refused" "$T/relay-wait.log" ||
        fail_because "the relay did not log 'Tor not bootstrapped'"
    n=$(since "$T/count.log" "$cm" | grep -c CONNECT || true)
    [ "$n" = 0 ] || fail_because "the relay dialled its upstream $n times"
}

# One session of a config; prints "local-address circuit exit" from its info line. It
# fetches 1 MiB: the line comes from the watcher thread when it has read Tor's STREAM
# event, which a session of one small file can outrun to its exit.
circuit_session() { # config number
    local sum err st=0
    err=$(mktemp "$T/err.XXXXXX")
    session run "$1" -o "$T/big-$2.out" "http://$WEB_IP:8080/big.bin" 2>"$err" || st=$?
    sum=$(sha256sum "$T/big-$2.out" 2>/dev/null | cut -d' ' -f1)
    [ "$st" = 0 ] && [ "$sum" = "$BIG_SHA" ] || fail_because "${1##*/} session $2: exit $st, sha256 '$sum'"
    grep -m1 'via Tor circuit' "$err" >&2 || sed 's/^/    | /' "$err" >&2
    sed -n 's/.*session from \([0-9.:]*\) via Tor circuit \([0-9]*\) exit \([^ ]*\).*/\1 \2 \3/p' "$err" | head -n 1
}

c_tor_circuit_map() {
    local em i local circ exit want
    em=$(mark "$T/events.log")
    : >"$T/map.lines"
    for i in 1 2 3; do circuit_session "$T/map.toml" "$i" >>"$T/map.lines"; done
    settle
    [ "$(wc -l <"$T/map.lines")" = 3 ] || fail_because "want 3 'via Tor circuit' lines, saw $(wc -l <"$T/map.lines")"
    while read -r local circ exit; do
        # Tor's own view: the stream whose NEW event had this SOURCE_ADDR, on the circuit
        # its SUCCEEDED event names.
        want=$(since "$T/events.log" "$em" | awk -v src="SOURCE_ADDR=$local" '
            $2 != "STREAM" { next }
            $4 == "NEW" { for (i = 7; i <= NF; i++) if ($i == src) mine[$3] = 1 }
            $4 == "SUCCEEDED" && ($3 in mine) { print $5; exit }')
        expect_eq "circuit of the session from $local" "$circ" "$want" || true
        case $exit in '$'[0-9A-F]*'~'*) ;; *) fail_because "exit '$exit' is not \$FINGERPRINT~nickname" ;; esac
    done <"$T/map.lines"
    [ "$(awk '{ print $2 }' "$T/map.lines" | sort -u | wc -l)" = 3 ] ||
        fail_because "want 3 distinct circuits for 3 isolated sessions"
}

c_tor_status_circuit() {
    local em fpid out got local circ want i
    em=$(mark "$T/events.log")
    mkdir -p -m 700 "$T/xdg"
    XDG_RUNTIME_DIR=$T/xdg QNET_CONFIG=$T/map.toml timeout -k 5 60 "$QNET" forward \
        --listen 127.0.0.1:9170 --to "$WEB_IP:8080" 2>"$T/status-fwd.log" &
    fpid=$!
    PIDS+=($fpid)
    for i in $(seq 50); do grep -q 'listening on' "$T/status-fwd.log" 2>/dev/null && break; sleep 0.1; done
    curl -sS --max-time 30 -o /dev/null "http://127.0.0.1:9170/big.bin" || fail_because "curl through qnet forward"
    # The status file is rewritten within a second of the watcher seeing Tor's events.
    for i in $(seq 30); do
        out=$(XDG_RUNTIME_DIR=$T/xdg "$QNET" status --json 2>&1) || true
        got=$(printf '%s' "$out" | "$PY" -c '
import json, sys
for p in json.load(sys.stdin):
    t = p.get("tor") or {}
    for c in t.get("circuits", []):
        if t.get("bootstrap_percent") == 100 and c.get("exit"):
            print(c["local"], c["circuit"]); sys.exit(0)' 2>/dev/null) || true
        [ -n "$got" ] && break
        sleep 0.2
    done
    # For the log (QNET_TOR_KEEP=1 keeps it): the table once the byte counts are written
    # (within a second of a change), and Tor's own view.
    sleep 1.2
    XDG_RUNTIME_DIR=$T/xdg "$QNET" status >&2 || true
    "$QNET" tor status --config "$T/map.toml" >&2 || true
    kill "$fpid" 2>/dev/null || true
    printf '%s\n' "$out" | head -c 600 >&2
    [ -n "$got" ] || { fail_because "qnet status --json shows no circuit with bootstrap 100 %"; return; }
    read -r local circ <<<"$got"
    want=$(since "$T/events.log" "$em" | awk -v src="SOURCE_ADDR=$local" '
        $2 != "STREAM" { next }
        $4 == "NEW" { for (i = 7; i <= NF; i++) if ($i == src) mine[$3] = 1 }
        $4 == "SUCCEEDED" && ($3 in mine) { print $5; exit }')
    expect_eq "qnet status's circuit of the session from $local" "$circ" "$want" || true
}

c_tor_newnym() {
    local a b c out
    a=$(circuit_session "$T/newnym.toml" 4 | awk '{ print $2 }')
    b=$(circuit_session "$T/newnym.toml" 5 | awk '{ print $2 }')
    out=$("$QNET" tor newnym --config "$T/newnym.toml" 2>&1) || fail_because "qnet tor newnym: $out"
    expect_eq "qnet tor newnym" "$out" ok || true
    c=$(circuit_session "$T/newnym.toml" 6 | awk '{ print $2 }')
    echo "circuits: before $a $b, after NEWNYM $c"
    [ -n "$a" ] && [ "$a" = "$b" ] || fail_because "without NEWNYM one class should keep its circuit: $a, $b"
    [ -n "$c" ] && [ "$c" != "$a" ] || fail_because "after NEWNYM the circuit is still $c"
}
