#!/usr/bin/env bash
# The ingress gateway against HAProxy doing the same job: terminate the users' TLS at the edge
# (the labs' RSA 2048 certificate, made by scripts/lab-certs.sh with their openssl commands),
# then re-encrypt into the mesh with mTLS to the same outrider sidecar in front of the same app:
#
#   wrk ──TLS──> outrider gateway ──mTLS (gateway's SVID)──> outrider sidecar (STRICT) ──> app
#   wrk ──TLS──> haproxy          ──mTLS (an SVID for it)──> the same sidecar            ──> app
#
# HAProxy: mode http, `bind ... ssl crt <the same cert+key>`, `server ... ssl crt <SVID cert+key>
# ca-file <mesh root> verify required` (the sidecar's inbound requires an SVID client
# certificate; the SVID has only a URI SAN, so no verifyhost). Its SVID is issued by
# `outrider ca issue` for the gateway's service account. Both edge proxies run one thread
# (outrider --threads 1, HAProxy nbthread 1), log level warn / no log; the sidecar is shared.
# wrk (one thread, CONNS connections) measures HTTPS requests/s over keep-alive connections and
# new TLS connections/s with `Connection: close` — wrk keeps its TLS session across reconnects
# (SSL_clear), so those are resumed TLS 1.3 handshakes (PSK + X25519, no certificate, no RSA
# signature), on both proxies alike. New connections with FULL handshakes (the RSA 2048
# signature each) come from a small Python client (ssl module, a new session every time,
# PROCS processes, one request per connection). The two proxies alternate within each of
# ROUNDS rounds; medians are printed, with each edge proxy's CPU (user+system) per request.
#
# Usage: scripts/bench-gateway.sh [outrider binary]      (cargo build --release first)
#   SECS=10 ROUNDS=3 CONNS=16 PROCS=8
# Needs wrk, haproxy, openssl, curl (`apt-get install -y wrk haproxy` when missing).
# Benchmarks are not part of `cargo test`; results go to BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="$(realpath "${1:-target/release/outrider}")"
secs="${SECS:-10}"
rounds="${ROUNDS:-3}"
conns="${CONNS:-16}"
procs="${PROCS:-8}"
[[ -x "$bin" ]] || { echo "bench-gateway: no binary at $bin (cargo build --release)" >&2; exit 1; }
missing=()
for tool in wrk haproxy; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    if ((EUID == 0)) && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    else
        echo "bench-gateway: missing ${missing[*]} (apt-get install -y ${missing[*]})" >&2
        exit 1
    fi
fi
for tool in openssl curl python3; do
    command -v "$tool" >/dev/null || { echo "bench-gateway: $tool is missing" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app=$(free_port) inbound=$(free_port) gw=$(free_port) hap=$(free_port)

# The mesh PKI and the identities: the sidecar's (default/age), the gateway's, and HAProxy's
# (the gateway's service account too: it plays the same part).
"$bin" ca init --dir "$work/ca" --trust-domain cluster.local >/dev/null
"$bin" ca issue --ca-dir "$work/ca" --namespace default --service-account age --out "$work/age" >/dev/null
for who in gateway haproxy; do
    "$bin" ca issue --ca-dir "$work/ca" --namespace istio-system \
        --service-account istio-ingressgateway-service-account --out "$work/$who" >/dev/null
done
cat "$work/haproxy/cert-chain.pem" "$work/haproxy/key.pem" >"$work/haproxy-svid.pem"
chmod 0600 "$work/haproxy-svid.pem"
# The users' edge certificate, the labs' way; HAProxy gets the same pair as one PEM.
scripts/lab-certs.sh "$work/certs" "$work/credentials" >"$work/lab-certs.log" 2>&1 ||
    { cat "$work/lab-certs.log" >&2; exit 1; }
cat "$work/certs/sentences.example.com.crt" "$work/certs/sentences.example.com.key" >"$work/edge.pem"
chmod 0600 "$work/edge.pem"

mkdir "$work/mesh"
cat >"$work/mesh/mesh.yaml" <<EOF
apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: { name: mesh }
spec: { trustDomain: cluster.local, rootNamespace: istio-system }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age } }
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports:
    - { name: http, port: $inbound, targetPort: $app, protocol: HTTP }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: ingressgateway, namespace: istio-system, labels: { istio: ingressgateway } }
spec:
  role: gateway
  serviceAccount: istio-ingressgateway-service-account
  address: 127.0.0.1
---
# hosts "*": wrk sends the URL's host (localhost) as SNI and Host; HAProxy serves any name too.
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: bench-gateway, namespace: default }
spec:
  selector: { istio: ingressgateway }
  servers:
    - port: { number: $gw, name: https, protocol: HTTPS }
      hosts: [ "*" ]
      tls: { mode: SIMPLE, credentialName: sentences-credential }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: age, namespace: default }
