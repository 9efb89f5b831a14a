#!/usr/bin/env bash
# bench/run.sh [--quick]: the side-by-side benchmark of issue 6, in one run on this machine.
#
#   (a) direct      loadgen → bench-sink terminating TLS itself
#   (b) haproxy     loadgen → HAProxy (TCP mode, TLS terminated) → bench-sink
#   (c) xmpp-proxy  loadgen → xmpp-proxy → bench-sink
#   (d) stanzawall  loadgen → stanzawall, no rules → bench-sink
#   (e) stanzawall  realistic policy: 10,000-entry domain and URL lists, 100 regexes, rates
#   (f) stanzawall  as (e) with 100,000-entry lists
#   (g) stanzawall  as (e) with 10-entry lists (the baseline for the list-size goal)
#   (x) stanzawall  as (e) plus the anti-spam rules (issue 12): stranger, fan-out and wave
#                   conditions on every message (no `[contacts]`: rosters are learnt from the
#                   sessions, as without a component; nothing in the traffic trips them)
#
# BENCH_ONLY="x e" (environment): measure only those rows, in section 1 (the table and bulk
# rounds; the others are reported as not selected, sections 2-6 are skipped); for a quick look
# at one row on a busy machine.
#
# Several gateways (issue 16), in their own alternated rounds at the end (section 6):
#   (m1) stanzawall, rate + fan-out rules, in-process store   (m2) the same, Redis store
#   (h1) HAProxy (TCP, send-proxy-v2) → one stanzawall         (h2) HAProxy → two stanzawalls
# `run.sh --scale` runs only section 6 (short rounds), for a quick look on a busy machine.
#
# Rounds alternate the rows (a b c d e f g, a b c …) so that noise on this shared machine hits
# every row alike; the summary gives medians, min–max and ratios to (b). Then: throughput and
# p99 vs connections (PNG), RSS per idle TLS session, full logins/s, and the overhead in front
# of a private Prosody. Every server it starts is its own child on 127.0.0.1, stopped by PID.
#
# Output: bench/results/{quick,full}/ (raw.jsonl, summary.md, sweep.tsv, throughput.png);
# scratch files (configs, lists, logs) in bench/results/run-*/ (not committed).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3            # Debian's, standard library only (the pyenv one lacks nothing we need, but be explicit)
MODE=full
[[ ${1:-} == --quick ]] && MODE=quick
[[ ${1:-} == --scale ]] && MODE=scale

if [[ $MODE == quick || $MODE == scale ]]; then
  ROUNDS=2 DUR=4 WARM=1 SESSIONS=50 WINDOW=16
  BULK_ROUNDS=1 BULK_BODY=4000 BULK_SESSIONS=10
  SWEEP="1 10 100 1000" SWEEP_DUR=3
  RSS_N="1000 9500" HS_DUR=4 HS_WORKERS=32
  PROS_REPS=2 PROS_DUR=4 PROS_RATE=100
else
  ROUNDS=5 DUR=10 WARM=2 SESSIONS=50 WINDOW=16
  BULK_ROUNDS=3 BULK_BODY=4000 BULK_SESSIONS=10
  SWEEP="1 10 100 1000 5000" SWEEP_DUR=6
  RSS_N="1000 5000 9500" HS_DUR=8 HS_WORKERS=32
  PROS_REPS=3 PROS_DUR=10 PROS_RATE=100
fi
SOURCES=127.0.0.1-127.0.0.16
DOMAIN=bench.test
T_START=$(date +%s)

OUT=$HERE/results/$MODE
# A BENCH_ONLY run is partial: its results stay in the scratch directory (the committed
# results/{quick,full} are whole runs).
[[ -n ${BENCH_ONLY:-} ]] && OUT=$HERE/results/run-$(date +%Y%m%d-%H%M%S)/out
WORK=$HERE/results/run-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT" "$WORK"
RAW=$OUT/raw.jsonl
: > "$RAW"
log() { printf '[%4ds] %s\n' $(( $(date +%s) - T_START )) "$*" >&2; }

# --- tools --------------------------------------------------------------------------------------
SW=${STANZAWALL:-$ROOT/target/release/stanzawall}   # STANZAWALL=path: another build
LOADGEN=$HERE/target/release/loadgen
SINK=$HERE/target/release/sink
XMPP_PROXY=$(command -v xmpp-proxy || echo "$HOME/.cargo/bin/xmpp-proxy")
HAPROXY=$(command -v haproxy || true)
log "building bench/ (release)"
(cd "$HERE" && cargo build --release --quiet)
[[ -x $SW ]] || { echo "run.sh: $SW missing: run 'cargo build --release' in $ROOT first (or set STANZAWALL)" >&2; exit 1; }
# A private copy: others may rebuild target/release while this runs.
cp "$SW" "$WORK/stanzawall"; SW=$WORK/stanzawall
SW_BUILT=$(date -u -r "${STANZAWALL:-$ROOT/target/release/stanzawall}" +%Y-%m-%dT%H:%MZ)
SW_VERSION=$("$SW" --version 2>/dev/null | head -1)
# Where that binary came from (STANZAWALL_SRC="git archive 053275e", say); default: this tree.
SW_SRC=${STANZAWALL_SRC:-"target/release of this working tree"}

