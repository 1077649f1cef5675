//! What dpkg and apt know about packages, read from their own files instead of asking
//! `dpkg-query` and `apt-cache` once per package.
//!
//! Without `/var/cache/apt/pkgcache.bin` (Debian's container images disable it) every
//! `apt-cache` call rebuilds apt's whole cache from the package lists, 0.2–0.5 s each, and
//! the apt module used to ask up to twice per package. Here the dpkg status file and the
//! apt lists are parsed at most once per process and kept until one of the files they
//! came from changes (size, mtime or inode): a playbook that installs packages between
//! tasks sees its own changes. The lists, the expensive part, are read only when a
//! question needs them (a package that is not installed, or `state=latest`), and their
//! parse is also kept on disk for the next process while those files and the program
//! are unchanged (`disk_cache`).
//!
//! The native reading answers only what it can answer exactly as the programs would.
//! Anything else is [`Undecided`] and the caller asks the programs: names that are not
//! plain Debian package names (patterns, `name:arch`), packages pinned in
//! `/etc/apt/preferences*` (any pattern there makes every candidate undecided),
//! `APT::Default-Release`, releases marked `NotAutomatic`, phased updates, foreign
//! architectures, a dpkg journal not yet folded into the status file, lists compressed
//! other than with lz4 or gzip, a relocated apt state directory.
//!
//! Not here: installing or removing anything (`packages.rs` runs apt-get for that).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

mod disk_cache;
mod plan;
pub use disk_cache::own_binary_cache_options;
pub use plan::Plan;

/// Maps keyed by package names read from the host's own dpkg and apt files (not input
/// an attacker chooses): the fast Fx hash, a tenth of the lists' parsing time where
/// SipHash took a sixth.
type Map<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
type Set<K> = HashSet<K, rustc_hash::FxBuildHasher>;

/// The most text read from all the package lists together (after decompression). Debian
/// main for one architecture is about 50 MB, Ubuntu with universe about 150 MB; past this
/// the lists are not parsed and every question about them is [`Undecided`] (the programs
/// answer), so the memory kept stays bounded by a few hundred bytes per package.
pub const MAX_LISTS_BYTES: u64 = 1 << 30;

/// The most text read from the dpkg status file; past it the status is [`Undecided`].
pub const MAX_STATUS_BYTES: u64 = 256 << 20;

/// Why the native reading cannot answer: the caller asks `dpkg-query`/`apt-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecided(pub String);

/// Where dpkg and apt keep their state: fixed on a real host, a temporary tree in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptPaths {
    /// dpkg's database directory (`status`, `arch`, `updates/`).
    pub dpkg_dir: PathBuf,
    /// apt's downloaded lists (`*_Packages[.lz4|.gz]`, `*_InRelease`).
    pub lists_dir: PathBuf,
    /// apt's configuration (`preferences*`, `apt.conf*`).
    pub etc_apt: PathBuf,
}

impl AptPaths {
    /// The places a Debian or Ubuntu host uses.
    pub fn system() -> Self {
        AptPaths {
            dpkg_dir: PathBuf::from("/var/lib/dpkg"),
            lists_dir: PathBuf::from("/var/lib/apt/lists"),
            etc_apt: PathBuf::from("/etc/apt"),
        }
    }
}

/// dpkg's architecture name for the one this program was built for, which is the host's
/// native architecture on every Debian port we ship for.
fn native_architecture() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "x86" => Some("i386"),
        "arm" => Some("armhf"),
        "powerpc64" => Some("ppc64el"),
        "s390x" => Some("s390x"),
        "riscv64" => Some("riscv64"),
        _ => None,
    }
}

/// Whether `name` is a plain Debian package name, which dpkg and apt look up literally
/// (no pattern, no `:arch`, lower case as Debian policy requires; apt would fold case).
fn is_plain_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(b))
}

/// What identifies one version of a file or of a directory's entries: when any of it
/// changes, what was parsed from there is parsed again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Fingerprint(Vec<(PathBuf, Option<FileStamp>)>);

/// What tells one version of a file from the next: dpkg and apt replace their files by
/// renaming a new one over them (a new inode), and editors change size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileStamp {
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| FileStamp {
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            inode: m.ino(),
        })
    }
}

impl Fingerprint {
    fn of(files: &[PathBuf], dirs: &[PathBuf]) -> Self {
        let stat = FileStamp::of;
        let mut entries: Vec<_> = files.iter().map(|p| (p.clone(), stat(p))).collect();
        for dir in dirs {
            entries.push((dir.clone(), stat(dir)));
            let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            children.sort();
            entries.extend(children.into_iter().map(|p| {
                let s = stat(&p);
                (p, s)
            }));
        }
        Fingerprint(entries)
    }
}

/// One package name in the dpkg status file.
#[derive(Debug, Default)]
struct StatusPackage {
    /// The version of the first stanza whose status ends in ` installed`, as
    /// `dpkg-query -W -f='${Status}\t${Version}'` would find it.
    installed: Option<String>,
    /// Some stanza's status mentions `config-files` (removed, not purged).
    config_files: bool,
    /// Some stanza is in a state between (unpacked, half-configured, config-files…),
    /// which apt may count as the current version: its candidate is left to apt-cache.
    in_between: bool,
    /// Some installed stanza is of a foreign architecture.
    foreign: bool,
}

/// The fields of one package version that decide what installing it needs and
/// forbids, as written in its stanza (parsed by `plan` when asked).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Relations {
    /// `Pre-Depends` and `Depends`, joined.
    depends: Option<String>,
    /// `Conflicts` and `Breaks`, joined.
    conflicts: Option<String>,
    provides: Option<String>,
    /// `Multi-Arch: allowed`: satisfies a dependency on `name:any`.
    multi_arch_allowed: bool,
    /// The source package's name (the package's own when the field is absent).
    source: Option<String>,
}

/// The stanza fields [`Relations::of`] reads, in its order; a reader asks for them after
/// its own (`provides` is at [`PROVIDES`] among them).
const RELATION_FIELDS: [&str; 7] = [
    "Pre-Depends",
    "Depends",
    "Conflicts",
    "Breaks",
    "Provides",
    "Multi-Arch",
    "Source",
];
const PROVIDES: usize = 4;

