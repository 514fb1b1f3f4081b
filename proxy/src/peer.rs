//! Who counts as the pod itself: the only client the outbound listener's forward proxy and the
//! admin server's state-revealing endpoints serve.
//!
//! Without this check any peer that can reach `POD_IP:15001` could use the sidecar as an open
//! forward proxy into the pod's loopback services, the cloud metadata address and the rest of
//! the cluster, with the pod's identity. Addresses are compared in canonical form, so an IPv4
//! peer seen by an IPv6 socket (`::ffff:127.0.0.1`) is recognised as what it is.

use std::net::IpAddr;

/// Loopback in either family, including the IPv4-mapped form.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The pod's own addresses (`status.podIPs`: one per family on a dual-stack cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodAddrs(Vec<IpAddr>);

impl PodAddrs {
    /// Keeps each address once, in canonical form, in the order given.
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in ips.into_iter().map(|ip| ip.to_canonical()) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Self(out)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    /// The first address given (the primary pod IP, `status.podIP`).
    pub fn primary(&self) -> Option<IpAddr> {
        self.0.first().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0.iter().copied()
    }

    /// Whether a connection from `peer` to `local` was made from inside the pod: from loopback,
    /// from a pod address, or from the very address it reached (only a local socket can have
    /// the local address as its source, so this holds even when the pod IPs were not given).
    pub fn is_own_peer(&self, peer: IpAddr, local: IpAddr) -> bool {
        is_loopback(peer) || self.contains(peer) || peer.to_canonical() == local.to_canonical()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_loopback_is_loopback() {
        assert!(is_loopback(ip("127.0.0.1")));
        assert!(is_loopback(ip("127.3.2.1")));
        assert!(is_loopback(ip("::1")));
        assert!(is_loopback(ip("::ffff:127.0.0.1")));
        assert!(!is_loopback(ip("::ffff:10.0.0.1")));
        assert!(!is_loopback(ip("10.0.0.1")));
    }

    #[test]
    fn own_peers_are_loopback_pod_ips_and_the_local_address() {
        let pod = PodAddrs::new([ip("10.0.0.5"), ip("fd00::5"), ip("::ffff:10.0.0.5")]);
        assert_eq!(pod.iter().count(), 2);
        assert_eq!(pod.primary(), Some(ip("10.0.0.5")));
        let local = ip("10.0.0.5");
        assert!(pod.is_own_peer(ip("127.0.0.1"), local));
        assert!(pod.is_own_peer(ip("::ffff:127.0.0.1"), ip("::")));
        assert!(pod.is_own_peer(ip("10.0.0.5"), local));
        assert!(pod.is_own_peer(ip("::ffff:10.0.0.5"), ip("::")));
        assert!(pod.is_own_peer(ip("fd00::5"), ip("fd00::5")));
        assert!(!pod.is_own_peer(ip("10.0.0.6"), local));
        assert!(!pod.is_own_peer(ip("fd00::6"), ip("fd00::5")));
        // Without the pod IPs, a peer using the reached address is still the pod itself.
        let none = PodAddrs::default();
        assert!(none.is_own_peer(ip("10.0.0.9"), ip("10.0.0.9")));
        assert!(!none.is_own_peer(ip("10.0.0.8"), ip("10.0.0.9")));
    }
}
