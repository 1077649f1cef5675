//! Types shared by the control plane and the agent: the wire protocol and its
//! framing, the enrollment token format, PKI helpers and the version. No I/O policy:
//! nothing here decides when to connect, retry or store anything.
//!
//! The fleet protocol in one paragraph: an agent dials the control plane over QUIC
//! (TLS 1.3, ALPN [`proto::ALPN`]). A connection without a client certificate may only
//! enroll ([`proto::EnrollRequest`] on its first bidirectional stream, answered by
//! [`proto::EnrollResponse`]). A connection with a client certificate issued by the
//! control plane's CA opens a control stream ([`proto::AgentControl`] /
//! [`proto::ServerControl`]: hello, heartbeats), and the control plane opens one
//! bidirectional stream per job ([`proto::ToAgent`] / [`proto::FromAgent`]: job spec,
//! numbered output chunks, acknowledgements, cancel, end). Every message is one frame
//! ([`frame`]): a 4-byte big-endian length and a JSON body, at most
//! [`frame::MAX_FRAME_LEN`] bytes.

pub mod frame;
pub mod inventory;
pub mod pki;
pub mod proto;
pub mod token;
pub mod tree;
pub mod upgrade;

/// The product version, sent in every hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether version `a` (`MAJOR.MINOR.PATCH`, an optional `-pre` or `+build` part
/// ignored) is older than `b`. A version that does not parse (an agent from before
/// versions were sent reports an empty one) counts as older than any that does, so
/// such an agent shows as outdated rather than current.
pub fn version_is_older(a: &str, b: &str) -> bool {
    match (parse_version(a), parse_version(b)) {
        (Some(a), Some(b)) => a < b,
        (None, Some(_)) => true,
        _ => false,
    }
}

/// `MAJOR.MINOR.PATCH` as numbers; `None` when the text is not a version.
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.trim().split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (
        parts.next()??,
        parts.next()??,
        parts.next().unwrap_or(Some(0))?,
    );
    parts.next().is_none().then_some(version)
}

#[cfg(test)]
mod tests {
    /// Versions compare by their numbers, not as text, and an unknown one is older.
    #[test]
    fn versions_compare_by_number() {
        for (a, b, older) in [
            ("0.2.0", "0.3.0", true),
            ("0.3.0", "0.3.0", false),
            ("0.10.0", "0.9.9", false),
            ("0.9.9", "0.10.0", true),
            ("1.0.0-rc1", "1.0.0", false),
            ("", "0.3.0", true),
            ("0.3.0", "", false),
            ("0.3", "0.3.1", true),
        ] {
            assert_eq!(super::version_is_older(a, b), older, "{a} < {b}");
        }
    }
}
