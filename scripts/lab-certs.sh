#!/usr/bin/env bash
# The labs' edge certificates, made with the labs' own openssl commands (verbatim), and laid
# out as the gateway's credential directory, as
#   kubectl create -n istio-system secret generic sentences-credential \
#     --from-file=tls.key=sentences.example.com.key --from-file=tls.crt=sentences.example.com.crt \
#     --from-file=ca.crt=example.com.crt
# does in the labs:
#   <certs dir>/        example.com.{crt,key} (the users' root CA), sentences.example.com.{crt,key,csr}
#                       (the server's), client.example.com.{crt,key,csr} (a client's, for MUTUAL)
#   <credentials dir>/sentences-credential/   tls.crt, tls.key, ca.crt  (what the gateway mounts)
#
# Usage: scripts/lab-certs.sh [--force] [certs dir] [credentials dir]
#   defaults: deploy/compose/certs deploy/compose/credentials (both git-ignored but a README)
# Without --force an existing example.com.crt in the certs dir is kept (and the credential
# directory laid out again from the files there). Keys are 0600: docker-compose.yml runs the
# gateway with CAP_DAC_READ_SEARCH so that it reads them whoever owns them on the host.
# Needs openssl. The labs' `openssl x509 -req` makes X.509 v1 certificates (no extensions):
# outrider's gateway serves and verifies them as Envoy does (README, "The edge").
set -euo pipefail
cd "$(dirname "$0")/.."

force=
if [[ "${1:-}" == --force ]]; then
    force=1
    shift
fi
certs="${1:-deploy/compose/certs}"
credentials="${2:-deploy/compose/credentials}"
command -v openssl >/dev/null || { echo "lab-certs: openssl is missing (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$certs" "$credentials"
if [[ -n "$force" || ! -e "$certs/example.com.crt" ]]; then
    (
        cd "$certs"
        rm -f example.com.* sentences.example.com.* client.example.com.*
        # The labs' five commands, verbatim.
        openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt
        openssl req -out sentences.example.com.csr -newkey rsa:2048 -nodes -keyout sentences.example.com.key -subj "/CN=sentences.example.com/O=ACMEorg"
        openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 0 -in sentences.example.com.csr -out sentences.example.com.crt
        openssl req -out client.example.com.csr -newkey rsa:2048 -nodes -keyout client.example.com.key -subj "/CN=client.example.com/O=ACMEorg"
        openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 -in client.example.com.csr -out client.example.com.crt
        chmod 0600 ./*.key
    )
fi

# The secret `sentences-credential`, laid out as kubelet mounts a secret: the files live in a
# timestamped directory, `..data` links to it, and tls.crt/tls.key/ca.crt link through `..data`.
# Running this again (e.g. after --force) swaps `..data` in one rename, as kubelet updates a
# mounted secret: a gateway polling the directory never sees a half-written pair, and serves
# the new certificate from its next handshake, without a restart.
dir="$credentials/sentences-credential"
mkdir -p "$dir"
chmod 0755 "$dir"
if [[ -e "$dir/tls.crt" && ! -L "$dir/..data" ]]; then
    echo "lab-certs: $dir holds files not laid out by this script; move them away first" >&2
    exit 1
fi
version="..$(date -u +%Y_%m_%d_%H_%M_%S).$$"
mkdir "$dir/$version"
install -m 0644 "$certs/sentences.example.com.crt" "$dir/$version/tls.crt"
install -m 0600 "$certs/sentences.example.com.key" "$dir/$version/tls.key"
install -m 0644 "$certs/example.com.crt" "$dir/$version/ca.crt"
chmod 0755 "$dir/$version"
old="$(readlink "$dir/..data" || true)"
ln -s "$version" "$dir/..data_tmp"
mv -T "$dir/..data_tmp" "$dir/..data"
for f in tls.crt tls.key ca.crt; do
    [[ -L "$dir/$f" ]] || ln -s "..data/$f" "$dir/$f"
done
[[ -z "$old" || "$old" == "$version" ]] || rm -rf "${dir:?}/$old"

echo "lab-certs: $certs/ holds the labs' files (example.com.crt, client.example.com.{crt,key}, ...);"
echo "lab-certs: $dir/ holds tls.crt, tls.key, ca.crt (the gateway's credentialName: sentences-credential)"