impl Relations {
    /// From the values of [`RELATION_FIELDS`] (in that order).
    fn of(fields: &[Option<&str>]) -> Self {
        let &[pre_depends, depends, conflicts, breaks, provides, multi_arch, source] = fields
        else {
            return Relations::default();
        };
        let join = |a: Option<&str>, b: Option<&str>| match (a, b) {
            (Some(a), Some(b)) => Some(format!("{a}, {b}")),
            (Some(x), None) | (None, Some(x)) => Some(x.to_string()),
            (None, None) => None,
        };
        Relations {
            depends: join(pre_depends, depends),
            conflicts: join(conflicts, breaks),
            provides: provides.map(String::from),
            multi_arch_allowed: multi_arch == Some("allowed"),
            // `Source: name (version)` when the source's version differs.
            source: source
                .and_then(|s| s.split_whitespace().next())
                .map(String::from),
        }
    }
}

/// The parsed dpkg status file.
#[derive(Debug, Default)]
struct StatusDb {
    packages: Map<String, StatusPackage>,
    /// The relation fields of each installed package.
    relations: Map<String, Relations>,
    /// Packages marked `hold` (apt-get refuses to change them without
    /// `--allow-change-held-packages`).
    held: Set<String>,
    /// Installed packages by the name of their source package.
    by_source: Map<String, Vec<String>>,
    /// Names that installed packages provide, with the packages providing each.
    provided: Map<String, Vec<String>>,
    /// Names provided only by packages that are not installed (apt may still list them).
    provided_in_between: Set<String>,
    /// Why nothing here can be trusted (a pending dpkg journal, foreign architectures).
    undecided: Option<String>,
}

/// The parsed apt lists and the policy that picks candidates from them.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ListsDb {
    /// The highest version of each package name in the lists.
    newest: Map<String, String>,
    /// The relation fields of each name's highest version (`newest`).
    relations: Map<String, Relations>,
    /// Names some package in the lists provides, with the packages providing each.
    provided: Map<String, Vec<String>>,
    /// Names whose candidate needs apt's own policy (pinned, phased, odd architecture).
    undecided_names: Set<String>,
    /// Why no candidate can be decided here (patterns pinned, a default release,
    /// `NotAutomatic` releases); provides are still known.
    policy_undecided: Option<String>,
    /// Why nothing in the lists can be trusted (unreadable, unsupported compression,
    /// foreign architectures, too large).
    undecided: Option<String>,
}

/// One parsed state kept for the process, with the fingerprint of the files it came
/// from. One slot each: a process looks at one host, so at most one status and one set of
/// lists are kept (the bound on this cache).
type Slot<T> = Mutex<Option<(Fingerprint, Arc<T>)>>;

static STATUS_CACHE: Slot<StatusDb> = Mutex::new(None);
static LISTS_CACHE: Slot<ListsDb> = Mutex::new(None);

/// Returns what `cache` holds for `fingerprint`, or parses it with `load` and keeps that.
/// The lock is held while parsing so two threads never parse the same files twice.
fn cached<T>(cache: &Slot<T>, fingerprint: Fingerprint, load: impl FnOnce() -> T) -> Arc<T> {
    let mut slot = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((kept, value)) = slot.as_ref() {
        if *kept == fingerprint {
            return Arc::clone(value);
        }
    }
    let value = Arc::new(load());
    *slot = Some((fingerprint, Arc::clone(&value)));
    value
}

/// The package state as of one module call: the status file at once (cheap), the lists
/// when first needed.
pub struct Snapshot {
    paths: AptPaths,
    status: Arc<StatusDb>,
    lists: OnceLock<Arc<ListsDb>>,
}

impl Snapshot {
    /// The current state under `paths`, from the process-wide cache when its files have
    /// not changed.
    pub fn take(paths: &AptPaths) -> Self {
        let fingerprint = Fingerprint::of(
            &[paths.dpkg_dir.join("status"), paths.dpkg_dir.join("arch")],
            &[paths.dpkg_dir.join("updates")],
        );
        let status = cached(&STATUS_CACHE, fingerprint, || read_status(paths));
        Snapshot {
            paths: paths.clone(),
            status,
            lists: OnceLock::new(),
        }
    }

    /// The lists, when they could be read whole.
    fn read_lists(&self) -> Result<&ListsDb, Undecided> {
        let lists = self.lists();
        match &lists.undecided {
            Some(why) => Err(Undecided(why.clone())),
            None => Ok(lists),
        }
    }

    fn lists(&self) -> &ListsDb {
        self.lists.get_or_init(|| {
            let paths = &self.paths;
            let fingerprint = Fingerprint::of(
                &[
                    paths.dpkg_dir.join("arch"),
                    paths.etc_apt.join("preferences"),
                    paths.etc_apt.join("apt.conf"),
                ],
                &[
                    paths.lists_dir.clone(),
                    paths.etc_apt.join("preferences.d"),
                    paths.etc_apt.join("apt.conf.d"),
                ],
            );
            cached(&LISTS_CACHE, fingerprint.clone(), || {
                // The host's own lists are also kept on disk for the next process.
                if *paths != AptPaths::system() {
                    return read_lists(paths);
                }
                if let Some(kept) = disk_cache::load_lists(&fingerprint) {
                    return kept;
                }
                let db = read_lists(paths);
                if db.undecided.is_none() {
                    disk_cache::store_lists(&fingerprint, &db);
                }
                db
            })
        })
    }

    fn status_for(&self, name: &str) -> Result<Option<&StatusPackage>, Undecided> {
        if !is_plain_name(name) {
            return Err(Undecided(format!("'{name}' is not a plain package name")));
        }
        if let Some(why) = &self.status.undecided {
            return Err(Undecided(why.clone()));
        }
        Ok(self.status.packages.get(name))
    }

