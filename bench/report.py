#!/usr/bin/env python3
"""Turns bench/run.sh raw results into Markdown. Standard library only.

  report.py oha-line OHA_JSON
      one line "requests duration_us p50_us p99_us errors" from oha's JSON output
  report.py table RESULTS_TSV CLK_TCK TOKEN_TSV TOKEN_TTL "PEERS" CONNS CONNS_HIGH CONNS_1M [PROXY_CPU]
      one table per (upstream mode, hog pass) in RESULTS_TSV's order (medians across
      repetitions, req/s ratio paired per repetition against the best peer of that
      repetition), a summary list under each with the missed targets marked, and the
      token endpoint check
  report.py soak SAMPLES_TSV WRK_LOG TOKEN_TSV TOKEN_TTL
      the soak samples and the RSS verdict
"""

import csv
import json
import math
import statistics
import sys
from collections import defaultdict

TARGET_LABEL = {
    "direct": "direct mTLS, no proxy (oha)",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "envoy": "Envoy",
    "pix": "**pix-auth-proxy** (default ALPN)",
    "pix-h1": "**pix-auth-proxy** (`--upstream-http1-only`)",
}
OURS = ("pix", "pix-h1")
MIB = 1024.0
RSS_TARGET_MIB = 20.0
# The scenarios at CONNS_HIGH app connections, which the RSS target applies to.
AT_CONNS_HIGH = ("c256", "p256")
# Renewal starts at refresh-ratio (0.66) of the lifetime with up to -10% jitter.
EARLIEST_RENEWAL = 0.66 * 0.9


def oha_line(path):
    with open(path) as f:
        d = json.load(f)
    codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
    requests = sum(codes.values())
    bad_status = sum(v for k, v in codes.items() if not 200 <= k < 400)
    # Requests still in flight at the deadline are cut by oha; they are not failures.
    errors = sum(
        v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k
    )
    lat = d.get("latencyPercentiles") or {}
    total_s = d["summary"]["total"]
    print(
        requests,
        int(total_s * 1e6),
        int((lat.get("p50") or 0) * 1e6),
        int((lat.get("p99") or 0) * 1e6),
        bad_status + errors,
    )


def fmt_int(x):
    return f"{x:,.0f}"


def fmt_ms(us):
    return f"{us / 1000:.2f}"


