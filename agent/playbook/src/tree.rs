//! Checks the files that come with a playbook (a script's tree: roles/, tasks/,
//! templates/, group_vars/, …) as the control plane saves them: each file is judged
//! from its text alone, by what its place in the tree says it is, without touching the
//! filesystem.
//!
//! * Task and handler files (`roles/R/tasks/`, `roles/R/handlers/`, `tasks/`,
//!   `handlers/`): a task list, parsed as the runtime parses it (imports left for run
//!   time), and no module the runtime lacks unless the ansible-core fallback is allowed.
//! * Variable files (`roles/R/vars/`, `roles/R/defaults/`, `group_vars/`,
//!   `host_vars/`, `vars/`) and `roles/R/meta/main.yml`: a YAML mapping (or empty).
//! * Any other `.yml`/`.yaml`: well-formed YAML.
//! * `.j2` files: a Jinja template that compiles.
//! * Anything else (`files/`, scripts, certificates): not judged.

use std::cell::Cell;
use std::path::Path;

use crate::model::{first_unknown_module, parse_task_list, Dirs, PlaybookError};
use crate::template::Templar;
use crate::yaml::{self, NodeKind, Pos};

/// Why one file of a tree is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeError {
    /// The file's path in the tree.
    pub path: String,
    /// What is wrong, for people.
    pub message: String,
    /// Where in the file, when known (1-based; 0 when not).
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for TreeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}, line {} column {}: {}",
                self.path, self.line, self.column, self.message
            )
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// What a file is, from its place in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Tasks { handlers: bool },
    Vars,
    Yaml,
    Template,
    Other,
}

fn role_of(path: &str) -> Role {
    let parts: Vec<&str> = path.split('/').collect();
    let yaml = path.ends_with(".yml") || path.ends_with(".yaml");
    if path.ends_with(".j2") {
        return Role::Template;
    }
    if !yaml {
        // Variable files may also have no extension (group_vars/web).
        return match parts.as_slice() {
            ["group_vars" | "host_vars", _] | ["group_vars" | "host_vars", _, _] => Role::Vars,
            _ => Role::Other,
        };
    }
    match parts.as_slice() {
        ["roles", _, "tasks", ..] | ["tasks", ..] => Role::Tasks { handlers: false },
        ["roles", _, "handlers", ..] | ["handlers", ..] => Role::Tasks { handlers: true },
        ["roles", _, "vars" | "defaults", ..]
        | ["group_vars" | "host_vars" | "vars", ..]
        | ["roles", _, "meta", "main.yml" | "main.yaml"] => Role::Vars,
        _ => Role::Yaml,
    }
}

fn error(path: &str, message: impl Into<String>, pos: Option<Pos>) -> TreeError {
    let (line, column) = pos.map(|p| (p.line, p.column)).unwrap_or((0, 0));
    TreeError {
        path: path.to_string(),
        message: message.into(),
        line,
        column,
    }
}

fn playbook_error(path: &str, e: PlaybookError) -> TreeError {
    let pos = e.pos();
    let text = e.to_string();
    let message = match pos {
        Some(p) => text
            .strip_suffix(&format!(" (line {}, column {})", p.line, p.column))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    };
    error(path, message, pos)
}

