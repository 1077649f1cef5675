//! A script's files: the tree that comes with a playbook (roles/, templates/, files/,
//! group_vars/, …), edited in the UI file by file or uploaded as a `.tar.gz`.
//!
//! * **Stored by content.** A tree is one `script_trees` record whose id is the
//!   SHA-256 of its files ([`tree_id`]): saving a script with files stores its tree once
//!   (the same tree saved again is the same record), the script names it (`Script::tree`,
//!   with a summary of its files for pages), and every execution of the script names
//!   the tree it ran (`Work::Playbook::tree`), so a re-run or a job sent again after a
//!   restart gets exactly the files of its run, not the script's files of today. Jobs
//!   of one tree share one copy of it in memory ([`dynserv_shared::tree::Files`]).
//! * **Checked on save, from the text alone** (never the control plane's filesystem):
//!   the path rules of [`dynserv_shared::tree`] and each file by its place in the tree
//!   (`dynserv_playbook::tree::check_files`: task files parsed as tasks, variable files
//!   as mappings, templates compiled).
//! * **Kept while used.** Each tree has the day it was last saved or run
//!   (`script_tree_used`: id → day, `script_tree_by_use`: `DAY/id` → id); [`prune`]
//!   deletes the trees no script names whose last use is older than the executions'
//!   retention and a week, so a tree outlives every execution that ran it.
//!
//! What does not live here: the script record and its validation (`scripts`), writing
//! the tree on the agent (`dynserv_agent::jobs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{AppError, AppResult};
use crate::store::{IndexScan, Read, Record, Store, Writer};
use dynserv_shared::tree::{self, Files, TreeFile};

/// Tree id -> the day it was last saved or run (`YYYY-MM-DD`).
const USED: &str = "script_tree_used";
/// `DAY/tree id` -> tree id: trees by the day of their last use, oldest first.
const BY_USE: &str = "script_tree_by_use";
/// Most bytes read out of an uploaded archive once decompressed: past it the upload
/// is refused (a small archive can expand a thousandfold).
const MAX_ARCHIVE_BYTES: u64 = 4 * 1024 * 1024;
/// Most entries read from an uploaded archive (directories included).
const MAX_ARCHIVE_ENTRIES: usize = 2 * tree::MAX_FILES;
/// Names an uploaded archive's playbook may have at its top.
pub const PLAYBOOK_NAMES: [&str; 2] = [tree::PLAYBOOK_FILE, "site.yml"];

/// One stored tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptTree {
    /// [`tree_id`] of the files.
    pub id: String,
    /// Sorted by path.
    pub files: Vec<TreeFile>,
    pub created_at: DateTime<Utc>,
}

impl Record for ScriptTree {
    const TABLE: &'static str = "script_trees";
    fn id(&self) -> &str {
        &self.id
    }
}

/// One file of a script's tree as pages list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    /// Bytes once decoded.
    pub size: usize,
    /// Not UTF-8 text (shown, not edited, in the UI).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
}

