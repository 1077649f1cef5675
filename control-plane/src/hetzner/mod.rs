//! Hetzner Cloud: the client (`hcloud` pointed at `HETZNER_API_URL`, paging, retries,
//! request budget), sync of each project's servers, budgets and cost trend, power
//! actions, and provisioning of approved server requests.
//!
//! What does not live here: the request workflow (`requests` moves a request), the
//! enrollment tokens and the fleet (`agents`, `fleet`), the web handlers
//! (`web::hetzner_api`, `web::hetzner_pages`).
//!
//! **Invariant:** a server known both at Hetzner and through its agent is one server
//! record (matched by Hetzner id, then by name); a server gone at Hetzner is marked
//! `deleted`, never removed.

pub mod budget;
pub mod client;
pub mod power;
pub mod provision;
pub mod sync;

pub use client::{Client, HetznerError, PowerAction};
