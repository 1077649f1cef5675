//! Host facts (`gather_facts`): the subset of Ansible's `setup` module that playbooks use.
//!
//! Gathering is split into reading raw inputs ([`FactSources`], I/O) and building the
//! fact dict from them ([`build_facts`], pure), so the mapping from `/etc/os-release` to
//! `ansible_distribution` and friends is unit-tested without a particular machine.

use minijinja::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Raw inputs facts are computed from.
#[derive(Debug, Clone, Default)]
pub struct FactSources {
    /// Content of `/etc/os-release`.
    pub os_release: String,
    /// Content of `/etc/debian_version`, if any.
    pub debian_version: Option<String>,
    /// `uname` fields.
    pub nodename: String,
    /// Kernel release.
    pub kernel: String,
    /// Kernel version string.
    pub kernel_version: String,
    /// Machine architecture (`x86_64`).
    pub machine: String,
    /// Content of `/proc/meminfo`.
    pub meminfo: String,
    /// Number of online CPUs.
    pub cpus: usize,
    /// Content of `/proc/cpuinfo`.
    pub cpuinfo: String,
    /// The machine id (`/var/lib/dbus/machine-id`, else `/etc/machine-id`), trimmed.
    pub machine_id: Option<String>,
    /// Content of `/proc/uptime`.
    pub uptime: String,
    /// Which package managers exist (`apt`, `dnf`, ...).
    pub package_managers: Vec<String>,
    /// Whether systemd is the running init.
    pub systemd: bool,
    /// The process environment.
    pub env: Vec<(String, String)>,
    /// Effective user id / gid / name / home / shell.
    pub user: (u32, u32, String, String, String),
    /// Whether running inside a container.
    pub container: Option<String>,
    /// Network, mount, device, DNS and virtualization sources.
    pub host: super::host_facts::HostSources,
    /// Content of `/sys/fs/selinux/enforce` when SELinux is enabled.
    pub selinux_enforce: Option<String>,
}

/// The kernel's node name (`uname -n`), cheap enough to call per play.
pub fn nodename() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| FactSources::read().nodename)
}

impl FactSources {
    /// Reads the sources from the running machine.
    pub fn read() -> FactSources {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the zeroed struct; fields are NUL-terminated.
        let ok = unsafe { libc::uname(&mut uts) } == 0;
        let field = |f: &[libc::c_char]| -> String {
            // SAFETY: uname NUL-terminates its fields.
            unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        };
        let (nodename, kernel, kernel_version, machine) = if ok {
            (
                field(&uts.nodename),
                field(&uts.release),
                field(&uts.version),
                field(&uts.machine),
            )
        } else {
            Default::default()
        };
        let package_managers = [
            ("apt", "/usr/bin/apt-get"),
            ("dnf", "/usr/bin/dnf"),
            ("yum", "/usr/bin/yum"),
            ("apk", "/sbin/apk"),
            ("zypper", "/usr/bin/zypper"),
            ("pacman", "/usr/bin/pacman"),
        ]
        .iter()
        .filter(|(_, path)| Path::new(path).exists())
        .map(|(name, _)| name.to_string())
        .collect();
        // SAFETY: plain libc id getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let user_name = super::modules::files::user_name(uid);
        let (home, shell) = passwd_home_shell(&user_name);
        let container = if Path::new("/.dockerenv").exists() {
            Some("docker".to_string())
        } else if Path::new("/run/.containerenv").exists() {
            Some("podman".to_string())
        } else {
            None
        };
        FactSources {
            os_release: read("/etc/os-release"),
            debian_version: std::fs::read_to_string("/etc/debian_version").ok(),
            nodename,
            kernel,
            kernel_version,
            machine,
            meminfo: read("/proc/meminfo"),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpuinfo: read("/proc/cpuinfo"),
            machine_id: ["/var/lib/dbus/machine-id", "/etc/machine-id"]
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_string())
                .find(|t| !t.is_empty()),
            uptime: read("/proc/uptime"),
            package_managers,
            systemd: Path::new("/run/systemd/system").exists(),
            env: std::env::vars().collect(),
            user: (uid, gid, user_name, home, shell),
            container,
            host: super::host_facts::HostSources::read(&read("/proc/cpuinfo")),
            selinux_enforce: std::fs::read_to_string("/sys/fs/selinux/enforce").ok(),
        }
    }
}

fn passwd_home_shell(user: &str) -> (String, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 7 && fields[0] == user {
            return (fields[5].to_string(), fields[6].to_string());
        }
    }
    (std::env::var("HOME").unwrap_or_default(), "/bin/sh".into())
}

fn os_release_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches('"').trim_matches('\'').to_string(),
            )
        })
        .collect()
}

