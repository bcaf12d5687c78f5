#!/bin/sh
# Regenerates the committed seed corpora in fuzz/seeds/<target>/ from real inputs: ClientHellos
# captured from outrider's rustls client, curl and openssl; SPIFFE IDs; SVIDs, CSRs and tokens
# made by `outrider ca`; the repository's YAML examples. Needs openssl (curl is optional).
# Run from anywhere: fuzz/make-seeds.sh. Review `git status fuzz/seeds` afterwards.
#
# The SVID seeds must be valid at harness::VERIFY_AT_UNIX (fuzz/harness.rs): they are issued
# for ten years, so move that constant to a moment after the new notBefore when re-running.
set -eu
cd "$(dirname "$0")/.."
seeds=fuzz/seeds
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --quiet --bin outrider --example fuzz_seeds
bin=target/debug/outrider

rm -rf "$seeds"
mkdir -p "$seeds/sniff" "$seeds/spiffe_id" "$seeds/svid_der" "$seeds/svid_tbs" \
    "$seeds/config" "$seeds/ca_request"

# --- PKI: a CA, two SVIDs (one with a DNS SAN), a token --------------------------------------
"$bin" ca init --dir "$work/ca" --trust-domain cluster.local >/dev/null
"$bin" ca issue --ca-dir "$work/ca" --namespace default --service-account sleep \
    --out "$work/sleep" --ttl 87600h >/dev/null
"$bin" ca issue --ca-dir "$work/ca" --namespace default --service-account age \
    --dns age.default.svc --out "$work/age" --ttl 87600h >/dev/null
token=$("$bin" ca token --dir "$work/ca" --namespace default --service-account sleep --ttl 87600h)

# --- sniff: real ClientHellos, as one read and split into small reads -------------------------
target/debug/examples/fuzz_seeds "$seeds/sniff" "$work/sleep" "$work/sidecar.csr"
for f in "$seeds"/sniff/*.bin; do
    # The first byte is the read size: 7-byte reads split the record header and the hello.
    { printf '\007'; tail -c +2 "$f"; } >"${f%.bin}-split7.bin"
done
printf '\000GET / HTTP/1.1\r\nHost: age\r\n\r\n' >"$seeds/sniff/http1.bin"
printf '\000PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' >"$seeds/sniff/h2-preface.bin"
printf '\000' >"$seeds/sniff/closed.bin"

# --- spiffe_id -------------------------------------------------------------------------------
i=0
for id in spiffe://cluster.local/ns/default/sa/sleep spiffe://cluster.local \
    SPIFFE://example.org/a/b.c/d-e_f spiffe://td/ns/a/sa/b/extra spiffe://a.b-c_d/x \
    spiffe://cluster.local/ns/./sa/x spiffe://Cluster.local/x spiffe://td/a//b \
    spiffe://td/a/ 'spiffe://td/a?b' spiffe://user@td:8080/x spiffe://td/%41 https://td/x; do
    printf '%s' "$id" >"$seeds/spiffe_id/$i.txt"
    i=$((i + 1))
done

# --- svid_der: the DER and PEM of real SVIDs and of the root ---------------------------------
for who in sleep age; do
    openssl x509 -in "$work/$who/cert-chain.pem" -outform DER -out "$seeds/svid_der/$who.der"
    cp "$work/$who/cert-chain.pem" "$seeds/svid_der/$who.pem"
done
openssl x509 -in "$work/ca/root-cert.pem" -outform DER -out "$seeds/svid_der/root.der"

# --- svid_tbs: the TBSCertificate of each SVID (the first element of the certificate) --------
for who in sleep age; do
    openssl asn1parse -inform DER -in "$seeds/svid_der/$who.der" -strparse 4 -noout \
        -out "$seeds/svid_tbs/$who.der" 2>/dev/null ||
        openssl asn1parse -inform DER -in "$seeds/svid_der/$who.der" -strparse 4 \
            -out "$seeds/svid_tbs/$who.der" >/dev/null
done

# --- config: the repository's YAML --------------------------------------------------------------
for f in examples/mesh/*.yaml deploy/compose/mesh/*.yaml deploy/compose/policies/*.yaml; do
    dir=$(basename "$(dirname "$f")")
    cp "$f" "$seeds/config/$dir-$(basename "$f")"
done
cat examples/mesh/mesh.yaml deploy/compose/policies/strict.yaml >"$seeds/config/mesh-strict-combined.yaml"

# --- ca_request: `<credential>\n<CSR>` ----------------------------------------------------------
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ec.key" \
    -subj /CN=sleep -addext subjectAltName=URI:spiffe://cluster.local/ns/default/sa/sleep \
    -out "$work/ec.csr" 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout "$work/rsa.key" -subj /CN=rsa \
    -out "$work/rsa.csr" 2>/dev/null
openssl req -new -newkey ed25519 -nodes -keyout "$work/ed.key" -subj /CN=ed \
    -out "$work/ed.csr" 2>/dev/null
openssl req -in "$work/ec.csr" -outform DER -out "$work/ec.csr.der"
# The token's claims (its payload, base64url-decoded), signed again by the target's own key.
claims=$(printf '%s' "$token" | cut -d. -f2 | tr '_-' '/+')
while [ $((${#claims} % 4)) -ne 0 ]; do claims="$claims="; done
claims=$(printf '%s' "$claims" | openssl base64 -d -A)
for csr in sidecar.csr ec.csr rsa.csr ed.csr ec.csr.der; do
    { printf 'Bearer %s\n' "$token"; cat "$work/$csr"; } >"$seeds/ca_request/bearer-$csr"
    { printf 'claims:%s\n' "$claims"; cat "$work/$csr"; } >"$seeds/ca_request/claims-$csr"
done
printf 'claims:{"iss":"outrider-ca","sub":"system:serviceaccount:default","aud":"istio-ca","exp":99999999999,"iat":0}\n' \
    >"$seeds/ca_request/claims-bad-subject"
printf 'claims:{"iss":"outrider-ca","sub":"system:serviceaccount:default:sleep","aud":["istio-ca","x"],"exp":99999999999,"iat":0,"nbf":1}\n' \
    >"$seeds/ca_request/claims-aud-list"

ls -R "$seeds" | head -80
