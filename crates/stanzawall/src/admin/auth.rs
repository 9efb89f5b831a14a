//! Who may call the admin API: bearer tokens ([`crate::tokens`]) and the limit on failed
//! attempts.
//!
//! A request without a valid `Authorization: Bearer TOKEN` gets 401; a `read` token on an
//! action gets 403. Failed attempts are counted per client address in fixed windows: past
//! [`MAX_FAILURES`] in a window, every request from that address gets 429 until the window
//! ends — a correct token included, so guessing gains nothing from continuing. No cookies are
//! ever set, so a browser cannot be made to send a credential cross-site (no CSRF surface).
//! Sans-IO: the limiter takes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed attempts allowed per address and window.
pub const MAX_FAILURES: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once (beyond, expired windows are forgotten first, then all).
const MAX_TRACKED: usize = 10_000;

/// Failed attempts per client address.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: HashMap<IpAddr, (Instant, u32)>,
}

impl FailureLimiter {
    /// Is `ip` locked out at `now`?
    pub fn locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.windows.get(&ip).is_some_and(|&(start, n)| n >= MAX_FAILURES && now.duration_since(start) < WINDOW)
    }

    /// Count a failure of `ip` at `now`; true if this one reaches the limit.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&ip) {
            self.windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.windows.len() >= MAX_TRACKED {
                self.windows.clear();
            }
        }
        let w = self.windows.entry(ip).or_insert((now, 0));
        if now.duration_since(w.0) >= WINDOW {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1 == MAX_FAILURES
    }
}

/// The limiter behind its lock (plain counters: a panic elsewhere cannot leave them half-set).
pub fn lock(m: &std::sync::Mutex<FailureLimiter>) -> std::sync::MutexGuard<'_, FailureLimiter> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    // RFC 7235 §2.1: the scheme is case-insensitive.
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_after_the_limit_until_the_window_ends() {
        let mut l = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 1..MAX_FAILURES {
            assert!(!l.failed(ip, t0));
            assert!(!l.locked(ip, t0), "after {i}");
        }
        assert!(l.failed(ip, t0));
        assert!(l.locked(ip, t0 + WINDOW - Duration::from_millis(1)));
        assert!(!l.locked(other, t0));
        assert!(!l.locked(ip, t0 + WINDOW));
        assert!(!l.failed(ip, t0 + WINDOW), "a new window starts from one");
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
