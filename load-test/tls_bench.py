#!/usr/bin/env python3
"""HTTPS termination side by side: scoregate and nginx terminating TLS 1.3 with the same
certificate in front of the same two scoring servers, split 90/10.

    python3 load-test/tls_bench.py                        # ECDSA P-256 and RSA 2048; 3 rounds
    python3 load-test/tls_bench.py --keys ecdsa --rounds 5 --duration 6 --legs keepalive

Topology (as grpc_bench.py): h2load on CPU 0; the proxy and both of scoregate's built-in scoring
servers (HTTP/1.1, `GET /score`) on CPU 1. One certificate per key type, made with `openssl req`
for localhost / 127.0.0.1, is loaded by both proxies:
  - scoregate: `tls: {cert_file, key_file}` in its endpoint file (rustls 0.23, ring; TLS 1.2 and
    1.3 offered, ALPN h2 and http/1.1, session tickets on);
  - nginx 1 worker: `listen ... ssl http2`, `ssl_protocols TLSv1.3`, the defaults otherwise
    (session tickets on, no session cache), `split_clients` on `$request_id` and a `map` for the
    `x-api-version` pin, `proxy_pass` to upstreams with `keepalive`, no limit on the requests of
    one client connection.
Both negotiate with h2load's OpenSSL defaults (TLS 1.3, its cipher and group order).

Two legs, each a fresh start of the proxy per run, 1 s of unrecorded warm-up, one recorded run:
  - keepalive: `h2load --h1 -c CONNS -m 1 -D DURATION` on long-lived HTTPS connections. Requests/s
    (responses 200), p50/p99 from h2load's per-request log, proxy CPU µs per request (utime+stime
    of its process tree from /proc) with its kernel part (stime).
  - handshake: new connections, each a full TLS 1.3 handshake and one request with
    `connection: close`. h2load resumes a client's own earlier session when that client
    reconnects (checked with nginx's $ssl_session_reused), so every connection is a fresh client:
    `h2load --h1 -c BATCH -n BATCH`, run back to back in three loops for DURATION so that
    one's start-up and tail overlap the others' batches. Handshakes/s = responses 200 per second of
    wall time; proxy CPU µs per handshake (it includes the one proxied request and the TCP
    accept and close). The load generator's own CPU use is reported too (wait4 of every h2load):
    near 100 % means the client, not the proxy, set the rate.
Both legs also give the scoring servers' CPU per request, and "CPU 1 ceiling" = 1e6 / (proxy µs +
servers µs): what CPU 1 would sustain at the measured costs. When neither h2load nor CPU 1 is
saturated (on a shared machine other tenants take the rest), the ceiling, not the measured rate,
compares capacity. Medians over the rounds, with the range; ratios × nginx are paired per round; the peer order alternates by round. Also prints the negotiated protocol,
cipher, group and server signature per key type and peer (`openssl s_client -tls1_3`).

Needs h2load (Debian nghttp2-client), nginx, openssl and taskset. Binds only 127.0.0.1 on ports
the system picks; stops only what it started.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # importing grpc_bench leaves no __pycache__ in the tree
from grpc_bench import cpu_ticks, start, stop, wait_port  # noqa: E402

KEY_TYPES = {
    "ecdsa": ("ECDSA P-256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
    "rsa": ("RSA 2048", ["-newkey", "rsa:2048"]),
}
PEERS = {"ours": "scoregate", "nginx": "nginx"}
LOOPS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(tmp, key):
    """The pair and scoregate's endpoint file for `key`, in a directory of their own: scoregate
    watches the directories of its endpoint file and certificates (reloads, rotation), and the
    logs the bench writes in `tmp` would wake its watcher on every write."""
    folder = os.path.join(tmp, f"cert-{key}")
    os.makedirs(folder, exist_ok=True)
    cert, pem = os.path.join(folder, "server.crt"), os.path.join(folder, "server.key")
    subprocess.run(
        ["openssl", "req", "-x509", *KEY_TYPES[key][1], "-nodes", "-days", "30",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", pem, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, pem


def write(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def ours_config(tmp, key, cert, pem, ports):
    return write(
        os.path.dirname(cert), "endpoint.yaml",
        f"listen: 127.0.0.1:{ports['proxy']}\nadmin_listen: 127.0.0.1:{ports['admin']}\n"
        f"tls: {{cert_file: {cert}, key_file: {pem}}}\n"
        "traffic: {blue: 90, green: 10}\ndeployments:\n"
        f"  blue: {{instances: [127.0.0.1:{ports['blue']}]}}\n"
        f"  green: {{instances: [127.0.0.1:{ports['green']}]}}\n",
    )


def nginx_config(tmp, key, cert, pem, ports):
    temp_paths = "".join(f"  {d}_temp_path {tmp}/{d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return write(
        tmp, f"nginx-{key}.conf",
        f"""worker_processes 1;
