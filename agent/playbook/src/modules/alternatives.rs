//! `community.general.alternatives`: Debian's alternatives system through
//! `update-alternatives`, parsed from `--display` as Ansible's module parses it.

use minijinja::Value;
use regex::Regex;

use super::exec::{run, which};
use super::{ArgError, Args, ModuleContext, Outcome};

/// One follower link of an alternative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subcommand {
    /// The follower's name.
    pub name: String,
    /// Its target.
    pub path: String,
    /// Its link (`None` when `--display` does not show it).
    pub link: Option<String>,
}

/// One installed alternative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// Its path.
    pub path: String,
    /// Priority.
    pub priority: i64,
    /// Family (empty when none).
    pub family: String,
    /// Followers.
    pub subcommands: Vec<Subcommand>,
}

/// What `update-alternatives --display NAME` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Display {
    /// `auto` or `manual`.
    pub mode: Option<String>,
    /// Where the link currently points.
    pub current_path: Option<String>,
    /// The generic link.
    pub link: Option<String>,
    /// The alternatives in the order shown.
    pub alternatives: Vec<Alternative>,
}

impl Display {
    fn find(&self, path: &str) -> Option<&Alternative> {
        self.alternatives.iter().find(|a| a.path == path)
    }
}

/// Parses `--display` output (a pure function of the text).
pub fn parse_display(text: &str, given: Option<&[Subcommand]>) -> Display {
    let re = |p: &str| Regex::new(p).expect("valid pattern");
    let mut out = Display::default();
    let Some(mode) = re(r"(?m)\s-\s(?:status\sis\s)?(\w*)(?:\smode|.)$").captures(text) else {
        return out;
    };
    out.mode = Some(mode[1].to_string());
    out.current_path = re(r"(?m)^\s*link currently points to (.*)$")
        .captures(text)
        .map(|c| c[1].to_string());
    out.link = re(r"(?m)^\s*link \w+ is (.*)$")
        .captures(text)
        .map(|c| c[1].to_string());
    let mut links: Vec<(String, String)> = re(r"(?m)^\s*(?:slave|follower) (\S+) is (.*)$")
        .captures_iter(text)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    if links.is_empty() {
        if let Some(given) = given {
            links = given
                .iter()
                .map(|s| (s.name.clone(), s.link.clone().unwrap_or_default()))
                .collect();
        }
    }
    let sub = re(r"(?m)^\s+(?:slave|follower) (.*): (.*)$");
    for c in re(r"(?m)^(/.*)\s-\s(?:family\s(\S+)\s)?priority\s(\d+)((?:\s+(?:slave|follower).*)*)")
        .captures_iter(text)
    {
        let block = c.get(4).map(|m| m.as_str()).unwrap_or_default();
        out.alternatives.push(Alternative {
            path: c[1].to_string(),
            priority: c[3].parse().unwrap_or(0),
            family: c.get(2).map(|m| m.as_str().to_string()).unwrap_or_default(),
            subcommands: sub
                .captures_iter(block)
                .filter(|s| &s[2] != "(null)")
                .map(|s| Subcommand {
                    name: s[1].to_string(),
                    path: s[2].to_string(),
                    link: links
                        .iter()
                        .find(|(n, _)| *n == s[1])
                        .map(|(_, l)| l.clone()),
                })
                .collect(),
        });
    }
    out
}

