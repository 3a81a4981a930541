//! The static address a machine configuration gives its node, as far as a simulated node can take
//! one: the first IPv4 address in 127.0.0.0/8 that the configuration assigns to a link.
//!
//! Where Talos reads static addresses, in document order:
//! - the v1alpha1 document's `.machine.network.interfaces[*]`: `addresses` (CIDR, or a bare
//!   address with a netmask of all ones), or the deprecated `cidr` when there are none (as
//!   Talos's `Device.Addresses()` does), then the same for each of its `vlans`; an interface with
//!   `ignore: true` is skipped, as Talos skips its configuration;
//! - the multi-document network configuration (Talos 1.12+): `LinkConfig`, `DummyLinkConfig`,
//!   `VLANConfig`, `BondConfig` and `BridgeConfig`, and `VRFConfig`, `WireguardConfig` and
//!   `VethConfig` (its peer too), which inline the same common link configuration:
//!   `addresses[*].address`, a prefix (`127.20.0.10/24`; Talos refuses a bare address there). A
//!   link with `up: false` is skipped: a link that is down serves nothing.

use std::net::Ipv4Addr;

use serde_json::Value;

/// Documents that inline Talos's `CommonLinkConfig` (machinery `config/types/network`, v1.14).
const LINK_KINDS: &[&str] = &[
    "LinkConfig",
    "DummyLinkConfig",
    "VLANConfig",
    "BondConfig",
    "BridgeConfig",
    "VRFConfig",
    "WireguardConfig",
    "VethConfig",
];

/// The first IPv4 address in 127.0.0.0/8 that `config` (a machine configuration, one or more
/// YAML documents) assigns to a link; `None` when it assigns none, or cannot be read (the parse
/// is bounded by the configuration engine's limits).
pub fn static_address(config: &str) -> Option<Ipv4Addr> {
    let docs = machineconfig::render::from_yaml(config).ok()?;
    docs.iter()
        .flat_map(assigned)
        .find_map(|(address, bare_allowed)| loopback(address, bare_allowed))
}

/// The addresses a document assigns, in order, each with whether a bare address (no prefix)
/// is accepted there.
fn assigned(doc: &Value) -> Vec<(&str, bool)> {
    let kind = doc["kind"].as_str();
    if kind.is_none() && doc["version"] == "v1alpha1" {
        return v1alpha1(doc);
    }
    if !kind.is_some_and(|k| LINK_KINDS.contains(&k)) {
        return Vec::new();
    }
    let mut found = link(doc);
    if kind == Some("VethConfig") {
        found.extend(link(&doc["peer"]));
    }
    found
}

/// `.machine.network.interfaces[*]` and their `vlans`.
fn v1alpha1(doc: &Value) -> Vec<(&str, bool)> {
    let mut found = Vec::new();
    for interface in items(&doc["machine"]["network"]["interfaces"]) {
        if interface["ignore"] == true {
            continue;
        }
        found.extend(device(interface));
        for vlan in items(&interface["vlans"]) {
            found.extend(device(vlan));
        }
    }
    found
}

