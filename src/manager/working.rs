//! The orchestrator's working copy of the tasks, copy-on-write over the replicated state: a
//! round that changes ten tasks copies ten, whatever the size of the swarm, and what it
//! changed is all that is compared at the end.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;

use crate::store::service::Task;

/// Tasks as the state has them, with this round's changes over them.
pub(crate) struct Working<'a> {
    base: &'a BTreeMap<String, Task>,
    changed: BTreeMap<String, Task>,
    gone: BTreeSet<String>,
}

impl<'a> Working<'a> {
    pub(crate) fn new(base: &'a BTreeMap<String, Task>) -> Self {
        Working {
            base,
            changed: BTreeMap::new(),
            gone: BTreeSet::new(),
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Task> {
        if self.gone.contains(id) {
            return None;
        }
        self.changed.get(id).or_else(|| self.base.get(id))
    }

    /// The task to change: copied from the state on first use.
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Task> {
        if self.gone.contains(id) {
            return None;
        }
        if !self.changed.contains_key(id) {
            let t = self.base.get(id)?.clone();
            self.changed.insert(id.to_string(), t);
        }
        self.changed.get_mut(id)
    }

    pub(crate) fn insert(&mut self, id: String, t: Task) {
        self.gone.remove(&id);
        self.changed.insert(id, t);
    }

    pub(crate) fn remove(&mut self, id: &str) {
        self.changed.remove(id);
        if self.base.contains_key(id) {
            self.gone.insert(id.to_string());
        }
    }

    /// Every task, in ID order, as changed so far.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Task> + '_ {
        Merge {
            base: self.base.iter().peekable(),
            changed: self.changed.iter().peekable(),
        }
        .filter(|t| !self.gone.contains(&t.id))
    }

    /// The tasks this round stored or changed that differ from the state's, in ID order.
    #[cfg(test)]
    pub(crate) fn puts(&self) -> impl Iterator<Item = &Task> + '_ {
        self.changed
            .iter()
            .filter(|(id, t)| self.base.get(*id) != Some(*t))
            .map(|(_, t)| t)
    }

    /// The tasks this round stored or changed that differ from the state's, in ID order: the
    /// round's own copies, handed over (none is copied again).
    pub(crate) fn into_puts(self) -> Vec<Task> {
        let base = self.base;
        self.changed
            .into_iter()
            .filter(|(id, t)| base.get(id) != Some(t))
            .map(|(_, t)| t)
            .collect()
    }
}

/// Two maps' entries merged by key; the second wins on equal keys.
struct Merge<'a, I: Iterator<Item = (&'a String, &'a Task)>> {
    base: Peekable<I>,
    changed: Peekable<I>,
}

impl<'a, I: Iterator<Item = (&'a String, &'a Task)>> Iterator for Merge<'a, I> {
    type Item = &'a Task;

    fn next(&mut self) -> Option<&'a Task> {
        let order = match (self.base.peek(), self.changed.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((b, _)), Some((c, _))) => b.cmp(c),
        };
        match order {
            Ordering::Less => self.base.next().map(|(_, t)| t),
            Ordering::Greater => self.changed.next().map(|(_, t)| t),
            Ordering::Equal => {
                self.base.next();
                self.changed.next().map(|(_, t)| t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            ..fixtures::task()
        }
    }

    #[test]
    fn reads_see_the_rounds_changes_over_the_state_and_only_changes_are_put() {
        let base: BTreeMap<String, Task> = ["a", "c", "e"]
            .into_iter()
            .map(|id| (id.to_string(), task(id)))
            .collect();
        let mut w = Working::new(&base);
        w.insert("b".into(), task("b"));
        w.insert("f".into(), task("f"));
        if let Some(t) = w.get_mut("c") {
            t.node_id = "n2".into();
        }
        let _untouched = w.get_mut("a");
        w.remove("e");
        let ids: Vec<&str> = w.values().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "f"]);
        assert_eq!(w.get("c").map(|t| t.node_id.as_str()), Some("n2"));
        assert!(w.get("e").is_none() && w.get_mut("e").is_none());
        let puts: Vec<&str> = w.puts().map(|t| t.id.as_str()).collect();
        assert_eq!(puts, ["b", "c", "f"], "a copy left as it was is no change");
        // Removed, then stored again.
        w.insert("e".into(), task("e"));
        assert!(w.get("e").is_some());
        assert_eq!(base.len(), 3, "the state itself is untouched");
    }
}
