#!/usr/bin/env bash
# What shadow comparison costs the live path: live p50/p99 and req/s through the release binary,
# in three configurations, each on a fresh proxy:
#
#   none     blue 100% live, green 0%, no mirror
#   mirror   the same with mirror_traffic {green: 100} (copies' answers read and discarded)
#   compare  the same with mirror_compare too (every copy's answer compared with the live one)
#
# and the proxy's CPU time per request (utime + stime from /proc). Two built-in scoring servers
# (blue, green: the same model, so every comparison is a match),
# `scoregate load URL --data '{"data": [[1,2,3]]}' --duration 10s --concurrency 8` per run, 1 s of
# warm-up first; the order of the configurations rotates each round. Prints every run, then the
# medians as a Markdown table with the copies counted by the proxy in the last round (ok, and
# dropped by reason; warm-up included).
#
#   load-test/shadow_cost.sh                  # 3 rounds, builds the release binary if missing
#   ROUNDS=5 DURATION=5s CONC=32 load-test/shadow_cost.sh
#
# Needs curl. Leaves no process or file behind.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONC=${CONC:-8}
BIN=${BIN:-target/release/scoregate}
[ -x "$BIN" ] || cargo build --release

# shellcheck source=load-test/lib.sh
source load-test/lib.sh

score_servers "$BIN"

endpoint() {
  echo "listen: 127.0.0.1:0"
  echo "admin_listen: 127.0.0.1:0"
  case $1 in
    mirror) echo "mirror_traffic: {green: 100}" ;;
    compare) printf 'mirror_traffic: {green: 100}\nmirror_compare: {abs_tolerance: 1e-6, rel_tolerance: 1e-4}\n' ;;
  esac
  echo "traffic: {blue: 100, green: 0}"
  echo "deployments:"
  echo "  blue: {instances: [$blue]}"
  echo "  green: {instances: [$green]}"
}


# One run: "rps p50 p99 cpu-us-per-request copies-ok copies-dropped" of config $1.
run() {
  local cfg=$1 log="$tmp/proxy-$1.log"
  endpoint "$cfg" >"$tmp/$cfg.yaml"
  RUST_LOG=warn,scoregate::app=info "$BIN" run --config "$tmp/$cfg.yaml" 2>"$log" &
  local pid=$!
  pids+=("$pid")
  local addr admin
  addr=$(logged_addr "$log" "data plane listening")
  admin=$(logged_addr "$log" "admin listening")
  local data='{"data": [[1,2,3]]}'
  "$BIN" load "http://$addr/score" --data "$data" --duration 1s --concurrency "$CONC" >/dev/null 2>&1
  local out t0 t1
  t0=$(cpu_ticks "$pid")
  out=$("$BIN" load "http://$addr/score" --data "$data" --duration "$DURATION" --concurrency "$CONC" 2>/dev/null)
  t1=$(cpu_ticks "$pid")
  local metrics
  metrics=$(curl -sf "http://$admin/metrics")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local rps p50 p99 failed ok dropped n cpu
  n=$(grep -oE '^[0-9]+ requests' <<<"$out" | cut -d' ' -f1)
  cpu=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.1f", (b - a) * 1e6 / hz / n}')
  rps=$(grep -oE '[0-9.]+ req/s' <<<"$out" | head -1 | cut -d' ' -f1)
  failed=$(grep -oE '[0-9]+ failed' <<<"$out" | head -1 | cut -d' ' -f1)
  p50=$(grep -oE 'p50 [0-9.]+' <<<"$out" | cut -d' ' -f2)
  p99=$(grep -oE 'p99 [0-9.]+' <<<"$out" | cut -d' ' -f2)
  ok=$(awk '/^scoregate_mirror_requests_total\{.*result="ok"/ {s += $2} END {print s + 0}' <<<"$metrics")
  # Dropped copies by reason, like "backlog=12" ("0" when none).
  dropped=$(awk '/^scoregate_mirror_dropped_total\{/ && $2 > 0 {match($0, /reason="[a-z_]+"/); r = substr($0, RSTART + 8, RLENGTH - 9); s = s (s ? "," : "") r "=" $2} END {print s ? s : 0}' <<<"$metrics")
  [ "$failed" = 0 ] || { echo "shadow_cost.sh: $failed live requests failed ($cfg)" >&2; exit 1; }
  echo "$rps $p50 $p99 $cpu $ok $dropped"
}

configs=(none mirror compare)
for round in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    cfg=${configs[$(((i + round - 1) % 3))]}
    r=$(run "$cfg")
    echo "$cfg $r" >>"$tmp/results"
    echo "round $round $cfg: req/s p50 p99 proxy-cpu-us/req copies-ok copies-dropped = $r" >&2
  done
done

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
echo
echo "| configuration | req/s | p50 ms | p99 ms | proxy CPU µs/req | copies ok / dropped (last round) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for cfg in "${configs[@]}"; do
  col() { awk -v c="$cfg" -v k="$1" '$1 == c {print $k}' "$tmp/results" | median; }
  last=$(awk -v c="$cfg" '$1 == c {ok = $6; d = $7} END {print ok " / " d}' "$tmp/results")
  printf '| %s | %.0f | %.2f | %.2f | %.1f | %s |\n' "$cfg" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$last"
done