# File descriptors: every proxied session holds two; the hard limit is what we can have.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
log "open files limit: $FD_LIMIT"

# --- process bookkeeping: only our own children, stopped by PID ----------------------------------
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
stop() { # stop PID
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}")
}
wait_port() { # wait_port PORT [secs]
  local i; for ((i = 0; i < ${2:-10} * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05
  done; return 1
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# --- certificates and configs --------------------------------------------------------------------
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout bench.key -out bench.crt \
  -days 30 -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN,DNS:*.$DOMAIN" 2>/dev/null
cat bench.crt bench.key > bench.pem

# Ports: 27100 + n. Fixed, checked free first.
P_SINK=27100 P_SINK_TLS=27101 P_HAP=27102 P_XP=27103 P_SW=27104 P_SW_STARTTLS=27105
P_SW10K=27106 P_SW100K=27107 P_SW10=27108 P_SWAS=27109
P_PROS=27110 P_PROS_TLS=27111 P_SW_PROS=27112
P_RSS_SINK=27120 P_RSS_PROXY=27121
P_REDIS=27130 P_SW_MEM=27131 P_SW_REDIS=27132 P_HAP1=27133 P_HAP2=27134 P_GW1=27135 P_GW2=27136
for p in $P_SINK $P_SINK_TLS $P_HAP $P_XP $P_SW $P_SW_STARTTLS $P_SW10K $P_SW100K $P_SW10 $P_SWAS \
         $P_PROS $P_PROS_TLS $P_SW_PROS $P_RSS_SINK $P_RSS_PROXY \
         $P_REDIS $P_SW_MEM $P_SW_REDIS $P_HAP1 $P_HAP2 $P_GW1 $P_GW2; do
  port_free "$p" || { echo "run.sh: port $p is in use" >&2; exit 1; }
done

haproxy_cfg() { # haproxy_cfg NAME PORT BACKEND_PORT
  cat > "$1" <<EOF
global
  maxconn 9800
  nbthread $(nproc)
defaults
  mode tcp
  timeout connect 5s
  timeout client 30m
  timeout server 30m
frontend fe
  bind 127.0.0.1:$2 ssl crt $WORK/bench.pem alpn xmpp-client
  default_backend be
backend be
  server sink 127.0.0.1:$3
EOF
}
xmpp_proxy_cfg() { # NAME PORT BACKEND_PORT
  cat > "$1" <<EOF
listen = [ "127.0.0.1:$2" ]
c2s_target = "127.0.0.1:$3"
s2s_target = "127.0.0.1:9"
proxy = false
max_stanza_size_bytes = 262_144
tls_key = "$WORK/bench.key"
tls_cert = "$WORK/bench.crt"
EOF
}
stanzawall_cfg() { # NAME PORT BACKEND_PORT [STARTTLS_PORT]
  cat > "$1" <<EOF
state_dir = "state-$(basename "$1" .toml)"
[[tls.certificate]]
domains = ["$DOMAIN", "*.$DOMAIN"]
cert = "bench.crt"
key  = "bench.key"

[[listener]]
name    = "c2s-direct"
kind    = "c2s-tls"
bind    = "127.0.0.1:$2"
backend = "127.0.0.1:$3"
EOF
  if [[ -n ${4:-} ]]; then cat >> "$1" <<EOF

[[listener]]
name    = "c2s"
kind    = "c2s"
bind    = "127.0.0.1:$4"
backend = "127.0.0.1:$3"
EOF
  fi
  cat >> "$1" <<EOF

[network]
max_connections = 1000000
max_connections_per_ip = 1000000
connection_rate_per_ip = "off"
EOF
}

# The realistic policy (issue 3's rule language): lists of SIZE entries, 100 regexes, a
# per-sender rate that the benchmark never exceeds (its cost is paid on every message), keywords
# and file-offer blocking. Nothing in the benchmark traffic matches, so every stanza is
# evaluated against every rule and then passes.
policy_cfg() { # NAME PORT BACKEND_PORT SIZE
  stanzawall_cfg "$1" "$2" "$3"
  local size=$4 lists=lists-$4
  mkdir -p "$lists"
  awk -v n="$size" 'BEGIN { srand(1); for (i = 1; i <= n; i++) printf "spam%d-%x.example\n", i, int(rand() * 1e9) }' > "$lists/domains.txt"
  awk -v n="$size" 'BEGIN { srand(2); for (i = 1; i <= n; i++) printf "phish%d.example/login/%x\n", i, int(rand() * 1e9) }' > "$lists/urls.txt"
  cat >> "$1" <<EOF

[list.spam_domains]
file = "$lists/domains.txt"

[list.bad_urls]
file = "$lists/urls.txt"

[rate.per_sender]
rate  = "1000000/second"
burst = 1000000
key   = "from.bare"

[[rule]]
name   = "blocked-servers"
chain  = "c2s-out"
when   = { from_domain_in = "spam_domains" }
action = "drop"

[[rule]]
name   = "blocked-destinations"
chain  = "c2s-in"
when   = { to_domain_in = "spam_domains" }
action = "bounce"

[[rule]]
name   = "malicious-links"
when   = { kind = "message", url_in = "bad_urls" }
action = "bounce"
error  = "policy-violation"
text   = "Link blocked by policy"

[[rule]]
name   = "no-file-offers"
when   = { payload = ["http://jabber.org/protocol/bytestreams", "http://jabber.org/protocol/si", "jabber:x:oob"] }
action = "bounce"

[[rule]]
name   = "flood"
when   = { kind = "message", rate = "per_sender" }
action = "bounce"
error  = "resource-constraint"

[[rule]]
name     = "watch-keywords"
when     = { body_contains = ["confidential", "password:", "wire transfer now", "gift card code", "verify your account"] }
action   = "drop"
log_only = true
EOF
  local i
  for ((i = 0; i < 100; i++)); do
    cat >> "$1" <<EOF

[[rule]]
name   = "spam-pattern-$i"
when   = { kind = "message", body_regex = '(?i)(free|cheap|instant)\\s+(crypto|bitcoin|prize)$i\\b.*\\d{3,}' }
action = "drop"
EOF
  done
}

# The realistic policy (e, 10,000-entry lists) plus the anti-spam conditions of the README's
# recommended configuration, on every message of the traffic (issue 12's row): `stranger`
# (judged on c2s-out, where the recipient is the local user), `fanout` and `wave` (both count
# every message). Every loadgen session sends the same text, so the thresholds are the largest
# the config allows (100 senders, 1,000 recipients; 10,000 recipients for fan-out), above the
# bench's 50 sessions: nothing holds, every message is fingerprinted, counted and passes. With
# the README's 5 senders the loadgen's traffic *is* a wave and is dropped (0 echoes/s).
antispam_cfg() { # NAME PORT BACKEND_PORT
  policy_cfg "$1" "$2" "$3" 10000
  cat >> "$1" <<EOF

[[rule]]
name   = "spam-waves"
chain  = ["c2s-in", "c2s-out"]
when   = { kind = "message", wave = { senders = 100, recipients = 1000, window = "30m" } }
action = "drop"

[[rule]]
name   = "fan-out"
chain  = "c2s-in"
when   = { kind = "message", fanout = { recipients = 10000, window = "10m", key = "from.bare" } }
action = "bounce"
error  = "resource-constraint"

[[rule]]
name   = "stranger-links"
chain  = "c2s-out"
when   = { kind = "message", type = ["chat", "normal"], stranger = true, body_regex = "https?://" }
action = "bounce"
text   = "Links from outside the user's contacts are not delivered"
EOF
}

# --- start the fleet ------------------------------------------------------------------------------
declare -A ROW_PORT ROW_PID ROW_NA ROW_DESC GW_PID
start_bg() { # start_bg LOG CMD… → sets STARTED_PID
  "${@:2}" > "$1" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}
# (`--scale` skips sections 1-5 and their fleet: section 6 starts its own rows.)
if [[ $MODE != scale ]]; then
ROWS="a b c d e f g x"
ROW_DESC[a]="direct (TLS by the sink)"
ROW_DESC[b]="HAProxy $(${HAPROXY:-true} -v 2>/dev/null | awk 'NR==1 {print $3}') TCP+TLS"
ROW_DESC[c]="xmpp-proxy"
ROW_DESC[d]="stanzawall, no rules"
ROW_DESC[e]="stanzawall, policy 10k lists"
ROW_DESC[f]="stanzawall, policy 100k lists"
ROW_DESC[g]="stanzawall, policy 10-entry lists"
ROW_DESC[x]="stanzawall, policy 10k lists + anti-spam (stranger, fanout, wave)"

log "starting bench-sink (plaintext backend :$P_SINK, direct TLS :$P_SINK_TLS)"
start_bg sink.log "$SINK" --listen 127.0.0.1:$P_SINK --domain $DOMAIN; SINK_PID=$STARTED_PID
start_bg sink-tls.log "$SINK" --listen 127.0.0.1:$P_SINK_TLS --domain $DOMAIN --cert bench.crt --key bench.key
ROW_PORT[a]=$P_SINK_TLS ROW_PID[a]=$STARTED_PID
wait_port $P_SINK && wait_port $P_SINK_TLS

if [[ -n $HAPROXY ]]; then
  haproxy_cfg haproxy.cfg $P_HAP $P_SINK
  start_bg haproxy.log "$HAPROXY" -f haproxy.cfg -db
  ROW_PORT[b]=$P_HAP ROW_PID[b]=$STARTED_PID
  wait_port $P_HAP || ROW_NA[b]="n/a: HAProxy did not start (see haproxy.log)"
else
  ROW_NA[b]="n/a: haproxy not installed (apt-get install haproxy)"
fi

if [[ -x $XMPP_PROXY ]]; then
  xmpp_proxy_cfg xmpp-proxy.toml $P_XP $P_SINK
  start_bg xmpp-proxy.log "$XMPP_PROXY" xmpp-proxy.toml
  ROW_PORT[c]=$P_XP ROW_PID[c]=$STARTED_PID
  wait_port $P_XP || ROW_NA[c]="n/a: xmpp-proxy did not start (see xmpp-proxy.log)"
else
  ROW_NA[c]="n/a: xmpp-proxy not installed (cargo install xmpp-proxy)"
fi

stanzawall_cfg sw-none.toml $P_SW $P_SINK $P_SW_STARTTLS
start_bg sw-none.log "$SW" run --config sw-none.toml
ROW_PORT[d]=$P_SW ROW_PID[d]=$STARTED_PID
wait_port $P_SW || { echo "run.sh: stanzawall did not start:" >&2; cat sw-none.log >&2; exit 1; }

POLICY_NA=""
for row in g e f; do
  case $row in e) size=10000 port=$P_SW10K ;; f) size=100000 port=$P_SW100K ;; g) size=10 port=$P_SW10 ;; esac
  policy_cfg "sw-policy-$size.toml" "$port" $P_SINK $size
  if [[ -n $POLICY_NA ]]; then ROW_NA[$row]=$POLICY_NA; continue; fi
  if ! "$SW" check --config "sw-policy-$size.toml" > "check-$size.log" 2>&1; then
    POLICY_NA="n/a: policy engine not available in this build"
    log "stanzawall check rejects the policy config: $(head -1 "check-$size.log")"
    ROW_NA[$row]=$POLICY_NA; continue
  fi
  start_bg "sw-policy-$size.log" "$SW" run --config "sw-policy-$size.toml"
  ROW_PORT[$row]=$port ROW_PID[$row]=$STARTED_PID
  wait_port "$port" 30 || { ROW_NA[$row]="n/a: stanzawall with the policy did not start"; continue; }
  # Accepted is not enforced: a message with a listed URL must come back as an error.
  bad="https://$(head -1 "lists-$size/urls.txt")"
  verdict=$("$LOADGEN" --target "127.0.0.1:$port" --domain $DOMAIN --probe "see $bad now" 2>>loadgen.err | tail -1)
  log "row $row: probe with a listed URL → $verdict"
  if [[ $verdict == ECHO ]]; then
    POLICY_NA="n/a: policy accepted by check but not enforced by this build"; ROW_NA[$row]=$POLICY_NA
  fi
