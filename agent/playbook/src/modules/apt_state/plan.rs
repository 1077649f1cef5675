//! What `apt-get install --simulate NAMES` would newly install, decided from dpkg's
//! status and apt's lists without starting apt-get, when the answer is plain.
//!
//! A check-mode `apt` task used to run `apt-get install --simulate` for every package not
//! installed, as ansible-core's module does: it fails there when dependencies cannot be
//! met. Each call rebuilds apt's cache (1.4–2.2 s on a Debian image without
//! `pkgcache.bin`) and was nearly all the time of a check-mode run that installs.
//!
//! The native plan takes every named package's candidate and, transitively, what its
//! `Pre-Depends` and `Depends` need, choosing as apt does for a consistent archive: a
//! clause is met by an installed version or one already planned, else by the first
//! alternative whose candidate satisfies it (or a virtual name's only provider). It
//! answers only when that closure is plain: nothing installed needs another version,
//! nothing in it is held, partly installed, pinned or of another architecture, no
//! virtual name has several providers to choose from, and no `Conflicts`/`Breaks`
//! (of a planned package or of an installed one) touches the plan. Then apt-get finds
//! the same packages and succeeds; everything else is [`Undecided`] and apt-get answers
//! as before. `Recommends` are left out: apt installs them when it can and never fails
//! over them, so they change what the simulation lists, not whether it succeeds.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use super::{
    compare_versions, native_architecture, provided_names, Relations, Snapshot, Undecided,
};

/// One alternative of a relation: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alternative<'a> {
    name: &'a str,
    /// `any` (a `Multi-Arch: allowed` package of any architecture) or an architecture.
    arch: Option<&'a str>,
    /// The version restriction: operator and version.
    version: Option<(&'a str, &'a str)>,
}

/// A relation field (`a (>= 1) | b, c`): its clauses, each a list of alternatives.
/// `Err` for what a binary package's field does not hold (architecture or profile
/// restrictions, an unknown operator): the caller leaves the question to apt.
fn parse_relations(field: &str) -> Result<Vec<Vec<Alternative<'_>>>, Undecided> {
    let mut clauses = Vec::new();
    for clause in field.split(',') {
        let clause = clause.trim();
        if clause.is_empty() {
            continue;
        }
        let mut alternatives = Vec::new();
        for alternative in clause.split('|') {
            alternatives.push(parse_alternative(alternative.trim())?);
        }
        clauses.push(alternatives);
    }
    Ok(clauses)
}

fn parse_alternative(text: &str) -> Result<Alternative<'_>, Undecided> {
    let undecided = || Undecided(format!("the relation '{text}'"));
    if text.contains(['[', '<']) && !text.contains('(') {
        return Err(undecided());
    }
    let (head, version) = match text.split_once('(') {
        Some((head, rest)) => {
            let inner = rest.strip_suffix(')').ok_or_else(undecided)?.trim();
            let split = inner
                .find(|c: char| !"<>=".contains(c))
                .ok_or_else(undecided)?;
            let (op, version) = inner.split_at(split);
            let op = match op {
                "<<" | "<=" | "=" | ">=" | ">>" => op,
                // Obsolete forms dpkg still reads as `<=` and `>=`.
                "<" => "<=",
                ">" => ">=",
                _ => return Err(undecided()),
            };
            let version = version.trim();
            if version.is_empty() || version.contains(char::is_whitespace) {
                return Err(undecided());
            }
            (head.trim(), Some((op, version)))
        }
        None => (text, None),
    };
    if head.is_empty() || head.contains(char::is_whitespace) || head.contains(['[', '<']) {
        return Err(undecided());
    }
    let (name, arch) = match head.split_once(':') {
        Some((name, arch)) => (name, Some(arch)),
        None => (head, None),
    };
    Ok(Alternative {
        name,
        arch,
        version,
    })
}

