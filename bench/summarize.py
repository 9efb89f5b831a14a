#!/usr/bin/python3
"""Summarize bench/run.sh's raw.jsonl: medians, min–max, ratios to HAProxy (row b), the sweep
for the plot, logins/s, RSS per idle session, the Prosody overhead and the issue-6 goals.

Standard library only (run with Debian's /usr/bin/python3). Usage: summarize.py RAW OUTDIR
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

raw, out = Path(sys.argv[1]), Path(sys.argv[2])
recs = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()]
meta = next((r for r in recs if r["section"] == "meta"), {})
desc = {r["row"]: r["desc"] for r in recs if r["section"] == "row"}
na = {r["row"]: r["na"] for r in recs if r["section"] == "row" and r["na"]}
ok = lambda r: "error" not in r["r"] and r["r"].get("ok", 1) > 0

by = defaultdict(list)
for r in recs:
    if r["section"] not in ("meta", "row"):
        by[(r["section"], r["row"])].append(r)


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def span(xs, nd=0):
    return f"{fmt(min(xs), nd)}–{fmt(max(xs), nd)}" if xs else "–"


lines = []
w = lines.append
# x: the realistic policy plus the anti-spam rules (issue 12); shown when it ran.
rows = [r for r in "abcdefg"] + (["x"] if "x" in desc else [])


def table(section, title):
    w(f"### {title}\n")
    w("| row | setup | echoes/s (median) | min–max | MB/s | ratio to (b) | p50 ms | p99 ms | p999 ms "
      "| proxy cores | stanzas/s per proxy core | errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = med([x["r"]["stanzas_per_s"] for x in by[(section, "b")] if ok(x)])
    res = {}
    for row in rows:
        runs = [x for x in by[(section, row)] if ok(x)]
        if not runs:
            reason = na.get(row) or ("n/a: every run failed" if by[(section, row)] else "n/a: not run")
            w(f"| {row} | {desc.get(row, '')} | {reason} | | | | | | | | | |")
            continue
        sps = [x["r"]["stanzas_per_s"] for x in runs]
        mbs = [x["r"]["mb_per_s"] for x in runs]
        # Every echo crosses a proxy twice (client → backend, backend → client).
        per_core = [2 * x["r"]["stanzas_per_s"] / x["proxy_cores"] for x in runs if x["proxy_cores"] > 0]
        q = lambda k: med([x["r"][k] / 1000 for x in runs])
        ratio = f"{med(sps) / base:.2f}×" if base else "–"
        errors = sum(x["r"].get("errors", 0) for x in runs)
        res[row] = dict(sps=med(sps), mbs=med(mbs), p99=q("p99_us"), per_core=med(per_core))
        w(f"| {row} | {desc.get(row, '')} | {fmt(med(sps))} | {span(sps)} | {fmt(med(mbs), 1)} ({span(mbs, 1)}) | {ratio} "
          f"| {fmt(q('p50_us'), 2)} | {fmt(q('p99_us'), 2)} | {fmt(q('p999_us'), 2)} | {fmt(med([x['proxy_cores'] for x in runs]), 2)} "
          f"| {fmt(med(per_core))} | {errors} |")
    n = len(by[(section, "a")]) or len(by[(section, "d")])
    w(f"\n{n} runs per row, rows alternated; an echo is one stanza client → backend and its echo back.\n")
    return res


w(f"Mode `{meta.get('mode')}`, {meta.get('date')}, commit {meta.get('commit')}"
  f"{' (working tree of crates/ had uncommitted changes)' if meta.get('dirty') else ''}, "
  f"{meta.get('cpus')} × {meta.get('cpu_model')}, open-files limit {meta.get('fd_limit')}, "
  f"{meta.get('elapsed_s')} s in all; {meta.get('stanzawall')}.\n")
w(f"Workload: {meta.get('sessions')} sessions over direct TLS, window {meta.get('window')} stanzas in flight per "
  f"session, mix 8 messages (≈270-byte stanzas with a URL in the body) : 1 presence : 1 iq ping, "
  f"{meta.get('duration')} s measured per run.\n")
main = table("table", "Throughput, small stanzas")
bulk = table("bulk", "Throughput, 4 KB message bodies (10 sessions)")

# Sweep (plot data).
sweep = defaultdict(dict)
for (section, row), xs in by.items():
    if section == "sweep":
        for x in xs:
            if ok(x):
                sweep[x["connections"]][row] = (x["r"]["stanzas_per_s"], x["r"]["p99_us"] / 1000)
srows = [r for r in "abcde" if any(r in v for v in sweep.values())]
with open(out / "sweep.tsv", "w") as f:
    f.write("connections\t" + "\t".join(f"{desc.get(r, r)} stanzas/s\t{desc.get(r, r)} p99 ms" for r in srows) + "\n")
    for n in sorted(sweep):
        f.write(f"{n}\t" + "\t".join(f"{sweep[n][r][0]:.0f}\t{sweep[n][r][1]:.3f}" if r in sweep[n] else "NaN\tNaN"
                                     for r in srows) + "\n")
w("### Throughput and p99 vs connections\n")
w("| connections | " + " | ".join(f"({r}) echoes/s · p99 ms" for r in srows) + " |")
w("|---:|" + "---:|" * len(srows))
for n in sorted(sweep):
    w(f"| {n:,} | " + " | ".join(f"{sweep[n][r][0]:,.0f} · {sweep[n][r][1]:.2f}" if r in sweep[n] else "–"
                                for r in srows) + " |")
w("\n![throughput and p99 vs connections](throughput.png)\n")

w("### Full logins per second\n")
w("Each: TCP connect, full TLS 1.3 handshake (no resumption), stream, SASL PLAIN, bind, close; 32 workers.\n")
w("| row | setup | logins/s | p50 ms | p99 ms | proxy cores | errors |")
w("|---|---|---:|---:|---:|---:|---:|")
for row in "abcdes":
    xs = [x for x in by[("handshakes", row)] if "error" not in x["r"]]
    if not xs:
        if row in na:
            w(f"| {row} | {desc.get(row, '')} | {na[row]} | | | | |")
        continue
    x = xs[0]
    w(f"| {row} | {desc.get(row, '')} | {fmt(x['r']['handshakes_per_s'])} | {fmt(x['r']['p50_us'] / 1000, 2)} "
      f"| {fmt(x['r']['p99_us'] / 1000, 2)} | {x['proxy_cores']:.2f} | {x['r']['errors']} |")

w("\n### First stream header after TLS\n")
w("Client header (written right after the TLS handshake, Nagle on) to the first bytes of the answer; "
  "bench/first_header.py.\n")
w("| row | setup | median ms | p90 ms | max ms |")
w("|---|---|---:|---:|---:|")
for row in "abcds":
    for x in by[("first_header", row)]:
        r = x["r"]
        if "error" in r:
            w(f"| {row} | {desc.get(row, '')} | {r['error']} | | |")
        else:
            w(f"| {row} | {desc.get(row, '')} | {r['median_ms']} | {r['p90_ms']} | {r['max_ms']} |")

w("\n### RSS per idle TLS session (client and backend legs, fresh proxy process)\n")
w("| row | setup | sessions | proxy RSS before → after | KiB per session |")
w("|---|---|---:|---:|---:|")
rss = {}
for row in "bcde":
    for x in sorted(by[("rss", row)], key=lambda x: x["sessions"]):
        per = (x["after_kb"] - x["base_kb"]) / x["ok"] if x["ok"] else None
        rss[(row, x["sessions"])] = per
        w(f"| {row} | {desc.get(row, '')} | {x['ok']:,} of {x['sessions']:,} | {x['base_kb'] / 1024:.1f} → "
          f"{x['after_kb'] / 1024:.1f} MiB | {fmt(per, 1)} |")
w(f"\nThe open-files hard limit here is {meta.get('fd_limit')} and cannot be raised without CAP_SYS_RESOURCE; a "
  "proxied session holds two descriptors, so about 9,900 sessions per proxy process is the maximum on this machine.\n")

w("### In front of real Prosody\n")
w("10 sessions (10 accounts), messages to the own full JID, which Prosody routes back. Without the gateway the "
  "client speaks direct TLS to Prosody itself; with it, stanzawall terminates TLS and talks plaintext to Prosody.\n")
w("| load | Prosody direct TLS | through stanzawall | change |")
w("|---|---:|---:|---:|")
pros = {}
for section, label in (("prosody", "flat out: echoes/s"), ("prosody-rate", "1,000 msg/s: p99 ms")):
    pd = [x for x in by[(section, "pd")] if ok(x)]
    pg = [x for x in by[(section, "pg")] if ok(x)]
    if not pd or not pg:
        continue
    if section == "prosody":
        a, b = med([x["r"]["stanzas_per_s"] for x in pd]), med([x["r"]["stanzas_per_s"] for x in pg])
        pros["loss"] = 1 - b / a
        w(f"| {label} | {fmt(a)} ({span([x['r']['stanzas_per_s'] for x in pd])}) | {fmt(b)} "
          f"({span([x['r']['stanzas_per_s'] for x in pg])}) | {(b / a - 1) * 100:+.1f}% |")
        a99, b99 = med([x["r"]["p99_us"] / 1000 for x in pd]), med([x["r"]["p99_us"] / 1000 for x in pg])
        w(f"| flat out: p99 ms | {a99:.2f} | {b99:.2f} | {b99 - a99:+.2f} ms |")
    else:
        a, b = med([x["r"]["p99_us"] / 1000 for x in pd]), med([x["r"]["p99_us"] / 1000 for x in pg])
        pros["p99"] = b - a
        a50, b50 = med([x["r"]["p50_us"] / 1000 for x in pd]), med([x["r"]["p50_us"] / 1000 for x in pg])
        w(f"| 1,000 msg/s: p50 ms | {a50:.2f} | {b50:.2f} | {b50 - a50:+.2f} ms |")
        w(f"| {label} | {a:.2f} ({span([x['r']['p99_us'] / 1000 for x in pd], 2)}) | {b:.2f} "
          f"({span([x['r']['p99_us'] / 1000 for x in pg], 2)}) | {b - a:+.2f} ms |")

w("\n### Issue 6 goals\n")
goal = lambda cond: "met" if cond else "not met"
e = main.get("e")
if e and "b" in main and "c" in main:
    w(f"- policy (e) ≥ 0.6× HAProxy: {e['sps'] / main['b']['sps']:.2f}× — {goal(e['sps'] >= 0.6 * main['b']['sps'])}; "
      f"≥ 5× xmpp-proxy: {e['sps'] / main['c']['sps']:.2f}× — {goal(e['sps'] >= 5 * main['c']['sps'])}")
else:
    d = main.get("d")
    w(f"- policy rows: {na.get('e', 'not measured')}"
      + (f"; without rules (d): {d['sps'] / main['b']['sps']:.2f}× HAProxy, "
         f"{d['sps'] / main['c']['sps']:.2f}× xmpp-proxy" if d and "b" in main and "c" in main else ""))
for row in ("e", "d"):
    if row in main and main[row]["per_core"]:
        w(f"- ≥ 300,000 stanzas/s per core ({row}): {fmt(main[row]['per_core'])} — "
          f"{goal(main[row]['per_core'] >= 300_000)}" + (" (no policy: an upper bound)" if row == "d" else ""))
        break
for row in ("d", "e"):
    pts = sorted((n, v) for (r, n), v in rss.items() if r == row and v is not None)
    if pts:
        n, v = pts[-1]
        w(f"- ≤ 12 KiB per idle TLS session ({row}, {n:,} sessions): {v:.1f} KiB — {goal(v <= 12)}")
if "f" in main and "g" in main:
    cost = 1 - main["f"]["sps"] / main["g"]["sps"]
    w(f"- 100,000-entry lists cost ≤ 10% vs 10-entry: {cost * 100:.1f}% — {goal(cost <= 0.10)}")
else:
    w(f"- list-size cost: {na.get('f', 'not measured')}")
if pros:
    w(f"- in front of Prosody ≤ 5% throughput loss: {pros.get('loss', 0) * 100:.1f}% — {goal(pros.get('loss', 1) <= 0.05)}; "
      f"≤ 0.3 ms added p99: {pros.get('p99', 0):+.2f} ms — {goal(pros.get('p99', 1) <= 0.3)}")

scale = {row: [x for x in by[("scale", row)] if ok(x)] for row in ("m1", "m2", "h1", "h2")}
if any(by[("scale", row)] for row in scale) or any(row in na for row in scale):
    w("\n### Several gateways (issue 16)\n")
    w("Alternated rounds in the same run. m1/m2: every message meets a rate and a fan-out condition (two store "
      "decisions per stanza); h1/h2: HAProxy TCP with send-proxy-v2; proxy cores are the first gateway's.\n")
    w("| row | setup | echoes/s (median) | min–max | p50 ms | p99 ms | proxy cores | errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|")
    got = {}
    for row, runs in scale.items():
        if not runs:
            reason = na.get(row) or ("n/a: every run failed" if by[("scale", row)] else "n/a: not run")
            w(f"| {row} | {desc.get(row, '')} | {reason} | | | | | |")
            continue
        sps = [x["r"]["stanzas_per_s"] for x in runs]
        q = lambda k: med([x["r"][k] / 1000 for x in runs])
        got[row] = (med(sps), q("p99_us"))
        w(f"| {row} | {desc.get(row, '')} | {fmt(med(sps))} | {span(sps)} | {fmt(q('p50_us'), 2)} | {fmt(q('p99_us'), 2)} "
          f"| {fmt(med([x['proxy_cores'] for x in runs]), 2)} | {sum(x['r'].get('errors', 0) for x in runs)} |")
    for a, b, what in (("m1", "m2", "Redis store vs in-process"), ("h1", "h2", "two gateways vs one")):
        if a in got and b in got:
            w(f"- {what}: {got[b][0] / got[a][0]:.2f}× throughput, p99 {got[b][1] - got[a][1]:+.2f} ms")

(out / "summary.md").write_text("\n".join(lines) + "\n")
