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
pub mod pki;
pub mod proto;
pub mod token;

/// The product version, sent in every hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
