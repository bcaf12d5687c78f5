#!/usr/bin/env bash
# Builds the container images the docker-compose file uses:
#   outrider:dev             the static outrider binary FROM scratch (user 1337)
#   outrider-prometheus:dev  Debian's prometheus binary + its shared libraries FROM scratch
# Usage: scripts/build-image.sh        (needs cargo, docker, and the Debian package `prometheus`)
# OUTRIDER_IMAGE / OUTRIDER_PROMETHEUS_IMAGE override the tags.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${OUTRIDER_IMAGE:-outrider:dev}"
prom_image="${OUTRIDER_PROMETHEUS_IMAGE:-outrider-prometheus:dev}"
target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-target}"

# A fully static binary (static-pie): runs in an empty root (nothing else is in the image).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target"
bin="$target_dir/$target/release/outrider"
if ldd "$bin" 2>/dev/null | grep -q '=>'; then
    echo "build-image: $bin is not static:" >&2
    ldd "$bin" >&2
    exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
# docker build, quiet unless it fails (the legacy builder warns about buildx on every build).
build() {
    if ! docker build -q "$@" >"$ctx/build.log" 2>&1; then
        cat "$ctx/build.log" >&2
        return 1
    fi
}

# outrider:dev
mkdir -p "$ctx/outrider/rootfs/etc" "$ctx/outrider/rootfs/var/lib/outrider/ca" \
    "$ctx/outrider/rootfs/var/run/outrider/identity" "$ctx/outrider/rootfs/var/run/outrider/bootstrap"
cp "$bin" "$ctx/outrider/outrider"
strip "$ctx/outrider/outrider" 2>/dev/null || true
printf 'root:x:0:0:root:/:/sbin/nologin\noutrider:x:1337:1337:outrider:/var/lib/outrider:/sbin/nologin\n' \
    >"$ctx/outrider/rootfs/etc/passwd"
printf 'root:x:0:\noutrider:x:1337:\n' >"$ctx/outrider/rootfs/etc/group"
build -t "$image" -f deploy/image/Dockerfile "$ctx/outrider"

# outrider-prometheus:dev
prom="$(command -v prometheus || true)"
if [[ -z "$prom" ]]; then
    echo "build-image: the prometheus binary is missing (apt-get install prometheus)" >&2
    exit 1
fi
root="$ctx/prometheus/rootfs"
mkdir -p "$root/bin" "$root/etc/prometheus" "$ctx/prometheus/data"
cp "$prom" "$root/bin/prometheus"
# The binary's shared libraries (Debian links it against glibc), at their own paths.
for lib in $(ldd "$prom" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp deploy/compose/prometheus.yml "$root/etc/prometheus/prometheus.yml"
printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/prometheus:/sbin/nologin\n' >"$root/etc/passwd"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
build -t "$prom_image" -f deploy/image/prometheus.Dockerfile "$ctx/prometheus"

for i in "$image" "$prom_image"; do
    echo "built $i ($(docker image inspect -f '{{.Size}}' "$i" | awk '{printf "%.1f MB", $1/1e6}'))"
done
