//! PKI helpers for the fleet: the control plane's CA ([`Ca`]), agent keys, and the
//! rustls configurations of both ends (TLS 1.3 only, ring, ALPN
//! [`crate::proto::ALPN`]).
//!
//! Trust model: the control plane's CA signs its own server certificate (DNS name
//! [`crate::proto::FLEET_SERVER_NAME`]) and every agent's client certificate
//! (CN = agent id). An enrolling agent trusts the CA whose DER SHA-256 is in its token
//! ([`PinnedCaVerifier`]); afterwards it trusts the CA certificates it received (a
//! bundle: while the control plane rotates its CA, the old and the new one). The
//! control plane accepts connections without a client certificate only for
//! enrollment.

use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::proto::{ALPN, FLEET_SERVER_NAME};

/// The CN of the control plane's CA certificate.
pub const CA_COMMON_NAME: &str = "dynserv fleet CA";

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating, parsing or signing a key or certificate failed.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused a configuration (bad key, bad certificate).
    #[error("tls configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// A client-certificate verifier could not be built.
    #[error("client verifier error: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A PEM text holds no certificate or key of the expected kind.
    #[error("no {0} found in PEM text")]
    MissingPem(&'static str),
    /// A public key is not a base64 P-256 point.
    #[error("the public key is not a base64-encoded uncompressed P-256 point")]
    PublicKey,
}

/// SHA-256 of a DER certificate.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The ring crypto provider every fleet TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PkiError::MissingPem("certificate"));
    }
    Ok(certs)
}

/// The first private key in a PEM text.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::MissingPem("private key"))
}

/// A new agent key pair (ECDSA P-256).
pub fn generate_agent_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// The public half of an agent key as sent in an enrollment request.
pub fn public_key_text(key: &KeyPair) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.public_key_raw())
}

/// A P-256 public key received from an agent, ready to be certified.
pub struct AgentPublicKey {
    raw: Vec<u8>,
}

impl AgentPublicKey {
    /// Parses what [`public_key_text`] produced: base64 of a 65-byte uncompressed
    /// point.
    pub fn parse(text: &str) -> Result<AgentPublicKey, PkiError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| PkiError::PublicKey)?;
        if raw.len() != 65 || raw[0] != 0x04 {
            return Err(PkiError::PublicKey);
        }
        Ok(AgentPublicKey { raw })
    }
}

/// The DER of a P-256 SubjectPublicKeyInfo up to the point: SEQUENCE, AlgorithmIdentifier
/// (id-ecPublicKey, prime256v1), BIT STRING header.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl AgentPublicKey {
    /// The P-256 key an agent certificate (DER) was issued for, so a renewal certifies
    /// the key the agent already holds: the certificate carries exactly one P-256
    /// SubjectPublicKeyInfo, found by its fixed DER prefix.
    pub fn from_certificate(cert_der: &[u8]) -> Result<AgentPublicKey, PkiError> {
        let at = cert_der
            .windows(P256_SPKI_PREFIX.len())
            .position(|w| w == P256_SPKI_PREFIX)
            .ok_or(PkiError::PublicKey)?;
        let start = at + P256_SPKI_PREFIX.len();
        let raw = cert_der
            .get(start..start + 65)
            .ok_or(PkiError::PublicKey)?
            .to_vec();
        if raw[0] != 0x04 {
            return Err(PkiError::PublicKey);
        }
        Ok(AgentPublicKey { raw })
    }

    /// The key as [`AgentPublicKey::parse`] reads it.
    pub fn text(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.raw)
    }
}

