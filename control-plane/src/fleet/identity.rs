//! Telling copies of one agent apart. Every copy of an agent's state directory (a
//! cloned server, a restored snapshot, a second `dynserv-agent run` on one machine)
//! presents the same certificate; what differs is the machine (`host_id` in the hello)
//! and the process (`instance_id`). [`decide`] is the one rule that says which copy is
//! served: pure, over what the gateway knows, so it is tested without sockets.
//!
//! The rule: the copy that holds the identity keeps it, every other copy is refused.
//! The holder is the connected copy, else the host recorded for the agent (at
//! enrollment or at its first hello). A new process on the holder's machine replaces
//! the holder's connection (an agent restart leaves a dead connection behind for up to
//! the idle timeout), and is told apart from a second live process on that machine only
//! afterwards: the replaced process, if alive, comes back, and is then refused.
//! Agents that predate host ids send none and are served as before.
//!
//! What does not live here: the agent record and its duplicate flag (`agents`), and
//! the connection handling (`gateway`).

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};

/// What one agent process says about itself in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The machine's id; empty from agents that predate it.
    pub host_id: &'a str,
    /// The process's random id; empty from agents that predate it.
    pub instance_id: &'a str,
}

/// What to do with a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve this copy (replacing the connected one, if any).
    Accept,
    /// Another copy holds the identity; refuse this one.
    Duplicate {
        /// The holder's host id.
        holder_host_id: String,
        /// Whether the holder is connected now.
        holder_connected: bool,
    },
}

/// Decides whether the copy making `hello` is served. `recorded_host_id` is the host
/// recorded for the agent, `connected` the copy connected now, and `was_replaced`
/// whether this very process was replaced by a newer one on its machine recently.
pub fn decide(
    recorded_host_id: Option<&str>,
    connected: Option<Claim<'_>>,
    was_replaced: bool,
    hello: Claim<'_>,
) -> Verdict {
    if hello.host_id.is_empty() {
        // An agent that predates host ids: nothing to tell copies apart by.
        return Verdict::Accept;
    }
    if let Some(holder) = connected {
        if !holder.host_id.is_empty() && holder.host_id != hello.host_id {
            return Verdict::Duplicate {
                holder_host_id: holder.host_id.to_string(),
                holder_connected: true,
            };
        }
    }
    if let Some(recorded) = recorded_host_id.filter(|h| !h.is_empty()) {
        if recorded != hello.host_id {
            return Verdict::Duplicate {
                holder_host_id: recorded.to_string(),
                holder_connected: connected.is_some(),
            };
        }
    }
    if let Some(holder) = connected {
        // Same machine, another process. A replaced process that is back while its
        // replacement is connected is alive: two processes share the identity.
        let other_process = !holder.instance_id.is_empty()
            && !hello.instance_id.is_empty()
            && holder.instance_id != hello.instance_id;
        if other_process && was_replaced {
            return Verdict::Duplicate {
                holder_host_id: holder.host_id.to_string(),
                holder_connected: true,
            };
        }
    }
    Verdict::Accept
}

/// How many replaced processes are remembered per agent.
const MAX_REPLACED: usize = 8;

/// How long a replaced process is remembered. A dead one never comes back; a live one
/// comes back within its reconnect backoff (seconds), or after a refusal's wait.
pub const REPLACED_MEMORY: Duration = Duration::hours(1);

/// The processes of one agent whose connections were replaced by a newer process on
/// the same machine: the evidence for [`decide`]'s `was_replaced`. Bounded: the newest
/// [`MAX_REPLACED`], for [`REPLACED_MEMORY`].
#[derive(Debug, Default, Clone)]
pub struct Replaced {
    entries: VecDeque<(String, DateTime<Utc>)>,
}

impl Replaced {
    /// Remembers that `instance_id` was replaced at `now`.
    pub fn note(&mut self, instance_id: &str, now: DateTime<Utc>) {
        if instance_id.is_empty() {
            return;
        }
        self.entries.retain(|(id, _)| id != instance_id);
        self.entries.push_back((instance_id.to_string(), now));
        while self.entries.len() > MAX_REPLACED {
            self.entries.pop_front();
        }
    }

