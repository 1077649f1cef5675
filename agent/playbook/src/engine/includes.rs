//! Includes: `include_tasks`/`import_tasks` at run time, `include_role`, and where a
//! relative file name is looked up (the role's directories, then the playbook's).

use super::*;

impl Runner<'_> {
    /// The directories a task's relative files are searched in: its role's, then the
    /// play's.
    pub(super) fn role_dirs(&self, scope: &Inherited) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(role) = &scope.role {
            dirs.push(role.path.clone());
        }
        dirs.push(self.base_dir.clone());
        dirs
    }

    /// Finds a file for `src`: in the task's role (`<role>/<subdir>/<name>`,
    /// `<role>/<name>`, `<role>/tasks/<name>`), then `<base>/<subdir>/<name>`, then
    /// `<base>/<name>`, as Ansible's search path for a role's task.
    pub(super) fn resolve_local(&self, scope: &Inherited, name: &str, subdir: &str) -> PathBuf {
        let path = Path::new(name);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        if let Some(role) = &scope.role {
            for candidate in [
                role.path.join(subdir).join(path),
                role.path.join(path),
                role.path.join("tasks").join(path),
            ] {
                if candidate.exists() {
                    return candidate;
                }
            }
        }
        let candidate = self.base_dir.join(subdir).join(path);
        if candidate.exists() {
            return candidate;
        }
        self.base_dir.join(path)
    }

    /// `include_tasks`: evaluated at run time, once per loop item; the included tasks run
    /// after all items were processed, as in Ansible.
    pub(super) fn run_include(
        &mut self,
        task: &Task,
        scope: &Inherited,
        module: &str,
        args: &Value,
        host: &str,
    ) {
        let ctx0 = self.context(scope, &[]);
        let loop_var = task
            .loop_control
            .as_ref()
            .and_then(|lc| lc.get_attr("loop_var").ok())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| "item".into());
        let items: Vec<Option<Value>> = match &task.loop_source {
            None => vec![None],
            Some((kind, source)) => match self.loop_items(scope, kind, source, &ctx0, module) {
                Ok(items) => items.into_iter().map(Some).collect(),
                Err(message) => {
                    self.finish_failed_outright(task, host, &message);
                    return;
                }
            },
        };
        // `apply`: keywords for every included task, taken before the arguments are
        // templated (each included task templates them itself, as ansible-core does).
        let (args, apply) = match split_apply(args, module) {
            Ok(split) => split,
            Err(message) => {
                self.finish_failed_outright(task, host, &message);
                return;
            }
        };
        let args = &args;
        // The include's own tags select the include, not the included tasks.
        let parent_tags = std::mem::take(&mut self.include_parent_tags);
        // A loop over nothing skips the include, as ansible-core prints and counts it.
        if task.loop_source.is_some() && items.is_empty() {
            self.emit(&format!("skipping: [{host}]"));
            self.stats.skipped += 1;
            return;
        }
        let mut pending = Vec::new();
        let mut skipped = 0;
        let item_count = items.len();
        for item in items {
            let loop_vars: Vec<(String, Value)> =
                item.iter().map(|i| (loop_var.clone(), i.clone())).collect();
            let ctx = self.context(scope, &loop_vars);
            let mut skip = false;
            for condition in &scope.when {
                match self.templar.condition(condition, &ctx) {
                    Ok(true) => {}
                    Ok(false) => skip = true,
                    Err(e) => {
                        self.finish_failed_outright(
                            task,
                            host,
                            &format!("The conditional check failed. The error was: {e}"),
                        );
                        return;
                    }
                }
            }
            if skip {
                match &item {
                    Some(i) => {
                        self.emit(&format!("skipping: [{host}] => (item={}) ", item_label(i)))
                    }
                    None => self.emit(&format!("skipping: [{host}]")),
                }
                skipped += 1;
                continue;
            }
            let templated = match template_args(&self.templar, args, &ctx, &[]) {
                Ok(v) => v,
                Err(e) => {
                    self.finish_failed_outright(task, host, &e.to_string());
                    return;
                }
            };
            let loaded = if module == "include_role" {
                self.load_included_role(task, &templated)
            } else {
                self.load_included_tasks(scope, &templated)
            };
            let (tasks, shown) = match loaded {
                Ok(loaded) => loaded,
                Err(message) => {
                    self.finish_failed_outright(task, host, &message);
                    return;
                }
            };
            match &item {
                Some(i) => self.emit(&format!(
                    "included: {shown} for {host} => (item={})",
                    item_label(i)
                )),
                None => self.emit(&format!("included: {shown} for {host}")),
            }
            // Ansible counts every processed include as ok.
            self.stats.ok += 1;
            pending.push((tasks, loop_vars));
        }
        // A skipped include is a skipped task in the recap (a loop's once, when every
        // item was skipped), as ansible-core counts it.
        if skipped > 0 && skipped == item_count {
            self.stats.skipped += 1;
        }
        for (tasks, loop_vars) in pending {
            let mut inner = scope.clone();
            inner.when.clear();
            inner.tags = parent_tags.clone();
            inner.vars.extend(loop_vars);
            let tasks = match &apply {
                Some(keywords) => vec![crate::model::wrapper_task(
                    TaskBody::Block {
                        block: tasks,
                        rescue: Vec::new(),
                        always: Vec::new(),
                    },
                    keywords.clone(),
                    task.pos,
                )],
                None => tasks,
            };
            self.run_list(&tasks, &inner);
            if self.host_failed || self.end_play {
                return;
            }
        }
    }

    /// Loads an include_tasks file: its tasks and the name `included:` shows.
    pub(super) fn load_included_tasks(
        &mut self,
        scope: &Inherited,
        templated: &Value,
    ) -> Result<(Vec<Task>, String), String> {
        let file = arg_str(templated, "_raw_params")
            .or_else(|| arg_str(templated, "file"))
            .ok_or_else(|| "include_tasks needs a file name".to_string())?;
        let path = self.resolve_local(scope, &file, "tasks");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("Could not find or access '{file}': {e}"))?;
        let node = crate::yaml::parse_one(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let crate::yaml::NodeKind::Seq(items) = &node.kind else {
            return Err(format!("{} must contain a list of tasks", path.display()));
        };
        let file_dir = path.parent().unwrap_or(&self.base_dir).to_path_buf();
        let dirs = crate::model::Dirs {
            file_dir: &file_dir,
            playbook_dir: &self.base_dir,
            deferred: None,
        };
        let mut tasks = items
            .iter()
            .map(|i| crate::model::parse_task(i, &dirs, false))
            .collect::<Result<Vec<Task>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        crate::model::set_file(&mut tasks, &Arc::new(path.clone()));
        self.add_role_handlers(&tasks);
        Ok((tasks, path.display().to_string()))
    }

    /// Loads an include_role's role: its task, and the role's name for `included:`.
    /// Its handlers join the play's; with `public: true` its variables become the
    /// play's.
    pub(super) fn load_included_role(
        &mut self,
        task: &Task,
        templated: &Value,
    ) -> Result<(Vec<Task>, String), String> {
        let TaskBody::Action { written, .. } = &task.body else {
            return Err("include_role must be a task".into());
        };
        let mut request = crate::roles::request_from_task(written, templated, &[], task.pos)
            .map_err(|e| e.to_string())?;
        // Dynamic includes are private unless `public: true` (ansible-core's default).
        request.public = Some(request.public.unwrap_or(false));
        request.vars = task.keywords.vars.clone();
        let loaded =
            crate::roles::load_role(&request, &self.base_dir).map_err(|e| e.to_string())?;
        let tasks = vec![loaded.task];
        self.add_role_handlers(&tasks);
        if let Some(TaskBody::Role { role, .. }) = tasks.first().map(|t| &t.body) {
            if role.public {
                self.play_roles.push(Arc::clone(role));
            }
        }
        Ok((tasks, request.name))
    }

    /// Adds the handlers of roles found in `tasks` to the play's.
    pub(super) fn add_role_handlers(&mut self, tasks: &[Task]) {
        for handler in crate::roles::role_handlers(tasks) {
            self.handlers.push(handler);
            self.notified.push(false);
        }
    }
}

/// Takes `apply` out of an include's arguments: the arguments without it, and its
/// keywords (a mapping of task keywords, as for a block).
fn split_apply(args: &Value, module: &str) -> Result<(Value, Option<Inherited>), String> {
    let apply = args
        .get_attr("apply")
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_none());
    let Some(apply) = apply else {
        return Ok((args.clone(), None));
    };
    if apply.kind() != minijinja::value::ValueKind::Map {
        return Err(format!(
            "Expected a dict for apply but got {}",
            crate::template::python_repr(&apply)
        ));
    }
    let json = serde_json::to_string(&apply).map_err(|e| format!("{module}: apply: {e}"))?;
    let node = crate::yaml::parse_one(&json).map_err(|e| format!("{module}: apply: {e}"))?;
    let keywords = crate::model::parse_inherited(&node).map_err(|e| e.to_string())?;
    let rest: Vec<(Value, Value)> = args
        .try_iter()
        .map(|keys| {
            keys.filter(|k| k.as_str() != Some("apply"))
                .map(|k| {
                    let v = args.get_item(&k).unwrap_or_default();
                    (k, v)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((Value::from_pairs(rest), Some(keywords)))
}
