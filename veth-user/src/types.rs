//! Parsed, validated user input: CIDRs, MAC addresses, interface names.
//! Parsers never panic; every error says what was wrong and what a valid value looks like.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid CIDR '{0}': expected ADDRESS/PREFIX such as 10.0.0.2/24 or fd00::2/64")]
    Cidr(String),
    #[error("invalid prefix length in '{0}': IPv4 allows 0-32, IPv6 0-128")]
    Prefix(String),
    #[error(
        "invalid MAC address '{0}': expected six hex pairs such as 02:00:0a:00:00:02 \
         (unicast: the lowest bit of the first byte must be 0)"
    )]
    Mac(String),
    #[error(
        "invalid interface name '{0}': 1 to 15 bytes, no '/', ':', '%' (the kernel would expand \
         '%d' to a number of its choice), whitespace, and not '.' or '..'"
    )]
    IfName(String),
}

/// An address with its prefix length, e.g. `10.0.0.2/24`. Serialized as that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
    /// Prefix length of a single host: 32 or 128.
    pub fn host_prefix(&self) -> u8 {
        if self.is_v4() { 32 } else { 128 }
    }
}

impl FromStr for Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| ParseError::Cidr(s.into()))?;
        let addr: IpAddr = a.parse().map_err(|_| ParseError::Cidr(s.into()))?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Prefix(s.into()));
        }
        let prefix: u8 = p.parse().map_err(|_| ParseError::Prefix(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(ParseError::Prefix(s.into()));
        }
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            return Err(ParseError::Cidr(s.into()));
        }
        if let IpAddr::V4(v4) = addr
            && (v4.is_broadcast() || v4.is_link_local())
        {
            return Err(ParseError::Cidr(s.into()));
        }
        if let IpAddr::V6(v6) = addr
            && v6.is_unicast_link_local()
        {
            return Err(ParseError::Cidr(s.into()));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address. The randomness is std's: the keys of a
    /// fresh `RandomState` come from the kernel's random pool (getrandom(2), once per thread,
    /// then a new key per call), so this plain input type makes no syscall of its own.
    pub fn random() -> Mac {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        );
        let mut b = [0u8; 6];
        b.copy_from_slice(&h.finish().to_le_bytes()[..6]);
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }
    /// Prefix of the host-end MACs vethfp makes: locally administered, unicast, "vf".
    pub const OWNED_PREFIX: [u8; 3] = [0x02, 0x76, 0x66];

    /// A random MAC for a host end vethfp creates: [`Mac::OWNED_PREFIX`] + 3 random bytes. The
    /// MAC is set in the same request that creates the link, so even a `pair add` killed right
    /// after that request leaves a link recognisable as vethfp's.
    pub fn random_owned() -> Mac {
        let mut m = Mac::random();
        m.0[..3].copy_from_slice(&Mac::OWNED_PREFIX);
        m
    }

    /// Made by [`Mac::random_owned`].
    pub fn is_owned(&self) -> bool {
        self.0[..3] == Mac::OWNED_PREFIX
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for Mac {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(|| ParseError::Mac(s.into()))?;
            if p.len() != 2 {
                return Err(ParseError::Mac(s.into()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| ParseError::Mac(s.into()))?;
        }
        let mac = Mac(out);
        if parts.next().is_some() || !mac.is_unicast() {
            return Err(ParseError::Mac(s.into()));
        }
        Ok(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A valid Linux interface name (IFNAMSIZ - 1 = 15 bytes at most).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && !s
                .bytes()
                .any(|b| b == b'/' || b == b':' || b == b'%' || b.is_ascii_whitespace() || b == 0);
        if ok {
            Ok(IfName(s.into()))
        } else {
            Err(ParseError::IfName(s.into()))
        }
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoof_and_mode_are_the_abis_by_name() {
        for s in [Spoof::Enforce, Spoof::Audit, Spoof::Off] {
            assert_eq!(s.to_abi().name(), s.name());
            assert_eq!(Spoof::from_abi(s.to_abi()), s);
        }
        for m in [Mode::Tc, Mode::Xdp] {
            let abi = m.to_abi().unwrap();
            assert_eq!(abi.name(), m.name());
            assert_eq!(Mode::of_record(abi.as_u32(), false), m);
        }
        assert_eq!(Mode::Bridge.to_abi(), None);
        assert_eq!(Mode::of_record(veth_common::MODE_TC, true), Mode::Bridge);
    }

    #[test]
    fn cidr_parses_and_rejects() {
        let c: Cidr = "10.0.0.2/24".parse().unwrap();
        assert_eq!(c.prefix, 24);
        assert_eq!(c.to_string(), "10.0.0.2/24");
        let c: Cidr = "fd00::2/64".parse().unwrap();
        assert!(!c.is_v4());
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "10.0.0.2/",
            "10.0.0/24",
            "fd00::2/129",
            "x/1",
            "10.0.0.2/+1",
            "0.0.0.0/0",
            "224.0.0.1/32",
            "127.0.0.1/8",
            "fe80::1/64",
            "169.254.1.1/32",
            "",
            "/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn mac_parses_and_rejects() {
        let m: Mac = "02:00:0a:00:00:02".parse().unwrap();
        assert_eq!(m.0, [2, 0, 10, 0, 0, 2]);
        assert_eq!(m.to_string(), "02:00:0a:00:00:02");
        for bad in [
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad} should be rejected");
        }
        let r = Mac::random();
        assert!(r.is_unicast() && r.0[0] & 2 == 2);
        let o = Mac::random_owned();
        assert!(o.is_unicast() && o.is_owned() && o.to_string().starts_with("02:76:66:"));
        assert!(!"02:aa:00:00:00:01".parse::<Mac>().unwrap().is_owned());
    }

    #[test]
    fn ifname_limits() {
        assert!("eth0".parse::<IfName>().is_ok());
        assert!("a23456789012345".parse::<IfName>().is_ok());
        for bad in [
            "",
            "a234567890123456",
            "a/b",
            "a b",
            "a:b",
            ".",
            "..",
            "vf%d",
            "%",
        ] {
            assert!(bad.parse::<IfName>().is_err(), "{bad} should be rejected");
        }
    }
}

/// How an endpoint's host end is accelerated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// tcx programs, `bpf_redirect_peer` (the default).
    Tc,
    /// Native XDP with devmap redirect; tcx stays attached for everything XDP passes.
    Xdp,
    /// A port of an accelerated Linux bridge (L2 fast path); set by `bridge accelerate`, not
    /// by a request.
    Bridge,
}

impl Mode {
    /// The name the CLI and JSON use: `tc`, `xdp` or `bridge`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tc => "tc",
            Mode::Xdp => "xdp",
            Mode::Bridge => "bridge",
        }
    }
}

