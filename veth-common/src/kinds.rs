//! Typed names for the small integer sets of the ABI: counter directions and verdicts (indices
//! into [`Counters`](crate::Counters)), endpoint modes (`Target::mode`), anti-spoofing modes
//! (`EndpointRecord::flags` bits), the hooks vethfp attaches (link pin names) and the programs of
//! the BPF object (ELF names). One place for every name, index and flag: the `pub const`s in the
//! crate root are defined from these.
//!
//! Each enum has `ALL` (every value, in index order), `name()` (the string the CLI, JSON and pin
//! names use), `index()` / `as_u32()` (the map value), `from_u32()` / `TryFrom<u32>` and
//! `from_name()` / `FromStr`. Everything is `const` where it can be and needs no `std`, so the
//! BPF programs use the same types.

use core::fmt;

/// A value that is not one of an enum's: `kind` names the enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: u32,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a valid {} value", self.value, self.kind)
    }
}

impl core::error::Error for UnknownValue {}

/// A name that is not one of an enum's: `kind` names the enum, `valid` lists the names it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownName {
    pub kind: &'static str,
    pub valid: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a valid {}: use one of ", self.kind)?;
        for (i, n) in self.valid.iter().enumerate() {
            write!(f, "{}\"{n}\"", if i == 0 { "" } else { ", " })?;
        }
        Ok(())
    }
}

impl core::error::Error for UnknownName {}

