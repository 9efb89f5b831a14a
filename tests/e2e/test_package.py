"""The Debian package an operator installs (issue 19), built by ``cargo deb`` through
``scripts/package-deb.sh`` from the binary under test, and tested two ways:

- unpacked with ``dpkg -x`` into a temporary directory: control data, where every file lands,
  ``--version`` with the commit, every man page through ``man -l`` and ``groff -ww`` without a
  warning, the completions in bash, ``stanzawall check`` on the packaged config, and
  ``systemd-analyze verify`` on the unit;
- installed for real into a clean Debian chroot (``debootstrap --variant=minbase
  --include=systemd`` of this machine's release: what a server with systemd has, nothing more),
  with dpkg running the maintainer scripts there: dpkg finds the Depends satisfied, postinst
  creates the system user and the state directory with the right owner, ``stanzawall check``
  runs from the installed package as the service user, the installed unit verifies against
  that root, and ``dpkg --purge`` removes it all again.

Why a chroot and not ``dpkg -i`` on this machine: the chroot is clean (nothing installed by hand
hides a missing dependency: it found that the unit's ``/bin/kill`` needs procps, which a minimal
Debian lacks), and the test never touches this machine's package database or users. The chroot
is made once and cached as a tar file in ``$STANZAWALL_CHROOT_CACHE`` (default
``/var/cache/stanzawall-tests``; remade after a week); each run unpacks a fresh copy into its
temporary directory and deletes it. debootstrap fetches from the mirror this machine's apt uses.
Needs root (dpkg and chroot), as the whole suite does.

No ports: this module needs no gateway and no XMPP server.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import stat
import subprocess
import time
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
    for field in ("Package: stanzawall", "Version: 0.", "Section: net", "Recommends: nftables"):
        assert field in info.stdout, info.stdout
    depends = re.search(r"^ Depends: (.*)$", info.stdout, re.M)
    assert depends, info.stdout
    # cargo-deb's $auto (the libraries the binary links) and adduser for postinst.
    names = {d.split()[0] for d in depends.group(1).split(", ")}
    assert {"libc6", "adduser"} <= names, depends.group(1)
    listing = run("dpkg-deb", "--contents", str(deb)).stdout
    assert "./usr/bin/stanzawall" in listing, listing
    # Every file root's (cargo-deb writes the ids, 0/0), whoever built the package.
    owners = {line.split()[1] for line in listing.splitlines() if line.strip()}
    assert owners <= {"0/0", "root/root"}, owners
    ctrl = run("sh", "-c", f"dpkg-deb --ctrl-tarfile '{deb}' | tar -xO ./conffiles")
    assert sorted(ctrl.stdout.split()) == ["/etc/stanzawall/admin-tokens", "/etc/stanzawall/lists/spam-domains.txt",
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


def test_every_man_page_renders_without_a_warning(package):
    """``man --warnings`` (groff's warnings, through man-db's preprocessors, in the C locale)
    and plain ``groff -ww -z -man`` (every warning, no preprocessor: input read as Latin-1) both
    stay silent on every page."""
    if shutil.which("groff") is None:
        pytest.fail("groff is needed (Debian's groff-base)")
    _, root = package
    pages = sorted((root / "usr/share/man/man1").glob("*.1.gz"))
    assert len(pages) >= 10, pages
    env = dict(os.environ, LC_ALL="C", MANWIDTH="80", MANPAGER="cat", PAGER="cat")
    for page in pages:
        out = run("man", "--warnings", "-l", str(page), env=env)
        assert out.returncode == 0 and out.stderr == "", f"{page.name}: {out.stderr}"
        assert page.name.removesuffix(".1.gz") in out.stdout, out.stdout
        raw = subprocess.run(["groff", "-ww", "-z", "-man"], input=gzip.decompress(page.read_bytes()),
                             capture_output=True, timeout=TIMEOUT)
        assert raw.returncode == 0 and raw.stderr == b"", f"{page.name}: {raw.stderr.decode()}"
    # What the escaping is for: the arrow in explain's --chain help renders as one.
    utf8 = dict(env, LC_ALL="C.UTF-8")
    explain = run("man", "-l", str(root / "usr/share/man/man1/stanzawall-explain.1.gz"), env=utf8)
    assert "(client \u2192 server)" in explain.stdout, explain.stdout


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


def test_unit_reload_signals_the_main_process(package, tmp):
    """``ExecReload=`` as systemd runs it (MAINPID in its environment, no shell of systemd's
    own): the main process gets SIGHUP, which is ``stanzawall run``'s reload."""
    _, root = package
    unit = (root / "lib/systemd/system/stanzawall.service").read_text()
    lines = [l.split("=", 1)[1] for l in unit.splitlines() if l.startswith("ExecReload=")]
    assert len(lines) == 1, lines
    env = {"PATH": "/usr/bin:/bin", "MAINPID": ""}
    # systemd.service(5) "Command lines": a word that is only $NAME or ${NAME} becomes the
    # variable's value (split at whitespace); ${NAME} inside a word is replaced in place.
    def expand(argv: list[str]) -> list[str]:
        out: list[str] = []
        for w in argv:
            whole = re.fullmatch(r"\$(\w+)|\$\{(\w+)\}", w)
            if whole:
                out += env.get(whole.group(1) or whole.group(2), "").split()
            else:
                out.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), w))
        return out
    marker, ready = tmp / "reload-hup", tmp / "reload-ready"
    marker.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    main = subprocess.Popen(["/bin/sh", "-c", f"trap 'echo hup > {marker}; exit 0' HUP; touch {ready}; "
                             "i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 3"])
    try:
        for _ in range(300):  # the trap is set once the file exists
            if ready.exists():
                break
            time.sleep(0.05)
        assert ready.exists(), "the stand-in main process did not start"
        env["MAINPID"] = str(main.pid)
        reload = subprocess.run(expand(shlex.split(lines[0])), env=env, capture_output=True, text=True,
                                timeout=TIMEOUT)
        assert reload.returncode == 0, reload.stderr
        assert main.wait(timeout=30) == 0 and marker.read_text() == "hup\n"
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()


