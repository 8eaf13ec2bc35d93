//! The replicated state's nodes, remembering which records changed: the managers' table of
//! current node certificates (`net::revoke`) is brought up to date from the nodes an entry
//! changed, not by comparing every node after every entry (a join into a swarm of 30,000
//! nodes compared 30,000).
//!
//! ```text
//!  Nodes { map: id → Node, changed ids }
//!  insert / remove / get_mut ─► the ID is marked changed ─► take_changed (state machine, after
//!                                                           each applied batch) ─► wake
//! ```
//!
//! Reads go through `Deref` to the map; every write goes through the three methods here, so
//! no change can go unmarked. The marks are neither serialized nor compared.

use std::collections::{BTreeMap, HashSet};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::model::Node;

/// Nodes by ID, with the IDs changed since the state machine last asked.
#[derive(Clone, Debug, Default)]
pub struct Nodes {
    map: BTreeMap<String, Node>,
    changed: HashSet<String>,
}

impl Nodes {
    /// Stores `node` under `id`.
    pub fn insert(&mut self, id: String, node: Node) -> Option<Node> {
        self.mark(&id);
        self.map.insert(id, node)
    }

    /// Removes the node `id`.
    pub fn remove(&mut self, id: &str) -> Option<Node> {
        self.mark(id);
        self.map.remove(id)
    }

    /// The node `id`, to change (marked changed whether or not it is written).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Node> {
        if self.map.contains_key(id) {
            self.mark(id);
        }
        self.map.get_mut(id)
    }

    fn mark(&mut self, id: &str) {
        if !self.changed.contains(id) {
            self.changed.insert(id.to_string());
        }
    }

    /// The IDs of the nodes stored, changed or removed since the last call.
    pub fn take_changed(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.changed)
    }
}

impl Deref for Nodes {
    type Target = BTreeMap<String, Node>;
    fn deref(&self) -> &BTreeMap<String, Node> {
        &self.map
    }
}

impl PartialEq for Nodes {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<'a> IntoIterator for &'a Nodes {
    type Item = (&'a String, &'a Node);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Node>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl From<BTreeMap<String, Node>> for Nodes {
    fn from(map: BTreeMap<String, Node>) -> Self {
        Nodes {
            map,
            changed: HashSet::new(),
        }
    }
}

impl Serialize for Nodes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, Node>::deserialize(d).map(Nodes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    #[test]
    fn every_write_marks_its_node_once_and_reads_mark_nothing() {
        let mut n = Nodes::default();
        n.insert("a".into(), fixtures::node("a"));
        n.insert("b".into(), fixtures::node("b"));
        assert_eq!(n.take_changed(), HashSet::from(["a".into(), "b".into()]));
        assert!(n.take_changed().is_empty());
        assert!(n.get("a").is_some() && n.values().count() == 2);
        assert!(n.take_changed().is_empty(), "reads mark nothing");
        if let Some(a) = n.get_mut("a") {
            a.cert_serial = "02".into();
        }
        assert!(n.get_mut("gone").is_none());
        n.remove("b");
        assert_eq!(n.take_changed(), HashSet::from(["a".into(), "b".into()]));
    }

    #[test]
    fn encoded_as_the_map_and_compared_without_the_marks() {
        let mut n = Nodes::default();
        n.insert("a".into(), fixtures::node("a"));
        let json = serde_json::to_string(&n).unwrap();
        let map: BTreeMap<String, Node> = serde_json::from_str(&json).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        let decoded: Nodes = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, n, "the marks are not part of the value");
    }
}
