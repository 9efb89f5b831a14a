//! `[contacts]`: the gateway's own component connection to the server (XEP-0114) with the
//! privileges XEP-0356 grants it — rosters of users it has not seen, RTBL subscriptions, spam
//! reports forwarded to administrators (README "Anti-spam"). Parsed here into
//! [`ContactsConfig`]; the daemon's `component` module runs the connection.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use super::{ConfigError, Origin};

/// `[contacts]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContacts {
    component: Option<Spanned<String>>,
    backend: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    report_to: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[contacts]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactsConfig {
    /// The component's address (`component`): a domain the server accepts a component for.
    pub component: String,
    /// The server's component port (`backend`, `host:port`).
    pub backend: String,
    /// The file holding the shared secret (`secret_file`; surrounding whitespace is ignored).
    pub secret_file: PathBuf,
    /// Where `secret_file` was configured (errors reading it point here).
    pub secret_origin: Origin,
    /// Administrators who receive XEP-0377 spam reports (`report_to`, bare JIDs).
    pub report_to: Vec<String>,
    /// Where the section was declared.
    pub origin: Origin,
}

/// Validate `[contacts]` (span of the section for errors about missing keys).
pub(super) fn contacts(
    raw: Option<&Spanned<RawContacts>>,
    loc: &Locator<'_>,
) -> Result<Option<ContactsConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let origin = loc.origin(raw.span(), "contacts");
    let r = raw.get_ref();
    let Some(component) = &r.component else {
        return Err(origin.error("needs component = \"NAME\" (the component's domain, as the server knows it)"));
    };
    if !crate::jid::is_domain(component.get_ref()) || component.get_ref().contains(['\'', '"', '<', '&']) {
        return loc.err(component.span(), "contacts.component", "must be a domain name");
    }
    let component_name = crate::jid::parse(component.get_ref()).map_or_else(String::new, |j| j.to_string());
    let Some(backend) = &r.backend else {
        return Err(origin.error("needs backend = \"HOST:PORT\" (the server's component port)"));
    };
    if !super::raw::valid_host_port(backend.get_ref()) {
        return loc.err(backend.span(), "contacts.backend", "expected HOST:PORT");
    }
    let Some(secret) = &r.secret_file else {
        return Err(origin.error("needs secret_file = \"PATH\" (the component's shared secret)"));
    };
    if secret.get_ref().trim().is_empty() {
        return loc.err(secret.span(), "contacts.secret_file", "must name a file");
    }
    let mut report_to = Vec::new();
    for j in r.report_to.iter().flat_map(|l| l.get_ref()) {
        match crate::jid::parse(j.get_ref()) {
            Some(jid) if jid.node().is_some() && jid.resource().is_none() => report_to.push(jid.to_string()),
            _ => return loc.err(j.span(), "contacts.report_to", format!("'{}' is not a bare JID", j.get_ref())),
        }
    }
    if report_to.len() > 64 {
        return loc.err(r.report_to.as_ref().map_or(0..0, |l| l.span()), "contacts.report_to", "at most 64 addresses");
    }
    Ok(Some(ContactsConfig {
        component: component_name,
        backend: backend.get_ref().clone(),
        secret_file: loc.path(secret.get_ref()),
        secret_origin: loc.origin(secret.span(), "contacts.secret_file"),
        report_to,
        origin,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str = "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
        [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:15222\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("/etc/stanzawall/gw.toml")).map_err(|e| e.to_string())
    }

    const CONTACTS: &str = "[contacts]\ncomponent = \"stanzawall.example.test\"\nbackend = \"127.0.0.1:5347\"\n\
        secret_file = \"component.secret\"\nreport_to = [\"Admin@example.test\"]\n";

    #[test]
    fn contacts_are_read_with_paths_beside_the_config() {
        let c = parse(CONTACTS).unwrap().contacts.unwrap();
        assert_eq!(c.component, "stanzawall.example.test");
        assert_eq!(c.backend, "127.0.0.1:5347");
        assert_eq!(c.secret_file, Path::new("/etc/stanzawall/component.secret"));
        assert_eq!(c.report_to, vec!["admin@example.test".to_owned()]);
        assert!(parse("").unwrap().contacts.is_none());
    }

    #[test]
    fn contacts_errors_name_file_line_and_key() {
        let e = parse("[contacts]\ncomponent = \"not a domain\"\nbackend = \"127.0.0.1:5347\"\nsecret_file = \"s\"\n")
            .unwrap_err();
        assert!(e.starts_with("/etc/stanzawall/gw.toml:11: contacts.component: must be a domain name"), "{e}");
        let e = parse("[contacts]\ncomponent = \"c.example.test\"\nbackend = \"nowhere\"\nsecret_file = \"s\"\n")
            .unwrap_err();
        assert!(e.contains(":12: contacts.backend: expected HOST:PORT"), "{e}");
        let e = parse("[contacts]\ncomponent = \"c.example.test\"\nbackend = \"127.0.0.1:5347\"\n").unwrap_err();
        assert!(e.contains("contacts: needs secret_file"), "{e}");
        let e = parse(&CONTACTS.replace("Admin@example.test", "example.test")).unwrap_err();
        assert!(e.contains("contacts.report_to: 'example.test' is not a bare JID"), "{e}");
        let e = parse(&format!("{CONTACTS}colour = \"blue\"\n")).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn an_rtbl_list_is_kept_in_the_state_dir_and_needs_the_component() {
        let rtbl =
            "[list.rtbl_domains]\nrtbl = { service = \"pubsub.example.test\", node = \"spam_source_domains\" }\n";
        let c = parse(&format!("{CONTACTS}{rtbl}")).unwrap();
        let l = &c.policy.lists["rtbl_domains"];
        assert_eq!(l.file.as_deref(), Some(Path::new("/etc/stanzawall/state/rtbl/rtbl_domains.list")));
        assert!(l.entries.is_empty());
        let src = l.rtbl.as_ref().unwrap();
        assert_eq!((src.service.as_str(), src.node.as_str()), ("pubsub.example.test", "spam_source_domains"));
        assert!(c.watched_files().contains(&l.file.clone().unwrap()), "reloaded when the daemon rewrites it");
        let e = parse(rtbl).unwrap_err();
        assert!(e.contains("list.rtbl_domains: rtbl needs [contacts] component"), "{e}");
        let both = "[list.x]\nentries = [\"a.example\"]\nrtbl = { service = \"pubsub.example.test\", node = \"n\" }\n";
        let e = parse(&format!("{CONTACTS}{both}")).unwrap_err();
        assert!(e.contains("list.x.rtbl: use rtbl, file or entries, one of them"), "{e}");
        let bad = "[list.x]\nrtbl = { service = \"pubsub.example.test\", node = \"\" }\n";
        assert!(parse(&format!("{CONTACTS}{bad}")).unwrap_err().contains("list.x.rtbl.node"));
        let bad = "[list.x]\nrtbl = { service = \"a@b@c\", node = \"n\" }\n";
        assert!(parse(&format!("{CONTACTS}{bad}")).unwrap_err().contains("list.x.rtbl.service"));
        let bad = "[list.x]\nrtbl = { service = \"pubsub.example.test\", node = \"n\", extra = 1 }\n";
        assert!(parse(&format!("{CONTACTS}{bad}")).unwrap_err().contains("extra"));
    }
}
