#!/usr/bin/env bash
# End-to-end test of docker-compose.yml (the captured lab) across real containers: validates
# both compose files (docker-compose.explicit.yml, the explicit-bind lab, only by `config`),
# builds the images, brings the captured lab up, and checks the storyline:
#   0. every pod's init container installed the capture rules (ISTIO_* chains in its nat
#      table) and every sidecar and the ingress gateway are healthy;
#   1. the mesh works (curl sentences through the ingress gateway; the apps call
#      http://age:8080 and http://name:8080, captured by their sidecars) and the CA service
#      issued every sidecar's and the gateway's identity;
#   E. the edge, with the labs' certificates (scripts/lab-certs.sh: their openssl commands):
#      SIMPLE — `curl --cacert example.com.crt --resolve sentences.example.com:<port>:127.0.0.1
#      https://sentences.example.com:<port>/` gets the app's answer and the gateway's /certs
#      lists the served certificate; the HTTP port answers 301 (httpsRedirect); after copying
#      policies/gateway-mutual.yaml over the mounted gateway.yaml, MUTUAL — the same curl with
#      --cert client.example.com.crt --key client.example.com.key is answered, without them
#      refused (`certificate required`), with a client certificate of another CA refused
#      (`unknown ca`), each counted in outrider_gateway_tls_handshakes_total; back to SIMPLE;
#   2. Prometheus shows mutual_tls edges reported by the destination side (the gateway's to
#      sentences among them), and the dashboard (outrider dashboard --prometheus) draws them
#      with padlocks;
#   3. under PERMISSIVE the intruder's plaintext request to http://age:8080 is captured by
#      age's sidecar, answered, and reported as plaintext (connection_security_policy="none");
#   4. after copying policies/age-callers.yaml (AuthorizationPolicy: only sentences may call age)
#      into the mounted folder the intruder is answered 403 RBAC: access denied, sentences still
#      gets its answers, Prometheus shows istio_requests_total to age by response code (200 from
#      sentences over mTLS, 403 from the plaintext intruder) and the dashboard still draws the
#      intruder's plaintext edge;
#   5. end-user authentication: after copying policies/require-jwt.yaml (RequestAuthentication
#      trusting the `auth` service's issuer + the labs' require-jwt AuthorizationPolicy) into
#      the mounted folder, the intruder (no sidecar, as the labs' curl) gets /health_check
#      without a token (200), 403 RBAC: access denied on / without one, 200 with alice's token
#      from auth's token endpoint (requested from the host), 401 Jwt verification fails with a
#      tampered one; sentences still gets its answers; the file is removed again (a tampered
#      token is then merely ignored: 403);
#   6. after copying strict.yaml into the mounted folder the intruder is reset (age's app listens
#      on 0.0.0.0:8080, yet there is no way around its sidecar), the mesh still works and the
#      gateway still answers (it reaches sentences over mTLS: no exception for the edge).
# Every wait has a deadline; the project is always brought down (with its volumes), and the
# containers' logs are printed when something failed. Skips (exit 0) without docker unless
# OUTRIDER_REQUIRE_TOOLS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in docker docker-compose curl python3 openssl; do
    if ! command -v "$tool" >/dev/null; then
        if [[ "${OUTRIDER_REQUIRE_TOOLS:-}" == 1 ]]; then
            echo "compose-e2e: $tool is required (OUTRIDER_REQUIRE_TOOLS=1) but missing" >&2
            exit 1
        fi
        echo "compose-e2e: skipped: $tool is not installed"
        exit 0
    fi
done