done
if [[ -z $POLICY_NA ]]; then
  antispam_cfg sw-antispam.toml $P_SWAS $P_SINK
  if ! "$SW" check --config sw-antispam.toml > check-antispam.log 2>&1; then
    ROW_NA[x]="n/a: stanzawall check rejects the anti-spam config: $(head -1 check-antispam.log)"
  else
    start_bg sw-antispam.log "$SW" run --config sw-antispam.toml
    ROW_PORT[x]=$P_SWAS ROW_PID[x]=$STARTED_PID
    wait_port $P_SWAS 30 || ROW_NA[x]="n/a: stanzawall with the anti-spam rules did not start"
  fi
else
  ROW_NA[x]=$POLICY_NA
fi
if [[ -n ${BENCH_ONLY:-} ]]; then
  for row in $ROWS; do
    [[ " $BENCH_ONLY " == *" $row "* ]] || ROW_NA[$row]=${ROW_NA[$row]:-"not selected (BENCH_ONLY)"}
  done
fi
for row in $ROWS; do [[ -n ${ROW_NA[$row]:-} ]] && log "row $row: ${ROW_NA[$row]}"; done
fi
active_rows() { local r; for r in "$@"; do [[ -z ${ROW_NA[$r]:-} ]] && printf '%s ' "$r"; done; true; }

