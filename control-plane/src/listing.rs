//! Pages of records read through ordered indexes, for the lists that narrow what they
//! read with filters no single index answers (servers, requests, backups, updates,
//! agents).
//!
//! A list names its [`Source`]s: one or more ranges of one index (or the record table
//! itself, for tables keyed by time-ordered ids). Every source's keys end in a
//! *position* that orders the list (`name id` for lists by name, the UUIDv7 id for
//! lists by time), so [`page`] merges the sources by position, reads each record once,
//! keeps those the caller's test accepts, and stops after `limit` kept records or
//! [`SCAN_BUDGET`] examined ones. The cursor of the next page is the last position
//! examined, so a page never costs more than its budget, whatever the size of the
//! table, and a walk over every page sees each record once.
//!
//! What does not live here: which index answers which filter (each domain module
//! decides for its own records) and who may see what (`policy::can`, asked through
//! [`project_scope`] and the caller's test).

use std::collections::VecDeque;

use crate::policy::{self, Action, Subject};
use crate::store::{IndexScan, Read, Record};

/// Index entries one page examines at most. Past it the page comes back short (maybe
/// empty) with a cursor to go on from, so a filter that matches little never turns
/// one request into a walk over the whole table. 20,000 covers a text search over a
/// fleet of 10,000 servers in one page.
pub const SCAN_BUDGET: usize = 20_000;

/// Entries read from one source per store call, at most.
pub(crate) const BATCH: usize = 256;

/// The first batch of a source for a page of `limit`: the page and one more (which
/// tells whether more remain), within 16..=[`BATCH`].
pub(crate) fn first_batch(limit: usize) -> usize {
    limit.saturating_add(1).clamp(16, BATCH)
}

/// One page of a list and where the next page starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Where a list reads its positions from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The keys of `index` that start with `prefix`; the rest of each key is the
    /// position, its value the record id.
    Index { index: &'static str, prefix: String },
    /// The record table itself: the id is the position (tables keyed by UUIDv7 ids).
    Table,
}

impl Source {
    /// The keys of `index` that start with `prefix`.
    pub fn index(index: &'static str, prefix: impl Into<String>) -> Source {
        Source::Index {
            index,
            prefix: prefix.into(),
        }
    }
}

/// Which way a list runs through its positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Ascending positions (lists by name).
    Ascending,
    /// Descending positions: newest first for time-ordered ids.
    Descending,
}

/// One source being walked, refilled a batch at a time.
struct Walker<T> {
    source: Source,
    scan: IndexScan,
    prefix_len: usize,
    /// `(position, record id, the record when the source read it already)`.
    buffer: VecDeque<(String, String, Option<T>)>,
    done: bool,
}

impl<T: Record> Walker<T> {
    fn new(source: Source, order: Order, cursor: Option<&str>, batch: usize) -> Walker<T> {
        let (index, prefix) = match &source {
            Source::Index { index, prefix } => (*index, prefix.clone()),
            Source::Table => ("", String::new()),
        };
        let mut scan = IndexScan::prefix(index, &prefix, batch);
        if order == Order::Descending {
            scan = scan.backward();
        }
        scan.after = cursor.map(|c| format!("{prefix}{c}"));
        Walker {
            source,
            scan,
            prefix_len: prefix.len(),
            buffer: VecDeque::new(),
            done: false,
        }
    }

