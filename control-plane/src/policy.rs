//! Who may do what: one pure function, [`can`], decides every permission. Handlers,
//! API endpoints, list filters and the navigation all ask it; nothing else compares
//! roles or grant levels.
//!
//! Roles: admin (everything), technical (servers and operations on the projects granted
//! to them, every project when `is_manager`), sales (server requests, subscriptions,
//! revenue; a sales manager sees every sales agent's figures). Per-project grants
//! (read < write < admin) open project-scoped actions to technical users. Sales agents
//! never touch servers: no fleet or operations action is theirs, whatever grants they
//! hold; they see every project's name so they can file requests for it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Technical,
    Sales,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Technical, Role::Sales];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Technical => "technical",
            Role::Sales => "sales",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// How the role is named on pages.
    pub fn label(self) -> &'static str {
        match self {
            Role::Admin => "Administrator",
            Role::Technical => "Technical agent",
            Role::Sales => "Sales agent",
        }
    }
}

/// A per-project grant level; the order is meaningful (read < write < admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Read,
    Write,
    Admin,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Read, Level::Write, Level::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == text)
    }
}

/// Everything a person can ask to do. Project-scoped actions are judged against the
/// project passed to [`can`]; global ones ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    // Global administration.
    /// Create, edit and deactivate users; create API tokens for others.
    ManageUsers,
    /// Read the audit log.
    ViewAudit,
    /// Create projects.
    CreateProject,
    /// Approve or reject server requests.
    ApproveRequest,
    /// See, rotate and retire the fleet's certificate authorities.
    ManageFleetCa,
    // Business.
    /// Submit a server request.
    CreateRequest,
    /// See every request, not only one's own.
    ViewAllRequests,
    /// Manage client subscriptions.
    ManageSubscriptions,
    /// See revenue figures.
    ViewRevenue,
    /// See every sales agent's revenue, not only one's own.
    ViewAllRevenue,
    /// See the fleet pages (servers, agents, executions) at all.
    UseFleet,
    // Project-scoped.
    /// See the project exists, its name and description.
    ViewProject,
    /// See the project's servers, agents, executions, backups.
    ViewServers,
    /// Run scripts and playbooks, power actions, backups, updates.
    OperateServers,
    /// Create and edit the project's deployment scripts.
    ManageScripts,
    /// Open an interactive terminal on the project's servers (write level, like
    /// operating them, but a separate action: a project's admins can also turn
    /// terminals off for the project, `Project::terminal_enabled`).
    Terminal,
    /// Edit the project (description, budget, Hetzner token, recipes).
    EditProject,
    /// Grant and revoke access to the project.
    ManageAccess,
    /// Create enrollment tokens and revoke agents.
    ManageAgents,
}

impl Action {
    /// Every action, for table tests and documentation.
    pub const ALL: [Action; 19] = [
        Action::ManageUsers,
        Action::ViewAudit,
        Action::CreateProject,
        Action::ApproveRequest,
        Action::ManageFleetCa,
        Action::CreateRequest,
        Action::ViewAllRequests,
        Action::ManageSubscriptions,
        Action::ViewRevenue,
        Action::ViewAllRevenue,
        Action::UseFleet,
        Action::ViewProject,
        Action::ViewServers,
        Action::OperateServers,
        Action::ManageScripts,
        Action::Terminal,
        Action::EditProject,
        Action::ManageAccess,
        Action::ManageAgents,
    ];

    /// The grant level a project-scoped action needs, or `None` for global actions.
    pub fn required_level(self) -> Option<Level> {
        match self {
            Action::ViewProject | Action::ViewServers => Some(Level::Read),
            Action::OperateServers | Action::ManageScripts | Action::Terminal => Some(Level::Write),
            Action::EditProject | Action::ManageAccess | Action::ManageAgents => Some(Level::Admin),
            _ => None,
        }
    }
}

/// The person asking, with their grants, as the policy needs them.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub is_manager: bool,
    /// Project id -> granted level.
    pub grants: HashMap<String, Level>,
}

impl Subject {
    /// The level this subject holds on a project, counting role-wide access.
    pub fn level_on(&self, project_id: &str) -> Option<Level> {
        match self.role {
            Role::Admin => Some(Level::Admin),
            Role::Technical if self.is_manager => Some(Level::Admin),
            _ => self.grants.get(project_id).copied(),
        }
    }
}

/// Decides whether `subject` may do `action` (on `project_id` for project-scoped
/// actions; `None` there asks "on at least one project").
pub fn can(subject: &Subject, action: Action, project_id: Option<&str>) -> bool {
    match subject.role {
        Role::Admin => true,
        Role::Technical => technical_can(subject, action, project_id),
        Role::Sales => sales_can(subject, action),
    }
}

fn technical_can(subject: &Subject, action: Action, project_id: Option<&str>) -> bool {
    if let Some(needed) = action.required_level() {
        return match project_id {
            Some(project) => subject
                .level_on(project)
                .is_some_and(|level| level >= needed),
            None => subject.is_manager || subject.grants.values().any(|level| *level >= needed),
        };
    }
    match action {
        Action::UseFleet => true,
        Action::ManageUsers
        | Action::ViewAudit
        | Action::CreateProject
        | Action::ApproveRequest
        | Action::ManageFleetCa
        | Action::CreateRequest
        | Action::ViewAllRequests
        | Action::ManageSubscriptions
        | Action::ViewRevenue
        | Action::ViewAllRevenue => false,
        // Project-scoped actions were answered above.
        _ => false,
    }
}

