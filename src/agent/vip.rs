//! Where containers reach services by name. A container has its own loopback, so the service
//! addresses exec tasks use (127.77.X.Y on the node's loopback) are out of its reach; its
//! `/etc/hosts` names 198.18.X.Y instead (same X.Y), an address the node takes as its own for
//! the whole 198.18.0.0/16 (a `local` route, as the kernel has for 127.0.0.0/8), so a
//! container's packets to it leave by its default route and arrive at the node's mesh, which
//! listens there. 198.18.0.0/15 is reserved for benchmarking networks (RFC 2544), so it does
//! not hide real hosts; a node that must reach such hosts should not run containers on
//! networks.

use std::net::{IpAddr, Ipv4Addr};

/// The first two octets of the container-side service addresses.
pub const CONTAINER_NET: [u8; 2] = [198, 18];

/// The container-side address of the service whose loopback address is `vip` (127.77.X.Y →
/// 198.18.X.Y).
pub fn container_vip(vip: IpAddr) -> Option<IpAddr> {
    match vip {
        IpAddr::V4(v) if v.octets()[..2] == [127, 77] => {
            let [_, _, x, y] = v.octets();
            Some(Ipv4Addr::new(CONTAINER_NET[0], CONTAINER_NET[1], x, y).into())
        }
        _ => None,
    }
}

/// Makes the node take every address of 198.18.0.0/16 as its own (`ip route replace local
/// 198.18.0.0/16 dev lo table local`), through netlink. Idempotent; needs CAP_NET_ADMIN.
pub async fn ensure_local_route() -> Result<(), String> {
    use rtnetlink::packet_route::route::{RouteScope, RouteType};
    use tokio_stream::StreamExt as _;
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("cannot open netlink: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let links = handle.link().get().match_name("lo").execute();
        tokio::pin!(links);
        let lo = links
            .next()
            .await
            .ok_or("no loopback interface")?
            .map_err(|e| format!("cannot find the loopback interface: {e}"))?
            .header
            .index;
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(CONTAINER_NET[0], CONTAINER_NET[1], 0, 0), 16)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(255)
            .output_interface(lo)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| format!("cannot add the local route for 198.18.0.0/16: {e}"))
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_addresses_follow_the_loopback_ones() {
        let v: IpAddr = "127.77.12.200".parse().unwrap();
        assert_eq!(
            container_vip(v),
            Some("198.18.12.200".parse::<IpAddr>().unwrap())
        );
        assert_eq!(container_vip("127.0.0.1".parse().unwrap()), None);
        assert_eq!(container_vip("::1".parse().unwrap()), None);
    }
}
