//! A script's files: the small tree (roles/, templates/, files/, group_vars/, …) that
//! travels with a playbook, stored with its script on the control plane and written
//! beside the playbook by the agent before it runs it.
//!
//! The path rules live here because both sides apply them: the control plane refuses a
//! bad path on save, and the agent refuses it again before it writes anything, so a
//! tree from an older or a compromised control plane can never write outside the job's
//! directory.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most files in one tree.
pub const MAX_FILES: usize = 300;
/// Most bytes of a tree and its playbook together, as they travel (text as it is,
/// binary files base64-encoded): a job is one frame of at most
/// [`crate::frame::MAX_FRAME_LEN`] bytes, which must also hold the project's inventory
/// ([`crate::inventory::MAX_INVENTORY_BYTES`]) and the job's variables.
pub const MAX_TREE_BYTES: usize = 512 * 1024;
// A playbook job carries both: with 64 KiB for the rest (variables, secrets), it fits
// in one frame.
const _: () = assert!(
    MAX_TREE_BYTES + crate::inventory::MAX_INVENTORY_BYTES + 64 * 1024
        <= crate::frame::MAX_FRAME_LEN
);

/// Longest path in a tree.
pub const MAX_PATH_LEN: usize = 255;
/// Deepest path in a tree (directories and the file).
pub const MAX_DEPTH: usize = 10;
/// The name the agent gives the playbook itself beside its tree; no file may take it.
pub const PLAYBOOK_FILE: &str = "playbook.yml";

/// One file of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFile {
    /// Relative path with `/` separators (see [`check_path`]).
    pub path: String,
    /// The content: the text itself, or the bytes base64-encoded (standard) when
    /// `base64` is set (a file that is not UTF-8).
    pub content: String,
    /// `content` is base64.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base64: bool,
}

impl TreeFile {
    /// A file from its bytes: as text when they are UTF-8, else base64.
    pub fn from_bytes(path: impl Into<String>, bytes: Vec<u8>) -> TreeFile {
        match String::from_utf8(bytes) {
            Ok(content) => TreeFile {
                path: path.into(),
                content,
                base64: false,
            },
            Err(e) => {
                use base64::Engine as _;
                TreeFile {
                    path: path.into(),
                    content: base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                    base64: true,
                }
            }
        }
    }

    /// The file's bytes; `None` when `content` is not valid base64.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        if self.base64 {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(self.content.as_bytes())
                .ok()
        } else {
            Some(self.content.as_bytes().to_vec())
        }
    }

    /// Whether the file holds `needle` (a text file is searched without a copy).
    pub fn contains(&self, needle: &str) -> bool {
        if needle.is_empty() {
            return true;
        }
        if self.base64 {
            self.bytes()
                .is_some_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        } else {
            self.content.contains(needle)
        }
    }

    /// The file's size once decoded.
    pub fn size(&self) -> usize {
        if self.base64 {
            self.content.len() / 4 * 3
        } else {
            self.content.len()
        }
    }
}

/// A tree shared by every job that carries it: a fan-out to thousands of servers holds
/// one copy, not one per job. Serialized as the list of files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files(pub Arc<Vec<TreeFile>>);

impl Files {
    pub fn new(files: Vec<TreeFile>) -> Files {
        Files(Arc::new(files))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, TreeFile> {
        self.0.iter()
    }
}

impl Serialize for Files {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_slice().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Files {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Files, D::Error> {
        Vec::<TreeFile>::deserialize(deserializer).map(Files::new)
    }
}

/// Checks one path of a tree: relative, `/`-separated, no `.` or `..` component, no
/// empty component (so no leading, trailing or doubled `/`), no backslash or control
/// character, at most [`MAX_PATH_LEN`] bytes and [`MAX_DEPTH`] components, and not the
/// playbook's own name. The message says what is wrong, for people.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a file needs a path".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("a path is at most {MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return Err("a path is relative to the playbook (no leading /)".into());
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return Err("a path has no backslash or control character".into());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return Err(format!("a path is at most {MAX_DEPTH} levels deep"));
    }
    for part in &parts {
        match *part {
            "" => return Err("a path has no empty part (no doubled or trailing /)".into()),
            "." | ".." => return Err("a path has no . or .. part".into()),
            _ => {}
        }
    }
    if path == PLAYBOOK_FILE {
        return Err(format!(
            "{PLAYBOOK_FILE} is the playbook itself (its body); give the file another name"
        ));
    }
    Ok(())
}

/// Bytes `text` takes in a job: as a JSON string, escapes and quotes included.
pub fn wire_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(text.len() * 6, |s| s.len())
}