/// The files sorted by path, text with `\n` line ends (as the editor sends `\r\n`).
pub fn normalize(mut files: Vec<TreeFile>) -> Vec<TreeFile> {
    for file in &mut files {
        if !file.base64 && file.content.contains("\r\n") {
            file.content = file.content.replace("\r\n", "\n");
        }
        file.path = file.path.trim().to_string();
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The id of a tree: SHA-256 over every file's path, encoding and content, each
/// length-prefixed so no two trees share an encoding.
pub fn tree_id(files: &[TreeFile]) -> String {
    let mut hash = Sha256::new();
    for file in files {
        for part in [file.path.as_bytes(), file.content.as_bytes()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.update([u8::from(file.base64)]);
    }
    hex::encode(hash.finalize())
}

/// The summary pages show.
pub fn entries(files: &[TreeFile]) -> Vec<FileEntry> {
    files
        .iter()
        .map(|f| FileEntry {
            path: f.path.clone(),
            size: f.size(),
            binary: f.base64,
        })
        .collect()
}

/// Checks a tree for `playbook`: the path and size rules, then each file by its place
/// in the tree. The error is on the field `files` and names the file (and its line).
pub fn check(files: &[TreeFile], playbook: &str, allow_fallback: bool) -> AppResult<()> {
    tree::check_tree(files, tree::wire_len(playbook)).map_err(|(path, message)| {
        AppError::invalid(
            "files",
            match path {
                Some(p) => format!("{}: {message}", crate::validate::echo(&p)),
                None => message,
            },
        )
    })?;
    let decoded: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| (f.path.clone(), f.bytes().unwrap_or_default()))
        .collect();
    dynserv_playbook::tree::check_files(
        decoded.iter().map(|(p, b)| (p.as_str(), b.as_slice())),
        allow_fallback,
    )
    .map_err(|e| AppError::invalid("files", e.to_string()))
}

/// Stores a (checked, normalized) tree unless it is there already, marks it used today
/// and answers its id.
pub fn store(w: &mut Writer, files: Vec<TreeFile>, now: DateTime<Utc>) -> anyhow::Result<String> {
    let id = tree_id(&files);
    if w.get::<ScriptTree>(&id)?.is_none() {
        w.put(&ScriptTree {
            id: id.clone(),
            files,
            created_at: now,
        })?;
    }
    mark_used(w, &id, now)?;
    Ok(id)
}

/// Records that the tree `id` was saved or run on `now`'s day (one index change a day,
/// however many jobs run it).
pub fn mark_used(w: &mut Writer, id: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
    let day = now.format("%Y-%m-%d").to_string();
    let last = w.index_get(USED, id)?;
    if last.as_deref() == Some(day.as_str()) {
        return Ok(());
    }
    if let Some(last) = last {
        w.index_delete(BY_USE, &format!("{last}/{id}"))?;
    }
    w.index_put(BY_USE, &format!("{day}/{id}"), id)?;
    w.index_put(USED, id, &day)?;
    Ok(())
}

/// The files of the tree `id`; `None` when it is gone (pruned).
pub fn load(r: &impl Read, id: &str) -> anyhow::Result<Option<Vec<TreeFile>>> {
    Ok(r.get::<ScriptTree>(id)?.map(|t| t.files))
}

/// The trees of these ids, read once each, shared by every job that names them.
pub fn load_shared(
    r: &impl Read,
    ids: impl IntoIterator<Item = String>,
) -> anyhow::Result<HashMap<String, Files>> {
    let ids: Vec<String> = ids
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let trees = r.get_many::<ScriptTree>(&ids)?;
    Ok(trees
        .into_iter()
        .flatten()
        .map(|t| (t.id, Files::new(t.files)))
        .collect())
}

/// Deletes up to `max` trees last used before `now - keep` that no script names, and
/// answers how many went. A tree a script still names counts as used today.
pub fn prune(
    store: &Store,
    now: DateTime<Utc>,
    keep: chrono::Duration,
    max: usize,
) -> anyhow::Result<usize> {
    let cutoff = (now - keep).format("%Y-%m-%d").to_string();
    store.write(|w| {
        let old: Vec<(String, String)> = w
            .index_page(&IndexScan::prefix(BY_USE, "", max))?
            .into_iter()
            .take_while(|(key, _)| key.as_str() < cutoff.as_str())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let named: HashSet<String> = w
            .list::<crate::scripts::Script>()?
            .into_iter()
            .filter_map(|s| s.tree)
            .collect();
        let mut pruned = 0;
        for (_, id) in old {
            if named.contains(&id) {
                mark_used(w, &id, now)?;
                continue;
            }
            if let Some(day) = w.index_get(USED, &id)? {
                w.index_delete(BY_USE, &format!("{day}/{id}"))?;
            }
            w.index_delete(USED, &id)?;
            if w.delete::<ScriptTree>(&id)? {
                pruned += 1;
            }
        }
        Ok(pruned)
    })
}

/// Reads an uploaded `.tar.gz` (or plain `.tar`): regular files and directories only,
/// paths by the tree's rules; a single top directory holding everything is taken off
/// (`tar czf app.tgz app/`). Answers the playbook (the top's `playbook.yml`, else
/// `site.yml`) when there is one, and the other files.
pub fn from_archive(bytes: &[u8]) -> AppResult<(Option<String>, Vec<TreeFile>)> {
    let bad = |message: String| AppError::invalid("archive", message);
    if bytes.is_empty() {
        return Err(bad("choose a .tar.gz file to upload".into()));
    }
    let reader: Box<dyn std::io::Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let too_large = format!(
        "the archive holds more than {} MiB once unpacked",
        MAX_ARCHIVE_BYTES >> 20
    );
    // Past the limit the reader fails (not a short read, which tar would report as a
    // truncated archive), so an archive that is too large says so.
    let mut archive = tar::Archive::new(Capped {
        inner: reader,
        left: MAX_ARCHIVE_BYTES,
        message: too_large.clone(),
    });
    let bad = |message: String| {
        if message.contains(&too_large) {
            AppError::invalid("archive", too_large.clone())
        } else {
            AppError::invalid("archive", message)
        }
    };
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a .tar.gz archive: {e}")))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ARCHIVE_ENTRIES {
            return Err(bad(format!(
                "the archive has more than {MAX_ARCHIVE_ENTRIES} entries"
            )));
        }
        let mut entry = entry.map_err(|e| bad(format!("the archive could not be read: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("an entry's name could not be read: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let kind = entry.header().entry_type();
        if kind.is_dir() || path.is_empty() || path == "." {
            continue;
        }
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "{}: only files and directories can be uploaded (no links or devices)",
                crate::validate::echo(&path)
            )));
        }
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| bad(format!("the archive could not be read: {e}")))?;
        files.insert(path, content);
    }
    let files = strip_common_top(files);
    let mut playbook = None;
    for name in PLAYBOOK_NAMES {
        if let Some(text) = files.get(name) {
            playbook = Some(
                String::from_utf8(text.clone())
                    .map_err(|_| bad(format!("{name} is not UTF-8 text")))?,
            );
            break;
        }
    }
    let chosen = PLAYBOOK_NAMES
        .iter()
        .find(|n| files.contains_key(**n))
        .copied();
    let tree: Vec<TreeFile> = files
        .into_iter()
        .filter(|(path, _)| Some(path.as_str()) != chosen)
        .map(|(path, content)| TreeFile::from_bytes(path, content))
        .collect();
    for file in &tree {
        tree::check_path(&file.path).map_err(|m| {
            AppError::invalid(
                "archive",
                format!("{}: {m}", crate::validate::echo(&file.path)),
            )
        })?;
    }
    Ok((playbook, normalize(tree)))
}