    /// Whether `instance_id` was replaced within [`REPLACED_MEMORY`] before `now`.
    pub fn contains(&self, instance_id: &str, now: DateTime<Utc>) -> bool {
        !instance_id.is_empty()
            && self
                .entries
                .iter()
                .any(|(id, at)| id == instance_id && now - *at < REPLACED_MEMORY)
    }

    /// Forgets `instance_id` (it holds the identity again) and everything expired.
    pub fn forget(&mut self, instance_id: &str, now: DateTime<Utc>) {
        self.entries
            .retain(|(id, at)| id != instance_id && now - *at < REPLACED_MEMORY);
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim<'a>(host_id: &'a str, instance_id: &'a str) -> Claim<'a> {
        Claim {
            host_id,
            instance_id,
        }
    }

    fn duplicate(holder: &str, connected: bool) -> Verdict {
        Verdict::Duplicate {
            holder_host_id: holder.into(),
            holder_connected: connected,
        }
    }

    /// Recorded host, connected copy, replaced, hello, expected verdict.
    type Case<'a> = (Option<&'a str>, Option<Claim<'a>>, bool, Claim<'a>, Verdict);

    /// The cases of the rule, one per line: (recorded host, connected copy, replaced,
    /// hello) → verdict.
    #[test]
    fn which_copy_is_served() {
        let cases: &[Case] = &[
            // First hello ever, and the original's reconnects and restarts.
            (None, None, false, claim("h1", "i1"), Verdict::Accept),
            (Some("h1"), None, false, claim("h1", "i1"), Verdict::Accept),
            (
                Some("h1"),
                Some(claim("h1", "i1")),
                false,
                claim("h1", "i1"),
                Verdict::Accept,
            ),
            (
                Some("h1"),
                Some(claim("h1", "i1")),
                false,
                claim("h1", "i2"),
                Verdict::Accept,
            ),
            // A copy on another machine, with the original connected or not.
            (
                Some("h1"),
                Some(claim("h1", "i1")),
                false,
                claim("h2", "i2"),
                duplicate("h1", true),
            ),
            (
                Some("h1"),
                None,
                false,
                claim("h2", "i2"),
                duplicate("h1", false),
            ),
            // Before the first hello is stored, the connected copy holds the identity.
            (
                None,
                Some(claim("h1", "i1")),
                false,
                claim("h2", "i2"),
                duplicate("h1", true),
            ),
            // A replaced process that comes back while its replacement is connected.
            (
                Some("h1"),
                Some(claim("h1", "i2")),
                true,
                claim("h1", "i1"),
                duplicate("h1", true),
            ),
            // ... and once the replacement is gone, it holds the identity again.
            (Some("h1"), None, true, claim("h1", "i1"), Verdict::Accept),
            // Agents that predate host ids are served as before.
            (
                Some("h1"),
                Some(claim("h1", "i1")),
                false,
                claim("", ""),
                Verdict::Accept,
            ),
            (
                Some("h1"),
                Some(claim("", "")),
                false,
                claim("h1", "i1"),
                Verdict::Accept,
            ),
            (
                None,
                Some(claim("", "")),
                false,
                claim("h2", "i2"),
                Verdict::Accept,
            ),
            (Some(""), None, false, claim("h2", "i2"), Verdict::Accept),
        ];
        for (i, (recorded, connected, replaced, hello, expected)) in cases.iter().enumerate() {
            assert_eq!(
                &decide(*recorded, *connected, *replaced, *hello),
                expected,
                "case {i}"
            );
        }
    }

    /// Replaced processes are remembered for an hour, at most eight, and forgotten
    /// when they hold the identity again.
    #[test]
    fn replaced_processes_are_remembered_bounded() {
        let t0 = Utc::now();
        let mut replaced = Replaced::default();
        replaced.note("", t0);
        assert!(replaced.is_empty());
        replaced.note("i1", t0);
        assert!(replaced.contains("i1", t0 + Duration::minutes(59)));
        assert!(!replaced.contains("i1", t0 + Duration::minutes(61)));
        assert!(!replaced.contains("", t0));
        for n in 0..10 {
            replaced.note(&format!("x{n}"), t0);
        }
        assert!(
            !replaced.contains("i1", t0),
            "the oldest is dropped past eight"
        );
        assert!(replaced.contains("x9", t0));
        replaced.forget("x9", t0);
        assert!(!replaced.contains("x9", t0));
        replaced.forget("none", t0 + Duration::hours(2));
        assert!(replaced.is_empty());
    }
}