/// Whether `version` satisfies the restriction `(op wanted)`.
fn satisfies(version: &str, restriction: Option<(&str, &str)>) -> bool {
    let Some((op, wanted)) = restriction else {
        return true;
    };
    let order = compare_versions(version, wanted);
    match op {
        "<<" => order == Ordering::Less,
        "<=" => order != Ordering::Greater,
        "=" => order == Ordering::Equal,
        ">=" => order != Ordering::Less,
        ">>" => order == Ordering::Greater,
        _ => false,
    }
}

/// The names a package's `Provides:` field gives.
fn provides(relations: &Relations) -> impl Iterator<Item = &str> {
    relations
        .provides
        .as_deref()
        .into_iter()
        .flat_map(provided_names)
}

/// The names a `Provides:` field gives, each with its version (`name (= 1.0)`) if any.
fn provided_versions(relations: &Relations) -> impl Iterator<Item = (&str, Option<&str>)> {
    relations
        .provides
        .as_deref()
        .into_iter()
        .flat_map(|field| field.split(','))
        .filter_map(|part| {
            let (name, version) = match part.split_once('(') {
                Some((name, rest)) => {
                    let version = rest.trim_end().strip_suffix(')').unwrap_or(rest);
                    (name, version.trim().strip_prefix('=').map(str::trim))
                }
                None => (part, None),
            };
            let name = name.trim();
            (!name.is_empty()).then_some((name, version))
        })
}

/// Whether a package's `Provides:` meets `alternative`: an unversioned dependency by any
/// provided name, a versioned one only by a provided version that satisfies it.
fn provision_meets(relations: &Relations, alternative: &Alternative) -> bool {
    provided_versions(relations).any(|(name, version)| {
        name == alternative.name
            && match (alternative.version, version) {
                (None, _) => true,
                (Some(restriction), Some(version)) => satisfies(version, Some(restriction)),
                (Some(_), None) => false,
            }
    })
}

/// Packages to install, by name, with the version apt would take.
pub type Plan = BTreeMap<String, String>;

struct Planner<'s> {
    snapshot: &'s Snapshot,
    plan: Plan,
    queue: VecDeque<String>,
}

impl Snapshot {
    /// What `apt-get install --simulate NAMES` would newly install (the names and the
    /// packages their dependencies need), when that is plain (see the module's notes);
    /// every name must be a real package that is not installed.
    pub fn install_plan(&self, names: &[&str]) -> Result<Plan, Undecided> {
        let lists = self.read_lists()?;
        if let Some(why) = &lists.policy_undecided {
            return Err(Undecided(why.clone()));
        }
        let mut planner = Planner {
            snapshot: self,
            plan: Plan::new(),
            queue: VecDeque::new(),
        };
        for name in names {
            if self.installed_version(name)?.is_some() {
                return Err(Undecided(format!("'{name}' is installed")));
            }
            planner.add(name)?;
        }
        while let Some(name) = planner.queue.pop_front() {
            let relations = planner.relations(&name)?;
            if let Some(depends) = relations.depends.as_deref() {
                for clause in parse_relations(depends)? {
                    planner.meet(&clause)?;
                }
            }
        }
        planner.check_conflicts()?;
        planner.check_siblings()?;
        Ok(planner.plan)
    }
}

