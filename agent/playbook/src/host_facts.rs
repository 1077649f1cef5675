//! Network, mount, device, DNS and virtualization facts, read from `/proc` and `/sys`
//! (and `statvfs` for mount sizes) without Python.
//!
//! [`HostSources::read`] is the I/O edge; [`host_facts`] turns the texts into Ansible's
//! facts (`interfaces`, `<iface>`, `default_ipv4`, `mounts`, `devices`, `dns`,
//! `virtualization_role`) as plain data, testable with canned texts.
//!
//! What does not live here: the OS, CPU and user facts (`facts`).

use minijinja::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// One network interface as `/sys/class/net/<name>` describes it.
#[derive(Debug, Clone, Default)]
pub struct SysInterface {
    /// The interface name.
    pub name: String,
    /// `address`.
    pub macaddress: String,
    /// `mtu`.
    pub mtu: i64,
    /// `flags` & IFF_UP.
    pub up: bool,
    /// `type` (ARPHRD number).
    pub kind: u32,
}

/// One block device as `/sys/block/<name>` describes it.
#[derive(Debug, Clone, Default)]
pub struct SysBlockDevice {
    /// The device name (`sda`).
    pub name: String,
    /// `size`, in 512-byte sectors.
    pub sectors: u64,
    /// `queue/logical_block_size`.
    pub sectorsize: u64,
    /// `device/model`, trimmed.
    pub model: Option<String>,
    /// `device/vendor`, trimmed.
    pub vendor: Option<String>,
    /// `removable`.
    pub removable: String,
    /// `queue/rotational`.
    pub rotational: String,
}

/// The texts and readings the host facts come from.
#[derive(Debug, Clone, Default)]
pub struct HostSources {
    /// `/proc/net/route`.
    pub route: String,
    /// `/proc/net/fib_trie`.
    pub fib_trie: String,
    /// `/sys/class/net/*`.
    pub interfaces: Vec<SysInterface>,
    /// `/proc/mounts`.
    pub mounts: String,
    /// Total and available bytes per mount point (`statvfs`).
    pub mount_sizes: BTreeMap<String, (u64, u64)>,
    /// `/sys/block/*`.
    pub devices: Vec<SysBlockDevice>,
    /// `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// Whether `/proc/cpuinfo` has the `hypervisor` flag.
    pub hypervisor: bool,
    /// `/sys/class/dmi/id/product_name` and `sys_vendor`, joined.
    pub dmi: String,
}

impl HostSources {
    /// Reads the sources from the running machine.
    pub fn read(cpuinfo: &str) -> HostSources {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mounts = read("/proc/mounts");
        let mount_sizes = parse_mounts(&mounts)
            .iter()
            .filter_map(|m| Some((m.mount.clone(), statvfs_sizes(&m.mount)?)))
            .collect();
        HostSources {
            route: read("/proc/net/route"),
            fib_trie: read("/proc/net/fib_trie"),
            interfaces: read_interfaces(),
            mounts,
            mount_sizes,
            devices: read_block_devices(),
            resolv_conf: read("/etc/resolv.conf"),
            hypervisor: cpuinfo
                .lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor")),
            dmi: format!(
                "{} {}",
                read("/sys/class/dmi/id/product_name").trim(),
                read("/sys/class/dmi/id/sys_vendor").trim()
            ),
        }
    }
}

fn read_interfaces() -> Vec<SysInterface> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut interfaces: Vec<SysInterface> = entries
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let attr = |a: &str| {
                std::fs::read_to_string(entry.path().join(a))
                    .map(|t| t.trim().to_string())
                    .unwrap_or_default()
            };
            let flags =
                u32::from_str_radix(attr("flags").trim_start_matches("0x"), 16).unwrap_or(0);
            SysInterface {
                macaddress: attr("address"),
                mtu: attr("mtu").parse().unwrap_or(0),
                up: flags & 1 == 1,
                kind: attr("type").parse().unwrap_or(0),
                name,
            }
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    interfaces
}