/// Ansible's `distribution` name for an os-release `ID`.
fn distribution_name(id: &str, name: &str) -> String {
    match id {
        "ubuntu" => "Ubuntu".into(),
        "debian" => "Debian".into(),
        "centos" => "CentOS".into(),
        "rhel" => "RedHat".into(),
        "fedora" => "Fedora".into(),
        "rocky" => "Rocky".into(),
        "almalinux" => "AlmaLinux".into(),
        "alpine" => "Alpine".into(),
        "arch" => "Archlinux".into(),
        "amzn" => "Amazon".into(),
        "opensuse-leap" | "opensuse-tumbleweed" | "opensuse" => "openSUSE Leap".into(),
        "linuxmint" => "Linux Mint".into(),
        "raspbian" => "Debian".into(),
        "" => "NA".into(),
        _ => name.split_whitespace().next().unwrap_or(id).to_string(),
    }
}

/// Ansible's `os_family` for a distribution.
fn os_family(distribution: &str, id_like: &str) -> String {
    match distribution {
        "Ubuntu" | "Debian" | "Linux Mint" | "Kali" | "Pop!_OS" => "Debian".into(),
        "CentOS" | "RedHat" | "Fedora" | "Rocky" | "AlmaLinux" | "Amazon" | "OracleLinux" => {
            "RedHat".into()
        }
        "Alpine" => "Alpine".into(),
        "Archlinux" => "Archlinux".into(),
        "openSUSE Leap" | "SLES" => "Suse".into(),
        _ if id_like.contains("debian") || id_like.contains("ubuntu") => "Debian".into(),
        _ if id_like.contains("rhel") || id_like.contains("fedora") => "RedHat".into(),
        other => other.to_string(),
    }
}

/// `memory_mb` as ansible-core's Linux hardware facts: real, nocache (free counting
/// buffers and page cache) and swap, in MiB.
fn memory_mb(meminfo: &str) -> Value {
    let mb = |key: &str| meminfo_mb(meminfo, key);
    let (total, free) = (mb("MemTotal"), mb("MemFree"));
    let nocache_free = free + mb("Buffers") + mb("Cached");
    let (swap_total, swap_free) = (mb("SwapTotal"), mb("SwapFree"));
    Value::from_pairs([
        (
            "real",
            Value::from_pairs([
                ("total", Value::from(total)),
                ("used", Value::from(total - free)),
                ("free", Value::from(free)),
            ]),
        ),
        (
            "nocache",
            Value::from_pairs([
                ("free", Value::from(nocache_free)),
                ("used", Value::from(total - nocache_free)),
            ]),
        ),
        (
            "swap",
            Value::from_pairs([
                ("total", Value::from(swap_total)),
                ("free", Value::from(swap_free)),
                ("used", Value::from(swap_total - swap_free)),
                ("cached", Value::from(mb("SwapCached"))),
            ]),
        ),
    ])
}

/// `selinux`: `disabled` without SELinux, else enabled with its current mode (the
/// runtime reads the kernel's state; it needs no Python binding for it).
fn selinux(enforce: Option<&str>) -> Value {
    match enforce.map(str::trim) {
        None => Value::from_pairs([("status", Value::from("disabled"))]),
        Some(mode) => Value::from_pairs([
            ("status", Value::from("enabled")),
            (
                "mode",
                Value::from(if mode == "1" {
                    "enforcing"
                } else {
                    "permissive"
                }),
            ),
            (
                "config_mode",
                Value::from(if mode == "1" {
                    "enforcing"
                } else {
                    "permissive"
                }),
            ),
        ]),
    }
}

