#!/usr/bin/env bash
# scoregate against nginx on the same topology, side by side:
#
#   wrk (CPU 0) --> proxy under test (CPU 1) --> two backend nginx (CPU 1): blue, green
#
# Both proxies do a 90/10 random split, honour `x-api-version: blue|green`, add `x-deployment`
# and keep upstream connections alive. Each round measures every (connections, proxy) pair with a
# fresh proxy; the report gives medians of requests per second, p99 latency and the proxy's CPU
# time per request (utime+stime of its processes from /proc) with the kernel's share of it (the
# loopback TCP work of its system calls), and each ratio to nginx.
#
#   load-test/vs-nginx.sh                       # 3 rounds x 8 s at 32 and 256 connections
#   ROUNDS=5 DURATION=5 CONNS="32 256" load-test/vs-nginx.sh
#   MEMORY=1 load-test/vs-nginx.sh              # also: idle RSS, RSS with 10,000 idle clients,
#                                               # and RSS while 64 clients stream 1 MiB bodies both ways
#
# Needs nginx, wrk, curl, python3 and taskset (installed with apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-"32 256"}
BIN=${BIN:-target/release/scoregate}

need=()
for t in nginx wrk curl python3 taskset; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for t in "${need[@]}"; do case $t in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$t") ;; esac; done
  [ "$(id -u)" -eq 0 ] || { echo "missing ${need[*]}: install ${pkgs[*]}" >&2; exit 1; }
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
[ -x "$BIN" ] || cargo build --release

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.2; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B1=$(free_port); B2=$(free_port); PX=$(free_port); AD=$(free_port)

# Both nginx instances are tuned as a team would run them in front of a model: long-lived
# keep-alive on both sides (nginx's default keepalive_requests of 1000 would close them).
cat > "$work/backends.conf" <<EOF
worker_processes 1; daemon off; pid $work/backends.pid; error_log $work/backends.err;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:$B1; location / { default_type application/json; return 200 '{"deployment":"blue","model":"v1"}'; } }
  server { listen 127.0.0.1:$B2; location / { default_type application/json; return 200 '{"deployment":"green","model":"v2"}'; } }
}
EOF
cat > "$work/nginx-proxy.conf" <<EOF
worker_processes 1; daemon off; pid $work/proxy.pid; error_log $work/proxy.err;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream blue { server 127.0.0.1:$B1; keepalive 1024; keepalive_requests 1000000; }
  upstream green { server 127.0.0.1:$B2; keepalive 1024; keepalive_requests 1000000; }
  split_clients "\$request_id" \$split { 90% blue; * green; }
  map \$http_x_api_version \$dep { blue blue; green green; default \$split; }
  server { listen 127.0.0.1:$PX;
    location / { proxy_pass http://\$dep; proxy_http_version 1.1; proxy_set_header Connection "";
                 add_header x-deployment \$dep always; } }
}
EOF
cat > "$work/endpoint.yaml" <<EOF
listen: 127.0.0.1:$PX
admin_listen: 127.0.0.1:$AD
traffic: {blue: 90, green: 10}
deployments:
  blue: {instances: ["127.0.0.1:$B1"]}
  green: {instances: ["127.0.0.1:$B2"]}
EOF

taskset -c 1 nginx -c "$work/backends.conf" -p "$work" & pids+=($!)
sleep 0.5

# CPU ticks of a process and its children: "user kernel" (utime, stime).
ticks() {
  local user=0 kernel=0 p u k
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    read -r u k < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    user=$((user + u)); kernel=$((kernel + k))
  done
  echo "$user $kernel"
}

start_proxy() {
  case $1 in
    nginx) taskset -c 1 nginx -c "$work/nginx-proxy.conf" -p "$work" >/dev/null 2>&1 & ;;
    scoregate) RUST_LOG=warn taskset -c 1 "$BIN" run --config "$work/endpoint.yaml" >/dev/null 2>&1 & ;;
  esac
  proxy_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PX/score" >/dev/null && return 0; sleep 0.05; done
  echo "$1 did not start" >&2; exit 1
}

stop_proxy() { kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; sleep 0.3; }