/// Checks every file of a tree (see the module's documentation); the first error, in
/// the order given. `allow_fallback`: tasks whose module the runtime lacks are
/// accepted (they run through ansible-core).
pub fn check_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    allow_fallback: bool,
) -> Result<(), TreeError> {
    let mut templar = None;
    for (path, bytes) in files {
        let role = role_of(path);
        if role == Role::Other {
            continue;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(error(path, "this file must be UTF-8 text", None));
        };
        match role {
            Role::Template => {
                let templar = templar.get_or_insert_with(|| Templar::new(".".into()));
                if let Err(e) = templar.environment().template_from_str(text) {
                    let line = e.line().unwrap_or(0);
                    return Err(TreeError {
                        path: path.to_string(),
                        message: format!("template error: {}", e.detail().unwrap_or("")),
                        line,
                        column: 0,
                    });
                }
            }
            Role::Yaml => {
                yaml::parse_documents(text)
                    .map_err(|e| playbook_error(path, PlaybookError::Yaml(e)))?;
            }
            Role::Vars => {
                let node = yaml::parse_one(text)
                    .map_err(|e| playbook_error(path, PlaybookError::Yaml(e)))?;
                if !matches!(node.kind, NodeKind::Map(_) | NodeKind::Null) {
                    return Err(error(
                        path,
                        format!(
                            "variables must be a mapping (name: value), not a {}",
                            node.type_name()
                        ),
                        Some(node.pos),
                    ));
                }
            }
            Role::Tasks { handlers } => {
                let node = yaml::parse_one(text)
                    .map_err(|e| playbook_error(path, PlaybookError::Yaml(e)))?;
                let deferred = Cell::new(false);
                let file_dir = Path::new(path).parent().unwrap_or(Path::new("."));
                let dirs = Dirs {
                    file_dir,
                    playbook_dir: Path::new("."),
                    deferred: Some(&deferred),
                };
                let tasks =
                    parse_task_list(&node, &dirs, handlers).map_err(|e| playbook_error(path, e))?;
                if !allow_fallback {
                    if let Some((module, pos)) = first_unknown_module(&tasks) {
                        return Err(playbook_error(
                            path,
                            PlaybookError::UnknownModule { module, pos },
                        ));
                    }
                }
            }
            Role::Other => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(files: &[(&str, &str)]) -> Result<(), TreeError> {
        check_files(files.iter().map(|(p, t)| (*p, t.as_bytes())), false)
    }

    #[test]
    fn files_are_judged_by_their_place_in_the_tree() {
        assert_eq!(
            check(&[
                ("roles/web/tasks/main.yml", "- name: hi\n  debug: msg=hi\n"),
                (
                    "roles/web/handlers/main.yml",
                    "- name: restart\n  debug: msg=r\n"
                ),
                ("roles/web/defaults/main.yml", "port: 80\n"),
                ("roles/web/meta/main.yml", "dependencies: []\n"),
                ("roles/web/templates/site.conf.j2", "listen {{ port }};\n"),
                ("group_vars/all.yml", "a: 1\n"),
                ("group_vars/web", "b: 2\n"),
                ("files/blob.bin", "{{ not a template"),
                ("other.yml", "- just: yaml\n"),
            ]),
            Ok(())
        );
    }

    #[test]
    fn a_broken_file_is_named_with_its_line() {
        let e = check(&[(
            "roles/web/tasks/main.yml",
            "- name: x\n  debug: msg=hi\n   bad: [\n",
        )])
        .unwrap_err();
        assert_eq!(e.path, "roles/web/tasks/main.yml");
        assert!(e.line >= 2, "{e:?}");
        let e = check(&[(
            "roles/web/tasks/main.yml",
            "- name: x\n  no_such_module_here: {}\n",
        )])
        .unwrap_err();
        assert!(e.message.contains("no_such_module_here"), "{e}");
        assert_eq!(e.line, 1);
        // The same task is fine when the fallback may run it.
        assert_eq!(
            check_files(
                [(
                    "roles/web/tasks/main.yml",
                    &b"- name: x\n  no_such_module_here: {}\n"[..]
                )],
                true
            ),
            Ok(())
        );
        let e = check(&[("group_vars/all.yml", "- a\n- b\n")]).unwrap_err();
        assert!(e.message.contains("mapping"), "{e}");
        let e = check(&[("templates/x.j2", "line\n{% if %}\n")]).unwrap_err();
        assert_eq!((e.path.as_str(), e.line), ("templates/x.j2", 2), "{e}");
        let e = check(&[("tasks/setup.yml", "key: not a list\n")]).unwrap_err();
        assert!(e.message.contains("list of tasks"), "{e}");
        let e = check_files([("vars/x.yml", &[0xff, 0xfe][..])], false).unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e}");
    }
}
