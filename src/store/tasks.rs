//! The replicated state's tasks, indexed by node: a node's task session reads its own tasks
//! without scanning the others, and learns from a generation number whether any of them
//! changed since it last looked (dispatch costs what changed, not the size of the swarm).
//!
//! ```text
//!  Tasks { map: id → Task, index: node → { ids, generation }, dirty nodes }
//!  insert / remove / get_mut (a guard that re-indexes on drop) ─► the node's generation moves,
//!                                                                  the node is marked dirty
//! ```
//!
//! Reads go through `Deref` to the map. The index is derived: it is neither serialized nor
//! compared; a `Tasks` decoded from a snapshot or log rebuilds it, so the encoding is the map's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::service::Task;

/// Generation numbers, unique in the process: a number a session saw is never given to another
/// change, whichever `Tasks` (a clone, a decoded snapshot) it is read from next.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// One node's tasks in the index.
#[derive(Clone, Debug, Default)]
struct NodeTasks {
    ids: BTreeSet<String>,
    generation: u64,
}

/// The index: each node's tasks, and the nodes whose tasks changed since the state machine
/// last asked ([`Tasks::take_dirty`]: it wakes those nodes' sessions).
#[derive(Clone, Debug, Default)]
struct Index {
    by_node: HashMap<String, NodeTasks>,
    dirty: HashSet<String>,
}

impl Index {
    fn add(&mut self, node: &str, id: String) {
        match self.by_node.get_mut(node) {
            Some(n) => {
                n.ids.insert(id);
            }
            None => {
                let n = NodeTasks {
                    ids: BTreeSet::from([id]),
                    generation: 0,
                };
                self.by_node.insert(node.to_string(), n);
            }
        }
        self.bump(node);
    }

    fn drop_id(&mut self, node: &str, id: &str) {
        if let Some(n) = self.by_node.get_mut(node) {
            n.ids.remove(id);
            self.bump(node);
        }
    }

    /// Moves the node's generation and marks it changed (a node's name is copied only the
    /// first time: this runs on every task write).
    fn bump(&mut self, node: &str) {
        let generation = next_generation();
        match self.by_node.get_mut(node) {
            Some(n) => n.generation = generation,
            None => {
                let n = NodeTasks {
                    ids: BTreeSet::new(),
                    generation,
                };
                self.by_node.insert(node.to_string(), n);
            }
        }
        if !self.dirty.contains(node) {
            self.dirty.insert(node.to_string());
        }
    }
}

/// Tasks by ID, with an index by node.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    map: BTreeMap<String, Task>,
    index: Index,
}

impl Tasks {
    /// Stores a task (replacing the one with its ID) and returns the one it replaced.
    pub fn insert(&mut self, id: String, task: Task) -> Option<Task> {
        let node = task.node_id.clone();
        let old = self.map.insert(id.clone(), task);
        if let Some(o) = &old {
            self.index.drop_id(&o.node_id, &id);
        }
        self.index.add(&node, id);
        old
    }

    /// Forgets a task.
    pub fn remove(&mut self, id: &str) -> Option<Task> {
        let old = self.map.remove(id)?;
        self.index.drop_id(&old.node_id, id);
        Some(old)
    }

    /// The task to change in place; the index follows when the guard is dropped (a task moved
    /// to another node included).
    pub fn get_mut(&mut self, id: &str) -> Option<TaskMut<'_>> {
        let task = self.map.get_mut(id)?;
        let node = task.node_id.clone();
        Some(TaskMut {
            task,
            node,
            index: &mut self.index,
            touched: false,
        })
    }

    /// The tasks placed on `node_id` (history included), in ID order.
    pub fn on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.index
            .by_node
            .get(node_id)
            .into_iter()
            .flat_map(|n| n.ids.iter())
            .filter_map(|id| self.map.get(id))
    }

    /// A number that changes whenever a task of `node_id` is stored, changed or removed (0 for
    /// a node that never had one).
    pub fn generation(&self, node_id: &str) -> u64 {
        self.index.by_node.get(node_id).map_or(0, |n| n.generation)
    }

    /// The nodes whose tasks changed since the last call (the state machine wakes their
    /// sessions after applying entries).
    pub fn take_dirty(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.index.dirty)
    }
}

/// Changes one task in place; re-indexes it when dropped. Only a guard written through
/// (`DerefMut`) moves the node's generation: a look that changes nothing wakes no session.
pub struct TaskMut<'a> {
    task: &'a mut Task,
    node: String,
    index: &'a mut Index,
    touched: bool,
}

impl Deref for TaskMut<'_> {
    type Target = Task;
    fn deref(&self) -> &Task {
        self.task
    }
}

impl DerefMut for TaskMut<'_> {
    fn deref_mut(&mut self) -> &mut Task {
        self.touched = true;
        self.task
    }
}

