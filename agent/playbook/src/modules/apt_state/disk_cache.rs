//! What the apt module keeps on disk between processes, in a directory of its own
//! (`/var/cache/dynserv-agent/apt` for root, else under the user's cache directory).
//!
//! * **apt's binary cache, where the host keeps none.** apt answers from a binary cache
//!   (`pkgcache.bin`) built from the lists and the dpkg status. Debian's container images
//!   turn the file off (`Dir::Cache::pkgcache "";` in `/etc/apt/apt.conf.d/docker-clean`),
//!   so every apt-get and apt-cache call rebuilds it in memory first: 0.5–1 s of a
//!   simulated install's 0.9–1.3 s on Debian bookworm. On such a host the apt module
//!   points its own calls at a file here (`-o Dir::Cache::pkgcache=FILE`). apt itself
//!   checks that file against the lists and the status it was built from and rebuilds it
//!   when either changed, as it does with its usual `/var/cache/apt/pkgcache.bin`; the
//!   host's configuration and other programs' calls are left as they are. Hosts that keep
//!   apt's own cache get no option.
//! * **The parsed lists** (`lists.bin`): reading Debian's lists takes 0.13–0.3 s, once per
//!   process, and every playbook run that asks about a package that is not installed
//!   paid it. The parse is kept with the fingerprint of every file it came from (the
//!   lists, apt's configuration and preferences, dpkg's architectures) and of the program
//!   that wrote it, and used only when all of them are unchanged.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{config_files, AptPaths, FileStamp, Fingerprint, ListsDb};

/// The directory this process keeps its apt files in, made when missing; `None` when no
/// private directory could be had (then nothing is kept).
fn own_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = cache_root()?.join("dynserv-agent").join("apt");
        private_dir(&dir).ok().map(|()| dir)
    })
    .as_deref()
}

/// The `-o` options that give apt-get and apt-cache a binary cache file when the host's
/// configuration turned apt's own off; none otherwise. Decided once per process.
pub fn own_binary_cache_options() -> &'static [String] {
    static OPTIONS: OnceLock<Vec<String>> = OnceLock::new();
    OPTIONS.get_or_init(|| options(&AptPaths::system(), own_dir()))
}

/// [`own_binary_cache_options`] for the apt configuration under `paths` and a cache
/// kept in `dir`.
fn options(paths: &AptPaths, dir: Option<&Path>) -> Vec<String> {
    // Without a directory of our own apt builds its cache in memory, as configured.
    let Some(dir) = dir.filter(|_| binary_cache_disabled(paths)) else {
        return Vec::new();
    };
    vec![
        "-o".into(),
        format!(
            "Dir::Cache::pkgcache={}",
            dir.join("pkgcache.bin").display()
        ),
    ]
}

/// Where the cache directory goes: `/var/cache` for root (the agent), else the user's
/// cache directory (`$XDG_CACHE_HOME`, `~/.cache`), so no user's cache is another's.
fn cache_root() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/cache"));
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })
}

/// Makes `dir` (mode 0700) unless it exists; `Err` unless it is a directory of this user
/// that nobody else can write to, since apt trusts what it finds in the cache.
fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("making it: {e}"))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    // SAFETY: as above.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err("not a directory of this user alone".into());
    }
    Ok(())
}

/// Whether apt's configuration under `paths` sets `Dir::Cache::pkgcache` to nothing (the
/// last setting wins, as apt reads its files in order). Only the one-line form is read;
/// a setting written another way leaves apt as it is.
fn binary_cache_disabled(paths: &AptPaths) -> bool {
    let mut disabled = false;
    for file in config_files(&paths.etc_apt, "apt.conf", "apt.conf.d") {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            if let Some(value) = pkgcache_setting(line) {
                disabled = value.is_empty();
            }
        }
    }
    disabled
}

/// The value a line such as `Dir::Cache::pkgcache "";` gives (without its quotes).
fn pkgcache_setting(line: &str) -> Option<&str> {
    let line = line.trim();
    let key = "dir::cache::pkgcache";
    let head = line.get(..key.len())?;
    if !head.eq_ignore_ascii_case(key) {
        return None;
    }
    let value = line[key.len()..].trim_start();
    // `Dir::Cache::pkgcacheX` is another key; a value follows after blanks or a quote.
    if value.len() == line.len() - key.len() && !value.starts_with('"') {
        return None;
    }
    let value = value.trim_end().trim_end_matches(';').trim_end();
    Some(value.trim_matches('"'))
}

/// What `lists.bin` starts with; the version changes whenever [`ListsDb`] or what it
/// holds does (the program's own fingerprint catches the rest).
const LISTS_MAGIC: &[u8; 8] = b"dsvlst\x00\x01";

/// The parsed lists `lists.bin` holds for `fingerprint`, when it holds them and this
/// program wrote them.
pub(super) fn load_lists(fingerprint: &Fingerprint) -> Option<ListsDb> {
    load_lists_from(&own_dir()?.join("lists.bin"), fingerprint)
}

/// Keeps `db`, parsed from the files of `fingerprint`, in `lists.bin` for the next
/// process. Best effort: a failure only means the next process parses again.
pub(super) fn store_lists(fingerprint: &Fingerprint, db: &ListsDb) {
    if let Some(dir) = own_dir() {
        let _ = store_lists_in(&dir.join("lists.bin"), fingerprint, db);
    }
}