# --- installed for real, in a clean chroot --------------------------------------------------

CHROOT_CACHE = Path(os.environ.get("STANZAWALL_CHROOT_CACHE", "/var/cache/stanzawall-tests"))
CHROOT_MAX_AGE = 7 * 24 * 3600  # a week: the mirror moves on, and so does the cached system
# Inside the chroot: a plain root environment, none of this machine's (pyenv, cargo, …).
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive",
              "HOME": "/root"}
CHROOT_TIMEOUT = 900  # debootstrap, once a week at most


def _os_release(key: str) -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip().strip('"')
    pytest.fail(f"/etc/os-release has no {key}")


def _apt_mirror(codename: str) -> str | None:
    """The URI this machine's apt fetches ``codename`` from (deb822 .sources or one-line
    sources.list), or None to leave debootstrap its default."""
    sources = Path("/etc/apt/sources.list.d")
    for f in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in f.read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (l.partition(":") for l in stanza.splitlines())
                if not k.startswith("#") and v
            )
            if "deb" in fields.get("Types", "").split() and codename in fields.get("Suites", "").split():
                return fields.get("URIs", "").split()[0] if fields.get("URIs") else None
    listing = Path("/etc/apt/sources.list")
    for line in listing.read_text().splitlines() if listing.exists() else []:
        words = [w for w in line.split() if not w.startswith("[")]
        if len(words) >= 3 and words[0] == "deb" and words[2] == codename:
            return words[1]
    return None


