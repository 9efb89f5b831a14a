//! Where a configured value came from, and the error that points there.
//!
//! Owns [`Origin`] (file, line, dotted key), [`Located`] (a value with its origin) and
//! [`ConfigError`] (`FILE:LINE: key: message`). They sit below both [`crate::config`], which
//! reads the file and records origins, and [`crate::policy`], whose compiler reports bad
//! regexes, patterns and list names at the line that wrote them — so neither has to import the
//! other to share them. Plain data: no parsing, no I/O.

use std::fmt;
use std::path::PathBuf;

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// Dotted key path, e.g. `tls.certificate[0].cert`.
    pub key: String,
}

impl Origin {
    /// An error at this place.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError { origin: self.clone(), message: message.into() }
    }
}

/// A configuration mistake, printed as `FILE:LINE: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where.
    pub origin: Origin,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        if o.key.is_empty() {
            write!(f, "{}:{}: {}", o.file.display(), o.line, self.message)
        } else {
            write!(f, "{}:{}: {}: {}", o.file.display(), o.line, o.key, self.message)
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where.
    pub origin: Origin,
}
