//! Monthly statements: what one client's subscriptions bring in one calendar month,
//! per subscription and per currency, with the servers behind each, for a printable
//! page and a CSV.
//!
//! A subscription is charged for the days of the month it runs: from its start, while
//! not paused, until it is cancelled or ended, and within its hosting period (or past
//! it while it renews by itself). A whole month costs the monthly price; a part of a
//! month the same share of it, rounded to cents. Days of the current month still to
//! come count as the subscription stands today (a pending cancellation stops them).
//!
//! **Invariant:** amounts are never added across currencies (as in `revenue`).
//! Everything here is a pure function of a client, subscriptions, servers and dates.

use chrono::{Datelike, Months, NaiveDate};
use serde::Serialize;

use crate::clients::Client;
use crate::revenue::{csv_text, round, Money};
use crate::servers::Server;
use crate::subscriptions::{Subscription, SubscriptionStatus};

/// A calendar month, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    first: NaiveDate,
}

impl Month {
    /// The month holding `day`.
    pub fn of(day: NaiveDate) -> Month {
        Month {
            first: day.with_day(1).unwrap_or(day),
        }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Month> {
        let (year, month) = text.trim().split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1)
            .map(|first| Month { first })
    }

    pub fn first(self) -> NaiveDate {
        self.first
    }

    pub fn last(self) -> NaiveDate {
        self.first
            .checked_add_months(Months::new(1))
            .and_then(|d| d.pred_opt())
            .unwrap_or(self.first)
    }

    pub fn days(self) -> u32 {
        self.last().day()
    }

    pub fn previous(self) -> Month {
        Month::of(self.first.pred_opt().unwrap_or(self.first))
    }

    pub fn next(self) -> Month {
        Month::of(self.last().succ_opt().unwrap_or(self.first))
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.first.format("%Y-%m"))
    }
}

/// A server behind a statement line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatementServer {
    pub id: String,
    pub name: String,
    pub ipv4: Option<String>,
    pub status: String,
}

/// One subscription's charge for the month.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    pub subscription: String,
    pub status: SubscriptionStatus,
    pub monthly_cost: f64,
    pub currency: String,
    /// The first and last day of the month it ran.
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub days: u32,
    pub amount: f64,
    pub servers: Vec<StatementServer>,
}

/// One client's statement for one month.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Statement {
    pub client: Client,
    /// `YYYY-MM`.
    pub month: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub days_in_month: u32,
    pub lines: Vec<Line>,
    /// The sum of the lines' amounts per currency.
    pub totals: Money,
}

/// The days a subscription was paused, as `[from, until)` ranges (`until` open while
/// it still is), read from its lifecycle history.
fn pauses(sub: &Subscription) -> Vec<(NaiveDate, Option<NaiveDate>)> {
    let mut out: Vec<(NaiveDate, Option<NaiveDate>)> = Vec::new();
    for change in &sub.lifecycle {
        let on = change.effective_on.unwrap_or(change.at.date_naive());
        match change.action.as_str() {
            "pause" => out.push((on, None)),
            "resume" => {
                if let Some(open) = out.last_mut().filter(|p| p.1.is_none()) {
                    open.1 = Some(on);
                }
            }
            _ => {}
        }
    }
    if let (Some(paused_on), true) = (sub.paused_on, out.iter().all(|p| p.1.is_some())) {
        // Paused before the history recorded pauses.
        out.push((paused_on, None));
    }
    out
}

/// Whether `sub` runs (and is charged) on `day`.
pub fn runs_on(sub: &Subscription, day: NaiveDate) -> bool {
    let stopped = sub
        .ended_on
        .or(sub.cancellation.as_ref().map(|c| c.effective_on));
    let renews = sub.auto_renew && sub.status.is_open();
    day >= sub.starts_on
        && stopped.is_none_or(|stop| day < stop)
        && (day <= sub.hosting_until || renews)
        && !pauses(sub)
            .iter()
            .any(|(from, until)| *from <= day && until.is_none_or(|u| day < u))
}