/// Sales agents request servers and manage subscriptions; project grants give them
/// nothing, so no grant can open the fleet or operations to them.
fn sales_can(subject: &Subject, action: Action) -> bool {
    match action {
        // Every project's name, so they can file requests for it.
        Action::ViewProject => true,
        Action::CreateRequest | Action::ManageSubscriptions | Action::ViewRevenue => true,
        Action::ViewAllRequests | Action::ViewAllRevenue => subject.is_manager,
        Action::UseFleet
        | Action::ViewServers
        | Action::OperateServers
        | Action::ManageScripts
        | Action::Terminal
        | Action::EditProject
        | Action::ManageAccess
        | Action::ManageAgents
        | Action::ManageUsers
        | Action::ViewAudit
        | Action::CreateProject
        | Action::ApproveRequest
        | Action::ManageFleetCa => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(role: Role, is_manager: bool, grant: Option<Level>) -> Subject {
        let mut grants = HashMap::new();
        if let Some(level) = grant {
            grants.insert("p1".to_string(), level);
        }
        Subject {
            user_id: "u".into(),
            username: "u".into(),
            role,
            is_manager,
            grants,
        }
    }

    /// The expected answer for every role x manager flag x grant x action, on the
    /// granted project "p1" and on an ungranted project "p2", written out as rules a
    /// person can read, independently of `can`'s own structure.
    fn expected(
        role: Role,
        manager: bool,
        grant: Option<Level>,
        action: Action,
        on_granted: bool,
    ) -> bool {
        use Action::*;
        let level = if on_granted { grant } else { None };
        let at_least = |needed: Level| level.is_some_and(|l| l >= needed);
        match role {
            Role::Admin => true,
            Role::Technical => match action {
                ManageUsers | ViewAudit | CreateProject | ApproveRequest | ManageFleetCa => false,
                CreateRequest | ViewAllRequests | ManageSubscriptions | ViewRevenue
                | ViewAllRevenue => false,
                UseFleet => true,
                ViewProject | ViewServers => manager || at_least(Level::Read),
                OperateServers | ManageScripts | Terminal => manager || at_least(Level::Write),
                EditProject | ManageAccess | ManageAgents => manager || at_least(Level::Admin),
            },
            // Sales agents never touch servers: whatever grant they hold, every fleet,
            // operations and project-management action is refused.
            Role::Sales => match action {
                ManageUsers | ViewAudit | CreateProject | ApproveRequest | ManageFleetCa => false,
                CreateRequest | ManageSubscriptions | ViewRevenue => true,
                ViewAllRequests | ViewAllRevenue => manager,
                UseFleet => false,
                ViewProject => true,
                ViewServers | OperateServers | ManageScripts | Terminal => false,
                EditProject | ManageAccess | ManageAgents => false,
            },
        }
    }

    /// Every role x manager flag x grant level x action gives the documented answer.
    #[test]
    fn permission_table() {
        let grants = [
            None,
            Some(Level::Read),
            Some(Level::Write),
            Some(Level::Admin),
        ];
        let mut checked = 0;
        for role in Role::ALL {
            for manager in [false, true] {
                for grant in grants {
                    let s = subject(role, manager, grant);
                    for action in Action::ALL {
                        for (project, on_granted) in [("p1", true), ("p2", false)] {
                            let want = expected(role, manager, grant, action, on_granted);
                            let got = can(&s, action, Some(project));
                            assert_eq!(
                                got, want,
                                "{role:?} manager={manager} grant={grant:?} {action:?} on {project}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 3 * 2 * 4 * 19 * 2);
    }

    /// A sales agent with an admin grant on a project still gets no fleet or operations
    /// action on it, nor on "at least one project" (regression: a grant opened agents,
    /// recipes, schedules and costs to sales).
    #[test]
    fn sales_grants_open_no_fleet_action() {
        for manager in [false, true] {
            let s = subject(Role::Sales, manager, Some(Level::Admin));
            for action in [
                Action::UseFleet,
                Action::ViewServers,
                Action::OperateServers,
                Action::ManageScripts,
                Action::Terminal,
                Action::EditProject,
                Action::ManageAccess,
                Action::ManageAgents,
            ] {
                assert!(!can(&s, action, Some("p1")), "{action:?} on p1");
                assert!(!can(&s, action, None), "{action:?} anywhere");
            }
            assert!(can(&s, Action::ViewProject, Some("p2")));
        }
    }

    /// sohila (technical, write on Nova HR only) operates Nova HR and nothing else.
    #[test]
    fn sohila_sees_only_nova_hr() {
        let mut s = subject(Role::Technical, false, None);
        s.grants.insert("nova".into(), Level::Write);
        assert!(can(&s, Action::OperateServers, Some("nova")));
        assert!(can(&s, Action::Terminal, Some("nova")));
        assert!(!can(&s, Action::Terminal, Some("frappe")));
        assert!(!can(&s, Action::ViewServers, Some("frappe")));
        assert!(!can(&s, Action::ManageAccess, Some("nova")));
    }
}
