//! Revenue: monthly recurring revenue from client subscriptions, in total, per client,
//! per sales agent and per month over the last twelve months, with what each client's
//! servers cost at Hetzner beside it and the margin. Also the CSV export of those
//! tables and the server-rendered SVG charts of the revenue page.
//!
//! **Invariant:** amounts are kept per currency and never converted. A [`Money`] maps a
//! currency code to an amount; Hetzner costs are EUR, so a client's margin subtracts
//! them from its EUR revenue only and leaves its other currencies as they are.
//!
//! Everything here is a pure function of subscriptions, servers and a date.

use std::collections::BTreeMap;

use chrono::{Datelike, Months, NaiveDate};
use serde::Serialize;

use crate::servers::Server;
use crate::subscriptions::{Subscription, SubscriptionStatus};

/// Amounts per currency code, never mixed.
pub type Money = BTreeMap<String, f64>;

/// The currency Hetzner bills in.
pub const SERVER_CURRENCY: &str = "EUR";

fn add(money: &mut Money, currency: &str, amount: f64) {
    let entry = money.entry(currency.to_string()).or_insert(0.0);
    *entry = round(*entry + amount);
}

/// Rounds to cents; never answers `-0.0` (an empty sum of `f64` is `-0.0`).
pub(crate) fn round(v: f64) -> f64 {
    let cents = (v * 100.0).round() / 100.0;
    if cents == 0.0 {
        0.0
    } else {
        cents
    }
}

/// One client's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClientRevenue {
    pub client: String,
    pub mrr: Money,
    /// The monthly cost of the client's servers at Hetzner (EUR).
    pub hetzner_cost_eur: f64,
    /// `mrr` with the Hetzner cost taken from its EUR amount.
    pub margin: Money,
    pub subscriptions: usize,
    pub servers: usize,
    pub sales_agents: Vec<String>,
}

/// One sales agent's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentRevenue {
    pub sales_agent: String,
    pub mrr: Money,
    pub clients: usize,
    pub subscriptions: usize,
    /// Clients and subscriptions per currency (what each CSV row counts).
    pub by_currency: BTreeMap<String, CurrencyCounts>,
}

/// How many clients and subscriptions pay in one currency.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CurrencyCounts {
    pub clients: usize,
    pub subscriptions: usize,
}

/// One month's recurring revenue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MonthRevenue {
    /// `YYYY-MM`.
    pub month: String,
    pub mrr: Money,
}

/// The revenue report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Revenue {
    pub mrr: Money,
    pub hetzner_cost_eur: f64,
    pub by_client: Vec<ClientRevenue>,
    pub by_sales_agent: Vec<AgentRevenue>,
    /// The last twelve months, oldest first, the current month last.
    pub by_month: Vec<MonthRevenue>,
}

/// Whether a subscription brings revenue on `day`: started, active (not paused,
/// cancelled, ended or expired), before a pending cancellation takes effect, and
/// either within its hosting period or renewing by itself.
pub fn active_on(sub: &Subscription, day: NaiveDate) -> bool {
    sub.status == SubscriptionStatus::Active
        && sub.starts_on <= day
        && sub
            .cancellation
            .as_ref()
            .is_none_or(|c| day < c.effective_on)
        && (day <= sub.hosting_until || sub.auto_renew)
}

/// Whether a subscription brought revenue at some point of the month starting `first`.
fn active_in_month(sub: &Subscription, first: NaiveDate, today: NaiveDate) -> bool {
    let last = first
        .checked_add_months(Months::new(1))
        .and_then(|d| d.pred_opt())
        .unwrap_or(first);
    let mut end = if sub.auto_renew && sub.status == SubscriptionStatus::Active {
        sub.hosting_until.max(today)
    } else {
        sub.hosting_until
    };
    // A cancelled or ended one ran until the day before it stopped (a pending
    // cancellation: until the day before it takes effect).
    let stopped = sub
        .ended_on
        .or(sub.cancellation.as_ref().map(|c| c.effective_on));
    if let Some(last_day) = stopped.and_then(|d| d.pred_opt()) {
        end = end.min(last_day);
    }
    let overlaps = sub.starts_on <= last && end >= first && first <= today;
    // A subscription ever paused counts only in a month it ran at least one day of.
    let ever_paused = sub.paused_on.is_some() || sub.lifecycle.iter().any(|c| c.action == "pause");
    overlaps
        && (!ever_paused
            || first
                .iter_days()
                .take_while(|d| *d <= last.min(today))
                .any(|d| crate::statements::runs_on(sub, d)))
}

