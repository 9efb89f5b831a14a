//! Records the commit the binary is built from for `stanzawall --version`.
//!
//! `STANZAWALL_COMMIT` in the environment wins (a package built from a source tarball has no
//! git); else `git rev-parse` in the source tree, with `-dirty` for uncommitted changes; else
//! `unknown`. Never fails the build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=STANZAWALL_COMMIT");
    let commit = std::env::var("STANZAWALL_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let head = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Rebuild when HEAD moves: the file HEAD names, and the branch ref it points at.
        for p in [
            git(&["rev-parse", "--git-path", "HEAD"]),
            git(&["rev-parse", "--symbolic-full-name", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        ]
        .into_iter()
        .flatten()
        {
            println!("cargo:rerun-if-changed={p}");
        }
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        Some(if dirty { format!("{head}-dirty") } else { head })
    });
    println!("cargo:rustc-env=STANZAWALL_COMMIT={}", commit.unwrap_or_else(|| "unknown".to_owned()));
}
