//! The CNI plugin (spec 1.1; configs of 0.3.x, 0.4.0 and 1.0.0 are accepted too) over the
//! endpoint registry. The binary calls [`handle`] when `CNI_COMMAND` is set; this module only
//! turns the runtime's environment and stdin into registry calls and the answer into JSON.
//!
//! Two modes, chosen per call by the config:
//! - **standalone** (no `prevResult` in ADD): vethfp creates the pair itself, named
//!   [`host_name`]`(CNI_CONTAINERID, CNI_IFNAME)`, with addresses from the IPAM plugin named in
//!   `ipam.type` (looked up in `CNI_PATH`, executed with the same environment and stdin);
//! - **chained** (after `ptp` or `bridge`, `prevResult` present): the previous plugin made the
//!   interface; vethfp finds its host end through the container end's veth peer index, adopts
//!   it (attaches the fast path, registers its addresses) and passes `prevResult` on unchanged.

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Deserialize;
use serde_json::{Value, json};
use veth_common::EP_CNI;

use crate::types::{Mode, Spoof};
use crate::{
    DEFAULT_BPFFS, DatapathError, NetlinkError,
    registry::{
        self, AddRequest, AdoptRequest, EndpointError, EndpointView, GATEWAY_V4, GATEWAY_V6,
        Registry,
        node::{self, Netns},
    },
    types::{Cidr, IfName},
};

/// Spec versions whose configs and results this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of them (what VERSION reports as its own).
pub const CURRENT_VERSION: &str = "1.1.0";
/// Host ends made in standalone mode are named `vfp` + 12 hex digits.
pub const HOST_PREFIX: &str = "vfp";

/// Error codes of the spec.
pub const ERR_INCOMPATIBLE_VERSION: u32 = 1;
pub const ERR_INVALID_ENV: u32 = 4;
pub const ERR_IO: u32 = 5;
pub const ERR_DECODE: u32 = 6;
pub const ERR_INVALID_CONFIG: u32 = 7;
pub const ERR_TRY_AGAIN: u32 = 11;
pub const ERR_NOT_AVAILABLE: u32 = 50;
pub const ERR_LIMITED_CONNECTIVITY: u32 = 51;
/// Plugin-specific codes (100 and up).
/// ADD for a (container, ifname) that already has an endpoint: DEL it first.
pub const ERR_EXISTS: u32 = 100;
/// Creating, attaching or removing the endpoint failed (netlink, BPF).
pub const ERR_DATAPATH: u32 = 101;
/// The IPAM plugin is missing, failed without a CNI error, or returned something unusable.
pub const ERR_IPAM: u32 = 102;
/// CHECK found the endpoint different from prevResult (or missing).
pub const ERR_CHECK: u32 = 103;
/// Chained mode: prevResult and the container do not show an interface vethfp can adopt.
pub const ERR_CHAINED: u32 = 104;

/// A CNI error: printed as `{"cniVersion","code","msg","details"}` with a non-zero exit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }

    /// The error object of the spec, for stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

type Result<T, E = CniError> = std::result::Result<T, E>;

/// The `CNI_*` environment of one call (empty variables count as unset).
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    pub fn from_process() -> CniEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        CniEnv {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }
}

/// What goes back to the runtime: JSON for stdout (if any) and success or failure.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Option<Value>,
}

impl Reply {
    pub fn error(cni_version: &str, e: &CniError) -> Reply {
        Reply {
            ok: false,
            json: Some(e.to_json(cni_version)),
        }
    }
}

/// Runs one plugin call.
/// The CNI plugin's process entry point (see docs/CNI.md): config on stdin, the result or the
/// spec's error object on stdout, non-zero exit on error. Logs go to stderr only.
pub fn main() -> std::process::ExitCode {
    use std::io::Read as _;
    let mut stdin = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => handle(&CniEnv::from_process(), &stdin),
        Err(e) => Reply::error(
            CURRENT_VERSION,
            &CniError::new(ERR_IO, format!("reading the config from stdin: {e}")),
        ),
    };
    if let Some(json) = &reply.json {
        println!("{json}");
    }
    if reply.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

pub fn handle(env: &CniEnv, stdin: &[u8]) -> Reply {
    // Errors carry the config's version when it is one we speak.
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string());
    match dispatch(env, stdin) {
        Ok(json) => Reply { ok: true, json },
        Err(e) => Reply::error(&version, &e),
    }
}

// ---------------------------------------------------------------------------------------------
// Config and results.