spec:
  hosts: [ "*" ]
  gateways: [ bench-gateway ]
  http:
    - route:
        - destination: { host: age, port: { number: $inbound } }
EOF

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    # One trusted upstream and no per-client state on it: every request may ride any idle
    # connection to the sidecar (the gateway pools its mTLS connections the same way).
    http-reuse always
frontend edge
    bind 127.0.0.1:$hap ssl crt $work/edge.pem
    default_backend mesh
backend mesh
    server age 127.0.0.1:$inbound ssl crt $work/haproxy-svid.pem ca-file $work/ca/root-cert.pem verify required
EOF
haproxy -c -q -f "$work/haproxy.cfg"

export OUTRIDER_LOG=warn
"$bin" sample-app --service age --listen "127.0.0.1:$app" >"$work/app.log" 2>&1 &
pids+=($!)
"$bin" run --config "$work/mesh" --workload age --cert-dir "$work/age" --inbound-ip 127.0.0.1 \
    --threads 1 --admin-addr "127.0.0.1:$(free_port)" --metrics-addr "127.0.0.1:$(free_port)" \
    --ready-addr "127.0.0.1:$(free_port)" >"$work/sidecar.log" 2>&1 &
pids+=($!)
"$bin" gateway --config "$work/mesh" --workload ingressgateway --cert-dir "$work/gateway" \
    --credentials-dir "$work/credentials" --listen-ip 127.0.0.1 --threads 1 \
    --admin-addr "127.0.0.1:$(free_port)" --metrics-addr "127.0.0.1:$(free_port)" \
    --ready-addr "127.0.0.1:$(free_port)" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
pids+=($!)
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=($!)