def _base_system() -> Path:
    """A tar of ``debootstrap --variant=minbase --include=systemd CODENAME``, made at most once
    a week (the e2e lock keeps two runs from making it at once)."""
    codename = _os_release("VERSION_CODENAME")
    tarball = CHROOT_CACHE / f"{codename}-minbase-systemd-libpcap.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime < CHROOT_MAX_AGE:
        return tarball
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is needed (scripts/install-test-deps.sh installs it)")
    CHROOT_CACHE.mkdir(parents=True, exist_ok=True)
    work = CHROOT_CACHE / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        # libpcap0.8: the package's one library dependency beyond libc (live capture); dpkg -i
        # does not fetch dependencies, a server installing with apt would.
        cmd = ["debootstrap", "--variant=minbase", "--include=systemd,libpcap0.8", codename, str(work / "root")]
        mirror = _apt_mirror(codename)
        if mirror:
            cmd.append(mirror)
        boot = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROOT_TIMEOUT)
        assert boot.returncode == 0, f"debootstrap failed:\n{boot.stdout[-3000:]}\n{boot.stderr[-3000:]}"
        # The package cache is not part of a clean system.
        for deb in (work / "root/var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        packed = run("tar", "--numeric-owner", "-C", str(work / "root"), "-cf", str(work / "root.tar"), ".")
        assert packed.returncode == 0, packed.stderr
        os.replace(work / "root.tar", tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


@pytest.fixture
def clean_root(tmp: Path):
    """A fresh copy of the cached clean system, deleted afterwards (nothing is mounted in it)."""
    if os.geteuid() != 0:
        pytest.fail("the chroot install test needs root (dpkg and chroot), as the whole suite does")
    tarball = _base_system()
    root = tmp / "chroot"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    unpacked = run("tar", "--numeric-owner", "-C", str(root), "-xpf", str(tarball))
    assert unpacked.returncode == 0, unpacked.stderr
    try:
        yield root
    finally:
        mounts = Path("/proc/mounts").read_text()
        assert f" {root}/" not in mounts and f" {root} " not in mounts, "something is mounted in the chroot"
        shutil.rmtree(root)


def in_root(root: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["chroot"] + ([f"--userspec={user}:{user}"] if user else []) + [str(root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=CHROOT_ENV)


def _account(root: Path, file: str, name: str) -> list[str] | None:
    for line in (root / "etc" / file).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def test_installs_runs_and_purges_in_a_clean_chroot(package, pki, clean_root):
    deb, _ = package
    root = clean_root
    assert not (root / "usr/bin/stanzawall").exists() and _account(root, "passwd", "stanzawall") is None
    shutil.copyfile(deb, root / "tmp/stanzawall.deb")

    # dpkg checks Depends against what is installed and runs preinst/postinst in the chroot.
    install = in_root(root, "dpkg", "-i", "/tmp/stanzawall.deb")
    assert install.returncode == 0, install.stdout + install.stderr
    assert "warning" not in (install.stdout + install.stderr).lower(), install.stdout + install.stderr
    status = in_root(root, "dpkg-query", "-W", "-f=${Status}\n${Conffiles}\n", "stanzawall")
    assert status.stdout.startswith("install ok installed\n"), status.stdout + status.stderr
    conffiles = sorted(line.split()[0] for line in status.stdout.splitlines()[1:] if line.strip())
    assert conffiles == ["/etc/stanzawall/admin-tokens", "/etc/stanzawall/lists/spam-domains.txt",
                         "/etc/stanzawall/stanzawall.toml"], status.stdout

    # postinst: a system user and group, the state and log directories theirs, the token file
    # readable by the group only.
    user = _account(root, "passwd", "stanzawall")
    group = _account(root, "group", "stanzawall")
    assert user and group, "postinst created no stanzawall user or group"
    uid, gid = int(user[2]), int(group[2])
    assert uid < 1000 and user[5] == "/var/lib/stanzawall" and user[6].endswith("nologin"), user
    for d in ("var/lib/stanzawall", "var/log/stanzawall"):
        st = (root / d).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750), (d, st)
    st = (root / "etc/stanzawall/admin-tokens").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640), st

    # The installed binary runs in the clean system, as the service user.
    version = in_root(root, "/usr/bin/stanzawall", "--version", user="stanzawall")
    assert version.returncode == 0 and version.stdout.startswith("stanzawall 0."), version.stdout + version.stderr
    config = "/etc/stanzawall/stanzawall.toml"
    check = in_root(root, "/usr/bin/stanzawall", "check", "--config", config, user="stanzawall")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "tls.certificate[0].cert" in check.stderr and "certs/example.test.crt" in check.stderr, check.stderr
    # The operator puts the certificate where the config says (the key readable by the service
    # group only), and the config the unit's ExecStartPre= checks is ok.
    certs = root / "etc/stanzawall/certs"
    certs.mkdir()
    shutil.copyfile(pki.cert, certs / "example.test.crt")
    shutil.copyfile(pki.key, certs / "example.test.key")
    os.chown(certs / "example.test.key", 0, gid)
    os.chmod(certs / "example.test.key", 0o640)
    check = in_root(root, "/usr/bin/stanzawall", "check", "--config", config, user="stanzawall")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"{config}: ok (2 listeners, 1 certificates"), check.stdout

    # The installed unit, verified against this root: its binaries, user and targets are there.
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (Debian's systemd)")
    verify = run("systemd-analyze", "verify", f"--root={root}", "/lib/systemd/system/stanzawall.service")
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr

    # Purge: the package's files, conffiles, user data directories go; the certificate the
    # operator added is not the package's, and stays.
    purge = in_root(root, "dpkg", "--purge", "stanzawall")
    assert purge.returncode == 0, purge.stdout + purge.stderr
    gone = in_root(root, "dpkg-query", "-W", "-f=${Status}", "stanzawall")
    assert gone.returncode != 0 or "not-installed" in gone.stdout, gone.stdout
    for f in ("usr/bin/stanzawall", "lib/systemd/system/stanzawall.service", "etc/stanzawall/stanzawall.toml",
              "etc/stanzawall/admin-tokens", "etc/stanzawall/lists", "var/lib/stanzawall", "var/log/stanzawall",
              "usr/share/man/man1/stanzawall.1.gz", "usr/share/doc/stanzawall"):
        assert not (root / f).exists(), f"{f} survived dpkg --purge"
    assert (certs / "example.test.key").exists()