/// Checks a whole tree: every path (see [`check_path`]), no path twice, no path that is
/// also a directory of another (`a` and `a/b`), at most [`MAX_FILES`] files, and the
/// tree with its playbook at most [`MAX_TREE_BYTES`] as they travel (JSON-escaped;
/// `playbook_len` is the playbook's [`wire_len`]). The error names the file it is
/// about, when there is one.
pub fn check_tree(files: &[TreeFile], playbook_len: usize) -> Result<(), (Option<String>, String)> {
    if files.len() > MAX_FILES {
        return Err((None, format!("a script has at most {MAX_FILES} files")));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = playbook_len;
    for file in files {
        check_path(&file.path).map_err(|m| (Some(file.path.clone()), m))?;
        if !seen.insert(file.path.as_str()) {
            return Err((Some(file.path.clone()), "this path is given twice".into()));
        }
        if file.base64 && file.bytes().is_none() {
            return Err((
                Some(file.path.clone()),
                "the content is not valid base64".into(),
            ));
        }
        bytes += wire_len(&file.content) + wire_len(&file.path);
    }
    for path in &seen {
        let mut dir = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(part);
            if seen.contains(dir.as_str()) {
                return Err((
                    Some(dir.clone()),
                    format!("{dir} is a file and also the directory of {path}"),
                ));
            }
        }
    }
    if bytes > MAX_TREE_BYTES {
        return Err((
            None,
            format!(
                "the playbook and its files are {} KiB, more than {} KiB (a job travels to \
                 the agent in one message of at most 1 MiB)",
                bytes.div_ceil(1024),
                MAX_TREE_BYTES / 1024
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text file is searched as it is, a binary one once decoded.
    #[test]
    fn files_are_searched_as_their_bytes() {
        let text = TreeFile::from_bytes(
            "roles/lb/templates/haproxy.cfg",
            b"{{ hostvars[h] }}".to_vec(),
        );
        let binary = TreeFile::from_bytes("files/blob", b"\xff hostvars \xfe".to_vec());
        assert!(binary.base64);
        assert!(text.contains("hostvars") && binary.contains("hostvars"));
        assert!(!text.contains("groups") && !binary.contains("groups"));
        assert!(
            text.contains("") && binary.contains(""),
            "as str::contains does"
        );
    }

    fn file(path: &str, content: &str) -> TreeFile {
        TreeFile {
            path: path.into(),
            content: content.into(),
            base64: false,
        }
    }

    #[test]
    fn paths_stay_inside_the_tree() {
        let deep = "a/".repeat(11);
        let long = "x".repeat(256);
        for good in [
            "roles/web/tasks/main.yml",
            "templates/nginx.conf.j2",
            "files/.env",
            "group_vars/all.yml",
            "a b/c-d_e.f",
        ] {
            assert_eq!(check_path(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "roles/../../x",
            "roles/./x",
            "roles//x",
            "roles/x/",
            "a\\b",
            "a\nb",
            "playbook.yml",
            deep.trim_end_matches('/'),
            &long,
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_tree_has_unique_paths_no_file_as_directory_and_a_size_limit() {
        assert_eq!(
            check_tree(&[file("a/b", "1"), file("a/c", "2")], 10),
            Ok(())
        );
        let twice = check_tree(&[file("a", "1"), file("a", "2")], 0).unwrap_err();
        assert_eq!(twice.0.as_deref(), Some("a"));
        let shadow = check_tree(&[file("a/b/c", "1"), file("a/b", "2")], 0).unwrap_err();
        assert_eq!(shadow.0.as_deref(), Some("a/b"));
        let big = "x".repeat(MAX_TREE_BYTES);
        assert!(check_tree(&[file("big", &big)], 0)
            .unwrap_err()
            .1
            .contains("KiB"));
        let bad64 = TreeFile {
            path: "f".into(),
            content: "not base64!".into(),
            base64: true,
        };
        assert!(check_tree(&[bad64], 0).is_err());
        let many: Vec<TreeFile> = (0..=MAX_FILES)
            .map(|i| file(&format!("f{i}"), ""))
            .collect();
        assert!(check_tree(&many, 0).is_err());
    }

    #[test]
    fn binary_files_travel_as_base64_and_shared_trees_serialize_as_lists() {
        let binary = TreeFile::from_bytes("files/blob", vec![0xff, 0x00, 0x10]);
        assert!(binary.base64);
        assert_eq!(binary.bytes(), Some(vec![0xff, 0x00, 0x10]));
        let text = TreeFile::from_bytes("t", b"hello".to_vec());
        assert!(!text.base64);
        let files = Files::new(vec![text.clone(), binary.clone()]);
        let json = serde_json::to_string(&files).unwrap();
        assert!(json.starts_with('['), "{json}");
        let back: Files = serde_json::from_str(&json).unwrap();
        assert_eq!(back, files);
    }
}
