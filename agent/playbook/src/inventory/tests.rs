use super::*;
use std::path::Path;

const INI: &str = "\
# a comment
lonely ansible_host=10.0.0.9

[webservers]
web[01:03] http_port=8080
web-extra:2222 role='edge' tags=\"['a', 'b']\"

[dbservers]
db1 ansible_connection=local # a comment

[prod:children]
webservers
dbservers

[webservers:vars]
tier=web
weight=3

[all:vars]
ntp = pool.ntp.org
";

const YAML: &str = "\
all:
  vars:
    ntp: pool.ntp.org
  hosts:
    lonely: {ansible_host: 10.0.0.9}
  children:
    prod:
      children:
        webservers:
          vars: {tier: web, weight: 3}
          hosts:
            web[01:03]: {http_port: 8080}
            web-extra:2222: {role: edge, tags: [a, b]}
        dbservers:
          hosts:
            db1:
";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

fn load_text(name: &str, text: &str) -> Inventory {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), name, text);
    Inventory::load(&path).expect("valid inventory")
}

fn load_error(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), name, text);
    Inventory::load(&path)
        .expect_err("invalid inventory")
        .to_string()
}

fn var(inventory: &Inventory, host: &str, name: &str) -> Option<Value> {
    inventory
        .vars_of(host)
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn groups(inventory: &Inventory) -> Vec<(String, Vec<String>)> {
    inventory.groups_map()
}

fn resolved(mut inventory: Inventory, dirs: &VarsDirs) -> Inventory {
    inventory.resolve_vars(dirs, None).expect("vars resolve");
    inventory
}

/// The example INI and YAML inventories describe the same hosts, groups and variables.
#[test]
fn ini_and_yaml_build_the_same_inventory() {
    for inventory in [load_text("inv.ini", INI), load_text("inv.yml", YAML)] {
        let hosts: Vec<&str> = inventory.host_names().collect();
        assert_eq!(
            hosts,
            ["lonely", "web01", "web02", "web03", "web-extra", "db1"]
        );
        let groups = groups(&inventory);
        let get = |name: &str| {
            groups
                .iter()
                .find(|(g, _)| g == name)
                .map(|(_, h)| h.clone())
                .unwrap_or_else(|| panic!("group {name} in {groups:?}"))
        };
        assert_eq!(get("ungrouped"), ["lonely"]);
        assert_eq!(get("webservers"), ["web01", "web02", "web03", "web-extra"]);
        assert_eq!(get("dbservers"), ["db1"]);
        assert_eq!(get("prod").len(), 5);
        assert_eq!(get("all").len(), 6);
        assert_eq!(
            inventory.group_names("web02"),
            ["prod".to_string(), "webservers".to_string()]
        );
        assert_eq!(inventory.group_names("lonely"), ["ungrouped".to_string()]);
        let inventory = resolved(inventory, &VarsDirs::default());
        assert_eq!(
            var(&inventory, "web02", "http_port"),
            Some(Value::from(8080))
        );
        assert_eq!(var(&inventory, "web02", "tier"), Some(Value::from("web")));
        assert_eq!(var(&inventory, "web02", "weight"), Some(Value::from(3)));
        assert_eq!(var(&inventory, "db1", "tier"), None);
        assert_eq!(
            var(&inventory, "db1", "ntp"),
            Some(Value::from("pool.ntp.org"))
        );
        assert_eq!(
            var(&inventory, "web-extra", "ansible_port"),
            Some(Value::from(2222))
        );
        assert_eq!(
            var(&inventory, "web-extra", "role"),
            Some(Value::from("edge"))
        );
        assert_eq!(
            var(&inventory, "web-extra", "tags"),
            Some(Value::from(vec!["a", "b"]))
        );
    }
}

/// INI values are Python literals where they are one, else text.
#[test]
fn ini_values_follow_literal_eval() {
    let check = |text: &str, expected: Value| {
        assert_eq!(ini::literal_value(text), expected, "{text}");
    };
    check("8080", Value::from(8080));
    check("-3", Value::from(-3));
    check("1.5", Value::from(1.5));
    check("True", Value::from(true));
    check("yes", Value::from("yes"));
    check("'quoted'", Value::from("quoted"));
    check("010", Value::from("010"));
    check(
        "[1, 'a', None]",
        Value::from(vec![Value::from(1), Value::from("a"), Value::from(())]),
    );
    check("[web, db]", Value::from("[web, db]"));
    check("{'k': 2}", Value::from_pairs([("k", Value::from(2))]));
    check("pool.ntp.org", Value::from("pool.ntp.org"));
}

/// Host lines split like shlex with comments: quotes group, `#` ends the line.
#[test]
fn host_lines_split_like_shlex() {
    assert_eq!(
        ini::shell_words("h a=\"x y\" b='z' # c=d").expect("valid"),
        ["h", "a=x y", "b=z"]
    );
    assert!(ini::shell_words("h a=\"open").is_err());
}

/// Ranges expand with their width, letters and steps; oversized ones are refused.
#[test]
fn host_ranges_expand() {
    assert_eq!(
        ranges::expand("web[01:03]").expect("valid"),
        ["web01", "web02", "web03"]
    );
    assert_eq!(
        ranges::expand("db-[a:c]").expect("valid"),
        ["db-a", "db-b", "db-c"]
    );
    assert_eq!(
        ranges::expand("n[0:6:3]").expect("valid"),
        ["n0", "n3", "n6"]
    );
    assert_eq!(ranges::expand("r[1:2]c[1:2]").expect("valid").len(), 4);
    assert!(ranges::expand("web[01:100]").is_err());
    assert!(ranges::expand("web[1:99999999]").is_err());
    assert_eq!(ranges::split_port("h:22"), ("h", Some(22)));
    assert_eq!(ranges::split_port("fe80::1"), ("fe80::1", None));
}

/// Invalid inventories fail with the file, the line and Ansible's message.
#[test]
fn invalid_inventories_are_refused_with_their_line() {
    let cases = [
        ("a.ini", "[web]\nh1\n[prod:children]\nweb\nmissing\n", "a.ini:5: Section [prod:children] includes undefined group 'missing'."),
        ("b.ini", "[ghost:vars]\nx=1\n", "b.ini:1: Section [ghost:vars] not valid for undefined group 'ghost'."),
        ("c.ini", "[web:hosts2]\n", "c.ini:1: Section [web:hosts2] has unknown type: hosts2"),
        ("d.ini", "[web]\nh1 novalue\n", "d.ini:2: Expected key=value host variable assignment, got: novalue"),
        ("e.ini", "[web]\n[web:vars]\njust-a-word\n", "e.ini:3: Expected key=value, got: just-a-word"),
        ("f.ini", "[a:children]\nb\n[b:children]\na\n", "creates a recursive dependency loop"),
        ("g.yml", "all:\n  hosts: [h1, h2]\n", "g.yml:2: Invalid \"hosts\" entry for \"all\" group, requires a dictionary, found \"list\" instead."),
        ("h.yml", "- h1\n", "YAML inventory has invalid structure"),
        ("i.yml", "all:\n  hosts:\n    h1: [x]\n", "expected dictionary"),
        ("j.ini", "[web group]\n", "Invalid section entry"),
    ];
    for (name, text, expected) in cases {
        let message = load_error(name, text);
        assert!(message.contains(expected), "{name}: {message}");
    }
    let missing = Inventory::load("/nonexistent/inventory.ini").expect_err("missing file");
    assert!(missing
        .to_string()
        .starts_with("could not read /nonexistent/inventory.ini"));
}

/// A child group declared after the section naming it, and [group:vars] before its
/// group, are both fine.
#[test]
fn declarations_may_come_later() {
    let inventory = load_text(
        "late.ini",
        "[web:vars]\nx=1\n[prod:children]\nweb\n[web]\nh1\n",
    );
    assert_eq!(
        inventory.group_names("h1"),
        ["prod".to_string(), "web".to_string()]
    );
}

/// A host list and a file without extension are read as Ansible reads them.
#[test]
fn host_lists_and_files_without_extension() {
    let list = Inventory::load("a.example.com,b:2200,").expect("host list");
    assert_eq!(
        list.host_names().collect::<Vec<_>>(),
        ["a.example.com", "b"]
    );
    assert_eq!(list.group_names("b"), ["ungrouped".to_string()]);
    let yaml = load_text("hosts", "all:\n  hosts:\n    y1:\n");
    assert!(yaml.contains_host("y1"));
    let ini = load_text("hosts", "[g]\ni1\n");
    assert_eq!(ini.group_names("i1"), ["g".to_string()]);
}

fn pattern_inventory() -> Inventory {
    load_text(
        "p.ini",
        "solo\n[web]\nweb1\nweb2\nweb3\n[db]\ndb1\nweb3\n[eu:children]\nweb\n[eu]\neu1\n",
    )
}

/// Host patterns select as ansible-core: names, groups, globs, regexes, unions,
/// intersections, exclusions, subscripts, the implicit localhost.
#[test]
fn host_patterns() {
    let inventory = pattern_inventory();
    let check = |pattern: &str, expected: &[&str]| {
        let terms = pattern::split(pattern);
        let selected = pattern::select(&inventory, &terms).expect("valid pattern");
        assert_eq!(selected, expected, "{pattern}");
    };
    check("web1", &["web1"]);
    check("web", &["web1", "web2", "web3"]);
    // Checked against `ansible -i p.ini PATTERN --list-hosts` (ansible-core 2.19).
    check("all", &["solo", "db1", "web3", "eu1", "web1", "web2"]);
    check("*", &["solo", "db1", "web3", "eu1", "web1", "web2"]);
    check("ungrouped", &["solo"]);
    check("eu", &["eu1", "web1", "web2", "web3"]);
    check("web:db", &["web1", "web2", "web3", "db1"]);
    check("web,db", &["web1", "web2", "web3", "db1"]);
    check("web:&db", &["web3"]);
    check("web:!db", &["web1", "web2"]);
    check("!db", &["solo", "eu1", "web1", "web2"]);
    check("web[1-2]*", &["web1", "web2"]);
    check("we?2", &["web2"]);
    check("~(web|db)1", &["web1", "db1"]);
    check("web[0]", &["web1"]);
    check("web[-1]", &["web3"]);
    check("web[1:]", &["web2", "web3"]);
    check("nothing", &[]);
    check("localhost", &["localhost"]);
    // No term at all is `all`, as ansible-core orders patterns (a play refuses an
    // empty `hosts` before it gets here).
    check("", &["solo", "db1", "web3", "eu1", "web1", "web2"]);
    let list = Value::from(vec!["db", "!web3", "solo"]);
    assert_eq!(
        pattern::select(&inventory, &pattern::terms(&list)).expect("valid"),
        ["db1", "solo"]
    );
    let bad = pattern::select(&inventory, &pattern::split("~(unclosed"));
    assert!(bad
        .expect_err("invalid regex")
        .to_string()
        .contains("Invalid host list pattern"));
}

/// The implicit inventory's host also answers to localhost and this machine's names.
#[test]
fn implicit_inventory_host_has_local_aliases() {
    let inventory = Inventory::implicit("web-7");
    for pattern in ["localhost", "127.0.0.1", "all", "ungrouped", "web-7"] {
        let selected = pattern::select(&inventory, &pattern::split(pattern)).expect("valid");
        assert_eq!(selected, ["web-7"], "{pattern}");
    }
    assert_eq!(inventory.group_names("web-7"), ["ungrouped".to_string()]);
    assert!(pattern::select(&inventory, &pattern::split("webservers"))
        .expect("valid")
        .is_empty());
}

/// The run's host: the limit's only host, the inventory's only host, or localhost;
/// a limit matching none or several is an error.
#[test]
fn run_host_follows_the_limit() {
    let inventory = pattern_inventory();
    assert_eq!(run_host(&inventory, Some("web2")).expect("one"), "web2");
    assert_eq!(run_host(&inventory, Some("db:!web")).expect("one"), "db1");
    assert_eq!(run_host(&inventory, None).expect("default"), "localhost");
    let none = run_host(&inventory, Some("nothing")).expect_err("no host");
    assert!(none
        .to_string()
        .contains("leaves us with no hosts to target"));
    let many = run_host(&inventory, Some("web")).expect_err("several hosts");
    assert!(
        many.to_string()
            .contains("selects 3 hosts (web1, web2, web3)"),
        "{many}"
    );
    let single = load_text("one.ini", "[g]\nonly\n");
    assert_eq!(run_host(&single, None).expect("only host"), "only");
    assert!(run_host(&single, Some("localhost")).is_err());
}

/// Group variables apply by depth then name, host variables last; a child group wins
/// over its parent, `ansible_group_priority` over the name order.
#[test]
fn inventory_file_precedence() {
    let inventory = resolved(
        load_text(
            "prec.ini",
            "[all:vars]\nx=all\ny=all\nz=all\nw=all\n[parent:children]\nchild\n[parent:vars]\nx=parent\ny=parent\nz=parent\n[child]\nh1 z=host\n[child:vars]\ny=child\nz=child\n[aaa]\nh1\n[aaa:vars]\nw=aaa\n[zzz]\nh1\n[zzz:vars]\nw=zzz\n",
        ),
        &VarsDirs::default(),
    );
    assert_eq!(var(&inventory, "h1", "x"), Some(Value::from("parent")));
    assert_eq!(var(&inventory, "h1", "y"), Some(Value::from("child")));
    assert_eq!(var(&inventory, "h1", "z"), Some(Value::from("host")));
    assert_eq!(var(&inventory, "h1", "w"), Some(Value::from("zzz")));
    let with_priority = resolved(
        load_text(
            "prio.ini",
            "[aaa]\nh1\n[aaa:vars]\nw=aaa\nansible_group_priority=10\n[zzz]\nh1\n[zzz:vars]\nw=zzz\n",
        ),
        &VarsDirs::default(),
    );
    assert_eq!(var(&with_priority, "h1", "w"), Some(Value::from("aaa")));
}

/// group_vars/ and host_vars/ beside the inventory beat the inventory file, those
/// beside the playbook beat both; every file form is read.
#[test]
fn vars_directories_precedence_and_forms() {
    let root = tempfile::tempdir().expect("temp dir");
    let inv_dir = root.path().join("inv");
    let play_dir = root.path().join("play");
    let source = write(
        &inv_dir,
        "hosts.ini",
        "[web]\nweb1 h=file\n[web:vars]\ng=file\na=file\n[all:vars]\na=file\n",
    );
    write(
        &inv_dir,
        "group_vars/all.yml",
        "a: inv_all\nall_only: inv\n",
    );
    write(
        &inv_dir,
        "group_vars/web.yaml",
        "g: inv_web\nfrom_inv: yes\n",
    );
    write(&inv_dir, "host_vars/web1", "h: inv_host\n");
    write(
        &play_dir,
        "group_vars/web/10-first.yml",
        "g: play_dir_first\nsplit: first\n",
    );
    write(&play_dir, "group_vars/web/20-second.yml", "split: second\n");
    write(&play_dir, "group_vars/web/notes.txt", "split: ignored\n");
    write(&play_dir, "host_vars/web1.yml", "h: play_host\n");
    write(&play_dir, "group_vars/all.json", "{\"json_var\": 1}");
    let inventory = resolved(
        Inventory::load(&source).expect("valid"),
        &VarsDirs::for_run(Some(&source), &play_dir),
    );
    let check = |name: &str, expected: Value| {
        assert_eq!(var(&inventory, "web1", name), Some(expected), "{name}");
    };
    // ansible-core's default order puts group_vars/all above every group's vars of
    // the inventory file ([web:vars] a=file included).
    check("a", Value::from("inv_all"));
    check("all_only", Value::from("inv"));
    check("g", Value::from("play_dir_first"));
    check("from_inv", Value::from(true));
    check("split", Value::from("second"));
    check("h", Value::from("play_host"));
    check("json_var", Value::from(1));
    let bad_root = tempfile::tempdir().expect("temp dir");
    let bad = write(bad_root.path(), "hosts.ini", "h1\n");
    write(bad_root.path(), "group_vars/all.yml", "- not\n- a dict\n");
    let error = Inventory::load(&bad)
        .expect("valid inventory")
        .resolve_vars(&VarsDirs::for_run(Some(&bad), bad_root.path()), None)
        .expect_err("a list is not variables");
    assert!(
        error.to_string().contains("variables must be a dictionary"),
        "{error}"
    );
}

/// A host outside the inventory (the implicit localhost) sees only `all`'s variables.
#[test]
fn implicit_localhost_sees_all_vars_only() {
    let mut inventory = load_text(
        "two.ini",
        "[all:vars]\nshared=1\n[g]\na\nb\n[g:vars]\ng=1\n",
    );
    inventory
        .resolve_vars(&VarsDirs::default(), Some("localhost"))
        .expect("vars");
    assert_eq!(var(&inventory, "localhost", "shared"), Some(Value::from(1)));
    assert_eq!(var(&inventory, "localhost", "g"), None);
    assert!(inventory.group_names("localhost").is_empty());
}

/// inventory_hostname_short keeps IP addresses whole.
#[test]
fn short_names() {
    assert_eq!(short_name("web1.example.com"), "web1");
    assert_eq!(short_name("10.0.0.1"), "10.0.0.1");
}