/// A reader that fails once more than `left` bytes were read from it.
struct Capped<R> {
    inner: R,
    left: u64,
    message: String,
}

impl<R: std::io::Read> std::io::Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(self.message.clone())),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The files without the one directory that holds them all, when there is one.
fn strip_common_top(files: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    let mut tops = files.keys().map(|p| p.split_once('/').map(|(top, _)| top));
    let first = tops.next().flatten();
    let common = match first {
        Some(top) if tops.all(|t| t == Some(top)) => Some(top.to_string()),
        _ => None,
    };
    match common {
        Some(top) => files
            .into_iter()
            .map(|(path, content)| (path[top.len() + 1..].to_string(), content))
            .collect(),
        None => files,
    }
}

/// A `.tar.gz` of a script: its playbook as `playbook.yml` and its files, which
/// [`from_archive`] reads back as they were.
pub fn to_archive(playbook: &str, files: &[TreeFile]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    let mut add = |path: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, bytes)?;
        Ok(())
    };
    add(tree::PLAYBOOK_FILE, playbook.as_bytes())?;
    for file in files {
        let bytes = file
            .bytes()
            .ok_or_else(|| anyhow::anyhow!("{} is not valid base64", file.path))?;
        add(&file.path, &bytes)?;
    }
    Ok(builder.into_inner()?.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str, content: &str) -> TreeFile {
        TreeFile::from_bytes(path, content.as_bytes().to_vec())
    }

    #[test]
    fn an_archive_round_trips_and_its_top_directory_goes() {
        let files = normalize(vec![
            text("roles/web/tasks/main.yml", "- debug: msg=hi\n"),
            TreeFile::from_bytes("files/blob", vec![0, 0xff, 7]),
            text("group_vars/all.yml", "a: 1\n"),
        ]);
        let bytes = to_archive("- hosts: all\n", &files).unwrap();
        let (playbook, back) = from_archive(&bytes).unwrap();
        assert_eq!(playbook.as_deref(), Some("- hosts: all\n"));
        assert_eq!(back, files);

        // `tar czf app.tgz app/`: everything under one directory.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (path, body) in [
            ("app/site.yml", "- hosts: web\n"),
            ("app/templates/x.j2", "{{ a }}"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, path, body.as_bytes())
                .unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let (playbook, back) = from_archive(&bytes).unwrap();
        assert_eq!(playbook.as_deref(), Some("- hosts: web\n"));
        assert_eq!(back, vec![text("templates/x.j2", "{{ a }}")]);
    }

    #[test]
    fn links_escapes_bombs_and_garbage_are_refused() {
        let archive = |build: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
            let mut builder = tar::Builder::new(Vec::new());
            build(&mut builder);
            builder.into_inner().unwrap()
        };
        let link = archive(&|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            b.append_link(&mut header, "evil", "/etc/passwd").unwrap();
        });
        let e = from_archive(&link).unwrap_err();
        assert!(e.to_string().contains("only files"), "{e}");

        let escape = archive(&|b| {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_entry_type(tar::EntryType::Regular);
            // The tar crate refuses `..` when adding; write the name by hand.
            let name = b"a/../../x";
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            b.append(&header, &b"x"[..]).unwrap();
        });
        assert!(from_archive(&escape).is_err());

        let zeros = vec![0u8; 8 * 1024 * 1024];
        let big = archive(&|b| {
            let mut header = tar::Header::new_gnu();
            header.set_size(zeros.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut header, "big", zeros.as_slice()).unwrap();
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &big).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let e = from_archive(&bomb).unwrap_err();
        assert!(e.to_string().contains("MiB"), "{e}");

        assert!(from_archive(b"not an archive at all, sorry").is_err());
        assert!(from_archive(b"").is_err());
    }

    /// Trees past retention go unless a script names them; a run marks a tree used.
    #[test]
    fn the_pruner_keeps_what_a_script_names_or_ran_lately() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let day = |d: i64| {
            DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc)
                + chrono::Duration::days(d)
        };
        let (old, named, ran) = store
            .write(|w| {
                let old = store_tree(w, vec![text("a", "old")], day(0))?;
                let named = store_tree(w, vec![text("a", "named")], day(0))?;
                let ran = store_tree(w, vec![text("a", "ran")], day(0))?;
                mark_used(w, &ran, day(50))?;
                mark_used(w, &ran, day(50))?;
                let now = day(0);
                w.put(&crate::scripts::Script {
                    id: "s1".into(),
                    name: "s1".into(),
                    description: String::new(),
                    kind: crate::scripts::ScriptKind::Playbook,
                    body: "- hosts: all\n".into(),
                    interpreter: "/bin/sh".into(),
                    variables: Vec::new(),
                    allow_ansible_fallback: false,
                    project_id: None,
                    sample: None,
                    tree: Some(named.clone()),
                    files: Vec::new(),
                    created_by: "t".into(),
                    created_at: now,
                    updated_by: "t".into(),
                    updated_at: now,
                })?;
                Ok((old, named, ran))
            })
            .unwrap();
        let keep = chrono::Duration::days(30);
        assert_eq!(prune(&store, day(20), keep, 100).unwrap(), 0);
        assert_eq!(prune(&store, day(40), keep, 100).unwrap(), 1);
        let present = |id: &str| store.read(|r| Ok(load(r, id)?.is_some())).unwrap();
        assert!(!present(&old));
        assert!(present(&named) && present(&ran));
        // The named tree counts as used on day 40; the run of day 50 keeps the other.
        assert_eq!(prune(&store, day(75), keep, 100).unwrap(), 0);
        assert_eq!(prune(&store, day(81), keep, 100).unwrap(), 1);
        assert!(!present(&ran));
        assert!(present(&named));
    }

    fn store_tree(
        w: &mut Writer,
        files: Vec<TreeFile>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        store(w, files, now)
    }

    #[test]
    fn the_id_is_the_content() {
        let a = normalize(vec![text("b", "1"), text("a", "2")]);
        let b = normalize(vec![text("a", "2"), text("b", "1\r\n")]);
        assert_ne!(tree_id(&a), tree_id(&b));
        let c = normalize(vec![text("a", "2"), text("b", "1")]);
        assert_eq!(tree_id(&a), tree_id(&c));
        // Path and content boundaries cannot be shifted into each other.
        assert_ne!(tree_id(&[text("ab", "c")]), tree_id(&[text("a", "bc")]));
    }
}
