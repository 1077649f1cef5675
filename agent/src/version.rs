//! The version this agent reports: read at run time from the version marker compiled
//! into the binary (see `dynserv_shared::upgrade`), so the control plane can read a
//! binary's version from the file it serves, and a test can make a copy of the agent
//! that reports another version by rewriting the marker's bytes.

use std::sync::OnceLock;

use dynserv_shared::upgrade::{marker_version, version_marker, VERSION_MARKER_LEN};

/// The marker: `DYNSERV-AGENT-VERSION:` + the crate's version + NUL padding. Kept
/// in the binary (`#[used]`) and read through a volatile load, so the compiler never
/// folds the version into the code that reads it.
#[used]
static VERSION_MARKER: [u8; VERSION_MARKER_LEN] = version_marker(env!("CARGO_PKG_VERSION"));

/// The version this binary reports (the marker's; the crate's version when the marker
/// was damaged).
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        // SAFETY: the pointer comes from a reference to a static that lives for the
        // whole program and is properly aligned for its type.
        let marker: [u8; VERSION_MARKER_LEN] = unsafe { std::ptr::read_volatile(&VERSION_MARKER) };
        marker_version(&marker)
            .unwrap_or(env!("CARGO_PKG_VERSION"))
            .to_string()
    })
}

/// `text` cut to at most 80 characters, for messages that quote program output.
pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    /// An unpatched build reports its crate's version.
    #[test]
    fn reports_the_crate_version() {
        assert_eq!(super::version(), env!("CARGO_PKG_VERSION"));
    }
}
