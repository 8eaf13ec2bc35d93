//! Who gets a connection slot on the mTLS listener: a global cap kept below the process's file
//! descriptor limit, and a per-source cap on connections that have not proven an identity.
//!
//! ```text
//!  accept ─► Admission::admit(ip) ─► Accept { evict: oldest anonymous slot when full }
//!                                 └► Refuse (source over its cap, or full of identified peers)
//!  handshake + preface done, node/operator certificate ─► identified (no longer evictable)
//!  connection dropped ─► release
//! ```
//!
//! A peer that proved an identity keeps its slot; anonymous peers (TCP without TLS, half-done
//! handshakes, joiners, anyone without a certificate) share what is left, the oldest out first.
//! So a flood of idle connections cannot keep a node or operator from connecting.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

/// Connections on the mTLS listener at most, unless the fd limit is lower (see [`limits`]):
/// a large swarm's nodes, operators and mesh tunnels fit well within it.
pub const MAX_CONNECTIONS: usize = 4096;

/// Anonymous (not yet identified) connections one source address may hold: enough for many
/// nodes joining at once behind one NAT, far too few to fill [`MAX_CONNECTIONS`].
pub const MAX_ANONYMOUS_PER_SOURCE: usize = 256;

/// The limits for a process allowed `nofile` open files: at most half of them for network
/// connections, so the local socket, the store, the audit log and tasks keep the other half.
pub fn limits(nofile: u64) -> (usize, usize) {
    let half = usize::try_from(nofile / 2).unwrap_or(usize::MAX).max(16);
    let total = MAX_CONNECTIONS.min(half);
    (total, MAX_ANONYMOUS_PER_SOURCE.min(total / 4).max(1))
}

/// Raises the soft open-file limit to the hard one (idempotent) and returns the soft limit now
/// in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// The soft open-file limit in force (1024 when it cannot be read).
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// The decision for a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Take it as slot `id`; first close slot `evict` (the oldest anonymous one) if given.
    Accept {
        /// The new slot.
        id: u64,
        /// The slot to close to make room.
        evict: Option<u64>,
    },
    /// Close it at once: its source holds its share of anonymous slots.
    SourceFull,
    /// Close it at once: every slot belongs to an identified peer.
    Full,
}

/// The bookkeeping, without I/O (so it is unit-tested).
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    total: usize,
    /// Anonymous slots by source.
    per_source: HashMap<IpAddr, usize>,
    /// Anonymous slots, oldest first.
    anonymous: BTreeMap<u64, IpAddr>,
    /// Identified slots.
    identified: HashSet<u64>,
    next: u64,
}

impl Admission {
    /// Empty, with these caps.
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Admission {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            total: 0,
            per_source: HashMap::new(),
            anonymous: BTreeMap::new(),
            identified: HashSet::new(),
            next: 0,
        }
    }

    /// Decides on a connection from `ip`; an accepted one is anonymous until [`Self::identify`].
    pub fn admit(&mut self, ip: IpAddr) -> Admit {
        if self.per_source.get(&ip).copied().unwrap_or(0) >= self.max_per_source {
            return Admit::SourceFull;
        }
        let mut evict = None;
        if self.total >= self.max_total {
            let Some((&oldest, _)) = self.anonymous.iter().next() else {
                return Admit::Full;
            };
            self.release(oldest);
            evict = Some(oldest);
        }
        let id = self.next;
        self.next += 1;
        self.total += 1;
        *self.per_source.entry(ip).or_default() += 1;
        self.anonymous.insert(id, ip);
        Admit::Accept { id, evict }
    }

    /// Slot `id` proved an identity: it no longer counts against its source nor is evicted.
    pub fn identify(&mut self, id: u64) {
        if let Some(ip) = self.anonymous.remove(&id) {
            self.uncount(ip);
            self.identified.insert(id);
        }
    }

    /// Slot `id` is closed (a second release of the same slot is ignored).
    pub fn release(&mut self, id: u64) -> bool {
        match self.anonymous.remove(&id) {
            Some(ip) => self.uncount(ip),
            None if self.identified.remove(&id) => {}
            // Already released (evicted, then dropped).
            None => return false,
        }
        self.total -= 1;
        true
    }

    fn uncount(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    /// Connections held.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// The admission state shared by the accept loop and every connection's [`Slot`].
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<Admission>,
    /// The eviction switches of anonymous slots.
    switches: Mutex<HashMap<u64, Arc<Evict>>>,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source holds its share of anonymous connections.
    Source,
    /// Every slot belongs to an identified peer.
    Full,
}