# --- one measurement ----------------------------------------------------------------------------
# measure SECTION ROW ROUND EXTRA_JSON LOADGEN_ARGS… → one line in raw.jsonl
measure() {
  local section=$1 row=$2 round=$3 extra=$4; shift 4
  local pid=${ROW_PID[$row]:-} t0 c0 t1 c1 out
  t0=$(date +%s.%N); c0=$(cpu_ticks "$pid")
  if ! out=$("$LOADGEN" --target "127.0.0.1:${ROW_PORT[$row]}" --domain $DOMAIN --sources $SOURCES \
             --label "$section/$row/$round" "$@" 2>>loadgen.err | tail -1) || [[ $out != '{'* ]]; then
    out='{"error":"loadgen failed (see loadgen.err)"}'
  fi
  t1=$(date +%s.%N); c1=$(cpu_ticks "$pid")
  local cpu; cpu=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / hz / (e - s) }')
  printf '{"section":"%s","row":"%s","round":%s,"proxy_cores":%s%s,"r":%s}\n' \
    "$section" "$row" "$round" "$cpu" "$extra" "$out" >> "$RAW"
  log "$section $row #$round: $(echo "$out" | cut -c1-160) cores=$cpu"
}

if [[ $MODE != scale ]]; then
# --- 1. the table: rows alternated, ROUNDS rounds -------------------------------------------------
ACTIVE=$(active_rows $ROWS)
log "table: rows [$ACTIVE], $ROUNDS rounds × ${DUR}s, $SESSIONS sessions, window $WINDOW"
for ((r = 1; r <= ROUNDS; r++)); do
  for row in $ACTIVE; do
    measure table "$row" $r "" --sessions $SESSIONS --window $WINDOW --duration $DUR --warmup $WARM
  done