/// The network configuration on stdin: the standard keys and vethfp's own.
#[derive(Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
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
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    fn bpffs_dir(&self) -> PathBuf {
        self.bpffs
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS))
    }

    fn mode(&self) -> Result<Mode> {
        match self.mode.as_deref() {
            None | Some("tc") => Ok(Mode::Tc),
            Some("xdp") => Ok(Mode::Xdp),
            Some(m) => Err(CniError::new(
                ERR_INVALID_CONFIG,
                format!("invalid \"mode\": \"{m}\": use \"tc\" or \"xdp\""),
            )),
        }
    }

    fn spoof(&self) -> Result<Spoof> {
        match self.spoof.as_deref() {
            None | Some("enforce") => Ok(Spoof::Enforce),
            Some("audit") => Ok(Spoof::Audit),
            Some("off") => Ok(Spoof::Off),
            Some(m) => Err(CniError::new(
                ERR_INVALID_CONFIG,
                format!("invalid \"spoof\": \"{m}\": use \"enforce\", \"audit\" or \"off\""),
            )),
        }
    }

    fn network_name(&self) -> String {
        self.network.clone().unwrap_or_else(|| self.name.clone())
    }
}

/// The parts of a CNI result (an IPAM result or prevResult) vethfp reads. Unknown keys are
/// ignored, so results of every supported version parse.
#[derive(Debug, Default, Deserialize)]
pub struct CniResult {
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
pub struct ResultIface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ResultIp {
    pub address: String,
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct ResultRoute {
    pub dst: String,
}

impl CniResult {
    fn sandbox_ifaces(&self) -> impl Iterator<Item = (usize, &ResultIface)> {
        self.interfaces
            .iter()
            .enumerate()
            .filter(|(_, i)| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }

    fn host_ifaces(&self) -> impl Iterator<Item = &ResultIface> {
        self.interfaces
            .iter()
            .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
    }

    /// Index of the container interface `ifname` in `interfaces`.
    fn container_iface(&self, ifname: &str) -> Option<usize> {
        self.sandbox_ifaces()
            .find(|(_, i)| i.name == ifname)
            .map(|(n, _)| n)
    }

    /// Addresses that belong to interface `idx` (or name no interface).
    fn ips_of(&self, idx: usize) -> impl Iterator<Item = &ResultIp> {
        self.ips
            .iter()
            .filter(move |ip| ip.interface.is_none_or(|i| i == idx))
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| decode_err(e, what))
}

fn decode_value<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| decode_err(e, what))
}

fn decode_err(e: serde_json::Error, what: &str) -> CniError {
    use serde_json::error::Category;
    match e.classify() {
        // Well-formed JSON with a wrong type or a missing key: a config problem.
        Category::Data => CniError::new(ERR_INVALID_CONFIG, format!("invalid {what}: {e}")),
        _ => CniError::new(ERR_DECODE, format!("failed to decode {what}: {e}")),
    }
}

/// "a.b.c" as a comparable triple.
fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

fn version_at_least(v: &str, min: &str) -> bool {
    match (version_tuple(v), version_tuple(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// Name of the host end for a container interface in standalone mode: `vfp` + 12 hex digits
/// of a 64-bit hash of (container id, ifname). Stable across vethfp versions (DEL after an
/// upgrade finds the same name); 48 bits make collisions on one node practically impossible.
pub fn host_name(container_id: &str, ifname: &str) -> String {
    let h = mix(fnv1a(
        container_id
            .bytes()
            .chain(std::iter::once(0))
            .chain(ifname.bytes()),
    ));
    format!("{HOST_PREFIX}{:012x}", h >> 16)
}

/// `s` cut to at most `max` bytes on a character boundary (as the owner map stores it).
fn truncated(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// True for names [`host_name`] makes.
pub fn is_plugin_host_name(name: &str) -> bool {
    name.len() == HOST_PREFIX.len() + 12
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64 finaliser: spreads FNV's weak high bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// "10.0.0.2/24" → (addr, prefix), without the policy checks of [`Cidr`].
fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    (prefix <= if addr.is_ipv4() { 32 } else { 128 }).then_some((addr, prefix))
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

fn dispatch(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>> {
    let cmd = env.command.as_str();
    if cmd == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": CURRENT_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let required: &[(&str, &Option<String>)] = match cmd {
        "ADD" | "CHECK" => &[
            ("CNI_CONTAINERID", &env.container_id),
            ("CNI_NETNS", &env.netns),
            ("CNI_IFNAME", &env.ifname),
            ("CNI_PATH", &env.path),
        ],
        "DEL" => &[
            ("CNI_CONTAINERID", &env.container_id),
            ("CNI_IFNAME", &env.ifname),
            ("CNI_PATH", &env.path),
        ],
        "GC" => &[("CNI_PATH", &env.path)],
        "STATUS" => &[],
        other => {
            return Err(CniError::new(
                ERR_INVALID_ENV,
                format!(
                    "CNI_COMMAND '{other}' is unknown: expected ADD, DEL, CHECK, STATUS, GC or VERSION"
                ),
            ));
        }
    };
    let missing: Vec<&str> = required
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            ERR_INVALID_ENV,
            format!("{cmd} needs {} set", missing.join(", ")),
        ));
    }
    if let Some(id) = &env.container_id
        && !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(CniError::new(
            ERR_INVALID_ENV,
            format!("CNI_CONTAINERID '{id}' is invalid: only letters, digits, '_', '.' and '-'"),
        ));
    }
    if let Some(ifname) = &env.ifname
        && ifname.parse::<IfName>().is_err()
    {
        return Err(CniError::new(
            ERR_INVALID_ENV,
            format!(
                "CNI_IFNAME '{ifname}' is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"
            ),
        ));
    }

    let raw: Value = decode(stdin, "network configuration")?;
    if !raw.is_object() {
        return Err(CniError::new(
            ERR_DECODE,
            "failed to decode network configuration: expected a JSON object",
        ));
    }
    let conf: NetConf = decode_value(raw.clone(), "network configuration")?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            ERR_INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions: config is \"{}\", vethfp supports {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let min = match cmd {
        "CHECK" => "0.4.0",
        "STATUS" | "GC" => "1.1.0",
        _ => "0.0.0",
    };
    if !version_at_least(&conf.cni_version, min) {
        return Err(CniError::new(
            ERR_INCOMPATIBLE_VERSION,
            format!(
                "config version {} does not allow {cmd} (needs {min} or newer)",
                conf.cni_version
            ),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            "the network configuration has no \"name\"",
        ));
    }
    if let Some(m) = conf.mtu
        && !(68..=65535).contains(&m)
    {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            format!("invalid \"mtu\" {m}: use 68 to 65535"),
        ));
    }
    conf.mode()?;
    conf.spoof()?;
    let call = Call {
        env,
        conf: &conf,
        raw: &raw,
        stdin,
    };
    match cmd {
        "ADD" => call.add().map(Some),
        "DEL" => call.del().map(|()| None),
        "CHECK" => call.check().map(|()| None),
        "STATUS" => call.status().map(|()| None),
        "GC" => call.gc().map(|()| None),
        _ => unreachable!("commands are checked above"),
    }
}

