#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this):
#   1. installs what the tests need (Debian packages: Prosody, ejabberd, go-sendxmpp, slixmpp, pytest,
#      debootstrap; and cargo-deb);
#   2. format and lint checks;
#   3. unit and property tests of the core and the daemon;
#   4. a fuzz smoke: every cargo-fuzz target for 30 s (scripts/fuzz.sh);
#   5. the release build, then end-to-end tests: real Prosody and ejabberd behind a real
#      `stanzawall run`, driven by slixmpp and go-sendxmpp on loopback (last, so pytest's
#      summary closes the output).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found: install a Rust toolchain >= 1.85 (rustup) first" >&2
  exit 1
fi
scripts/install-test-deps.sh
# cargo-deb builds the Debian package (scripts/package-deb.sh, tests/e2e/test_package.py). Pinned,
# and installed only when that version is not there yet (about a minute the first time).
CARGO_DEB_VERSION=3.8.0
if [[ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]]; then
  echo "== cargo install cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== cargo build --release"
cargo build --release --locked
echo "== cargo build (debug, test-only fault-injection feature, for the panic-isolation test)"
cargo build --locked -p stanzawall --features fault-injection
echo "== fuzz smoke (30 s per target)"
scripts/fuzz.sh 30
echo "== end-to-end (tests/e2e)"
STANZAWALL_BIN="$PWD/target/release/stanzawall" STANZAWALL_FAULT_BIN="$PWD/target/debug/stanzawall" \
  /usr/bin/python3 -m pytest -p no:cacheprovider -q tests/e2e
