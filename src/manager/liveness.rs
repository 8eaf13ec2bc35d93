//! The leader's record of which nodes heartbeat, and the rule that marks a node Down: silent
//! beyond the grace (three heartbeat periods) while the leader itself was answering
//! heartbeats.
//!
//! Why the second half: a node's silence is measured where its heartbeats are answered. A
//! leader too busy to answer (a burst of thousands of task starts on its own node, a paused
//! process, a slow disk under its store) hears from nobody, and the old rule then marked every
//! node Down at once and the orchestrator replaced all their tasks, which made the leader
//! busier still: 3,000 exec tasks were orphaned and started again three or four times over
//! (docs/performance.md). The leader's own agent heartbeats it over the same mTLS path every
//! period, so it is the witness: when its heartbeats are not answered for two periods, the
//! leader is stalled and marks no one; once they are answered again, every node's silence is
//! counted afresh from then.
//!
//! ```text
//!  heartbeat of N ─► saw(N) ─► last_seen[N] = now
//!  heartbeat of own agent after a gap > 2 periods ─► counting_since = now (a stall ended)
//!  liveness tick ─► overdue(): nobody while stalled (own agent unanswered > 2 periods,
//!                  up to STALL_LIMIT_GRACES graces); else the nodes other than its own
//!                  silent > grace since max(last_seen, counting_since)
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many heartbeat periods of silence make a node Down.
const GRACE_PERIODS: u32 = 3;

/// How many periods the leader's own agent may go unanswered before the leader counts itself
/// stalled.
const STALL_PERIODS: u32 = 2;

/// A stall longer than this many graces no longer holds the rule back: a leader whose own agent
/// stopped heartbeating (rather than one too busy to answer) still marks silent nodes Down.
const STALL_LIMIT_GRACES: u32 = 10;

/// On the leader: when each node was last heard, and since when silence counts.
#[derive(Default)]
pub(super) struct Liveness {
    last_seen: HashMap<String, Instant>,
    /// Silence counts from here at the earliest: when this manager became leader, or when a
    /// stall of its own ended. `None` while not leading.
    counting_since: Option<Instant>,
    /// When the leader's own agent was last heard, while leading.
    own: Option<Instant>,
    /// On the leader: each node's latest task session, by a number counting sessions.
    pub(super) sessions: HashMap<String, u64>,
    pub(super) next_session: u64,
}

impl Liveness {
    /// Records a heartbeat of `node` (`own`: the leader's own agent) at `now`.
    pub(super) fn saw(&mut self, node: &str, own: bool, now: Instant, period: Duration) {
        if own {
            if self
                .own
                .is_some_and(|t| now.duration_since(t) > period * STALL_PERIODS)
            {
                // The leader was not answering: what it did not hear says nothing of the nodes.
                self.counting_since = Some(now);
            }
            self.own = Some(now);
        }
        self.last_seen.insert(node.to_string(), now);
    }

    /// When `node` was last heard, if it was.
    pub(super) fn last_heard(&self, node: &str) -> Option<Instant> {
        self.last_seen.get(node).copied()
    }

    /// This manager stopped leading: silence counts afresh when it leads again.
    pub(super) fn not_leading(&mut self) {
        self.counting_since = None;
        self.own = None;
    }

    /// Whether this leader is stalled at `now`: its own agent, heard before, has not been
    /// answered for more than two periods (for at most [`STALL_LIMIT_GRACES`] graces).
    pub(super) fn stalled(&self, now: Instant, period: Duration) -> bool {
        let grace = period * GRACE_PERIODS;
        self.own.is_some_and(|t| {
            let gap = now.duration_since(t);
            gap > period * STALL_PERIODS && gap <= grace * STALL_LIMIT_GRACES
        })
    }

    /// Whether `node` was heard within the grace at `now` (counted from when this manager
    /// began leading, or its last stall ended, for a node not heard since).
    pub(super) fn heard_from(&mut self, node: &str, now: Instant, period: Duration) -> bool {
        let since = *self.counting_since.get_or_insert(now);
        let last = self
            .last_seen
            .get(node)
            .copied()
            .unwrap_or(since)
            .max(since);
        now.duration_since(last) <= period * GRACE_PERIODS
    }

