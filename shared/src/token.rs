//! Enrollment tokens: `dsv1.<secret>.<ca-sha256>`.
//!
//! `secret` is 16 to 128 characters of URL-safe base64 (`A-Z a-z 0-9 - _`); the
//! control plane keeps only its SHA-256. `ca-sha256` is the lowercase hex SHA-256 of
//! the control plane's CA certificate (DER); the agent refuses to talk to a control
//! plane that does not present a chain to that CA.

use std::fmt;
use std::str::FromStr;

/// The token's fixed prefix, naming its format version.
pub const TOKEN_PREFIX: &str = "dsv1";

/// A parsed enrollment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// The one-time secret the agent proves.
    pub secret: String,
    /// SHA-256 of the control plane's CA certificate (DER).
    pub ca_sha256: [u8; 32],
}

/// Why a text is not an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// It does not start with `dsv1.` or does not have three dot-separated parts.
    #[error("an enrollment token looks like dsv1.<secret>.<ca-sha256>")]
    Shape,
    /// The secret has the wrong length or characters outside URL-safe base64.
    #[error("the token's secret is malformed")]
    Secret,
    /// The CA hash is not 64 lowercase hex digits.
    #[error("the token's CA fingerprint is not a sha256 in hex")]
    CaHash,
}

impl EnrollmentToken {
    /// Builds a token from its parts.
    pub fn new(secret: String, ca_sha256: [u8; 32]) -> EnrollmentToken {
        EnrollmentToken { secret, ca_sha256 }
    }

    /// Parses a token, tolerating surrounding whitespace.
    pub fn parse(text: &str) -> Result<EnrollmentToken, TokenError> {
        let text = text.trim();
        let mut parts = text.split('.');
        let (Some(prefix), Some(secret), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Shape);
        };
        if prefix != TOKEN_PREFIX {
            return Err(TokenError::Shape);
        }
        let secret_ok = (16..=128).contains(&secret.len())
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !secret_ok {
            return Err(TokenError::Secret);
        }
        if hash.len() != 64
            || !hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TokenError::CaHash);
        }
        let mut ca_sha256 = [0u8; 32];
        hex::decode_to_slice(hash, &mut ca_sha256).map_err(|_| TokenError::CaHash)?;
        Ok(EnrollmentToken {
            secret: secret.to_string(),
            ca_sha256,
        })
    }

    /// The CA hash as lowercase hex.
    pub fn ca_sha256_hex(&self) -> String {
        hex::encode(self.ca_sha256)
    }
}

impl FromStr for EnrollmentToken {
    type Err = TokenError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EnrollmentToken::parse(text)
    }
}

impl fmt::Display for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.secret, self.ca_sha256_hex())
    }
}

/// Never prints the secret.
impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnrollmentToken(ca {})", self.ca_sha256_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn check(text: &str, expected: Result<(), TokenError>) {
        assert_eq!(
            EnrollmentToken::parse(text).map(|_| ()),
            expected,
            "{text:?}"
        );
    }

    /// Valid tokens parse and print back identically.
    #[test]
    fn valid_round_trip() {
        let text = format!("dsv1.abcdefghijklmnop_-0123456789.{HASH}");
        let token = EnrollmentToken::parse(&text).unwrap();
        assert_eq!(token.to_string(), text);
        assert_eq!(token.ca_sha256[1], 0x11);
        assert_eq!(
            EnrollmentToken::parse(&format!("  {text}\n")).unwrap(),
            token
        );
        assert!(!format!("{token:?}").contains("abcdefghijklmnop"));
    }

    /// Each malformed part is reported as such.
    #[test]
    fn malformed_tokens() {
        let secret = "abcdefghijklmnopqrstuvwxyz";
        check("", Err(TokenError::Shape));
        check("dsv1", Err(TokenError::Shape));
        check(&format!("dsv2.{secret}.{HASH}"), Err(TokenError::Shape));
        check(&format!("dsv1.{secret}.{HASH}.x"), Err(TokenError::Shape));
        check(&format!("dsv1.short.{HASH}"), Err(TokenError::Secret));
        check(
            &format!("dsv1.{}.{HASH}", "a".repeat(129)),
            Err(TokenError::Secret),
        );
        check(
            &format!("dsv1.abcdefghijklmnop+/.{HASH}"),
            Err(TokenError::Secret),
        );
        check(
            &format!("dsv1.{secret}.{}", &HASH[1..]),
            Err(TokenError::CaHash),
        );
        check(
            &format!("dsv1.{secret}.{}", HASH.to_uppercase()),
            Err(TokenError::CaHash),
        );
        check(
            &format!("dsv1.{secret}.{}g", &HASH[1..]),
            Err(TokenError::CaHash),
        );
        check(
            &format!("dsv1.{secret}.é{}", &HASH[2..]),
            Err(TokenError::CaHash),
        );
    }

    /// Random texts never panic the parser, and whatever parses prints back the same.
    #[test]
    fn random_text_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet: Vec<char> = "dsv1.abcdef0123456789-_ ébxyz".chars().collect();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..120);
            let text: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            if let Ok(token) = EnrollmentToken::parse(&text) {
                assert_eq!(token.to_string(), text.trim());
            }
        }
    }
}