fn meminfo_mb(meminfo: &str, key: &str) -> i64 {
    meminfo
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<i64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Builds the fact dict (keys without the `ansible_` prefix, as in `ansible_facts`).
pub fn build_facts(
    sources: &FactSources,
    now: chrono::DateTime<chrono::Local>,
) -> Vec<(String, Value)> {
    let cpu = cpu_facts(&sources.cpuinfo, sources.cpus);
    let release = os_release_map(&sources.os_release);
    let get = |k: &str| release.get(k).cloned().unwrap_or_default();
    let distribution = distribution_name(&get("ID"), &get("NAME"));
    let mut version = get("VERSION_ID");
    if distribution == "Debian" {
        if let Some(v) = sources
            .debian_version
            .as_deref()
            .map(str::trim)
            .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        {
            version = v.to_string();
        }
    }
    let major = version.split('.').next().unwrap_or_default().to_string();
    let family = os_family(&distribution, &get("ID_LIKE"));
    let pkg_mgr = sources
        .package_managers
        .first()
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    let service_mgr = if sources.systemd {
        "systemd"
    } else {
        "service"
    };
    let hostname = sources
        .nodename
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let (uid, gid, user, home, shell) = &sources.user;
    let env = Value::from_pairs(
        sources
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str()))),
    );
    let date_time = Value::from_pairs([
        ("year", now.format("%Y").to_string()),
        ("month", now.format("%m").to_string()),
        ("day", now.format("%d").to_string()),
        ("hour", now.format("%H").to_string()),
        ("minute", now.format("%M").to_string()),
        ("second", now.format("%S").to_string()),
        ("date", now.format("%Y-%m-%d").to_string()),
        ("time", now.format("%H:%M:%S").to_string()),
        (
            "iso8601",
            now.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        ),
        ("epoch", now.timestamp().to_string()),
        ("tz", now.format("%Z").to_string()),
        ("weekday", now.format("%A").to_string()),
    ]);
    let mut facts: Vec<(String, Value)> = vec![
        ("hostname".into(), Value::from(hostname.clone())),
        ("nodename".into(), Value::from(sources.nodename.clone())),
        ("fqdn".into(), Value::from(sources.nodename.clone())),
        ("system".into(), Value::from("Linux")),
        ("kernel".into(), Value::from(sources.kernel.clone())),
        (
            "kernel_version".into(),
            Value::from(sources.kernel_version.clone()),
        ),
        ("architecture".into(), Value::from(sources.machine.clone())),
        ("machine".into(), Value::from(sources.machine.clone())),
        ("distribution".into(), Value::from(distribution.clone())),
        ("distribution_version".into(), Value::from(version.clone())),
        ("distribution_major_version".into(), Value::from(major)),
        (
            "distribution_release".into(),
            Value::from(get("VERSION_CODENAME")),
        ),
        ("os_family".into(), Value::from(family)),
        ("pkg_mgr".into(), Value::from(pkg_mgr)),
        ("service_mgr".into(), Value::from(service_mgr)),
        (
            "memtotal_mb".into(),
            Value::from(meminfo_mb(&sources.meminfo, "MemTotal")),
        ),
        (
            "memfree_mb".into(),
            Value::from(meminfo_mb(&sources.meminfo, "MemFree")),
        ),
        (
            "swaptotal_mb".into(),
            Value::from(meminfo_mb(&sources.meminfo, "SwapTotal")),
        ),
        (
            "swapfree_mb".into(),
            Value::from(meminfo_mb(&sources.meminfo, "SwapFree")),
        ),
        ("memory_mb".into(), memory_mb(&sources.meminfo)),
        (
            "selinux".into(),
            selinux(sources.selinux_enforce.as_deref()),
        ),
        ("processor_vcpus".into(), Value::from(cpu.vcpus)),
        ("processor_count".into(), Value::from(cpu.count)),
        ("processor_cores".into(), Value::from(cpu.cores)),
        (
            "processor_threads_per_core".into(),
            Value::from(cpu.threads_per_core),
        ),
        ("processor_nproc".into(), Value::from(sources.cpus)),
        (
            "uptime_seconds".into(),
            Value::from(uptime_seconds(&sources.uptime)),
        ),
        ("env".into(), env),
        ("user_id".into(), Value::from(user.clone())),
        ("user_uid".into(), Value::from(*uid)),
        ("user_gid".into(), Value::from(*gid)),
        ("user_dir".into(), Value::from(home.clone())),
        ("user_shell".into(), Value::from(shell.clone())),
        ("date_time".into(), date_time),
        (
            "domain".into(),
            Value::from(
                sources
                    .nodename
                    .split_once('.')
                    .map(|(_, d)| d)
                    .unwrap_or_default(),
            ),
        ),
        (
            "lsb".into(),
            Value::from_pairs([
                ("id", Value::from(distribution)),
                ("release", Value::from(version)),
                ("codename", Value::from(get("VERSION_CODENAME"))),
            ]),
        ),
    ];
    facts.extend(super::host_facts::host_facts(
        &sources.host,
        sources.container.as_deref(),
    ));
    if let Some(machine_id) = &sources.machine_id {
        facts.push(("machine_id".into(), Value::from(machine_id.clone())));
    }
    facts
}

/// Processor counts as Ansible's Linux hardware collector derives them from
/// `/proc/cpuinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuFacts {
    /// Sockets (distinct `physical id`s), else the logical processors.
    count: usize,
    /// Cores per socket (`cpu cores` of the first socket), else 1.
    cores: usize,
    /// `siblings` over `cpu cores`, else 1.
    threads_per_core: usize,
    /// threads per core × cores × sockets.
    vcpus: usize,
}