impl PublicKeyData for AgentPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// The control plane's certificate authority: its key and certificate.
pub struct Ca {
    key: KeyPair,
    /// The CA certificate as first issued (what agents pin and trust).
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// An rcgen certificate with the CA's name and key, used as the issuer when
    /// signing. Its own DER is never published: rcgen signs with the issuer's
    /// distinguished name and key only, so it is equivalent to the stored one.
    issuer: rcgen::Certificate,
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

impl Ca {
    /// Generates a new CA.
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params()?.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Ca {
            key,
            cert_der,
            cert_pem,
            issuer: cert,
        })
    }

    /// Loads a CA from its certificate and key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = certs_from_pem(cert_pem)?.remove(0);
        let issuer = ca_params()?.self_signed(&key)?;
        Ok(Ca {
            key,
            cert_der,
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM), for storing.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate: what enrollment tokens carry.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// Issues the control plane's server certificate for [`FLEET_SERVER_NAME`]:
    /// returns (certificate PEM, key PEM).
    pub fn issue_server_cert(&self) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![FLEET_SERVER_NAME.to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, FLEET_SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues an agent's client certificate (CN = `agent_id`) for its public key;
    /// returns the certificate PEM.
    pub fn issue_agent_cert(
        &self,
        agent_id: &str,
        public_key: &AgentPublicKey,
        validity: Validity,
    ) -> Result<String, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, agent_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (year, month, day) = civil_date(validity.not_before_unix_day);
        params.not_before = rcgen::date_time_ymd(year, month, day);
        let (year, month, day) = civil_date(validity.not_after_unix_day);
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let cert = params.signed_by(public_key, &self.issuer, &self.key)?;
        Ok(cert.pem())
    }

    /// The control plane's TLS configuration when this is its only CA (see
    /// [`gateway_server_config`]).
    pub fn server_config(
        &self,
        server_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
    ) -> Result<rustls::ServerConfig, PkiError> {
        gateway_server_config(
            std::slice::from_ref(&self.cert_der),
            server_chain,
            server_key,
        )
    }
}

/// The control plane's TLS configuration: presents `server_chain` (leaf, then the CA
/// that signed it), accepts a client certificate signed by any of the `trusted` CA
/// certificates (several while a CA rotation is under way), and lets clients without
/// one through (they may only enroll).
pub fn gateway_server_config(
    trusted: &[CertificateDer<'static>],
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for ca in trusted {
        roots.add(ca.clone())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks that the client certificate `cert_der` was signed by one of the CA
/// certificates in `ca_pem` (a bundle of one or more) and is valid now, as the control
/// plane's handshake will check it.
pub fn verify_agent_cert(ca_pem: &str, cert_der: &CertificateDer<'_>) -> Result<(), PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    verifier.verify_client_cert(cert_der, &[], UnixTime::now())?;
    Ok(())
}

/// When an agent certificate is valid, in whole days since 1970-01-01 (UTC midnight):
/// certificates carry dates, and a day's granularity is plenty for lifetimes of weeks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First valid day: one lifetime before the issue. Agents are known by their
    /// certificate's fingerprint, so an early start grants nothing, while a start in
    /// the future of a peer whose clock lags would lock that peer out.
    pub not_before_unix_day: i64,
    /// The day at whose midnight the certificate expires.
    pub not_after_unix_day: i64,
}

impl Validity {
    /// Valid until `days` days after `now_unix` (seconds), rounded up to the next
    /// midnight, and from `days` days before it.
    pub fn days_from(now_unix: i64, days: i64) -> Validity {
        let today = now_unix.div_euclid(86_400);
        let days = days.max(1);
        Validity {
            not_before_unix_day: today - days,
            not_after_unix_day: today + days + 1,
        }
    }

    /// When the certificate expires, in seconds since 1970-01-01.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix_day * 86_400
    }
}

/// The proleptic Gregorian date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// An enrolling agent's TLS configuration: no client certificate, server verified
/// against the CA whose fingerprint is `pin`.
pub fn enroll_client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, PkiError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// An enrolled agent's TLS configuration: trusts `ca_pem`, presents its certificate.
pub fn agent_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The server name agents verify, as rustls wants it.
pub fn fleet_server_name() -> ServerName<'static> {
    ServerName::try_from(FLEET_SERVER_NAME).expect("FLEET_SERVER_NAME is a valid DNS name")
}

