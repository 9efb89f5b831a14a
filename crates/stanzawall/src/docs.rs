//! The command line's own documentation for packagers: man pages (clap_mangen) and shell
//! completions (clap_complete), generated from the same `clap` definition the binary parses
//! with, so they cannot drift from it. Writes only where it is told (stdout or `--dir`).

use std::io::Write;
use std::path::Path;

/// Write the man pages: `stanzawall.1` and one `stanzawall-SUBCOMMAND.1` per subcommand into
/// `dir`, or only `stanzawall.1` to `out` without a directory.
pub fn man_pages(cmd: clap::Command, dir: Option<&Path>, out: &mut dyn Write) -> std::io::Result<Vec<String>> {
    let mut cmd = cmd;
    cmd.build();
    let Some(dir) = dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        out.write_all(&ascii_roff(&buf))?;
        return Ok(vec!["stanzawall.1".to_owned()]);
    };
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut pages = vec![("stanzawall".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        pages.push((format!("stanzawall-{}", sub.get_name()), sub.clone()));
    }
    for (name, page) in pages {
        let file = format!("{name}.1");
        let mut buf = Vec::new();
        // The page's title is the name `man` knows it by (`man stanzawall-check`).
        clap_mangen::Man::new(page).title(name).render(&mut buf)?;
        std::fs::write(dir.join(&file), ascii_roff(&buf))?;
        written.push(file);
    }
    Ok(written)
}

/// The page with every non-ASCII character written as a groff escape (`→` as `\[u2192]`).
/// The help texts are UTF-8 and clap_mangen copies them as they are; groff reads its input as
/// Latin-1 unless a preprocessor (man-db's preconv) converts it, so `groff -man` alone would
/// print mojibake and warn. Escaped, the page renders the same through any of them.
fn ascii_roff(page: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(page.len());
    for c in String::from_utf8_lossy(page).chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out.into_bytes()
}

/// Write the completion script for `shell` to `out`.
pub fn completions(cmd: clap::Command, shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = cmd;
    clap_complete::generate(shell, &mut cmd, "stanzawall", out);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn man_page_names_every_subcommand_and_the_version_with_its_commit() {
        let mut out = Vec::new();
        let pages = man_pages(crate::Cli::command(), None, &mut out).unwrap();
        assert_eq!(pages, vec!["stanzawall.1"]);
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains(".TH stanzawall 1"), "{page}");
        for sub in ["run", "check", "nft", "inspect", "explain", "admin\\-token", "resolve", "man", "completions"] {
            assert!(page.contains(&format!("stanzawall\\-{sub}(1)")), "{sub} missing:\n{page}");
        }
        assert!(page.contains(env!("STANZAWALL_COMMIT")), "{page}");
        assert!(crate::VERSION.contains("(commit ") && crate::VERSION.starts_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn man_pages_into_a_directory_one_per_subcommand() {
        let dir = std::env::temp_dir().join(format!("stanzawall-man-{}", std::process::id()));
        let pages = man_pages(crate::Cli::command(), Some(&dir), &mut std::io::sink()).unwrap();
        assert!(pages.contains(&"stanzawall-admin-token.1".to_owned()) && pages.len() >= 10, "{pages:?}");
        for page in &pages {
            let text = std::fs::read(dir.join(page)).unwrap();
            assert!(text.is_ascii(), "{page} has bytes groff reads as Latin-1");
        }
        let explain = std::fs::read_to_string(dir.join("stanzawall-explain.1")).unwrap();
        assert!(explain.contains("(client \\[u2192] server)"), "{explain}");
        let check = std::fs::read_to_string(dir.join("stanzawall-check.1")).unwrap();
        assert!(check.contains(".TH stanzawall-check 1") && check.contains("\\-\\-config"), "{check}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_know_the_subcommands_and_their_options() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            completions(crate::Cli::command(), shell, &mut out);
            let script = String::from_utf8(out).unwrap();
            // fish spells options `-l config`, the others `--config`.
            let (config, tokens) = match shell {
                clap_complete::Shell::Fish => ("-l config", "-l tokens"),
                _ => ("--config", "--tokens"),
            };
            for word in ["admin-token", "completions", config, tokens] {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
        }
    }
}
