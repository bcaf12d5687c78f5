#!/usr/bin/env bash
# Builds the container images the docker-compose files use:
#   outrider:dev             the static outrider binary FROM scratch (user 1337)
#   outrider-init:dev        outrider:dev + the iptables programs, their shared libraries and
#                            xtables extensions (root): the captured lab's init containers
#   outrider-prometheus:dev  Debian's prometheus binary + its shared libraries FROM scratch
# Usage: scripts/build-image.sh   (needs cargo, docker, and the Debian packages `prometheus`
# and `iptables`)
# OUTRIDER_IMAGE / OUTRIDER_INIT_IMAGE / OUTRIDER_PROMETHEUS_IMAGE override the tags.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${OUTRIDER_IMAGE:-outrider:dev}"
init_image="${OUTRIDER_INIT_IMAGE:-outrider-init:dev}"
prom_image="${OUTRIDER_PROMETHEUS_IMAGE:-outrider-prometheus:dev}"
target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-target}"

# The iptables programs the init image carries, checked before the long build. Both backends
# go in: nf_tables (xtables-nft-multi, the image's default) and legacy ip_tables
# (xtables-legacy-multi). Both work with this host's kernel; nf_tables is the default because
# Docker here (Debian's iptables alternative) writes its own rules with it, also inside every
# container's namespace (the embedded DNS's DOCKER_OUTPUT chain), so the pod keeps one nat
# table instead of two evaluated side by side, and because it needs only CAP_NET_ADMIN (legacy
# also needs CAP_NET_RAW for its raw socket). The extensions are dlopen'ed from the
# compiled-in XTABLES_LIBDIR: the whole directory is copied (2 MB), so any rule
# `outrider iptables` may install (owner, multiport, REDIRECT, tcp, udp, ...) finds its module.
xtables_dir=/usr/lib/x86_64-linux-gnu/xtables
iptables_bins=(/usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi)
for b in "${iptables_bins[@]}" "$xtables_dir/libxt_owner.so" "$xtables_dir/libxt_REDIRECT.so"; do
    if [[ ! -e "$b" ]]; then
        echo "build-image: $b is missing: the init image needs the iptables programs (apt-get install iptables)" >&2
        exit 1
    fi
done

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

# outrider-init:dev: outrider:dev plus the iptables programs, at their own paths.
root="$ctx/init/rootfs"
mkdir -p "$root/usr/sbin" "$root/run" "$(dirname "$root$xtables_dir")"
for b in "${iptables_bins[@]}"; do
    cp "$b" "$root$b"
    # The binary's shared libraries (libxtables, libnftnl, libmnl / libip4tc, libip6tc, glibc).
    for lib in $(ldd "$b" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
cp -a "$xtables_dir" "$root$xtables_dir"
# The extensions link libxtables and glibc (already there); check none needs more for the rules.
for ext in "$root$xtables_dir"/libxt_{standard,tcp,udp,multiport,owner,REDIRECT}.so; do
    for lib in $(ldd "$ext" | grep -o '/[^ ]*'); do
        [[ -e "$root$lib" ]] || { echo "build-image: $ext needs $lib, not in the init image" >&2; exit 1; }
    done
done
build -t "$init_image" --build-arg BASE="$image" -f deploy/image/init.Dockerfile "$ctx/init"

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

for i in "$image" "$init_image" "$prom_image"; do
    echo "built $i ($(docker image inspect -f '{{.Size}}' "$i" | awk '{printf "%.1f MB", $1/1e6}'))"
done