    /// The next position of this source, reading a batch when the buffer is empty.
    fn head(&mut self, r: &impl Read) -> anyhow::Result<Option<&str>> {
        if self.buffer.is_empty() && !self.done {
            match self.source {
                Source::Index { .. } => {
                    let entries = r.index_page(&self.scan)?;
                    self.done = entries.len() < self.scan.limit;
                    if let Some((key, _)) = entries.last() {
                        self.scan.after = Some(key.clone());
                    }
                    self.buffer = entries
                        .into_iter()
                        .map(|(key, id)| (key[self.prefix_len..].to_string(), id, None))
                        .collect();
                }
                Source::Table => {
                    let records: Vec<T> = r.records_page(&self.scan)?;
                    self.done = records.len() < self.scan.limit;
                    if let Some(last) = records.last() {
                        self.scan.after = Some(last.id().to_string());
                    }
                    self.buffer = records
                        .into_iter()
                        .map(|t| (t.id().to_string(), t.id().to_string(), Some(t)))
                        .collect();
                }
            }
        }
        Ok(self
            .buffer
            .front()
            .map(|(position, _, _)| position.as_str()))
    }
}

/// One page of records from `sources` in `order`, starting after the position
/// `cursor`: at most `limit` records that `keep` accepts, examining at most
/// [`SCAN_BUDGET`] positions. Sources must not overlap (a record reached through
/// two of them would be listed twice).
pub fn page<T: Record>(
    r: &impl Read,
    sources: Vec<Source>,
    order: Order,
    cursor: Option<&str>,
    limit: usize,
    keep: impl FnMut(&T) -> bool,
) -> anyhow::Result<Page<T>> {
    page_with_budget(r, sources, order, cursor, limit, SCAN_BUDGET, keep)
}

