//! Service addresses (127.77.X.Y on every node's loopback, 198.18.X.Y for containers), handed
//! out by the state machine when a service is first stored: one per service, never shared,
//! the same on every replica, free again when the service is removed.
//!
//! Addresses are numbered 0..[`RANGE`] (X from 0 to 255, Y from 1 to 254: no .0 or .255). The
//! state keeps a cursor past the last one given, so a removed service's address goes to a new
//! service only once the cursor has come round (a node still routing to the old one by a
//! stale table does not reach the new one at once).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// How many service addresses there are: the most services a swarm can hold.
pub const RANGE: u32 = 256 * 254;

/// The address numbered `i` (`i < RANGE`).
pub fn address(i: u32) -> Ipv4Addr {
    let x = u8::try_from(i / 254).unwrap_or(u8::MAX);
    let y = u8::try_from(i % 254).unwrap_or(0) + 1;
    Ipv4Addr::new(127, 77, x, y)
}

/// The number of `a`, if it is a service address.
pub fn number(a: Ipv4Addr) -> Option<u32> {
    match a.octets() {
        [127, 77, x, y @ 1..=254] => Some(u32::from(x) * 254 + u32::from(y) - 1),
        _ => None,
    }
}

/// Where a new swarm starts handing out service addresses: a point of the range derived from
/// its cluster ID (pure, so every replica agrees). Swarms that share a host's loopback (test
/// clusters, a developer's several swarms) then rarely give their first services the same
/// address and port.
pub fn start_for(cluster_id: &str) -> u32 {
    let d = ring::digest::digest(&ring::digest::SHA256, cluster_id.as_bytes());
    let mut four = [0u8; 4];
    four.copy_from_slice(&d.as_ref()[..4]);
    u32::from_be_bytes(four) % RANGE
}

/// The first number not in `used`, searching from `cursor` round a range of `size`; `None` if
/// all are used. Pure, so every replica picks the same one.
pub fn allocate(used: &BTreeSet<u32>, cursor: u32, size: u32) -> Option<u32> {
    if size == 0 {
        return None;
    }
    let start = cursor % size;
    (start..size).chain(0..start).find(|i| !used.contains(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarms_start_at_their_own_point_of_the_range() {
        let a = start_for("cluster-a");
        assert_eq!(a, start_for("cluster-a"), "the same on every replica");
        assert!(a < RANGE);
        let starts: BTreeSet<u32> = (0..50).map(|i| start_for(&format!("c{i}"))).collect();
        assert!(starts.len() >= 49, "{starts:?}");
    }

    #[test]
    fn addresses_and_numbers_round_trip() {
        assert_eq!(address(0), Ipv4Addr::new(127, 77, 0, 1));
        assert_eq!(address(253), Ipv4Addr::new(127, 77, 0, 254));
        assert_eq!(address(254), Ipv4Addr::new(127, 77, 1, 1));
        assert_eq!(address(RANGE - 1), Ipv4Addr::new(127, 77, 255, 254));
        for i in [0, 1, 253, 254, 1000, RANGE - 1] {
            assert_eq!(number(address(i)), Some(i));
        }
        assert_eq!(number(Ipv4Addr::new(127, 77, 3, 0)), None);
        assert_eq!(number(Ipv4Addr::new(127, 77, 3, 255)), None);
        assert_eq!(number(Ipv4Addr::new(127, 0, 0, 1)), None);
        let all: BTreeSet<Ipv4Addr> = (0..RANGE).map(address).collect();
        assert_eq!(all.len() as u32, RANGE, "two numbers share an address");
    }

    #[test]
    fn allocation_fills_the_range_then_refuses_and_reuses_after_removal() {
        let mut used = BTreeSet::new();
        let mut cursor = 0;
        for want in 0..4 {
            let i = allocate(&used, cursor, 4).unwrap();
            assert_eq!(i, want);
            used.insert(i);
            cursor = i + 1;
        }
        assert_eq!(allocate(&used, cursor, 4), None);
        used.remove(&1);
        assert_eq!(allocate(&used, cursor, 4), Some(1));
        assert_eq!(allocate(&BTreeSet::new(), 7, 0), None);
    }

    #[test]
    fn a_freed_address_waits_for_the_cursor_to_come_round() {
        let used = BTreeSet::from([0, 2]);
        // 1 was freed; the cursor is past it, so 3 comes first, then 1 after wrapping.
        assert_eq!(allocate(&used, 3, 5), Some(3));
        assert_eq!(allocate(&BTreeSet::from([0, 2, 3, 4]), 4, 5), Some(1));
    }
}
