//! Types shared by the control plane and the agent: the wire protocol and its
//! framing, the enrollment token format, PKI helpers and the version. No I/O policy.

/// The product version, sent in every hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
