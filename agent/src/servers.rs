//! The control-plane addresses an agent knows: parsing the `--server` list, the order
//! in which the addresses are tried, and taking in the list a control plane announces.
//! Plain functions over data; the connection code ([`crate::connection`]) does the
//! dialing and the storing.
//!
//! An agent keeps two lists: the addresses given at enrollment (what the operator
//! typed) and the replica list the control plane announced last. It tries the
//! announced addresses first, then the enrolled ones not among them
//! ([`combined`]): an announcement can add, reorder and retire replicas, but never
//! strands the agent away from the addresses it was enrolled with, even when the
//! control plane announces only part of its replicas or an address this agent cannot
//! reach.

use std::net::{IpAddr, SocketAddr};

use dynserv_shared::proto::{MAX_REPLICA_ADDRESSES, MAX_REPLICA_ADDRESS_LEN};

/// Why a `--server` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerListError {
    /// An entry between commas (or the whole list) is blank.
    #[error("entry {position} of {list:?} is empty")]
    EmptyEntry {
        /// The entry's position, from 1.
        position: usize,
        /// The list as given.
        list: String,
    },
    /// An entry holds a blank inside it or is longer than an address can be.
    #[error("{entry:?} is not a HOST:PORT address")]
    Malformed {
        /// The entry.
        entry: String,
    },
    /// More addresses than the agent keeps.
    #[error("{count} addresses given; at most {MAX_REPLICA_ADDRESSES} are kept")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

fn well_formed(entry: &str) -> bool {
    !entry.is_empty()
        && entry.len() <= MAX_REPLICA_ADDRESS_LEN
        && !entry.contains(',')
        && !entry.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses `HOST:PORT[,HOST:PORT…]`: entries are trimmed, a blank entry is an error,
/// and an address given twice is kept once (its first place).
pub fn parse(list: &str) -> Result<Vec<String>, ServerListError> {
    let mut servers: Vec<String> = Vec::new();
    for (index, entry) in list.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(ServerListError::EmptyEntry {
                position: index + 1,
                list: list.to_string(),
            });
        }
        if !well_formed(entry) {
            return Err(ServerListError::Malformed {
                entry: entry.to_string(),
            });
        }
        if !servers.iter().any(|known| known == entry) {
            servers.push(entry.to_string());
        }
    }
    if servers.len() > MAX_REPLICA_ADDRESSES {
        return Err(ServerListError::TooMany {
            count: servers.len(),
        });
    }
    Ok(servers)
}

/// The order in which to try `servers`: the list's own order, except that the address
/// whose connection was lost last (`lost_last`, an index into `servers`) goes to the
/// end, so the others are tried first and it still gets its turn.
pub fn attempt_order(servers: &[String], lost_last: Option<usize>) -> Vec<&str> {
    let lost_last = lost_last.filter(|index| *index < servers.len());
    let mut order: Vec<&str> = servers
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != lost_last)
        .map(|(_, server)| server.as_str())
        .collect();
    if let Some(index) = lost_last {
        order.push(servers[index].as_str());
    }
    order
}

