#!/usr/bin/env bash
# Build the patched Linux 6.1 of the kexec-py VM tests, cached.
#
#   kernel/build.sh            build (or find) the kernel; print its directory
#   kernel/build.sh --key      print the cache key only
#
# The kernel is Debian's linux-source-6.1 with kernel/patches/ (in the order
# of kernel/patches/series) applied, configured by `make tinyconfig` +
# kernel/config.fragment + `make olddefconfig`, built with `make bzImage`.
# The result (bzImage, vmlinux, System.map, config) lands in
# $KEXEC_PY_KERNEL_CACHE/<key>/, where <key> is a sha256 of the source
# package version, the fragment, the patches, this script and the compiler
# version; a second run with the same inputs prints the directory at once.
#
# Environment:
#   KEXEC_PY_KERNEL_SRC    source tarball (/usr/src/linux-source-6.1.tar.xz)
#   KEXEC_PY_KERNEL_CACHE  cache of built kernels (/var/cache/kexec-py/kernel,
#                          or ~/.cache/kexec-py/kernel when that is not writable)
#   KEXEC_PY_KERNEL_BUILD  scratch tree (/var/cache/kexec-py/kernel-build,
#                          or ~/.cache/kexec-py/kernel-build)
#   KEXEC_PY_KERNEL_JOBS   make -j (2)
#
# Needs (Debian 12): linux-source-6.1 build-essential bc bison flex libelf-dev
# libssl-dev xz-utils util-linux.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=${KEXEC_PY_KERNEL_SRC:-/usr/src/linux-source-6.1.tar.xz}
jobs=${KEXEC_PY_KERNEL_JOBS:-2}
fragment=$here/config.fragment
patches=$here/patches

log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# a directory we can write: the system cache, else the user's
writable_dir() {
    local want=$1 fallback=$2
    if mkdir -p "$want" 2>/dev/null && [ -w "$want" ]; then
        echo "$want"
    else
        mkdir -p "$fallback" && echo "$fallback"
    fi
}
user_cache=${XDG_CACHE_HOME:-$HOME/.cache}/kexec-py
cache=${KEXEC_PY_KERNEL_CACHE:-$(writable_dir /var/cache/kexec-py/kernel "$user_cache/kernel")}
build=${KEXEC_PY_KERNEL_BUILD:-$(writable_dir /var/cache/kexec-py/kernel-build "$user_cache/kernel-build")}

[ -r "$src" ] || die "no kernel source $src (apt-get install linux-source-6.1)"
[ -r "$fragment" ] || die "no $fragment"
[ -r "$patches/series" ] || die "no $patches/series"
mapfile -t series < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$patches/series")
[ "${#series[@]}" -gt 0 ] || die "$patches/series lists no patch"
for p in "${series[@]}"; do
    [ -r "$patches/$p" ] || die "series names $p, which is not in $patches"
done

# --- the key -------------------------------------------------------------------------
source_version() {
    local v
    v=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)
    if [ "$src" = /usr/src/linux-source-6.1.tar.xz ] && [ -n "$v" ]; then
        echo "linux-source-6.1 $v $(stat -c %s "$src")"
    else
        sha256sum "$src" | cut -d' ' -f1
    fi
}
key=$({
    echo "source: $(source_version)"
    echo "compiler: $(${CC:-gcc} --version | head -n1)"
    echo "fragment:"; cat "$fragment"
    echo "build.sh:"; cat "$0"
    for p in "${series[@]}"; do
        echo "patch $p:"; cat "$patches/$p"
    done
} | sha256sum | cut -c1-16)

if [ "${1:-}" = --key ]; then
    echo "$key"
    exit 0
fi

out=$cache/$key
if [ -s "$out/bzImage" ] && [ -s "$out/vmlinux" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

# one build at a time (CI jobs, pytest workers)
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -s "$out/bzImage" ] && [ -s "$out/vmlinux" ]; then
    log "cached (built meanwhile): $out"
    echo "$out"
    exit 0
fi

t0=$(date +%s)
work=$build/$key
# scratch trees of earlier keys (1.5 GB each)
find "$build" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
    -regex '.*/[0-9a-f]{16}' -exec rm -rf {} +
mkdir -p "$work"
log "unpacking $src into $work"
tar -xJf "$src" -C "$work"
tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux*' | head -n1)
[ -n "$tree" ] && [ -f "$tree/Makefile" ] || die "no kernel tree in $src"
obj=$work/obj

for p in "${series[@]}"; do
    log "applying $p"
    patch -d "$tree" -p1 --batch --forward --quiet < "$patches/$p" \
        || die "$p does not apply to $(basename "$tree")"
done

# the kernel build's own make variables, not the caller's
unset ARCH CROSS_COMPILE KCFLAGS KBUILD_OUTPUT LOCALVERSION
mk() { nice -n 10 make -C "$tree" O="$obj" "$@"; }

log "configuring: tinyconfig + $(basename "$fragment") + olddefconfig"
mk -s tinyconfig >/dev/null
"$tree/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment" >/dev/null
mk -s olddefconfig
missing=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) grep -qxF -- "$line" "$obj/.config" || missing+=("$line") ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }; sym=${sym%% *}
            grep -q "^$sym=" "$obj/.config" && missing+=("$line") ;;
    esac
done < "$fragment"
[ "${#missing[@]}" -eq 0 ] || die "the configuration lost: ${missing[*]} (a dependency is missing)"

log "make -j$jobs bzImage (several minutes)"
buildlog=$work/build.log
if ! mk -j"$jobs" bzImage >"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    die "the kernel build failed, log: $buildlog"
fi

tmp=$cache/.tmp-$key
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$obj/arch/x86/boot/bzImage" "$obj/vmlinux" "$obj/System.map" "$tmp/"
cp "$obj/.config" "$tmp/config"
cp "$buildlog" "$tmp/build.log"
{
    echo "key: $key"
    echo "source: $(source_version)"
    echo "kernelrelease: $(mk -s kernelrelease)"
    echo "patches: ${series[*]}"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - t0 )) s"
} > "$tmp/info"
rm -rf "$out"
mv "$tmp" "$out"
rm -rf "$work"
log "built in $(( $(date +%s) - t0 )) s: $out"
echo "$out"