fn subcommands_value(subs: &[Subcommand]) -> Value {
    Value::from(
        subs.iter()
            .map(|s| {
                Value::from_pairs([
                    ("name", Value::from(s.name.clone())),
                    ("path", Value::from(s.path.clone())),
                    ("link", Value::from(s.link.clone())),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

/// `alternatives`: installs, selects, resets to auto or removes an alternative.
pub fn alternatives(args: &Args, ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&[
        "name",
        "path",
        "family",
        "link",
        "priority",
        "state",
        "subcommands",
        "slaves",
    ])?;
    let name = args.required("name")?;
    let path = args.str("path").map(|p| super::nodejs::expand_user(&p));
    let family = args.str("family");
    let state = args
        .choice(
            "state",
            &["present", "selected", "absent", "auto"],
            Some("selected"),
        )?
        .unwrap_or_default();
    let priority = args.int("priority")?;
    if path.is_none() && family.is_none() {
        return Err(ArgError::Invalid(
            "one of the following is required: path, family".into(),
        ));
    }
    let given: Option<Vec<Subcommand>> =
        match args.get("subcommands").or_else(|| args.get("slaves")) {
            None => None,
            Some(list) => {
                let mut subs = Vec::new();
                for item in list
                    .try_iter()
                    .map_err(|_| ArgError::Invalid("argument 'subcommands' is not a list".into()))?
                {
                    let field = |k: &str| -> Result<String, ArgError> {
                        item.get_attr(k)
                            .ok()
                            .filter(|v| !v.is_undefined() && !v.is_none())
                            .map(|v| super::value_to_string(&v))
                            .ok_or_else(|| {
                                ArgError::Invalid(format!(
                                    "missing required arguments: {k} found in subcommands"
                                ))
                            })
                    };
                    subs.push(Subcommand {
                        name: field("name")?,
                        path: field("path")?,
                        link: Some(field("link")?),
                    });
                }
                Some(subs)
            }
        };
    if which("update-alternatives").is_none() {
        return Ok(super::nodejs::missing_executable("update-alternatives"));
    }
    let env: Vec<(String, String)> = ctx
        .environment
        .iter()
        .cloned()
        .chain([("LC_ALL".to_string(), "C".to_string())])
        .collect();
    let display = {
        let r = run("update-alternatives", &["--display", &name], &env, None);
        if r.ok() {
            parse_display(&r.stdout, given.as_deref())
        } else {
            Display::default()
        }
    };
    let mut changed = false;
    let mut messages: Vec<String> = Vec::new();
    let mut before: Vec<(String, Value)> = Vec::new();
    let mut after: Vec<(String, Value)> = Vec::new();
    let current = path.as_deref().and_then(|p| display.find(p));
    if ctx.diff && display.mode.is_some() {
        match current {
            Some(alt) => {
                before.push(("state".into(), Value::from("present")));
                before.push(("path".into(), Value::from(path.clone())));
                before.push(("priority".into(), Value::from(alt.priority)));
                before.push(("link".into(), Value::from(display.link.clone())));
                if !alt.subcommands.is_empty() {
                    before.push(("subcommands".into(), subcommands_value(&alt.subcommands)));
                }
                if display.mode.as_deref() == Some("manual")
                    && display.current_path.as_deref() != path.as_deref()
                {
                    before.retain(|(k, _)| k != "state");
                    before.insert(0, ("state".into(), Value::from("selected")));
                }
            }
            None => before.push(("state".into(), Value::from("absent"))),
        }
    }
    let exec = |argv: Vec<String>| -> Result<(), Outcome> {
        if ctx.check {
            return Ok(());
        }
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let r = run("update-alternatives", &refs, &env, None);
        if r.ok() {
            Ok(())
        } else {
            let mut cmd = vec![which("update-alternatives")
                .map(|p| p.display().to_string())
                .unwrap_or_default()];
            cmd.extend(argv);
            Err(Outcome::failed(r.stderr.trim_end().to_string())
                .with("cmd", cmd.join(" "))
                .with("rc", r.rc)
                .with("stdout", r.stdout)
                .with("stderr", r.stderr))
        }
    };
    let step = (|| -> Result<(), Outcome> {
        if state != "absent" {
            let needs_install = match (&path, current) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(_), Some(alt)) => {
                    priority.is_some_and(|p| p != alt.priority)
                        || given.as_ref().is_some_and(|g| {
                            !alt.subcommands.iter().all(|s| g.contains(s))
                                || !g.iter().all(|s| alt.subcommands.contains(s))
                        })
                }
            };
            if let (true, Some(path)) = (needs_install, &path) {
                if !std::path::Path::new(path).exists() {
                    return Err(Outcome::failed(format!(
                        "Specified path {path} does not exist"
                    )));
                }
                let Some(link) = args
                    .str("link")
                    .map(|l| super::nodejs::expand_user(&l))
                    .or_else(|| display.link.clone())
                else {
                    return Err(Outcome::failed("Needed to install the alternative, but unable to do so as we are missing the link"));
                };
                let prio = priority.or(current.map(|a| a.priority)).unwrap_or(50);
                let subs = given.clone().or_else(|| {
                    current
                        .map(|a| a.subcommands.clone())
                        .filter(|s| !s.is_empty())
                });
                let mut argv = vec![
                    "--install".to_string(),
                    link.clone(),
                    name.clone(),
                    path.clone(),
                    prio.to_string(),
                ];
                if let Some(f) = &family {
                    argv.extend(["--family".to_string(), f.clone()]);
                }
                if let Some(g) = &given {
                    for s in g {
                        argv.extend([
                            "--slave".to_string(),
                            s.link.clone().unwrap_or_default(),
                            s.name.clone(),
                            s.path.clone(),
                        ]);
                    }
                }
                changed = true;
                messages.push(format!("Install alternative '{path}' for '{name}'."));
                exec(argv)?;
                if ctx.diff {
                    after = vec![
                        ("state".into(), Value::from("present")),
                        ("path".into(), Value::from(path.clone())),
                        ("family".into(), Value::from(family.clone())),
                        ("priority".into(), Value::from(prio)),
                        ("link".into(), Value::from(link)),
                    ];
                    if let Some(subs) = subs {
                        after.push(("subcommands".into(), subcommands_value(&subs)));
                    }
                }
            }
            let same_path = path.is_some() && display.current_path == path;
            let same_family = display
                .current_path
                .as_deref()
                .and_then(|p| display.find(p))
                .is_some_and(|alt| Some(&alt.family) == family.as_ref());
            if state == "selected" && !(same_path || same_family) {
                let arg = path.clone().or_else(|| family.clone()).unwrap_or_default();
                changed = true;
                messages.push(format!("Set alternative '{arg}' for '{name}'."));
                exec(vec!["--set".into(), name.clone(), arg])?;
                if ctx.diff {
                    after.retain(|(k, _)| k != "state");
                    after.push(("state".into(), Value::from("selected")));
                }
            }
            if state == "auto" && display.mode.as_deref() == Some("manual") {
                messages.push(format!("Set alternative to auto for '{name}'."));
                changed = true;
                exec(vec!["--auto".into(), name.clone()])?;
                if ctx.diff {
                    after.retain(|(k, _)| k != "state");
                    after.push(("state".into(), Value::from("present")));
                }
            }
        } else if let (Some(path), Some(_)) = (&path, current) {
            changed = true;
            messages.push(format!("Remove alternative '{path}' from '{name}'."));
            exec(vec!["--remove".into(), name.clone(), path.clone()])?;
            if ctx.diff {
                after = vec![("state".into(), Value::from("absent"))];
            }
        }
        Ok(())
    })();
    if let Err(failure) = step {
        return Ok(failure);
    }
    Ok(Outcome::new()
        .with("changed", changed)
        .with(
            "diff",
            Value::from_pairs([
                ("before", Value::from_pairs(before)),
                ("after", Value::from_pairs(after)),
            ]),
        )
        .with("msg", messages.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's `--display` output parses into mode, current path, link and followers.
    #[test]
    fn parses_display_output() {
        let text = "pager - auto mode\n  link best version is /usr/bin/less\n  link currently points to /usr/bin/less\n  link pager is /usr/bin/pager\n  slave pager.1.gz is /usr/share/man/man1/pager.1.gz\n/bin/more - priority 50\n  slave pager.1.gz: /usr/share/man/man1/more.1.gz\n/usr/bin/less - family pagers priority 77\n  slave pager.1.gz: /usr/share/man/man1/less.1.gz\n";
        let d = parse_display(text, None);
        assert_eq!(d.mode.as_deref(), Some("auto"));
        assert_eq!(d.current_path.as_deref(), Some("/usr/bin/less"));
        assert_eq!(d.link.as_deref(), Some("/usr/bin/pager"));
        assert_eq!(d.alternatives.len(), 2);
        assert_eq!(d.alternatives[1].family, "pagers");
        assert_eq!(d.alternatives[1].priority, 77);
        assert_eq!(
            d.alternatives[0].subcommands,
            vec![Subcommand {
                name: "pager.1.gz".into(),
                path: "/usr/share/man/man1/more.1.gz".into(),
                link: Some("/usr/share/man/man1/pager.1.gz".into()),
            }]
        );
        assert_eq!(parse_display("", None), Display::default());
    }
}