def read_tokens(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4:
                    rows.append((parts[0], int(parts[1]), int(parts[2]), parts[3]))
    except FileNotFoundError:
        pass
    return rows


def token_lines(path, ttl):
    """One line per pix-auth-proxy variant: token endpoint hits per process lifetime."""
    per = defaultdict(list)
    for name, hits, life, metric in read_tokens(path):
        per[name].append((hits, life, metric))
    out = []
    for name, rows in per.items():
        bad = []
        for hits, life, metric in rows:
            allowed = 1 + math.floor(life / (EARLIEST_RENEWAL * ttl))
            if not 1 <= hits <= allowed:
                bad.append(f"{hits} hits in {life} s (at most {allowed} expected)")
        hits = [r[0] for r in rows]
        lives = [r[1] for r in rows]
        metrics = [r[2] for r in rows]
        if len(rows) == 1:
            allowed = 1 + math.floor(lives[0] / (EARLIEST_RENEWAL * ttl))
            what = f"**{hits[0]}** in its {lives[0]} s process lifetime (at most {allowed} expected)"
        else:
            what = (
                f"**{sum(hits)}** over {len(rows)} process lifetimes of {min(lives)}–{max(lives)} s "
                f"(per lifetime: {', '.join(map(str, hits))})"
            )
        out.append(
            f"- Token endpoint hits by {TARGET_LABEL[name]}: {what}; token lifetime {ttl} s, renewal "
            f"from ~{EARLIEST_RENEWAL:.0%} of it, so one hit per lifetime shorter than "
            f"{EARLIEST_RENEWAL * ttl:.0f} s; the proxy's own `token_fetch_total{{result=\"success\"}}`: "
            f"{', '.join(metrics)}. " + ("**ok**" if not bad else "**NOT ok**: " + "; ".join(bad))
        )
    return out


PROTO_TITLE = {
    "h2": "upstream h2 + http/1.1 (ALPN)",
    "http1": "upstream http/1.1 only",
}


def target_label(t, proto):
    if t == "pix":
        if proto == "http1":
            return "**pix-auth-proxy** (default ALPN; ALPN fallback: http/1.1 upstream)"
        return "**pix-auth-proxy** (default ALPN: h2 upstream)"
    return TARGET_LABEL.get(t, t)


def short_label(t, proto):
    if t == "pix":
        return "pix (ALPN fallback)" if proto == "http1" else "pix (ALPN: h2)"
    if t == "pix-h1":
        return "pix-h1 (`--upstream-http1-only`)"
    return TARGET_LABEL.get(t, t)


def read_results(path, clk_tck):
    """rows grouped by (up_proto, hog_pct) -> (scenario, target) -> list of runs."""
    groups = {}
    with open(path) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            key = (r.get("up_proto", "h2"), int(r.get("hog_pct", "0") or 0))
            g = groups.setdefault(key, {"runs": defaultdict(list), "order_s": [], "order_t": []})
            s, t = r["scenario"], r["target"]
            if s not in g["order_s"]:
                g["order_s"].append(s)
            if t not in g["order_t"]:
                g["order_t"].append(t)
            req = int(r["requests"])
            dur = int(r["duration_us"]) / 1e6
            cpu = None if r["cpu_ticks"] == "NA" else int(r["cpu_ticks"]) * 1e6 / clk_tck / max(req, 1)
            busy = None if r["cpu_ticks"] == "NA" else 100.0 * int(r["cpu_ticks"]) / clk_tck / dur
            hwm = None if r["hwm_kb"] == "NA" else int(r["hwm_kb"]) / MIB
            hog = None
            if r.get("hog_ticks", "NA") not in ("NA", "") and int(r["hog_wall_us"]) > 0:
                hog = 100.0 * int(r["hog_ticks"]) / clk_tck / (int(r["hog_wall_us"]) / 1e6)
            g["runs"][(s, t)].append(
                dict(
                    rep=int(r["rep"]),
                    rps=req / dur if dur else 0.0,
                    p50=int(r["p50_us"]),
                    p99=int(r["p99_us"]),
                    cpu=cpu,
                    busy=busy,
                    hwm=hwm,
                    conns=int(r["upstream_conns"]),
                    errors=int(r["errors"]),
                    hog=hog,
                )
            )
    return groups


def table(results, clk_tck, tokens, ttl, peers, conns, conns_high, conns_1m, proxy_cpu="1"):
    clk_tck = float(clk_tck)
    ttl = int(ttl)
    peers = peers.split()
    scen_label = {
        "get": f"small GET, {conns} conns",
        "post16k": f"16 KiB POST, {conns} conns",
        "c256": f"small GET, {conns_high} conns",
        "p256": f"16 KiB POST, {conns_high} conns",
        "post1m": f"1 MiB POST (streamed), {conns_1m} conns",
    }
    hog_scen_label = {
        "get": f"GET, {conns} conns",
        "post16k": f"16 KiB POST, {conns} conns",
        "c256": f"GET, {conns_high} conns",
        "p256": f"16 KiB POST, {conns_high} conns",
        "post1m": f"1 MiB POST, {conns_1m} conns",
    }
    groups = read_results(results, clk_tck)
    rank = {t: i for i, t in enumerate(["direct", "nginx", "haproxy", "envoy", "pix", "pix-h1"])}
    reps = max((len(v) for g in groups.values() for v in g["runs"].values()), default=0)
    print(
        f"Medians of {reps} repetition(s). CPU µs/req, proxy core % and peak RSS are the proxy's own "
        "processes (nginx: master + worker), each a fresh process per scenario and repetition; "
        "proxy core % below ~95 means the proxy was not the bottleneck (the other core, load "
        "generator + upstream, was). Upstream conns = TCP connections the upstream accepted from "
        "the target during warm-up + measurement (median; the direct baseline runs oha twice, so 2 × conns). "
        "Errors = socket errors + non-2xx responses, summed over repetitions. "
        "**÷ best peer (paired)**: per repetition, the target's req/s divided by the highest req/s "
        f"among the peers ({', '.join(TARGET_LABEL.get(p, p) for p in peers)}) in that same repetition; "
        "the median of those ratios. nginx, HAProxy and Envoy speak HTTP/1.1 to the upstream in every mode."
    )
    print()
    # Tables in the order the run produced them: per mode, its scenarios, then its hog pass.
    all_misses = []
    for (proto, hog_pct), g in groups.items():
        all_misses += group_table(proto, hog_pct, g, peers, scen_label, hog_scen_label, conns_high, proxy_cpu, rank)

    ours_c256 = [(proto, t) for (proto, hog_pct), g in groups.items() if hog_pct == 0
               for t in g["order_t"] if t in OURS and (("c256", t) in g["runs"])]
    if ours_c256:
        parts = []
        for proto, t in ours_c256:
            g = groups[(proto, 0)]
            parts.append(f"{short_label(t, proto)} in {PROTO_TITLE.get(proto, proto)}: "
                         f"{statistics.median(x['conns'] for x in g['runs'][('c256', t)]):.0f}")
        print(
            f"- Upstream protocol, seen from the upstream: connections opened at {conns_high} client connections "
            "(HTTP/1.1 needs one per request in flight, h2 multiplexes them over a few): " + "; ".join(parts)
        )
    for line in token_lines(tokens, ttl):
        print(line)
    print()
    print(f"**Targets missed over all tables: {len(all_misses)}** (each listed, marked MISSED, under its table).")


def group_table(proto, hog_pct, g, peers, scen_label, hog_scen_label, conns_high, proxy_cpu, rank):
    runs, order_s = g["runs"], g["order_s"]
    order_t = sorted(g["order_t"], key=lambda t: rank.get(t, 99))
    title = PROTO_TITLE.get(proto, proto)

    def med(s, t, k):
        vals = [x[k] for x in runs.get((s, t), []) if x[k] is not None]
        return statistics.median(vals) if vals else None

    def label(s):
        if hog_pct:
            return f"{hog_scen_label.get(s, s)}, with a ~{hog_pct} % CPU hog on the proxy core"
        return scen_label.get(s, s)

    def paired(s, t):
        """median over repetitions of (t's req/s) / (best peer's req/s in that repetition)."""
        mine = {x["rep"]: x["rps"] for x in runs.get((s, t), [])}
        ratios = []
        for rep, rps in mine.items():
            best = [x["rps"] for p in peers for x in runs.get((s, p), []) if x["rep"] == rep]
            if best and max(best) > 0:
                ratios.append(rps / max(best))
        return statistics.median(ratios) if ratios else None

    def p99_pairs(s, t, bp):
        """(repetitions where t's p99 was at or below bp's in that same repetition, repetitions)."""
        theirs = {x["rep"]: x["p99"] for x in runs.get((s, bp), []) if x["p99"] is not None}
        pairs = [(x["p99"], theirs[x["rep"]]) for x in runs.get((s, t), [])
                 if x["p99"] is not None and x["rep"] in theirs]
        return sum(1 for a, b in pairs if a <= b), len(pairs)

    if hog_pct:
        print(f"### {title}: interference pass, ~{hog_pct} % CPU hog on the proxy core (core {proxy_cpu})")
        print()
        shares = [x["hog"] for v in runs.values() for x in v if x["hog"] is not None]
        if shares:
            print(
                f"A busy-loop process pinned to core {proxy_cpu}, busy ~{hog_pct} % of each 10 ms slice, "
                "started after each warm-up and stopped after each timed run; its real share from "
                f"/proc/PID/stat (utime+stime over the run): **hog took {statistics.median(shares):.1f} % of core "
                f"{proxy_cpu}** (median of {len(shares)} runs, {min(shares):.1f}–{max(shares):.1f} %)."
            )
            print()
    else:
        print(f"### {title}")
        print()
    if proto == "http1":
        print(
            "The upstream listener has no `http2`, so its ALPN offers only http/1.1: `pix` (default ALPN) "
            "falls back to HTTP/1.1 (*ALPN fallback*), `pix-h1` runs with `--upstream-http1-only`."
        )
        print()
    hog_col = " hog % of core |" if hog_pct else ""
    print(
        "| Scenario | Target | req/s | p50 ms | p99 ms | CPU µs/req | proxy core % | peak RSS MiB "
        f"| upstream conns | errors | req/s ÷ best peer (paired) |{hog_col}"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if hog_pct else ""))
    for s in order_s:
        peer_rps = {t: med(s, t, "rps") for t in peers if (s, t) in runs}
        best_peer = max(peer_rps, key=peer_rps.get) if peer_rps else None
        for t in order_t:
            if (s, t) not in runs:
                continue
            cpu, busy, hwm = med(s, t, "cpu"), med(s, t, "busy"), med(s, t, "hwm")
            errors = sum(x["errors"] for x in runs[(s, t)])
            r = None if t == "direct" else paired(s, t)
            ratio = "—" if r is None else f"{r:.2f}×" + (" (best peer)" if t == best_peer else "")
            hog_cell = ""
            if hog_pct:
                h = med(s, t, "hog")
                hog_cell = f" {'—' if h is None else f'{h:.1f}'} |"
            print(
                f"| {label(s)} | {target_label(t, proto)} | {fmt_int(med(s, t, 'rps'))} "
                f"| {fmt_ms(med(s, t, 'p50'))} | {fmt_ms(med(s, t, 'p99'))} "
                f"| {'—' if cpu is None else f'{cpu:.1f}'} | {'—' if busy is None else f'{busy:.0f}'} "
                f"| {'—' if hwm is None else f'{hwm:.1f}'} "
                f"| {med(s, t, 'conns'):.0f} | {errors} | {ratio} |{hog_cell}"
            )
    print()

    # Summary: per scenario, the best peer (highest median req/s) and ours, with the misses marked.
    ours = [t for t in order_t if t in OURS]
    misses = []
    if ours:
        print(
            f"Summary ({title}{f', ~{hog_pct} % hog' if hog_pct else ''}): best peer = the peer with the highest "
            "median req/s. **MISSED** marks paired req/s ratio < 1.00, p99 above the best peer's, CPU µs/req "
            f"above the best peer's, errors > 0, or (GET or 16 KiB POST at {conns_high} conns) peak RSS above "
            f"{RSS_TARGET_MIB:.0f} MiB."
        )
        print()
    for s in order_s if ours else []:
        peer_rps = {t: med(s, t, "rps") for t in peers if (s, t) in runs}
        if not peer_rps:
            continue
        bp = max(peer_rps, key=peer_rps.get)

        def stats(t):
            cpu, hwm = med(s, t, "cpu"), med(s, t, "hwm")
            return (
                f"{fmt_int(med(s, t, 'rps'))} req/s, p99 {fmt_ms(med(s, t, 'p99'))} ms, "
                f"CPU {'—' if cpu is None else f'{cpu:.1f}'} µs/req, peak RSS {'—' if hwm is None else f'{hwm:.1f}'} MiB, "
                f"errors {sum(x['errors'] for x in runs[(s, t)])}, upstream conns {med(s, t, 'conns'):.0f}"
            )

        print(f"- **{label(s)}** — best peer {TARGET_LABEL.get(bp, bp)}: {stats(bp)}")
        for t in ours:
            if (s, t) not in runs:
                continue
            r = paired(s, t)
            miss = []
            if r is not None and r < 1.0:
                miss.append(f"req/s {r:.3f}× best peer")
            if med(s, t, "p99") > med(s, bp, "p99"):
                miss.append(f"p99 {fmt_ms(med(s, t, 'p99'))} > {fmt_ms(med(s, bp, 'p99'))} ms")
            c, cb = med(s, t, "cpu"), med(s, bp, "cpu")
            if c is not None and cb is not None and c > cb:
                miss.append(f"CPU {c:.1f} > {cb:.1f} µs/req")
            errs = sum(x["errors"] for x in runs[(s, t)])
            if errs > 0:
                miss.append(f"{errs} errors")
            hwm = med(s, t, "hwm")
            if s in AT_CONNS_HIGH and hwm is not None and hwm > RSS_TARGET_MIB:
                miss.append(f"peak RSS {hwm:.1f} > {RSS_TARGET_MIB:.0f} MiB")
            verdict = ("**MISSED**: " + "; ".join(miss)) if miss else "ok"
            ratio = "—" if r is None else f"{r:.2f}×"
            won, n = p99_pairs(s, t, bp)
            print(f"  - {short_label(t, proto)}: {ratio} best peer (paired), {stats(t)}, "
                  f"p99 at or below the best peer's in {won} of {n} repetitions — {verdict}")
            for m in miss:
                misses.append(f"{title}{f' + ~{hog_pct} % hog' if hog_pct else ''} / {label(s)} / "
                              f"{short_label(t, proto)}: {m}")
    if ours:
        print()
        print(f"Missed in this table: {len(misses)}.")
        print()

    if not hog_pct and "post1m" in order_s and "get" in order_s:
        parts = []
        for t in order_t:
            a, b = med("get", t, "hwm"), med("post1m", t, "hwm")
            if a is not None and b is not None:
                parts.append(f"{short_label(t, proto)} {a:.1f} → {b:.1f} MiB ({b - a:+.1f})")
        if parts:
            print(
                f"- Streaming ({title}): peak RSS, small GETs → 1 MiB POSTs "
                "(buffering the bodies in flight would add ~1 MiB per connection): " + "; ".join(parts)
            )
            print()
    return misses


