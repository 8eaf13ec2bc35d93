//! The agent's part of `stack rm --volumes`: the leader's heartbeat answer names the stacks
//! whose named volumes this node is to remove; the agent removes them through the Docker
//! Engine (one attempt at a time per stack, again at each heartbeat while a volume is still in
//! use), and reports what it removed with its next heartbeats until the leader stops asking.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::agent::executor::Executors;
use crate::api::v1::VolumesRemoved;

/// Most stacks worked on at once.
const MAX_STACKS: usize = 64;

/// What the agent is doing about volume removals.
#[derive(Clone)]
pub struct VolumeCleaner {
    execs: Arc<Executors>,
    state: Arc<Mutex<Cleaning>>,
}

#[derive(Default)]
struct Cleaning {
    /// Stacks being removed now.
    in_flight: BTreeSet<String>,
    /// Stacks done, with the volumes removed: reported until the leader stops asking.
    done: BTreeMap<String, Vec<String>>,
}

impl VolumeCleaner {
    /// A cleaner working through `execs`.
    pub fn new(execs: Arc<Executors>) -> Self {
        VolumeCleaner {
            execs,
            state: Default::default(),
        }
    }

    /// What to report with the next heartbeat.
    pub fn reports(&self) -> Vec<VolumesRemoved> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .done
            .iter()
            .map(|(stack, names)| VolumesRemoved {
                stack: stack.clone(),
                names: names.clone(),
            })
            .collect()
    }

    /// Follows the leader's answer: forgets what it no longer asks for (recorded, or
    /// cancelled) and starts on what it asks for that is neither done nor under way.
    pub fn follow(&self, asked: &[String]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.done.retain(|stack, _| asked.contains(stack));
        for stack in asked.iter().take(MAX_STACKS) {
            if state.done.contains_key(stack) || !state.in_flight.insert(stack.clone()) {
                continue;
            }
            let (execs, shared, stack) = (self.execs.clone(), self.state.clone(), stack.clone());
            tokio::spawn(async move {
                let result = execs.remove_stack_volumes(&stack).await;
                let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
                state.in_flight.remove(&stack);
                match result {
                    Ok(names) => {
                        tracing::info!(%stack, volumes = ?names, "removed the stack's volumes");
                        state.done.insert(stack, names);
                    }
                    Err(e) => {
                        tracing::info!(%stack, error = %e, "cannot remove the stack's volumes yet");
                    }
                }
            });
        }
    }
}
