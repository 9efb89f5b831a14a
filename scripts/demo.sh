#!/usr/bin/env bash
# The main job, on one machine: a private Prosody with two users, and stanzawall in front of it
# terminating TLS. Everything lives in ./demo-run (certificates, Prosody data, configs, logs).
#
#   scripts/demo.sh            set up (first run) and run stanzawall in the foreground; Ctrl-C stops both
#
# Ports (loopback): 5222 STARTTLS and 5223 direct TLS (stanzawall), 16222 Prosody's plaintext c2s
# (only stanzawall connects there), 5380 the admin API and dashboard. XMPP domain: localhost.
# Override with DEMO_PORT / DEMO_TLS_PORT / DEMO_ADMIN_PORT / DEMO_BACKEND_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/demo-run
DOMAIN=localhost
PORT=${DEMO_PORT:-5222}
TLS_PORT=${DEMO_TLS_PORT:-5223}
ADMIN_PORT=${DEMO_ADMIN_PORT:-5380}
BACKEND_PORT=${DEMO_BACKEND_PORT:-16222}

need_root() { [[ $EUID -eq 0 ]] || { echo "demo.sh: run as root to install $1 (or install it yourself)" >&2; exit 1; }; }

# 1. Prosody and openssl from Debian, without starting the system service; libpcap's headers
#    to build stanzawall (passive inspection links libpcap).
if ! command -v prosodyctl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1 || [[ ! -e /usr/include/pcap.h ]]; then
  need_root prosody
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && created_policy=1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prosody openssl ca-certificates libpcap-dev
  [[ $created_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo.sh: cargo not found: install a Rust toolchain >= 1.85 (rustup) first" >&2
  exit 1
fi

# 2. The gateway.
cargo build --release --locked
BIN=$ROOT/target/release/stanzawall

mkdir -p "$RUN/data" "$RUN/certs"

# 3. A demo CA and a certificate for the domain (kept across runs).
if [[ ! -f $RUN/certs/ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=stanzawall demo CA" -keyout "$RUN/certs/ca.key" -out "$RUN/certs/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$DOMAIN" \
    -keyout "$RUN/certs/$DOMAIN.key" -out "$RUN/certs/$DOMAIN.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:*.%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    "$DOMAIN" "$DOMAIN" >"$RUN/certs/leaf.ext"
  openssl x509 -req -in "$RUN/certs/$DOMAIN.csr" -CA "$RUN/certs/ca.crt" -CAkey "$RUN/certs/ca.key" \
    -CAcreateserial -days 825 -extfile "$RUN/certs/leaf.ext" -out "$RUN/certs/$DOMAIN.crt" 2>/dev/null
fi

# 4. A private Prosody: plaintext c2s on loopback only, TLS is stanzawall's job.
cat >"$RUN/prosody.cfg.lua" <<LUA
pidfile = "$RUN/prosody.pid"
data_path = "$RUN/data"
run_as_root = true
interfaces = { "127.0.0.1" }
c2s_ports = { $BACKEND_PORT }
c2s_direct_tls_ports = {}
legacy_ssl_ports = {}
s2s_ports = {}
http_ports = {}
https_ports = {}
certificates = "$RUN/certs/none"
network_settings = { nagle = false }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
modules_enabled = { "roster", "saslauth", "disco", "ping", "presence", "message", "carbons", "vcard_legacy", "posix" }
modules_disabled = { "s2s" }
log = { info = "$RUN/prosody.log" }
VirtualHost "$DOMAIN"
LUA
mkdir -p "$RUN/certs/none"
if [[ ! -f $RUN/users.txt ]]; then
  : >"$RUN/users.txt"
  for user in alice bob; do
    pass=$(openssl rand -hex 8)
    prosodyctl --config "$RUN/prosody.cfg.lua" register "$user" "$DOMAIN" "$pass"
    echo "$user@$DOMAIN $pass" >>"$RUN/users.txt"
  done
fi
prosody -F --config "$RUN/prosody.cfg.lua" >"$RUN/prosody.out" 2>&1 &
PROSODY_PID=$!
trap 'kill $PROSODY_PID 2>/dev/null; wait $PROSODY_PID 2>/dev/null' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$BACKEND_PORT) 2>/dev/null && break
  kill -0 $PROSODY_PID 2>/dev/null || { echo "Prosody failed to start:"; tail "$RUN/prosody.log" "$RUN/prosody.out"; exit 1; }
  sleep 0.1
done

# 5. stanzawall's config: the same keys as docs/config in the README.
cat >"$RUN/stanzawall.toml" <<TOML
[[tls.certificate]]
domains = ["$DOMAIN", "*.$DOMAIN"]
cert = "certs/$DOMAIN.crt"
key  = "certs/$DOMAIN.key"

[[listener]]
name    = "c2s"
kind    = "c2s"
bind    = "127.0.0.1:$PORT"
backend = "127.0.0.1:$BACKEND_PORT"

[[listener]]
name    = "c2s-direct"
kind    = "c2s-tls"
bind    = "127.0.0.1:$TLS_PORT"
backend = "127.0.0.1:$BACKEND_PORT"

[limits]
stanza_bytes = 262144
preauth_stanza_bytes = 10000
depth = 32
attributes = 64

# The firewall at work: the policy of examples/stanzawall.toml (README "Policy"), with the URL
# list in a file the dashboard can edit.
[list.spam_domains]
file = "lists/spam-domains.txt"
[list.bad_urls]
file = "lists/bad-urls.txt"

[rate.per_sender]
rate  = "30/minute"
burst = 10
key   = "from.bare"

[[rule]]
name   = "blocked-servers"
chain  = "c2s-out"
when   = { from_domain_in = "spam_domains" }
action = "drop"

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
when     = { body_contains = ["confidential", "password:"] }
action   = "drop"
log_only = true

[audit]
path = "audit.jsonl"

[admin]
bind = "127.0.0.1:$ADMIN_PORT"
tokens = "admin-tokens"
TOML
mkdir -p "$RUN/lists"
[[ -f $RUN/lists/bad-urls.txt ]] || printf '# URLs doing the rounds (one a line; the dashboard adds here)\nevil.example/payload\nphish.example\n' >"$RUN/lists/bad-urls.txt"
[[ -f $RUN/lists/spam-domains.txt ]] || cp "$ROOT/examples/lists/spam-domains.txt" "$RUN/lists/spam-domains.txt"
if [[ ! -f $RUN/admin-token.txt ]]; then
  (umask 077; "$BIN" admin-token --tokens "$RUN/admin-tokens" --role admin --name demo >"$RUN/admin-token.txt")
fi
TOKEN=$(cat "$RUN/admin-token.txt")
"$BIN" check --config "$RUN/stanzawall.toml"

cat <<EOF

stanzawall demo
  XMPP domain   $DOMAIN  (users and passwords in $RUN/users.txt)
$(sed 's/^/                  /' "$RUN/users.txt")
  STARTTLS      127.0.0.1:$PORT      direct TLS (XEP-0368)  127.0.0.1:$TLS_PORT
  CA to trust   $RUN/certs/ca.crt
  Prosody       127.0.0.1:$BACKEND_PORT (plaintext, only stanzawall talks to it)

  Dashboard     http://127.0.0.1:$ADMIN_PORT/   admin token: $TOKEN  (also in $RUN/admin-token.txt)
  Audit log     $RUN/audit.jsonl

A two-minute tour:
  1. Log in with any client to 127.0.0.1:$PORT as alice (password above), trusting the CA, and
     as bob in a second client (or send from the command line:
     SSL_CERT_FILE=$RUN/certs/ca.crt go-sendxmpp -u alice@$DOMAIN -p PASSWORD -j 127.0.0.1:$PORT bob@$DOMAIN <<< 'hi').
  2. Open the dashboard, sign in with the token: alice's session is listed.
  3. As alice, send bob "see https://evil.example/payload": alice gets the bounce "Link blocked
     by policy", bob gets nothing. The dashboard's verdict counter for malicious-links rises and
     the record is in the audit log (tail -f $RUN/audit.jsonl).
  4. In the dashboard's Lists panel add "fresh.example/wave" to bad_urls; send bob
     "https://fresh.example/wave": the next message already bounces (no reconnect), and
     $RUN/lists/bad-urls.txt has the new line.
  5. Kick alice's session, or ban 127.0.0.1 for a minute and watch the client's reconnect fail;
     lift the ban from the dashboard.
  From the shell: curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:$ADMIN_PORT/api/v1/sessions
Reload config and certificates: kill -HUP <pid>   Stop: Ctrl-C
EOF
"$BIN" run --config "$RUN/stanzawall.toml"