daemon off;
error_log stderr warn;
pid {tmp}/nginx.pid;
worker_rlimit_nofile 16384;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp_paths}  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream blue {{ server 127.0.0.1:{ports['blue']}; keepalive 64; keepalive_requests 100000000; }}
  upstream green {{ server 127.0.0.1:{ports['green']}; keepalive 64; keepalive_requests 100000000; }}
  split_clients "$request_id" $split {{ 90% blue; * green; }}
  map $http_x_api_version $dep {{ blue blue; green green; default $split; }}
  server {{
    listen 127.0.0.1:{ports['proxy']} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {pem};
    ssl_protocols TLSv1.3;
    location / {{
      proxy_pass http://$dep;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header x-deployment $dep always;
    }}
  }}
}}
""",
    )


def h2load(url, args, log_file=None):
    """Runs h2load --h1 on CPU 0; returns its output and its own CPU seconds (from wait4)."""
    cmd = ["taskset", "-c", "0", "h2load", "--h1", *args]
    if log_file:
        cmd += ["--log-file", log_file]
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen([*cmd, url], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return out.read(), usage.ru_utime + usage.ru_stime


def keepalive_load(url, conns, duration, log_file=None):
    return h2load(url, ["-c", str(conns), "-m", "1", "-D", str(duration)], log_file)


def handshake_load(url, conns, duration):
    """New connections for `duration` s: batches of `conns` fresh h2load clients, one request
    each with `connection: close`, in `LOOPS` loops so that one's start-up (h2load idles about
    0.1 s before it exits) and tail overlap the others' batches. One h2load client resumes its own earlier session when it reconnects, so none
    reconnects here. Returns (responses 200, failed, h2load CPU s, elapsed s, last output)."""
    totals = [0, 0, 0.0]
    out = ""
    begun = time.monotonic()

    def loop():
        nonlocal out
        while time.monotonic() - begun < duration:
            out, cpu = h2load(url, ["-c", str(conns), "-n", str(conns), "-H", "connection: close"])
            found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
            ok = int(found.group(1)) if found else 0
            totals[0] += ok
            totals[1] += conns - ok
            totals[2] += cpu

    threads = [threading.Thread(target=loop) for _ in range(LOOPS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return totals[0], totals[1], totals[2], time.monotonic() - begun, out


def backend_ticks(procs):
    return sum(sum(cpu_ticks(p.pid)) for p in procs)


def percentiles(log_file):
    """(responses 200, others, p50 ms, p99 ms) from h2load's per-request log."""
    with open(log_file) as f:
        rows = [line.split() for line in f]
    rows = [r for r in rows if len(r) >= 3]
    times = sorted(int(r[2]) for r in rows)
    ok = sum(r[1] == "200" for r in rows)
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000 if times else float("nan")
    return ok, len(rows) - ok, at(0.50), at(0.99)