/// The program's own fingerprint: a new build reads nothing an older one wrote.
fn program_stamp() -> Option<FileStamp> {
    FileStamp::of(&std::env::current_exe().ok()?)
}

fn load_lists_from(file: &Path, fingerprint: &Fingerprint) -> Option<ListsDb> {
    let bytes = std::fs::read(file).ok()?;
    let rest = bytes.strip_prefix(LISTS_MAGIC.as_slice())?;
    let (program, rest): (Option<FileStamp>, _) = postcard::take_from_bytes(rest).ok()?;
    if program.is_none() || program != program_stamp() {
        return None;
    }
    let (kept, rest): (Fingerprint, _) = postcard::take_from_bytes(rest).ok()?;
    if kept != *fingerprint {
        return None;
    }
    postcard::from_bytes(rest).ok()
}

fn store_lists_in(file: &Path, fingerprint: &Fingerprint, db: &ListsDb) -> Option<()> {
    let program = Some(program_stamp()?);
    let mut bytes = LISTS_MAGIC.to_vec();
    bytes = postcard::to_extend(&program, bytes).ok()?;
    bytes = postcard::to_extend(fingerprint, bytes).ok()?;
    bytes = postcard::to_extend(db, bytes).ok()?;
    // Written beside and renamed over, so a reader sees the old file or the new one.
    crate::modules::files::atomic_write(file, &bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_with(conf: &[(&str, &str)]) -> (tempfile::TempDir, AptPaths) {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc/apt");
        std::fs::create_dir_all(etc.join("apt.conf.d")).unwrap();
        for (name, text) in conf {
            std::fs::write(etc.join(name), text).unwrap();
        }
        let paths = AptPaths {
            dpkg_dir: root.path().join("var/lib/dpkg"),
            lists_dir: root.path().join("var/lib/apt/lists"),
            etc_apt: etc,
        };
        (root, paths)
    }

    #[test]
    fn settings_are_read_as_apt_reads_them() {
        assert_eq!(pkgcache_setting(r#"Dir::Cache::pkgcache "";"#), Some(""));
        assert_eq!(
            pkgcache_setting(r#"  dir::cache::PkgCache  "" ;"#),
            Some("")
        );
        assert_eq!(
            pkgcache_setting(r#"Dir::Cache::pkgcache "/var/cache/apt/x.bin";"#),
            Some("/var/cache/apt/x.bin")
        );
        assert_eq!(pkgcache_setting(r#"Dir::Cache::srcpkgcache "";"#), None);
        assert_eq!(pkgcache_setting(r#"Dir::Cache::pkgcachefoo "";"#), None);
        assert_eq!(pkgcache_setting("# Dir::Cache::pkgcache \"\";"), None);
    }

    #[test]
    fn an_own_cache_only_where_apt_keeps_none() {
        let docker_clean = "DPkg::Post-Invoke { \"rm -f /var/cache/apt/*.bin || true\"; };\n\
                            Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n";
        let (root, paths) = paths_with(&[("apt.conf.d/docker-clean", docker_clean)]);
        let dir = root.path().join("cache");
        assert_eq!(
            options(&paths, Some(&dir)),
            [
                "-o".to_string(),
                format!("Dir::Cache::pkgcache={}/pkgcache.bin", dir.display())
            ]
        );
        assert!(options(&paths, None).is_empty());

        // A later file that sets a path again wins; no setting at all is apt's default.
        let (root, paths) = paths_with(&[
            ("apt.conf.d/docker-clean", docker_clean),
            (
                "apt.conf.d/zz-keep",
                "Dir::Cache::pkgcache \"pkgcache.bin\";\n",
            ),
        ]);
        assert!(options(&paths, Some(&root.path().join("cache"))).is_empty());
        let (root, paths) = paths_with(&[("apt.conf.d/70debconf", "DPkg::Pre-Install-Pkgs {};\n")]);
        assert!(options(&paths, Some(&root.path().join("cache"))).is_empty());
    }

    #[test]
    fn the_directory_is_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // One that others can write to is refused: apt trusts what it finds there.
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&shared).is_err());
    }

    #[test]
    fn kept_lists_are_read_back_only_for_the_same_files() {
        let root = tempfile::tempdir().unwrap();
        let list = root.path().join("x_Packages");
        std::fs::write(&list, "Package: a\nVersion: 1\n").unwrap();
        let fingerprint = Fingerprint::of(std::slice::from_ref(&list), &[]);
        let mut db = ListsDb::default();
        db.newest.insert("a".into(), "1".into());
        db.provided
            .insert("mail-transport-agent".into(), vec!["postfix".into()]);
        db.undecided_names.insert("nodejs".into());
        let file = root.path().join("lists.bin");
        store_lists_in(&file, &fingerprint, &db).unwrap();

        let back = load_lists_from(&file, &fingerprint).expect("read back");
        assert_eq!(back.newest, db.newest);
        assert_eq!(back.provided, db.provided);
        assert_eq!(back.undecided_names, db.undecided_names);

        // The list changed: the kept parse is not used.
        std::fs::write(&list, "Package: a\nVersion: 2\n").unwrap();
        let changed = Fingerprint::of(&[list], &[]);
        assert!(load_lists_from(&file, &changed).is_none());
        // Nor is a file that is not ours, or cut short.
        std::fs::write(&file, b"something else").unwrap();
        assert!(load_lists_from(&file, &fingerprint).is_none());
    }
}