hz=$(getconf CLK_TCK)
results="$work/results.tsv"
for round in $(seq "$ROUNDS"); do
  for c in $CONNS; do
    order="nginx scoregate"; [ $((round % 2)) -eq 0 ] && order="scoregate nginx"
    for proxy in $order; do
      start_proxy "$proxy"
      taskset -c 0 wrk -t1 -c"$c" -d1s "http://127.0.0.1:$PX/score" >/dev/null 2>&1
      t0=$(ticks "$proxy_pid")
      out=$(taskset -c 0 wrk -t1 -c"$c" -d"${DURATION}s" --latency "http://127.0.0.1:$PX/score")
      t1=$(ticks "$proxy_pid")
      stop_proxy
      reqs=$(awk '/requests in/ {print $1}' <<<"$out")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
      errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
      read -r us kus < <(python3 -c "
u0, k0, u1, k1 = map(int, '$t0 $t1'.split()); n = max($reqs, 1) * ($hz / 1e6)
print(round((u1 - u0 + k1 - k0) / n, 2), round((k1 - k0) / n, 2))")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$proxy" "$rps" "$p99" "$us" "$kus" >> "$results"
      printf 'round %s c=%-4s %-9s %9s req/s  p99 %7s ms  CPU %6s us/req (kernel %s) %s\n' "$round" "$c" "$proxy" "$rps" "$p99" "$us" "$kus" "$errs" >&2
    done
  done
done

python3 - "$results" <<'EOF'
import sys, statistics, collections
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
by = collections.defaultdict(list)
for r, c, p, rps, p99, us, kus in rows:
    by[(int(c), p)].append((int(r), float(rps), float(p99), float(us), float(kus)))
# Kernel = the proxy's time in system calls (loopback TCP): the share no user-space work removes.
print("| conns | proxy | req/s | p99 ms | CPU us/req | of it kernel | req/s x nginx | p99 x nginx | CPU/req x nginx |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for c in sorted({k[0] for k in by}):
    ng = {x[0]: x[1:] for x in by[(c, "nginx")]}
    for p in ("nginx", "scoregate"):
        v = by[(c, p)]
        med = lambda i: statistics.median(x[i] for x in v)
        ratio = lambda i: statistics.median(x[i] / ng[x[0]][i - 1] for x in v if x[0] in ng)
        kshare = statistics.median(x[4] / x[3] for x in v if x[3] > 0) if any(x[3] > 0 for x in v) else 0
        print(f"| {c} | {p} | {med(1):,.0f} | {med(2):.2f} | {med(3):.1f} | {kshare:.0%} | {ratio(1):.2f} | {ratio(2):.2f} | {ratio(3):.2f} |")
EOF

if [ "${MEMORY:-0}" = 1 ]; then
  ulimit -n 30000 2>/dev/null || true
  start_proxy scoregate
  idle=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")
  python3 - "$PX" <<'EOF' &
import socket, sys, time
port = int(sys.argv[1]); socks = []
for i in range(10000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n"); s.recv(4096); socks.append(s)
print("holding", len(socks), file=sys.stderr); sys.stderr.flush(); time.sleep(20)
EOF
  holder=$!
  sleep 12
  held=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")
  kill "$holder" 2>/dev/null || true
  stop_proxy
  echo
  echo "scoregate RSS: idle $((idle / 1024)) MiB; with 10,000 idle keep-alive clients $((held / 1024)) MiB"

  # 1 MiB bodies both ways at 64 clients: an echo backend sends every request body back.
  EB=$(free_port); EPX=$(free_port); EAD=$(free_port)
  python3 - "$EB" <<'EOF' &
import asyncio, sys
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            body = await r.readexactly(n)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + body)
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
asyncio.run(main())
EOF
  pids+=($!)
  cat > "$work/echo.yaml" <<EOF
listen: 127.0.0.1:$EPX
admin_listen: 127.0.0.1:$EAD
max_request_body_bytes: 2097152
traffic: {echo: 100}
deployments:
  echo: {instances: ["127.0.0.1:$EB"]}
EOF
  cat > "$work/post1m.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("a", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
  RUST_LOG=warn taskset -c 1 "$BIN" run --config "$work/echo.yaml" >/dev/null 2>&1 &
  proxy_pid=$!
  for _ in $(seq 100); do curl -sf -o /dev/null -d x "http://127.0.0.1:$EPX/" && break; sleep 0.05; done
  before=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")
  ( peak=0; for _ in $(seq 40); do r=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status" 2>/dev/null || echo 0)
      [ "$r" -gt "$peak" ] && peak=$r; sleep 0.25; done; echo "$peak" > "$work/peak" ) &
  sampler=$!
  big=$(taskset -c 0 wrk -t1 -c64 -d8s -s "$work/post1m.lua" "http://127.0.0.1:$EPX/score")
  wait "$sampler"
  after=$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status")
  stop_proxy
  echo "$big" | grep -E "requests in|Requests/sec|Transfer/sec|Non-2xx|Socket errors" | sed 's/^ */  /'
  echo "scoregate RSS with 64 clients sending and receiving 1 MiB bodies: before $((before / 1024)) MiB, peak $(( $(cat "$work/peak") / 1024 )) MiB, after $((after / 1024)) MiB"
fi