started=$SECONDS
step() { printf '[compose-e2e %3ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() { echo "compose-e2e: FAILED: $*" >&2; exit 1; }

step "docker-compose config: both compose files are valid"
for file in docker-compose.yml docker-compose.explicit.yml; do
    timeout 60 docker-compose -f "$file" config -q || fail "$file is not a valid compose file"
done

step "building the images"
timeout 900 scripts/build-image.sh

# A private project: its own name, a copy of the mesh folder (the test switches it to STRICT),
# its own edge certificates and ephemeral host ports on 127.0.0.1.
export COMPOSE_PROJECT_NAME="outrider-e2e-$$"
mesh_dir="$(mktemp -d)"
certs_dir="$(mktemp -d)"
chmod 0755 "$mesh_dir" "$certs_dir"
cp deploy/compose/mesh/*.yaml "$mesh_dir/"
chmod 0644 "$mesh_dir"/*.yaml
export OUTRIDER_MESH_DIR="$mesh_dir" OUTRIDER_LAB_CREDENTIALS="$certs_dir/credentials"
export GATEWAY_HTTPS_PORT="" GATEWAY_HTTP_PORT="" PROMETHEUS_PORT="" DASHBOARD_PORT="" AUTH_PORT=""
compose() { timeout 180 docker-compose --ansi never "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT
    if ((rc != 0)); then
        echo "----- docker-compose ps -----" >&2
        compose ps >&2 || true
        echo "----- container logs -----" >&2
        compose logs --no-color --tail=100 >&2 || true
    fi
    compose down -v --remove-orphans >/dev/null 2>&1 || echo "compose-e2e: docker-compose down failed" >&2
    rm -rf "$mesh_dir" "$certs_dir"
    if ((rc == 0)); then step "passed"; else echo "compose-e2e: failed after $((SECONDS - started))s" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "the labs' edge certificates: scripts/lab-certs.sh (their five openssl commands, verbatim)"
scripts/lab-certs.sh "$certs_dir/certs" "$certs_dir/credentials" >"$certs_dir/lab-certs.log" 2>&1 ||
    { cat "$certs_dir/lab-certs.log" >&2; fail "scripts/lab-certs.sh failed"; }
openssl x509 -in "$certs_dir/certs/sentences.example.com.crt" -noout -text | grep -q "Version: 1 (0x0)" ||
    fail "the labs' server certificate is not X.509 v1 (the case the gateway must serve)"
# A client certificate from another CA, for the `unknown ca` refusal.
(
    cd "$certs_dir/certs"
    openssl req -x509 -sha256 -nodes -days 1 -newkey rsa:2048 -subj '/O=other Inc./CN=other.example' -keyout other.key -out other.crt
    openssl req -out stranger.csr -newkey rsa:2048 -nodes -keyout stranger.key -subj "/CN=client.example.com/O=ACMEorg"
    openssl x509 -req -days 1 -CA other.crt -CAkey other.key -set_serial 2 -in stranger.csr -out stranger.crt
) >"$certs_dir/other-ca.log" 2>&1 || { cat "$certs_dir/other-ca.log" >&2; fail "cannot make the other CA's client certificate"; }
echo "  $(ls "$certs_dir/certs" | tr '\n' ' ')"

step "docker-compose up -d (waits for the sidecars' health checks)"
compose up -d 2>&1 | sed 's/^/  /'

host_port() { compose port "$1" "$2" | tail -n1 | sed 's/.*://'; }
https_port="$(host_port ingressgateway 8443)"
http_port="$(host_port ingressgateway 8080)"
# The labs' curl, verbatim but for the published port: --resolve pins sentences.example.com
# to the host's loopback, --cacert trusts the labs' root; the server certificate is theirs.
sentences="https://sentences.example.com:$https_port/"
edge_curl() { curl -sS --max-time 5 --cacert "$certs_dir/certs/example.com.crt" --resolve "sentences.example.com:$https_port:127.0.0.1" "$@"; }
prometheus="http://127.0.0.1:$(host_port prometheus 9090)"
dashboard="http://127.0.0.1:$(host_port dashboard 20001)"
auth="http://127.0.0.1:$(host_port auth 8080)/auth/realms/mesh"

# wait_for <seconds> <description> <command...>: retries the command until it succeeds.
wait_for() {
    local secs=$1 what=$2
    local deadline=$((SECONDS + secs))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for: $what"
        sleep 1
    done
}

step "0. every pod's init container installed the capture rules; every sidecar is healthy"
# The pod's nat table, read with the init image's own iptables-save in the app's namespace.
nat_table() {
    docker run --rm --network "container:$(compose ps -q "$1")" --user 0:0 --cap-drop ALL \
        --cap-add NET_ADMIN --entrypoint /usr/sbin/xtables-nft-multi \
        "${OUTRIDER_INIT_IMAGE:-outrider-init:dev}" iptables-save -t nat
}
healthy() { [[ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$1")")" == healthy ]]; }
for app in sentences age name-v1 name-v2; do
    nat="$(nat_table "$app")" || fail "cannot read $app's nat table"
    grep -q -- "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" <<<"$nat" &&
        grep -q -- "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" <<<"$nat" &&
        grep -q -- "-A OUTPUT -j ISTIO_OUTPUT" <<<"$nat" ||
        fail "$app's nat table lacks the capture rules: $nat"
    wait_for 60 "$app-sidecar is healthy" healthy "$app-sidecar"
    echo "  $app: ISTIO_* chains installed ($(grep -c '^-A ISTIO_' <<<"$nat") rules), $app-sidecar healthy"
done
wait_for 60 "ingressgateway is healthy" healthy ingressgateway
echo "  ingressgateway healthy (not captured: the edge)"

# A sentence from the sample app, through the gateway (SIMPLE: no client certificate).
is_sentence() { grep -Eq '^[A-Za-z]+ \(v[12]\) is [0-9]+ years old$'; }
sentence_ok() { edge_curl -f "$sentences" | is_sentence; }

step "1. the mesh works: curl --cacert example.com.crt --resolve sentences.example.com:$https_port:127.0.0.1 $sentences"
wait_for 60 "sentences answers a sentence through the gateway" sentence_ok
echo "  $(edge_curl -f "$sentences")"

step "1. the CA service issued every identity (its audit log; each sidecar's /certs)"
ca_log="$(compose logs --no-color ca | sed 's/\x1b\[[0-9;]*m//g')"
for triple in sentences-sidecar:default:sentences age-sidecar:default:age name-v1-sidecar:default:name \
    name-v2-sidecar:default:name ingressgateway:istio-system:istio-ingressgateway-service-account; do
    IFS=: read -r svc ns sa <<<"$triple"
    id="spiffe://cluster.local/ns/$ns/sa/$sa"
    grep 'decision="issued"' <<<"$ca_log" | grep "identity=$id" >/dev/null ||
        fail "the CA's log shows no certificate issued for $id"
    certs="$(compose exec -T "$svc" /outrider fetch http://127.0.0.1:15000/certs)" ||
        fail "$svc: /certs did not answer"
    grep -q "$id" <<<"$certs" || fail "$svc does not hold $id: $certs"
    echo "  $svc holds $id"
done

step "E. the edge, SIMPLE: the labs' curl through the gateway, with their own certificates"
out="$(edge_curl -f "$sentences" 2>&1)" || fail "SIMPLE: $out"
is_sentence <<<"$out" || fail "SIMPLE: not the app's answer: $out"
echo "  curl --cacert example.com.crt --resolve sentences.example.com:$https_port:127.0.0.1 $sentences → $out"
certs="$(compose exec -T ingressgateway /outrider fetch http://127.0.0.1:15000/certs)" ||
    fail "the gateway's /certs did not answer"
grep -q "sentences.example.com" <<<"$certs" || fail "the gateway's /certs does not list the served certificate: $certs"
echo "  the gateway's /certs lists the served certificate (CN=sentences.example.com, issuer example.com)"

step "E. the edge, httpsRedirect: HTTP on the gateway's port 8080 answers 301"
redirect="$(curl -sSI --max-time 5 --resolve "sentences.example.com:$http_port:127.0.0.1" "http://sentences.example.com:$http_port/")" ||
    fail "the HTTP server did not answer: $redirect"
head -n1 <<<"$redirect" | grep -q "^HTTP/1.1 301" || fail "no 301 from the HTTP server: $redirect"
grep -qi "^location: https://sentences.example.com" <<<"$redirect" || fail "the 301 does not point to https://sentences.example.com: $redirect"
echo "  $(head -n1 <<<"$redirect" | tr -d '\r'); $(grep -i '^location:' <<<"$redirect" | tr -d '\r')"

step "E. the edge, MUTUAL: cp policies/gateway-mutual.yaml over the mounted gateway.yaml"
cp deploy/compose/policies/gateway-mutual.yaml "$mesh_dir/gateway.yaml"
chmod 0644 "$mesh_dir/gateway.yaml"
client_cert=(--cert "$certs_dir/certs/client.example.com.crt" --key "$certs_dir/certs/client.example.com.key")
stranger_cert=(--cert "$certs_dir/certs/stranger.crt" --key "$certs_dir/certs/stranger.key")
refused_without_cert() { ! out="$(edge_curl "$sentences" 2>&1)" && grep -qi "certificate required" <<<"$out"; }
wait_for 30 "without a client certificate the gateway refuses (certificate required)" refused_without_cert
echo "  no client certificate → $(edge_curl "$sentences" 2>&1 | head -n1 || true)"
out="$(edge_curl -f "${client_cert[@]}" "$sentences" 2>&1)" || fail "MUTUAL with the client certificate: $out"
is_sentence <<<"$out" || fail "MUTUAL with the client certificate: not the app's answer: $out"
echo "  --cert client.example.com.crt --key client.example.com.key → $out"
! out="$(edge_curl "${stranger_cert[@]}" "$sentences" 2>&1)" || fail "a client certificate of another CA got through: $out"
grep -qi "unknown ca" <<<"$out" || fail "a client certificate of another CA: $out"
echo "  a client certificate of another CA → $(head -n1 <<<"$out")"
gateway_metrics() { compose exec -T ingressgateway /outrider fetch http://127.0.0.1:15090/stats/prometheus; }
metrics="$(gateway_metrics)" || fail "the gateway's metrics did not answer"
for outcome in ok certificate_required unknown_ca; do
    grep "^outrider_gateway_tls_handshakes_total{" <<<"$metrics" | grep -q "outcome=\"$outcome\"" ||
        fail "outrider_gateway_tls_handshakes_total has no outcome=\"$outcome\": $(grep outrider_gateway_tls <<<"$metrics")"
done
grep "^outrider_gateway_tls_handshakes_total{" <<<"$metrics" | sed 's/^/  /'

step "E. the edge back to SIMPLE: cp policies/gateway-simple.yaml"
cp deploy/compose/policies/gateway-simple.yaml "$mesh_dir/gateway.yaml"
wait_for 30 "SIMPLE again: answered without a client certificate" sentence_ok
echo "  $(edge_curl -f "$sentences")"

step "2. Prometheus shows mutual_tls edges reported by the destination"
query='sum by (source_workload, destination_workload) (istio_tcp_connections_opened_total{reporter="destination",connection_security_policy="mutual_tls"})'
edges() {
    curl -fsS --max-time 5 -G "$prometheus/api/v1/query" --data-urlencode "query=$query" |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print("\n".join(sorted(m["metric"].get("source_workload","?")+" -> "+m["metric"].get("destination_workload","?") for m in r)))'
}
mesh_edges_seen() {
    for _ in 1 2 3 4 5; do edge_curl -f "$sentences" >/dev/null || true; done
    local e
    e="$(edges)"
    grep -qx "sentences -> age" <<<"$e" && grep -qx "sentences -> name-v1" <<<"$e" &&
        grep -qx "sentences -> name-v2" <<<"$e" && grep -qx "ingressgateway -> sentences" <<<"$e"
}
wait_for 90 "mutual_tls edges ingressgateway -> sentences -> age, name-v1, name-v2 in Prometheus" mesh_edges_seen
edges | sed 's/^/  mutual_tls: /'

step "2. the dashboard draws padlocks on those edges (outrider dashboard --prometheus)"
dashboard_edges() {
    curl -fsS --max-time 5 "$dashboard/api/graph" |
        python3 -c 'import json,sys; g=json.load(sys.stdin); print("\n".join(sorted(e["source"]+" -> "+e["destination"]+" "+e["security"] for e in g["edges"])))'
}
dashboard_padlocks() {
    local e
    e="$(dashboard_edges)"
    grep -qx "sentences -> age mtls" <<<"$e" && grep -qx "sentences -> name-v1 mtls" <<<"$e" &&
        grep -qx "sentences -> name-v2 mtls" <<<"$e" && grep -qx "ingressgateway -> sentences mtls" <<<"$e"
}
wait_for 60 "the dashboard's mtls edges ingressgateway -> sentences -> age, name-v1, name-v2" dashboard_padlocks
dashboard_edges | sed 's/^/  dashboard: /'
# Not `curl | grep -q`: grep -q exits at the first match, curl then fails writing the rest of
# the page (exit 23), and pipefail fails the check at random.
page="$(curl -fsS --max-time 5 "$dashboard/")" || fail "the dashboard page did not load"
grep -q "<svg\|api/graph" <<<"$page" || fail "the dashboard page has no graph"

# prom_series <query> <label...>: one line per series, the labels' values then the value.
prom_series() {
    local q=$1
    shift
    curl -fsS --max-time 5 -G "$prometheus/api/v1/query" --data-urlencode "query=$q" |
        python3 -c 'import json,sys; ls=sys.argv[1:]; r=json.load(sys.stdin)["data"]["result"]; print("\n".join(sorted(" ".join([m["metric"].get(l,"?") for l in ls]+[m["value"][1]]) for m in r)))' "$@"
}
intruder_fetch() { compose exec -T intruder /outrider fetch --timeout 3s http://age:8080/ 2>&1; }

step "3. PERMISSIVE: the intruder's plaintext request to age gets through, reported as plaintext"
out="$(intruder_fetch)" || fail "the intruder was refused under PERMISSIVE: $out"
echo "  intruder: $out"
plain_query='sum by (source_workload, response_code) (istio_requests_total{reporter="destination",destination_workload="age",connection_security_policy="none"})'
plaintext_seen() { prom_series "$plain_query" source_workload response_code | grep -q "^unknown 200 "; }
wait_for 60 "age's plaintext requests from the intruder (unknown, 200, none) in Prometheus" plaintext_seen
prom_series "$plain_query" source_workload response_code | sed 's/^/  plaintext to age: /'

step "4. AuthorizationPolicy: cp policies/age-callers.yaml into the mounted folder (only sentences may call age)"
cp deploy/compose/policies/age-callers.yaml "$mesh_dir/"
chmod 0644 "$mesh_dir/age-callers.yaml"
# `outrider fetch` prints the answer's status and body, and exits 1 on a non-2xx answer.
intruder_denied() { ! out="$(intruder_fetch)" && grep -q "^403 RBAC: access denied" <<<"$out"; }
wait_for 30 "the intruder is answered 403 RBAC: access denied under PERMISSIVE" intruder_denied
echo "  intruder: $(intruder_fetch | head -n1 || true)"

step "4. AuthorizationPolicy: sentences still gets its answers from age"
for _ in 1 2 3 4 5; do
    sentence_ok || fail "sentences failed under the AuthorizationPolicy: $(edge_curl "$sentences" 2>&1)"
done
echo "  $(edge_curl -f "$sentences")"

step "4. Prometheus: istio_requests_total to age by response code"
codes_query='sum by (response_code) (istio_requests_total{reporter="destination",destination_workload="age"})'
sources_query='sum by (response_code, source_workload, connection_security_policy) (istio_requests_total{reporter="destination",destination_workload="age"})'
codes_seen() {
    local c s
    c="$(prom_series "$codes_query" response_code)"
    s="$(prom_series "$sources_query" response_code source_workload connection_security_policy)"
    grep -q "^200 " <<<"$c" && grep -q "^403 " <<<"$c" &&
        grep -q "^200 sentences mutual_tls " <<<"$s" && grep -q "^403 unknown none " <<<"$s" &&
        ! grep -q "^403 sentences " <<<"$s"
}
wait_for 60 "a 200 series (sentences, mutual_tls) and a 403 series (the intruder, none) for age in Prometheus" codes_seen
prom_series "$codes_query" response_code | sed 's/^/  response_code /'
prom_series "$sources_query" response_code source_workload connection_security_policy | sed 's/^/  by source: /'

step "4. the dashboard still draws the intruder's plaintext edge to age (its requests are denied, still counted)"
intruder_edge() {
    local e
    e="$(dashboard_edges)" && grep -qx "unknown -> age plaintext" <<<"$e"
}
wait_for 60 "the dashboard's edge unknown -> age plaintext" intruder_edge
dashboard_edges | grep "age" | sed 's/^/  dashboard: /'

step "5. end-user authentication: cp policies/require-jwt.yaml into the mounted folder"
cp deploy/compose/policies/require-jwt.yaml "$mesh_dir/"
chmod 0644 "$mesh_dir/require-jwt.yaml"
# The labs' token request, from the host to auth's published port; the token says
# iss: http://auth:8080/auth/realms/mesh (auth runs with --issuer), the issuer age trusts.
alice_token() {
    curl -fsS --max-time 5 -d username=alice -d password=alice -d grant_type=password \
        -d client_id=frontend "$auth/protocol/openid-connect/token" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
wait_for 60 "auth's token endpoint answers alice" alice_token
token="$(alice_token)"
# The signature with its last 10 characters replaced: still base64url, no longer valid.
tampered="$(sed 's/.\{10\}$/AAAAAAAAAA/' <<<"$token")"
[[ "$tampered" != "$token" ]] || fail "could not tamper with the token"
jwt_fetch() { # <path> [token]
    local auth_header=()
    [[ -z "${2:-}" ]] || auth_header=(--header "Authorization: Bearer $2")
    compose exec -T intruder /outrider fetch --timeout 3s "${auth_header[@]}" "http://age:8080$1" 2>&1
}
# age's sidecar fetches auth's JWKS off the request path; until it has it, every token fails.
alice_allowed() { out="$(jwt_fetch / "$token")" && grep -Eq "^200 [0-9]+$" <<<"$out"; }
wait_for 60 "alice's token is accepted by age's sidecar" alice_allowed
echo "  intruder → age /, alice's token: $(jwt_fetch / "$token")"
out="$(jwt_fetch /health_check)" || fail "/health_check without a token was refused: $out"
grep -q "^200 ok" <<<"$out" || fail "/health_check without a token: $out"
echo "  intruder → age /health_check, no token: $(grep -m1 "^[0-9]" <<<"$out")"
! out="$(jwt_fetch /)" || fail "/ without a token got through: $out"
grep -q "^403 RBAC: access denied" <<<"$out" || fail "/ without a token: $out"
echo "  intruder → age /, no token: $(grep -m1 "^[0-9]" <<<"$out")"
! out="$(jwt_fetch / "$tampered")" || fail "a tampered token got through: $out"
grep -q "^401 Jwt verification fails" <<<"$out" || fail "a tampered token: $out"
echo "  intruder → age /, a tampered token: $(grep -m1 "^[0-9]" <<<"$out")"
for _ in 1 2 3; do
    sentence_ok || fail "sentences failed under require-jwt: $(edge_curl "$sentences" 2>&1)"
done
echo "  sentences (allowed by age-callers, no token): $(edge_curl -f "$sentences")"
rm "$mesh_dir/require-jwt.yaml"
# Without a RequestAuthentication a token is not looked at: the tampered one is just denied.
tampered_ignored() { ! out="$(jwt_fetch / "$tampered")" && grep -q "^403 RBAC: access denied" <<<"$out"; }
wait_for 30 "require-jwt.yaml removed: a tampered token is ignored (403)" tampered_ignored
echo "  removed require-jwt.yaml: a tampered token → $(jwt_fetch / "$tampered" | grep -m1 "^[0-9]" || true)"

step "6. STRICT: cp policies/strict.yaml into the mounted folder"
cp deploy/compose/policies/strict.yaml "$mesh_dir/peer-authentication.yaml"
intruder_reset() { ! out="$(intruder_fetch)" && grep -qi "reset" <<<"$out"; }
wait_for 30 "the intruder is reset under STRICT" intruder_reset
echo "  intruder: $(intruder_fetch || true)"

step "6. STRICT: the mesh still works, through the gateway (mTLS to sentences: no exception for the edge)"
for _ in 1 2 3 4 5; do
    sentence_ok || fail "sentences failed under STRICT: $(edge_curl "$sentences" 2>&1)"
done
echo "  $(edge_curl -f "$sentences")"
step "storyline checked in $((SECONDS - started))s"