def soak(samples, wrk_log, tokens, ttl):
    rows = []
    with open(samples) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            rows.append({k: int(v) for k, v in r.items()})
    print("| t (s) | RSS MiB | peak RSS MiB | CPU % | req/s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['t_s']} | {r['rss_kb'] / MIB:.1f} | {r['hwm_kb'] / MIB:.1f} "
            f"| {r['cpu_pct']} | {fmt_int(r['req_per_s'])} |"
        )
    print()
    res = None
    with open(wrk_log) as f:
        for line in f:
            if line.startswith("BENCH_RESULT"):
                res = dict(kv.split("=") for kv in line.split()[1:])
    if res:
        req, dur = int(res["requests"]), int(res["duration_us"]) / 1e6
        errs = sum(int(res[k]) for k in res if k.startswith("err_"))
        print(
            f"- Load (wrk): {fmt_int(req)} requests in {dur:.0f} s = {fmt_int(req / dur)} req/s, "
            f"p50 {fmt_ms(int(res['p50_us']))} ms, p99 {fmt_ms(int(res['p99_us']))} ms, errors {errs}"
        )
    loaded = [r for r in rows if r["t_s"] > 0 and r["req_per_s"] > 0]
    if len(loaded) >= 2:
        # Baseline: the first sample under load at or after 30 s (warm-up done), if any
        # sample follows it; otherwise the first sample under load.
        last = loaded[-1]
        base = next((r for r in loaded[:-1] if r["t_s"] >= 30), loaded[0])
        growth = (last["rss_kb"] - base["rss_kb"]) / MIB
        pct = 100.0 * growth / (base["rss_kb"] / MIB)
        flat = growth <= max(1.0, 0.05 * base["rss_kb"] / MIB)
        print(
            f"- RSS under load from t={base['t_s']} s to t={last['t_s']} s: {base['rss_kb'] / MIB:.1f} → "
            f"{last['rss_kb'] / MIB:.1f} MiB ({growth:+.1f} MiB, {pct:+.1f}%); peak over the run "
            f"{max(r['hwm_kb'] for r in rows) / MIB:.1f} MiB: "
            + ("**flat** (growth ≤ max(1 MiB, 5%))" if flat else "**GROWING**")
        )
    for line in token_lines(tokens, int(ttl)):
        print(line)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "oha-line":
        oha_line(*args)
    elif mode == "table":
        table(*args)
    elif mode == "soak":
        soak(*args)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