    /// The installed version of `name` (what `dpkg-query -W` reports for a status ending
    /// in ` installed`), `None` when it is not installed.
    pub fn installed_version(&self, name: &str) -> Result<Option<String>, Undecided> {
        Ok(self.status_for(name)?.and_then(|p| p.installed.clone()))
    }

    /// Whether `name` was removed with its configuration files left behind.
    pub fn has_config_files(&self, name: &str) -> Result<bool, Undecided> {
        Ok(self.status_for(name)?.is_some_and(|p| p.config_files))
    }

    /// The version apt would install for `name` (`apt-cache policy`'s `Candidate:`), `None`
    /// when there is none (unknown, or only a virtual name).
    pub fn candidate_version(&self, name: &str) -> Result<Option<String>, Undecided> {
        let status = self.status_for(name)?;
        if status.is_some_and(|p| p.in_between || p.foreign) {
            return Err(Undecided(format!("'{name}' is partly installed")));
        }
        let lists = self.read_lists()?;
        if let Some(why) = &lists.policy_undecided {
            return Err(Undecided(why.clone()));
        }
        if lists.undecided_names.contains(name) {
            return Err(Undecided(format!("'{name}' needs apt's policy")));
        }
        // With every source at the default priority (500) and the installed version at
        // 100, apt picks the newest version that is not a downgrade: the newest of all.
        let installed = status.and_then(|p| p.installed.as_deref());
        let newest = match (lists.newest.get(name).map(String::as_str), installed) {
            (Some(listed), Some(installed)) => {
                if compare_versions(installed, listed) == Ordering::Greater {
                    installed
                } else {
                    listed
                }
            }
            (Some(version), None) | (None, Some(version)) => version,
            (None, None) => return Ok(None),
        };
        Ok(Some(newest.to_string()))
    }

    /// Whether some package apt knows (in the lists or the status file) provides `name`:
    /// `apt-cache showpkg`'s "Reverse Provides" is not empty.
    pub fn is_provided(&self, name: &str) -> Result<bool, Undecided> {
        self.status_for(name)?;
        if self.status.provided.contains_key(name) {
            return Ok(true);
        }
        let lists = self.read_lists()?;
        if lists.provided.contains_key(name) {
            return Ok(true);
        }
        if self.status.provided_in_between.contains(name) {
            return Err(Undecided(format!(
                "'{name}' is provided only by packages not fully installed"
            )));
        }
        Ok(false)
    }
}

impl Snapshot {
    /// For a virtual `name` (no version of its own) that exactly one package provides,
    /// that package; `None` for a real package, an unknown name or several providers.
    /// ansible-core counts such a name as installed when its one provider is.
    pub fn sole_provider(&self, name: &str) -> Result<Option<String>, Undecided> {
        let status = self.status_for(name)?;
        if status.is_some_and(|p| p.installed.is_some() || p.in_between) {
            return Ok(None);
        }
        let lists = self.read_lists()?;
        if lists.newest.contains_key(name) {
            return Ok(None);
        }
        if self.status.provided_in_between.contains(name) {
            return Err(Undecided(format!(
                "'{name}' is provided by packages not fully installed"
            )));
        }
        let mut providers: Vec<&String> = lists
            .provided
            .get(name)
            .into_iter()
            .chain(self.status.provided.get(name))
            .flatten()
            .collect();
        providers.sort();
        providers.dedup();
        Ok(match providers.as_slice() {
            [only] => Some((*only).clone()),
            _ => None,
        })
    }
}

/// Records that `provider` provides every name its `Provides:` field lists.
fn add_provides(into: &mut Map<String, Vec<String>>, provider: &str, field: &str) {
    for name in provided_names(field) {
        let providers = into.entry(name.to_string()).or_default();
        if !providers.iter().any(|p| p == provider) {
            providers.push(provider.to_string());
        }
    }
}

