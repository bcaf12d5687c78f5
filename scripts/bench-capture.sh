#!/usr/bin/env bash
# What transparent capture costs: the same two "pods" (network namespaces joined by a veth
# pair), the same app and the same sidecars, once with explicit listeners (the client calls
# its sidecar's outbound bind 127.0.0.1:9181) and once captured (`outrider iptables` in both
# pods, `run --capture`, the client calls the server pod's IP:8080 unchanged). wrk in the
# client pod measures keep-alive requests/s and new connections/s (`Connection: close`);
# the modes alternate, ROUNDS times each, and the medians are printed side by side. A third
# mode, explicit+nat, installs the rules but leaves the server port out of them: the explicit
# path with conntrack and the nat hooks active, i.e. what the kernel's part of capture costs.
#
# Usage (root; ip, iptables, setpriv, wrk): scripts/bench-capture.sh [outrider binary]
#   PROTOCOL=HTTP|TCP (default HTTP; the server port's declared protocol)
#   SECS=10 ROUNDS=3 CONNS=16
# Benchmarks are not part of `cargo test`; results go to BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="$(realpath "${1:-target/release/outrider}")"
protocol="${PROTOCOL:-HTTP}"
secs="${SECS:-10}"
rounds="${ROUNDS:-3}"
conns="${CONNS:-16}"
for tool in ip iptables setpriv wrk; do
    command -v "$tool" >/dev/null || { echo "bench-capture: $tool is missing" >&2; exit 1; }
done
[[ -x "$bin" ]] || { echo "bench-capture: no binary at $bin (cargo build --release)" >&2; exit 1; }
((EUID == 0)) || { echo "bench-capture: needs root (network namespaces, netfilter)" >&2; exit 1; }

tag="ob$$"
a="$tag-a" b="$tag-b"
work="$(mktemp -d)"
chmod 0755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$a"
ip netns add "$b"
ip -n "$a" link set lo up
ip -n "$b" link set lo up
ip -n "$a" link add eth0 type veth peer name eth0 netns "$b"
ip -n "$a" addr add 10.79.0.1/24 dev eth0
ip -n "$b" addr add 10.79.0.2/24 dev eth0
ip -n "$a" link set eth0 up
ip -n "$b" link set eth0 up

as_proxy=(setpriv --reuid 1337 --regid 1337 --clear-groups)
"$bin" ca init --dir "$work/ca" --trust-domain cluster.local >/dev/null
for sa in client age; do
    "$bin" ca issue --ca-dir "$work/ca" --namespace default --service-account "$sa" --out "$work/$sa" >/dev/null
    chown -R 1337:1337 "$work/$sa"
done
mkdir "$work/mesh"
# The same ports in both modes: the app on 127.0.0.1:9080, the service port 8080.
cat >"$work/mesh/mesh.yaml" <<EOF
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: client, namespace: default, labels: { app: client } }
spec:
  serviceAccount: client
  address: 10.79.0.1
  capture: true
  outbound:
    - { bind: "127.0.0.1:9181", to: "age.default:8080" }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age } }
spec:
  serviceAccount: age
  address: 10.79.0.2
  capture: true
  ports:
    - { name: app, port: 8080, targetPort: 9080, protocol: $protocol }
EOF
chown -R 1337:1337 "$work/mesh"

ip netns exec "$b" "$bin" sample-app --service age --listen 127.0.0.1:9080 >/dev/null 2>&1 &
pids+=($!)

# Starts both sidecars (explicit or captured) and waits until both are ready.
sidecars=()
start() {
    local extra=()
    [[ "$1" == captured ]] && extra=(--capture)
    for pod in "$a:client" "$b:age"; do
        local ns="${pod%%:*}" workload="${pod##*:}"
        ip netns exec "$ns" "${as_proxy[@]}" "$bin" run --config "$work/mesh" --workload "$workload" \
            --cert-dir "$work/$workload" "${extra[@]}" >"$work/$workload-$1.log" 2>&1 &
        sidecars+=($!)
        pids+=($!)
    done
    for ns in "$a" "$b"; do
        for _ in $(seq 1 100); do
            ip netns exec "$ns" curl -sf -o /dev/null http://127.0.0.1:15021/healthz/ready && break
            sleep 0.1
        done
    done
}
stop() {
    for pid in "${sidecars[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    sidecars=()
}
# CPU seconds (user + system) the two sidecars have used so far.
hz=$(getconf CLK_TCK)
sidecar_cpu() {
    local total=0 pid
    for pid in "${sidecars[@]}"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
# One wrk run: "<requests/s> <sidecar CPU microseconds per request>".
rate() {
    local before after out rps requests
    before=$(sidecar_cpu)
    out=$(ip netns exec "$a" wrk -t1 -c"$conns" -d"${secs}s" "$@" 2>/dev/null)
    after=$(sidecar_cpu)
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v r="$rps" -v n="$requests" -v t=$((after - before)) -v hz="$hz" \
        'BEGIN {printf "%s %.1f\n", r, (n > 0) ? t / hz * 1e6 / n : 0}'
}
measure() {
    local mode="$1" url
    case "$mode" in
    captured)
        ip netns exec "$a" "$bin" iptables >/dev/null
        ip netns exec "$b" "$bin" iptables >/dev/null
        url=http://10.79.0.2:8080/
        ;;
    explicit+nat)
        # The same rules, with the server's port left out, so nothing is redirected: what
        # conntrack and the nat hooks cost by themselves (the kernel's share of capture).
        ip netns exec "$a" "$bin" iptables >/dev/null
        ip netns exec "$b" "$bin" iptables -d 15090,15021,15020,8080 >/dev/null
        url=http://127.0.0.1:9181/
        ;;
    *) url=http://127.0.0.1:9181/ ;;
    esac
    start "${mode%+nat}"
    rate "$url" >/dev/null # warm-up: pools, sessions
    keepalive=$(rate "$url")
    close=$(rate -H "Connection: close" "$url")
    stop
    if [[ "$mode" != explicit ]]; then
        ip netns exec "$a" "$bin" iptables --cleanup >/dev/null
        ip netns exec "$b" "$bin" iptables --cleanup >/dev/null
    fi
    echo "$mode $keepalive $close"
}

results="$work/results"
for round in $(seq 1 "$rounds"); do
    for mode in explicit explicit+nat captured; do
        line=$(measure "$mode")
        echo "round $round: $line"
        echo "$line" >>"$results"
    done
done
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
printf '\n%s port, %s connections, %ss per run, median of %s rounds (same run); CPU = both sidecars, user+system, per request:\n' "$protocol" "$conns" "$secs" "$rounds"
printf '%-12s %17s %12s %13s %12s\n' mode "keep-alive req/s" "CPU us/req" "new conn/s" "CPU us/conn"
for mode in explicit explicit+nat captured; do
    col() { awk -v m="$mode" -v c="$1" '$1==m {print $c}' "$results" | median; }
    printf '%-12s %17s %12s %13s %12s\n' "$mode" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)"
done
