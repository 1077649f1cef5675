//! Schedules: per project, a cron expression for backups and one for system updates,
//! shown in plain words with the next run time, and the scheduler task that starts
//! them.
//!
//! The decision is the pure function [`due`] over (schedule, last run, now): a run is
//! due when the first cron time after the last run (or after the schedule was set) is
//! not in the future. The scheduler only starts work for agents connected now, and
//! records the run time per (schedule, agent); so an agent that was offline through
//! several scheduled times gets exactly one run when it reconnects, not one per missed
//! time. Times are UTC. Tables: `schedules` (id `kind:project_id`),
//! `schedule_runs` (id `kind:project_id:agent_id`).

use std::future::Future;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::audit::{self, Actor};
use crate::error::{AppError, AppResult};
use crate::executions::Execution;
use crate::policy::{self, Action, Role, Subject};
use crate::store::{Read, Record, Writer};

/// How often the scheduler looks at the schedules.
pub const TICK: StdDuration = StdDuration::from_secs(15);

/// A parsed five-field cron expression (minute hour day-of-month month day-of-week).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
    /// Whether day-of-month / day-of-week were `*` (cron's "either matches" rule
    /// applies when both are restricted).
    any_day: bool,
    any_weekday: bool,
    text: String,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const WEEKDAY_NAMES: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn parse_value(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + min);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    // Day-of-week 7 is Sunday too.
    let v = if max == 6 && v == 7 { 0 } else { v };
    if v < min || v > max {
        return Err(format!("{v} is outside {min}-{max}"));
    }
    Ok(v)
}

fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step 0 in {part:?}"));
        }
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                parse_value(a, min, max, names)?,
                parse_value(b, min, max, names)?,
            )
        } else {
            let v = parse_value(range, min, max, names)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("range {range:?} runs backwards"));
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Cron {
    /// Parses `m h dom mon dow`, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let text = text.trim();
        let expanded = match text {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(
                "a cron expression has five fields: minute hour day-of-month month day-of-week"
                    .into(),
            );
        }
        let field = |i: usize, min, max, names: &[&str], what: &str| {
            parse_field(fields[i], min, max, names).map_err(|e| format!("{what}: {e}"))
        };
        Ok(Cron {
            minutes: field(0, 0, 59, &[], "minute")?,
            hours: field(1, 0, 23, &[], "hour")?,
            days: field(2, 1, 31, &[], "day of month")?,
            months: field(3, 1, 12, &MONTHS, "month")?,
            weekdays: field(4, 0, 6, &WEEKDAYS, "day of week")?,
            any_day: fields[2] == "*",
            any_weekday: fields[4] == "*",
            text: text.to_string(),
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days.contains(&t.day());
        let dow = self.weekdays.contains(&t.weekday().num_days_from_sunday());
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first matching minute strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        // Five years covers every valid expression (29 February included).
        let limit = after + Duration::days(366 * 5);
        while t <= limit {
            if !self.months.contains(&t.month()) || !self.day_matches(&t) {
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
                    .single()?
                    + Duration::days(1);
                continue;
            }
            if !self.hours.contains(&t.hour()) {
                t = t.with_minute(0)? + Duration::hours(1);
                continue;
            }
            if !self.minutes.contains(&t.minute()) {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }

    /// The expression in plain words ("every day at 03:00 UTC").
    pub fn describe(&self) -> String {
        let list = |values: &[u32], f: &dyn Fn(u32) -> String| {
            values.iter().map(|v| f(*v)).collect::<Vec<_>>().join(", ")
        };
        let time = if self.minutes.len() == 60 && self.hours.len() == 24 {
            "every minute".to_string()
        } else if self.hours.len() == 24 && self.minutes.len() == 1 {
            format!("every hour at minute {}", self.minutes[0])
        } else if self.hours.len() == 24 {
            format!(
                "every hour at minutes {}",
                list(&self.minutes, &|m| m.to_string())
            )
        } else if self.minutes.len() <= 4 && self.hours.len() <= 6 {
            let mut times = Vec::new();
            for h in &self.hours {
                for m in &self.minutes {
                    times.push(format!("{h:02}:{m:02}"));
                }
            }
            format!("at {}", times.join(", "))
        } else {
            format!(
                "at minutes {} of hours {}",
                list(&self.minutes, &|m| m.to_string()),
                list(&self.hours, &|h| h.to_string())
            )
        };
        let days = match (self.any_day, self.any_weekday) {
            (true, true) => "every day".to_string(),
            (true, false) => format!(
                "on {}",
                list(&self.weekdays, &|d| WEEKDAY_NAMES[d as usize].to_string())
            ),
            (false, true) => format!(
                "on day {} of the month",
                list(&self.days, &|d| d.to_string())
            ),
            (false, false) => format!(
                "on day {} of the month or on {}",
                list(&self.days, &|d| d.to_string()),
                list(&self.weekdays, &|d| WEEKDAY_NAMES[d as usize].to_string())
            ),
        };
        let months = if self.months.len() == 12 {
            String::new()
        } else {
            format!(
                " in {}",
                list(&self.months, &|m| MONTH_NAMES[m as usize - 1].to_string())
            )
        };
        format!("{days}{months}, {time} (UTC)")
    }
}

/// Whether a schedule is due now: the first cron time after the last run (or, never
/// run, after `since`, when the schedule was set) is not later than `now`. Pure.
pub fn due(
    cron: &Cron,
    last_run: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    let from = last_run.unwrap_or(since);
    cron.next_after(from).is_some_and(|next| next <= now)
}

/// What a schedule starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Backup,
    Update,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Backup => "backup",
            ScheduleKind::Update => "update",
        }
    }
}

