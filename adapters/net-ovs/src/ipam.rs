//! Address management, pure: which addresses of a subnet may be handed out, the next free
//! one, whether a requested one fits, and which subnet of a pool is next. No I/O: the
//! store decides who wins a race (see [`crate::state`]).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why an address or subnet cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Not an IPv4 address.
    #[error("{0:?} is not an IPv4 address")]
    NotAnAddress(String),
    /// Not an IPv4 subnet in CIDR form.
    #[error("{0:?} is not an IPv4 subnet such as 10.50.0.0/24")]
    NotASubnet(String),
    /// The address lies outside the network's subnet.
    #[error("{address} is outside {subnet}")]
    Outside {
        /// The address asked for.
        address: Ipv4Addr,
        /// The network's subnet.
        subnet: Ipv4Net,
    },
    /// The address is the subnet's network, broadcast or gateway address.
    #[error("{address} is reserved in {subnet} (network, gateway or broadcast address)")]
    Reserved {
        /// The address asked for.
        address: Ipv4Addr,
        /// The network's subnet.
        subnet: Ipv4Net,
    },
    /// The subnet is too small to hold containers.
    #[error("{0} is too small: a network needs at least a /29")]
    TooSmall(Ipv4Net),
}

/// Parses `10.50.0.0/24` (host bits are cleared: `10.50.0.7/24` is `10.50.0.0/24`).
pub fn parse_subnet(text: &str) -> Result<Ipv4Net, IpamError> {
    let net: Ipv4Net = text
        .trim()
        .parse()
        .map_err(|_| IpamError::NotASubnet(text.to_owned()))?;
    let net = net.trunc();
    if net.prefix_len() > 29 {
        return Err(IpamError::TooSmall(net));
    }
    Ok(net)
}

/// Parses an IPv4 address.
pub fn parse_address(text: &str) -> Result<Ipv4Addr, IpamError> {
    text.trim()
        .parse()
        .map_err(|_| IpamError::NotAnAddress(text.to_owned()))
}

/// The MAC address of the interface that holds `address`: `0a:58` and the address's four
/// bytes (locally administered), so that an interface made again after a restart keeps the
/// MAC its peers already know.
pub fn mac_for(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// The address kept free in every subnet for a gateway: the first host address (`.1`).
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Whether `address` may be handed out in `subnet`: inside it, and not its network,
/// gateway or broadcast address.
pub fn check_address(subnet: Ipv4Net, address: Ipv4Addr) -> Result<(), IpamError> {
    if !subnet.contains(&address) {
        return Err(IpamError::Outside { address, subnet });
    }
    if address == subnet.network() || address == subnet.broadcast() || address == gateway(subnet) {
        return Err(IpamError::Reserved { address, subnet });
    }
    Ok(())
}

/// The addresses of `subnet` that may be handed out, lowest first.
pub fn assignable(subnet: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()) - 1;
    (first..=last).map(Ipv4Addr::from)
}

/// How many addresses of `subnet` may be handed out.
pub fn capacity(subnet: Ipv4Net) -> usize {
    assignable(subnet).count()
}

/// The lowest assignable address of `subnet` not in `used`, if any.
pub fn first_free(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    assignable(subnet).find(|a| !used.contains(a))
}

/// The first `/prefix` of `pool` that overlaps none of `taken`, if any.
pub fn next_subnet(pool: Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool.subnets(prefix)
        .ok()?
        .find(|candidate| !taken.iter().any(|t| overlaps(*t, *candidate)))
}

/// Whether two subnets share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        parse_subnet(s).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        parse_address(s).unwrap()
    }

    #[test]
    fn the_network_gateway_and_broadcast_are_never_handed_out() {
        let blue = net("10.50.0.0/24");
        assert_eq!(assignable(blue).next(), Some(ip("10.50.0.2")));
        assert_eq!(assignable(blue).last(), Some(ip("10.50.0.254")));
        assert_eq!(capacity(blue), 253);
        assert_eq!(capacity(net("10.9.0.0/29")), 5);
        for reserved in ["10.50.0.0", "10.50.0.1", "10.50.0.255"] {
            assert!(matches!(
                check_address(blue, ip(reserved)),
                Err(IpamError::Reserved { .. })
            ));
        }
        assert!(check_address(blue, ip("10.50.0.12")).is_ok());
        assert_eq!(
            check_address(blue, ip("10.51.0.12"))
                .unwrap_err()
                .to_string(),
            "10.51.0.12 is outside 10.50.0.0/24"
        );
    }

    #[test]
    fn the_lowest_free_address_comes_next() {
        let blue = net("10.50.0.0/29");
        let mut used = BTreeSet::new();
        for expected in [
            "10.50.0.2",
            "10.50.0.3",
            "10.50.0.4",
            "10.50.0.5",
            "10.50.0.6",
        ] {
            let next = first_free(blue, &used).unwrap();
            assert_eq!(next, ip(expected));
            used.insert(next);
        }
        assert_eq!(first_free(blue, &used), None, "exhausted");
        used.remove(&ip("10.50.0.3"));
        assert_eq!(
            first_free(blue, &used),
            Some(ip("10.50.0.3")),
            "a released one is reused"
        );
    }

    #[test]
    fn subnets_parse_strictly() {
        assert_eq!(net("10.50.0.7/24"), net("10.50.0.0/24"));
        assert!(matches!(
            parse_subnet("10.50.0.0"),
            Err(IpamError::NotASubnet(_))
        ));
        assert!(matches!(
            parse_subnet("10.50.0.0/33"),
            Err(IpamError::NotASubnet(_))
        ));
        assert!(matches!(
            parse_subnet("fd00::/64"),
            Err(IpamError::NotASubnet(_))
        ));
        assert!(matches!(
            parse_subnet("10.50.0.0/30"),
            Err(IpamError::TooSmall(_))
        ));
        assert!(matches!(
            parse_address("10.50.0"),
            Err(IpamError::NotAnAddress(_))
        ));
    }

    #[test]
    fn pools_hand_out_the_first_subnet_nothing_overlaps() {
        let pool = net("10.60.0.0/16");
        assert_eq!(next_subnet(pool, 24, &[]), Some(net("10.60.0.0/24")));
        let taken = [
            net("10.60.0.0/24"),
            net("10.60.1.0/25"),
            net("10.60.0.0/16"),
        ];
        assert_eq!(
            next_subnet(pool, 24, &taken[..2]),
            Some(net("10.60.2.0/24"))
        );
        assert_eq!(
            next_subnet(pool, 24, &taken),
            None,
            "the whole pool is taken"
        );
        assert!(overlaps(net("10.60.0.0/16"), net("10.60.5.0/24")));
        assert!(!overlaps(net("10.60.0.0/24"), net("10.60.1.0/24")));
    }
}
