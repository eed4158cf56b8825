#!/usr/bin/env bash
# What the access log costs: req/s, live p50/p99 and the proxy's CPU time per request through the
# release binary, in three configurations, each on a fresh proxy:
#
#   off    blue 100% live, green 0%, no access_log
#   json   the same with access_log {path: $tmp/access-json.log} (JSON, every request)
#   text   the same with format: text
#
# The CPU time is the proxy's utime + stime from /proc over the measured load only (the log
# writer's thread included, up to when its file holds every line). Two built-in scoring servers
# (blue, green), `scoregate load URL --data '{"data": [[1,2,3]]}' --duration 10s --concurrency 8`
# per run, 1 s of warm-up first; the order of the configurations rotates each round. For json and
# text a run also reports the lines the proxy wrote and dropped (by reason; warm-up included) and
# fails the script at the end when the log file holds fewer lines than the run's requests
# (warm-up included). Prints every run, then the medians as a Markdown table with the CPU per
# request of json and text over off.
#
#   load-test/access_log_cost.sh              # 3 rounds, builds the release binary if missing
#   ROUNDS=5 DURATION=5s CONC=32 BIN=/path/to/scoregate load-test/access_log_cost.sh
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
    json) echo "access_log: {path: $tmp/access-json.log}" ;;
    text) echo "access_log: {path: $tmp/access-text.log, format: text}" ;;
  esac
  echo "traffic: {blue: 100, green: 0}"
  echo "deployments:"
  echo "  blue: {instances: [$blue]}"
  echo "  green: {instances: [$green]}"
}

# Lines in file $1 (0 when it does not exist).
lines_in() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# The request count in `scoregate load` output $1.
requests_of() { grep -oE '^[0-9]+ requests' <<<"$1" | cut -d' ' -f1; }

# One run: "rps p50 p99 cpu-us-per-request lines-written dropped-total dropped-by-reason
# lines-in-file requests-with-warm-up" of config $1 ("-" for the log's columns of off).
run() {
  local cfg=$1 log="$tmp/proxy-$1.log" file="$tmp/access-$1.log"
  rm -f "$file"
  endpoint "$cfg" >"$tmp/$cfg.yaml"
  RUST_LOG=warn,scoregate::app=info "$BIN" run --config "$tmp/$cfg.yaml" 2>"$log" &
  local pid=$!
  pids+=("$pid")
  local addr admin
  addr=$(logged_addr "$log" "data plane listening")
  admin=$(logged_addr "$log" "admin listening")
  local data='{"data": [[1,2,3]]}'
  local warm out t0 t1 n total
  warm=$("$BIN" load "http://$addr/score" --data "$data" --duration 1s --concurrency "$CONC" 2>/dev/null)
  t0=$(cpu_ticks "$pid")
  out=$("$BIN" load "http://$addr/score" --data "$data" --duration "$DURATION" --concurrency "$CONC" 2>/dev/null)
  n=$(requests_of "$out")
  total=$(($(requests_of "$warm") + n))
  if [ "$cfg" != off ]; then
    # Lines are written by their own thread: wait (up to 5 s) until the file holds them all.
    for _ in $(seq 50); do
      [ "$(lines_in "$file")" -lt "$total" ] || break
      sleep 0.1
    done
  fi
  t1=$(cpu_ticks "$pid")
  local metrics
  metrics=$(curl -sf "http://$admin/metrics")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local rps p50 p99 failed cpu written dropped reasons in_file
  cpu=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.1f", (b - a) * 1e6 / hz / n}')
  rps=$(grep -oE '[0-9.]+ req/s' <<<"$out" | head -1 | cut -d' ' -f1)
  failed=$(grep -oE '[0-9]+ failed' <<<"$out" | head -1 | cut -d' ' -f1)
  p50=$(grep -oE 'p50 [0-9.]+' <<<"$out" | cut -d' ' -f2)
  p99=$(grep -oE 'p99 [0-9.]+' <<<"$out" | cut -d' ' -f2)
  [ "$failed" = 0 ] || { echo "access_log_cost.sh: $failed requests failed ($cfg)" >&2; exit 1; }
  if [ "$cfg" = off ]; then
    echo "$rps $p50 $p99 $cpu - - - - $total"
    return
  fi
  written=$(awk '/^scoregate_access_log_lines_total/ {s += $2} END {print s + 0}' <<<"$metrics")
  dropped=$(awk '/^scoregate_access_log_dropped_total\{/ {s += $2} END {print s + 0}' <<<"$metrics")
  # Dropped lines by reason, like "queue_full=12" ("0" when none).
  reasons=$(awk '/^scoregate_access_log_dropped_total\{/ && $2 > 0 {match($0, /reason="[a-z_]+"/); r = substr($0, RSTART + 8, RLENGTH - 9); s = s (s ? "," : "") r "=" $2} END {print s ? s : 0}' <<<"$metrics")
  in_file=$(lines_in "$file")
  if [ "$in_file" -lt "$total" ]; then
    echo "access_log_cost.sh: $cfg: $in_file lines in the log file, $total requests (dropped: $reasons)" >&2
    echo "$cfg" >>"$tmp/short"
  fi
  echo "$rps $p50 $p99 $cpu $written $dropped $reasons $in_file $total"
}

configs=(off json text)
for round in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    cfg=${configs[$(((i + round - 1) % 3))]}
    # Not in a subshell, so that the proxy is in `pids` should the run fail.
    run "$cfg" >"$tmp/run"
    r=$(<"$tmp/run")
    echo "$cfg $r" >>"$tmp/results"
    echo "round $round $cfg: req/s p50 p99 proxy-cpu-us/req lines-written lines-dropped dropped-by-reason lines-in-file requests(warm-up included) = $r" >&2
  done
done

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v c="$1" -v k="$2" '$1 == c {print $k}' "$tmp/results" | median; }
off_cpu=$(col off 5)
echo
echo "| configuration | req/s | p50 ms | p99 ms | proxy CPU µs/req | CPU/req ÷ off | lines written / dropped (all rounds) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for cfg in "${configs[@]}"; do
  ratio=$(awk -v a="$(col "$cfg" 5)" -v b="$off_cpu" 'BEGIN {printf "%.3f", a / b}')
  log_cols=$(awk -v c="$cfg" '$1 == c && $6 != "-" {w += $6; d += $7; any = 1} END {print any ? w " / " d : "-"}' "$tmp/results")
  printf '| %s | %.0f | %.2f | %.2f | %.1f | %s | %s |\n' "$cfg" "$(col "$cfg" 2)" "$(col "$cfg" 3)" "$(col "$cfg" 4)" "$(col "$cfg" 5)" "$ratio" "$log_cols"
done
if [ -f "$tmp/short" ]; then
  echo "access_log_cost.sh: a log file held fewer lines than its run's requests ($(sort -u "$tmp/short" | paste -sd,))" >&2
  exit 1
fi
