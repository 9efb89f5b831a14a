"""The Debian package an operator installs (issue 19), tested without a container: build it with
``scripts/package-deb.sh`` from the binary under test, unpack it into a temporary root with
``dpkg -x``, and run what it ships from there: ``--version`` with the commit, the man pages
through ``man -l``, the completions in bash, and ``stanzawall check`` on the packaged config.

No network, no ports: this module needs no gateway and no XMPP server.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from harness.gateway import binary

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=TIMEOUT, **kw)


@pytest.fixture(scope="module")
def package(tmp: Path) -> tuple[Path, Path]:
    for tool in ("dpkg-deb", "dpkg", "man", "gzip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed (Debian's dpkg and man-db)")
    out = run("sh", str(REPO / "scripts" / "package-deb.sh"), "--bin", str(binary()), "--out", str(tmp / "deb"))
    assert out.returncode == 0, out.stderr
    deb = Path(out.stdout.strip().splitlines()[-1])
    assert deb.name.endswith(".deb") and deb.exists(), out.stdout
    root = tmp / "deb-root"
    x = run("dpkg", "-x", str(deb), str(root))
    assert x.returncode == 0, x.stderr
    return deb, root


def test_control_data_and_conffiles(package):
    deb, _ = package
    info = run("dpkg-deb", "--info", str(deb))
    assert info.returncode == 0, info.stderr
    for field in ("Package: stanzawall", "Version: 0.", "Depends: libc6, adduser", "Section: net"):
        assert field in info.stdout, info.stdout
    listing = run("dpkg-deb", "--contents", str(deb)).stdout
    assert "root/root" in listing and "./usr/bin/stanzawall" in listing, listing
    ctrl = run("sh", "-c", f"dpkg-deb --ctrl-tarfile '{deb}' | tar -xO ./conffiles")
    assert ctrl.stdout.split() == ["/etc/stanzawall/admin-tokens", "/etc/stanzawall/lists/spam-domains.txt",
                                   "/etc/stanzawall/stanzawall.toml"], ctrl.stdout


def test_files_where_debian_expects_them(package):
    _, root = package
    exe = root / "usr/bin/stanzawall"
    assert exe.stat().st_mode & 0o111
    assert (root / "lib/systemd/system/stanzawall.service").read_text() == \
        (REPO / "contrib/stanzawall.service").read_text()
    assert (root / "etc/stanzawall/stanzawall.toml").read_text() == (REPO / "examples/stanzawall.toml").read_text()
    tokens = root / "etc/stanzawall/admin-tokens"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o640, oct(tokens.stat().st_mode)
    for page in ("stanzawall", "stanzawall-run", "stanzawall-check", "stanzawall-admin-token",
                 "stanzawall-completions"):
        assert (root / f"usr/share/man/man1/{page}.1.gz").exists(), page
    for f in ("usr/share/bash-completion/completions/stanzawall", "usr/share/zsh/vendor-completions/_stanzawall",
              "usr/share/fish/vendor_completions.d/stanzawall.fish", "usr/share/doc/stanzawall/copyright",
              "usr/share/doc/stanzawall/README.md.gz"):
        assert (root / f).stat().st_size > 0, f


def test_version_names_the_commit(package):
    _, root = package
    out = run(str(root / "usr/bin/stanzawall"), "--version")
    assert out.returncode == 0, out.stderr
    # "stanzawall 0.1.0 (commit 0123456789ab)" ("-dirty" when built from a changed tree).
    assert out.stdout.startswith("stanzawall 0.") and "(commit " in out.stdout, out.stdout
    commit = out.stdout.split("(commit ", 1)[1].split(")")[0].removesuffix("-dirty")
    if not os.environ.get("STANZAWALL_COMMIT"):
        # Built from this checkout: the commit is one of its own.
        known = run("git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}")
        assert known.returncode == 0, f"{commit!r} is not a commit of {REPO}: {known.stderr}"


def test_man_page_renders(package):
    _, root = package
    env = dict(os.environ, MANWIDTH="100", MANPAGER="cat", PAGER="cat")
    out = run("man", "-l", str(root / "usr/share/man/man1/stanzawall.1.gz"), env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "SUBCOMMANDS" in text and "stanzawall-admin-token(1)" in text and "(commit " in text, text
    sub = run("man", "-l", str(root / "usr/share/man/man1/stanzawall-check.1.gz"), env=env)
    assert sub.returncode == 0 and "--config" in sub.stdout, sub.stdout + sub.stderr


def test_bash_completion_loads(package):
    _, root = package
    script = root / "usr/share/bash-completion/completions/stanzawall"
    out = run("bash", "-c", f"source '{script}' && complete -p stanzawall")
    assert out.returncode == 0 and "stanzawall" in out.stdout, out.stderr


def test_check_runs_from_the_package(package, pki):
    _, root = package
    exe, config = root / "usr/bin/stanzawall", root / "etc/stanzawall/stanzawall.toml"
    # As installed: no certificate yet, so the service would refuse to start, saying why.
    out = run(str(exe), "check", "--config", str(config))
    assert out.returncode == 1, out.stdout
    assert "tls.certificate[0].cert" in out.stderr and "certs/example.test.crt" in out.stderr, out.stderr
    # The operator puts the certificate where the config says; the packaged config checks.
    certs = root / "etc/stanzawall/certs"
    certs.mkdir(exist_ok=True)
    shutil.copyfile(pki.cert, certs / "example.test.crt")
    shutil.copyfile(pki.key, certs / "example.test.key")
    out = run(str(exe), "check", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{config}: ok (2 listeners, 1 certificates"), out.stdout


def test_systemd_unit_verifies(package, tmp):
    _, root = package
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (Debian's systemd)")
    unit = (root / "lib/systemd/system/stanzawall.service").read_text()
    # Verified as installed, with the one path the temporary root moves: the packaged binary.
    d = tmp / "unit-verify"
    d.mkdir(exist_ok=True)
    (d / "stanzawall.service").write_text(unit.replace("/usr/bin/stanzawall", str(root / "usr/bin/stanzawall")))
    out = run("systemd-analyze", "verify", str(d / "stanzawall.service"))
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    # And the check fails when the unit names something that is not there.
    (d / "stanzawall.service").write_text(unit)
    if not Path("/usr/bin/stanzawall").exists():
        bad = run("systemd-analyze", "verify", str(d / "stanzawall.service"))
        assert bad.returncode != 0 and "/usr/bin/stanzawall" in bad.stderr, bad.stderr