done
log "bulk: ${BULK_BODY}-byte bodies, $BULK_SESSIONS sessions"
for ((r = 1; r <= BULK_ROUNDS; r++)); do
  for row in $ACTIVE; do
    measure bulk "$row" $r "" --sessions $BULK_SESSIONS --window $WINDOW --duration $DUR --warmup $WARM \
      --mix message:1 --body $BULK_BODY
  done
done

# BENCH_ONLY: section 1 only (sections 2-6 measure fixed rows).
if [[ -z ${BENCH_ONLY:-} ]]; then
# --- 2. throughput and p99 vs connections -------------------------------------------------------
SWEEP_ROWS=$(active_rows a b c d e)
for n in $SWEEP; do
  (( n * 2 + 100 > FD_LIMIT )) && { log "sweep: skipping $n connections (open files limit $FD_LIMIT)"; continue; }
  w=$WINDOW; (( n >= 1000 )) && w=4
  for row in $SWEEP_ROWS; do
    measure sweep "$row" 1 ",\"connections\":$n" --sessions "$n" --window $w --duration $SWEEP_DUR --warmup 1 \
      --connect-concurrency 128
  done
done

# --- 3. full logins per second (connect, TLS full handshake, SASL, bind, close) -------------------
for row in $(active_rows a b c d e); do
  measure handshakes "$row" 1 ',"tls":"direct"' --handshakes --sessions $HS_WORKERS --duration $HS_DUR --warmup 1
done
ROW_PORT[s]=$P_SW_STARTTLS ROW_PID[s]=${ROW_PID[d]} ROW_DESC[s]="stanzawall, no rules, STARTTLS"
measure handshakes s 1 ',"tls":"starttls"' --handshakes --mode starttls --sessions $HS_WORKERS --duration $HS_DUR --warmup 1

# --- 3b. first stream header after TLS (issue 18 finding 10) ------------------------------------
# A client with Nagle's algorithm on writes its header in two writes right after the handshake
# (tsung); the second waits for the ACK of the first, and a server that delays that ACK costs
# 40 ms. Time from the client's header to the first bytes of the answer, per row.
FH_COUNT=$([[ $MODE == quick ]] && echo 100 || echo 400)
for row in $(active_rows a b c d s); do
  fh_args=(--port "${ROW_PORT[$row]}" --domain $DOMAIN --count $FH_COUNT --label "first_header/$row")
  [[ $row == s ]] && fh_args+=(--starttls)
  if ! out=$($PY "$HERE/first_header.py" "${fh_args[@]}" 2>>loadgen.err | tail -1) || [[ $out != '{'* ]]; then
    out='{"error":"first_header.py failed (see loadgen.err)"}'
  fi
  printf '{"section":"first_header","row":"%s","round":1,"proxy_cores":0,"r":%s}\n' "$row" "$out" >> "$RAW"
  log "first_header $row: $out"