/// A v1alpha1 device's or VLAN's addresses: `addresses`, else `cidr`.
fn device(device: &Value) -> Vec<(&str, bool)> {
    let addresses: Vec<(&str, bool)> = items(&device["addresses"])
        .iter()
        .filter_map(Value::as_str)
        .map(|a| (a, true))
        .collect();
    if !addresses.is_empty() {
        return addresses;
    }
    device["cidr"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(|c| vec![(c, true)])
        .unwrap_or_default()
}

/// A common link configuration's `addresses[*].address`, unless the link is set down.
fn link(link: &Value) -> Vec<(&str, bool)> {
    if link["up"] == false {
        return Vec::new();
    }
    items(&link["addresses"])
        .iter()
        .filter_map(|a| a["address"].as_str())
        .map(|a| (a, false))
        .collect()
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// `address` (`a.b.c.d/len`, or a bare `a.b.c.d` where `bare_allowed`) if it is IPv4 in
/// 127.0.0.0/8 with a valid prefix length.
fn loopback(address: &str, bare_allowed: bool) -> Option<Ipv4Addr> {
    let (ip, prefix) = match address.trim().split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None if bare_allowed => (address.trim(), None),
        None => return None,
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && prefix.parse::<u8>().is_ok_and(|p| p <= 32);
        if !valid {
            return None;
        }
    }
    ip.parse::<Ipv4Addr>().ok().filter(Ipv4Addr::is_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<Ipv4Addr> {
        s.parse().ok()
    }

    #[test]
    fn v1alpha1_interfaces_and_vlans() {
        let config = "version: v1alpha1\nmachine:\n  type: worker\n  network:\n    interfaces:\n      - interface: eth0\n        dhcp: true\n        vlans:\n          - vlanId: 5\n            addresses: [10.0.0.4/24, 127.20.0.11/24]\n      - interface: eth1\n        addresses: [127.20.0.12/24]\n";
        assert_eq!(static_address(config), addr("127.20.0.11"), "the VLAN's");
        let config = "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses:\n          - 192.168.1.10/24\n          - 127.20.0.10/24\n";
        assert_eq!(static_address(config), addr("127.20.0.10"));
    }

    #[test]
    fn v1alpha1_bare_addresses_cidr_and_ignored_interfaces() {
        let bare = "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [127.20.0.13]\n";
        assert_eq!(static_address(bare), addr("127.20.0.13"));
        let cidr = "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        cidr: 127.20.0.14/24\n";
        assert_eq!(static_address(cidr), addr("127.20.0.14"));
        // `cidr` only counts where there are no `addresses`, as in Talos.
        let both = "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [127.20.0.15/24]\n        cidr: 127.20.0.16/24\n";
        assert_eq!(static_address(both), addr("127.20.0.15"));
        let ignored = "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        ignore: true\n        addresses: [127.20.0.17/24]\n      - interface: eth1\n        addresses: [127.20.0.18/24]\n";
        assert_eq!(static_address(ignored), addr("127.20.0.18"));
    }

    #[test]
    fn multi_document_network_configuration() {
        let config = "version: v1alpha1\nmachine:\n  type: controlplane\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: cp-1\n---\napiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\nup: true\naddresses:\n  - address: 127.20.0.10/24\nroutes:\n  - gateway: 127.20.0.1\n";
        assert_eq!(static_address(config), addr("127.20.0.10"));
        for kind in [
            "DummyLinkConfig",
            "VLANConfig",
            "BondConfig",
            "BridgeConfig",
            "VRFConfig",
            "WireguardConfig",
        ] {
            let config = format!(
                "apiVersion: v1alpha1\nkind: {kind}\nname: l0\naddresses:\n  - address: 127.21.0.1/32\n"
            );
            assert_eq!(static_address(&config), addr("127.21.0.1"), "{kind}");
        }
        let veth = "apiVersion: v1alpha1\nkind: VethConfig\nname: veth0\npeer:\n  name: veth1\n  addresses:\n    - address: 127.21.0.2/24\n";
        assert_eq!(static_address(veth), addr("127.21.0.2"), "the peer's");
    }

    #[test]
    fn documents_in_order_and_links_set_down_skipped() {
        let config = "apiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\nup: false\naddresses:\n  - address: 127.22.0.1/24\n---\napiVersion: v1alpha1\nkind: BondConfig\nname: bond0\naddresses:\n  - address: 127.22.0.2/24\n---\nversion: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [127.22.0.3/24]\n";
        assert_eq!(static_address(config), addr("127.22.0.2"));
    }

    #[test]
    fn only_ipv4_loopback_addresses_count() {
        let config = "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.5.0.12/24, '::1/128', 'fd00::7/64', 128.0.0.1/8]\n---\napiVersion: v1alpha1\nkind: LinkConfig\nname: eth1\naddresses:\n  - address: 192.168.1.10/24\n  - address: ::1/128\n";
        assert_eq!(static_address(config), None);
    }

    #[test]
    fn addresses_talos_would_refuse_do_not_count() {
        for bad in [
            "127.20.0.10/33",
            "127.20.0.10/",
            "127.20.0.10/+8",
            "127.20.0.10/24/1",
            "127.20.0.256/24",
            "127.20.0/24",
            "localhost/8",
            "",
        ] {
            let config = format!(
                "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: ['{bad}']\n"
            );
            assert_eq!(static_address(&config), None, "{bad:?}");
        }
        // A LinkConfig address needs its prefix.
        let bare = "apiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\naddresses:\n  - address: 127.20.0.10\n";
        assert_eq!(static_address(bare), None);
        // Other kinds' addresses are not link addresses.
        let other = "apiVersion: v1alpha1\nkind: Layer2VIPConfig\nname: 127.20.0.50\nlink: eth0\n---\napiVersion: v1alpha1\nkind: StaticHostConfig\nname: 127.20.0.51\nhostnames: [a]\n";
        assert_eq!(static_address(other), None);
    }

    #[test]
    fn no_address_and_garbage_give_none() {
        for garbage in [
            "",
            "---",
            "version: v1alpha1\nmachine:\n  type: worker\n",
            "just a string",
            "[1, 2, 3]",
            "version: v1alpha1\nmachine: 7",
            "version: v1alpha1\nmachine:\n  network:\n    interfaces: {eth0: 127.0.0.5/8}\n",
            "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - 127.0.0.5/8\n      - addresses: 127.0.0.6/8\n      - addresses: [[127.0.0.7/8], {a: 1}, 5]\n",
            "kind: LinkConfig\naddresses: [127.0.0.8/8, {address: [127.0.0.9/8]}]\n",
            "kind: [LinkConfig]\naddresses:\n  - address: 127.0.0.10/8\n",
            "key: [unclosed",
            "\u{0}\u{1}\u{ff}: : :",
            "a: &a [*a]",
            "version: v1alpha1\nmachine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [127.0.0.1/8]\n---\n: [",
        ] {
            assert_eq!(static_address(garbage), None, "{garbage:?}");
        }
        let deep = format!("{}127.0.0.1/8{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(static_address(&deep), None);
    }
}
