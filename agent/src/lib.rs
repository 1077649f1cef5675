//! dynserv-agent library: enrollment and the connection to the control plane
//! ([`connection`]), jobs and their on-disk spool ([`jobs`], [`spool`]), host facts
//! ([`facts`]), reconnect backoff ([`backoff`]), the control plane's address list
//! ([`servers`]), interactive terminals on a PTY ([`terminal`]), upgrades of the agent's
//! own binary ([`upgrade`]), the version it reports ([`version`]) and owner-only files
//! ([`private_fs`]). The playbook runtime is its own crate, `dynserv-playbook`,
//! re-exported here as [`playbook`].

pub mod backoff;
pub mod compose;
pub mod connection;
pub mod facts;
pub mod jobs;
pub mod offsite;
/// The native playbook runtime (crate `dynserv-playbook`), re-exported for the
/// `playbook` subcommand.
pub use dynserv_playbook as playbook;
pub mod private_fs;
pub mod servers;
pub mod spool;
pub mod terminal;
pub mod update;
pub mod upgrade;
pub mod version;