done

# --- 4. RSS per idle TLS session: a fresh proxy each time ----------------------------------------
# Needed: the loadgen holds N sockets, the proxy 2N, the sink N; the proxy is the limit.
log "RSS per idle session: N in [$RSS_N], open files limit $FD_LIMIT"
rss_point() { # rss_point ROW N
  local row=$1 n=$2 pid lg base after ready
  start_bg rss-sink.log "$SINK" --listen 127.0.0.1:$P_RSS_SINK --domain $DOMAIN; local spid=$STARTED_PID
  wait_port $P_RSS_SINK
  case $row in
    b) haproxy_cfg rss-haproxy.cfg $P_RSS_PROXY $P_RSS_SINK; start_bg rss-proxy.log "$HAPROXY" -f rss-haproxy.cfg -db ;;
    c) xmpp_proxy_cfg rss-xp.toml $P_RSS_PROXY $P_RSS_SINK; start_bg rss-proxy.log "$XMPP_PROXY" rss-xp.toml ;;
    d) stanzawall_cfg rss-sw.toml $P_RSS_PROXY $P_RSS_SINK; start_bg rss-proxy.log "$SW" run --config rss-sw.toml ;;
    e) policy_cfg rss-swp.toml $P_RSS_PROXY $P_RSS_SINK 10000; start_bg rss-proxy.log "$SW" run --config rss-swp.toml ;;
  esac
  pid=$STARTED_PID
  wait_port $P_RSS_PROXY 30 || { log "RSS $row: proxy did not start"; stop "$pid"; stop "$spid"; return; }
  sleep 1; base=$(rss_kb "$pid")
  rm -f rss-loadgen.out   # else the previous point's READY races the new loadgen's truncation
  "$LOADGEN" --target 127.0.0.1:$P_RSS_PROXY --domain $DOMAIN --sources $SOURCES --sessions "$n" \
    --idle 600 --connect-concurrency 128 > rss-loadgen.out 2>>loadgen.err &
  lg=$!; PIDS+=("$lg")
  for ((i = 0; i < 1200; i++)); do grep -q READY rss-loadgen.out 2>/dev/null && break; kill -0 $lg 2>/dev/null || break; sleep 0.25; done
  sleep 2
  after=$(rss_kb "$pid"); ready=$(grep READY rss-loadgen.out || echo "READY ok=0 failed=$n")
  local ok=${ready#*ok=}; ok=${ok%% *}
  local lgrss; lgrss=$(rss_kb "$lg" 2>/dev/null || echo 0)
  printf '{"section":"rss","row":"%s","round":1,"sessions":%s,"ok":%s,"base_kb":%s,"after_kb":%s,"loadgen_kb":%s,"sink_kb":%s,"r":{}}\n' \
    "$row" "$n" "$ok" "$base" "$after" "$lgrss" "$(rss_kb "$spid")" >> "$RAW"
  log "RSS $row N=$n: ok=$ok base=${base}kB after=${after}kB → $(( ok > 0 ? (after - base) / ok : 0 )) kB/session"
  stop "$lg"; stop "$pid"; stop "$spid"
  sleep 1
}
for n in $RSS_N; do
  (( n * 2 + 50 > FD_LIMIT )) && { log "RSS: skipping N=$n (open files limit $FD_LIMIT allows about $(( (FD_LIMIT - 50) / 2 )) proxied sessions)"; continue; }
  for row in $(active_rows b c d e); do rss_point "$row" "$n"; done
done

# --- 5. in front of real Prosody -------------------------------------------------------------------
if command -v prosody > /dev/null; then
  mkdir -p prosody/data prosody/certs
  cp bench.crt prosody/certs/$DOMAIN.crt; cp bench.key prosody/certs/$DOMAIN.key
  cat > prosody/prosody.cfg.lua <<EOF
-- Private benchmark instance (same approach as tests/e2e/harness/prosody.py).
pidfile = "$WORK/prosody/prosody.pid"
data_path = "$WORK/prosody/data"
certificates = "$WORK/prosody/certs"
run_as_root = true
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { $P_PROS }
c2s_direct_tls_ports = { $P_PROS_TLS }
legacy_ssl_ports = { }
s2s_ports = { }
s2s_direct_tls_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }
network_settings = { nagle = false }
unbound = { hoststxt = "/etc/hosts" }
log = { warn = "$WORK/prosody/prosody.log" }
authentication = "internal_hashed"
storage = "internal"
modules_enabled = { "roster", "saslauth", "disco", "ping", "tls" }
modules_disabled = { "s2s", "s2s_auth_certs" }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true