/// The revenue of `subs` on `today`, with the Hetzner cost of their servers.
pub fn compute(subs: &[Subscription], servers: &[Server], today: NaiveDate) -> Revenue {
    let active: Vec<&Subscription> = subs.iter().filter(|s| active_on(s, today)).collect();
    let mut mrr = Money::new();
    for s in &active {
        add(&mut mrr, &s.currency, s.monthly_cost);
    }
    let cost_of = |id: &str| {
        servers
            .iter()
            .find(|srv| srv.id == id && srv.status != "deleted")
            .and_then(|srv| srv.monthly_cost)
            .unwrap_or(0.0)
    };

    let mut clients: BTreeMap<String, (String, Vec<&Subscription>)> = BTreeMap::new();
    for s in &active {
        clients
            .entry(s.client.trim().to_lowercase())
            .or_insert_with(|| (s.client.trim().to_string(), Vec::new()))
            .1
            .push(s);
    }
    let mut total_cost = 0.0;
    let mut by_client: Vec<ClientRevenue> = clients
        .into_values()
        .map(|(client, list)| {
            let mut money = Money::new();
            let mut server_ids: Vec<&str> = Vec::new();
            let mut agents: Vec<String> = Vec::new();
            for s in &list {
                add(&mut money, &s.currency, s.monthly_cost);
                for id in &s.server_ids {
                    if !server_ids.contains(&id.as_str()) {
                        server_ids.push(id);
                    }
                }
                if !agents.contains(&s.sales_agent) {
                    agents.push(s.sales_agent.clone());
                }
            }
            let cost = round(server_ids.iter().map(|id| cost_of(id)).sum());
            total_cost += cost;
            let mut margin = money.clone();
            if cost > 0.0 || margin.contains_key(SERVER_CURRENCY) {
                add(&mut margin, SERVER_CURRENCY, -cost);
            }
            agents.sort();
            ClientRevenue {
                client,
                mrr: money,
                hetzner_cost_eur: cost,
                margin,
                subscriptions: list.len(),
                servers: server_ids.len(),
                sales_agents: agents,
            }
        })
        .collect();
    by_client.sort_by_key(|c| c.client.to_lowercase());

    // Per agent: revenue, every (currency, client) pair seen, subscriptions per currency.
    type AgentTally = (Money, Vec<(String, String)>, BTreeMap<String, usize>);
    let mut agents: BTreeMap<String, AgentTally> = BTreeMap::new();
    for s in &active {
        let entry = agents.entry(s.sales_agent.clone()).or_default();
        add(&mut entry.0, &s.currency, s.monthly_cost);
        let pair = (s.currency.clone(), s.client.trim().to_lowercase());
        if !entry.1.contains(&pair) {
            entry.1.push(pair);
        }
        *entry.2.entry(s.currency.clone()).or_default() += 1;
    }
    let by_sales_agent = agents
        .into_iter()
        .map(|(sales_agent, (mrr, pairs, per_currency))| {
            let mut clients: Vec<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
            clients.sort_unstable();
            clients.dedup();
            let by_currency = per_currency
                .iter()
                .map(|(code, subscriptions)| {
                    let clients = pairs.iter().filter(|(c, _)| c == code).count();
                    let counts = CurrencyCounts {
                        clients,
                        subscriptions: *subscriptions,
                    };
                    (code.clone(), counts)
                })
                .collect();
            AgentRevenue {
                sales_agent,
                mrr,
                clients: clients.len(),
                subscriptions: per_currency.values().sum(),
                by_currency,
            }
        })
        .collect();

    let this_month = today.with_day(1).unwrap_or(today);
    let by_month = (0..12)
        .rev()
        .filter_map(|back| this_month.checked_sub_months(Months::new(back)))
        .map(|first| {
            let mut money = Money::new();
            for s in subs.iter().filter(|s| active_in_month(s, first, today)) {
                add(&mut money, &s.currency, s.monthly_cost);
            }
            MonthRevenue {
                month: first.format("%Y-%m").to_string(),
                mrr: money,
            }
        })
        .collect();

    Revenue {
        mrr,
        hetzner_cost_eur: round(total_cost),
        by_client,
        by_sales_agent,
        by_month,
    }
}