# Both paths answer the app's body through the labs' curl before anything is measured.
answer() { curl -fsS --max-time 5 --cacert "$work/certs/example.com.crt" --resolve "sentences.example.com:$1:127.0.0.1" "https://sentences.example.com:$1/"; }
for port in "$gw" "$hap"; do
    for _ in $(seq 1 100); do answer "$port" >/dev/null 2>&1 && break; sleep 0.1; done
    if ! body=$(answer "$port" 2>&1); then
        echo "bench-gateway: no answer through 127.0.0.1:$port: $body" >&2
        tail -n 20 "$work"/*.log >&2
        exit 1
    fi
    echo "through 127.0.0.1:$port: $body" >&2
done
[[ "$(getent ahosts localhost | awk 'NR==1 {print $1}')" == 127.0.0.1 ]] ||
    { echo "bench-gateway: localhost does not resolve to 127.0.0.1 first" >&2; exit 1; }

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One wrk run against an edge proxy: "<requests/s> <proxy CPU microseconds per request>".
rate() {
    local port=$1 pid=$2 before after out rps requests errors
    shift 2
    before=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c"$conns" -d"${secs}s" "$@" "https://localhost:$port/" 2>&1)
    after=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
    [[ -z "$errors" ]] || echo "  wrk on :$port: $errors" >&2
    echo "  wrk on :$port $*: $(grep -m1 '^    Latency' <<<"$out" | tr -s ' ')" >&2
    awk -v r="$rps" -v n="$requests" -v t=$((after - before)) -v hz="$hz" \
        'BEGIN {printf "%s %.1f\n", r, (n > 0) ? t / hz * 1e6 / n : 0}'
}

# New connections with full handshakes: PROCS processes, each connecting in a loop with a new
# TLS session every time (the chain is verified against the users' root; the labs' server
# certificate has no SAN, so no host name check), one request each; prints connections.
cat >"$work/full.py" <<'EOF'
import os, socket, ssl, sys, time
port, secs, procs, cafile = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
def loop(deadline):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    ok = failed = 0
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(request)
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                ok += 1
            else:
                failed += 1
        except (OSError, ssl.SSLError):
            failed += 1
    return ok, failed
deadline = time.monotonic() + secs
pipes = []
for _ in range(procs):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.write(w, ("%d %d" % loop(deadline)).encode())
        os._exit(0)
    os.close(w)
    pipes.append(r)
ok = failed = 0
for r in pipes:
    a, b = os.read(r, 64).decode().split()
    ok, failed = ok + int(a), failed + int(b)
for _ in pipes:
    os.wait()
if failed:
    print("  full handshakes on :%d: %d failed" % (port, failed), file=sys.stderr)
print("%d" % ok)
EOF
# One full-handshake run: "<connections/s> <proxy CPU microseconds per connection>".
full() {
    local port=$1 pid=$2 before after n
    before=$(cpu_ticks "$pid")
    n=$(python3 "$work/full.py" "$port" "$secs" "$procs" "$work/certs/example.com.crt")
    after=$(cpu_ticks "$pid")
    awk -v n="$n" -v s="$secs" -v t=$((after - before)) -v hz="$hz" \
        'BEGIN {printf "%.1f %.1f\n", n / s, (n > 0) ? t / hz * 1e6 / n : 0}'
}

results="$work/results"
echo "warm-up (pools, sessions to the sidecar)" >&2
rate "$gw" "$gateway_pid" -d2s >/dev/null
rate "$hap" "$haproxy_pid" -d2s >/dev/null
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$rounds"); do
    for proxy in gateway haproxy; do
        if [[ $proxy == gateway ]]; then port=$gw pid=$gateway_pid; else port=$hap pid=$haproxy_pid; fi
        keepalive=$(rate "$port" "$pid")
        close=$(rate "$port" "$pid" -H "Connection: close")
        fresh=$(full "$port" "$pid")
        echo "round $round: $proxy keep-alive $keepalive, new connections (resumed) $close, (full) $fresh" >&2
        echo "$proxy $keepalive $close $fresh" >>"$results"
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
col() { awk -v p="$1" -v c="$2" '$1==p {print $c}' "$results" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", (b > 0) ? a / b : 0}'; }
cpu="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //') ($(nproc) CPUs)"
echo
echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $cpu, Linux $(uname -r); outrider $(git rev-parse --short HEAD 2>/dev/null || echo '?') (release),"
echo "HAProxy $(haproxy -v | head -n1 | cut -d' ' -f3) ($(haproxy -vv | grep -m1 'Running on OpenSSL' | sed 's/.*: //' | cut -d' ' -f1-2)), wrk $(wrk --version 2>&1 | head -n1 | cut -d' ' -f2), $(openssl version | cut -d' ' -f1-2) (RSA 2048 sign: $(openssl speed -seconds 1 rsa2048 2>/dev/null | awk '/^rsa 2048/ {printf "%.0f µs", $4 * 1e6}'));"
echo "wrk -t1 -c$conns -d${secs}s and $procs Python clients for full handshakes, medians of $rounds rounds (gateway and HAProxy alternating); load average $load_before before, $load_after after."
echo
echo "| figure | unit | outrider gateway | HAProxy | gateway / HAProxy |"
echo "| --- | --- | ---: | ---: | ---: |"
ka_g=$(col gateway 2) ka_h=$(col haproxy 2) nc_g=$(col gateway 4) nc_h=$(col haproxy 4)
fh_g=$(col gateway 6) fh_h=$(col haproxy 6)
echo "| HTTPS requests, keep-alive | req/s | $ka_g | $ka_h | $(ratio "$ka_g" "$ka_h") |"
echo "| CPU of the edge proxy per keep-alive request | µs | $(col gateway 3) | $(col haproxy 3) | $(ratio "$(col gateway 3)" "$(col haproxy 3)") |"
echo "| new TLS connections, resumed (wrk; one request each) | conn/s | $nc_g | $nc_h | $(ratio "$nc_g" "$nc_h") |"
echo "| CPU of the edge proxy per resumed connection | µs | $(col gateway 5) | $(col haproxy 5) | $(ratio "$(col gateway 5)" "$(col haproxy 5)") |"
echo "| new TLS connections, full handshakes (RSA 2048; one request each) | conn/s | $fh_g | $fh_h | $(ratio "$fh_g" "$fh_h") |"
echo "| CPU of the edge proxy per full-handshake connection | µs | $(col gateway 7) | $(col haproxy 7) | $(ratio "$(col gateway 7)" "$(col haproxy 7)") |"
# The rounds paired: each round measured both proxies back to back, so the ratio within a
# round is less exposed to the shared machine's load than the ratio of the medians.
paired() {
    awk -v c="$1" '$1=="gateway" {g[++i]=$c} $1=="haproxy" {h[++j]=$c}
        END {for (k = 1; k <= i; k++) if (h[k] > 0) print g[k] / h[k]}' "$results" | median
}
per_round() {
    awk -v c="$1" '$1=="gateway" {g[++i]=$c} $1=="haproxy" {h[++j]=$c}
        END {for (k = 1; k <= i; k++) printf "%s%.2f×", (k > 1 ? ", " : ""), (h[k] > 0 ? g[k] / h[k] : 0)}' "$results"
}
echo
x() { awk '{printf "%.2f×", $1}' <<<"$(paired "$1")"; }
echo "Per round (gateway / HAProxy, the two measured back to back): keep-alive $(per_round 2) (median $(x 2)); resumed connections $(per_round 4) (median $(x 4)); full handshakes $(per_round 6) (median $(x 6))."
cap() { awk -v g="$(col gateway "$1")" -v h="$(col haproxy "$1")" 'BEGIN {printf "%.0f vs %.0f (%.2f×)", 1e6/g, 1e6/h, h/g}'; }
echo "Edge proxy capacity per CPU-second (1 / its CPU per unit): keep-alive requests $(cap 3), resumed connections $(cap 5), full handshakes $(cap 7)."