VirtualHost "$DOMAIN"
EOF
  for ((i = 0; i < 10; i++)); do
    prosodyctl --config prosody/prosody.cfg.lua register "bench$i" $DOMAIN bench > /dev/null
  done
  start_bg prosody/console.log prosody -F --config prosody/prosody.cfg.lua; PROS_PID=$STARTED_PID
  stanzawall_cfg sw-prosody.toml $P_SW_PROS $P_PROS
  start_bg sw-prosody.log "$SW" run --config sw-prosody.toml
  ROW_PORT[pd]=$P_PROS_TLS ROW_PID[pd]=$PROS_PID ROW_DESC[pd]="Prosody direct TLS"
  ROW_PORT[pg]=$P_SW_PROS ROW_PID[pg]=$STARTED_PID ROW_DESC[pg]="stanzawall → Prosody"
  if wait_port $P_PROS_TLS 15 && wait_port $P_SW_PROS; then
    for ((r = 1; r <= PROS_REPS; r++)); do
      for row in pd pg; do
        measure prosody "$row" $r ',"load":"flat"' --sessions 10 --users 10 --mix message:1 --window 8 \
          --duration $PROS_DUR --warmup 1
        measure prosody-rate "$row" $r ",\"load\":\"$((PROS_RATE * 10))/s\"" --sessions 10 --users 10 --mix message:1 \
          --rate $PROS_RATE --duration $PROS_DUR --warmup 1
      done
    done
  else
    log "Prosody did not start (see $WORK/prosody/console.log)"
  fi
fi

fi  # BENCH_ONLY
fi  # MODE != scale

if [[ -z ${BENCH_ONLY:-} ]]; then
# --- 6. several gateways (issue 16): the shared store's cost, and two gateways behind HAProxy -------
# m1/m2: one gateway whose every message meets a rate and a fan-out condition (two store
# decisions per stanza, never over their limits), with the in-process store and with Redis (a
# private redis-server; the store's budget is raised to 100 ms so that a slow moment on a busy
# machine shows as latency instead of quietly falling back to local decisions).
# h1/h2: HAProxy in TCP mode with send-proxy-v2 in front of one, then two, gateways (no rules).
scale_cfg() { # scale_cfg NAME PORT [redis]
  stanzawall_cfg "$1" "$2" $P_SINK
  [[ ${3:-} == redis ]] && printf '\n[store]\nurl = "redis://127.0.0.1:%s/0"\ntimeout = "100ms"\n' $P_REDIS >> "$1"
  cat >> "$1" <<EOF

[rate.per_sender]
rate  = "1000000/second"
burst = 1000000
key   = "from.bare"

[[rule]]
name   = "flood"
when   = { kind = "message", rate = "per_sender" }
action = "bounce"
error  = "resource-constraint"

[[rule]]
name   = "fan-out"
chain  = "c2s-in"
when   = { kind = "message", fanout = { recipients = 1000, window = "10m" } }
action = "bounce"
EOF
}
proxied_cfg() { # proxied_cfg NAME PORT
  stanzawall_cfg "$1" "$2" $P_SINK
  sed -i "s|^backend = \"127.0.0.1:$P_SINK\"|&\naccept_proxy = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]|" "$1"
}
haproxy_tcp_cfg() { # haproxy_tcp_cfg NAME PORT GATEWAY_PORT…
  local name=$1 port=$2 i=0 p; shift 2
  { printf 'global\n  maxconn 9800\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30m\n  timeout server 30m\n'
    printf 'frontend fe\n  bind 127.0.0.1:%s\n  default_backend gateways\nbackend gateways\n  balance roundrobin\n' "$port"
    for p in "$@"; do printf '  server gw%s 127.0.0.1:%s send-proxy-v2\n' $((i++)) "$p"; done
  } > "$name"
}
SCALE_ROWS=""
ROW_DESC[m1]="stanzawall, rate + fan-out, in-process store"
ROW_DESC[m2]="stanzawall, rate + fan-out, Redis store"
ROW_DESC[h1]="HAProxy send-proxy-v2 → one stanzawall"
ROW_DESC[h2]="HAProxy send-proxy-v2 → two stanzawalls"
if [[ $MODE == scale ]]; then
  log "starting bench-sink (plaintext backend :$P_SINK)"
  start_bg sink.log "$SINK" --listen 127.0.0.1:$P_SINK --domain $DOMAIN
  wait_port $P_SINK
