//! The admin API's bearer tokens: a file of hashed tokens, each with a name and a role.
//!
//! The file holds `NAME ROLE sha256:HEX` lines (`#` comments, blank lines skipped); the token
//! itself is never stored, only its SHA-256. Tokens are 256 random bits, so a fast hash is
//! enough: there is nothing to brute-force offline that is cheaper than guessing the token.
//! A presented token is hashed and compared with every stored hash in constant time
//! (`subtle`), so neither the position of a match nor a common prefix shows in the timing.
//! `stanzawall admin-token` appends a new line atomically and prints the token once.

use std::path::Path;

use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read everything, change nothing.
    Read,
    /// Read and act (kick, ban, edit lists, reload).
    Admin,
}

impl Role {
    /// The file and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    /// Parse the file and CLI spelling.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Who holds it (audit records name it).
    pub name: String,
    /// What it may do.
    pub role: Role,
    hash: [u8; 32],
}

/// The tokens of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    tokens: Vec<Token>,
}

/// A mistake in the token file, at a line.
#[derive(Debug, thiserror::Error)]
#[error("{line}: {what}")]
pub struct TokenFileError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

/// Prefix of every token we make (lets secret scanners and operators recognize one).
const PREFIX: &str = "swt_";

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Token names: what audit records and logs show.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

impl TokenSet {
    /// Parse the file's text.
    pub fn parse(text: &str) -> Result<TokenSet, TokenFileError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |what: String| TokenFileError { line: i + 1, what };
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(err("expected NAME ROLE sha256:HEX".to_owned()));
            };
            if !valid_name(name) {
                return Err(err(format!("'{name}': names are 1-64 letters, digits, '-', '_', '.' or '@'")));
            }
            let role = Role::parse(role).ok_or_else(|| err(format!("'{role}': the role is read or admin")))?;
            let hash = hash
                .strip_prefix("sha256:")
                .and_then(unhex32)
                .ok_or_else(|| err("expected sha256: and 64 hex digits".to_owned()))?;
            if tokens.iter().any(|t| t.name == name) {
                return Err(err(format!("'{name}' is named twice")));
            }
            tokens.push(Token { name: name.to_owned(), role, hash });
        }
        Ok(TokenSet { tokens })
    }

    /// The stored token `presented` is, if any. Every stored hash is compared, in constant
    /// time each.
    pub fn verify(&self, presented: &str) -> Option<&Token> {
        let hash = sha256(presented.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.hash.ct_eq(&hash)) {
                found = Some(t);
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// A new random token and its file line.
pub fn generate(name: &str, role: Role) -> std::io::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = format!("{PREFIX}{}", hex(&bytes));
    let created = crate::audit::humantime_rfc3339(std::time::SystemTime::now());
    let line = format!("{name} {} sha256:{}  # created {created}\n", role.as_str(), hex(&sha256(token.as_bytes())));
    Ok((token, line))
}

/// `stanzawall admin-token`: add a token to `file` (created with mode 0600 if missing) and
/// return it. The file is rewritten atomically (a temporary file renamed over it).
pub fn add_to_file(file: &Path, name: Option<&str>, role: Role) -> anyhow::Result<String> {
    let existing = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("{}: {e}", file.display()),
    };
    let set = TokenSet::parse(&existing).map_err(|e| anyhow::anyhow!("{}:{e}", file.display()))?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => format!("token-{}", set.len() + 1),
    };
    if !valid_name(&name) {
        anyhow::bail!("--name '{name}': names are 1-64 letters, digits, '-', '_', '.' or '@'");
    }
    if set.tokens.iter().any(|t| t.name == name) {
        anyhow::bail!("{}: a token named '{name}' exists already", file.display());
    }
    let (token, line) = generate(&name, role)?;
    let mut text = existing;
    if text.is_empty() {
        text.push_str("# stanzawall admin tokens: NAME ROLE sha256:HASH (the tokens themselves are not stored)\n");
    } else if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    crate::files::replace_atomically(file, &text, Some(0o600))
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_verify_with_their_role_only() {
        let (admin, l1) = generate("ops", Role::Admin).unwrap();
        let (read, l2) = generate("viewer", Role::Read).unwrap();
        assert!(admin.starts_with("swt_") && admin.len() == 68);
        assert!(!l1.contains(&admin), "the token itself is never stored");
        let set = TokenSet::parse(&format!("# c\n\n{l1}{l2}")).unwrap();
        assert_eq!(set.verify(&admin).map(|t| (t.name.as_str(), t.role)), Some(("ops", Role::Admin)));
        assert_eq!(set.verify(&read).map(|t| t.role), Some(Role::Read));
        assert!(set.verify("").is_none());
        assert!(set.verify(&admin[..67]).is_none());
        assert!(set.verify(&format!("{admin}0")).is_none());
    }

    #[test]
    fn bad_lines_name_their_line() {
        let ok = format!("a admin sha256:{}\n", "0".repeat(64));
        for (text, want) in [
            (format!("{ok}b root sha256:{}\n", "0".repeat(64)), "2: 'root'"),
            (format!("{ok}a read sha256:{}\n", "1".repeat(64)), "2: 'a' is named twice"),
            ("x admin sha256:zz\n".to_owned(), "1: expected sha256:"),
            ("x admin\n".to_owned(), "1: expected NAME ROLE"),
            (format!("bad/name read sha256:{}\n", "0".repeat(64)), "1: 'bad/name'"),
        ] {
            let e = TokenSet::parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e} (want {want})");
        }
    }

    #[test]
    fn add_to_file_appends_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sw-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        let _ = std::fs::remove_file(&file);
        let t1 = add_to_file(&file, Some("alice"), Role::Admin).unwrap();
        let t2 = add_to_file(&file, None, Role::Read).unwrap();
        assert!(add_to_file(&file, Some("alice"), Role::Read).is_err());
        let text = std::fs::read_to_string(&file).unwrap();
        let set = TokenSet::parse(&text).unwrap();
        assert_eq!(set.verify(&t1).unwrap().name, "alice");
        assert_eq!(set.verify(&t2).unwrap().name, "token-2");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
