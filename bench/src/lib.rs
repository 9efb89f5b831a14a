//! Shared pieces of the benchmark harness: a cheap top-level XMPP element splitter, PLAIN's
//! base64, and the TLS configurations of the load generator and the sink.
//!
//! The splitter is deliberately *not* a validating parser: it trusts its peer (the gateway's
//! canonical output, HAProxy's and xmpp-proxy's byte relay of the load generator's own output)
//! and only finds where a top-level element ends, so that the sink never becomes what is
//! measured. It must never be used on untrusted input.

use std::path::Path;
use std::sync::Arc;

use memchr::{memchr, memchr3, memmem};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";

/// One top-level unit of an XMPP stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `<?xml …?>` or inter-stanza whitespace: nothing to do.
    Skip,
    /// `<stream:stream …>` (any prefix): the opening tag only.
    Header(&'a [u8]),
    /// A complete first-level element; `head` is its start tag, `bytes` the whole element.
    Element { name: &'a [u8], head: &'a [u8], bytes: &'a [u8] },
    /// `</stream:stream>`.
    Close,
}

/// The stream is not XML the splitter can follow.
#[derive(Debug)]
pub struct ScanError;

/// End of the tag starting at `buf[at] == b'<'` (index after `>`), and whether it is `/>`.
fn tag_end(buf: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut i = at + 1;
    loop {
        let k = memchr3(b'>', b'\'', b'"', &buf[i..])? + i;
        if buf[k] == b'>' {
            return Some((k + 1, buf[k - 1] == b'/'));
        }
        // A quoted attribute value may hold '>'.
        i = memchr(buf[k], &buf[k + 1..])? + k + 2;
    }
}

fn tag_name(head: &[u8]) -> &[u8] {
    let end = head[1..]
        .iter()
        .position(|&c| c.is_ascii_whitespace() || c == b'/' || c == b'>')
        .map_or(head.len(), |p| p + 1);
    &head[1..end]
}

fn local_name(name: &[u8]) -> &[u8] {
    name.iter().rposition(|&c| c == b':').map_or(name, |p| &name[p + 1..])
}

/// The next event at the start of `buf` and how many bytes it used; `Ok(None)` means more
/// bytes are needed.
pub fn next_event(buf: &[u8]) -> Result<Option<(Event<'_>, usize)>, ScanError> {
    let ws = buf.iter().take_while(|c| c.is_ascii_whitespace()).count();
    if ws > 0 {
        return Ok(Some((Event::Skip, ws)));
    }
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] != b'<' {
        return Err(ScanError);
    }
    match buf[1] {
        b'?' => Ok(memmem::find(buf, b"?>").map(|e| (Event::Skip, e + 2))),
        b'/' => Ok(memchr(b'>', buf).map(|e| (Event::Close, e + 1))),
        _ => {
            let Some((head_end, empty)) = tag_end(buf, 0) else { return Ok(None) };
            let head = &buf[..head_end];
            let name = tag_name(head);
            if local_name(name) == b"stream" {
                return Ok(Some((Event::Header(head), head_end)));
            }
            if empty {
                return Ok(Some((Event::Element { name, head, bytes: head }, head_end)));
            }
            let mut depth = 1usize;
            let mut j = head_end;
            loop {
                let Some(p) = memchr(b'<', &buf[j..]).map(|p| p + j) else { return Ok(None) };
                if p + 1 >= buf.len() {
                    return Ok(None);
                }
                if buf[p + 1] == b'/' {
                    let Some(e) = memchr(b'>', &buf[p..]) else { return Ok(None) };
                    j = p + e + 1;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(Some((Event::Element { name, head, bytes: &buf[..j] }, j)));
                    }
                } else {
                    let Some((e, empty)) = tag_end(buf, p) else { return Ok(None) };
                    if !empty {
                        depth += 1;
                    }
                    j = e;
                }
            }
        }
    }
}

/// The value of attribute `name` in a start tag (no unescaping: ids and JIDs here are plain).
pub fn attr<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(p) = memmem::find(&head[from..], name.as_bytes()).map(|p| p + from) {
        let after = p + name.len();
        let boundary = p > 0 && head[p - 1].is_ascii_whitespace();
        if boundary && head.get(after) == Some(&b'=') {
            let q = *head.get(after + 1)?;
            let rest = &head[after + 2..];
            let end = memchr(q, rest)?;
            return Some(&rest[..end]);
        }
        from = after;
    }
    None
}

/// Text of the first `<tag>…</tag>` inside `bytes` (for `<jid>` and `<resource>`).
pub fn child_text<'a>(bytes: &'a [u8], tag: &str) -> Option<&'a [u8]> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let s = memmem::find(bytes, open.as_bytes())? + open.len();
    let e = memmem::find(&bytes[s..], close.as_bytes())? + s;
    Some(&bytes[s..e])
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(B64[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text.iter().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// TLS for the sink's "direct" row: the certificate chain and key from PEM files.
pub fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(Arc::new(cfg))
}

/// The load generator does not verify certificates: verification is client-side cost that
/// would be the same in every row, and the harness talks only to its own loopback servers.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client TLS: no session resumption, so every connection is a full handshake.
pub fn client_tls(alpn: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_stream() {
        let s = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' to='a'><message to='x' id='1'><body>a&gt;b</body><x a='>'/></message> <iq id=\"2\"/></stream:stream>";
        let mut at = 0;
        let mut seen = Vec::new();
        while at < s.len() {
            let (ev, n) = next_event(&s[at..]).unwrap().unwrap();
            seen.push(match ev {
                Event::Skip => "skip".to_owned(),
                Event::Header(_) => "header".to_owned(),
                Event::Element { name, head, .. } => {
                    format!("{}#{}", String::from_utf8_lossy(name), String::from_utf8_lossy(attr(head, "id").unwrap()))
                }
                Event::Close => "close".to_owned(),
            });
            at += n;
        }
        assert_eq!(seen, ["skip", "header", "message#1", "skip", "iq#2", "close"]);
        // Every strict prefix of an element needs more bytes.
        let m = b"<message id='1'><body>hi</body></message>";
        for cut in 2..m.len() {
            assert!(next_event(&m[..cut]).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "\0user\0pass"] {
            assert_eq!(base64_decode(base64_encode(s.as_bytes()).as_bytes()).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_encode(b"\0u\0p"), "AHUAcA==");
    }
}