/// Whether `entry` names this machine (`127.0.0.1:4433`, `[::1]:4433`,
/// `localhost:4433`).
fn is_loopback(entry: &str) -> bool {
    if let Ok(address) = entry.parse::<SocketAddr>() {
        return address.ip().is_loopback();
    }
    let host = entry.rsplit_once(':').map_or(entry, |(host, _)| host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// The announced list to keep after a control plane reached at `connected` (whose
/// address resolved to `remote`) announced `announced`: the announced addresses in
/// their order, then `connected` when it is not among them, so the address that works
/// now stays usable (the control plane may know itself by another name than the one
/// this agent dials). Dropped: malformed entries, repeats, entries past
/// [`MAX_REPLICA_ADDRESSES`], and loopback addresses unless the agent itself reached
/// the control plane over loopback (a control plane whose public address was left at
/// its default announces `127.0.0.1`, which means another machine to a remote agent).
/// `None` when the announcement holds no usable address (an older control plane
/// announces nothing): what the agent knows stays as it is.
pub fn take_announced(
    announced: &[String],
    connected: &str,
    remote: IpAddr,
) -> Option<Vec<String>> {
    let mut servers: Vec<String> = Vec::new();
    for entry in announced.iter().map(|entry| entry.trim()) {
        if servers.len() == MAX_REPLICA_ADDRESSES {
            break;
        }
        let reachable = remote.is_loopback() || !is_loopback(entry);
        if well_formed(entry) && reachable && !servers.iter().any(|known| known == entry) {
            servers.push(entry.to_string());
        }
    }
    if servers.is_empty() {
        return None;
    }
    if !servers.iter().any(|known| known == connected) {
        if servers.len() == MAX_REPLICA_ADDRESSES {
            servers.pop();
        }
        servers.push(connected.to_string());
    }
    Some(servers)
}

/// The addresses to try, in order: the announced ones, then the enrolled ones that are
/// not among them.
pub fn combined(announced: &[String], enrolled: &[String]) -> Vec<String> {
    let mut servers = announced.to_vec();
    for entry in enrolled {
        if !servers.contains(entry) {
            servers.push(entry.clone());
        }
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn check_parse(input: &str, expected: Result<&[&str], ServerListError>) {
        assert_eq!(parse(input), expected.map(strings), "parsing {input:?}");
    }

    /// Lists are split on commas and trimmed, repeats are kept once, and blank or
    /// malformed entries and overlong lists are refused with the entry named.
    #[test]
    fn parses_lists_and_refuses_blank_entries() {
        check_parse("cp1:4433", Ok(&["cp1:4433"]));
        check_parse(
            " cp1:4433 , 10.0.0.2:4433,[::1]:4433 ",
            Ok(&["cp1:4433", "10.0.0.2:4433", "[::1]:4433"]),
        );
        check_parse("a:1,b:2,a:1", Ok(&["a:1", "b:2"]));
        check_parse(
            "a:1,,b:2",
            Err(ServerListError::EmptyEntry {
                position: 2,
                list: "a:1,,b:2".into(),
            }),
        );
        check_parse(
            "a:1, ",
            Err(ServerListError::EmptyEntry {
                position: 2,
                list: "a:1, ".into(),
            }),
        );
        check_parse(
            "",
            Err(ServerListError::EmptyEntry {
                position: 1,
                list: String::new(),
            }),
        );
        check_parse(
            "a b:1",
            Err(ServerListError::Malformed {
                entry: "a b:1".into(),
            }),
        );
        let long = format!("{}:1", "h".repeat(MAX_REPLICA_ADDRESS_LEN));
        check_parse(
            &long,
            Err(ServerListError::Malformed {
                entry: long.clone(),
            }),
        );
        let many: Vec<String> = (0..=MAX_REPLICA_ADDRESSES)
            .map(|i| format!("h{i}:1"))
            .collect();
        check_parse(
            &many.join(","),
            Err(ServerListError::TooMany {
                count: MAX_REPLICA_ADDRESSES + 1,
            }),
        );
        let error = parse("a:1,,b:2").unwrap_err().to_string();
        assert_eq!(error, r#"entry 2 of "a:1,,b:2" is empty"#);
        assert!(!error.contains('\n'));
    }

    fn check_order(servers: &[&str], lost_last: Option<usize>, expected: &[&str]) {
        let servers = strings(servers);
        assert_eq!(
            attempt_order(&servers, lost_last),
            expected,
            "{servers:?} after losing {lost_last:?}"
        );
    }

    /// Addresses are tried in the list's order, the one lost last goes to the end,
    /// and an index past the list (the list changed since) is ignored.
    #[test]
    fn the_address_lost_last_is_tried_last() {
        check_order(&["a", "b", "c"], None, &["a", "b", "c"]);
        check_order(&["a", "b", "c"], Some(0), &["b", "c", "a"]);
        check_order(&["a", "b", "c"], Some(1), &["a", "c", "b"]);
        check_order(&["a", "b", "c"], Some(2), &["a", "b", "c"]);
        check_order(&["a", "b"], Some(5), &["a", "b"]);
        check_order(&["a"], Some(0), &["a"]);
        check_order(&[], None, &[]);
    }

    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));
    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn check_take(announced: &[&str], connected: &str, remote: IpAddr, expected: Option<&[&str]>) {
        assert_eq!(
            take_announced(&strings(announced), connected, remote),
            expected.map(strings),
            "{announced:?} announced while connected to {connected} ({remote})"
        );
    }

    /// The announced list is taken in its order, the connected address is kept at its
    /// end when missing, bad entries are dropped, loopback addresses are kept only by
    /// an agent that itself reached the control plane over loopback, and an empty
    /// announcement changes nothing.
    #[test]
    fn announced_lists_keep_the_connected_address() {
        check_take(&["a:1", "b:2"], "b:2", REMOTE, Some(&["a:1", "b:2"]));
        check_take(&["a:1", "b:2"], "c:3", REMOTE, Some(&["a:1", "b:2", "c:3"]));
        check_take(
            &[" a:1 ", "", "a:1", "x y:1", "b:2,c:3"],
            "a:1",
            REMOTE,
            Some(&["a:1"]),
        );
        check_take(&[], "a:1", REMOTE, None);
        check_take(&["", " "], "a:1", REMOTE, None);
        check_take(
            &[
                "127.0.0.1:4433",
                "[::1]:4433",
                "LocalHost:4433",
                "127.9.0.1:4433",
                "cp2:4433",
            ],
            "cp1:4433",
            REMOTE,
            Some(&["cp2:4433", "cp1:4433"]),
        );
        check_take(&["127.0.0.1:4433"], "cp1:4433", REMOTE, None);
        check_take(
            &["127.0.0.1:4433", "localhost:4434"],
            "127.0.0.1:4433",
            LOOPBACK,
            Some(&["127.0.0.1:4433", "localhost:4434"]),
        );
        let many: Vec<String> = (0..MAX_REPLICA_ADDRESSES + 5)
            .map(|i| format!("h{i}:1"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let kept = take_announced(&strings(&many), "mine:1", REMOTE).unwrap();
        assert_eq!(kept.len(), MAX_REPLICA_ADDRESSES);
        assert_eq!(kept.last().map(String::as_str), Some("mine:1"));
        assert_eq!(kept[0], "h0:1");
    }

    /// Announced addresses come first, then the enrolled ones not among them.
    #[test]
    fn announced_addresses_are_tried_before_the_enrolled_ones() {
        let check = |announced: &[&str], enrolled: &[&str], expected: &[&str]| {
            assert_eq!(
                combined(&strings(announced), &strings(enrolled)),
                strings(expected),
                "{announced:?} announced, {enrolled:?} enrolled"
            );
        };
        check(&[], &["a:1", "b:2"], &["a:1", "b:2"]);
        check(&["a:1"], &["a:1", "b:2"], &["a:1", "b:2"]);
        check(&["b:2"], &["a:1", "b:2"], &["b:2", "a:1"]);
        check(&["c:3", "a:1"], &["a:1", "b:2"], &["c:3", "a:1", "b:2"]);
    }
}