/// The statement of `client` for `month` over `subs` (those the viewer may see),
/// with `servers` holding at least theirs.
pub fn compute(
    client: &Client,
    subs: &[Subscription],
    servers: &[Server],
    month: Month,
) -> Statement {
    let mut lines = Vec::new();
    let mut totals = Money::new();
    for sub in subs {
        let ran: Vec<NaiveDate> = month
            .first()
            .iter_days()
            .take_while(|d| *d <= month.last())
            .filter(|d| runs_on(sub, *d))
            .collect();
        let (Some(from), Some(to)) = (ran.first(), ran.last()) else {
            continue;
        };
        let days = ran.len() as u32;
        let amount = round(sub.monthly_cost * f64::from(days) / f64::from(month.days()));
        let entry = totals.entry(sub.currency.clone()).or_insert(0.0);
        *entry = round(*entry + amount);
        lines.push(Line {
            subscription: sub.id.clone(),
            status: sub.status,
            monthly_cost: sub.monthly_cost,
            currency: sub.currency.clone(),
            from: *from,
            to: *to,
            days,
            amount,
            servers: sub
                .server_ids
                .iter()
                .filter_map(|id| servers.iter().find(|s| &s.id == id))
                .map(|s| StatementServer {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    ipv4: s.ipv4.clone(),
                    status: s.status.clone(),
                })
                .collect(),
        });
    }
    lines.sort_by(|a, b| (a.from, &a.subscription).cmp(&(b.from, &b.subscription)));
    Statement {
        client: client.clone(),
        month: month.to_string(),
        from: month.first(),
        to: month.last(),
        days_in_month: month.days(),
        lines,
        totals,
    }
}