    /// Of `nodes` (those Ready or Unknown), the ones to mark Down at `now`: silent beyond the
    /// grace while this leader was answering; never `own_node`, and none while stalled.
    pub(super) fn overdue<'a>(
        &mut self,
        nodes: impl Iterator<Item = &'a str>,
        own_node: &str,
        now: Instant,
        period: Duration,
    ) -> Vec<String> {
        if self.stalled(now, period) {
            return Vec::new();
        }
        nodes
            .filter(|n| *n != own_node)
            .filter(|n| !self.heard_from(n, now, period))
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(1);

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    /// A node silent beyond three periods while the leader's own agent is answered is Down;
    /// one heard within them is not; the leader's own node never is.
    #[test]
    fn a_silent_node_is_down_while_the_leader_answers_its_own_agent() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.heard_from("w1", t0, P); // leading from t0
        for s in 0..=5 {
            l.saw("m1", true, at(t0, f64::from(s)), P);
        }
        l.saw("w2", false, at(t0, 4.0), P);
        let down = l.overdue(["m1", "w1", "w2"].into_iter(), "m1", at(t0, 5.0), P);
        assert_eq!(down, vec!["w1".to_string()]);
        // Its own node, silent as long, is never marked.
        let mut l = Liveness::default();
        l.heard_from("w1", t0, P);
        assert!(
            l.overdue(["m1"].into_iter(), "m1", at(t0, 60.0), P)
                .is_empty()
        );
    }

    /// A leader that answered no one for seconds (its own agent included) marks no one Down
    /// while stalled nor at once after: every node's silence counts from when it answers its
    /// own agent again. (The old rule marked every node Down the moment it looked.)
    #[test]
    fn a_stalled_leader_marks_no_one_and_counts_afresh_after() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.heard_from("w1", t0, P);
        l.saw("m1", true, t0, P);
        l.saw("w1", false, t0, P);
        // Nothing answered for 9 s (a burst on its own node, a paused process).
        assert!(l.stalled(at(t0, 9.0), P));
        assert!(
            l.overdue(["w1"].into_iter(), "m1", at(t0, 9.0), P)
                .is_empty()
        );
        // Its own agent answered again: w1 gets a whole grace from then.
        l.saw("m1", true, at(t0, 9.1), P);
        assert!(!l.stalled(at(t0, 9.2), P));
        assert!(
            l.overdue(["w1"].into_iter(), "m1", at(t0, 9.2), P)
                .is_empty()
        );
        assert!(
            l.overdue(["w1"].into_iter(), "m1", at(t0, 12.0), P)
                .is_empty()
        );
        for s in 10..=13 {
            l.saw("m1", true, at(t0, f64::from(s)), P);
        }
        // Silent for a whole grace while the leader answered: down.
        assert_eq!(
            l.overdue(["w1"].into_iter(), "m1", at(t0, 13.0), P),
            vec!["w1".to_string()]
        );
    }

    /// A leader whose own agent stopped heartbeating (not one too busy to answer) still marks
    /// silent nodes Down once the stall limit has passed; one whose own agent never heartbeat
    /// it follows the plain rule.
    #[test]
    fn the_stall_rule_holds_back_for_a_bounded_time_only() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.heard_from("w1", t0, P);
        l.saw("m1", true, t0, P);
        let limit = P * GRACE_PERIODS * STALL_LIMIT_GRACES;
        assert!(
            l.overdue(["w1"].into_iter(), "m1", t0 + limit, P)
                .is_empty()
        );
        assert_eq!(
            l.overdue(["w1"].into_iter(), "m1", t0 + limit + P, P),
            vec!["w1".to_string()]
        );
        let mut l = Liveness::default();
        l.heard_from("w1", t0, P);
        assert_eq!(
            l.overdue(["w1"].into_iter(), "m1", at(t0, 3.5), P),
            vec!["w1".to_string()]
        );
    }

    /// Leading again starts the count afresh: nodes are not Down for silence from before.
    #[test]
    fn a_new_term_counts_afresh() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.heard_from("w1", t0, P);
        l.not_leading();
        assert!(l.heard_from("w1", at(t0, 100.0), P));
        assert!(l.heard_from("w1", at(t0, 102.0), P));
        assert!(!l.heard_from("w1", at(t0, 103.5), P));
    }
}
