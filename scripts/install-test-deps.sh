#!/usr/bin/env bash
# Install the system packages the end-to-end tests (tests/e2e) need, on
# Debian bookworm: Prosody, ejabberd, go-sendxmpp, slixmpp and pytest for
# Debian's /usr/bin/python3, lua-unbound, knot (the s2s test sites' private
# DNS), openssl, ca-certificates; Chromium, chromedriver, selenium, Strophe.js
# and python3-websockets for the web door; debootstrap, man-db, groff-base and
# systemd for the package's install test.
#
# Idempotent: if every package is already installed, apt is not touched.
# The packages' services are NOT started: while apt runs, a temporary
# /usr/sbin/policy-rc.d exits 101 ("action forbidden"); afterwards it is
# removed, or, if one existed before, the original is put back.
#
# Usage: sudo scripts/install-test-deps.sh [--force]   (--force: run apt anyway)
set -euo pipefail

PACKAGES=(
  prosody
  ejabberd
  go-sendxmpp
  python3-slixmpp
  python3-pytest
  lua-unbound
  knot
  openssl
  ca-certificates
  nftables
  iproute2
  knot
  knot-dnsutils
  ldnsutils
  tcpdump
  python3-scapy
  # Building stanzawall itself: `inspect --interface/--bpf` links libpcap (the pcap crate).
  libpcap-dev
  # The web door's e2e tests (tests/e2e/test_web.py): a real browser running Strophe.js, and a
  # raw WebSocket client for the framing errors.
  chromium
  chromium-driver
  python3-selenium
  libjs-strophe
  python3-websockets
  redis-server
  haproxy
  # The file-transfer door (tests/e2e/test_transfer.py): a private clamd from a written .hdb.
  clamav-daemon
  # The Debian package (tests/e2e/test_package.py): installed into a clean bookworm chroot made by
  # debootstrap; its man pages through man-db and groff, its unit through systemd-analyze.
  debootstrap
  man-db
  groff-base
  systemd
  # The privileged component (tests/e2e/test_component.py): Prosody's mod_privilege.
  prosody-modules
)
POLICY=/usr/sbin/policy-rc.d

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 && $force -eq 0 ]]; then
  echo "install-test-deps: all packages already installed"
  exit 0
fi

if [[ $EUID -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$0" "$@"
  fi
  echo "install-test-deps: must run as root (missing: ${missing[*]})" >&2
  exit 1
fi

echo "install-test-deps: installing ${missing[*]:-(forced) ${PACKAGES[*]}}"

# Keep services from starting during installation.
backup=""
restore_policy() {
  if [[ -n "$backup" ]]; then
    mv -f "$backup" "$POLICY"
  else
    rm -f "$POLICY"
  fi
}
if [[ -e "$POLICY" || -L "$POLICY" ]]; then
  backup=$(mktemp /usr/sbin/.policy-rc.d.orig.XXXXXX)
  cp -a "$POLICY" "$backup"
fi
trap restore_policy EXIT
printf '#!/bin/sh\n# temporary, from install-test-deps.sh\nexit 101\n' >"$POLICY.tmp.$$"
chmod 0755 "$POLICY.tmp.$$"
mv -f "$POLICY.tmp.$$" "$POLICY"

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

echo "install-test-deps: done"
