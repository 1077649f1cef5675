//! A run's structured report: per task, its name, action, status and the diff it
//! printed (`--diff`), so a caller (the agent's drift checks) reads what would change
//! without parsing the printed lines.
//!
//! The report is bounded ([`MAX_DIFF_BYTES`] per task, [`MAX_REPORT_BYTES`] in all):
//! it travels as one output line (`--result-line`), which must fit the job's output
//! cap. Diffs are masked as the printed lines are (`RunOptions::secrets`), and a
//! `no_log` task carries none.
//!
//! What does not live here: deciding a task's status (the engine) or printing the
//! diff (`output`).

use serde::{Deserialize, Serialize};

/// The prefix of the report line `--result-line` prints last. The same text as
/// `dynserv_shared::proto::RESULT_PREFIX` (this crate does not depend on the wire
/// crate; the agent's tests check they agree).
pub const RESULT_LINE_PREFIX: &str = "DYNSERV-RESULT ";

/// Bytes of one task's diff a report keeps; past it the diff is cut at a line and
/// [`TRUNCATED_MARKER`] ends it (a huge file's diff).
pub const MAX_DIFF_BYTES: usize = 64 * 1024;

/// Bytes of diff text one report keeps in all; past it later tasks' diffs are replaced
/// by [`TRUNCATED_MARKER`] (their status stays).
pub const MAX_REPORT_BYTES: usize = 512 * 1024;

/// Tasks one report lists; past it the report says `truncated` and lists no more.
pub const MAX_REPORT_TASKS: usize = 2000;

/// The line that ends a diff the report cut.
pub const TRUNCATED_MARKER: &str = "[… diff truncated by dynserv]";

/// How a task ended, as the result line printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Ok,
    Changed,
    Failed,
    Skipped,
}

/// One task of a run (handlers included; includes and `meta` are not tasks here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The name in `TASK [...]`.
    pub name: String,
    /// The module or action (`copy`, `ansible.builtin.template`, …).
    pub action: String,
    pub status: TaskStatus,
    /// The diff as printed with `--diff` (masked; none for `no_log` tasks or when
    /// nothing differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// A run's report as the result line carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Whether the run ended with a failed host.
    pub failed: bool,
    /// Tasks that changed (or, in check mode, would change).
    pub changed: u32,
    pub tasks: Vec<TaskReport>,
    /// Tasks were left out ([`MAX_REPORT_TASKS`]) or diffs cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Cuts `diff` to at most `max` bytes at a line boundary, ending it with the marker.
fn cut_diff(diff: &str, max: usize) -> String {
    if diff.len() <= max {
        return diff.to_string();
    }
    let mut end = max;
    while !diff.is_char_boundary(end) {
        end -= 1;
    }
    let end = diff[..end].rfind('\n').map_or(0, |i| i + 1);
    format!("{}{TRUNCATED_MARKER}\n", &diff[..end])
}

/// The bounded report of a run's tasks.
pub fn bounded(failed: bool, tasks: &[TaskReport]) -> Report {
    let mut truncated = tasks.len() > MAX_REPORT_TASKS;
    let mut budget = MAX_REPORT_BYTES;
    let mut kept = Vec::with_capacity(tasks.len().min(MAX_REPORT_TASKS));
    for task in tasks.iter().take(MAX_REPORT_TASKS) {
        let mut task = task.clone();
        if let Some(diff) = &task.diff {
            let allowed = MAX_DIFF_BYTES.min(budget);
            let cut = if allowed == 0 {
                format!("{TRUNCATED_MARKER}\n")
            } else {
                cut_diff(diff, allowed)
            };
            truncated |= cut != *diff;
            budget = budget.saturating_sub(cut.len());
            task.diff = Some(cut);
        }
        kept.push(task);
    }
    Report {
        failed,
        changed: tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Changed)
            .count() as u32,
        tasks: kept,
        truncated,
    }
}

/// The report line: [`RESULT_LINE_PREFIX`] and the bounded report as JSON.
pub fn result_line(failed: bool, tasks: &[TaskReport]) -> String {
    let report = bounded(failed, tasks);
    format!(
        "{RESULT_LINE_PREFIX}{}",
        serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, status: TaskStatus, diff: Option<String>) -> TaskReport {
        TaskReport {
            name: name.into(),
            action: "copy".into(),
            status,
            diff,
        }
    }

    /// A huge file's diff is cut at a line with the marker, and the whole report
    /// stays under its bound however many large diffs it holds.
    #[test]
    fn huge_diffs_are_cut_and_the_report_is_bounded() {
        let huge: String = (0..20_000).map(|i| format!("+line {i}\n")).collect();
        let tasks: Vec<TaskReport> = (0..40)
            .map(|i| task(&format!("t{i}"), TaskStatus::Changed, Some(huge.clone())))
            .collect();
        let report = bounded(false, &tasks);
        assert!(report.truncated);
        assert_eq!(report.changed, 40);
        assert_eq!(report.tasks.len(), 40);
        let first = report.tasks[0].diff.as_deref().unwrap();
        assert!(first.len() <= MAX_DIFF_BYTES + TRUNCATED_MARKER.len() + 1);
        assert!(
            first.ends_with(&format!("{TRUNCATED_MARKER}\n")),
            "{first:.100}"
        );
        assert!(first.lines().rev().nth(1).unwrap().starts_with("+line"));
        let line = result_line(false, &tasks);
        assert!(line.len() < MAX_REPORT_BYTES + 64 * 1024, "{}", line.len());
        assert!(line.starts_with(RESULT_LINE_PREFIX));
        assert!(!line.contains('\n'));
        // A small report is kept whole.
        let small = bounded(
            true,
            &[
                task("a", TaskStatus::Ok, None),
                task("b", TaskStatus::Changed, Some("-x\n+y\n".into())),
            ],
        );
        assert!(!small.truncated);
        assert_eq!(small.tasks[1].diff.as_deref(), Some("-x\n+y\n"));
    }
}