/// Reads deb822 stanzas from `reader`, calling `stanza` with the fields asked for (in
/// `wanted` order; continuation lines, comments and other fields are skipped). At most
/// `limit` bytes are read; `Err` past it or on a read error.
///
/// Debian's lists are about 50 MB of text, read whenever a playbook asks about a package
/// that is not installed: lines are found with SIMD `memchr`, continuation lines (most
/// of the text: descriptions) are skipped without copying, and a stanza's values are
/// borrowed from one buffer, never allocated one by one.
fn for_each_stanza<R: BufRead>(
    mut reader: R,
    wanted: &[&str],
    limit: &mut u64,
    mut stanza: impl FnMut(&[Option<&str>]),
) -> Result<(), String> {
    let mut ranges: Vec<Option<(usize, usize)>> = vec![None; wanted.len()];
    let mut values = String::with_capacity(1024);
    let mut any = false;
    let mut line = Vec::with_capacity(256);
    let too_much = || "more text than the native reading keeps".to_string();
    loop {
        let skip = {
            let buffered = reader.fill_buf().map_err(|e| format!("reading: {e}"))?;
            matches!(buffered.first(), Some(b' ' | b'\t' | b'#'))
        };
        let into = (!skip).then_some(&mut line);
        let read = take_line(&mut reader, into).map_err(|e| format!("reading: {e}"))?;
        *limit = limit.checked_sub(read as u64).ok_or_else(too_much)?;
        if skip {
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if read == 0 || text.is_empty() {
            if any {
                let fields: Vec<Option<&str>> = ranges
                    .iter()
                    .map(|range| range.map(|(from, to)| &values[from..to]))
                    .collect();
                stanza(&fields);
                ranges.iter_mut().for_each(|r| *r = None);
                values.clear();
                any = false;
            }
            if read == 0 {
                return Ok(());
            }
            continue;
        }
        any = true;
        let Some(colon) = memchr::memchr(b':', text) else {
            continue;
        };
        let key = &text[..colon];
        if let Some(index) = wanted.iter().position(|w| w.as_bytes() == key) {
            let raw = &text[colon + 1..];
            let value = match std::str::from_utf8(raw) {
                Ok(value) => std::borrow::Cow::Borrowed(value),
                Err(_) => String::from_utf8_lossy(raw),
            };
            let from = values.len();
            values.push_str(value.trim());
            ranges[index] = Some((from, values.len()));
        }
    }
}

/// Takes one line (with its `\n`) from `reader`, copied into `into` (cleared first) or
/// skipped without copying; its length, 0 at the end.
fn take_line<R: BufRead>(reader: &mut R, mut into: Option<&mut Vec<u8>>) -> std::io::Result<usize> {
    if let Some(line) = into.as_deref_mut() {
        line.clear();
    }
    let mut taken = 0;
    loop {
        let buffered = reader.fill_buf()?;
        if buffered.is_empty() {
            return Ok(taken);
        }
        let (part, done) = match memchr::memchr(b'\n', buffered) {
            Some(end) => (&buffered[..=end], true),
            None => (buffered, false),
        };
        if let Some(line) = into.as_deref_mut() {
            line.extend_from_slice(part);
        }
        let length = part.len();
        reader.consume(length);
        taken += length;
        if done {
            return Ok(taken);
        }
    }
}

/// The names a `Provides:` field lists (`a, b (= 1.0)` → `a`, `b`).
fn provided_names(field: &str) -> impl Iterator<Item = &str> {
    field
        .split(',')
        .filter_map(|part| part.split(['(', ' ']).find(|s| !s.is_empty()))
}

fn read_status(paths: &AptPaths) -> StatusDb {
    let mut db = StatusDb::default();
    // dpkg-query folds a journal of unfinished changes into what it reports.
    let journal = std::fs::read_dir(paths.dpkg_dir.join("updates"))
        .map(|rd| {
            rd.filter_map(Result::ok).any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .unwrap_or(false);
    if journal {
        db.undecided = Some("dpkg has a journal of unfinished changes".into());
        return db;
    }
    if let Some(why) = foreign_architectures(paths) {
        db.undecided = Some(why);
        return db;
    }
    let native = native_architecture();
    let file = match File::open(paths.dpkg_dir.join("status")) {
        Ok(file) => file,
        Err(e) => {
            db.undecided = Some(format!("cannot read the dpkg status: {e}"));
            return db;
        }
    };
    let mut limit = MAX_STATUS_BYTES;
    let own = ["Package", "Status", "Version", "Architecture"];
    let wanted: Vec<&str> = own.iter().chain(&RELATION_FIELDS).copied().collect();
    let result = for_each_stanza(
        BufReader::with_capacity(1 << 16, file),
        &wanted,
        &mut limit,
        |fields| {
            let (&[Some(name), status, version, architecture], relation_fields) =
                fields.split_at(own.len())
            else {
                return;
            };
            let provides = relation_fields[PROVIDES];
            let status = status.unwrap_or_default();
            let installed = status.ends_with(" installed");
            if status.starts_with("hold ") {
                db.held.insert(name.to_string());
            }
            let entry = db.packages.entry(name.to_string()).or_default();
            if installed {
                if entry.installed.is_none() {
                    entry.installed = Some(version.unwrap_or_default().to_string());
                    let relations = Relations::of(relation_fields);
                    let source = relations.source.as_deref().unwrap_or(name);
                    db.by_source
                        .entry(source.to_string())
                        .or_default()
                        .push(name.to_string());
                    db.relations.insert(name.to_string(), relations);
                }
                let architecture = architecture.unwrap_or("all");
                if architecture != "all" && Some(architecture) != native {
                    entry.foreign = true;
                }
            } else if !status.ends_with(" not-installed") {
                entry.in_between = true;
            }
            if status.contains("config-files") {
                entry.config_files = true;
            }
            if let Some(provides) = provides {
                if installed {
                    add_provides(&mut db.provided, name, provides);
                } else if !status.ends_with(" not-installed") {
                    db.provided_in_between
                        .extend(provided_names(provides).map(String::from));
                }
            }
        },
    );
    if let Err(e) = result {
        db.undecided = Some(format!("dpkg status: {e}"));
    }
    db
}

/// Why more than the native architecture is configured, if it is.
fn foreign_architectures(paths: &AptPaths) -> Option<String> {
    let Some(native) = native_architecture() else {
        return Some("this build's architecture has no known dpkg name".into());
    };
    let arches = std::fs::read_to_string(paths.dpkg_dir.join("arch")).unwrap_or_default();
    arches
        .split_whitespace()
        .any(|arch| arch != native)
        .then(|| "foreign architectures are configured".into())
}

/// How a list file is stored, from its name.
enum ListFile {
    Packages(Compression),
    Release,
    Other,
}

enum Compression {
    None,
    Lz4,
    Gzip,
    Unsupported,
}

fn classify(name: &str) -> ListFile {
    if name.ends_with("_InRelease") || name.ends_with("_Release") {
        return ListFile::Release;
    }
    let Some((_, suffix)) = name.rsplit_once("_Packages") else {
        return ListFile::Other;
    };
    ListFile::Packages(match suffix {
        "" => Compression::None,
        ".lz4" => Compression::Lz4,
        ".gz" => Compression::Gzip,
        _ => Compression::Unsupported,
    })
}

fn read_lists(paths: &AptPaths) -> ListsDb {
    let mut db = ListsDb::default();
    if let Some(why) = foreign_architectures(paths).or_else(|| apt_conf_concerns(paths, &mut db)) {
        db.undecided = Some(why);
        return db;
    }
    read_preferences(paths, &mut db);
    let native = native_architecture().unwrap_or_default();
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&paths.lists_dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            db.undecided = Some(format!("cannot read the apt lists: {e}"));
            return db;
        }
    };
    names.sort();
    // Debian main holds about 64,000 names: the maps grow once, not by doubling.
    if names
        .iter()
        .any(|path| path.to_string_lossy().contains("_Packages"))
    {
        db.newest.reserve(1 << 16);
        db.relations.reserve(1 << 16);
    }
    let mut limit = MAX_LISTS_BYTES;
    for path in names {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        match classify(name) {
            ListFile::Other => {}
            ListFile::Release => {
                if let Err(why) = check_release(&path) {
                    db.policy_undecided.get_or_insert(why);
                }
            }
            ListFile::Packages(compression) => {
                if let Some((_, arch)) = name.split_once("_binary-") {
                    let arch = arch.split('_').next().unwrap_or_default();
                    if arch != native && arch != "all" {
                        db.undecided = Some(format!("a list for architecture {arch}"));
                        return db;
                    }
                }
                if let Err(why) = read_packages(&path, compression, &mut limit, &mut db) {
                    db.undecided = Some(format!("{name}: {why}"));
                    return db;
                }
            }
        }
    }
    db
}

fn read_packages(
    path: &Path,
    compression: Compression,
    limit: &mut u64,
    db: &mut ListsDb,
) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("opening: {e}"))?;
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(file)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Unsupported => return Err("compressed in a way read only by apt".into()),
    };
    let native = native_architecture().unwrap_or_default();
    let own = [
        "Package",
        "Version",
        "Architecture",
        "Phased-Update-Percentage",
    ];
    let wanted: Vec<&str> = own.iter().chain(&RELATION_FIELDS).copied().collect();
    for_each_stanza(
        BufReader::with_capacity(1 << 16, reader),
        &wanted,
        limit,
        |fields| {
            let (&[Some(name), version, architecture, phased], relation_fields) =
                fields.split_at(own.len())
            else {
                return;
            };
            let provides = relation_fields[PROVIDES];
            let architecture = architecture.unwrap_or(native);
            if (architecture != native && architecture != "all") || phased.is_some() {
                db.undecided_names.insert(name.to_string());
            }
            if let Some(version) = version {
                let newer = match db.newest.get_mut(name) {
                    Some(kept) => {
                        let newer = compare_versions(version, kept) == Ordering::Greater;
                        if newer {
                            version.clone_into(kept);
                        }
                        newer
                    }
                    None => {
                        db.newest.insert(name.to_string(), version.to_string());
                        true
                    }
                };
                if newer {
                    db.relations
                        .insert(name.to_string(), Relations::of(relation_fields));
                }
            }
            if let Some(provides) = provides {
                add_provides(&mut db.provided, name, provides);
            }
        },
    )
}

