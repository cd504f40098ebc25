//! What to do about a library error, in the CLI's terms. The library's messages state what
//! is wrong and name no CLI flag or command (the CNI plugin and an embedding agent have
//! neither); the CLI appends, by error variant, the flag that changes it or the command that
//! shows or undoes it.

use std::{borrow::Cow, fmt};

use vethfp::{
    AddRequest, BridgeError, DatapathError, EndpointError, NetlinkError, OwnershipError,
    RequestError, UplinkError, agent::AgentError,
};

/// A library error with the flag a command knows is meant (which of its arguments it was):
/// shown as the error itself, the hint appended by [`suffix`].
#[derive(Debug)]
pub struct WithHint {
    err: EndpointError,
    hint: &'static str,
}

impl fmt::Display for WithHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.err.fmt(f)
    }
}

impl std::error::Error for WithHint {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.err.source()
    }
}

/// `pair add`'s error: a container interface name already taken is the one of `--ifname`
/// (the library says which name and where, not which flag).
pub fn add_error(err: EndpointError, req: &AddRequest) -> anyhow::Error {
    let ifname_taken = matches!(
        &err,
        EndpointError::Netlink(NetlinkError::Exists { name, .. })
            if name == req.ifname.as_str() && name != req.host.as_str()
    );
    if ifname_taken {
        return WithHint {
            err,
            hint: " (pass another --ifname)",
        }
        .into();
    }
    err.into()
}

/// The hint for the first error in `e`'s chain that has one, as a suffix of its line.
pub fn suffix(e: &anyhow::Error) -> Option<Cow<'static, str>> {
    e.chain().find_map(|c| {
        if let Some(h) = c.downcast_ref::<WithHint>() {
            return Some(h.hint.into());
        }
        if let Some(ep) = c.downcast_ref::<EndpointError>() {
            return endpoint_hint(ep);
        }
        // The agent's errors wrap the registry's transparently: one link of the chain.
        match c.downcast_ref::<AgentError>() {
            Some(AgentError::Endpoint(ep)) => return endpoint_hint(ep),
            Some(AgentError::Datapath(d)) => return datapath_hint(d).map(Cow::from),
            _ => {}
        }
        // A concern's error on its own (not wrapped in an `EndpointError`).
        if let Some(r) = c.downcast_ref::<RequestError>() {
            return request_hint(r);
        }
        if let Some(o) = c.downcast_ref::<OwnershipError>() {
            return ownership_hint(o).map(Cow::from);
        }
        if let Some(u) = c.downcast_ref::<UplinkError>() {
            return uplink_hint(u).map(Cow::from);
        }
        if let Some(b) = c.downcast_ref::<BridgeError>() {
            return bridge_hint(b);
        }
        c.downcast_ref::<DatapathError>()
            .and_then(datapath_hint)
            .map(Cow::from)
    })
}

fn endpoint_hint(e: &EndpointError) -> Option<Cow<'static, str>> {
    match e {
        EndpointError::NotFound(_) => Some(": `vethfp pair list` shows the endpoints".into()),
        EndpointError::Request(r) => request_hint(r),
        EndpointError::Ownership(o) => ownership_hint(o).map(Cow::from),
        EndpointError::Uplink(u) => uplink_hint(u).map(Cow::from),
        EndpointError::Bridge(b) => bridge_hint(b),
        EndpointError::Datapath(d) => datapath_hint(d).map(Cow::from),
        _ => None,
    }
}

fn request_hint(e: &RequestError) -> Option<Cow<'static, str>> {
    Some(match e {
        RequestError::NoAddr => " (pass --addr, e.g. --addr 10.0.0.2/24)".into(),
        RequestError::HostExists(name) => {
            format!(": choose another name, or `vethfp pair del {name}` if it is an old endpoint")
                .into()
        }
        RequestError::BridgeMode => {
            " (`vethfp bridge accelerate` sets it on a bridge's ports)".into()
        }
        _ => return None,
    })
}

fn ownership_hint(e: &OwnershipError) -> Option<&'static str> {
    match e {
        OwnershipError::NotOurs { .. } => Some(" (the state directory is --bpffs)"),
        OwnershipError::NodeNetns(_) => Some(" (--netns)"),
        OwnershipError::OtherNamespace { .. } => {
            Some(" (use a separate --bpffs directory per node namespace)")
        }
        _ => None,
    }
}

fn uplink_hint(e: &UplinkError) -> Option<&'static str> {
    match e {
        UplinkError::NoSuchUplink(_) => Some(": see `ip link` and `vethfp status`"),
        _ => None,
    }
}