impl Mode {
    /// The ABI's mode (`Target::mode`); None for `Bridge`, which is a `tc` endpoint with
    /// `EP_BRIDGE_PORT`, not a mode of its own in the maps.
    pub(crate) fn to_abi(self) -> Option<veth_common::Mode> {
        match self {
            Mode::Tc => Some(veth_common::Mode::Tc),
            Mode::Xdp => Some(veth_common::Mode::Xdp),
            Mode::Bridge => None,
        }
    }

    /// The mode of a record: its ABI mode (an unknown value reads as `tc`, as the datapath
    /// treats it), or `Bridge` for a bridge port.
    pub(crate) fn of_record(abi_mode: u32, bridge_port: bool) -> Mode {
        match (bridge_port, veth_common::Mode::from_u32(abi_mode)) {
            (true, _) => Mode::Bridge,
            (false, Some(veth_common::Mode::Xdp)) => Mode::Xdp,
            (false, _) => Mode::Tc,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Anti-spoofing of a container's source MAC and IP addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spoof {
    /// Drop frames whose source MAC or IP is not the endpoint's own (the default).
    #[default]
    Enforce,
    /// Count such frames under their drop reason but let them through the kernel path.
    Audit,
    /// No check.
    Off,
}

impl Spoof {
    /// `enforce`, `audit` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            Spoof::Enforce => "enforce",
            Spoof::Audit => "audit",
            Spoof::Off => "off",
        }
    }
}

impl Spoof {
    /// The ABI's anti-spoofing mode (its `flags()` are the record's bits).
    pub(crate) fn to_abi(self) -> veth_common::Spoof {
        match self {
            Spoof::Enforce => veth_common::Spoof::Enforce,
            Spoof::Audit => veth_common::Spoof::Audit,
            Spoof::Off => veth_common::Spoof::Off,
        }
    }

    pub(crate) fn from_abi(s: veth_common::Spoof) -> Spoof {
        match s {
            veth_common::Spoof::Enforce => Spoof::Enforce,
            veth_common::Spoof::Audit => Spoof::Audit,
            veth_common::Spoof::Off => Spoof::Off,
        }
    }
}

impl fmt::Display for Spoof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// FNV-1a, 64 bit: program pin names (the object's hash) and CNI host-end names.
pub(crate) fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a, 32 bit: network ids (part of the pinned state: never change it).
pub(crate) fn fnv1a32(bytes: impl IntoIterator<Item = u8>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
