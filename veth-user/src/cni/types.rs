//! The CNI wire types: network configuration, results, and their decoding.

use super::*;

/// The network configuration on stdin: the standard keys and vethfp's own.
#[derive(Debug, Deserialize)]
pub(crate) struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// Our own plugin name (the spec requires it; not needed after dispatch).
    #[serde(rename = "type", default)]
    #[allow(dead_code)]
    pub kind: String,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// Directory inside a mounted bpffs for the pinned state (default /sys/fs/bpf/vethfp).
    #[serde(default)]
    pub bpffs: Option<PathBuf>,
    /// MTU of both ends of pairs vethfp creates (default: the kernel's).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// "tc" (default) or "xdp".
    #[serde(default)]
    pub mode: Option<String>,
    /// Fast-path network (isolation domain; default: the CNI network's `name`). Endpoints
    /// of different networks never use the fast path between each other.
    #[serde(default)]
    pub network: Option<String>,
    /// Anti-spoofing of the container's source MAC and IP: "enforce" (default), "audit", "off".
    #[serde(default)]
    pub spoof: Option<String>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct IpamConf {
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    pub(super) fn bpffs_dir(&self) -> PathBuf {
        self.bpffs
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS))
    }

    pub(super) fn mode(&self) -> Result<Mode> {
        let Some(m) = self.mode.as_deref() else {
            return Ok(Mode::Tc);
        };
        match veth_common::Mode::from_name(m) {
            Some(veth_common::Mode::Tc) => Ok(Mode::Tc),
            Some(veth_common::Mode::Xdp) => Ok(Mode::Xdp),
            None => Err(CniError::new(
                ERR_INVALID_CONFIG,
                format!("invalid \"mode\": \"{m}\": use \"tc\" or \"xdp\""),
            )),
        }
    }

    pub(super) fn spoof(&self) -> Result<Spoof> {
        let Some(m) = self.spoof.as_deref() else {
            return Ok(Spoof::Enforce);
        };
        match veth_common::Spoof::from_name(m) {
            Some(s) => Ok(Spoof::from_abi(s)),
            None => Err(CniError::new(
                ERR_INVALID_CONFIG,
                format!("invalid \"spoof\": \"{m}\": use \"enforce\", \"audit\" or \"off\""),
            )),
        }
    }

    pub(super) fn network_name(&self) -> String {
        self.network.clone().unwrap_or_else(|| self.name.clone())
    }
}

/// The parts of a CNI result (an IPAM result or prevResult) vethfp reads. Unknown keys are
/// ignored, so results of every supported version parse.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<ResultIface>,
    #[serde(default)]
    pub ips: Vec<ResultIp>,
    #[serde(default)]
    pub routes: Vec<ResultRoute>,
    #[serde(default)]
    pub dns: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResultIface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResultIp {
    pub address: String,
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResultRoute {
    pub dst: String,
}

impl CniResult {
    pub(super) fn sandbox_ifaces(&self) -> impl Iterator<Item = (usize, &ResultIface)> {
        self.interfaces
            .iter()
            .enumerate()
            .filter(|(_, i)| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }

    pub(super) fn host_ifaces(&self) -> impl Iterator<Item = &ResultIface> {
        self.interfaces
            .iter()
            .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
    }

    /// Index of the container interface `ifname` in `interfaces`.
    pub(super) fn container_iface(&self, ifname: &str) -> Option<usize> {
        self.sandbox_ifaces()
            .find(|(_, i)| i.name == ifname)
            .map(|(n, _)| n)
    }

    /// Addresses that belong to interface `idx` (or name no interface).
    pub(super) fn ips_of(&self, idx: usize) -> impl Iterator<Item = &ResultIp> {
        self.ips
            .iter()
            .filter(move |ip| ip.interface.is_none_or(|i| i == idx))
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| decode_err(e, what))
}

pub(super) fn decode_value<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| decode_err(e, what))
}

pub(super) fn decode_err(e: serde_json::Error, what: &str) -> CniError {
    use serde_json::error::Category;
    match e.classify() {
        // Well-formed JSON with a wrong type or a missing key: a config problem.
        Category::Data => CniError::new(ERR_INVALID_CONFIG, format!("invalid {what}: {e}")),
        _ => CniError::new(ERR_DECODE, format!("failed to decode {what}: {e}")),
    }
}

/// The ADD result of a pair vethfp made: host end, container end (with sandbox), the IPAM
/// addresses on the container end, and the routed-mode default routes.
pub(super) fn standalone_result(
    version: &str,
    view: &EndpointView,
    sandbox: &str,
    dns: Option<Value>,
) -> Value {
    let pre_1_0 = !version_at_least(version, "1.0.0");
    let with_mtu = version_at_least(version, "1.1.0");
    let mut host = json!({"name": view.host_if, "mac": view.host_mac.to_string()});
    let mut cont = json!({
        "name": view.ifname,
        "mac": view.container_mac.to_string(),
        "sandbox": sandbox,
    });
    if with_mtu {
        host["mtu"] = json!(view.mtu);
        cont["mtu"] = json!(view.mtu);
    }
    let ips: Vec<Value> = view
        .addrs
        .iter()
        .map(|a| {
            let gw: IpAddr = if a.is_v4() {
                GATEWAY_V4.into()
            } else {
                GATEWAY_V6.into()
            };
            let mut ip =
                json!({"address": a.to_string(), "gateway": gw.to_string(), "interface": 1});
            if pre_1_0 {
                ip["version"] = json!(if a.is_v4() { "4" } else { "6" });
            }
            ip
        })
        .collect();
    let mut routes = Vec::new();
    if view.addrs.iter().any(Cidr::is_v4) {
        routes.push(
            json!({"dst": format!("{}/0", Ipv4Addr::UNSPECIFIED), "gw": GATEWAY_V4.to_string()}),
        );
    }
    if view.addrs.iter().any(|a| !a.is_v4()) {
        routes.push(
            json!({"dst": format!("{}/0", Ipv6Addr::UNSPECIFIED), "gw": GATEWAY_V6.to_string()}),
        );
    }
    let mut res = json!({
        "cniVersion": version,
        "interfaces": [host, cont],
        "ips": ips,
        "routes": routes,
    });
    if let Some(d) = dns {
        res["dns"] = d;
    }
    res
}
