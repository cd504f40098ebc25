//! What to do about a library error, in the CLI's terms. The library's messages state what
//! is wrong and name no flags (the CNI plugin and an embedding agent have none); the CLI
//! adds the flag that changes it, by error variant.

use std::fmt;

use vethfp::{AddRequest, DatapathError, EndpointError, NetlinkError, agent::AgentError};

/// A library error with the flag a command knows is meant (which of its arguments it was):
/// shown as the error itself, the hint appended by [`flag_hint`].
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

/// The flag hint for the first error in `e`'s chain that has one, as a suffix of its line.
pub fn flag_hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|c| {
        if let Some(h) = c.downcast_ref::<WithHint>() {
            return Some(h.hint);
        }
        if let Some(ep) = c.downcast_ref::<EndpointError>() {
            return endpoint_hint(ep);
        }
        // The agent's errors wrap the registry's transparently: one link of the chain.
        match c.downcast_ref::<AgentError>() {
            Some(AgentError::Endpoint(ep)) => return endpoint_hint(ep),
            Some(AgentError::Datapath(d)) => return datapath_hint(d),
            _ => {}
        }
        c.downcast_ref::<DatapathError>().and_then(datapath_hint)
    })
}

fn endpoint_hint(e: &EndpointError) -> Option<&'static str> {
    Some(match e {
        EndpointError::NoAddr => " (pass --addr, e.g. --addr 10.0.0.2/24)",
        EndpointError::BridgeRefused(_) => " (pass --force to accelerate anyway)",
        EndpointError::BridgeRefusedKept { .. } => " (or pass --force to accelerate anyway)",
        EndpointError::NotOurs { .. } => " (the state directory is --bpffs)",
        EndpointError::NodeNetns(_) => " (--netns)",
        EndpointError::OtherNamespace { .. } => {
            " (use a separate --bpffs directory per node namespace)"
        }
        EndpointError::Datapath(d) => return datapath_hint(d),
        _ => return None,
    })
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

    #[test]
    fn hints_follow_the_variant_through_context() {
        let e = anyhow::Error::from(EndpointError::BridgeRefused("isolated".into()))
            .context("bridge accelerate br0");
        assert_eq!(flag_hint(&e), Some(" (pass --force to accelerate anyway)"));
        let e = anyhow::Error::from(EndpointError::Datapath(DatapathError::NotBpffs(
            "/tmp/x".into(),
        )));
        assert_eq!(flag_hint(&e), Some(" (then pass --bpffs DIR/vethfp)"));
        let e = anyhow::Error::from(AgentError::Endpoint(EndpointError::NoAddr));
        assert_eq!(
            flag_hint(&e),
            Some(" (pass --addr, e.g. --addr 10.0.0.2/24)")
        );
        let e = anyhow::Error::from(WithHint {
            err: EndpointError::NotFound("vf0".into()),
            hint: " (pass another --ifname)",
        })
        .context("pair add vf0");
        assert_eq!(
            format!("{e:#}"),
            format!("pair add vf0: {}", EndpointError::NotFound("vf0".into()))
        );
        assert_eq!(flag_hint(&e), Some(" (pass another --ifname)"));
        let e = anyhow::Error::from(EndpointError::NotFound("vf0".into()));
        assert_eq!(flag_hint(&e), None);
    }
}