/// `Err` when a release file gives its packages a priority other than the default
/// (`NotAutomatic`, `ButAutomaticUpgrades`: backports, experimental).
fn check_release(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path:?}: {e}"))?;
    // The fields come before the checksums; the rest is long and irrelevant.
    for line in text.lines() {
        if line.starts_with("MD5Sum:") || line.starts_with("SHA256:") {
            break;
        }
        if line.starts_with("NotAutomatic:") || line.starts_with("ButAutomaticUpgrades:") {
            return Err(format!("{} lowers its priority", path.display()));
        }
    }
    Ok(())
}

/// The files of an apt configuration directory (`preferences.d`, `apt.conf.d`) with the
/// main file first. More files than apt reads may be included: that only makes the native
/// reading undecided more often.
fn config_files(etc_apt: &Path, main: &str, dir: &str) -> Vec<PathBuf> {
    let mut files = vec![etc_apt.join(main)];
    let mut parts: Vec<PathBuf> = std::fs::read_dir(etc_apt.join(dir))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    parts.sort();
    files.extend(parts.into_iter().filter(|p| p.is_file()));
    files
}

/// Reads the apt configuration for what changes the answers: a default release (every
/// candidate undecided) and relocated directories or extra architectures (nothing can be
/// read natively, returned as `Some`).
fn apt_conf_concerns(paths: &AptPaths, db: &mut ListsDb) -> Option<String> {
    for file in config_files(&paths.etc_apt, "apt.conf", "apt.conf.d") {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let lower = text.to_ascii_lowercase();
        if lower.contains("default-release") {
            db.policy_undecided
                .get_or_insert(format!("{} sets a default release", file.display()));
        }
        let relocated = ["dir::state", "dir::etc", "apt::architecture"]
            .iter()
            .any(|key| lower.contains(key))
            || lower.lines().any(|line| {
                let line = line.trim_start();
                line.starts_with("dir ")
                    || line.starts_with("dir{")
                    || line.starts_with("architectures")
                    || line.starts_with("architecture ")
            });
        if relocated {
            return Some(format!(
                "{} changes apt's directories or architectures",
                file.display()
            ));
        }
    }
    None
}

/// Reads `/etc/apt/preferences*`: a pinned plain name needs apt's policy; a pattern may
/// pin anything, so then every candidate does.
fn read_preferences(paths: &AptPaths, db: &mut ListsDb) {
    for file in config_files(&paths.etc_apt, "preferences", "preferences.d") {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let Some(value) = line.strip_prefix("Package:") else {
                continue;
            };
            for name in value.split_whitespace() {
                if is_plain_name(name) {
                    db.undecided_names.insert(name.to_string());
                } else {
                    db.policy_undecided
                        .get_or_insert(format!("{} pins the pattern '{name}'", file.display()));
                }
            }
        }
    }
}

/// Compares two Debian versions as `dpkg --compare-versions` does: epoch, then the
/// upstream version, then the revision, each part by dpkg's `verrevcmp` (`~` sorts before
/// everything, even the end; letters before other symbols; digit runs by value).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (epoch_a, upstream_a, revision_a) = split_version(a);
    let (epoch_b, upstream_b, revision_b) = split_version(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| verrevcmp(upstream_a.as_bytes(), upstream_b.as_bytes()))
        .then_with(|| verrevcmp(revision_a.as_bytes(), revision_b.as_bytes()))
}

