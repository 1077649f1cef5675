//! Project costs against budgets: this month's cost (the monthly prices of the
//! project's servers that are not deleted), one snapshot per project and month for the
//! trend, and warnings at 80 % and 100 % of the budget, each raised once per project,
//! threshold and month.
//!
//! Also Hetzner's monthly prices as a sync last read them, so an approval prices a
//! request's server type without asking Hetzner inside its transaction.
//!
//! Tables: `cost_snapshots` (`project_id/YYYY-MM`), `budget_alerts`
//! (`project_id/YYYY-MM/PERCENT`), `hetzner_prices` (`server_type/location`; bounded
//! by Hetzner's catalog).

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Actor};
use crate::notifications;
use crate::projects::Project;
use crate::store::{IndexScan, Read, Record, Writer};

/// Hetzner's monthly gross price of one server type in one location, as last read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerTypePrice {
    /// `server_type/location`.
    pub id: String,
    pub monthly: f64,
    pub read_at: DateTime<Utc>,
}

impl Record for ServerTypePrice {
    const TABLE: &'static str = "hetzner_prices";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Keeps the prices a sync read (unchanged ones are not rewritten).
pub fn record_prices(
    w: &mut Writer,
    prices: &super::client::Prices,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    for ((server_type, location), monthly) in prices {
        let id = format!("{server_type}/{location}");
        let known: Option<ServerTypePrice> = w.get(&id)?;
        if known.is_some_and(|k| (k.monthly - monthly).abs() < 1e-9) {
            continue;
        }
        w.put(&ServerTypePrice {
            id,
            monthly: *monthly,
            read_at: now,
        })?;
    }
    Ok(())
}

/// The monthly price of a server type in a location, if a sync has read it.
pub fn price_of(r: &impl Read, server_type: &str, location: &str) -> anyhow::Result<Option<f64>> {
    Ok(
        r.get::<ServerTypePrice>(&format!("{server_type}/{location}"))?
            .map(|p| p.monthly),
    )
}

/// The thresholds that raise a warning, in percent of the budget.
pub const THRESHOLDS: [u32; 2] = [80, 100];

/// A project's cost in one month, as last seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CostSnapshot {
    /// `project_id/YYYY-MM`.
    pub id: String,
    pub project_id: String,
    /// `YYYY-MM`.
    pub month: String,
    pub cost: f64,
    pub budget: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

impl Record for CostSnapshot {
    const TABLE: &'static str = "cost_snapshots";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A budget warning that was raised.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetAlert {
    /// `project_id/YYYY-MM/PERCENT`.
    pub id: String,
    pub project_id: String,
    pub month: String,
    pub threshold: u32,
    pub cost: f64,
    pub budget: f64,
    pub at: DateTime<Utc>,
}

impl Record for BudgetAlert {
    const TABLE: &'static str = "budget_alerts";
    fn id(&self) -> &str {
        &self.id
    }
}

/// `YYYY-MM` of a time.
pub fn month_of(t: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", t.year(), t.month())
}

/// The thresholds a cost has reached against a budget; none without a positive budget.
pub fn thresholds_reached(cost: f64, budget: Option<f64>) -> Vec<u32> {
    match budget.filter(|b| *b > 0.0) {
        None => Vec::new(),
        Some(b) => THRESHOLDS
            .iter()
            .copied()
            .filter(|t| cost >= b * f64::from(*t) / 100.0 - 1e-9)
            .collect(),
    }
}

/// Percent of the budget used, rounded; `None` without a positive budget.
pub fn percent_used(cost: f64, budget: Option<f64>) -> Option<f64> {
    budget
        .filter(|b| *b > 0.0)
        .map(|b| (cost / b * 100.0).round())
}

/// The monthly cost of a project's servers that are not deleted.
pub fn project_cost(r: &impl Read, project_id: &str) -> anyhow::Result<f64> {
    let cost = crate::servers::project_cost(r, project_id)?;
    Ok((cost * 100.0).round() / 100.0)
}

/// Updates this month's snapshot of a project and raises the warnings newly reached;
/// answers those. Each warning goes to every admin's notifications and to the audit
/// log.
pub fn record(
    w: &mut Writer,
    project: &Project,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<BudgetAlert>> {
    let month = month_of(now);
    let cost = project_cost(w, &project.id)?;
    w.put(&CostSnapshot {
        id: format!("{}/{month}", project.id),
        project_id: project.id.clone(),
        month: month.clone(),
        cost,
        budget: project.budget_monthly,
        updated_at: now,
    })?;
    let mut raised = Vec::new();
    let mut new = Vec::new();
    for threshold in thresholds_reached(cost, project.budget_monthly) {
        let id = format!("{}/{month}/{threshold}", project.id);
        if w.get::<BudgetAlert>(&id)?.is_none() {
            new.push((threshold, id));
        }
    }
    // A cost that jumps past 80 % and 100 % at once is told once, as over budget: the
    // lower threshold is recorded (so it is not raised later this month) but not sent.
    let highest = new.last().map(|(t, _)| *t);
    for (threshold, id) in new {
        let budget = project.budget_monthly.unwrap_or_default();
        let alert = BudgetAlert {
            id,
            project_id: project.id.clone(),
            month: month.clone(),
            threshold,
            cost,
            budget,
            at: now,
        };
        w.put(&alert)?;
        if Some(threshold) != highest {
            continue;
        }
        let used = percent_used(cost, project.budget_monthly).unwrap_or_default();
        let text = if threshold >= 100 {
            format!(
                "{} is over its monthly budget: €{cost:.2} of €{budget:.2}",
                project.name
            )
        } else {
            format!(
                "{} has used {used:.0} % of its monthly budget (warning at {threshold} %): €{cost:.2} of €{budget:.2}",
                project.name
            )
        };
        audit::record(
            w,
            &Actor::system(),
            "budget.warning",
            &format!("project:{}", project.name),
            text.clone(),
        )?;
        let admins = notifications::admin_ids(w)?;
        crate::alerts::raise(
            w,
            &admins,
            &crate::alerts::Alert {
                event: "budget.threshold",
                project_id: Some(project.id.clone()),
                subject: serde_json::json!({"project": project.name, "month": month, "threshold": threshold, "cost": cost, "budget": budget}),
                message: notifications::Message {
                    title: if threshold >= 100 {
                        format!("{} is over budget", project.name)
                    } else {
                        format!("{} reached {threshold} % of its budget", project.name)
                    },
                    body: text,
                    link: Some(format!("/projects/{}", project.id)),
                    level: if threshold >= 100 {
                        "danger"
                    } else {
                        "warning"
                    },
                    subject: format!("budget:{}:{month}:{threshold}", project.id),
                },
            },
        )?;
        raised.push(alert);
    }
    Ok(raised)
}

/// The project's cost in the last `months` months that have a snapshot, oldest first.
pub fn trend(r: &impl Read, project_id: &str, months: usize) -> anyhow::Result<Vec<CostSnapshot>> {
    // Snapshots are keyed `project_id/YYYY-MM`: the newest `months` of the project
    // are one backwards page of the table.
    let scan = IndexScan::prefix("", &format!("{project_id}/"), months).backward();
    let mut snapshots: Vec<CostSnapshot> = r.records_page(&scan)?;
    snapshots.reverse();
    Ok(snapshots)
}

/// The warnings raised for a project this month.
pub fn alerts_this_month(
    r: &impl Read,
    project_id: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<BudgetAlert>> {
    let month = month_of(now);
    // Alerts are keyed `project_id/YYYY-MM/PERCENT`: this month's are one range.
    let scan = IndexScan::prefix("", &format!("{project_id}/{month}/"), 100);
    Ok(r.records_page::<BudgetAlert>(&scan)?
        .into_iter()
        .filter(|a| a.project_id == project_id && a.month == month)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 80 % and 100 % are reached at exactly those shares of the budget, and never
    /// without a budget.
    #[test]
    fn thresholds() {
        assert_eq!(thresholds_reached(79.99, Some(100.0)), Vec::<u32>::new());
        assert_eq!(thresholds_reached(80.0, Some(100.0)), vec![80]);
        assert_eq!(thresholds_reached(99.0, Some(100.0)), vec![80]);
        assert_eq!(thresholds_reached(100.0, Some(100.0)), vec![80, 100]);
        assert_eq!(thresholds_reached(500.0, None), Vec::<u32>::new());
        assert_eq!(thresholds_reached(500.0, Some(0.0)), Vec::<u32>::new());
        assert_eq!(percent_used(30.0, Some(40.0)), Some(75.0));
    }

    /// Months are named `YYYY-MM`, so they sort in time order.
    #[test]
    fn month_names() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(month_of(t), "2026-03");
    }
}