/// Every currency that appears anywhere in the report, sorted.
pub fn currencies(revenue: &Revenue) -> Vec<String> {
    let mut all: Vec<String> = revenue
        .by_month
        .iter()
        .flat_map(|m| m.mrr.keys())
        .chain(revenue.mrr.keys())
        .cloned()
        .collect();
    all.sort();
    all.dedup();
    all
}

// ---- CSV ----

/// A CSV field: quoted when needed; text that a spreadsheet would run as a formula is
/// prefixed with `'`.
pub(crate) fn csv_text(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// The tables of the report as CSV: `clients`, `agents` or `months`; one row per
/// currency, so amounts are never added across currencies.
pub fn csv(revenue: &Revenue, table: &str) -> Option<String> {
    let mut out = String::new();
    match table {
        "clients" => {
            out.push_str("client,currency,mrr,hetzner_cost_eur,margin\n");
            for c in &revenue.by_client {
                let mut codes: Vec<&String> = c.mrr.keys().chain(c.margin.keys()).collect();
                codes.sort();
                codes.dedup();
                for code in codes {
                    let cost = if code == SERVER_CURRENCY {
                        format!("{:.2}", c.hetzner_cost_eur)
                    } else {
                        String::new()
                    };
                    out.push_str(&format!(
                        "{},{code},{:.2},{cost},{:.2}\n",
                        csv_text(&c.client),
                        c.mrr.get(code).copied().unwrap_or(0.0),
                        c.margin.get(code).copied().unwrap_or(0.0),
                    ));
                }
            }
        }
        "agents" => {
            out.push_str("sales_agent,currency,mrr,clients,subscriptions\n");
            for a in &revenue.by_sales_agent {
                for (code, amount) in &a.mrr {
                    let counts = a.by_currency.get(code).cloned().unwrap_or_default();
                    out.push_str(&format!(
                        "{},{code},{amount:.2},{},{}\n",
                        csv_text(&a.sales_agent),
                        counts.clients,
                        counts.subscriptions
                    ));
                }
            }
        }
        "months" => {
            out.push_str("month,currency,mrr\n");
            for m in &revenue.by_month {
                for (code, amount) in &m.mrr {
                    out.push_str(&format!("{},{code},{amount:.2}\n", m.month));
                }
            }
        }
        _ => return None,
    }
    Some(out)
}

// ---- SVG ----

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A vertical bar chart of `(label, value)` in one currency, as inline SVG.
pub fn bar_chart_svg(title: &str, currency: &str, bars: &[(String, f64)]) -> String {
    let width = 720.0;
    let height = 240.0;
    let (left, bottom, top) = (56.0, 36.0, 28.0);
    let plot_h = height - bottom - top;
    let max = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max).max(1.0);
    let slot = (width - left - 8.0) / bars.len().max(1) as f64;
    let bar_w = (slot * 0.7).clamp(2.0, 64.0);
    let mut svg = format!(
        "<svg class=\"ds-chart\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        xml_escape(&format!("{title} ({currency})"))
    );
    svg.push_str(&format!(
        "<text x=\"{left}\" y=\"16\" class=\"ds-chart-title\" fill=\"currentColor\" font-size=\"16\">{}</text>",
        xml_escape(&format!("{title} ({currency})"))
    ));
    for step in 0..=4 {
        let value = max * f64::from(step) / 4.0;
        let y = top + plot_h - plot_h * f64::from(step) / 4.0;
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"currentColor\" stroke-opacity=\"0.15\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\" fill=\"currentColor\" fill-opacity=\"0.7\">{value:.0}</text>",
            width - 8.0,
            left - 6.0,
            y + 3.0
        ));
    }
    for (i, (label, value)) in bars.iter().enumerate() {
        let h = plot_h * value / max;
        let x = left + slot * i as f64 + (slot - bar_w) / 2.0;
        let y = top + plot_h - h;
        svg.push_str(&format!(
            "<rect class=\"ds-bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{h:.1}\" rx=\"2\" fill=\"#4c9dff\" data-label=\"{}\" data-value=\"{value:.2}\"><title>{}: {value:.2} {}</title></rect>",
            xml_escape(label),
            xml_escape(label),
            xml_escape(currency)
        ));
        let short: String = label.chars().take(12).collect();
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" fill=\"currentColor\" fill-opacity=\"0.8\">{}</text>",
            x + bar_w / 2.0,
            height - bottom + 14.0,
            xml_escape(&short)
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn sub(client: &str, agent: &str, cost: f64, currency: &str, servers: &[&str]) -> Subscription {
        Subscription {
            id: format!("{client}-{currency}-{cost}"),
            client: client.into(),
            server_ids: servers.iter().map(|s| s.to_string()).collect(),
            monthly_cost: cost,
            currency: currency.into(),
            sales_agent_id: agent.into(),
            sales_agent: agent.into(),
            ..crate::subscriptions::sample("2026-12-31")
        }
    }

    fn server(id: &str, cost: f64) -> Server {
        Server {
            id: id.into(),
            name: id.into(),
            project_id: "p".into(),
            status: "running".into(),
            server_type: None,
            location: None,
            image: None,
            ipv4: None,
            ipv6: None,
            labels: Default::default(),
            notes: None,
            hetzner_id: None,
            agent_id: None,
            monthly_cost: Some(cost),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn money(pairs: &[(&str, f64)]) -> Money {
        pairs.iter().map(|(c, a)| (c.to_string(), *a)).collect()
    }

    /// A month the subscription spent paused from its first to its last day brings
    /// nothing to the monthly history; the months it ran in part still count.
    #[test]
    fn paused_months_bring_nothing() {
        let mut paused = sub("Acme", "sales", 10.0, "EUR", &[]);
        let change = |action: &str, on: &str| crate::subscriptions::LifecycleChange {
            action: action.into(),
            at: Utc::now(),
            by: "sales".into(),
            reason: None,
            effective_on: Some(day(on)),
        };
        paused.lifecycle = vec![
            change("pause", "2026-02-20"),
            change("resume", "2026-04-03"),
        ];
        let report = compute(&[paused], &[], day("2026-05-15"));
        let months: Vec<(&str, Option<f64>)> = report
            .by_month
            .iter()
            .map(|m| (m.month.as_str(), m.mrr.get("EUR").copied()))
            .filter(|(m, _)| ("2026-01".."2026-06").contains(m))
            .collect();
        assert_eq!(
            months,
            vec![
                ("2026-01", Some(10.0)),
                ("2026-02", Some(10.0)),
                ("2026-03", None),
                ("2026-04", Some(10.0)),
                ("2026-05", Some(10.0)),
            ]
        );
    }

    /// Several currencies stay apart in every table; the Hetzner cost comes off the
    /// EUR margin only; expired and future subscriptions bring nothing today.
    #[test]
    fn currencies_are_never_mixed() {
        let mut expired = sub("Gone", "sales", 999.0, "EUR", &[]);
        expired.status = SubscriptionStatus::Expired;
        let mut future = sub("Later", "sales", 50.0, "EUR", &[]);
        future.starts_on = day("2026-09-01");
        let subs = vec![
            sub("Acme", "sales", 100.0, "EUR", &["s1", "s2"]),
            sub("Acme", "sales", 30.0, "USD", &["s2"]),
            sub("Globex", "salma", 50.0, "EUR", &["s3"]),
            sub("Initech", "salma", 20.0, "GBP", &["s4"]),
            expired,
            future,
        ];
        let servers = vec![
            server("s1", 5.83),
            server("s2", 10.59),
            server("s3", 18.92),
            server("s4", 3.29),
        ];
        let rev = compute(&subs, &servers, day("2026-06-15"));
        assert_eq!(
            rev.mrr,
            money(&[("EUR", 150.0), ("GBP", 20.0), ("USD", 30.0)])
        );
        let acme = &rev.by_client[0];
        assert_eq!(acme.client, "Acme");
        assert_eq!(acme.mrr, money(&[("EUR", 100.0), ("USD", 30.0)]));
        assert_eq!(acme.hetzner_cost_eur, 16.42, "s2 counted once");
        assert_eq!(acme.margin, money(&[("EUR", 83.58), ("USD", 30.0)]));
        let initech = &rev.by_client[2];
        assert_eq!(
            initech.margin,
            money(&[("EUR", -3.29), ("GBP", 20.0)]),
            "no EUR revenue: the cost is a negative EUR margin, not taken from GBP"
        );
        assert_eq!(rev.hetzner_cost_eur, 38.63);
        assert_eq!(rev.by_sales_agent.len(), 2);
        assert_eq!(rev.by_sales_agent[1].sales_agent, "salma");
        assert_eq!(
            rev.by_sales_agent[1].mrr,
            money(&[("EUR", 50.0), ("GBP", 20.0)])
        );
        assert_eq!(rev.by_sales_agent[1].clients, 2);
        assert_eq!(rev.by_sales_agent[0].sales_agent, "sales");
        assert_eq!(
            rev.by_sales_agent[0].mrr,
            money(&[("EUR", 100.0), ("USD", 30.0)])
        );

        assert_eq!(rev.by_month.len(), 12);
        assert_eq!(rev.by_month[11].month, "2026-06");
        assert_eq!(rev.by_month[0].month, "2025-07");
        assert!(rev.by_month[0].mrr.is_empty(), "nothing before January");
        assert_eq!(
            rev.by_month[6].mrr,
            money(&[("EUR", 1149.0), ("GBP", 20.0), ("USD", 30.0)]),
            "January counts the subscription that expired later"
        );
        assert_eq!(currencies(&rev), ["EUR", "GBP", "USD"]);
    }

    /// The CSV export keeps one row per currency and defuses formulas in names.
    #[test]
    fn csv_rows_per_currency() {
        let subs = vec![
            sub("Acme, Inc", "sales", 100.0, "EUR", &["s1"]),
            sub("Acme, Inc", "sales", 30.0, "USD", &[]),
            sub("=cmd()", "sales", 1.0, "EUR", &[]),
        ];
        let rev = compute(&subs, &[server("s1", 10.0)], day("2026-03-01"));
        let clients = csv(&rev, "clients").unwrap();
        assert_eq!(
            clients,
            "client,currency,mrr,hetzner_cost_eur,margin\n\
             '=cmd(),EUR,1.00,0.00,1.00\n\
             \"Acme, Inc\",EUR,100.00,10.00,90.00\n\
             \"Acme, Inc\",USD,30.00,,30.00\n"
        );
        // Each currency's row counts that currency's clients and subscriptions
        // (regression: every row repeated the agent's totals).
        assert_eq!(
            csv(&rev, "agents").unwrap(),
            "sales_agent,currency,mrr,clients,subscriptions\n\
             sales,EUR,101.00,2,2\n\
             sales,USD,30.00,1,1\n"
        );
        assert_eq!(rev.by_sales_agent[0].clients, 2);
        assert_eq!(rev.by_sales_agent[0].subscriptions, 3);
        assert!(csv(&rev, "months")
            .unwrap()
            .ends_with("2026-03,USD,30.00\n"));
        assert_eq!(csv(&rev, "nope"), None);
    }

    /// The chart escapes labels and scales bars to the largest value.
    #[test]
    fn chart_svg() {
        let svg = bar_chart_svg(
            "MRR",
            "EUR",
            &[("<b>".to_string(), 50.0), ("b".to_string(), 100.0)],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert_eq!(svg.matches("class=\"ds-bar\"").count(), 2);
        assert!(
            svg.contains("height=\"176.0\""),
            "the largest bar fills the plot"
        );
    }
}