def tls_params(port):
    """What `openssl s_client -tls1_3` reports: protocol, cipher, group, signature, key size."""
    res = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-servername", "localhost"],
        input="", capture_output=True, text=True, timeout=20,
    )
    text = res.stdout + res.stderr
    found = {}
    for name, pattern in (
        ("protocol", r"New, (\S+), Cipher is"),
        ("cipher", r"Cipher is (\S+)"),
        ("group", r"Negotiated TLS1.3 group: (\S+)|Server Temp Key: ([^\n]+)"),
        ("signature", r"Peer signature type: (\S+)"),
        ("server_key", r"Server public key is (\d+ bit)"),
    ):
        m = re.search(pattern, text)
        found[name] = next((g for g in m.groups() if g), "?") if m else "?"
    return found


def one_run(peer, cmd, tmp, url, leg, conns, duration, backends):
    log = open(os.path.join(tmp, f"{peer}.log"), "a")
    proc = start(cmd, 1, log)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    logf = os.path.join(tmp, "requests.log")
    try:
        if not wait_port(port):
            raise RuntimeError(f"{peer} did not start; see {log.name}")
        time.sleep(0.2)
        if leg == "handshake":
            handshake_load(url, conns, 1)
            before, side = cpu_ticks(proc.pid), backend_ticks(backends)
            ok, failed, client_cpu, elapsed, out = handshake_load(url, conns, duration)
            after, side = cpu_ticks(proc.pid), backend_ticks(backends) - side
            p50 = p99 = float("nan")
        else:
            keepalive_load(url, conns, 1)
            if os.path.exists(logf):
                os.remove(logf)
            before, side = cpu_ticks(proc.pid), backend_ticks(backends)
            out, client_cpu = keepalive_load(url, conns, duration, logf)
            after, side = cpu_ticks(proc.pid), backend_ticks(backends) - side
            ok, failed, p50, p99 = percentiles(logf)
            elapsed = duration
    finally:
        stop(proc)
        log.close()
    per = os.sysconf("SC_CLK_TCK") * max(ok, 1) / 1e6
    found = re.search(r"TLS Protocol: (\S+)\s+Cipher: (\S+)", out)
    return {
        "rate": ok / elapsed,
        "p50_ms": p50,
        "p99_ms": p99,
        "cpu_us": (sum(after) - sum(before)) / per,
        "kernel_us": (after[1] - before[1]) / per,
        "backend_cpu_us": side / per,
        "client_cpu_pct": 100 * client_cpu / elapsed,
        "failed": failed,
        "tls": " ".join(found.groups()) if found else "?",
        "h2load": out.splitlines()[-14:],
    }