/// A project's schedule of one kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub project_id: String,
    pub kind: ScheduleKind,
    pub cron: String,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl Record for Schedule {
    const TABLE: &'static str = "schedules";
    fn id(&self) -> &str {
        &self.id
    }
}

/// When a schedule last started work on an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleRun {
    pub id: String,
    pub last_run: DateTime<Utc>,
    pub execution_id: Option<String>,
}

impl Record for ScheduleRun {
    const TABLE: &'static str = "schedule_runs";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The id of a project's schedule of one kind.
pub fn schedule_id(kind: ScheduleKind, project_id: &str) -> String {
    format!("{}:{project_id}", kind.as_str())
}

/// The view of a project's schedule: the expression, in words, and the next run.
pub fn view(schedule: Option<&Schedule>, now: DateTime<Utc>) -> serde_json::Value {
    match schedule.and_then(|s| Cron::parse(&s.cron).ok().map(|c| (s, c))) {
        Some((s, cron)) => serde_json::json!({
            "cron": s.cron,
            "description": cron.describe(),
            "next_run": cron.next_after(now),
            "updated_by": s.updated_by,
            "updated_at": s.updated_at,
        }),
        None => serde_json::Value::Null,
    }
}

/// A project's schedules.
pub fn of_project(
    r: &impl Read,
    project_id: &str,
) -> anyhow::Result<(Option<Schedule>, Option<Schedule>)> {
    Ok((
        r.get(&schedule_id(ScheduleKind::Backup, project_id))?,
        r.get(&schedule_id(ScheduleKind::Update, project_id))?,
    ))
}

/// Sets (or, with an empty expression, removes) a project's schedule of one kind.
pub fn set(
    w: &mut Writer,
    actor: &Actor,
    subject: &Subject,
    project_id: &str,
    kind: ScheduleKind,
    cron: Option<&str>,
    now: DateTime<Utc>,
) -> AppResult<Option<Schedule>> {
    if !policy::can(subject, Action::OperateServers, Some(project_id)) {
        return Err(AppError::forbidden());
    }
    let id = schedule_id(kind, project_id);
    let field = kind.as_str();
    match cron.map(str::trim).filter(|c| !c.is_empty()) {
        None => {
            w.delete::<Schedule>(&id)?;
            audit::record(
                w,
                actor,
                "schedule.remove",
                &format!("project:{project_id}"),
                field,
            )?;
            Ok(None)
        }
        Some(text) => {
            let parsed = Cron::parse(text)
                .map_err(|e| AppError::invalid(field, format!("invalid cron expression: {e}")))?;
            if kind == ScheduleKind::Backup && crate::backups::recipe(w, project_id)?.is_none() {
                return Err(AppError::invalid(
                    field,
                    "set the project's backup recipe before scheduling backups",
                ));
            }
            let schedule = Schedule {
                id,
                project_id: project_id.to_string(),
                kind,
                cron: parsed.text().to_string(),
                updated_by: actor.username.clone(),
                updated_at: now,
            };
            w.put(&schedule)?;
            audit::record(
                w,
                actor,
                "schedule.set",
                &format!("project:{project_id}"),
                format!("{field}: {text}"),
            )?;
            Ok(Some(schedule))
        }
    }
}

/// The subject the scheduler acts as: an administrator named `scheduler`.
pub(crate) fn scheduler_subject() -> Subject {
    Subject {
        user_id: String::new(),
        username: "scheduler".into(),
        role: Role::Admin,
        is_manager: true,
        grants: Default::default(),
    }
}

/// One pass of the scheduler at `now`: starts every due schedule on each connected
/// agent of its project (`connected` says which are, reading through the pass's own
/// transaction). Answers the executions to dispatch.
pub fn tick(
    w: &mut Writer,
    now: DateTime<Utc>,
    connected: &dyn Fn(&Writer, &str) -> bool,
) -> anyhow::Result<Vec<Execution>> {
    let actor = Actor {
        username: "scheduler".into(),
        ip: None,
    };
    let subject = scheduler_subject();
    let mut started = Vec::new();
    for schedule in w.list::<Schedule>()? {
        let Ok(cron) = Cron::parse(&schedule.cron) else {
            continue;
        };
        for agent in crate::backups::agents_of_project(w, &schedule.project_id)? {
            if !connected(w, &agent.id) {
                continue;
            }
            let run_id = format!("{}:{}", schedule.id, agent.id);
            let last = w.get::<ScheduleRun>(&run_id)?.map(|r| r.last_run);
            if !due(&cron, last, schedule.updated_at, now) {
                continue;
            }
            let result = match schedule.kind {
                ScheduleKind::Backup => crate::backups::start_on_agent(w, &actor, &subject, &agent),
                ScheduleKind::Update => {
                    crate::updates::start_on_agent(w, &actor, &subject, &agent, false)
                }
            };
            // The run counts even when it could not start, so a broken recipe does
            // not retry every tick; the failure is in the log.
            let execution_id = match result {
                Ok(e) => {
                    let id = e.id.clone();
                    started.push(e);
                    Some(id)
                }
                Err(e) => {
                    tracing::warn!(schedule = %schedule.id, agent = %agent.id, "scheduled {} could not start: {e}", schedule.kind.as_str());
                    None
                }
            };
            w.put(&ScheduleRun {
                id: run_id,
                last_run: now,
                execution_id,
            })?;
        }
    }
    Ok(started)
}

/// The scheduler task: a [`tick`] every [`TICK`] until `stop` resolves.
pub async fn scheduler(app: App, stop: impl Future<Output = ()> + Send + 'static) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        // With several replicas, one schedules (see `cluster`).
        if !app.cluster.is_leader() {
            continue;
        }
        let fleet = app.fleet.clone();
        let connected = move |w: &Writer, agent_id: &str| fleet.live(w, agent_id).is_some();
        match crate::store::block_in_place(|| app.store.write(|w| tick(w, Utc::now(), &connected)))
        {
            Ok(started) => {
                for e in &started {
                    app.fleet.dispatch(e);
                }
            }
            Err(e) => tracing::error!("scheduler: {e:#}"),
        }
        // Drift checks of desired states, in a transaction of their own; their jobs
        // read together (one copy of a script's files and inventory).
        match crate::store::block_in_place(|| {
            app.store.write(|w| {
                let started = crate::drift::tick(w, Utc::now(), &connected)?;
                let specs = crate::scripts::job_specs_with_secrets(w, &started)?;
                Ok((started, specs))
            })
        }) {
            Ok((started, specs)) => app.fleet.dispatch_many(started, specs),
            Err(e) => tracing::error!("drift scheduler: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Next run times of common expressions.
    #[test]
    fn next_runs() {
        let check = |cron: &str, after: &str, next: &str| {
            assert_eq!(
                Cron::parse(cron).unwrap().next_after(at(after)),
                Some(at(next)),
                "{cron} after {after}"
            );
        };
        check("0 3 * * *", "2026-11-24T23:10:00Z", "2026-11-25T03:00:00Z");
        check("0 3 * * *", "2026-11-25T03:00:00Z", "2026-11-26T03:00:00Z");
        check(
            "*/15 * * * *",
            "2026-11-24T23:10:30Z",
            "2026-11-24T23:15:00Z",
        );
        check(
            "30 2 * * sun",
            "2026-11-24T00:00:00Z",
            "2026-11-29T02:30:00Z",
        );
        check("0 0 1 * *", "2026-12-15T00:00:00Z", "2027-01-01T00:00:00Z");
        check(
            "0 12 29 2 *",
            "2026-03-01T00:00:00Z",
            "2028-02-29T12:00:00Z",
        );
        check("@hourly", "2026-11-24T23:10:00Z", "2026-11-25T00:00:00Z");
    }

    /// Plain words for the schedule.
    #[test]
    fn descriptions() {
        assert_eq!(
            Cron::parse("0 3 * * *").unwrap().describe(),
            "every day, at 03:00 (UTC)"
        );
        assert_eq!(
            Cron::parse("30 2 * * 1-5").unwrap().describe(),
            "on Monday, Tuesday, Wednesday, Thursday, Friday, at 02:30 (UTC)"
        );
        assert_eq!(
            Cron::parse("15 * * * *").unwrap().describe(),
            "every day, every hour at minute 15 (UTC)"
        );
        assert!(Cron::parse("61 * * * *").is_err());
        assert!(Cron::parse("* * *").is_err());
    }

    /// The scheduler with an injected clock and a real store: an agent offline through
    /// three scheduled backups gets one backup when it is connected again, then the
    /// next at the next scheduled time.
    #[test]
    fn tick_runs_a_missed_backup_once_on_reconnect() {
        use crate::agents::Agent;
        use crate::backups::{Backup, BackupStatus, Recipe};
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb")).unwrap();
        let since = at("2026-11-20T12:00:00Z");
        store
            .write(|w| {
                w.put(&Recipe {
                    project_id: "p1".into(),
                    compose_project: "shop".into(),
                    service: "db".into(),
                    command: "pg_dump shop".into(),
                    dump_path: None,
                    keep: 3,
                    restore_command: None,
                    restore_path: None,
                    updated_by: "admin".into(),
                    updated_at: since,
                })?;
                w.put(&Schedule {
                    id: "backup:p1".into(),
                    project_id: "p1".into(),
                    kind: ScheduleKind::Backup,
                    cron: "0 3 * * *".into(),
                    updated_by: "admin".into(),
                    updated_at: since,
                })?;
                w.put(&Agent {
                    enrolled_at: since,
                    ..Agent::sample("a1", "db-01", "p1")
                })?;
                // Written by hand rather than enrolled: index it as enrollment would.
                crate::agents::backfill_indexes(w)
            })
            .unwrap();
        let run = |now: &str, online: bool| -> usize {
            let connected = move |_: &Writer, _: &str| online;
            store.write(|w| tick(w, at(now), &connected)).unwrap().len()
        };
        assert_eq!(run("2026-11-21T02:00:00Z", true), 0);
        for day in [
            "2026-11-21T03:00:05Z",
            "2026-11-22T03:00:05Z",
            "2026-11-23T03:00:05Z",
        ] {
            assert_eq!(run(day, false), 0, "offline at {day}");
        }
        assert_eq!(
            run("2026-11-24T10:00:00Z", true),
            1,
            "the missed backup on reconnect"
        );
        assert_eq!(run("2026-11-24T10:00:15Z", true), 0, "only once");
        assert_eq!(run("2026-11-25T02:59:45Z", true), 0);
        assert_eq!(
            run("2026-11-25T03:00:00Z", true),
            1,
            "the next scheduled one"
        );
        let backups: Vec<Backup> = store.read(|r| r.list()).unwrap();
        assert_eq!(backups.len(), 2);
        assert!(backups
            .iter()
            .all(|b| b.status == BackupStatus::Running && b.created_by == "scheduler"));

        // A weekly system update on the same project starts an update record.
        store
            .write(|w| {
                w.put(&Schedule {
                    id: "update:p1".into(),
                    project_id: "p1".into(),
                    kind: ScheduleKind::Update,
                    cron: "30 4 * * sun".into(),
                    updated_by: "admin".into(),
                    updated_at: since,
                })
            })
            .unwrap();
        assert_eq!(
            run("2026-11-29T04:30:00Z", true),
            2,
            "Sunday: the backup and the update"
        );
        let updates: Vec<crate::updates::Update> = store.read(|r| r.list()).unwrap();
        assert_eq!(updates.len(), 1);
        assert!(!updates[0].check);
    }

    /// With an injected clock: a daily 03:00 backup is due once after 03:00; an agent
    /// offline for three days runs it once when it comes back, then not until the next
    /// 03:00.
    #[test]
    fn missed_runs_run_once() {
        let cron = Cron::parse("0 3 * * *").unwrap();
        let since = at("2026-11-20T12:00:00Z");
        assert!(!due(&cron, None, since, at("2026-11-21T02:59:00Z")));
        assert!(due(&cron, None, since, at("2026-11-21T03:00:00Z")));
        let last = Some(at("2026-11-21T03:00:10Z"));
        assert!(!due(&cron, last, since, at("2026-11-21T23:00:00Z")));
        // Offline from the 22nd to the 24th: on reconnect, one run...
        let reconnect = at("2026-11-24T18:00:00Z");
        assert!(due(&cron, last, since, reconnect));
        // ...and after it ran (last_run = reconnect) not again that day.
        assert!(!due(
            &cron,
            Some(reconnect),
            since,
            at("2026-11-24T18:00:15Z")
        ));
        assert!(!due(
            &cron,
            Some(reconnect),
            since,
            at("2026-11-25T02:59:59Z")
        ));
        assert!(due(
            &cron,
            Some(reconnect),
            since,
            at("2026-11-25T03:00:00Z")
        ));
    }
}
