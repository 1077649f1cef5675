//! YAML (and JSON) inventories, as ansible-core's `yaml` inventory plugin reads them:
//!
//! ```yaml
//! all:
//!   vars: {ntp: pool.ntp.org}
//!   hosts:
//!     web1: {ansible_host: 10.0.0.5}
//!   children:
//!     webservers:
//!       hosts:
//!         web[02:03]:
//! ```
//!
//! Each top-level key is a group; a group holds `vars`, `hosts` (names or ranges to
//! their variables) and `children` (groups, nested the same way), each a mapping.

use super::{ranges, Inventory, InventoryError};
use crate::yaml::{Node, NodeKind};

/// Parses YAML `text` (from `path`, for messages) into `inventory`.
pub(super) fn parse_into(
    inventory: &mut Inventory,
    text: &str,
    path: &str,
) -> Result<(), InventoryError> {
    let node = crate::yaml::parse_one(text).map_err(|e| InventoryError::Line {
        path: path.to_string(),
        line: e.pos.line,
        message: e.message.clone(),
    })?;
    read_root(inventory, &node, path)
}

/// The document of `text` when it reads as a YAML inventory (a mapping), for a source
/// file whose name does not say its format.
pub(super) fn as_yaml_inventory(text: &str) -> Option<Node> {
    crate::yaml::parse_one(text)
        .ok()
        .filter(|node| matches!(node.kind, NodeKind::Map(_)))
}

/// Reads a parsed YAML inventory.
pub(super) fn read_root(
    inventory: &mut Inventory,
    node: &Node,
    path: &str,
) -> Result<(), InventoryError> {
    let reader = Reader { path };
    let entries = match &node.kind {
        NodeKind::Null => return Err(reader.invalid(node, "Parsed empty YAML file")),
        NodeKind::Map(entries) => entries,
        _ => {
            return Err(reader.invalid(
                node,
                &format!(
                    "YAML inventory has invalid structure, it should be a dictionary, got: {}",
                    node.type_name()
                ),
            ))
        }
    };
    if node.get("plugin").is_some() {
        return Err(reader.invalid(
            node,
            "Plugin configuration YAML file, not YAML inventory (inventory plugins are not supported)",
        ));
    }
    for (name, data) in entries {
        reader.group(inventory, name, data)?;
    }
    Ok(())
}

struct Reader<'a> {
    path: &'a str,
}

impl Reader<'_> {
    fn invalid(&self, node: &Node, message: &str) -> InventoryError {
        InventoryError::Line {
            path: self.path.to_string(),
            line: node.pos.line,
            message: message.to_string(),
        }
    }

    /// One group and what it holds; returns its index.
    fn group(
        &self,
        inventory: &mut Inventory,
        name: &Node,
        data: &Node,
    ) -> Result<Option<usize>, InventoryError> {
        let name_text = name.scalar_text().unwrap_or_default();
        if !matches!(data.kind, NodeKind::Map(_) | NodeKind::Null) {
            // ansible-core warns and skips such an entry.
            return Ok(None);
        }
        if name_text.is_empty() {
            return Err(self.invalid(name, "invalid empty group name"));
        }
        let group = inventory.add_group(&name_text);
        let Some(sections) = data.as_map() else {
            return Ok(Some(group));
        };
        for (key, value) in sections {
            let section = key.scalar_text().unwrap_or_default();
            let entries = match &value.kind {
                NodeKind::Null => continue,
                NodeKind::Map(entries) => entries.clone(),
                // A lone string names one entry, as ansible-core reads it.
                NodeKind::Str { .. } => vec![(value.clone(), null_at(value))],
                _ if matches!(section.as_str(), "vars" | "hosts" | "children") => {
                    return Err(self.invalid(
                        value,
                        &format!(
                            "Invalid \"{section}\" entry for \"{name_text}\" group, requires a dictionary, found \"{}\" instead.",
                            value.type_name()
                        ),
                    ))
                }
                _ => continue,
            };
            match section.as_str() {
                "vars" => self.vars(inventory, group, &entries)?,
                "hosts" => self.hosts(inventory, group, &entries)?,
                "children" => self.children(inventory, group, &entries)?,
                _ => {}
            }
        }
        Ok(Some(group))
    }

    fn vars(
        &self,
        inventory: &mut Inventory,
        group: usize,
        entries: &[(Node, Node)],
    ) -> Result<(), InventoryError> {
        for (key, value) in entries {
            inventory
                .set_group_var(
                    group,
                    &key.scalar_text().unwrap_or_default(),
                    value.to_value(),
                )
                .map_err(|m| self.invalid(value, &m))?;
        }
        Ok(())
    }

    fn hosts(
        &self,
        inventory: &mut Inventory,
        group: usize,
        entries: &[(Node, Node)],
    ) -> Result<(), InventoryError> {
        for (key, value) in entries {
            let Some(pattern) = key.as_str() else {
                return Err(self.invalid(
                    key,
                    &format!(
                        "Host pattern {} must be a string. Enclose integers/floats in quotation marks.",
                        key.scalar_text().unwrap_or_default()
                    ),
                ));
            };
            let vars = match &value.kind {
                NodeKind::Null => &[][..],
                NodeKind::Map(vars) => vars.as_slice(),
                _ => {
                    return Err(self.invalid(
                        value,
                        &format!(
                            "Invalid data from file, expected dictionary and got a {} for host {pattern}",
                            value.type_name()
                        ),
                    ))
                }
            };
            let (name, port) = ranges::split_port(pattern);
            for host in ranges::expand(name).map_err(|m| self.invalid(key, &m))? {
                let index = inventory
                    .add_host(&host, Some(group))
                    .map_err(|m| self.invalid(key, &m))?;
                if let Some(port) = port {
                    inventory.set_host_var(index, "ansible_port", port.into());
                }
                for (var, value) in vars {
                    let var = var.scalar_text().unwrap_or_default();
                    inventory.set_host_var(index, &var, value.to_value());
                }
            }
        }
        Ok(())
    }

    fn children(
        &self,
        inventory: &mut Inventory,
        group: usize,
        entries: &[(Node, Node)],
    ) -> Result<(), InventoryError> {
        for (name, data) in entries {
            if let Some(child) = self.group(inventory, name, data)? {
                inventory
                    .add_child(group, child)
                    .map_err(|m| self.invalid(name, &m))?;
            }
        }
        Ok(())
    }
}

fn null_at(node: &Node) -> Node {
    Node {
        kind: NodeKind::Null,
        pos: node.pos,
    }
}
