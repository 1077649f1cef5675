//! `ansible.builtin.rpm_key`: GPG keys in the RPM database.
//!
//! Ansible's module looks up `rpm` before anything else and fails without it, as on
//! Debian hosts; the native module gives the same failure. Importing and removing
//! keys where `rpm` exists is not implemented natively.

use super::exec::which;
use super::nodejs::missing_executable;
use super::{ArgError, Args, ModuleContext, Outcome};

/// `rpm_key`: `key` (URL, file or key id) `present` or `absent`.
pub fn rpm_key(args: &Args, _ctx: &ModuleContext) -> Result<Outcome, ArgError> {
    args.check_supported(&["state", "key", "fingerprint", "validate_certs"])?;
    args.required("key")?;
    args.choice("state", &["absent", "present"], Some("present"))?;
    args.bool("validate_certs", true)?;
    if which("rpm").is_none() {
        return Ok(missing_executable("rpm"));
    }
    Ok(Outcome::failed(
        "rpm_key: importing or removing RPM keys is not implemented by the native runtime",
    ))
}
