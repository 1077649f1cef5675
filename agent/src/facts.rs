//! Host facts and live load figures, read from `/proc` and `statvfs` with no extra
//! dependencies. Any figure that cannot be read is reported as empty or zero rather
//! than failing: facts are informative, never a reason to stay offline.

use std::path::Path;

use dynserv_shared::proto::{Facts, Load};

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The value of `key` in a `/proc/meminfo`-style text, in bytes.
fn meminfo_bytes(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// `PRETTY_NAME` from an os-release text.
fn os_pretty_name(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim_matches('"').to_string())
    })
}

/// Total and available bytes of the file system holding `path`.
fn disk_space(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return (0, 0);
    }
    let frsize = stat.f_frsize as u64;
    (stat.f_blocks as u64 * frsize, stat.f_bavail as u64 * frsize)
}

fn uptime_s() -> u64 {
    read_trimmed("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| s as u64)
        .unwrap_or(0)
}

/// Collects the host facts.
pub fn collect() -> Facts {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| os_pretty_name(&t))
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    Facts {
        hostname: read_trimmed("/proc/sys/kernel/hostname"),
        os,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        arch: std::env::consts::ARCH.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: meminfo_bytes(&meminfo, "MemTotal"),
        disk_bytes: disk_space(Path::new("/")).0,
        uptime_s: uptime_s(),
        agent_version: dynserv_shared::VERSION.to_string(),
    }
}

/// Collects the live figures of a heartbeat.
pub fn load(running_jobs: u32) -> Load {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let loadavg = read_trimmed("/proc/loadavg");
    let mut parts = loadavg
        .split_whitespace()
        .map(|s| s.parse::<f64>().unwrap_or(0.0));
    let load = [
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
    ];
    let (disk_total, disk_available) = disk_space(Path::new("/"));
    Load {
        load,
        memory_total: meminfo_bytes(&meminfo, "MemTotal"),
        memory_available: meminfo_bytes(&meminfo, "MemAvailable"),
        disk_total,
        disk_available,
        uptime_s: uptime_s(),
        running_jobs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// meminfo and os-release lines are parsed; missing keys give zero / none.
    #[test]
    fn parses_proc_texts() {
        let meminfo = "MemTotal:       16318064 kB\nMemFree: 1 kB\nMemAvailable:   8000000 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), 16318064 * 1024);
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable"), 8000000 * 1024);
        assert_eq!(meminfo_bytes(meminfo, "Mem"), 0);
        let os = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_pretty_name("NAME=x"), None);
    }

    /// On Linux the real facts are filled in.
    #[test]
    fn real_facts() {
        let facts = collect();
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.disk_bytes > 0);
        assert!(!facts.kernel.is_empty());
        assert!(load(0).memory_available > 0);
    }
}
