#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: the steady measure of the
# hot path (repeats within about 2 %, where wall-clock runs on a shared VM move by 10 %).
#
#   load-test/callgrind.sh [BINARY]        # default target/release/scoregate
#   CONNS=256 SECONDS_LOAD=8 load-test/callgrind.sh
#   EXTRA_YAML='access_log: {path: /tmp/a.log}' load-test/callgrind.sh
#
# Starts two built-in scoring servers and the proxy (under callgrind, instrumentation off) on
# system-picked loopback ports, warms up, counts only while `scoregate load` sends CONNS
# keep-alive clients' requests for SECONDS_LOAD, and prints the instructions per request.
# EXTRA_YAML's lines (optional) are added to the generated endpoint.yaml's top level.
# Needs valgrind (Debian package valgrind). Leaves no process or file behind.
set -euo pipefail

bin=${1:-target/release/scoregate}
conns=${CONNS:-32}
secs=${SECONDS_LOAD:-6}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[ -x "$bin" ] || { echo "callgrind.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }

# shellcheck source=load-test/lib.sh
source "$(dirname "$0")/lib.sh"

score_servers "$bin"

cat >"$tmp/endpoint.yaml" <<EOF
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
traffic: {blue: 90, green: 10}
deployments:
  blue: {instances: [$blue]}
  green: {instances: [$green]}
EOF
[ -z "${EXTRA_YAML:-}" ] || printf '%s\n' "$EXTRA_YAML" >>"$tmp/endpoint.yaml"

RUST_LOG=warn,scoregate::app=info valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$tmp/callgrind.out" "$bin" run --config "$tmp/endpoint.yaml" \
  2>"$tmp/proxy.log" &
proxy=$!
pids+=($proxy)
addr=$(logged_addr "$tmp/proxy.log" "data plane listening")

"$bin" load "http://$addr/score" --duration 2s --concurrency "$conns" >/dev/null 2>&1 || true
callgrind_control -i on "$proxy" >/dev/null 2>&1
"$bin" load "http://$addr/score" --duration "${secs}s" --concurrency "$conns" >"$tmp/load.txt" 2>/dev/null || true
callgrind_control -i off "$proxy" >/dev/null 2>&1
kill -TERM "$proxy"
wait "$proxy" 2>/dev/null || true

requests=$(grep -oE '^[0-9]+ requests in' "$tmp/load.txt" | grep -oE '^[0-9]+')
failed=$(grep -m1 -oE '[0-9]+ failed' "$tmp/load.txt" | grep -oE '^[0-9]+')
callgrind_annotate "$tmp/callgrind.out" >"$tmp/annotated.txt" 2>/dev/null || true
total=$(grep -m1 'PROGRAM TOTALS' "$tmp/annotated.txt" | grep -oE '^[0-9,]+' | tr -d , || true)
[ -n "$requests" ] && [ "$requests" -gt 0 ] && [ -n "$total" ] || {
  echo "callgrind.sh: the run did not complete:" >&2
  cat "$tmp/load.txt" "$tmp/proxy.log" >&2
  exit 1
}
echo "binary $bin, $conns connections: $requests requests ($failed failed), $total instructions"
awk -v t="$total" -v n="$requests" 'BEGIN { printf "instructions per request: %.0f\n", t / n }'