impl<'s> Planner<'s> {
    /// The relations of a planned package's candidate.
    fn relations(&self, name: &str) -> Result<&'s Relations, Undecided> {
        let snapshot: &'s Snapshot = self.snapshot;
        snapshot
            .read_lists()?
            .relations
            .get(name)
            .ok_or_else(|| Undecided(format!("no relations known for '{name}'")))
    }

    /// Plans `name`'s candidate from the lists.
    fn add(&mut self, name: &str) -> Result<(), Undecided> {
        if self.plan.contains_key(name) {
            return Ok(());
        }
        if self.snapshot.status.held.contains(name) {
            return Err(Undecided(format!("'{name}' is held")));
        }
        let candidate = self
            .snapshot
            .candidate_version(name)?
            .ok_or_else(|| Undecided(format!("'{name}' has no candidate")))?;
        let lists = self.snapshot.read_lists()?;
        if lists.newest.get(name) != Some(&candidate) {
            return Err(Undecided(format!(
                "the candidate of '{name}' is not in the lists"
            )));
        }
        self.plan.insert(name.to_string(), candidate);
        self.queue.push_back(name.to_string());
        Ok(())
    }

    /// The installed version of a real package, with whether it is `Multi-Arch: allowed`.
    fn installed(&self, name: &str) -> Result<Option<(String, bool)>, Undecided> {
        Ok(self.snapshot.installed_version(name)?.map(|version| {
            let allowed = self
                .snapshot
                .status
                .relations
                .get(name)
                .is_some_and(|r| r.multi_arch_allowed);
            (version, allowed)
        }))
    }

    /// Whether an alternative is met by what is installed or planned.
    fn met(&self, alternative: &Alternative) -> Result<bool, Undecided> {
        let any = match alternative.arch {
            None => false,
            Some("any") => true,
            Some(arch) if Some(arch) == native_architecture() => false,
            Some(arch) => {
                return Err(Undecided(format!(
                    "a dependency on '{}:{arch}'",
                    alternative.name
                )))
            }
        };
        if let Some((version, allowed)) = self.installed(alternative.name)? {
            if satisfies(&version, alternative.version) && (!any || allowed) {
                return Ok(true);
            }
        }
        if let Some(version) = self.plan.get(alternative.name) {
            let allowed = self
                .relations(alternative.name)
                .is_ok_and(|r| r.multi_arch_allowed);
            if satisfies(version, alternative.version) && (!any || allowed) {
                return Ok(true);
            }
        }
        if !any {
            let name = alternative.name;
            let status = &self.snapshot.status;
            for provider in status.provided.get(name).into_iter().flatten() {
                if status
                    .relations
                    .get(provider)
                    .is_some_and(|r| provision_meets(r, alternative))
                {
                    return Ok(true);
                }
            }
            for planned in self.plan.keys() {
                if provision_meets(self.relations(planned)?, alternative) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Meets one dependency clause: already met, or by planning its first alternative
    /// that apt can install as it stands.
    fn meet(&mut self, clause: &[Alternative]) -> Result<(), Undecided> {
        for alternative in clause {
            if self.met(alternative)? {
                return Ok(());
            }
        }
        let lists = self.snapshot.read_lists()?;
        for alternative in clause {
            let name = alternative.name;
            if self.installed(name)?.is_some() {
                // Installed in a version that does not do: apt would consider an upgrade.
                return Err(Undecided(format!("a dependency on '{name}'")));
            }
            let any = alternative.arch == Some("any");
            if lists.newest.contains_key(name) && lists.provided.contains_key(name) {
                // A real package that others provide too: apt weighs them.
                return Err(Undecided(format!("'{name}' is also provided by others")));
            }
            if lists.newest.contains_key(name) {
                let candidate = self
                    .snapshot
                    .candidate_version(name)?
                    .ok_or_else(|| Undecided(format!("'{name}' has no candidate")))?;
                let allowed = !any
                    || lists
                        .relations
                        .get(name)
                        .is_some_and(|r| r.multi_arch_allowed);
                if satisfies(&candidate, alternative.version) && allowed {
                    return self.add(name);
                }
                continue;
            }
            if !any {
                // A virtual name: the packages whose candidate provides it as asked.
                let providers: Vec<&String> = lists
                    .provided
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter(|p| {
                        lists
                            .relations
                            .get(p.as_str())
                            .is_some_and(|r| provision_meets(r, alternative))
                    })
                    .collect();
                match providers.as_slice() {
                    [] => continue,
                    [only] => return self.add(only),
                    _ => {
                        return Err(Undecided(format!(
                            "'{name}' is provided by several packages"
                        )))
                    }
                }
            }
        }
        Err(Undecided(format!(
            "nothing installable meets '{}'",
            clause
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(" | ")
        )))
    }

    /// `Err` when an installed package built from the same source as a planned one can
    /// be upgraded: apt upgrades such siblings together with the new package ("Upgrading
    /// libpcre2-8-0 due to libpcre2-32-0").
    fn check_siblings(&self) -> Result<(), Undecided> {
        for name in self.plan.keys() {
            let source = self.relations(name)?.source.as_deref().unwrap_or(name);
            let siblings = self.snapshot.status.by_source.get(source);
            for sibling in siblings.into_iter().flatten() {
                let installed = self.snapshot.installed_version(sibling)?;
                if installed != self.snapshot.candidate_version(sibling)? {
                    return Err(Undecided(format!(
                        "apt would upgrade '{sibling}' with '{name}' (one source)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// `Err` when a planned package's `Conflicts`/`Breaks` names something installed or
    /// planned, or an installed package's names something planned.
    fn check_conflicts(&self) -> Result<(), Undecided> {
        let conflict = |who: &str, what: &str| {
            Err(Undecided(format!(
                "'{who}' conflicts with or breaks '{what}'"
            )))
        };
        for name in self.plan.keys() {
            let relations = self.relations(name)?;
            let Some(field) = relations.conflicts.as_deref() else {
                continue;
            };
            for clause in parse_relations(field)? {
                for alternative in clause {
                    let target = alternative.name;
                    if target == name {
                        continue;
                    }
                    if let Some((version, _)) = self.installed(target)? {
                        if satisfies(&version, alternative.version) {
                            return conflict(name, target);
                        }
                    }
                    if let Some(version) = self.plan.get(target) {
                        if satisfies(version, alternative.version) {
                            return conflict(name, target);
                        }
                    }
                    // A virtual name: anyone else providing it.
                    let installed_providers = self.snapshot.status.provided.get(target);
                    if installed_providers.is_some_and(|p| p.iter().any(|p| p != name)) {
                        return conflict(name, target);
                    }
                    for other in self.plan.keys().filter(|o| *o != name) {
                        if provides(self.relations(other)?).any(|p| p == target) {
                            return conflict(name, target);
                        }
                    }
                }
            }
        }
        for (installed, relations) in &self.snapshot.status.relations {
            let Some(field) = relations.conflicts.as_deref() else {
                continue;
            };
            for clause in parse_relations(field)? {
                for alternative in clause {
                    let target = alternative.name;
                    if let Some(version) = self.plan.get(target) {
                        if satisfies(version, alternative.version) {
                            return conflict(installed, target);
                        }
                    }
                    for planned in self.plan.keys() {
                        if provides(self.relations(planned)?).any(|p| p == target)
                            && planned != installed
                        {
                            return conflict(installed, target);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_parse_as_dpkg_writes_them() {
        let parsed = parse_relations(
            "libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, perl:any, python3:any (>= 3.9~)",
        )
        .unwrap();
        assert_eq!(parsed.len(), 4);
        assert_eq!(
            parsed[1],
            vec![
                Alternative {
                    name: "debconf",
                    arch: None,
                    version: Some((">=", "0.5"))
                },
                Alternative {
                    name: "debconf-2.0",
                    arch: None,
                    version: None
                },
            ]
        );
        assert_eq!(
            parsed[2][0],
            Alternative {
                name: "perl",
                arch: Some("any"),
                version: None
            }
        );
        assert_eq!(
            parsed[3][0],
            Alternative {
                name: "python3",
                arch: Some("any"),
                version: Some((">=", "3.9~"))
            }
        );
        assert_eq!(
            parse_relations("a (< 2)").unwrap()[0][0].version,
            Some(("<=", "2"))
        );
        assert!(parse_relations("a [amd64]").is_err());
        assert!(parse_relations("a <!nocheck>").is_err());
        assert!(parse_relations("a (~ 2)").is_err());
        assert!(parse_relations("a (>= )").is_err());
    }

    #[test]
    fn restrictions_compare_like_dpkg() {
        assert!(satisfies("2.36-9", Some((">=", "2.34"))));
        assert!(!satisfies("2.36-9", Some(("<<", "2.36"))));
        assert!(satisfies("1:1.0", Some((">>", "2.0"))));
        assert!(satisfies("3.11.2-1", Some(("=", "3.11.2-1"))));
        assert!(satisfies("1.0~rc1", Some(("<<", "1.0"))));
        assert!(satisfies("anything", None));
    }
}
