#!/usr/bin/env bash
# Builds target/release/scoregate with profile-guided optimisation (PGO): an instrumented build
# proxies a short training load between the built-in scoring servers and load generator, and the
# final build is laid out and inlined by what that run measured. On the development VM this cut
# the instructions per proxied request by a quarter and the CPU per request by about a tenth
# (docs/performance.md, "Benchmarks").
#
#   load-test/pgo-build.sh            # then: target/release/scoregate run --config FILE
#
# Needs llvm-profdata matching rustc's LLVM: taken from rustup's llvm-tools component, which is
# added when missing. Everything runs on 127.0.0.1 ports picked by the system; 3 to 6 minutes
# (two release builds and about 15 s of training load).
# A later plain `cargo build --release` replaces the binary with an ordinary build.
set -euo pipefail
cd "$(dirname "$0")/.."

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools >/dev/null
fi
[ -x "$profdata" ] || { echo "pgo-build: no llvm-profdata at $profdata (rustup component add llvm-tools)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
# Stopped processes write their profiles as they exit: wait for them before removing the files.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work" || true
}
trap cleanup EXIT

echo "pgo-build: instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/profiles" cargo build --release --locked --bin scoregate \
  --target-dir target/pgo-instrumented
gen=target/pgo-instrumented/release/scoregate

# listen_addr LOG WHAT: the address a process logged as "WHAT listening" (port 0 was asked for).
listen_addr() {
  for _ in $(seq 100); do
    a=$(grep -o "$2 listening addr=127.0.0.1:[0-9]*" "$1" | head -1 | cut -d= -f2) || true
    [ -n "$a" ] && { echo "$a"; return 0; }
    sleep 0.05
  done
  echo "pgo-build: nothing listening, see $1" >&2; cat "$1" >&2; exit 1
}

# Only the proxy's own profile is kept: the scoring servers and the load generator write theirs
# elsewhere, so that they do not weigh in on how the proxy's code is laid out.
aside="$work/other/%p.profraw"
LLVM_PROFILE_FILE=$aside "$gen" score-server --name blue --listen 127.0.0.1:0 >"$work/blue.log" 2>&1 & pids+=($!)
LLVM_PROFILE_FILE=$aside "$gen" score-server --name green --model v2 --listen 127.0.0.1:0 >"$work/green.log" 2>&1 & pids+=($!)
blue=$(listen_addr "$work/blue.log" "scoring server")
green=$(listen_addr "$work/green.log" "scoring server")
cat >"$work/endpoint.yaml" <<EOF
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
traffic: {blue: 90, green: 10}
deployments:
  blue: {instances: ["$blue"]}
  green: {instances: ["$green"]}
EOF
LLVM_PROFILE_FILE="$work/proxy/%p.profraw" "$gen" run --config "$work/endpoint.yaml" --drain-timeout 2 >"$work/proxy.log" 2>&1 &
proxy=$!; pids+=($proxy)
url="http://$(listen_addr "$work/proxy.log" "data plane")/score"

echo "pgo-build: training load through $url" >&2
load() {
  LLVM_PROFILE_FILE=$aside "$gen" load "$@" >"$work/load.txt" 2>&1 ||
    { echo "pgo-build: the training load failed:" >&2; cat "$work/load.txt" >&2; exit 1; }
}
load --duration 4s --concurrency 32 "$url"
load --duration 3s --concurrency 256 "$url"
load --duration 2s --concurrency 16 --pin green "$url"
load --duration 2s --concurrency 16 --data '{"data": [[1.0, 2.0, 3.0]]}' "$url"
kill -TERM "$proxy"; wait "$proxy" || true
pids=("${pids[@]:0:2}") # the proxy is gone: only the scoring servers are left to stop

"$profdata" merge -o "$work/scoregate.profdata" "$work/proxy"
echo "pgo-build: optimised build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/scoregate.profdata" cargo build --release --locked --bin scoregate
echo "pgo-build: ${CARGO_TARGET_DIR:-target}/release/scoregate is the profile-guided build" >&2