fn read_block_devices() -> Vec<SysBlockDevice> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut devices: Vec<SysBlockDevice> = entries
        .flatten()
        .map(|entry| {
            let attr = |a: &str| {
                std::fs::read_to_string(entry.path().join(a))
                    .ok()
                    .map(|t| t.trim().to_string())
            };
            SysBlockDevice {
                name: entry.file_name().to_string_lossy().into_owned(),
                sectors: attr("size").and_then(|s| s.parse().ok()).unwrap_or(0),
                sectorsize: attr("queue/logical_block_size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(512),
                model: attr("device/model"),
                vendor: attr("device/vendor"),
                removable: attr("removable").unwrap_or_else(|| "0".into()),
                rotational: attr("queue/rotational").unwrap_or_else(|| "0".into()),
            }
        })
        .collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    devices
}

/// Total and available bytes of the file system mounted at `path`.
fn statvfs_sizes(path: &str) -> Option<(u64, u64)> {
    let c_path = std::ffi::CString::new(path).ok()?;
    // SAFETY: statvfs fills the zeroed struct for a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((block * stat.f_blocks as u64, block * stat.f_bavail as u64))
}

/// One route of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    interface: String,
    destination: Ipv4Addr,
    gateway: Ipv4Addr,
    mask: Ipv4Addr,
}

/// `/proc/net/route` prints addresses as little-endian hex.
fn route_address(hex: &str) -> Option<Ipv4Addr> {
    let value = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(value.swap_bytes()))
}

fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Route {
                interface: fields.first()?.to_string(),
                destination: route_address(fields.get(1)?)?,
                gateway: route_address(fields.get(2)?)?,
                mask: route_address(fields.get(7)?)?,
            })
        })
        .collect()
}

/// The machine's own IPv4 addresses: the `/32 host LOCAL` entries of the fib trie.
fn parse_local_addresses(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut addresses = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last = address.parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = last {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
        }
    }
    addresses
}

/// An IPv4 address with the network it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Address {
    interface: String,
    address: Ipv4Addr,
    mask: Ipv4Addr,
}

impl Address {
    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & u32::from(self.mask))
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.mask))
    }

    fn to_value(&self) -> Value {
        Value::from_pairs([
            ("address", Value::from(self.address.to_string())),
            ("broadcast", Value::from(self.broadcast().to_string())),
            ("netmask", Value::from(self.mask.to_string())),
            ("network", Value::from(self.network().to_string())),
            (
                "prefix",
                Value::from(u32::from(self.mask).count_ones().to_string()),
            ),
        ])
    }
}

/// Assigns each local address to the interface of the most specific connected route
/// that contains it (loopback addresses to `lo`).
fn interface_addresses(routes: &[Route], locals: &[Ipv4Addr]) -> Vec<Address> {
    locals
        .iter()
        .filter_map(|address| {
            if address.is_loopback() {
                return Some(Address {
                    interface: "lo".into(),
                    address: *address,
                    mask: Ipv4Addr::new(255, 0, 0, 0),
                });
            }
            routes
                .iter()
                .filter(|r| r.gateway.is_unspecified() && u32::from(r.mask) != 0)
                .filter(|r| u32::from(*address) & u32::from(r.mask) == u32::from(r.destination))
                .max_by_key(|r| u32::from(r.mask).count_ones())
                .map(|r| Address {
                    interface: r.interface.clone(),
                    address: *address,
                    mask: r.mask,
                })
        })
        .collect()
}

/// Ansible's name for an ARPHRD interface type.
fn interface_type(kind: u32) -> &'static str {
    match kind {
        1 => "ether",
        512 => "ppp",
        772 => "loopback",
        65534 => "tunnel",
        _ => "unknown",
    }
}