def table(results):
    lines = [
        "| key | leg | peer | per s (min–max) | p50 ms | p99 ms | proxy CPU µs (min–max) | of it kernel | "
        "servers µs | CPU 1 ceiling /s | CPU × nginx | per s × nginx | ceiling × nginx | h2load CPU % | failed |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for x in (x for runs in results.values() for x in runs):
        # What CPU 1 (proxy and scoring servers) would sustain at these costs, whatever the client did.
        x["ceiling"] = 1e6 / (x["cpu_us"] + x["backend_cpu_us"])
    for key, runs in results.items():
        kt, leg, peer = key.split("/")
        med = lambda k, rs=runs: statistics.median(x[k] for x in rs)
        rng = lambda k, f, rs=runs: f"{min(x[k] for x in rs):{f}}–{max(x[k] for x in rs):{f}}"
        nginx = results.get(f"{kt}/{leg}/nginx")
        # Paired ratios: each round against nginx in the same round, then the median.
        ratio = lambda k: (
            statistics.median(a[k] / b[k] for a, b in zip(runs, nginx) if b[k])
            if nginx and len(nginx) == len(runs) else float("nan")
        )
        lat = f"{med('p50_ms'):.2f} | {med('p99_ms'):.2f}" if leg == "keepalive" else "– | –"
        lines.append(
            f"| {KEY_TYPES[kt][0]} | {leg} | {PEERS[peer]} | {med('rate'):,.0f} ({rng('rate', ',.0f')}) | "
            f"{lat} | {med('cpu_us'):.1f} ({rng('cpu_us', '.1f')}) | "
            f"{med('kernel_us'):.1f} | {med('backend_cpu_us'):.1f} | {med('ceiling'):,.0f} | "
            f"{ratio('cpu_us'):.2f} | {ratio('rate'):.2f} | {ratio('ceiling'):.2f} | {med('client_cpu_pct'):.0f} | "
            f"{sum(x['failed'] for x in runs)} |"
        )
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scoregate", default="target/release/scoregate")
    ap.add_argument("--peers", default="ours,nginx")
    ap.add_argument("--keys", default="ecdsa,rsa")
    ap.add_argument("--legs", default="keepalive,handshake")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--conns", type=int, default=32, help="keep-alive connections")
    ap.add_argument("--batch", type=int, default=64, help="new connections per h2load in the handshake leg")
    ap.add_argument("--out", default="/tmp/tls-bench.json")
    a = ap.parse_args()
    missing = [t for t in ("h2load", "nginx", "openssl", "taskset") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing {', '.join(missing)} (Debian: nghttp2-client nginx openssl util-linux)")
    scoregate = os.path.abspath(a.scoregate)
    tmp = tempfile.mkdtemp(prefix="tls-bench-")
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    ports = {name: free_port() for name in ("proxy", "admin", "blue", "green")}
    url = f"https://127.0.0.1:{ports['proxy']}/score"
    peers = [p for p in a.peers.split(",") if p in PEERS]
    keys = [k for k in a.keys.split(",") if k in KEY_TYPES]
    commands = {}
    for key in keys:
        cert, pem = make_cert(tmp, key)
        commands[key] = {
            "ours": [scoregate, "run", "--config", ours_config(tmp, key, cert, pem, ports)],
            "nginx": ["nginx", "-p", tmp, "-c", nginx_config(tmp, key, cert, pem, ports)],
        }
    backends = []
    blog = open(os.path.join(tmp, "backends.log"), "a")
    results, negotiated = {}, {}
    try:
        for name, model in (("blue", "v1"), ("green", "v2")):
            backends.append(start(
                [scoregate, "score-server", "--name", name, "--model", model,
                 "--listen", f"127.0.0.1:{ports[name]}"], 1, blog))
            if not wait_port(ports[name]):
                sys.exit(f"scoring server {name} did not start; see {blog.name}")
        for key in keys:
            for peer in peers:
                proc = start(commands[key][peer], 1, blog)
                try:
                    wait_port(ports["proxy"])
                    negotiated[f"{key}/{peer}"] = tls_params(ports["proxy"])
                finally:
                    stop(proc)
                print(f"{KEY_TYPES[key][0]:<11} {PEERS[peer]:<9} {negotiated[f'{key}/{peer}']}", flush=True)
        for r in range(a.rounds):
            order = peers if r % 2 == 0 else peers[::-1]
            for key in keys:
                for leg in a.legs.split(","):
                    for peer in order:
                        conns = a.batch if leg == "handshake" else a.conns
                        res = one_run(peer, commands[key][peer], tmp, url, leg, conns, a.duration, backends)
                        results.setdefault(f"{key}/{leg}/{peer}", []).append(res)
                        lat = (f"p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
                               if leg == "keepalive" else "")
                        print(
                            f"round {r + 1} {key:<5} {leg:<9} {PEERS[peer]:<9} {res['rate']:8.0f}/s  {lat}"
                            f"CPU {res['cpu_us']:.1f} us (kernel {res['kernel_us']:.1f}, "
                            f"servers {res['backend_cpu_us']:.1f})  h2load CPU {res['client_cpu_pct']:.0f}%  "
                            f"{res['tls']}  failed {res['failed']}",
                            flush=True,
                        )
    finally:
        for b in backends:
            stop(b)
        blog.close()
    lines = table(results)
    print("\n".join(lines))
    with open(a.out, "w") as f:
        json.dump({"negotiated": negotiated, "results": results}, f, indent=1)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