fn split_version(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(0), rest)
        }
        _ => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// dpkg's weight of one character outside a digit run; 0 for the end of the string.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_difference == Ordering::Equal {
                first_difference = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_difference != Ordering::Equal {
            return first_difference;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Versions order as `dpkg --compare-versions` orders them (pairs checked with dpkg).
    #[test]
    fn versions_compare_like_dpkg() {
        let check = |a: &str, expected: Ordering, b: &str| {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b} vs {a}");
        };
        check("1.0~rc1", Ordering::Less, "1.0");
        check("1:0.9", Ordering::Greater, "2.0");
        check("2.30-1", Ordering::Less, "2.30-1+deb12u1");
        check("7.88.1-10+deb12u15", Ordering::Greater, "7.88.1-10+deb12u5");
        check("1.0a", Ordering::Less, "1.0+");
        check("1.0", Ordering::Equal, "1.0-0");
        check("1.0.0", Ordering::Greater, "1.0");
        check("0:1.2", Ordering::Equal, "1.2");
        check("1.2-3~bpo1", Ordering::Less, "1.2-3");
        check("10", Ordering::Greater, "9");
        check("1.0-1", Ordering::Less, "1.0.1-1");
        check("1.0~~", Ordering::Less, "1.0~");
        check("1.0+b1", Ordering::Greater, "1.0");
    }

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            let tree = Tree {
                dir: tempfile::tempdir().expect("temporary directory"),
            };
            for sub in [
                "dpkg/updates",
                "lists",
                "etc/preferences.d",
                "etc/apt.conf.d",
            ] {
                std::fs::create_dir_all(tree.dir.path().join(sub)).expect("directory");
            }
            tree
        }

        fn paths(&self) -> AptPaths {
            AptPaths {
                dpkg_dir: self.dir.path().join("dpkg"),
                lists_dir: self.dir.path().join("lists"),
                etc_apt: self.dir.path().join("etc"),
            }
        }

        fn write(&self, path: &str, text: &str) {
            std::fs::write(self.dir.path().join(path), text).expect("write");
        }
    }

    const STATUS: &str = "\
Package: curl
Status: install ok installed
Architecture: amd64
Version: 7.88.1-10+deb12u5
Description: a tool
 with a long description
Provides: curl-tool

Package: oldpkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Provides: old-virtual

Package: gone
Status: purge ok not-installed
Architecture: amd64
";

    const PACKAGES: &str = "\
Package: curl
Version: 7.88.1-10+deb12u12
Architecture: amd64

Package: curl
Version: 7.88.1-10+deb12u15
Architecture: amd64

Package: exim4
Version: 4.96-15
Architecture: all
Provides: mail-transport-agent

Package: newer-installed
Version: 0.9
Architecture: amd64
";

    fn lz4(text: &str) -> Vec<u8> {
        let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
        encoder.write_all(text.as_bytes()).expect("compress");
        encoder.finish().expect("compress")
    }

    fn debian_tree() -> Tree {
        let tree = Tree::new();
        tree.write("dpkg/status", STATUS);
        std::fs::write(
            tree.dir
                .path()
                .join("lists/deb.example_dists_bookworm_main_binary-amd64_Packages.lz4"),
            lz4(PACKAGES),
        )
        .expect("write");
        tree.write(
            "lists/deb.example_dists_bookworm_InRelease",
            "Origin: Debian\nSuite: stable\nSHA256:\n abc 1 main\n",
        );
        tree
    }

    /// Installed versions, config files and unknown names read from the status file.
    #[test]
    fn status_answers_like_dpkg_query() {
        let tree = debian_tree();
        let state = Snapshot::take(&tree.paths());
        assert_eq!(
            state.installed_version("curl"),
            Ok(Some("7.88.1-10+deb12u5".into()))
        );
        assert_eq!(state.installed_version("oldpkg"), Ok(None));
        assert_eq!(state.installed_version("gone"), Ok(None));
        assert_eq!(state.installed_version("nothing"), Ok(None));
        assert_eq!(state.has_config_files("oldpkg"), Ok(true));
        assert_eq!(state.has_config_files("curl"), Ok(false));
        assert!(state.installed_version("curl*").is_err());
        assert!(state.installed_version("curl:amd64").is_err());
    }

    /// Candidates are the newest version in the lz4 lists or installed; provides count.
    #[test]
    fn lists_answer_like_apt_cache() {
        let tree = debian_tree();
        tree.write(
            "dpkg/status",
            &format!(
                "{STATUS}\nPackage: newer-installed\nStatus: install ok installed\n\
                 Architecture: amd64\nVersion: 1.0\n"
            ),
        );
        let state = Snapshot::take(&tree.paths());
        assert_eq!(
            state.candidate_version("curl"),
            Ok(Some("7.88.1-10+deb12u15".into()))
        );
        assert_eq!(
            state.candidate_version("newer-installed"),
            Ok(Some("1.0".into()))
        );
        assert_eq!(state.candidate_version("exim4"), Ok(Some("4.96-15".into())));
        assert_eq!(state.candidate_version("mail-transport-agent"), Ok(None));
        assert_eq!(state.candidate_version("nothing"), Ok(None));
        assert_eq!(state.is_provided("mail-transport-agent"), Ok(true));
        assert_eq!(state.is_provided("curl-tool"), Ok(true));
        assert_eq!(state.is_provided("nothing"), Ok(false));
        // Only a package removed with its configuration provides it: apt decides.
        assert!(state.is_provided("old-virtual").is_err());
        assert!(state.candidate_version("oldpkg").is_err());
        assert_eq!(state.sole_provider("curl-tool"), Ok(Some("curl".into())));
        assert_eq!(
            state.sole_provider("mail-transport-agent"),
            Ok(Some("exim4".into()))
        );
        assert_eq!(state.sole_provider("curl"), Ok(None));
        assert_eq!(state.sole_provider("nothing"), Ok(None));
    }

    /// Pins, default releases, NotAutomatic releases, foreign architectures and
    /// unsupported compression leave the answer to the programs.
    #[test]
    fn what_apt_policy_decides_is_undecided() {
        let tree = debian_tree();
        tree.write(
            "etc/preferences.d/nodejs",
            "Package: curl\nPin: origin example\nPin-Priority: 600\n",
        );
        let state = Snapshot::take(&tree.paths());
        assert!(state.candidate_version("curl").is_err());
        assert_eq!(state.candidate_version("exim4"), Ok(Some("4.96-15".into())));

        tree.write(
            "etc/preferences.d/all",
            "Package: *\nPin: release a=bookworm-backports\nPin-Priority: 100\n",
        );
        assert!(Snapshot::take(&tree.paths())
            .candidate_version("exim4")
            .is_err());
        assert_eq!(
            Snapshot::take(&tree.paths()).is_provided("mail-transport-agent"),
            Ok(true)
        );
        std::fs::remove_file(tree.dir.path().join("etc/preferences.d/all")).expect("remove");

        tree.write(
            "etc/apt.conf.d/99release",
            "APT::Default-Release \"stable\";\n",
        );
        assert!(Snapshot::take(&tree.paths())
            .candidate_version("exim4")
            .is_err());
        std::fs::remove_file(tree.dir.path().join("etc/apt.conf.d/99release")).expect("remove");

        tree.write(
            "lists/deb.example_dists_bookworm-backports_InRelease",
            "Origin: Debian Backports\nNotAutomatic: yes\nButAutomaticUpgrades: yes\n",
        );
        assert!(Snapshot::take(&tree.paths())
            .candidate_version("exim4")
            .is_err());
        std::fs::remove_file(
            tree.dir
                .path()
                .join("lists/deb.example_dists_bookworm-backports_InRelease"),
        )
        .expect("remove");

        tree.write(
            "lists/deb.example_dists_bookworm_main_binary-amd64_Packages.xz",
            "",
        );
        assert!(Snapshot::take(&tree.paths())
            .is_provided("mail-transport-agent")
            .is_err());
        std::fs::remove_file(
            tree.dir
                .path()
                .join("lists/deb.example_dists_bookworm_main_binary-amd64_Packages.xz"),
        )
        .expect("remove");

        tree.write("dpkg/updates/0001", "Package: curl\n");
        assert!(Snapshot::take(&tree.paths())
            .installed_version("curl")
            .is_err());
    }

    /// A change to the status file between two snapshots is seen by the second one.
    #[test]
    fn a_changed_status_file_is_read_again() {
        let tree = debian_tree();
        assert_eq!(
            Snapshot::take(&tree.paths()).installed_version("exim4"),
            Ok(None)
        );
        tree.write(
            "dpkg/status",
            &format!(
                "{STATUS}\nPackage: exim4\nStatus: install ok installed\n\
                 Architecture: all\nVersion: 4.96-15\n"
            ),
        );
        assert_eq!(
            Snapshot::take(&tree.paths()).installed_version("exim4"),
            Ok(Some("4.96-15".into()))
        );
    }

    const PLAN_STATUS: &str = "\
Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9

