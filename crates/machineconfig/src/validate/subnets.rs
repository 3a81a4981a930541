//! Subnets as Talos v1.14 reads them: Go's `netip.ParsePrefix` (a failure refuses the document
//! while decoding), and KubeNetworkConfig's rules for its pod and service subnets
//! (`config/types/k8s/network.go`). Each list is read once; nothing is compared pairwise.

use std::fmt;
use std::net::IpAddr;

/// A parsed `address/bits`, kept as written (not masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Prefix {
    addr: IpAddr,
    bits: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// Host bits a subnet must keep at least (`minSubnetHostBits`).
const MIN_HOST_BITS: u8 = 4;
/// Host bits a service subnet may have at most (`constants.MaxHostBitsForServiceSubnet`).
const MAX_SERVICE_HOST_BITS: u8 = 20;
/// How many bits larger than the per-node mask a pod subnet may be (`PodSubnetNodeMaskMaxDiff`).
const POD_MASK_MAX_DIFF: u8 = 16;
/// The per-node pod CIDR mask sizes when unset (`DefaultNodeCIDRMaskSizeIPv4/6`).
pub(super) const DEFAULT_NODE_MASK: (u8, u8) = (24, 64);

impl Prefix {
    fn bit_len(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn host_bits(&self) -> u8 {
        self.bit_len() - self.bits
    }

    fn is_masked(&self) -> bool {
        let host = u32::from(self.host_bits());
        match self.addr {
            IpAddr::V4(a) => u32::from(a).checked_shl(32 - host).unwrap_or(0) == 0,
            IpAddr::V6(a) => u128::from(a).checked_shl(128 - host).unwrap_or(0) == 0,
        }
    }
}

/// Go's `netip.ParsePrefix`: an address, '/', and decimal bits without leading zeros.
pub(super) fn parse_prefix(s: &str) -> Option<Prefix> {
    let (addr, bits) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let digits_ok = !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && (bits == "0" || !bits.starts_with('0'));
    let bits: u8 = bits.parse().ok().filter(|_| digits_ok)?;
    let prefix = Prefix { addr, bits };
    (bits <= prefix.bit_len()).then_some(prefix)
}

/// `sideronet.ParseSubnetOrAddress`: a prefix, or a bare address.
pub(super) fn valid_subnet_or_address(s: &str) -> bool {
    parse_prefix(s).is_some() || s.parse::<IpAddr>().is_ok()
}

/// The per-node pod CIDR mask sizes (IPv4, IPv6), each `None` when out of range.
pub(super) type NodeMasks = (Option<u8>, Option<u8>);

/// Which list is checked, and so which size rule applies.
#[derive(Clone, Copy)]
pub(super) enum Subnets {
    Pod(NodeMasks),
    Service,
}

fn size_problem(which: Subnets, p: Prefix) -> Option<String> {
    match which {
        Subnets::Pod((v4, v6)) => {
            let mask = if p.addr.is_ipv4() { v4 } else { v6 }?;
            if p.bits > mask {
                Some(format!(
                    "invalid subnet: {p} is smaller than the per-node pod CIDR mask size /{mask}"
                ))
            } else if mask - p.bits > POD_MASK_MAX_DIFF {
                Some(format!(
                    "invalid subnet: {p} is too large for the per-node pod CIDR mask size /{mask}, the difference must be at most {POD_MASK_MAX_DIFF} bits"
                ))
            } else {
                None
            }
        }
        Subnets::Service if p.host_bits() > MAX_SERVICE_HOST_BITS => Some(format!(
            "invalid subnet: {p} is too large, it must be at least /{} (at most {MAX_SERVICE_HOST_BITS} host identifier bits)",
            p.bit_len() - MAX_SERVICE_HOST_BITS
        )),
        Subnets::Service => None,
    }
}

/// Talos's `validateSubnets`: its first complaint about `subnets` (all parsed), if any.
pub(super) fn problem(subnets: &[Prefix], which: Subnets) -> Option<String> {
    if subnets.is_empty() {
        return Some("at least one subnet must be specified".to_owned());
    }
    if subnets.len() > 2 {
        return Some("at most two subnets can be specified for dual-stack clusters".to_owned());
    }
    for &p in subnets {
        if !p.is_masked() {
            return Some(format!("invalid subnet: {p} is not a valid CIDR"));
        }
        if p.host_bits() < MIN_HOST_BITS {
            return Some(format!(
                "invalid subnet: /{} is too small, it must be larger than /{}",
                p.bits,
                p.bits - MIN_HOST_BITS
            ));
        }
        if let Some(why) = size_problem(which, p) {
            return Some(why);
        }
    }
    if subnets.iter().filter(|p| p.addr.is_ipv4()).count() > 1
        || subnets.iter().filter(|p| p.addr.is_ipv6()).count() > 1
    {
        return Some(
            "at most one IPv4 and one IPv6 subnet can be specified for dual-stack clusters"
                .to_owned(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_NODE_MASK, Subnets, parse_prefix, problem, valid_subnet_or_address};

    fn check(list: &[&str], which: Subnets) -> Option<String> {
        let parsed: Vec<_> = list.iter().map(|s| parse_prefix(s).unwrap()).collect();
        problem(&parsed, which)
    }

    #[test]
    fn prefixes_as_go_parses_them() {
        assert!(parse_prefix("10.244.0.0/16").is_some());
        assert!(parse_prefix("fd00::/64").is_some());
        for bad in [
            "x",
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "/8",
        ] {
            assert_eq!(parse_prefix(bad), None, "{bad}");
        }
        assert!(valid_subnet_or_address("10.0.0.1"));
        assert!(valid_subnet_or_address("10.0.0.1/8"));
        assert!(!valid_subnet_or_address("x"));
    }

    #[test]
    fn network_subnet_rules() {
        let pod = Subnets::Pod((Some(DEFAULT_NODE_MASK.0), Some(DEFAULT_NODE_MASK.1)));
        assert_eq!(check(&["10.244.0.0/16"], pod), None);
        assert_eq!(check(&["10.244.0.0/16", "fd00::/56"], pod), None);
        assert_eq!(check(&["10.96.0.0/12"], Subnets::Service), None);
        assert_eq!(
            check(&[], pod).unwrap(),
            "at least one subnet must be specified"
        );
        assert_eq!(
            check(&["10.244.0.1/16"], pod).unwrap(),
            "invalid subnet: 10.244.0.1/16 is not a valid CIDR"
        );
        assert_eq!(
            check(&["10.0.0.0/30"], Subnets::Service).unwrap(),
            "invalid subnet: /30 is too small, it must be larger than /26"
        );
        assert_eq!(
            check(&["10.0.0.0/8"], Subnets::Service).unwrap(),
            "invalid subnet: 10.0.0.0/8 is too large, it must be at least /12 (at most 20 host identifier bits)"
        );
        assert!(
            check(&["10.244.0.0/26"], pod)
                .unwrap()
                .contains("is smaller than")
        );
        assert!(
            check(&["10.0.0.0/7"], pod)
                .unwrap()
                .contains("is too large for")
        );
        assert!(
            check(&["10.0.0.0/16", "10.1.0.0/16"], pod)
                .unwrap()
                .contains("at most one IPv4")
        );
        assert!(
            check(&["10.0.0.0/16", "10.1.0.0/16", "fd00::/56"], pod)
                .unwrap()
                .contains("at most two subnets")
        );
        // An out-of-range per-node mask skips the size rule for its family.
        assert_eq!(check(&["10.0.0.0/7"], Subnets::Pod((None, None))), None);
    }
}
