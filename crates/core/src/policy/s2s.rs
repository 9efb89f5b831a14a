//! The federation domain policy (`[s2s]` allow, deny, require_authenticated, per-domain rates),
//! compiled. Part of [`super::Policy`] so that a reload replaces it with the rest and live s2s
//! sessions re-check their domains (`StreamMachine::set_policy`). Lookups are hash lookups per
//! label of the domain ([`DomainSet`]), never a scan over entries.

use super::spec::{AuthLevel, S2sDomainsConfig};
use crate::origin::ConfigError;
use crate::policy::jidset::DomainSet;
use crate::policy::rate::Limit;

/// Buckets one peer address may hold in the per-domain limiters: a busy hosting provider
/// serves many domains from one address.
const MAX_DOMAINS_PER_SOURCE: usize = 65_536;

/// The compiled `[s2s]` domain policy.
#[derive(Debug, Default)]
pub struct S2sRules {
    allow: Option<DomainSet>,
    deny: DomainSet,
    require: Vec<(DomainSet, AuthLevel)>,
    default_require: Option<AuthLevel>,
    /// `stanza_rate_per_domain`.
    pub stanza_rate: Option<Limit>,
    /// `connection_rate_per_domain`.
    pub connection_rate: Option<Limit>,
}

impl S2sRules {
    /// Compile; an entry that is not a domain pattern names its file and line.
    pub fn compile(c: &S2sDomainsConfig) -> Result<S2sRules, ConfigError> {
        let set = |entries: &[crate::origin::Located<String>]| {
            DomainSet::from_entries(entries.iter().map(|e| e.value.as_str()))
                .map_err(|(i, why)| entries[i].origin.error(why))
        };
        let mut require = Vec::new();
        for (pattern, level) in &c.require {
            require.push((set(std::slice::from_ref(pattern))?, *level));
        }
        let limit =
            |r: Option<crate::limit::Rate>| r.map(|rate| Limit { rate, max_keys_per_source: MAX_DOMAINS_PER_SOURCE });
        Ok(S2sRules {
            allow: if c.allow.is_empty() { None } else { Some(set(&c.allow)?) },
            deny: set(&c.deny)?,
            require,
            default_require: c.default_require,
            stanza_rate: limit(c.stanza_rate),
            connection_rate: limit(c.connection_rate),
        })
    }

    /// Why federation with `domain` is refused, if it is: `deny` wins over `allow`.
    pub fn refusal(&self, domain: &str) -> Option<&'static str> {
        if self.deny.matches_domain(domain) {
            return Some("the domain is denied by s2s.deny");
        }
        match &self.allow {
            Some(allow) if !allow.matches_domain(domain) => Some("the domain is not in s2s.allow"),
            _ => None,
        }
    }

    /// How strongly `domain` must be authenticated: the first `require_authenticated` pattern
    /// that matches, else the default (dialback).
    pub fn required(&self, domain: &str) -> AuthLevel {
        self.require
            .iter()
            .find(|(set, _)| set.matches_domain(domain))
            .map(|(_, l)| *l)
            .or(self.default_require)
            .unwrap_or(AuthLevel::Dialback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{Located, Origin};

    fn located(v: &str) -> Located<String> {
        Located { value: v.to_owned(), origin: Origin { file: "t.toml".into(), line: 1, key: "s2s".into() } }
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let c = S2sDomainsConfig {
            allow: vec![located("partner.example"), located("*.partner.example")],
            deny: vec![located("bad.partner.example")],
            ..Default::default()
        };
        let r = S2sRules::compile(&c).expect("compiles");
        assert_eq!(r.refusal("partner.example"), None);
        assert_eq!(r.refusal("x.partner.example"), None);
        assert_eq!(r.refusal("Partner.Example"), None, "compared in canonical form");
        assert!(r.refusal("bad.partner.example").is_some_and(|w| w.contains("deny")));
        assert!(r.refusal("other.example").is_some_and(|w| w.contains("allow")));
        let open = S2sRules::compile(&S2sDomainsConfig::default()).expect("compiles");
        assert_eq!(open.refusal("anyone.example"), None, "an empty allow list allows everyone");
    }

    #[test]
    fn require_first_match_then_default() {
        let c = S2sDomainsConfig {
            require: vec![(located("*.bank.example"), AuthLevel::Dane), (located("bank.example"), AuthLevel::Pkix)],
            default_require: Some(AuthLevel::Dialback),
            ..Default::default()
        };
        let r = S2sRules::compile(&c).expect("compiles");
        assert_eq!(r.required("pay.bank.example"), AuthLevel::Dane);
        assert_eq!(r.required("bank.example"), AuthLevel::Pkix);
        assert_eq!(r.required("chat.example"), AuthLevel::Dialback);
    }
}
