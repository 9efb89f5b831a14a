//! The options of a `kind = "websocket"` listener: `path`, `allowed_origins`,
//! `max_frame_bytes`, `max_message_bytes`, `public_url`; of a `kind = "bosh"` listener: `path`,
//! `allowed_origins`, `max_request_bytes`, `public_url`. Each is refused on other kinds, where
//! it would silently do nothing.

use toml::Spanned;

use super::{limit, RawListener, MAX_BYTES};
use crate::config::locate::Locator;
use crate::config::{ConfigError, ListenerKind, Origins, WebOptions};

/// Characters that may not appear in a URL or origin the gateway writes into an HTTP answer or
/// a host-meta document (quotes and angle brackets would break out of the XRD attribute).
fn unsafe_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '<' | '>' | '&' | '\\')
}

pub(super) fn options(
    l: &RawListener,
    kind: ListenerKind,
    loc: &Locator<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<WebOptions, ConfigError> {
    let bosh = kind == ListenerKind::Bosh;
    if bosh {
        for (span, k) in [
            (l.max_frame_bytes.as_ref().map(Spanned::span), "max_frame_bytes"),
            (l.max_message_bytes.as_ref().map(Spanned::span), "max_message_bytes"),
        ] {
            if let Some(span) = span {
                return loc.err(span, &key(k), "only meaningful with kind = \"websocket\" (BOSH: max_request_bytes)");
            }
        }
    } else if let Some(m) = &l.max_request_bytes {
        return loc.err(m.span(), &key("max_request_bytes"), "only meaningful with kind = \"bosh\"");
    }
    if kind != ListenerKind::WebSocket && !bosh {
        let set: [(Option<std::ops::Range<usize>>, &str); 5] = [
            (l.path.as_ref().map(Spanned::span), "path"),
            (l.allowed_origins.as_ref().map(Spanned::span), "allowed_origins"),
            (l.max_frame_bytes.as_ref().map(Spanned::span), "max_frame_bytes"),
            (l.max_message_bytes.as_ref().map(Spanned::span), "max_message_bytes"),
            (l.public_url.as_ref().map(Spanned::span), "public_url"),
        ];
        if let Some((Some(span), k)) = set.into_iter().find(|(s, _)| s.is_some()) {
            return loc.err(span, &key(k), "only meaningful with kind = \"websocket\"");
        }
        return Ok(WebOptions::default());
    }
    let mut web = WebOptions::default();
    if bosh {
        "/http-bind".clone_into(&mut web.path);
    }
    if let Some(p) = &l.path {
        let path = p.get_ref();
        let ok = path.starts_with('/')
            && path.len() <= 256
            && path.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.~".contains(c))
            && !path.starts_with("/.well-known/");
        if !ok {
            return loc.err(
                p.span(),
                &key("path"),
                "expected an absolute path of letters, digits and '/-_.~' (not under /.well-known/), e.g. \"/xmpp-websocket\"",
            );
        }
        path.clone_into(&mut web.path);
    }
    if let Some(list) = &l.allowed_origins {
        let mut origins = Vec::new();
        for o in list.get_ref() {
            let v = o.get_ref();
            if v == "*" {
                if list.get_ref().len() != 1 {
                    return loc.err(o.span(), &key("allowed_origins"), "\"*\" allows every origin and stands alone");
                }
                web.allowed_origins = Origins::Any;
                continue;
            }
            let rest = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains('/') && !host.chars().any(unsafe_char) => {
                    origins.push(v.to_ascii_lowercase())
                }
                _ => {
                    return loc.err(
                        o.span(),
                        &key("allowed_origins"),
                        format!("'{v}' is not an origin: expected \"https://host[:port]\" (no path) or \"*\""),
                    )
                }
            }
        }
        if list.get_ref().is_empty() {
            return loc.err(
                list.span(),
                &key("allowed_origins"),
                "list at least one origin (or leave it unset: same host)",
            );
        }
        if !origins.is_empty() {
            web.allowed_origins = Origins::List(origins);
        }
    }
    web.max_frame_bytes = l
        .max_frame_bytes
        .as_ref()
        .map(|_| limit(loc, &l.max_frame_bytes, &key("max_frame_bytes"), 0, 125..=MAX_BYTES))
        .transpose()?;
    web.max_message_bytes = l
        .max_message_bytes
        .as_ref()
        .map(|_| limit(loc, &l.max_message_bytes, &key("max_message_bytes"), 0, 1024..=MAX_BYTES))
        .transpose()?;
    web.max_request_bytes = l
        .max_request_bytes
        .as_ref()
        .map(|_| limit(loc, &l.max_request_bytes, &key("max_request_bytes"), 0, 1024..=MAX_BYTES))
        .transpose()?;
    if let Some(u) = &l.public_url {
        let v = u.get_ref();
        let scheme = if bosh { "https://" } else { "wss://" };
        let ok = v.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.chars().any(unsafe_char));
        if !ok {
            return loc.err(u.span(), &key("public_url"), format!("expected a \"{scheme}host[:port]/path\" URL"));
        }
        web.public_url = Some(v.clone());
    }
    Ok(web)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ListenerKind, Origins};

    fn parse(listener: &str) -> Result<Config, String> {
        let text = format!(
            "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
             [[listener]]\nname = \"l\"\nbind = \"127.0.0.1:5443\"\nbackend = \"127.0.0.1:5222\"\n{listener}"
        );
        Config::parse(&text, std::path::Path::new("/x.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn bosh_listeners_take_their_options() {
        let c = parse("kind = \"bosh\"\n").unwrap();
        let l = &c.listeners[0];
        assert_eq!((l.kind, l.web.path.as_str(), l.web.max_request_bytes), (ListenerKind::Bosh, "/http-bind", None));
        let c = parse(
            "kind = \"bosh\"\npath = \"/bind\"\nallowed_origins = [\"https://chat.example.test\"]\n\
             max_request_bytes = 65536\npublic_url = \"https://xmpp.example.test/bind\"\n",
        )
        .unwrap();
        let w = &c.listeners[0].web;
        assert_eq!((w.path.as_str(), w.max_request_bytes), ("/bind", Some(65536)));
        assert_eq!(w.allowed_origins, Origins::List(vec!["https://chat.example.test".into()]));
        assert_eq!(w.public_url.as_deref(), Some("https://xmpp.example.test/bind"));
    }

    #[test]
    fn websocket_listeners_take_their_options_and_others_refuse_them() {
        let c = parse("kind = \"websocket\"\n").unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.kind, ListenerKind::WebSocket);
        assert_eq!((l.web.path.as_str(), &l.web.allowed_origins), ("/xmpp-websocket", &Origins::SameHost));
        let c = parse(
            "kind = \"websocket\"\npath = \"/ws\"\nallowed_origins = [\"https://Chat.Example.test\", \"http://127.0.0.1:8080\"]\n\
             max_frame_bytes = 4096\nmax_message_bytes = 65536\npublic_url = \"wss://xmpp.example.test/ws\"\n",
        )
        .unwrap();
        let w = &c.listeners[0].web;
        assert_eq!(w.path, "/ws");
        assert_eq!(
            w.allowed_origins,
            Origins::List(vec!["https://chat.example.test".into(), "http://127.0.0.1:8080".into()])
        );
        assert_eq!((w.max_frame_bytes, w.max_message_bytes), (Some(4096), Some(65536)));
        assert_eq!(w.public_url.as_deref(), Some("wss://xmpp.example.test/ws"));
        assert_eq!(
            parse("kind = \"websocket\"\nallowed_origins = [\"*\"]\n").unwrap().listeners[0].web.allowed_origins,
            Origins::Any
        );
        for (listener, key, what) in [
            ("kind = \"c2s\"\npath = \"/ws\"\n", "listener[0].path", "only meaningful with kind = \"websocket\""),
            ("kind = \"c2s-tls\"\nallowed_origins = [\"*\"]\n", "listener[0].allowed_origins", "only meaningful"),
            ("kind = \"websocket\"\npath = \"ws\"\n", "listener[0].path", "absolute path"),
            ("kind = \"websocket\"\npath = \"/.well-known/host-meta\"\n", "listener[0].path", "absolute path"),
            ("kind = \"websocket\"\npath = \"/a'b\"\n", "listener[0].path", "absolute path"),
            (
                "kind = \"websocket\"\nallowed_origins = [\"*\", \"https://a.example\"]\n",
                "listener[0].allowed_origins",
                "stands alone",
            ),
            (
                "kind = \"websocket\"\nallowed_origins = [\"a.example\"]\n",
                "listener[0].allowed_origins",
                "is not an origin",
            ),
            (
                "kind = \"websocket\"\nallowed_origins = [\"https://a.example/path\"]\n",
                "listener[0].allowed_origins",
                "is not an origin",
            ),
            ("kind = \"websocket\"\nallowed_origins = []\n", "listener[0].allowed_origins", "at least one"),
            ("kind = \"websocket\"\nmax_frame_bytes = 10\n", "listener[0].max_frame_bytes", "from 125 to"),
            ("kind = \"websocket\"\npublic_url = \"https://a.example/ws\"\n", "listener[0].public_url", "wss://"),
            ("kind = \"websocket\"\npublic_url = \"wss://a.example/'><x\"\n", "listener[0].public_url", "wss://"),
            ("kind = \"http\"\n", "listener[0].kind", "\"bosh\""),
            ("kind = \"bosh\"\nmax_frame_bytes = 4096\n", "listener[0].max_frame_bytes", "max_request_bytes"),
            ("kind = \"websocket\"\nmax_request_bytes = 4096\n", "listener[0].max_request_bytes", "\"bosh\""),
            ("kind = \"bosh\"\npublic_url = \"wss://a.example/b\"\n", "listener[0].public_url", "https://"),
            ("kind = \"bosh\"\nmax_request_bytes = 10\n", "listener[0].max_request_bytes", "from 1024 to"),
        ] {
            let e = parse(listener).unwrap_err();
            assert!(e.contains(key) && e.contains(what), "{listener}: {e}");
        }
    }
}