fi
scale_cfg sw-mem.toml $P_SW_MEM
start_bg sw-mem.log "$SW" run --config sw-mem.toml
ROW_PORT[m1]=$P_SW_MEM ROW_PID[m1]=$STARTED_PID
if wait_port $P_SW_MEM 30; then SCALE_ROWS+="m1 "; else ROW_NA[m1]="n/a: did not start (see sw-mem.log)"; fi
if command -v redis-server > /dev/null; then
  start_bg redis.log redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK"
  wait_port $P_REDIS
  scale_cfg sw-redis.toml $P_SW_REDIS redis
  start_bg sw-redis.log "$SW" run --config sw-redis.toml
  ROW_PORT[m2]=$P_SW_REDIS ROW_PID[m2]=$STARTED_PID
  if wait_port $P_SW_REDIS 30; then SCALE_ROWS+="m2 "; else ROW_NA[m2]="n/a: did not start (see sw-redis.log)"; fi
else
  ROW_NA[m2]="n/a: redis-server not installed"
fi
if [[ -n $HAPROXY ]]; then
  for gw in 1 2; do
    port_var=P_GW$gw
    proxied_cfg "sw-gw$gw.toml" "${!port_var}"
    start_bg "sw-gw$gw.log" "$SW" run --config "sw-gw$gw.toml"; GW_PID[$gw]=$STARTED_PID
    wait_port "${!port_var}" 30
  done
  haproxy_tcp_cfg hap1.cfg $P_HAP1 $P_GW1
  haproxy_tcp_cfg hap2.cfg $P_HAP2 $P_GW1 $P_GW2
  start_bg hap1.log "$HAPROXY" -f hap1.cfg -db; ROW_PORT[h1]=$P_HAP1 ROW_PID[h1]=${GW_PID[1]}
  start_bg hap2.log "$HAPROXY" -f hap2.cfg -db; ROW_PORT[h2]=$P_HAP2 ROW_PID[h2]=${GW_PID[1]}
  if wait_port $P_HAP1 && wait_port $P_HAP2; then SCALE_ROWS+="h1 h2 "; else ROW_NA[h1]="n/a: HAProxy did not start" ROW_NA[h2]="n/a: HAProxy did not start"; fi
else
  ROW_NA[h1]="n/a: haproxy not installed" ROW_NA[h2]="n/a: haproxy not installed"
fi
log "several gateways: rows [$SCALE_ROWS], $ROUNDS rounds × ${DUR}s, $SESSIONS sessions (proxy cores of h1/h2: the first gateway's)"
for ((r = 1; r <= ROUNDS; r++)); do
  for row in $SCALE_ROWS; do
    measure scale "$row" $r "" --sessions $SESSIONS --window $WINDOW --duration $DUR --warmup $WARM
  done
done
if [[ -n ${ROW_PID[m2]:-} ]]; then
  # Decisions the Redis row took without Redis (past its budget) would flatter it.
  log "m2: $(grep -c 'shared store unavailable' sw-redis.log || true) 'shared store unavailable' lines in sw-redis.log"
fi

fi  # BENCH_ONLY

# --- summary and plot ---------------------------------------------------------------------------------
{
  echo "{\"section\":\"meta\",\"mode\":\"$MODE\",\"date\":\"$(date -u +%Y-%m-%dT%H:%MZ)\",\"commit\":\"$(git -C "$ROOT" rev-parse --short HEAD)\",\"dirty\":$( [[ -n $(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock) ]] && echo true || echo false ),\"cpus\":$(nproc),\"cpu_model\":\"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)\",\"fd_limit\":$FD_LIMIT,\"stanzawall\":\"$SW_VERSION from $SW_SRC, built $SW_BUILT\",\"rounds\":$ROUNDS,\"duration\":$DUR,\"sessions\":$SESSIONS,\"window\":$WINDOW,\"elapsed_s\":$(( $(date +%s) - T_START ))}"
  for row in ${ROWS:-} s pd pg m1 m2 h1 h2; do
    printf '{"section":"row","row":"%s","desc":"%s","na":"%s"}\n' "$row" "${ROW_DESC[$row]:-}" "${ROW_NA[$row]:-}"
  done
} >> "$RAW"
"$PY" "$HERE/summarize.py" "$RAW" "$OUT"
if command -v gnuplot > /dev/null; then
  gnuplot -e "tsv='$OUT/sweep.tsv'; png='$OUT/throughput.png'" "$HERE/plot.gp" 2>>"$WORK/gnuplot.err" \
    && log "plot: $OUT/throughput.png" || log "plot failed (see $WORK/gnuplot.err)"
else
  log "gnuplot not installed (apt-get install gnuplot-nox): no plot"
fi
cat "$OUT/summary.md"
log "done in $(( $(date +%s) - T_START )) s; raw data $RAW, scratch $WORK"