impl Limiter {
    /// A limiter with these caps.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Limiter {
            state: Mutex::new(Admission::new(max_total, max_per_source)),
            switches: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, evicting the oldest anonymous connection when full
    /// (the second field says whether one was).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Slot, bool), Refused> {
        let decision = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(ip);
        match decision {
            Admit::SourceFull => Err(Refused::Source),
            Admit::Full => Err(Refused::Full),
            Admit::Accept { id, evict } => {
                let evict_switch = Arc::new(Evict::default());
                let mut switches = self.switches.lock().unwrap_or_else(|p| p.into_inner());
                let evicted = evict.and_then(|e| switches.remove(&e));
                switches.insert(id, evict_switch.clone());
                drop(switches);
                if let Some(e) = &evicted {
                    e.throw();
                }
                let slot = Slot {
                    id,
                    limiter: self.clone(),
                    evict: evict_switch,
                };
                Ok((slot, evicted.is_some()))
            }
        }
    }

    /// Connections held.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total()
    }
}

/// A connection's slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    limiter: Arc<Limiter>,
    evict: Arc<Evict>,
}

impl Slot {
    /// The peer proved an identity: the slot is kept even when the listener is full.
    pub fn identify(&self) {
        self.limiter
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .identify(self.id);
        self.limiter
            .switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }

    /// Resolves when the slot is evicted to make room for a newer connection.
    pub async fn evicted(&self) {
        self.evict.notify.notified().await;
    }

    /// An error once evicted; else remembers the waker so an eviction wakes the reader.
    pub fn check(&self, cx: &Context<'_>) -> std::io::Result<()> {
        self.evict.check(cx.waker())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter
            .switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.limiter
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(self.id);
    }
}

/// An anonymous connection's eviction switch.
#[derive(Debug, Default)]
struct Evict {
    thrown: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// Wakes a connection still in its handshake (`notify_one` keeps a permit for it).
    notify: tokio::sync::Notify,
}

impl Evict {
    fn throw(&self) {
        self.thrown.store(true, Ordering::SeqCst);
        self.notify.notify_one();
        if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }

    fn check(&self, waker: &Waker) -> std::io::Result<()> {
        let evicted = || {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "evicted: the listener is full and this connection proved no identity",
            )
        };
        if self.thrown.load(Ordering::SeqCst) {
            return Err(evicted());
        }
        let mut w = self.waker.lock().unwrap_or_else(|p| p.into_inner());
        if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *w = Some(waker.clone());
        }
        drop(w);
        if self.thrown.load(Ordering::SeqCst) {
            return Err(evicted());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_source_gets_its_share_of_anonymous_slots_and_no_more() {
        let mut a = Admission::new(100, 2);
        assert!(matches!(a.admit(ip(1)), Admit::Accept { evict: None, .. }));
        assert!(matches!(a.admit(ip(1)), Admit::Accept { evict: None, .. }));
        assert_eq!(a.admit(ip(1)), Admit::SourceFull);
        assert!(matches!(a.admit(ip(2)), Admit::Accept { .. }));
    }

    #[test]
    fn identified_slots_leave_the_source_count_and_are_never_evicted() {
        let mut a = Admission::new(2, 1);
        let Admit::Accept { id: first, .. } = a.admit(ip(1)) else {
            panic!("refused")
        };
        a.identify(first);
        // The source may open another anonymous connection.
        let Admit::Accept { id: second, .. } = a.admit(ip(1)) else {
            panic!("refused")
        };
        a.identify(second);
        // Full of identified peers: refused, nobody evicted.
        assert_eq!(a.admit(ip(2)), Admit::Full);
        assert_eq!(a.total(), 2);
        assert!(a.release(first));
        assert!(matches!(a.admit(ip(2)), Admit::Accept { evict: None, .. }));
    }

    #[test]
    fn when_full_the_oldest_anonymous_slot_makes_room() {
        let mut a = Admission::new(3, 10);
        let ids: Vec<u64> = (1..=3)
            .map(|n| match a.admit(ip(n)) {
                Admit::Accept { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        a.identify(ids[0]);
        let Admit::Accept { evict, .. } = a.admit(ip(9)) else {
            panic!("refused")
        };
        // The identified first slot stays; the oldest anonymous one goes.
        assert_eq!(evict, Some(ids[1]));
        assert_eq!(a.total(), 3);
        // Dropping the evicted slot's connection later releases nothing twice.
        a.release(ids[1]);
        assert_eq!(a.total(), 3);
    }

    #[test]
    fn limits_stay_below_half_the_fd_limit() {
        assert_eq!(
            limits(1_048_576),
            (MAX_CONNECTIONS, MAX_ANONYMOUS_PER_SOURCE)
        );
        assert_eq!(limits(1024), (512, 128));
        assert!(limits(0).0 >= 1);
    }

    #[tokio::test]
    async fn an_evicted_slot_is_told_and_a_dropped_one_frees_its_place() {
        let l = Limiter::new(1, 5);
        let (old, evicted) = l.admit(ip(1)).expect("admitted");
        assert!(!evicted);
        let (new, evicted) = l.admit(ip(2)).expect("admitted");
        assert!(evicted);
        tokio::time::timeout(std::time::Duration::from_secs(1), old.evicted())
            .await
            .expect("the old slot learns it was evicted");
        assert!(old.check(&Context::from_waker(Waker::noop())).is_err());
        drop(old);
        assert_eq!(l.held(), 1);
        drop(new);
        assert_eq!(l.held(), 0);
    }
}
