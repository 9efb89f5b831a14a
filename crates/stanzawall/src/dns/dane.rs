//! Is this s2s peer's certificate good for its domain? DANE (RFC 6698/7671/7673) else PKIX.
//!
//! Owns the decision on a peer's certificate chain as a pure function ([`verify_peer`]), and the
//! two rustls verifiers that carry it into handshakes: [`S2sServerVerifier`] (outbound: our
//! client checks the remote server) and [`S2sClientCertVerifier`] (inbound: the remote's client
//! certificate for SASL EXTERNAL, XEP-0178). Neither verifier fails a handshake because PKIX
//! failed — the session may still authenticate the peer by dialback (XEP-0220) — but a chain
//! that contradicts DNSSEC-secure TLSA records fails the outbound handshake: the domain's owner
//! said in signed DNS which keys are valid (RFC 7671 §5, RFC 7673 §4). Handshake signatures are
//! always verified. Never does I/O.

use std::sync::{Arc, Mutex};

use ring::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Serialize;

use super::Tlsa;

/// Which DANE usage authenticated the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DaneUsage {
    /// DANE-EE (usage 3): the end-entity certificate or key itself is published; no name or
    /// validity-period checks (RFC 7671 §5.1).
    Ee,
    /// DANE-TA (usage 2): a published issuer anchors the chain; names are checked (RFC 7671 §5.2).
    Ta,
}

/// The verdict on a peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum PeerCert {
    /// Matched a secure TLSA record.
    Dane(DaneUsage),
    /// Chains to a configured root and names the domain (RFC 9525 DNS-ID).
    Pkix,
    /// Secure TLSA records exist and none matches: the connection must be refused.
    DaneMismatch,
    /// No DANE, and PKIX failed: the session may fall back to dialback.
    Invalid(String),
}

/// Where a verifier leaves its verdict for the caller to read after the handshake.
pub type PeerCertCell = Arc<Mutex<Option<PeerCert>>>;

/// A TLSA record we can use for s2s: DANE-TA or DANE-EE, known selector and matching type.
/// PKIX-TA/PKIX-EE (0/1) are not used (as for SMTP, RFC 7672 §3.1.3): they add nothing to PKIX.
pub fn is_usable(t: &Tlsa) -> bool {
    matches!(t.usage, 2 | 3) && matches!(t.selector, 0 | 1) && matches!(t.matching, 0..=2)
}