fn endpoint_err(e: EndpointError) -> CniError {
    let msg = e.to_string();
    let code = match &e {
        EndpointError::Netlink(
            NetlinkError::NoSuchNetns { .. } | NetlinkError::NotANetns { .. },
        ) => {
            return CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {msg}"));
        }
        EndpointError::Datapath(DatapathError::NotBpffs(_) | DatapathError::Mount(_)) => {
            return CniError::new(ERR_INVALID_CONFIG, format!("\"bpffs\": {msg}"));
        }
        EndpointError::HostExists(_) | EndpointError::AddrInUse { .. } => ERR_EXISTS,
        EndpointError::Mtu(_) | EndpointError::TooManyAddrs(_) | EndpointError::NetnsTooLong(_) => {
            ERR_INVALID_CONFIG
        }
        _ => ERR_DATAPATH,
    };
    CniError::new(code, msg)
}

fn netlink_err(e: NetlinkError) -> CniError {
    endpoint_err(EndpointError::Netlink(e))
}

/// One call: environment, parsed config, the config as JSON and the exact stdin bytes.
struct Call<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    raw: &'a Value,
    stdin: &'a [u8],
}

impl Call<'_> {
    fn container_id(&self) -> &str {
        self.env.container_id.as_deref().unwrap_or_default()
    }
    fn ifname(&self) -> &str {
        self.env.ifname.as_deref().unwrap_or_default()
    }
    fn netns(&self) -> &str {
        self.env.netns.as_deref().unwrap_or_default()
    }

    fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.conf.prev_result {
            None => Ok(None),
            Some(v) => decode_value(v.clone(), "prevResult").map(Some),
        }
    }

    fn open_registry(&self) -> Result<Registry> {
        Registry::open(&self.conf.bpffs_dir()).map_err(endpoint_err)
    }

    // -----------------------------------------------------------------------------------------
    // ADD

    fn add(&self) -> Result<Value> {
        if let Some(prev) = &self.conf.prev_result {
            return self.add_chained(prev);
        }
        let ipam = self.conf.ipam.as_ref().ok_or_else(|| {
            CniError::new(
                ERR_INVALID_CONFIG,
                "no \"ipam\" section: standalone vethfp needs one (e.g. {\"type\": \"host-local\", ...}); \
                 for chained mode put vethfp after ptp or bridge in a conflist",
            )
        })?;
        let ifname: IfName = self
            .ifname()
            .parse()
            .map_err(|e: crate::types::ParseError| CniError::new(ERR_INVALID_ENV, e.to_string()))?;
        let host = host_name(self.container_id(), ifname.as_str());
        // The state lock is held until the end: concurrent ADDs and DELs never interleave.
        let mut reg = self.open_registry()?;
        let exists = reg
            .list()
            .map_err(endpoint_err)?
            .iter()
            .any(|e| e.host_if == host)
            || node::link_by_name(&host).map_err(endpoint_err)?.is_some();
        if exists {
            return Err(CniError::new(
                ERR_EXISTS,
                format!(
                    "container {} already has {ifname} on this node (host end {host}): DEL it first",
                    self.container_id()
                ),
            ));
        }
        let out = self.ipam_exec(&ipam.kind, "ADD")?;
        let rollback = |e: CniError| -> CniError {
            if let Err(d) = self.ipam_exec(&ipam.kind, "DEL") {
                log::warn!("releasing the IPAM allocation after a failed ADD: {d}");
            }
            e
        };
        let ipam_res: CniResult =
            decode(&out, "IPAM result").map_err(|e| rollback(CniError::new(ERR_IPAM, e.msg)))?;
        let addrs = ipam_res
            .ips
            .iter()
            .map(|ip| {
                ip.address.parse::<Cidr>().map_err(|e| {
                    CniError::new(ERR_IPAM, format!("IPAM plugin {} returned {e}", ipam.kind))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map_err(rollback)?;
        if addrs.is_empty() {
            return Err(rollback(CniError::new(
                ERR_IPAM,
                format!("IPAM plugin {} returned no addresses", ipam.kind),
            )));
        }
        let req = AddRequest {
            host: host.parse().expect("host_name makes valid interface names"),
            netns: self.netns().to_string(),
            ifname,
            addrs,
            mtu: self.conf.mtu,
            mac: None,
            network: self.conf.network_name(),
            spoof: self.conf.spoof()?,
            mode: self.conf.mode()?,
            flags: EP_CNI,
            cni_owner: Some((self.container_id().to_string(), self.ifname().to_string())),
        };
        let view = reg.add(&req).map_err(|e| rollback(endpoint_err(e)))?;
        let dns = ipam_res
            .dns
            .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
            .or_else(|| self.conf.dns.clone());
        Ok(standalone_result(
            &self.conf.cni_version,
            &view,
            self.netns(),
            dns,
        ))
    }

    fn add_chained(&self, prev_raw: &Value) -> Result<Value> {
        if self.conf.ipam.is_some() {
            return Err(CniError::new(
                ERR_INVALID_CONFIG,
                "chained vethfp must not have an \"ipam\" section: the previous plugin owns the addresses",
            ));
        }
        let prev: CniResult = decode_value(prev_raw.clone(), "prevResult")?;
        let adopt = self.find_adoptable(&prev)?;
        let mut reg = self.open_registry()?;
        if reg
            .list()
            .map_err(endpoint_err)?
            .iter()
            .any(|e| e.host_if == adopt.host.as_str())
        {
            return Err(CniError::new(
                ERR_EXISTS,
                format!(
                    "{} (host end of {} in container {}) already has the fast path: DEL it first",
                    adopt.host,
                    self.ifname(),
                    self.container_id()
                ),
            ));
        }
        reg.adopt(&adopt).map_err(endpoint_err)?;
        let mut out = prev_raw.clone();
        if let Some(o) = out.as_object_mut() {
            o.insert("cniVersion".into(), json!(self.conf.cni_version));
        }
        Ok(out)
    }

    /// The host end of the container interface the previous plugin made: the veth peer of
    /// CNI_IFNAME in CNI_NETNS, cross-checked both ways (and against prevResult's interfaces).
    fn find_adoptable(&self, prev: &CniResult) -> Result<AdoptRequest> {
        let ifname = self.ifname();
        let idx = prev.container_iface(ifname).ok_or_else(|| {
            CniError::new(
                ERR_CHAINED,
                format!(
                    "prevResult has no interface {ifname} in a sandbox: chained vethfp must follow a plugin that creates a veth (ptp, bridge)"
                ),
            )
        })?;
        let ns = Netns::open(self.netns()).map_err(netlink_err)?;
        let name = ifname.to_string();
        let cont = node::observe_in(&ns, &name, false)
            .map_err(endpoint_err)?
            .map(|o| o.link)
            .ok_or_else(|| {
                CniError::new(
                    ERR_CHAINED,
                    format!("no interface {ifname} in {}", self.netns()),
                )
            })?;
        let not_veth = || {
            CniError::new(
                ERR_CHAINED,
                format!(
                    "{ifname} in {} is not a veth whose peer is in this node's namespace",
                    self.netns()
                ),
            )
        };
        if cont.kind.as_deref() != Some("veth") {
            return Err(not_veth());
        }
        let host = cont
            .peer_ifindex
            .map(node::link_by_index)
            .transpose()
            .map_err(endpoint_err)?
            .flatten()
            .filter(|h| h.kind.as_deref() == Some("veth") && h.peer_ifindex == Some(cont.ifindex))
            .ok_or_else(not_veth)?;
        let listed: Vec<&str> = prev.host_ifaces().map(|i| i.name.as_str()).collect();
        if !listed.is_empty() && !listed.contains(&host.name.as_str()) {
            return Err(CniError::new(
                ERR_CHAINED,
                format!(
                    "the peer of {ifname} is {}, which prevResult does not list ({})",
                    host.name,
                    listed.join(", ")
                ),
            ));
        }
        let container_mac = cont.mac.ok_or_else(not_veth)?;
        let addrs = prev
            .ips_of(idx)
            .map(|ip| {
                ip.address
                    .parse::<Cidr>()
                    .map_err(|e| CniError::new(ERR_CHAINED, format!("prevResult address: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdoptRequest {
            host: host
                .name
                .parse()
                .map_err(|e: crate::types::ParseError| CniError::new(ERR_CHAINED, e.to_string()))?,
            netns: self.netns().to_string(),
            ifname: ifname.to_string(),
            container_mac,
            addrs,
            network: self.conf.network_name(),
            spoof: self.conf.spoof()?,
            flags: EP_CNI,
            cni_owner: Some((self.container_id().to_string(), ifname.to_string())),
        })
    }

    // -----------------------------------------------------------------------------------------
    // DEL

    fn del(&self) -> Result<()> {
        let ifname = self.ifname();
        let derived = host_name(self.container_id(), ifname);
        // prevResult is optional for DEL and may be anything; only its names are used.
        let prev_hosts: BTreeSet<String> = self
            .prev_result()
            .ok()
            .flatten()
            .map(|p| p.host_ifaces().map(|i| i.name.clone()).collect())
            .unwrap_or_default();
        match Registry::open(&self.conf.bpffs_dir()) {
            Ok(mut reg) => {
                let list = reg.list().map_err(endpoint_err)?;
                // Only what this container ID (and ifname) was added with: a DEL of another
                // container (a stale DEL whose /proc/PID/ns/net path was reused) leaves a
                // live endpoint alone. Endpoints made before owners were recorded match by
                // the name derived from the container ID, or prevResult's host interface.
                let id = truncated(self.container_id(), veth_common::CONTAINER_ID_LEN - 1);
                let mut mine = Vec::new();
                for e in &list {
                    let is_mine = match reg.cni_owner(e.host_ifindex).map_err(endpoint_err)? {
                        Some((owner_id, owner_if)) => owner_id == id && owner_if == ifname,
                        None => {
                            e.host_if == derived
                                || (e.ifname == ifname && prev_hosts.contains(&e.host_if))
                        }
                    };
                    if is_mine {
                        mine.push(e);
                    } else if e.ifname == ifname
                        && self.env.netns.as_deref() == Some(e.netns.as_str())
                    {
                        log::info!(
                            "DEL of container {}: {} in the same netns belongs to another container; left alone",
                            self.container_id(),
                            e.host_if
                        );
                    }
                }
                for e in mine {
                    match reg.del(&e.host_if) {
                        Ok(()) | Err(EndpointError::NotFound(_)) => {}
                        Err(err) => return Err(endpoint_err(err)),
                    }
                }
            }
            // No bpffs there: nothing can be registered, so nothing to remove.
            Err(EndpointError::Datapath(DatapathError::NotBpffs(_))) => {}
            Err(e) => return Err(endpoint_err(e)),
        }
        if let Some(ipam) = &self.conf.ipam {
            self.ipam_exec(&ipam.kind, "DEL")?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // CHECK

    fn check(&self) -> Result<()> {
        let prev = self.prev_result()?.ok_or_else(|| {
            CniError::new(ERR_INVALID_CONFIG, "CHECK needs prevResult in the config")
        })?;
        let ifname = self.ifname();
        let fail = |msg: String| CniError::new(ERR_CHECK, msg);
        let cidx = prev
            .container_iface(ifname)
            .ok_or_else(|| fail(format!("prevResult has no interface {ifname} in a sandbox")))?;
        let derived = host_name(self.container_id(), ifname);
        let prev_hosts: Vec<&str> = prev.host_ifaces().map(|i| i.name.as_str()).collect();
        let mut reg = Registry::open_read(&self.conf.bpffs_dir()).map_err(endpoint_err)?;
        let ep: EndpointView = reg
            .list()
            .map_err(endpoint_err)?
            .into_iter()
            .find(|e| {
                e.host_if == derived || (e.ifname == ifname && prev_hosts.contains(&&*e.host_if))
            })
            .ok_or_else(|| {
                fail(format!(
                    "no vethfp endpoint for {ifname} of container {}",
                    self.container_id()
                ))
            })?;

        // The host end: same interface as registered, and as listed in prevResult.
        let host = node::link_by_index(ep.host_ifindex)
            .map_err(endpoint_err)?
            .filter(|l| l.name == ep.host_if)
            .ok_or_else(|| fail(format!("host end {} is gone", ep.host_if)))?;
        if host.mac != Some(ep.host_mac) {
            return Err(fail(format!("host end {} changed its MAC", ep.host_if)));
        }
        if let Some(i) = prev.host_ifaces().find(|i| i.name == ep.host_if)
            && !i.mac.is_empty()
            && !i.mac.eq_ignore_ascii_case(&ep.host_mac.to_string())
        {
            return Err(fail(format!(
                "host end {} has MAC {}, prevResult says {}",
                ep.host_if, ep.host_mac, i.mac
            )));
        }

        // The container end, its addresses and routes, seen from inside the sandbox.
        let want_ns = prev.interfaces[cidx].sandbox.as_deref().unwrap_or_default();
        let ns = Netns::open(self.netns()).map_err(netlink_err)?;
        if want_ns != self.netns() && Netns::open(want_ns).map(|n| n.ino()).ok() != Some(ns.ino()) {
            return Err(fail(format!(
                "prevResult puts {ifname} in {want_ns}, not in CNI_NETNS {}",
                self.netns()
            )));
        }
        let name = ifname.to_string();
        let node::Observed {
            link,
            addrs,
            routes,
        } = node::observe_in(&ns, &name, true)
            .map_err(endpoint_err)?
            .ok_or_else(|| fail(format!("no interface {ifname} in {}", self.netns())))?;
        if link.peer_ifindex != Some(ep.host_ifindex) {
            return Err(fail(format!(
                "{ifname} is no longer the peer of host end {}",
                ep.host_if
            )));
        }
        let want_mac = &prev.interfaces[cidx].mac;
        if link.mac != Some(ep.container_mac)
            || (!want_mac.is_empty()
                && !want_mac.eq_ignore_ascii_case(&ep.container_mac.to_string()))
        {
            return Err(fail(format!(
                "{ifname} has MAC {}, prevResult says {want_mac}",
                link.mac.map(|m| m.to_string()).unwrap_or_default()
            )));
        }
        for ip in prev.ips_of(cidx) {
            let (a, p) = parse_prefix(&ip.address)
                .ok_or_else(|| fail(format!("prevResult address '{}' is invalid", ip.address)))?;
            if !addrs.contains(&(a, p)) {
                return Err(fail(format!("{ifname} lacks address {}", ip.address)));
            }
            if !ep.addrs.iter().any(|c| c.addr == a) {
                return Err(fail(format!(
                    "address {a} is not registered in the fast path of {}",
                    ep.host_if
                )));
            }
        }
        for r in &prev.routes {
            let dst = parse_prefix(&r.dst)
                .ok_or_else(|| fail(format!("prevResult route '{}' is invalid", r.dst)))?;
            if !routes.contains(&dst) {
                return Err(fail(format!("{ifname} lacks route {}", r.dst)));
            }
        }

        // The fast path: tcx programs attached (asked from the kernel, not the pins), pins kept.
        let seen = reg
            .fast_path_seen(&ep.host_if, ep.host_ifindex)
            .map_err(|e| fail(e.to_string()))?;
        let attached = &seen.attached;
        if !attached.has_fast_path() {
            return Err(fail(format!(
                "the fast path programs are not attached to {} (ingress {:?}, egress {:?})",
                ep.host_if, attached.tcx_ingress, attached.tcx_egress
            )));
        }
        if seen.link_pins < 2 {
            return Err(fail(format!(
                "the link pins of {} are missing: the programs would detach",
                ep.host_if
            )));
        }
        if ep.mode == Mode::Xdp && !seen.xdp_link {
            return Err(fail(format!(
                "{} is in xdp mode but has no XDP link",
                ep.host_if
            )));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // STATUS and GC

    fn status(&self) -> Result<()> {
        Registry::probe(&self.conf.bpffs_dir()).map_err(|(what, e, limited)| {
            CniError::new(
                if limited {
                    ERR_LIMITED_CONNECTIVITY
                } else {
                    ERR_NOT_AVAILABLE
                },
                format!("{what}: {e}"),
            )
        })?;
        if let Some(ipam) = &self.conf.ipam {
            let plugin = self
                .find_plugin(&ipam.kind)
                .map_err(|e| CniError::new(ERR_NOT_AVAILABLE, e.msg))?;
            if self.plugin_supports(&plugin, "1.1.0") {
                exec_plugin(&plugin, "STATUS", self.env, self.stdin)?;
            }
        }
        Ok(())
    }

    fn gc(&self) -> Result<()> {
        // Without the list (cnitool and older runtimes send none) nothing is known to be
        // garbage: removing every endpoint would cut off running containers.
        let Some(valid) = self.conf.valid_attachments.as_ref() else {
            log::warn!(
                "GC without \"cni.dev/valid-attachments\" in the config: nothing removed \
                 (the runtime must list the attachments to keep)"
            );
            return Ok(());
        };
        let keep: BTreeSet<String> = valid
            .iter()
            .map(|a| host_name(&a.container_id, &a.ifname))
            .collect();
        let net = registry::network_id(&self.conf.network_name());
        match Registry::open(&self.conf.bpffs_dir()) {
            Ok(mut reg) => {
                let list = reg.list().map_err(endpoint_err)?;
                for e in list.iter().filter(|e| e.network_id == net) {
                    let stale = if is_plugin_host_name(&e.host_if) && !e.adopted {
                        !keep.contains(&e.host_if)
                    } else if !e.adopted {
                        false
                    } else {
                        // Adopted host ends carry the previous plugin's name: only ones whose
                        // interface is gone are known to be garbage.
                        node::link_by_index(e.host_ifindex)
                            .map_err(endpoint_err)?
                            .is_none_or(|l| l.name != e.host_if)
                    };
                    if stale {
                        match reg.del(&e.host_if) {
                            Ok(()) | Err(EndpointError::NotFound(_)) => {}
                            Err(err) => return Err(endpoint_err(err)),
                        }
                    }
                }
            }
            Err(EndpointError::Datapath(DatapathError::NotBpffs(_))) => {}
            Err(e) => return Err(endpoint_err(e)),
        }
        if let Some(ipam) = &self.conf.ipam {
            let plugin = self.find_plugin(&ipam.kind)?;
            if self.plugin_supports(&plugin, "1.1.0") {
                exec_plugin(&plugin, "GC", self.env, self.stdin)?;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Delegation.

    fn find_plugin(&self, name: &str) -> Result<PathBuf> {
        find_plugin(self.env.path.as_deref().unwrap_or_default(), name)
    }

    fn plugin_supports(&self, plugin: &Path, version: &str) -> bool {
        plugin_versions(plugin, self.env)
            .map(|v| v.iter().any(|s| s == version))
            .unwrap_or(false)
    }

    /// Runs the IPAM plugin for `command` with our environment and stdin. If it does not speak
    /// the config's version (Debian's plugins 1.1 stop at 1.0.0), asks it for its versions and
    /// retries once with the newest older one it supports; the result formats agree.
    fn ipam_exec(&self, name: &str, command: &str) -> Result<Vec<u8>> {
        let plugin = self.find_plugin(name)?;
        match exec_plugin(&plugin, command, self.env, self.stdin) {
            Err(e) if e.code == ERR_INCOMPATIBLE_VERSION => {
                let theirs = plugin_versions(&plugin, self.env)?;
                let Some(v) = SUPPORTED_VERSIONS
                    .iter()
                    .rev()
                    .filter(|v| version_at_least(&self.conf.cni_version, v))
                    .find(|v| theirs.iter().any(|t| t == *v))
                else {
                    return Err(e);
                };
                let mut conf = self.raw.clone();
                if let Some(o) = conf.as_object_mut() {
                    o.insert("cniVersion".into(), json!(v));
                    o.remove("prevResult");
                }
                let bytes = serde_json::to_vec(&conf).expect("a Value always serialises");
                exec_plugin(&plugin, command, self.env, &bytes)
            }
            r => r,
        }
    }
}

/// Finds plugin `name` in the colon-separated `cni_path`.
pub fn find_plugin(cni_path: &str, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            format!("\"ipam\": \"type\" '{name}' is not a plugin name"),
        ));
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            CniError::new(
                ERR_IPAM,
                format!("IPAM plugin '{name}' not found in CNI_PATH ({cni_path})"),
            )
        })
}

/// Runs another plugin with `command`, the caller's CNI environment and `stdin`; its stdout
/// on success, its CNI error (passed through with its code) on failure.
fn exec_plugin(plugin: &Path, command: &str, env: &CniEnv, stdin: &[u8]) -> Result<Vec<u8>> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let io =
        |e: std::io::Error| CniError::new(ERR_IPAM, format!("running {}: {e}", plugin.display()));
    let mut child = cmd.spawn().map_err(io)?;
    if let Some(mut w) = child.stdin.take() {
        // A plugin may exit without reading everything (e.g. VERSION): ignore EPIPE.
        let _ = w.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(io)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    #[derive(Deserialize)]
    struct PluginError {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<PluginError>(&out.stdout) {
        Ok(pe) => {
            Err(CniError::new(pe.code, format!("{name} {command}: {}", pe.msg)).details(pe.details))
        }
        Err(_) => Err(CniError::new(
            ERR_IPAM,
            format!(
                "{name} {command} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(if out.stdout.is_empty() {
                    &out.stderr
                } else {
                    &out.stdout
                })
                .trim()
            ),
        )),
    }
}

/// The spec versions another plugin supports (its VERSION answer).
fn plugin_versions(plugin: &Path, env: &CniEnv) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct VersionInfo {
        #[serde(rename = "supportedVersions", default)]
        supported: Vec<String>,
    }
    let out = exec_plugin(
        plugin,
        "VERSION",
        env,
        format!("{{\"cniVersion\":\"{CURRENT_VERSION}\"}}").as_bytes(),
    )?;
    let v: VersionInfo = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            ERR_IPAM,
            format!("{} VERSION answered unreadable JSON: {e}", plugin.display()),
        )
    })?;
    Ok(v.supported)
}

/// The ADD result of a pair vethfp made: host end, container end (with sandbox), the IPAM
/// addresses on the container end, and the routed-mode default routes.
fn standalone_result(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_valid_stable_and_distinct() {
        let a = host_name("c0ffee", "eth0");
        assert_eq!(a.len(), 15);
        assert!(is_plugin_host_name(&a));
        assert!(a.parse::<IfName>().is_ok());
        assert_eq!(a, host_name("c0ffee", "eth0"));
        assert_ne!(a, host_name("c0ffee", "eth1"));
        assert_ne!(a, host_name("c0ffe", "eeth0"));
        let mut seen = BTreeSet::new();
        for i in 0..20000 {
            assert!(seen.insert(host_name(&format!("container-{i}"), "eth0")));
        }
        assert!(!is_plugin_host_name("vfpXYZ"));
        assert!(!is_plugin_host_name("vf-c1"));
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(!version_at_least("x", "0.0.0"));
        assert_eq!(version_tuple("1.0"), None);
    }

    fn call(cmd: &str, stdin: &str) -> Reply {
        let env = CniEnv {
            command: cmd.into(),
            container_id: Some("abc".into()),
            netns: Some("/proc/self/ns/net".into()),
            ifname: Some("eth0".into()),
            args: None,
            path: Some("/nonexistent".into()),
        };
        handle(&env, stdin.as_bytes())
    }

    fn code(r: &Reply) -> u64 {
        assert!(!r.ok);
        r.json.as_ref().unwrap()["code"].as_u64().unwrap()
    }

    #[test]
    fn errors_have_spec_codes() {
        let ok =
            r#"{"cniVersion":"1.0.0","name":"n","type":"vethfp","ipam":{"type":"host-local"}}"#;
        assert_eq!(code(&call("ADD", "{not json")), 6);
        assert_eq!(
            code(&call("ADD", r#"{"cniVersion":"9.9.9","name":"n"}"#)),
            1
        );
        assert_eq!(
            code(&call(
                "ADD",
                r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#
            )),
            7
        );
        assert_eq!(
            code(&call(
                "ADD",
                r#"{"cniVersion":"1.0.0","name":"n","mode":"bridge"}"#
            )),
            7
        );
        assert_eq!(code(&call("STATUS", ok)), 1);
        assert_eq!(code(&call("FROB", ok)), 4);
        let r = call("VERSION", "");
        assert!(r.ok);
        let v = r.json.unwrap();
        for want in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(
                v["supportedVersions"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(want))
            );
        }
        let env = CniEnv {
            command: "ADD".into(),
            ..Default::default()
        };
        let r = handle(&env, ok.as_bytes());
        assert_eq!(code(&r), 4);
        let msg = r.json.unwrap()["msg"].as_str().unwrap().to_string();
        assert!(
            msg.contains("CNI_CONTAINERID") && msg.contains("CNI_NETNS"),
            "{msg}"
        );
    }

    #[test]
    fn results_follow_the_version() {
        let view = EndpointView {
            host_if: "vfp000000000001".into(),
            host_ifindex: 7,
            host_mac: "02:00:00:00:00:01".parse().unwrap(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            container_mac: "02:00:00:00:00:02".parse().unwrap(),
            addrs: vec![
                "10.1.0.2/24".parse().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            mtu: 1500,
            mode: Mode::Tc,
            network: "n".into(),
            network_id: 1,
            spoof: Spoof::Enforce,
            adopted: false,
        };
        let r = standalone_result("0.4.0", &view, "/run/netns/x", None);
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(r["interfaces"][1].get("mtu").is_none());
        let r = standalone_result(
            "1.1.0",
            &view,
            "/run/netns/x",
            Some(json!({"nameservers":["10.1.0.1"]})),
        );
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["interfaces"][1]["mtu"], 1500);
        assert_eq!(r["ips"][1]["interface"], 1);
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["routes"][1]["gw"], "fe80::1");
        assert_eq!(r["dns"]["nameservers"][0], "10.1.0.1");
    }
}
