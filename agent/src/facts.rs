//! Host facts and live load figures, read from `/proc` and `statvfs` with no extra
//! dependencies. Any figure that cannot be read is reported as empty or zero rather
//! than failing: facts are informative, never a reason to stay offline.
//!
//! Also the two identities that tell copies of one agent apart: [`host_id`] (the
//! machine) and [`instance_id`] (the process).

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

/// Environment variable that replaces the machine's host id (see [`host_id`]), used
/// verbatim: for tests that play several machines on one, and for hosts whose machine
/// id is shared on purpose (containers from one image).
pub const HOST_ID_ENV: &str = "DYNSERV_AGENT_HOST_ID";

/// Longest host id the agent sends (an override is cut there); the control plane
/// refuses longer ones.
pub const MAX_HOST_ID_LEN: usize = 128;

/// The key of the host id hash. `machine-id(5)` asks applications never to expose the
/// machine id itself but a keyed hash of it with a key of their own.
const HOST_ID_KEY: &[u8] = b"dynserv-agent host id v1";

/// A stable identity of this machine: the [`HOST_ID_ENV`] override, else a keyed hash
/// of `/etc/machine-id` (or D-Bus's copy of it) and the firmware's product UUID when
/// it can be read (a clone made from a disk snapshot often keeps the machine id, but
/// runs in another virtual machine). Empty when the machine has neither. It never
/// lives in the agent's state directory, so a copy of that directory on another
/// machine reports that machine's id.
pub fn host_id() -> String {
    if let Ok(value) = std::env::var(HOST_ID_ENV) {
        let value = value.trim();
        if !value.is_empty() {
            let mut end = value.len().min(MAX_HOST_ID_LEN);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            return value[..end].to_string();
        }
    }
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .into_iter()
        .map(read_trimmed)
        .find(|id| !id.is_empty())
        .unwrap_or_default();
    host_id_of(&machine_id, &read_trimmed("/sys/class/dmi/id/product_uuid"))
}

/// The host id of a machine id and a product UUID (either may be empty): 32 hex digits
/// of `SHA-256(key, machine id, product UUID)`, or empty when both are.
fn host_id_of(machine_id: &str, product_uuid: &str) -> String {
    use sha2::{Digest, Sha256};
    if machine_id.is_empty() && product_uuid.is_empty() {
        return String::new();
    }
    let mut hash = Sha256::new();
    for part in [HOST_ID_KEY, machine_id.as_bytes(), product_uuid.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(&hash.finalize()[..16])
}

/// A random id for this agent process, drawn once at start: two processes sharing one
/// enrolled identity differ in it even on one machine.
pub fn instance_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
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
        agent_version: crate::version::version().to_string(),
    }
}

/// Busy and total jiffies of all CPUs from the `cpu ` line of a `/proc/stat` text
/// (idle and iowait count as not busy; guest time is already inside user and nice).
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// CPU use between two readings of `/proc/stat`: each heartbeat reports the busy
/// share of the time since the previous one.
#[derive(Debug, Default)]
pub struct CpuSampler {
    previous: Option<(u64, u64)>,
}

impl CpuSampler {
    /// The busy percentage since the last call (`None` the first time, or when
    /// `/proc/stat` cannot be read).
    pub fn sample(&mut self) -> Option<f64> {
        let now = cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)?;
        self.next(now)
    }

    fn next(&mut self, (busy, total): (u64, u64)) -> Option<f64> {
        let (prev_busy, prev_total) = self.previous.replace((busy, total))?;
        let elapsed = total.checked_sub(prev_total).filter(|t| *t > 0)?;
        let worked = busy.saturating_sub(prev_busy).min(elapsed);
        Some((worked as f64 * 1000.0 / elapsed as f64).round() / 10.0)
    }
}

/// Collects the live figures of a heartbeat.
pub fn load(running_jobs: u32, cpu: &mut CpuSampler) -> Load {
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
        cpu_percent: cpu.sample(),
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

    /// The host id is a stable hash that depends on both machine id and product UUID,
    /// and is empty only when the machine has neither.
    #[test]
    fn host_id_hashes_the_machine() {
        let a = host_id_of("3d1219c7c4c5404aaa1f6d2a48adfda4", "");
        assert_eq!(a.len(), 32);
        assert!(
            !a.contains("3d1219c7"),
            "the machine id itself is not exposed"
        );
        assert_eq!(a, host_id_of("3d1219c7c4c5404aaa1f6d2a48adfda4", ""));
        assert_ne!(
            a,
            host_id_of("3d1219c7c4c5404aaa1f6d2a48adfda4", "uuid-of-vm-2")
        );
        assert_ne!(a, host_id_of("another-machine", ""));
        // Field boundaries count: the parts are not simply concatenated.
        assert_ne!(host_id_of("ab", "c"), host_id_of("a", "bc"));
        assert_eq!(host_id_of("", ""), "");
        assert_ne!(instance_id(), instance_id());
        assert_eq!(instance_id().len(), 32);
    }

    /// On Linux the real facts are filled in.
    #[test]
    fn real_facts() {
        let facts = collect();
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.disk_bytes > 0);
        assert!(!facts.kernel.is_empty());
        let mut cpu = CpuSampler::default();
        assert!(load(0, &mut cpu).memory_available > 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = load(0, &mut cpu).cpu_percent;
        assert!(
            second.is_none_or(|c| (0.0..=100.0).contains(&c)),
            "{second:?}"
        );
    }

    /// CPU use is the busy share of the jiffies between two readings; the first
    /// reading, a malformed line or a counter that went backwards gives none.
    #[test]
    fn cpu_percent_from_stat_deltas() {
        let first = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n";
        let second = "cpu  250 0 150 850 150 0 0 0 0 0\n";
        assert_eq!(cpu_times(first), Some((200, 1000)));
        let mut sampler = CpuSampler::default();
        assert_eq!(sampler.next(cpu_times(first).unwrap()), None);
        // 200 busy of 400 elapsed jiffies.
        assert_eq!(sampler.next(cpu_times(second).unwrap()), Some(50.0));
        assert_eq!(
            sampler.next(cpu_times(second).unwrap()),
            None,
            "no time passed"
        );
        assert_eq!(sampler.next((0, 10)), None, "counters went backwards");
        assert_eq!(cpu_times("intr 1 2 3\n"), None);
    }
}
