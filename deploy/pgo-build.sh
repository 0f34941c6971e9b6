#!/usr/bin/env bash
# deploy/pgo-build.sh — the release binary the container image ships, built with
# profile-guided optimisation (PGO). Output: target/pgo/pix-auth-proxy.
#
#   1. an instrumented release build (-Cprofile-generate) in target/pgo/gen;
#   2. its training: `bench/run.sh train` runs it against an mTLS nginx "PSP" and token
#      endpoint (HTTP/1.1-only and h2 upstream; GETs and 16 KiB / 1 MiB POSTs at 16, 32 and
#      256 app connections), about a minute;
#   3. the counts merged (llvm-profdata) into target/pgo/pix-auth-proxy.profdata;
#   4. `cargo build --release --locked` with -Cprofile-use in target/pgo/use.
#
# Why: with the counts, LLVM lays out the request path's hot code together and its cold
# code (errors, set-up) apart; on the small-GET benchmark the proxied request costs 24 %
# fewer instructions and half the instruction-cache misses (BENCHMARKS.md). Code the
# training does not reach (the webhook direction, the shared cache, token fetches: all
# far from the per-request rate) is optimised for size instead of speed.
#
# Needs what `bench/run.sh train` needs (root, nginx with libnginx-mod-http-echo, wrk,
# curl, openssl: it installs the missing ones from Debian, as it does for a benchmark, unless
# PGO_NO_INSTALL=1), 127.0.0.1 ports PGO_PORT_BASE (18700) to +17, and an llvm-profdata
# that reads the raw profiles of rustc's LLVM: PGO_PROFDATA, else the one of rustup's
# llvm-tools component, else the newest /usr/lib/llvm-N (N >= 19; Debian's llvm-19 is
# installed when none is there). Raw profiles it cannot read, or a merged profile without
# counts, stop the build with an error: a binary is never shipped built from no counts.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=$REPO/target/pgo
log() { printf '[pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

find_profdata() {
    local p sysroot host
    if [[ -n ${PGO_PROFDATA:-} ]]; then
        [[ -x $PGO_PROFDATA ]] || die "PGO_PROFDATA=$PGO_PROFDATA is not executable"
        echo "$PGO_PROFDATA"
        return
    fi
    sysroot=$(rustc --print sysroot)
    host=$(rustc -vV | sed -n 's/^host: //p')
    p=$sysroot/lib/rustlib/$host/bin/llvm-profdata
    if [[ -x $p ]]; then
        echo "$p"
        return
    fi
    p=$(ls -d /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | sort -V | tail -n 1 || true)
    local major=${p#/usr/lib/llvm-}
    if [[ -n $p && ${major%%/*} -ge 19 ]]; then
        echo "$p"
        return
    fi
    if [[ ${PGO_NO_INSTALL:-0} != 1 ]] && ((EUID == 0)) && command -v apt-get >/dev/null; then
        log "apt-get install llvm-19 (for llvm-profdata)"
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends llvm-19; } >&2 ||
            die "apt-get install llvm-19 failed"
        echo /usr/lib/llvm-19/bin/llvm-profdata
        return
    fi
    die "no llvm-profdata: set PGO_PROFDATA, add rustup's llvm-tools component, or install llvm-19"
}

profdata=$(find_profdata)
log "llvm-profdata: $profdata ($("$profdata" --version 2>&1 | grep -m1 -i version || true))"

raw=$OUT/raw
rm -rf "$raw" "$OUT/pix-auth-proxy" "$OUT/pix-auth-proxy.profdata"
mkdir -p "$raw"

log "1/4 instrumented build (target/pgo/gen)"
CARGO_TARGET_DIR=$OUT/gen RUSTFLAGS="-Cprofile-generate=$raw" \
    cargo build --release --locked --bin pix-auth-proxy
# Build scripts were instrumented too and ran during the build: only the binary's counts count.
rm -rf "$raw" && mkdir -p "$raw"

log "2/4 training (bench/run.sh train)"
install=()
[[ ${PGO_NO_INSTALL:-0} == 1 ]] && install=(--no-install)
rm -rf "$OUT/train"
BENCH_WORKDIR=$OUT/train PORT_BASE=${PGO_PORT_BASE:-18700} UP_PROTOS="h2 http1" \
    PROXY_BIN=$OUT/gen/release/pix-auth-proxy "$REPO/bench/run.sh" train "${install[@]}"
compgen -G "$raw/*.profraw" >/dev/null || die "the training wrote no profile to $raw"

log "3/4 merge"
"$profdata" merge -o "$OUT/pix-auth-proxy.profdata" "$raw"/*.profraw ||
    die "$profdata cannot merge rustc's raw profiles (an llvm-profdata older than rustc's LLVM?)"
# rustc reads a profile whatever its counts: make sure the training counted something.
summary=$("$profdata" show "$OUT/pix-auth-proxy.profdata")
functions=$(sed -n 's/^Total functions: //p' <<<"$summary")
max_count=$(sed -n 's/^Maximum function count: //p' <<<"$summary")
((${functions:-0} > 0 && ${max_count:-0} > 0)) ||
    die "the merged profile holds no counts (functions: ${functions:-?}, maximum count: ${max_count:-?})"
log "profile: $functions functions, the hottest entered $max_count times"

log "4/4 optimised build (target/pgo/use)"
# Cargo tracks RUSTFLAGS, not the file they name: a path of the profile's own hash makes new
# counts rebuild every crate, instead of leaving the dependencies built from older ones.
sum=$(sha256sum "$OUT/pix-auth-proxy.profdata" | cut -c1-16)
rm -f "$OUT"/use-*.profdata
cp "$OUT/pix-auth-proxy.profdata" "$OUT/use-$sum.profdata"
CARGO_TARGET_DIR=$OUT/use RUSTFLAGS="-Cprofile-use=$OUT/use-$sum.profdata" \
    cargo build --release --locked --bin pix-auth-proxy
cp "$OUT/use/release/pix-auth-proxy" "$OUT/pix-auth-proxy"
"$OUT/pix-auth-proxy" --version >/dev/null
log "built $OUT/pix-auth-proxy"