Package: perl
Status: install ok installed
Architecture: amd64
Multi-Arch: allowed
Version: 5.36.0-7

Package: mawk
Status: install ok installed
Architecture: amd64
Multi-Arch: foreign
Version: 1.3.4-1
Provides: awk

Package: blocker
Status: install ok installed
Architecture: all
Version: 1.0
Conflicts: badpkg

Package: held
Status: hold ok not-installed
Architecture: all

Package: sysvinit-utils
Status: install ok installed
Architecture: amd64
Version: 3.06-4
Provides: lsb-base (= 11.1.0)
";

    const PLAN_PACKAGES: &str = "\
Package: app
Version: 1.0
Architecture: amd64
Pre-Depends: libc6 (>= 2.34)
Depends: libfoo (>= 1.2) | libfoo-compat, perl:any, awk
Recommends: never-installed-by-the-plan

Package: libfoo
Version: 1.1
Architecture: amd64

Package: libfoo
Version: 1.3
Architecture: amd64
Depends: libc6
Conflicts: libfoo-compat

Package: tool
Version: 2.0
Architecture: all
Depends: mail-transport-agent

Package: exim4
Version: 4.96-15
Architecture: all
Provides: mail-transport-agent

Package: postfix
Version: 3.7.11-0
Architecture: amd64
Provides: mail-transport-agent

Package: needs-newer-libc
Version: 1.0
Architecture: amd64
Depends: libc6 (>= 2.40)

Package: badpkg
Version: 1.0
Architecture: all

Package: breaker
Version: 1.0
Architecture: all
Breaks: perl (<< 6)

Package: held
Version: 1.0
Architecture: all

Package: virt-user
Version: 1.0
Architecture: all
Depends: only-one-virtual

Package: provider-one
Version: 0.5
Architecture: all
Provides: only-one-virtual

Package: pyapp
Version: 1.0
Architecture: all
Depends: python3:any (>= 3.9~)

Package: python3
Version: 3.11.2-1
Architecture: amd64
Multi-Arch: allowed

Package: missing-dep
Version: 1.0
Architecture: all
Depends: not-in-any-list

Package: lsb-base
Version: 11.6
Architecture: all

Package: daemon
Version: 1.0
Architecture: all
Depends: lsb-base (>= 3.2-13)

Package: daemon-new
Version: 1.0
Architecture: all
Depends: lsb-base (>= 12)

Package: client
Version: 2.0
Architecture: all
Depends: acme-abi-2 (>= 2.1)

