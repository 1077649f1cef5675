//! In-process tests of the control plane: the real [`dynserv::run`] on listeners bound
//! to port 0 with its store in a temporary directory, driven through its boundaries
//! (HTTP, the WebSocket stream, the fleet gateway with the agent library's own
//! connection code). Nothing is spawned but the jobs' shells, so each test takes well
//! under a second or two; the end-to-end tests of `tests/` cover the real binaries.

mod fleet;
mod http;
mod lifecycle;
mod live;
mod util;
mod web;
