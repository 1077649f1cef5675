//! `group_vars/` and `host_vars/` directories, as ansible-core's `host_group_vars`
//! plugin reads them: for a group or host NAME, the first of `NAME`, `NAME.yml`,
//! `NAME.yaml` and `NAME.json` that exists; a directory `NAME/` contributes its files
//! (without extension or with one of those, hidden files and `~` backups left out)
//! sorted by name, recursing into subdirectories. A later file's variables win.

use super::{merge_vars, read_bounded, InventoryError, Vars};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where `group_vars/` and `host_vars/` are looked for, in two stages: beside the
/// inventory sources (lower precedence), then beside the playbook.
#[derive(Debug, Clone, Default)]
pub struct VarsDirs {
    /// The inventory's directories (of a file, its parent; a directory itself).
    pub inventory: Vec<PathBuf>,
    /// The playbook's directory.
    pub playbook: Vec<PathBuf>,
}

impl VarsDirs {
    /// The directories for an inventory `source` as `-i` takes it (none for a host
    /// list) and the playbook directory `playbook_dir`.
    pub fn for_run(source: Option<&str>, playbook_dir: &Path) -> VarsDirs {
        let inventory = source
            .map(Path::new)
            .filter(|p| p.exists())
            .map(|p| {
                let dir = if p.is_dir() {
                    p.to_path_buf()
                } else {
                    p.parent().map(Path::to_path_buf).unwrap_or_default()
                };
                let dir = if dir.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    dir
                };
                std::fs::canonicalize(&dir).unwrap_or(dir)
            })
            .into_iter()
            .collect();
        VarsDirs {
            inventory,
            playbook: vec![playbook_dir.to_path_buf()],
        }
    }
}

/// Reads variables files once each for all the hosts resolved together.
#[derive(Default)]
pub(super) struct Reader {
    cache: HashMap<PathBuf, Vars>,
}

impl Reader {
    /// The `group_vars/` variables of `groups`, in that order, from each of `dirs` in
    /// turn (ansible-core walks sources, then entities).
    pub(super) fn group_vars(
        &mut self,
        dirs: &[PathBuf],
        groups: &[&str],
    ) -> Result<Vars, InventoryError> {
        let mut vars = Vars::new();
        for dir in dirs {
            for group in groups {
                merge_vars(
                    &mut vars,
                    &self.entity_vars(&dir.join("group_vars"), group)?,
                );
            }
        }
        Ok(vars)
    }

    /// The `host_vars/` variables of `host` from each of `dirs`.
    pub(super) fn host_vars(
        &mut self,
        dirs: &[PathBuf],
        host: &str,
    ) -> Result<Vars, InventoryError> {
        let mut vars = Vars::new();
        for dir in dirs {
            merge_vars(&mut vars, &self.entity_vars(&dir.join("host_vars"), host)?);
        }
        Ok(vars)
    }

    fn entity_vars(&mut self, dir: &Path, name: &str) -> Result<Vars, InventoryError> {
        // A name with a path separator would leave the directory.
        if !dir.is_dir() || name.contains('/') || name.starts_with('.') {
            return Ok(Vars::new());
        }
        let mut vars = Vars::new();
        for file in entity_files(dir, name)? {
            merge_vars(&mut vars, &self.file_vars(&file)?);
        }
        Ok(vars)
    }

    fn file_vars(&mut self, file: &Path) -> Result<Vars, InventoryError> {
        if let Some(hit) = self.cache.get(file) {
            return Ok(hit.clone());
        }
        let vars = read_vars_file(file)?;
        self.cache.insert(file.to_path_buf(), vars.clone());
        Ok(vars)
    }
}

const EXTENSIONS: [&str; 3] = [".yml", ".yaml", ".json"];

/// The files that hold `name`'s variables in `dir`, in the order they apply.
fn entity_files(dir: &Path, name: &str) -> Result<Vec<PathBuf>, InventoryError> {
    for extension in [""].iter().chain(EXTENSIONS.iter()) {
        let path = dir.join(format!("{name}{extension}"));
        if path.is_dir() {
            return directory_files(&path);
        }
        if path.exists() {
            return Ok(vec![path]);
        }
    }
    Ok(Vec::new())
}

/// A vars directory's files, sorted by name, recursing into subdirectories.
fn directory_files(dir: &Path) -> Result<Vec<PathBuf>, InventoryError> {
    let entries = std::fs::read_dir(dir).map_err(|source| InventoryError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.ends_with('~'))
        .collect();
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let extension = Path::new(&name)
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()));
        if path.is_dir() && extension.is_none() {
            files.extend(directory_files(&path)?);
        } else if path.is_file() && extension.as_deref().is_none_or(|e| EXTENSIONS.contains(&e)) {
            files.push(path);
        }
    }
    Ok(files)
}

/// One variables file: a YAML (or JSON) mapping; an empty file holds none.
fn read_vars_file(file: &Path) -> Result<Vars, InventoryError> {
    let shown = file.display().to_string();
    let text = read_bounded(file)?;
    let node = crate::yaml::parse_one(&text).map_err(|e| InventoryError::Line {
        path: shown.clone(),
        line: e.pos.line,
        message: e.message.clone(),
    })?;
    match &node.kind {
        crate::yaml::NodeKind::Null => Ok(Vars::new()),
        crate::yaml::NodeKind::Map(entries) => Ok(entries
            .iter()
            .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_value()))
            .collect()),
        _ => Err(InventoryError::Invalid {
            path: shown,
            message: format!("variables must be a dictionary, got a {}", node.type_name()),
        }),
    }
}