/// [`page`] with another budget (tests use small ones).
pub fn page_with_budget<T: Record>(
    r: &impl Read,
    sources: Vec<Source>,
    order: Order,
    cursor: Option<&str>,
    limit: usize,
    budget: usize,
    mut keep: impl FnMut(&T) -> bool,
) -> anyhow::Result<Page<T>> {
    let batch = first_batch(limit);
    let mut walkers: Vec<Walker<T>> = sources
        .into_iter()
        .map(|s| Walker::new(s, order, cursor, batch))
        .collect();
    let mut items = Vec::new();
    let mut examined = 0usize;
    if limit == 0 {
        return Ok(Page { items, next: None });
    }
    let mut last_position: Option<String> = None;
    loop {
        // The next positions in the list's order, as many as the page still needs;
        // the records the sources did not read already are then read together (one
        // query on PostgreSQL).
        let want = limit.saturating_sub(items.len()).max(1);
        let mut taken: Vec<(String, Option<T>)> = Vec::with_capacity(want);
        let mut exhausted = false;
        while taken.len() < want && examined < budget {
            // The next position in the list's order at the head of any source.
            let mut best: Option<(usize, String)> = None;
            for (n, walker) in walkers.iter_mut().enumerate() {
                if let Some(position) = walker.head(r)? {
                    let better = match (&best, order) {
                        (None, _) => true,
                        (Some((_, b)), Order::Ascending) => position < b.as_str(),
                        (Some((_, b)), Order::Descending) => position > b.as_str(),
                    };
                    if better {
                        best = Some((n, position.to_string()));
                    }
                }
            }
            let Some((n, position)) = best else {
                exhausted = true;
                break;
            };
            let Some((_, id, record)) = walkers[n].buffer.pop_front() else {
                exhausted = true;
                break;
            };
            examined += 1;
            taken.push((id, record));
            last_position = Some(position);
        }
        let missing: Vec<String> = taken
            .iter()
            .filter(|(_, record)| record.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let mut read = r.get_many::<T>(&missing)?.into_iter();
        for (_, record) in taken {
            let record = match record {
                Some(record) => Some(record),
                None => read.next().flatten(),
            };
            if let Some(record) = record {
                if keep(&record) {
                    items.push(record);
                }
            }
        }
        if exhausted {
            return Ok(Page { items, next: None });
        }
        if items.len() >= limit || examined >= budget {
            // More may remain: the next page starts after the last position examined.
            let mut more = false;
            for walker in &mut walkers {
                if walker.head(r)?.is_some() {
                    more = true;
                    break;
                }
            }
            return Ok(Page {
                items,
                next: if more { last_position } else { None },
            });
        }
    }
}

/// One page of a list already read whole, in `position` order (ascending): the items
/// after the position `cursor`, at most `limit`. For the small tables that stay whole
/// (projects, users, scripts) so they still take `limit` and `cursor` like every
/// list; never for a table that grows with the fleet or with time.
pub fn page_of_all<T>(
    items: Vec<T>,
    position: impl Fn(&T) -> String,
    cursor: Option<&str>,
    limit: usize,
) -> Page<T> {
    let mut rest: Vec<(String, T)> = items
        .into_iter()
        .map(|item| (position(&item), item))
        .filter(|(p, _)| cursor.is_none_or(|c| p.as_str() > c))
        .collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = if more {
        rest.last().map(|(p, _)| p.clone())
    } else {
        None
    };
    Page {
        items: rest.into_iter().map(|(_, item)| item).collect(),
        next,
    }
}

/// The projects whose `action`-guarded records a subject may see, sorted, or `None`
/// when it sees every project's (admins, technical managers): the lists read one
/// source per project for a subject that sees only some.
pub fn project_scope(subject: &Subject, action: Action) -> Option<Vec<String>> {
    if policy::can(subject, action, Some("")) && subject.level_on("").is_some() {
        return None;
    }
    let mut ids: Vec<String> = subject
        .grants
        .keys()
        .filter(|p| policy::can(subject, action, Some(p.as_str())))
        .cloned()
        .collect();
    ids.sort();
    Some(ids)
}

/// The position of a record in a list by name: the name folded to lower case (and
/// cut to [`NAME_KEY_CHARS`] characters, so a cursor stays short), a space, the id.
/// The space sorts below every character a name holds, so `web` comes before `web-1`.
pub fn name_position(name: &str, id: &str) -> String {
    let folded: String = name.to_lowercase().chars().take(NAME_KEY_CHARS).collect();
    format!("{folded} {id}")
}

/// The characters of a name a position keeps; longer names share an order by id.
pub const NAME_KEY_CHARS: usize = 100;

/// Schema step: the list indexes and kept counts of servers, requests, backups,
/// system updates, agents (and enrollment tokens), subscriptions and rollouts stored
/// before their lists read pages.
pub fn backfill_indexes(w: &mut crate::store::Writer) -> anyhow::Result<()> {
    crate::servers::backfill_indexes(w)?;
    crate::requests::backfill_indexes(w)?;
    crate::backups::backfill_indexes(w)?;
    crate::agents::backfill_indexes(w)?;
    crate::subscriptions::backfill_indexes(w)?;
    crate::rollouts::backfill_indexes(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Item {
        id: String,
        colour: String,
    }
    impl Record for Item {
        const TABLE: &'static str = "listing_items";
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn store_with(items: &[(&str, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .write(|w| {
                for (id, colour) in items {
                    w.put(&Item {
                        id: id.to_string(),
                        colour: colour.to_string(),
                    })?;
                    w.index_put("item_by_colour", &format!("{colour}/{id}"), id)?;
                }
                Ok(())
            })
            .unwrap();
        (dir, store)
    }

    fn ids(page: &Page<Item>) -> Vec<&str> {
        page.items.iter().map(|i| i.id.as_str()).collect()
    }

    /// Walks every page of a list: each record once, in order, however small the
    /// pages or the budget.
    fn walk_all(
        store: &Store,
        sources: &[Source],
        order: Order,
        limit: usize,
        budget: usize,
        keep: impl Fn(&Item) -> bool + Copy,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let page = store
                .read(|r| {
                    page_with_budget(
                        r,
                        sources.to_vec(),
                        order,
                        cursor.as_deref(),
                        limit,
                        budget,
                        keep,
                    )
                })
                .unwrap();
            out.extend(page.items.iter().map(|i| i.id.clone()));
            match page.next {
                Some(next) => cursor = Some(next),
                None => return out,
            }
        }
        panic!("the walk never ended");
    }

    /// Merged sources come out in one order, each record once, in both directions;
    /// the record table itself is a source; filters, limits and budgets only change
    /// where pages end.
    #[test]
    fn pages_merge_sources_in_order_and_resume_after_the_cursor() {
        let (_dir, store) = store_with(&[
            ("01", "red"),
            ("02", "blue"),
            ("03", "red"),
            ("04", "green"),
            ("05", "blue"),
            ("06", "red"),
        ]);
        let red_blue = vec![
            Source::index("item_by_colour", "red/"),
            Source::index("item_by_colour", "blue/"),
        ];
        let all = |_: &Item| true;
        for (limit, budget) in [(1, SCAN_BUDGET), (2, SCAN_BUDGET), (100, 1), (2, 3)] {
            assert_eq!(
                walk_all(&store, &red_blue, Order::Ascending, limit, budget, all),
                ["01", "02", "03", "05", "06"],
                "limit {limit} budget {budget}"
            );
            assert_eq!(
                walk_all(&store, &red_blue, Order::Descending, limit, budget, all),
                ["06", "05", "03", "02", "01"]
            );
            assert_eq!(
                walk_all(
                    &store,
                    &[Source::Table],
                    Order::Descending,
                    limit,
                    budget,
                    |i| i.colour != "red"
                ),
                ["05", "04", "02"]
            );
        }
        // A page ends at its limit with a cursor; the last page has none.
        let first = store
            .read(|r| page::<Item>(r, vec![Source::Table], Order::Descending, None, 2, all))
            .unwrap();
        assert_eq!(ids(&first), ["06", "05"]);
        assert_eq!(first.next.as_deref(), Some("05"));
        let rest = store
            .read(|r| {
                page::<Item>(
                    r,
                    vec![Source::Table],
                    Order::Descending,
                    Some("05"),
                    9,
                    all,
                )
            })
            .unwrap();
        assert_eq!(ids(&rest), ["04", "03", "02", "01"]);
        assert_eq!(rest.next, None);
        // A filter that matches nothing within the budget answers a short page that
        // goes on from where it stopped.
        let starved = store
            .read(|r| {
                page_with_budget::<Item>(
                    r,
                    vec![Source::Table],
                    Order::Ascending,
                    None,
                    5,
                    2,
                    |_| false,
                )
            })
            .unwrap();
        assert!(starved.items.is_empty());
        assert_eq!(starved.next.as_deref(), Some("02"));
    }

    /// A list read whole pages like an indexed one: after the cursor, at most the
    /// limit, a cursor while more remain.
    #[test]
    fn sorted_lists_page_after_the_cursor() {
        let items = vec!["c", "a", "e", "b", "d"];
        let pos = |s: &&str| s.to_string();
        let first = page_of_all(items.clone(), pos, None, 2);
        assert_eq!(
            (first.items, first.next.as_deref()),
            (vec!["a", "b"], Some("b"))
        );
        let last = page_of_all(items.clone(), pos, Some("c"), 2);
        assert_eq!((last.items, last.next), (vec!["d", "e"], None));
        let gone = page_of_all(items, pos, Some("bb"), 10);
        assert_eq!(
            gone.items,
            ["c", "d", "e"],
            "a cursor no longer stored resumes in place"
        );
    }

    /// Positions by name put a name before its longer relatives and keep long names
    /// short enough for a cursor.
    #[test]
    fn name_positions_order_names_and_stay_short() {
        let mut positions = [
            name_position("web-1", "b"),
            name_position("Web", "a"),
            name_position("web.2", "c"),
            name_position("db", "d"),
        ];
        positions.sort();
        assert_eq!(positions, ["db d", "web a", "web-1 b", "web.2 c"]);
        let long = name_position(&"x".repeat(500), "id");
        assert_eq!(long.len(), NAME_KEY_CHARS + 3);
    }
}