Package: acme
Version: 2.1.0-1
Architecture: all
Provides: acme-abi-2 (= 2.1)
";

    /// The native plan follows dependencies as apt chooses them and leaves every
    /// choice it does not make plainly (several providers, an upgrade, a conflict, a
    /// held package, an unmet dependency) to apt-get.
    #[test]
    fn install_plans_follow_dependencies_or_stay_undecided() {
        let tree = Tree::new();
        tree.write("dpkg/status", PLAN_STATUS);
        tree.write(
            "lists/deb.example_dists_bookworm_main_binary-amd64_Packages",
            PLAN_PACKAGES,
        );
        let state = Snapshot::take(&tree.paths());
        let plan = |names: &[&str]| {
            state.install_plan(names).map(|plan| {
                plan.into_iter()
                    .map(|(name, version)| format!("{name}={version}"))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            plan(&["app"]),
            Ok(vec!["app=1.0".into(), "libfoo=1.3".into()])
        );
        assert_eq!(
            plan(&["virt-user"]),
            Ok(vec!["provider-one=0.5".into(), "virt-user=1.0".into()])
        );
        assert_eq!(
            plan(&["pyapp", "app"]),
            Ok(vec![
                "app=1.0".into(),
                "libfoo=1.3".into(),
                "pyapp=1.0".into(),
                "python3=3.11.2-1".into()
            ])
        );
        // An installed package's versioned `Provides:` meets a versioned dependency.
        assert_eq!(plan(&["daemon"]), Ok(vec!["daemon=1.0".into()]));
        // A versioned dependency on a virtual name: its one provider whose candidate
        // provides a version that does.
        assert_eq!(
            plan(&["client"]),
            Ok(vec!["acme=2.1.0-1".into(), "client=2.0".into()])
        );
        for undecided in [
            "daemon-new",
            "tool",
            "needs-newer-libc",
            "badpkg",
            "breaker",
            "held",
            "missing-dep",
            "mail-transport-agent",
            "perl",
        ] {
            assert!(
                state.install_plan(&[undecided]).is_err(),
                "{undecided} should be left to apt-get"
            );
        }
    }

    /// On this host, every install the native plan decides is the one `apt-get install
    /// --simulate --no-install-recommends` makes (same packages, same versions), for a
    /// spread of packages from the lists that are not installed.
    #[test]
    fn system_plans_match_apt_get_simulate() {
        use crate::modules::exec::run;
        let state = Snapshot::take(&AptPaths::system());
        let lists = state.read_lists().expect("this host's apt lists");
        let mut names: Vec<&str> = lists
            .newest
            .keys()
            .map(String::as_str)
            .filter(|name| state.installed_version(name) == Ok(None))
            .collect();
        names.sort_unstable();
        assert!(
            names.len() > 100,
            "only {} packages in the lists",
            names.len()
        );
        let env = [("LANG".to_string(), "C".to_string())];
        let mut decided = 0;
        // Sixty names spread over the archive, the same ones on every run.
        for name in names.iter().step_by(names.len() / 60) {
            let Ok(plan) = state.install_plan(&[name]) else {
                continue;
            };
            let simulated = run(
                "apt-get",
                &[
                    "install",
                    "--simulate",
                    "--no-install-recommends",
                    "-q",
                    name,
                ],
                &env,
                None,
            );
            assert!(
                simulated.ok(),
                "planned {name} but apt-get failed: {}",
                simulated.stderr
            );
            let installs: Plan = simulated
                .stdout
                .lines()
                .filter_map(|line| {
                    let rest = line.strip_prefix("Inst ")?;
                    let (package, rest) = rest.split_once(" (")?;
                    Some((package.to_string(), rest.split(' ').next()?.to_string()))
                })
                .collect();
            assert_eq!(plan, installs, "what installing {name} needs");
            decided += 1;
            if decided == 12 {
                break;
            }
        }
        assert!(
            decided >= 8,
            "the native plan decided only {decided} installs"
        );
    }

    /// On this host, every answer the native reading gives is the one dpkg-query and
    /// apt-cache give (installed, absent, virtual, pinned and unknown names).
    #[test]
    fn system_answers_match_the_programs() {
        use crate::modules::exec::run;
        let state = Snapshot::take(&AptPaths::system());
        let env = [("LANG".to_string(), "C".to_string())];
        let mut decided = 0;
        for name in [
            "curl",
            "mawk",
            "perl",
            "libc6",
            "tzdata",
            "sl",
            "nodejs",
            "awk",
            "libio-zlib-perl",
            "mail-transport-agent",
            "dynserv-no-such-package",
        ] {
            let query = run(
                "dpkg-query",
                &["-W", "-f=${Status}\t${Version}\n", name],
                &[],
                None,
            );
            let installed = query.ok().then(|| {
                query.stdout.lines().find_map(|line| {
                    let (status, version) = line.split_once('\t')?;
                    status.ends_with(" installed").then(|| version.to_string())
                })
            });
            assert_eq!(
                state.installed_version(name),
                Ok(installed.flatten()),
                "installed version of {name}"
            );
            if let Ok(candidate) = state.candidate_version(name) {
                let policy = run("apt-cache", &["policy", name], &env, None).stdout;
                let expected = policy
                    .lines()
                    .find_map(|l| {
                        l.trim()
                            .strip_prefix("Candidate:")
                            .map(|v| v.trim().to_string())
                    })
                    .filter(|v| v != "(none)");
                assert_eq!(candidate, expected, "candidate of {name}");
                decided += 1;
            }
            if let Ok(provided) = state.is_provided(name) {
                let showpkg = run("apt-cache", &["showpkg", name], &env, None).stdout;
                let expected = showpkg
                    .split("Reverse Provides:")
                    .nth(1)
                    .is_some_and(|providers| !providers.trim().is_empty());
                assert_eq!(provided, expected, "whether something provides {name}");
            }
        }
        assert!(
            decided > 5,
            "the native reading decided only {decided} candidates"
        );

        // Every package dpkg knows, installed version and candidate, in one call each.
        let listing = run(
            "dpkg-query",
            &["-W", "-f=${Package}\t${Status}\t${Version}\n"],
            &[],
            None,
        );
        assert!(listing.ok(), "dpkg-query -W: {}", listing.stderr);
        let mut names = Vec::new();
        for line in listing.stdout.lines() {
            let mut fields = line.split('\t');
            let (Some(name), Some(status), Some(version)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let expected = status.ends_with(" installed").then(|| version.to_string());
            assert_eq!(
                state.installed_version(name),
                Ok(expected),
                "installed version of {name}"
            );
            names.push(name);
        }
        let mut argv = vec!["policy"];
        argv.extend(names.iter().copied());
        let policy = run("apt-cache", &argv, &env, None).stdout;
        let mut current = None;
        let mut compared = 0;
        for line in policy.lines() {
            if let Some(name) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
                current = Some(name.to_string());
            } else if let (Some(name), Some(candidate)) =
                (&current, line.trim().strip_prefix("Candidate:"))
            {
                let candidate = Some(candidate.trim().to_string()).filter(|v| v != "(none)");
                if let Ok(native) = state.candidate_version(name) {
                    assert_eq!(native, candidate, "candidate of {name}");
                    compared += 1;
                }
            }
        }
        assert!(
            compared * 10 >= names.len() * 9,
            "only {compared} of {} candidates compared",
            names.len()
        );
    }
}
