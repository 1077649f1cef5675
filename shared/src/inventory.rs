//! The inventory a playbook job carries ([`crate::proto::JobKind::Playbook`]'s
//! `inventory`): the hosts of the project the job's server belongs to, their groups and
//! the host and group variables, in a compact form made for large projects.
//!
//! Every host name is written once (`hosts`); groups name their members by index into
//! that list, and only hosts and groups that have variables carry them. A project of
//! 10,000 servers named like `web-00001` and each in two groups takes about 250 KB,
//! well inside the frame limit ([`crate::frame::MAX_FRAME_LEN`]); the control plane
//! refuses to send one larger than [`MAX_INVENTORY_BYTES`].
//!
//! [`JobInventory::to_ansible`] turns it into Ansible's YAML inventory structure (as
//! JSON), which the agent writes to a private file for `dynserv-agent playbook -i`, and
//! which the control plane shows to users as the inventory a run gets.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most bytes a job's inventory may take as JSON; the control plane refuses a run
/// whose project's inventory is larger (the job must fit one frame with its playbook).
pub const MAX_INVENTORY_BYTES: usize = 448 * 1024;

/// Variables of a host or a group: names to JSON values.
pub type Vars = serde_json::Map<String, serde_json::Value>;

/// A project's hosts, groups and variables (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobInventory {
    /// Every host's name (its `inventory_hostname`), each once.
    pub hosts: Vec<String>,
    /// Group name → the indexes into `hosts` of its members. `all` and `ungrouped` are
    /// implicit, as in Ansible.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<u32>>,
    /// Group name → its variables (`all` for every host), for groups that have any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_vars: BTreeMap<String, Vars>,
    /// Host name → its variables, for hosts that have any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_vars: BTreeMap<String, Vars>,
    /// Host name → the facts last gathered on it (see [`crate::proto::GatheredFacts`]),
    /// for hosts the control plane has facts of: the playbook sees them as
    /// `hostvars[host].ansible_facts` and `hostvars[host].ansible_*`. They are not
    /// part of [`JobInventory::to_ansible`] (an inventory has no facts); the agent
    /// hands them to the run beside it. Left out when empty, so older agents read
    /// the same inventory as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, crate::proto::GatheredFacts>,
    /// The index into `hosts` from which no host's facts are carried, because with
    /// them the inventory would pass [`MAX_INVENTORY_BYTES`]: the agent says so in a
    /// job whose playbook reads `hostvars`. Left out when every host's fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_left_out_from: Option<u32>,
}

impl JobInventory {
    /// The inventory in Ansible's YAML inventory structure, as JSON (which is YAML):
    /// `{"all": {"vars": …, "hosts": {name: vars or null}, "children": {group:
    /// {"vars": …, "hosts": {name: null}}}}}`. A host's variables appear once, under
    /// `all.hosts`; a member index past the host list is left out.
    pub fn to_ansible(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut all_hosts = Map::new();
        for name in &self.hosts {
            let vars = self
                .host_vars
                .get(name)
                .filter(|v| !v.is_empty())
                .map_or(Value::Null, |v| Value::Object(v.clone()));
            all_hosts.insert(name.clone(), vars);
        }
        let mut children = Map::new();
        let mut named: Vec<&String> = self.groups.keys().collect();
        named.extend(
            self.group_vars
                .keys()
                .filter(|g| !self.groups.contains_key(*g)),
        );
        for group in named {
            if group == "all" {
                continue;
            }
            let mut entry = Map::new();
            if let Some(vars) = self.group_vars.get(group).filter(|v| !v.is_empty()) {
                entry.insert("vars".into(), Value::Object(vars.clone()));
            }
            let members: Map<String, Value> = self
                .groups
                .get(group)
                .into_iter()
                .flatten()
                .filter_map(|i| self.hosts.get(*i as usize))
                .map(|name| (name.clone(), Value::Null))
                .collect();
            if !members.is_empty() {
                entry.insert("hosts".into(), Value::Object(members));
            }
            children.insert(group.clone(), Value::Object(entry));
        }
        let mut all = Map::new();
        if let Some(vars) = self.group_vars.get("all").filter(|v| !v.is_empty()) {
            all.insert("vars".into(), Value::Object(vars.clone()));
        }
        if !all_hosts.is_empty() {
            all.insert("hosts".into(), Value::Object(all_hosts));
        }
        if !children.is_empty() {
            all.insert("children".into(), Value::Object(children));
        }
        json!({ "all": all })
    }
}

/// A [`JobInventory`] shared by every job of a fan-out: the jobs of one run over
/// 10,000 servers hold one copy between them, not one each. On the wire it is the
/// inventory itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedInventory(pub Arc<JobInventory>);

impl Serialize for SharedInventory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedInventory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        JobInventory::deserialize(deserializer).map(|i| SharedInventory(Arc::new(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> JobInventory {
        let mut inventory = JobInventory {
            hosts: vec!["web-1".into(), "db-1".into()],
            ..Default::default()
        };
        inventory.groups.insert("web".into(), vec![0]);
        inventory.groups.insert("shop".into(), vec![0, 1]);
        inventory.group_vars.insert(
            "web".into(),
            json!({"port": 80}).as_object().unwrap().clone(),
        );
        inventory.group_vars.insert(
            "all".into(),
            json!({"ntp": "pool"}).as_object().unwrap().clone(),
        );
        inventory.host_vars.insert(
            "db-1".into(),
            json!({"role": "primary"}).as_object().unwrap().clone(),
        );
        inventory
    }

    /// The Ansible structure lists each host once with its variables, and each group
    /// with its members and variables.
    #[test]
    fn to_ansible_builds_the_yaml_inventory_structure() {
        assert_eq!(
            sample().to_ansible(),
            json!({"all": {
                "vars": {"ntp": "pool"},
                "hosts": {"web-1": null, "db-1": {"role": "primary"}},
                "children": {
                    "shop": {"hosts": {"web-1": null, "db-1": null}},
                    "web": {"vars": {"port": 80}, "hosts": {"web-1": null}},
                },
            }})
        );
    }

    /// A shared inventory is the inventory itself on the wire, both ways.
    #[test]
    fn shared_inventory_is_transparent_on_the_wire() {
        let shared = SharedInventory(Arc::new(sample()));
        let text = serde_json::to_string(&shared).unwrap();
        assert_eq!(text, serde_json::to_string(&sample()).unwrap());
        assert_eq!(
            serde_json::from_str::<SharedInventory>(&text).unwrap(),
            shared
        );
    }
}