impl Drop for TaskMut<'_> {
    fn drop(&mut self) {
        if !self.touched {
            return;
        }
        if self.task.node_id != self.node {
            self.index.drop_id(&self.node, &self.task.id);
            self.index.add(&self.task.node_id, self.task.id.clone());
        } else {
            self.index.bump(&self.task.node_id);
        }
    }
}

impl Deref for Tasks {
    type Target = BTreeMap<String, Task>;
    fn deref(&self) -> &BTreeMap<String, Task> {
        &self.map
    }
}

impl<'a> IntoIterator for &'a Tasks {
    type Item = (&'a String, &'a Task);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Task>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl FromIterator<(String, Task)> for Tasks {
    fn from_iter<I: IntoIterator<Item = (String, Task)>>(iter: I) -> Self {
        let mut tasks = Tasks::default();
        for (id, t) in iter {
            tasks.insert(id, t);
        }
        tasks
    }
}

impl From<BTreeMap<String, Task>> for Tasks {
    fn from(map: BTreeMap<String, Task>) -> Self {
        map.into_iter().collect()
    }
}

impl Serialize for Tasks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Tasks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, Task>::deserialize(d).map(Tasks::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, node: &str) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            ..crate::store::fixtures::task()
        }
    }

    fn ids(t: &Tasks, node: &str) -> Vec<String> {
        t.on_node(node).map(|t| t.id.clone()).collect()
    }

    #[test]
    fn the_index_follows_inserts_moves_and_removals() {
        let mut t = Tasks::default();
        t.insert("a".into(), task("a", "n1"));
        t.insert("b".into(), task("b", "n1"));
        t.insert("c".into(), task("c", ""));
        assert_eq!(ids(&t, "n1"), ["a", "b"]);
        // Replaced by a copy placed elsewhere (the scheduler's PutTasks).
        t.insert("c".into(), task("c", "n2"));
        assert_eq!(ids(&t, ""), Vec::<String>::new());
        assert_eq!(ids(&t, "n2"), ["c"]);
        // Moved in place.
        if let Some(mut m) = t.get_mut("a") {
            m.node_id = "n2".into();
        }
        assert_eq!(ids(&t, "n1"), ["b"]);
        assert_eq!(ids(&t, "n2"), ["a", "c"]);
        t.remove("b");
        assert!(ids(&t, "n1").is_empty());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_generation_moves_with_every_change_of_the_nodes_tasks_and_only_then() {
        let mut t = Tasks::default();
        assert_eq!(t.generation("n1"), 0);
        t.insert("a".into(), task("a", "n1"));
        let g1 = t.generation("n1");
        t.insert("b".into(), task("b", "n2"));
        assert_eq!(t.generation("n1"), g1, "another node's task");
        if let Some(mut m) = t.get_mut("a") {
            m.desired = crate::store::service::DesiredState::Shutdown;
        }
        let g2 = t.generation("n1");
        assert_ne!(g2, g1, "a change in place");
        if let Some(m) = t.get_mut("a") {
            assert_eq!(m.node_id, "n1");
        }
        assert_eq!(t.generation("n1"), g2, "a look through the guard");
        t.remove("a");
        let g3 = t.generation("n1");
        assert!(g3 != g2 && g3 != 0, "the last task gone still moves it");
        // A decoded copy never repeats a number a reader saw.
        let copy: Tasks = postcard::from_bytes(&postcard::to_allocvec(&t).unwrap()).unwrap();
        assert_ne!(copy.generation("n2"), t.generation("n2"));
        assert_eq!(ids(&copy, "n2"), ["b"]);
    }

    #[test]
    fn the_nodes_whose_tasks_changed_are_taken_once() {
        let mut t = Tasks::default();
        t.insert("a".into(), task("a", "n1"));
        t.insert("b".into(), task("b", "n2"));
        assert_eq!(t.take_dirty(), HashSet::from(["n1".into(), "n2".into()]));
        assert!(t.take_dirty().is_empty());
        // A look changes nothing; a write does; a move marks both nodes.
        if let Some(m) = t.get_mut("a") {
            assert_eq!(m.node_id, "n1");
        }
        assert!(t.take_dirty().is_empty());
        if let Some(mut m) = t.get_mut("a") {
            m.node_id = "n3".into();
        }
        assert_eq!(t.take_dirty(), HashSet::from(["n1".into(), "n3".into()]));
        t.remove("b");
        assert_eq!(t.take_dirty(), HashSet::from(["n2".into()]));
    }

    #[test]
    fn the_encoding_is_the_maps() {
        let mut map = BTreeMap::new();
        map.insert("a".to_string(), task("a", "n1"));
        let tasks = Tasks::from(map.clone());
        assert_eq!(
            postcard::to_allocvec(&tasks).unwrap(),
            postcard::to_allocvec(&map).unwrap()
        );
    }
}