fn interface_value(interface: &SysInterface, address: Option<&Address>) -> Value {
    let mut fields = vec![
        ("device", Value::from(interface.name.clone())),
        ("active", Value::from(interface.up)),
        ("type", Value::from(interface_type(interface.kind))),
        ("mtu", Value::from(interface.mtu)),
    ];
    if interface.kind != 772 && !interface.macaddress.is_empty() {
        fields.push(("macaddress", Value::from(interface.macaddress.clone())));
    }
    if let Some(address) = address {
        fields.push(("ipv4", address.to_value()));
    }
    Value::from_pairs(fields)
}

fn default_ipv4(routes: &[Route], addresses: &[Address], interfaces: &[SysInterface]) -> Value {
    let Some(default) = routes
        .iter()
        .find(|r| u32::from(r.destination) == 0 && u32::from(r.mask) == 0)
    else {
        return Value::from_pairs(Vec::<(String, Value)>::new());
    };
    let mut fields = vec![
        ("gateway", Value::from(default.gateway.to_string())),
        ("interface", Value::from(default.interface.clone())),
        ("alias", Value::from(default.interface.clone())),
    ];
    if let Some(address) = addresses.iter().find(|a| a.interface == default.interface) {
        for (key, value) in [
            ("address", address.address.to_string()),
            ("broadcast", address.broadcast().to_string()),
            ("netmask", address.mask.to_string()),
            ("network", address.network().to_string()),
            ("prefix", u32::from(address.mask).count_ones().to_string()),
        ] {
            fields.push((key, Value::from(value)));
        }
    }
    if let Some(interface) = interfaces.iter().find(|i| i.name == default.interface) {
        fields.push(("macaddress", Value::from(interface.macaddress.clone())));
        fields.push(("mtu", Value::from(interface.mtu)));
        fields.push(("type", Value::from(interface_type(interface.kind))));
    }
    Value::from_pairs(fields)
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    device: String,
    mount: String,
    fstype: String,
    options: String,
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/mounts`.
fn unescape_mount_field(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|c| u8::from_str_radix(c, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The mounts Ansible reports: those of real devices (a path, or `host:/path`).
fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mount = Mount {
                device: unescape_mount_field(fields.first()?),
                mount: unescape_mount_field(fields.get(1)?),
                fstype: fields.get(2)?.to_string(),
                options: fields.get(3)?.to_string(),
            };
            let real = mount.device.starts_with('/') || mount.device.contains(":/");
            (real && mount.fstype != "none").then_some(mount)
        })
        .collect()
}

fn mounts_value(sources: &HostSources) -> Value {
    Value::from(
        parse_mounts(&sources.mounts)
            .into_iter()
            .map(|m| {
                let (total, available) =
                    sources.mount_sizes.get(&m.mount).copied().unwrap_or((0, 0));
                Value::from_pairs([
                    ("mount", Value::from(m.mount)),
                    ("device", Value::from(m.device)),
                    ("fstype", Value::from(m.fstype)),
                    ("options", Value::from(m.options)),
                    ("size_total", Value::from(total)),
                    ("size_available", Value::from(available)),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

/// `nameservers`, `search`, `domain` and `options` of resolv.conf, as Ansible reads it.
fn dns_value(resolv_conf: &str) -> Value {
    let mut nameservers = Vec::new();
    let mut search = Vec::new();
    let mut fields: Vec<(&str, Value)> = Vec::new();
    let mut options = Vec::new();
    for line in resolv_conf.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["nameserver", address, ..] => nameservers.push(address.to_string()),
            ["search", domains @ ..] => search = domains.iter().map(|d| d.to_string()).collect(),
            ["domain", domain, ..] => fields.push(("domain", Value::from(domain.to_string()))),
            ["options", list @ ..] => options.extend(list.iter().map(|o| o.to_string())),
            _ => {}
        }
    }
    if !nameservers.is_empty() {
        fields.push(("nameservers", Value::from(nameservers)));
    }
    if !search.is_empty() {
        fields.push(("search", Value::from(search)));
    }
    if !options.is_empty() {
        let pairs: Vec<(String, Value)> = options
            .iter()
            .map(|o| match o.split_once(':') {
                Some((k, v)) => (k.to_string(), Value::from(v)),
                None => (o.clone(), Value::from(true)),
            })
            .collect();
        fields.push(("options", Value::from_pairs(pairs)));
    }
    Value::from_pairs(fields)
}

/// Ansible's `bytes_to_human`: two decimals and a binary unit.
fn bytes_to_human(bytes: u64) -> String {
    let units = ["bytes", "KB", "MB", "GB", "TB", "PB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < units.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.2} {}", units[unit])
}

fn devices_value(devices: &[SysBlockDevice]) -> Value {
    Value::from_pairs(
        devices
            .iter()
            .map(|d| {
                let optional =
                    |v: &Option<String>| v.clone().map(Value::from).unwrap_or(Value::from(()));
                (
                    d.name.clone(),
                    Value::from_pairs([
                        ("sectors", Value::from(d.sectors.to_string())),
                        ("sectorsize", Value::from(d.sectorsize.to_string())),
                        ("size", Value::from(bytes_to_human(d.sectors * 512))),
                        ("model", optional(&d.model)),
                        ("vendor", optional(&d.vendor)),
                        ("removable", Value::from(d.removable.clone())),
                        ("rotational", Value::from(d.rotational.clone())),
                    ]),
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// `virtualization_role` and `virtualization_type`: a container or a hypervisor makes
/// this machine a guest; otherwise Ansible reports `NA`.
fn virtualization(sources: &HostSources, container: Option<&str>) -> (String, String) {
    if let Some(container) = container {
        return ("guest".into(), container.into());
    }
    let dmi = sources.dmi.to_lowercase();
    let kind = [
        ("kvm", "kvm"),
        ("qemu", "kvm"),
        ("vmware", "VMware"),
        ("virtualbox", "virtualbox"),
        ("xen", "xen"),
        ("hyper-v", "VirtualPC"),
        ("openstack", "openstack"),
    ]
    .iter()
    .find(|(needle, _)| dmi.contains(needle))
    .map(|(_, kind)| kind.to_string());
    match (kind, sources.hypervisor) {
        (Some(kind), _) => ("guest".into(), kind),
        (None, true) => ("guest".into(), "NA".into()),
        (None, false) => ("NA".into(), "NA".into()),
    }
}

/// The host facts (without the `ansible_` prefix).
pub fn host_facts(sources: &HostSources, container: Option<&str>) -> Vec<(String, Value)> {
    let routes = parse_routes(&sources.route);
    let addresses = interface_addresses(&routes, &parse_local_addresses(&sources.fib_trie));
    let mut facts: Vec<(String, Value)> = vec![(
        "interfaces".into(),
        Value::from(
            sources
                .interfaces
                .iter()
                .map(|i| i.name.clone())
                .collect::<Vec<_>>(),
        ),
    )];
    for interface in &sources.interfaces {
        let address = addresses.iter().find(|a| a.interface == interface.name);
        facts.push((
            interface.name.replace(['-', ':', '.'], "_"),
            interface_value(interface, address),
        ));
    }
    facts.push((
        "default_ipv4".into(),
        default_ipv4(&routes, &addresses, &sources.interfaces),
    ));
    facts.push((
        "all_ipv4_addresses".into(),
        Value::from(
            addresses
                .iter()
                .filter(|a| !a.address.is_loopback())
                .map(|a| a.address.to_string())
                .collect::<Vec<_>>(),
        ),
    ));
    facts.push(("mounts".into(), mounts_value(sources)));
    facts.push(("devices".into(), devices_value(&sources.devices)));
    facts.push(("dns".into(), dns_value(&sources.resolv_conf)));
    let (role, kind) = virtualization(sources, container);
    facts.push(("virtualization_role".into(), Value::from(role)));
    facts.push(("virtualization_type".into(), Value::from(kind)));
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 4
           |-- 127.0.0.1
              /32 host LOCAL
           |-- 172.17.0.1
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
           |-- 192.0.2.2
              /32 host LOCAL
";

    fn sources() -> HostSources {
        HostSources {
            route: ROUTE.into(),
            fib_trie: FIB_TRIE.into(),
            interfaces: vec![
                SysInterface {
                    name: "eth0".into(),
                    macaddress: "02:42:ac:11:00:02".into(),
                    mtu: 1500,
                    up: true,
                    kind: 1,
                },
                SysInterface {
                    name: "lo".into(),
                    macaddress: "00:00:00:00:00:00".into(),
                    mtu: 65536,
                    up: true,
                    kind: 772,
                },
            ],
            mounts: "proc /proc proc rw 0 0\n/dev/sda1 /mnt/my\\040disk ext4 rw,relatime 0 0\n"
                .into(),
            mount_sizes: [("/mnt/my disk".to_string(), (1000, 400))].into(),
            devices: vec![SysBlockDevice {
                name: "sda".into(),
                sectors: 41_943_040,
                sectorsize: 512,
                model: Some("QEMU HARDDISK".into()),
                vendor: None,
                removable: "0".into(),
                rotational: "1".into(),
            }],
            resolv_conf:
                "# comment\nnameserver 10.0.0.53\nnameserver 1.1.1.1\nsearch example.com lan\n"
                    .into(),
            hypervisor: true,
            dmi: "KVM QEMU".into(),
        }
    }

    fn fact(facts: &[(String, Value)], name: &str) -> Value {
        facts
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no fact {name}"))
    }

    fn text(value: &Value, path: &[&str]) -> String {
        let mut current = value.clone();
        for key in path {
            current = current.get_attr(key).unwrap_or_default();
        }
        current.to_string()
    }

    /// Interfaces get their address, netmask and network from the route table.
    #[test]
    fn network_facts() {
        let facts = host_facts(&sources(), None);
        assert_eq!(fact(&facts, "interfaces").to_string(), "['eth0', 'lo']");
        let eth0 = fact(&facts, "eth0");
        assert_eq!(text(&eth0, &["ipv4", "address"]), "192.0.2.2");
        assert_eq!(text(&eth0, &["ipv4", "netmask"]), "255.255.255.0");
        assert_eq!(text(&eth0, &["ipv4", "network"]), "192.0.2.0");
        assert_eq!(text(&eth0, &["macaddress"]), "02:42:ac:11:00:02");
        assert_eq!(text(&eth0, &["type"]), "ether");
        assert_eq!(text(&eth0, &["active"]), "True");
        assert_eq!(text(&fact(&facts, "lo"), &["ipv4", "address"]), "127.0.0.1");
        let default = fact(&facts, "default_ipv4");
        assert_eq!(text(&default, &["gateway"]), "192.0.2.1");
        assert_eq!(text(&default, &["interface"]), "eth0");
        assert_eq!(text(&default, &["address"]), "192.0.2.2");
    }

    /// Mounts of real devices, unescaped, with their sizes; DNS, devices, virtualization.
    #[test]
    fn mounts_dns_devices_and_virtualization() {
        let facts = host_facts(&sources(), None);
        let mounts = fact(&facts, "mounts");
        assert_eq!(mounts.len(), Some(1));
        let first = mounts.get_item(&Value::from(0)).unwrap_or_default();
        assert_eq!(text(&first, &["mount"]), "/mnt/my disk");
        assert_eq!(text(&first, &["size_available"]), "400");
        let dns = fact(&facts, "dns");
        assert_eq!(text(&dns, &["nameservers"]), "['10.0.0.53', '1.1.1.1']");
        assert_eq!(text(&dns, &["search"]), "['example.com', 'lan']");
        assert_eq!(text(&fact(&facts, "devices"), &["sda", "size"]), "20.00 GB");
        assert_eq!(fact(&facts, "virtualization_role").to_string(), "guest");
        assert_eq!(fact(&facts, "virtualization_type").to_string(), "kvm");
        let in_docker = host_facts(&sources(), Some("docker"));
        assert_eq!(
            fact(&in_docker, "virtualization_type").to_string(),
            "docker"
        );
    }
}
