#!/bin/sh
# Build the Debian package of stanzawall with `cargo deb`.
#
#   scripts/package-deb.sh [--bin PATH] [--out DIR]
#
# --bin: an already built release binary (default: `cargo build --release -p stanzawall` and
# target/release/stanzawall, or $CARGO_TARGET_DIR/release/stanzawall). --out: where the .deb
# goes (default: target/debian). Prints the package's path on the last line.
#
# What goes where is `[package.metadata.deb]` in crates/stanzawall/Cargo.toml: /usr/bin/stanzawall;
# /etc/stanzawall/stanzawall.toml (conffile, the example config: nothing starts until a
# certificate is put where it says), its lists/ and an empty admin-tokens (conffiles);
# /lib/systemd/system/stanzawall.service; the man pages and the bash, zsh and fish completions;
# /usr/share/doc/stanzawall. The maintainer scripts (contrib/debian/) create the `stanzawall`
# user, /var/lib/stanzawall (state: bans) and /var/log/stanzawall owned by it, and give the token
# file to its group; they enable nothing.
#
# This script only writes what the binary generates (man pages, completions) where the metadata
# expects it, target/release/deb-assets/, and runs `cargo deb --no-build`: the release binary is
# packaged as built, never rebuilt. Needs cargo-deb (scripts/test.sh installs the pinned version).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
bin=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--bin PATH] [--out DIR]" >&2; exit 2 ;;
    esac
done
if ! cargo deb --version >/dev/null 2>&1; then
    echo "$0: cargo-deb is needed: cargo install cargo-deb --version 3.8.0 --locked" >&2
    exit 1
fi
target=${CARGO_TARGET_DIR:-$root/target}
out=${out:-$target/debian}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release --locked -p stanzawall)
    bin=$target/release/stanzawall
fi
[ -x "$bin" ] || { echo "$0: no executable at $bin" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# cargo deb packages target/release/stanzawall of its target dir: a binary from elsewhere is
# packaged from a scratch target dir holding a copy of it.
if [ "$(readlink -f "$bin")" != "$(readlink -f "$target/release/stanzawall" 2>/dev/null || true)" ]; then
    target=$stage/target
    install -D -m 0755 "$bin" "$target/release/stanzawall"
    bin=$target/release/stanzawall
fi

assets=$target/release/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" man --dir "$assets/man" >/dev/null 2>&1
gzip -9nf "$assets"/man/*.1
"$bin" completions bash > "$assets/completions/stanzawall"
"$bin" completions zsh > "$assets/completions/_stanzawall"
"$bin" completions fish > "$assets/completions/stanzawall.fish"
gzip -9nc "$root/README.md" > "$assets/README.md.gz"

mkdir -p "$out"
# --strip: the release profile keeps line tables for backtraces; the package does without them
# (cargo deb strips a copy, not target/release/stanzawall). --fast: xz at a low level, 2 s here
# where cargo-deb's gzip takes 35 s.
deb=$(cd "$root" && CARGO_TARGET_DIR=$target cargo deb -p stanzawall --no-build --locked --strip \
    --no-dbgsym --no-separate-debug-symbols --fast --output "$out" -q)
deb=$(printf '%s\n' "$deb" | tail -n 1)
[ -f "$deb" ] || { echo "$0: cargo deb wrote no package ($deb)" >&2; exit 1; }
echo "$deb"