/// Verdict on `chain` (end entity first) for the XMPP `domain`.
///
/// `tlsa` is the secure TLSA RRset of the target, or `None` when there is none / it is not
/// secure. When it holds at least one usable record, only DANE decides: a match authenticates,
/// no match is [`PeerCert::DaneMismatch`]; else PKIX with `roots`.
pub fn verify_peer(
    chain: &[CertificateDer<'_>],
    domain: &str,
    tlsa: Option<&[Tlsa]>,
    roots: &RootCertStore,
    now: UnixTime,
) -> PeerCert {
    verify_peer_names(chain, &[domain], tlsa, roots, now)
}

/// [`verify_peer`] with several acceptable reference identifiers: the XMPP domain, plus the SRV
/// target host when the SRV answer was DNSSEC-secure (RFC 7673 §4.1, for DANE-TA only).
pub fn verify_peer_names(
    chain: &[CertificateDer<'_>],
    names: &[&str],
    tlsa: Option<&[Tlsa]>,
    roots: &RootCertStore,
    now: UnixTime,
) -> PeerCert {
    let Some(ee) = chain.first() else {
        return PeerCert::Invalid("no certificate presented".to_owned());
    };
    let usable: Vec<&Tlsa> = tlsa.unwrap_or(&[]).iter().filter(|t| is_usable(t)).collect();
    if usable.is_empty() {
        // The first name is the XMPP domain: PKIX never accepts the SRV target (RFC 6120 §13.7.2.1).
        return match pkix(ee, &chain[1..], &names[..names.len().min(1)], &roots.roots, now) {
            Ok(()) => PeerCert::Pkix,
            Err(e) => PeerCert::Invalid(e),
        };
    }
    if usable.iter().any(|t| t.usage == 3 && tlsa_matches(t, ee)) {
        return PeerCert::Dane(DaneUsage::Ee);
    }
    // DANE-TA: the anchor must be in the chain the server sent (RFC 7671 §5.2.2); it is an
    // issuer, so never the end entity itself.
    for (i, cert) in chain.iter().enumerate().skip(1) {
        if !usable.iter().any(|t| t.usage == 2 && tlsa_matches(t, cert)) {
            continue;
        }
        let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) else { continue };
        if pkix(ee, &chain[1..i], names, &[anchor], now).is_ok() {
            return PeerCert::Dane(DaneUsage::Ta);
        }
    }
    PeerCert::DaneMismatch
}

/// Chain to one of `anchors`, valid now, for server or client authentication (s2s peers act as
/// both; XEP-0178 certificates often carry only serverAuth), naming one of `names`.
fn pkix(
    ee: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[&str],
    anchors: &[rustls::pki_types::TrustAnchor<'_>],
    now: UnixTime,
) -> Result<(), String> {
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let cert = webpki::EndEntityCert::try_from(ee).map_err(|e| format!("unparsable certificate: {e}"))?;
    let chained = cert
        .verify_for_usage(algs.all, anchors, intermediates, now, webpki::KeyUsage::server_auth(), None, None)
        .map(|_| ())
        .or_else(|_| {
            cert.verify_for_usage(algs.all, anchors, intermediates, now, webpki::KeyUsage::client_auth(), None, None)
                .map(|_| ())
        });
    chained.map_err(|e| format!("certificate chain: {e}"))?;
    // RFC 9525 §6.3 DNS-ID matching (webpki: subjectAltName dNSName only, no CN; a wildcard is
    // the whole left-most label and matches exactly one label).
    for name in names {
        let Ok(server_name) = ServerName::try_from(*name) else { continue };
        if cert.verify_is_valid_for_subject_name(&server_name).is_ok() {
            return Ok(());
        }
    }
    Err(format!("certificate is not valid for {}", names.join(" or ")))
}

/// Does TLSA record `t` match certificate `cert` (RFC 6698 §2.1.2, §2.1.3)?
pub fn tlsa_matches(t: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let selected: &[u8] = match t.selector {
        0 => cert.as_ref(),
        1 => match subject_public_key_info(cert.as_ref()) {
            Some(spki) => spki,
            None => return false,
        },
        _ => return false,
    };
    match t.matching {
        0 => selected == t.data.as_slice(),
        1 => digest::digest(&digest::SHA256, selected).as_ref() == t.data.as_slice(),
        2 => digest::digest(&digest::SHA512, selected).as_ref() == t.data.as_slice(),
        _ => false,
    }
}

/// (tag, contents, whole element, rest).
type DerElement<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// One DER element: (tag, contents, the whole element, what follows). Definite lengths only,
/// low tag numbers only (all X.509 needs up to the SPKI); `None` on anything malformed.
fn der_next(input: &[u8]) -> Option<DerElement<'_>> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, &whole[header..], whole, &input[end..]))
}

/// The DER SubjectPublicKeyInfo of a certificate (RFC 5280 §4.1), header included, as selector 1
/// hashes it.
pub fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _, _) = der_next(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _, _) = der_next(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = der_next(rest)?.3;
    }
    // serialNumber, signature, issuer, validity, subject.
    for expected in [0x02, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE] {
        let (tag, _, _, next) = der_next(rest)?;
        if tag != expected {
            return None;
        }
        rest = next;
    }
    let (tag, _, whole, _) = der_next(rest)?;
    (tag == SEQUENCE).then_some(whole)
}

/// Outbound: checks the remote server's chain with [`verify_peer_names`], leaves the verdict
/// in a [`PeerCertCell`], fails the handshake only on [`PeerCert::DaneMismatch`].
#[derive(Debug)]
pub struct S2sServerVerifier {
    names: Vec<String>,
    tlsa: Option<Vec<Tlsa>>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    outcome: PeerCertCell,
}

impl S2sServerVerifier {
    /// A verifier for reference identifiers `names` (the XMPP domain first) and `tlsa`.
    pub fn new(
        names: Vec<String>,
        tlsa: Option<Vec<Tlsa>>,
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        S2sServerVerifier { names, tlsa, roots, provider, outcome: Arc::new(Mutex::new(None)) }
    }

    /// The cell the verdict is written to.
    pub fn outcome(&self) -> PeerCertCell {
        self.outcome.clone()
    }
}

fn record(cell: &PeerCertCell, verdict: PeerCert) {
    // A poisoned lock only means another thread panicked mid-write; the value is still ours.
    let mut slot = cell.lock().unwrap_or_else(|p| p.into_inner());
    *slot = Some(verdict);
}

/// Reads a verdict cell.
pub fn read_outcome(cell: &PeerCertCell) -> Option<PeerCert> {
    cell.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl ServerCertVerifier for S2sServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let verdict = verify_peer_names(&chain, &names, self.tlsa.as_deref(), &self.roots, now);
        let mismatch = verdict == PeerCert::DaneMismatch;
        record(&self.outcome, verdict);
        if mismatch {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Inbound: asks for (does not require) a client certificate and accepts any chain, so the
/// session can judge it later with [`verify_peer`] against the domain the peer claims in its
/// stream header (XEP-0178 §3). The proof of key possession (CertificateVerify) is still checked.
#[derive(Debug)]
pub struct S2sClientCertVerifier {
    provider: Arc<CryptoProvider>,
}

impl S2sClientCertVerifier {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        S2sClientCertVerifier { provider }
    }
}

impl ClientCertVerifier for S2sClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The domain is not known yet (it comes in the stream header after TLS); the session
        // calls verify_peer then. Accepting here only means "keep the chain".
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