macro_rules! abi_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $str:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in index order.
            pub const ALL: [$name; [$($str),+].len()] = [$($name::$variant),+];
            /// Every name, in index order.
            pub const NAMES: [&'static str; [$($str),+].len()] = [$($str),+];

            /// The name the CLI, JSON output and pin files use.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $str, )+
                }
            }

            /// The value as an index (counter arrays, name tables).
            #[inline(always)]
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The value as stored in the maps.
            #[inline(always)]
            pub const fn as_u32(self) -> u32 {
                self as u32
            }

            pub const fn from_u32(v: u32) -> Option<$name> {
                match v {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }

            pub fn from_name(s: &str) -> Option<$name> {
                match s {
                    $( $str => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl TryFrom<u32> for $name {
            type Error = UnknownValue;
            fn try_from(v: u32) -> Result<Self, UnknownValue> {
                $name::from_u32(v).ok_or(UnknownValue { kind: $kind, value: v })
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                v as u32
            }
        }

        impl core::str::FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                $name::from_name(s).ok_or(UnknownName { kind: $kind, valid: &$name::NAMES })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

abi_enum! {
    /// Counter direction: the first index of [`Counters::c`](crate::Counters). Uplinks count
    /// "received from outside" as `ToContainer`.
    Dir, "direction" {
        FromContainer = 0 => "from_container",
        ToContainer = 1 => "to_container",
    }
}

abi_enum! {
    /// Counter verdict: the second index of [`Counters::c`](crate::Counters). Every packet a
    /// hook decides is counted once under one verdict.
    Verdict, "verdict" {
        /// Redirected straight to/from a local endpoint by the fast path.
        Fast = 0 => "fast",
        /// The uplink fast path (to/from outside the node).
        FastUplink = 1 => "fast_uplink",
        /// Handed to (or delivered by) the kernel stack.
        Stack = 2 => "stack",
        /// Dropped: source address not the endpoint's own (anti-spoofing).
        DropSpoofIp = 3 => "drop_spoof_ip",
        /// Dropped: source MAC not the endpoint's own.
        DropSpoofMac = 4 => "drop_spoof_mac",
        /// Dropped by policy (isolation).
        DropPolicy = 5 => "drop_policy",
        /// Dropped: the redirect helper failed after the frame was rewritten.
        DropError = 6 => "drop_error",
        Reserved = 7 => "reserved",
    }
}

impl Verdict {
    /// Taken by a fast path (local or uplink).
    pub const fn is_fast(self) -> bool {
        matches!(self, Verdict::Fast | Verdict::FastUplink)
    }

    /// A drop (anti-spoofing, policy, helper error). Under anti-spoofing `audit` the spoof
    /// verdicts are counted but the frame still takes the kernel path.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Verdict::DropSpoofIp | Verdict::DropSpoofMac | Verdict::DropPolicy | Verdict::DropError
        )
    }
}

abi_enum! {
    /// Endpoint mode (`Target::mode`). Bridge ports are `Tc` with `EP_BRIDGE_PORT`.
    Mode, "mode" {
        /// tcx ingress program, bpf_redirect_peer (default).
        Tc = 0 => "tc",
        /// Native XDP program, devmap redirect (tcx stays attached for what XDP passes).
        Xdp = 1 => "xdp",
    }
}

abi_enum! {
    /// Anti-spoofing of an endpoint's source MAC and IP (`EndpointRecord::flags` bits).
    Spoof, "anti-spoofing mode" {
        Off = 0 => "off",
        /// Drop frames whose source MAC or IP is not the endpoint's own.
        Enforce = 1 => "enforce",
        /// Count such frames under their drop reason, let them through to the kernel stack.
        Audit = 2 => "audit",
    }
}

impl Spoof {
    /// The `EndpointRecord::flags` bits of this mode.
    pub const fn flags(self) -> u32 {
        match self {
            Spoof::Off => 0,
            Spoof::Enforce => crate::EP_SPOOF_ENFORCE,
            Spoof::Audit => crate::EP_SPOOF_AUDIT,
        }
    }

    /// The mode a record's flags say (enforce wins if both bits are set, as the datapath does).
    pub const fn from_flags(flags: u32) -> Spoof {
        if flags & crate::EP_SPOOF_ENFORCE != 0 {
            Spoof::Enforce
        } else if flags & crate::EP_SPOOF_AUDIT != 0 {
            Spoof::Audit
        } else {
            Spoof::Off
        }
    }
}

abi_enum! {
    /// A place vethfp attaches a program: the prefix of its link pin (`links/<hook>-<ifindex>`)
    /// for links; endpoint tc hooks are cls_bpf filters (no pin; the name is what logs and
    /// reconcile reports say).
    Hook, "hook" {
        /// cls_bpf ingress filter of an endpoint's host end (or of a bridge port).
        TcIngress = 0 => "tc-ingress",
        /// cls_bpf egress filter of an endpoint's host end.
        TcEgress = 1 => "tc-egress",
        /// XDP of an endpoint's host end (mode `xdp`).
        Xdp = 2 => "xdp",
        /// tcx ingress of an attached uplink.
        UplinkIngress = 3 => "uplink-ingress",
        /// tcx egress of an attached uplink.
        UplinkEgress = 4 => "uplink-egress",
    }
}

impl Hook {
    /// The program attached at this hook of a routed endpoint or an uplink. A bridge port's
    /// `TcIngress` runs [`Program::L2Ingress`] instead: see [`Hook::program_for`].
    pub const fn program(self) -> Program {
        match self {
            Hook::TcIngress => Program::TcIngress,
            Hook::TcEgress => Program::TcEgress,
            Hook::Xdp => Program::Xdp,
            Hook::UplinkIngress => Program::UplinkIngress,
            Hook::UplinkEgress => Program::UplinkEgress,
        }
    }

    /// The program attached at this hook of an endpoint that is (or is not) a bridge port.
    pub const fn program_for(self, bridge_port: bool) -> Program {
        match self {
            Hook::TcIngress if bridge_port => Program::L2Ingress,
            h => h.program(),
        }
    }

    /// The hooks of an endpoint in `mode`, in attach order.
    pub const fn of_endpoint(mode: Mode) -> &'static [Hook] {
        match mode {
            Mode::Tc => &[Hook::TcIngress, Hook::TcEgress],
            Mode::Xdp => &[Hook::TcIngress, Hook::TcEgress, Hook::Xdp],
        }
    }

    /// The hooks of an attached uplink.
    pub const UPLINK: [Hook; 2] = [Hook::UplinkIngress, Hook::UplinkEgress];
}

abi_enum! {
    /// A program of the BPF object; `name()` is its ELF symbol, what the loader looks up and
    /// the prefix of its pin (`progs/<name>-<object hash>`). In the order they are loaded.
    Program, "program" {
        TcIngress = 0 => "vfp_tc_ingress",
        TcEgress = 1 => "vfp_tc_egress",
        Xdp = 2 => "vfp_xdp",
        UplinkIngress = 3 => "vfp_uplink_ingress",
        L2Ingress = 4 => "vfp_l2_ingress",
        UplinkEgress = 5 => "vfp_uplink_egress",
    }
}

impl Program {
    /// The hook this program is attached at.
    pub const fn hook(self) -> Hook {
        match self {
            Program::TcIngress | Program::L2Ingress => Hook::TcIngress,
            Program::TcEgress => Hook::TcEgress,
            Program::Xdp => Hook::Xdp,
            Program::UplinkIngress => Hook::UplinkIngress,
            Program::UplinkEgress => Hook::UplinkEgress,
        }
    }

    /// An XDP program (the others are tcx classifiers).
    pub const fn is_xdp(self) -> bool {
        matches!(self, Program::Xdp)
    }
}
