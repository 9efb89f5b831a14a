#!/usr/bin/env bash
# bench/inspect/run.sh [SESSIONS MESSAGES]: passive-inspection throughput (issue 15), MB of
# capture per second on one core, beside `tshark -r FILE -Y xmpp` on the same file, same run.
#
# The capture (bench/inspect/gen_capture.py) holds SESSIONS plaintext c2s sessions of MESSAGES
# messages each; the policy is the realistic one: a 10,000-entry domain list, a URL list,
# keyword and regex rules, on both chains. Both tools are pinned to CPU 0 (taskset) and run
# REPEAT times alternately; the medians are reported. Output: bench/results/inspect.md.
# Never part of the tests: it measures, it asserts nothing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SESSIONS=${1:-400}
MESSAGES=${2:-400}
REPEAT=${REPEAT:-3}
BIN=${STANZAWALL_BIN:-$ROOT/target/release/stanzawall}
WORK=$(mktemp -d /tmp/sw-inspect-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

/usr/bin/python3 "$HERE/gen_capture.py" "$WORK/cap.pcap" "$SESSIONS" "$MESSAGES"
for i in $(seq 0 9999); do echo "spam-$i.example"; done > "$WORK/domains.txt"
for i in $(seq 0 999); do echo "phish-$i.example/login"; done > "$WORK/urls.txt"
cat > "$WORK/policy.toml" <<TOML
[list.spam_domains]
file = "domains.txt"
[list.bad_urls]
file = "urls.txt"
[[rule]]
name = "blocked-servers"
when = { to_domain_in = "spam_domains" }
action = "drop"
[[rule]]
name = "malicious-links"
when = { kind = "message", url_in = "bad_urls" }
action = "bounce"
[[rule]]
name = "watch-keywords"
when = { body_contains = ["confidential", "password:", "wire transfer"] }
action = "drop"
log_only = true
[[rule]]
name = "card-numbers"
when = { body_regex = "\\\\b\\\\d{4}[ -]?\\\\d{4}[ -]?\\\\d{4}[ -]?\\\\d{4}\\\\b" }
action = "drop"
TOML
SIZE=$(stat -c %s "$WORK/cap.pcap")
sw=() ts=()
for r in $(seq 1 "$REPEAT"); do
  s=$(date +%s.%N)
  taskset -c 0 "$BIN" inspect --config "$WORK/policy.toml" --pcap "$WORK/cap.pcap" --audit "$WORK/audit.jsonl" 2> "$WORK/summary.txt"
  e=$(date +%s.%N); sw+=("$(echo "$e - $s" | bc -l)")
  if command -v tshark > /dev/null; then
    s=$(date +%s.%N)
    taskset -c 0 tshark -r "$WORK/cap.pcap" -Y xmpp > "$WORK/tshark.txt" 2>/dev/null || true
    e=$(date +%s.%N); ts+=("$(echo "$e - $s" | bc -l)")
  fi
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
SW=$(median "${sw[@]}")
OUT="$ROOT/bench/results/inspect.md"
{
  echo "# Passive inspection throughput ($(date -u +%Y-%m-%d), $(nproc) cores, one pinned)"
  echo
  echo "Capture: $SESSIONS sessions × $MESSAGES messages, $(echo "$SIZE / 1000000" | bc -l | xargs printf '%.1f') MB, $(grep -o 'source [^:]*: [0-9]* packets' "$WORK/summary.txt" | grep -o '[0-9]* packets')."
  echo "Audit lines written: $(wc -l < "$WORK/audit.jsonl")."
  echo
  echo "| tool | seconds (median of $REPEAT) | MB/s of capture per core |"
  echo "|---|---|---|"
  echo "| stanzawall inspect (realistic policy) | $(printf '%.2f' "$SW") | $(echo "$SIZE / 1000000 / $SW" | bc -l | xargs printf '%.1f') |"
  if [[ ${#ts[@]} -gt 0 ]]; then
    TS=$(median "${ts[@]}")
    echo "| tshark -r FILE -Y xmpp | $(printf '%.2f' "$TS") | $(echo "$SIZE / 1000000 / $TS" | bc -l | xargs printf '%.1f') |"
  else
    echo "| tshark -r FILE -Y xmpp | n/a: tshark not installed (apt-get install tshark) | |"
  fi
  echo
  echo '```'
  cat "$WORK/summary.txt"
  echo '```'
} > "$OUT"
cat "$OUT"