/// The statement as CSV: one row per subscription, then one total row per currency.
pub fn csv(statement: &Statement) -> String {
    let mut out = String::from(
        "client,month,subscription,from,to,days,days_in_month,monthly_cost,currency,amount,servers\n",
    );
    let client = csv_text(&statement.client.name);
    for line in &statement.lines {
        let servers: Vec<String> = line
            .servers
            .iter()
            .map(|s| match &s.ipv4 {
                Some(ip) => format!("{} ({ip})", s.name),
                None => s.name.clone(),
            })
            .collect();
        out.push_str(&format!(
            "{client},{},{},{},{},{},{},{:.2},{},{:.2},{}\n",
            statement.month,
            line.subscription,
            line.from,
            line.to,
            line.days,
            statement.days_in_month,
            line.monthly_cost,
            line.currency,
            line.amount,
            csv_text(&servers.join("; ")),
        ));
    }
    for (currency, total) in &statement.totals {
        out.push_str(&format!(
            "{client},{},total,,,,,,{currency},{total:.2},\n",
            statement.month
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::{Cancellation, LifecycleChange};
    use chrono::{TimeZone, Utc};

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn client() -> Client {
        Client {
            id: "c1".into(),
            name: "Acme, Inc.".into(),
            email: Some("ops@acme.test".into()),
            company: None,
            vat_id: Some("DE123".into()),
            address: None,
            notes: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn sub(id: &str, cost: f64, currency: &str, start: &str, until: &str) -> Subscription {
        Subscription {
            id: id.into(),
            client_id: Some("c1".into()),
            client: "Acme, Inc.".into(),
            server_ids: vec!["s1".into()],
            monthly_cost: cost,
            currency: currency.into(),
            starts_on: day(start),
            ..crate::subscriptions::sample(until)
        }
    }

    fn server() -> Server {
        serde_json::from_value(serde_json::json!({
            "id": "s1", "name": "web-1", "project_id": "p", "status": "running",
            "server_type": null, "location": null, "image": null,
            "ipv4": "192.0.2.10", "ipv6": null, "labels": {}, "notes": null,
            "hetzner_id": null, "agent_id": null, "monthly_cost": 4.0,
            "created_at": Utc::now(), "updated_at": Utc::now(),
        }))
        .unwrap()
    }

    fn change(action: &str, on: &str) -> LifecycleChange {
        LifecycleChange {
            action: action.into(),
            at: Utc.from_utc_datetime(&day(on).and_hms_opt(12, 0, 0).unwrap()),
            by: "sales".into(),
            reason: None,
            effective_on: Some(day(on)),
        }
    }

    #[test]
    fn months_parse_and_bound() {
        let m = Month::parse("2024-02").unwrap();
        assert_eq!(
            (m.first(), m.last(), m.days()),
            (day("2024-02-01"), day("2024-02-29"), 29)
        );
        assert_eq!(m.previous().to_string(), "2024-01");
        assert_eq!(
            Month::parse("2024-12").unwrap().next().to_string(),
            "2025-01"
        );
        for bad in ["2024-13", "2024-2", "24-02", "2024/02", "", "2024-02-01"] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn whole_and_partial_months_per_currency() {
        let whole = sub("a", 30.0, "EUR", "2026-01-01", "2026-12-31");
        // Starts on the 21st of a 30-day month: 10 days of 90.
        let late = sub("b", 90.0, "EUR", "2026-11-21", "2027-11-20");
        let egp = sub("c", 2500.0, "EGP", "2026-10-01", "2026-11-15");
        let later = sub("d", 10.0, "EUR", "2026-12-01", "2027-12-01");
        let s = compute(
            &client(),
            &[whole, late, egp, later],
            &[server()],
            Month::parse("2026-11").unwrap(),
        );
        let amounts: Vec<(&str, u32, f64)> = s
            .lines
            .iter()
            .map(|l| (l.subscription.as_str(), l.days, l.amount))
            .collect();
        assert_eq!(
            amounts,
            vec![("a", 30, 30.0), ("c", 15, 1250.0), ("b", 10, 30.0)]
        );
        assert_eq!(s.totals.get("EUR"), Some(&60.0));
        assert_eq!(s.totals.get("EGP"), Some(&1250.0));
        assert_eq!(s.lines[0].servers[0].name, "web-1");
    }

    #[test]
    fn pauses_cancellations_and_renewals_count_only_days_run() {
        let mut paused = sub("p", 30.0, "EUR", "2026-01-01", "2027-01-10");
        paused.lifecycle = vec![
            change("pause", "2026-11-11"),
            change("resume", "2026-11-21"),
        ];
        let mut still_paused = sub("q", 30.0, "EUR", "2026-01-01", "2027-01-10");
        still_paused.status = SubscriptionStatus::Paused;
        still_paused.paused_on = Some(day("2026-11-26"));
        still_paused.lifecycle = vec![change("pause", "2026-11-26")];
        let mut cancelled = sub("x", 30.0, "EUR", "2026-01-01", "2027-01-01");
        cancelled.cancellation = Some(Cancellation {
            reason: "moving".into(),
            effective_on: day("2026-11-06"),
            by: "sales".into(),
            at: Utc::now(),
        });
        let mut renewing = sub("r", 30.0, "EUR", "2025-11-01", "2026-11-10");
        renewing.auto_renew = true;
        let expired = sub("e", 30.0, "EUR", "2025-11-01", "2026-11-10");
        let s = compute(
            &client(),
            &[paused, still_paused, cancelled, renewing, expired],
            &[],
            Month::parse("2026-11").unwrap(),
        );
        let days: Vec<(&str, u32, f64)> = s
            .lines
            .iter()
            .map(|l| (l.subscription.as_str(), l.days, l.amount))
            .collect();
        assert_eq!(
            days,
            vec![
                ("e", 10, 10.0),
                ("p", 20, 20.0),
                ("q", 25, 25.0),
                ("r", 30, 30.0),
                ("x", 5, 5.0)
            ]
        );
    }

    #[test]
    fn csv_has_a_row_per_line_and_a_total_per_currency() {
        let s = compute(
            &client(),
            &[sub("a", 30.0, "EUR", "2026-01-01", "2026-12-31")],
            &[server()],
            Month::parse("2026-11").unwrap(),
        );
        assert_eq!(
            csv(&s),
            "client,month,subscription,from,to,days,days_in_month,monthly_cost,currency,amount,servers\n\
             \"Acme, Inc.\",2026-11,a,2026-11-01,2026-11-30,30,30,30.00,EUR,30.00,web-1 (192.0.2.10)\n\
             \"Acme, Inc.\",2026-11,total,,,,,,EUR,30.00,\n"
        );
    }
}
