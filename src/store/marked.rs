//! A map by ID that remembers which IDs were written: the replicated state's nodes are kept in
//! one, so the managers' table of current node certificates (`net::revoke`) is brought up to
//! date from the nodes an entry changed, not by comparing every node after every entry (a join
//! into a swarm of 30,000 nodes compared 30,000).
//!
//! ```text
//!  Marked { map: id → value, changed ids }
//!  insert / remove / get_mut ─► the ID is marked ─► take_changed (the state machine, after
//!                                                   each applied batch) ─► store::wake
//! ```
//!
//! Reads go through `Deref` to the map; every write goes through the three methods here, so
//! no change can go unmarked. The marks are neither serialized nor compared: the encoding is
//! the map's.

use std::collections::{BTreeMap, HashSet};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Values by ID, with the IDs written since the last [`Marked::take_changed`].
#[derive(Clone, Debug)]
pub struct Marked<V> {
    map: BTreeMap<String, V>,
    changed: HashSet<String>,
}

impl<V> Default for Marked<V> {
    fn default() -> Self {
        Marked {
            map: BTreeMap::new(),
            changed: HashSet::new(),
        }
    }
}

impl<V> Marked<V> {
    /// Stores `value` under `id`.
    pub fn insert(&mut self, id: String, value: V) -> Option<V> {
        self.mark(&id);
        self.map.insert(id, value)
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: &str) -> Option<V> {
        self.mark(id);
        self.map.remove(id)
    }

    /// The value of `id`, to change (marked whether or not it is written).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
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

    /// The IDs stored, changed or removed since the last call.
    pub fn take_changed(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.changed)
    }
}

impl<V> Deref for Marked<V> {
    type Target = BTreeMap<String, V>;
    fn deref(&self) -> &BTreeMap<String, V> {
        &self.map
    }
}

impl<V: PartialEq> PartialEq for Marked<V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<'a, V> IntoIterator for &'a Marked<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, String, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<V> From<BTreeMap<String, V>> for Marked<V> {
    fn from(map: BTreeMap<String, V>) -> Self {
        Marked {
            map,
            changed: HashSet::new(),
        }
    }
}

impl<V: Serialize> Serialize for Marked<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Marked<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, V>::deserialize(d).map(Marked::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(of: &[&str]) -> HashSet<String> {
        of.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_write_marks_its_id_once_and_reads_mark_nothing() {
        let mut m: Marked<String> = Marked::default();
        m.insert("a".into(), "01".into());
        m.insert("b".into(), "01".into());
        assert_eq!(m.take_changed(), ids(&["a", "b"]));
        assert!(m.take_changed().is_empty());
        assert!(m.get("a").is_some() && m.values().count() == 2);
        assert!(m.take_changed().is_empty(), "reads mark nothing");
        if let Some(a) = m.get_mut("a") {
            *a = "02".into();
        }
        assert!(m.get_mut("gone").is_none());
        m.remove("b");
        assert_eq!(m.take_changed(), ids(&["a", "b"]));
    }

    #[test]
    fn encoded_as_the_map_and_compared_without_the_marks() {
        let mut m: Marked<String> = Marked::default();
        m.insert("a".into(), "01".into());
        let json = serde_json::to_string(&m).unwrap();
        let map: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        let decoded: Marked<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, m, "the marks are not part of the value");
    }
}