fn bridge_hint(e: &BridgeError) -> Option<Cow<'static, str>> {
    match e {
        BridgeError::BridgeRefused(_) => Some(" (pass --force to accelerate anyway)".into()),
        BridgeError::BridgeRefusedKept { bridge, .. } => Some(
            format!(
                "; `vethfp bridge release {bridge}` puts them back on the bridge path \
                 (or pass --force to accelerate anyway)"
            )
            .into(),
        ),
        _ => None,
    }
}

fn datapath_hint(e: &DatapathError) -> Option<&'static str> {
    match e {
        DatapathError::NotBpffs(_) => Some(" (then pass --bpffs DIR/vethfp)"),
        DatapathError::PrivateMounts => Some(" (--bpffs)"),
        DatapathError::Abi { found, want, .. } if found > want => {
            Some(" (pass another --bpffs directory)")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI's line for `e`: the error and its context, the hint appended.
    fn line(e: &anyhow::Error) -> String {
        format!("{e:#}{}", suffix(e).unwrap_or_default())
    }

    #[test]
    fn hints_follow_the_variant_through_context() {
        let e = anyhow::Error::from(EndpointError::from(BridgeError::BridgeRefused(
            "isolated".into(),
        )))
        .context("bridge accelerate br0");
        assert_eq!(
            suffix(&e).as_deref(),
            Some(" (pass --force to accelerate anyway)")
        );
        let e = anyhow::Error::from(EndpointError::Datapath(DatapathError::NotBpffs(
            "/tmp/x".into(),
        )));
        assert_eq!(
            suffix(&e).as_deref(),
            Some(" (then pass --bpffs DIR/vethfp)")
        );
        let e = anyhow::Error::from(AgentError::Endpoint(RequestError::NoAddr.into()));
        assert_eq!(
            suffix(&e).as_deref(),
            Some(" (pass --addr, e.g. --addr 10.0.0.2/24)")
        );
        let e = anyhow::Error::from(OwnershipError::NodeNetns("/proc/1/ns/net".into()));
        assert_eq!(suffix(&e).as_deref(), Some(" (--netns)"));
        let e = anyhow::Error::from(WithHint {
            err: EndpointError::NotFound("vf0".into()),
            hint: " (pass another --ifname)",
        })
        .context("pair add vf0");
        assert_eq!(
            format!("{e:#}"),
            format!("pair add vf0: {}", EndpointError::NotFound("vf0".into()))
        );
        assert_eq!(suffix(&e).as_deref(), Some(" (pass another --ifname)"));
        let e = anyhow::Error::from(EndpointError::Full(4096));
        assert_eq!(suffix(&e), None);
    }

    /// The commands the library's messages no longer name are in the CLI's line, as before.
    #[test]
    fn command_hints_keep_the_cli_line() {
        let e = anyhow::Error::from(EndpointError::NotFound("vf0".into()));
        assert_eq!(
            line(&e),
            "no endpoint named vf0: `vethfp pair list` shows the endpoints"
        );
        let e = anyhow::Error::from(EndpointError::from(RequestError::HostExists("vf0".into())));
        assert_eq!(
            line(&e),
            "interface vf0 already exists in the node: choose another name, or `vethfp pair \
             del vf0` if it is an old endpoint"
        );
        let e = anyhow::Error::from(EndpointError::from(BridgeError::BridgeRefusedKept {
            bridge: "br0".into(),
            reason: "port veth2 of br0 is isolated".into(),
            kept: "veth0, veth1".into(),
        }));
        assert_eq!(
            line(&e),
            "not accelerating the new ports of br0: port veth2 of br0 is isolated. The fast \
             path set up earlier stays in place on veth0, veth1 and skips this; `vethfp bridge \
             release br0` puts them back on the bridge path (or pass --force to accelerate \
             anyway)"
        );
        let e = anyhow::Error::from(EndpointError::from(UplinkError::NoSuchUplink("ul0".into())))
            .context("uplink detach ul0");
        assert!(
            line(&e)
                .ends_with("not an attached uplink (to detach): see `ip link` and `vethfp status`"),
            "{}",
            line(&e)
        );
        let e = anyhow::Error::from(EndpointError::from(RequestError::BridgeMode));
        assert!(
            line(&e).contains("`vethfp bridge accelerate`"),
            "{}",
            line(&e)
        );
        // The library's own messages name none of them.
        for e in [
            EndpointError::NotFound("vf0".into()),
            RequestError::HostExists("vf0".into()).into(),
            RequestError::BridgeMode.into(),
            UplinkError::NoSuchUplink("ul0".into()).into(),
            BridgeError::BridgeRefusedKept {
                bridge: "br0".into(),
                reason: "isolated".into(),
                kept: "veth0".into(),
            }
            .into(),
        ] {
            assert!(!e.to_string().contains("vethfp"), "{e}");
        }
    }
}