/// Verifies a server chain against the one CA certificate, among those the server
/// presents, whose DER SHA-256 equals the pin. A server that does not present such a
/// CA, or whose leaf that CA did not sign, is refused.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier pinned to the CA with this fingerprint.
    pub fn new(pin: [u8; 32]) -> PinnedCaVerifier {
        PinnedCaVerifier {
            pin,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the control plane's CA does not match the fingerprint in the enrollment token"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA reloaded from PEM signs certificates that chain to the original CA cert.
    #[test]
    fn reloaded_ca_signs_for_the_original() {
        let ca = Ca::generate().unwrap();
        let reloaded = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
        let (server_pem, _) = reloaded.issue_server_cert().unwrap();
        let leaf = certs_from_pem(&server_pem).unwrap().remove(0);
        let verifier = PinnedCaVerifier::new(ca.fingerprint());
        let now = UnixTime::now();
        verifier
            .verify_server_cert(
                &leaf,
                &[ca.cert_der().clone()],
                &fleet_server_name(),
                &[],
                now,
            )
            .unwrap();
    }

    /// A chain from another CA is refused even if it is otherwise valid.
    #[test]
    fn other_ca_is_refused() {
        let ours = Ca::generate().unwrap();
        let theirs = Ca::generate().unwrap();
        let (server_pem, _) = theirs.issue_server_cert().unwrap();
        let leaf = certs_from_pem(&server_pem).unwrap().remove(0);
        let verifier = PinnedCaVerifier::new(ours.fingerprint());
        let now = UnixTime::now();
        let presented = [theirs.cert_der().clone()];
        assert!(verifier
            .verify_server_cert(&leaf, &presented, &fleet_server_name(), &[], now)
            .is_err());
        // Presenting our CA next to a leaf it did not sign does not help either.
        let presented = [ours.cert_der().clone()];
        assert!(verifier
            .verify_server_cert(&leaf, &presented, &fleet_server_name(), &[], now)
            .is_err());
    }

    /// Agent public keys round-trip through their text form; junk is refused.
    #[test]
    fn agent_keys() {
        let key = generate_agent_key().unwrap();
        let public = AgentPublicKey::parse(&public_key_text(&key)).unwrap();
        let ca = Ca::generate().unwrap();
        let pem = ca
            .issue_agent_cert("agent-1", &public, Validity::days_from(1_700_000_000, 90))
            .unwrap();
        // A renewal finds the same key in the certificate.
        let der = certs_from_pem(&pem).unwrap().remove(0);
        assert_eq!(
            AgentPublicKey::from_certificate(&der).unwrap().text(),
            public.text()
        );
        agent_client_config(ca.cert_pem(), &pem, &key.serialize_pem()).unwrap();
        assert!(AgentPublicKey::parse("AAAA").is_err());
        assert!(AgentPublicKey::parse("not base64!").is_err());
    }

    /// During a CA rotation both CAs (same name, different keys) are trusted side by
    /// side: a certificate of either verifies against the bundle, one of a third CA does
    /// not, and one of the old CA no longer verifies once the bundle drops it.
    #[test]
    fn a_bundle_of_cas_accepts_certificates_of_each() {
        let old = Ca::generate().unwrap();
        let new = Ca::generate().unwrap();
        let stranger = Ca::generate().unwrap();
        let key = generate_agent_key().unwrap();
        let public = AgentPublicKey::parse(&public_key_text(&key)).unwrap();
        let now = UnixTime::now().as_secs() as i64;
        let issued = |ca: &Ca| {
            let pem = ca
                .issue_agent_cert("agent-1", &public, Validity::days_from(now, 30))
                .unwrap();
            certs_from_pem(&pem).unwrap().remove(0)
        };
        let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
        verify_agent_cert(&bundle, &issued(&old)).unwrap();
        verify_agent_cert(&bundle, &issued(&new)).unwrap();
        assert!(verify_agent_cert(&bundle, &issued(&stranger)).is_err());
        assert!(verify_agent_cert(new.cert_pem(), &issued(&old)).is_err());
        // The gateway's configuration takes the same bundle.
        let (server_pem, server_key) = old.issue_server_cert().unwrap();
        gateway_server_config(
            &[old.cert_der().clone(), new.cert_der().clone()],
            certs_from_pem(&server_pem).unwrap(),
            key_from_pem(&server_key).unwrap(),
        )
        .unwrap();
    }

    /// Day counts turn into the calendar dates certificates carry.
    #[test]
    fn civil_dates_follow_the_calendar() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(civil_date(20_454), (2026, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }
}