/// Ansible's rule (module_utils/facts/hardware/linux.py, `get_cpu_facts`, x86 and
/// most other architectures): sockets are keyed by `physical id` and hold `cpu cores`,
/// cores are keyed by `core id` and hold `siblings`; the first of each is used. Without
/// sockets the logical processors (`processor` lines, as Ansible counts them on ARM)
/// are the count; with no `processor` line at all, the online CPU count stands in.
fn cpu_facts(cpuinfo: &str, online: usize) -> CpuFacts {
    let mut logical = 0usize;
    let mut sockets: Vec<(String, usize)> = Vec::new();
    let mut cores: Vec<(String, usize)> = Vec::new();
    let mut physical_id = String::from("0");
    let mut core_id = String::from("0");
    let set = |list: &mut Vec<(String, usize)>, key: &str, value: usize| match list
        .iter_mut()
        .find(|(k, _)| k == key)
    {
        Some(entry) => entry.1 = value,
        None => list.push((key.to_string(), value)),
    };
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => logical += 1,
            "physical id" => {
                physical_id = value.to_string();
                if !sockets.iter().any(|(k, _)| k == value) {
                    sockets.push((value.to_string(), 1));
                }
            }
            "core id" => {
                core_id = value.to_string();
                // Ansible checks the socket table here, not the core table.
                if !sockets.iter().any(|(k, _)| k == value) {
                    set(&mut cores, value, 1);
                }
            }
            "cpu cores" => set(&mut sockets, &physical_id, value.parse().unwrap_or(0)),
            "siblings" => set(&mut cores, &core_id, value.parse().unwrap_or(0)),
            _ => {}
        }
    }
    if logical == 0 {
        logical = online.max(1);
    }
    let count = if sockets.is_empty() {
        logical
    } else {
        sockets.len()
    };
    let per_socket = sockets.first().map(|(_, v)| *v).unwrap_or(0);
    let cores_per_socket = if per_socket > 0 { per_socket } else { 1 };
    // Python's round(): halves to even.
    let siblings = cores.first().map(|(_, v)| *v).unwrap_or(1);
    let threads_per_core = (siblings as f64 / cores_per_socket as f64).round_ties_even() as usize;
    CpuFacts {
        count,
        cores: cores_per_socket,
        threads_per_core,
        vcpus: threads_per_core * cores_per_socket * count,
    }
}

/// Whole seconds since boot, from the first field of `/proc/uptime`.
fn uptime_seconds(uptime: &str) -> i64 {
    uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| s as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_for(os_release: &str, debian_version: Option<&str>) -> BTreeMap<String, Value> {
        let sources = FactSources {
            os_release: os_release.into(),
            debian_version: debian_version.map(String::from),
            nodename: "web1.example.com".into(),
            package_managers: vec!["apt".into()],
            systemd: true,
            ..Default::default()
        };
        build_facts(&sources, chrono::Local::now())
            .into_iter()
            .collect()
    }

    /// os-release maps to Ansible's distribution facts.
    #[test]
    fn distribution_facts() {
        let ubuntu = facts_for(
            "ID=ubuntu\nVERSION_ID=\"24.04\"\nVERSION_CODENAME=noble\nID_LIKE=debian\n",
            None,
        );
        assert_eq!(ubuntu["distribution"], Value::from("Ubuntu"));
        assert_eq!(ubuntu["distribution_major_version"], Value::from("24"));
        assert_eq!(ubuntu["os_family"], Value::from("Debian"));
        assert_eq!(ubuntu["hostname"], Value::from("web1"));
        let debian = facts_for(
            "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
            Some("12.7\n"),
        );
        assert_eq!(debian["distribution_version"], Value::from("12.7"));
        assert_eq!(debian["distribution_release"], Value::from("bookworm"));
        assert_eq!(debian["pkg_mgr"], Value::from("apt"));
        assert_eq!(debian["service_mgr"], Value::from("systemd"));
    }

    /// Sockets, cores and threads come from /proc/cpuinfo as Ansible counts them, so
    /// processor_count is sockets and processor_cores is cores per socket (they were
    /// swapped: count held the logical CPUs and cores was always 1).
    #[test]
    fn processor_counts() {
        let cpu = |physical: &str, core: &str| {
            format!("processor\t: 0\nphysical id\t: {physical}\nsiblings\t: 4\ncore id\t\t: {core}\ncpu cores\t: 2\n\n")
        };
        // One socket, two cores, two threads each (4 logical CPUs).
        let text = [cpu("0", "0"), cpu("0", "0"), cpu("0", "1"), cpu("0", "1")].concat();
        let expected = CpuFacts {
            count: 1,
            cores: 2,
            threads_per_core: 2,
            vcpus: 4,
        };
        assert_eq!(cpu_facts(&text, 4), expected);
        // No topology (many ARM and some virtual machines): logical CPUs count as sockets.
        let arm = "processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\nBogoMIPS\t: 50\n";
        let expected = CpuFacts {
            count: 2,
            cores: 1,
            threads_per_core: 1,
            vcpus: 2,
        };
        assert_eq!(cpu_facts(arm, 2), expected);
        assert_eq!(uptime_seconds("8584.82 6877.39\n"), 8584);
    }
}
