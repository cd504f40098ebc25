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

mod add;
mod check;
mod del;
mod exec;
mod gc;
mod status;
mod types;

use exec::*;
use types::*;

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
        Registry, RequestError,
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
pub(crate) fn host_name(container_id: &str, ifname: &str) -> String {
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
pub(crate) fn is_plugin_host_name(name: &str) -> bool {
    name.len() == HOST_PREFIX.len() + 12
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

use crate::types::fnv1a64 as fnv1a;

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

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CniCommand {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl CniCommand {
    fn parse(s: &str) -> Result<CniCommand> {
        Ok(match s {
            "ADD" => CniCommand::Add,
            "DEL" => CniCommand::Del,
            "CHECK" => CniCommand::Check,
            "STATUS" => CniCommand::Status,
            "GC" => CniCommand::Gc,
            "VERSION" => CniCommand::Version,
            other => {
                return Err(CniError::new(
                    ERR_INVALID_ENV,
                    format!(
                        "CNI_COMMAND '{other}' is unknown: expected ADD, DEL, CHECK, STATUS, GC or VERSION"
                    ),
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
            CniCommand::Version => "VERSION",
        }
    }

    /// The `CNI_*` variables the command needs.
    fn required(self, env: &CniEnv) -> Vec<(&'static str, &Option<String>)> {
        match self {
            CniCommand::Add | CniCommand::Check => vec![
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
                ("CNI_PATH", &env.path),
            ],
            CniCommand::Del => vec![
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_IFNAME", &env.ifname),
                ("CNI_PATH", &env.path),
            ],
            CniCommand::Gc => vec![("CNI_PATH", &env.path)],
            CniCommand::Status | CniCommand::Version => Vec::new(),
        }
    }

    /// The oldest config version that has the command.
    fn min_version(self) -> &'static str {
        match self {
            CniCommand::Check => "0.4.0",
            CniCommand::Status | CniCommand::Gc => "1.1.0",
            _ => "0.0.0",
        }
    }
}

fn version_reply() -> Value {
    json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// Validates the call (environment, then configuration) and runs the command.
fn dispatch(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>> {
    let cmd = CniCommand::parse(&env.command)?;
    // VERSION answers whatever else is wrong.
    if cmd == CniCommand::Version {
        return Ok(Some(version_reply()));
    }
    check_env(cmd, env)?;
    let raw: Value = decode(stdin, "network configuration")?;
    let conf = check_conf(cmd, &raw)?;
    let call = Call {
        env,
        conf: &conf,
        raw: &raw,
        stdin,
    };
    match cmd {
        CniCommand::Add => call.add().map(Some),
        CniCommand::Del => call.del().map(|()| None),
        CniCommand::Check => call.check().map(|()| None),
        CniCommand::Status => call.status().map(|()| None),
        CniCommand::Gc => call.gc().map(|()| None),
        CniCommand::Version => Ok(Some(version_reply())),
    }
}

/// The `CNI_*` environment: what the command needs is set and well-formed.
fn check_env(cmd: CniCommand, env: &CniEnv) -> Result<()> {
    let missing: Vec<&str> = cmd
        .required(env)
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            ERR_INVALID_ENV,
            format!("{} needs {} set", cmd.name(), missing.join(", ")),
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
    Ok(())
}

/// The network configuration: a JSON object of a version we speak that has the command,
/// with a name and valid values.
fn check_conf(cmd: CniCommand, raw: &Value) -> Result<NetConf> {
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
    let min = cmd.min_version();
    if !version_at_least(&conf.cni_version, min) {
        return Err(CniError::new(
            ERR_INCOMPATIBLE_VERSION,
            format!(
                "config version {} does not allow {} (needs {min} or newer)",
                conf.cni_version,
                cmd.name()
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
    Ok(conf)
}

fn endpoint_err(e: EndpointError) -> CniError {
    let msg = e.to_string();
    let code = match &e {
        EndpointError::Netlink(
            NetlinkError::NoSuchNetns { .. } | NetlinkError::NotANetns { .. },
        ) => {
            return CniError::new(ERR_INVALID_ENV, format!("CNI_NETNS: {msg}"));
        }
        EndpointError::Datapath(
            DatapathError::NotBpffs(_) | DatapathError::Mount(_) | DatapathError::PrivateMounts,
        ) => {
            return CniError::new(ERR_INVALID_CONFIG, format!("\"bpffs\": {msg}"));
        }
        EndpointError::Request(RequestError::HostExists(_) | RequestError::AddrInUse { .. }) => {
            ERR_EXISTS
        }
        EndpointError::Request(
            RequestError::Mtu(_) | RequestError::TooManyAddrs(_) | RequestError::NetnsTooLong(_),
        ) => ERR_INVALID_CONFIG,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_name_themselves() {
        for name in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
            assert_eq!(CniCommand::parse(name).unwrap().name(), name);
        }
        let e = CniCommand::parse("add").unwrap_err();
        assert_eq!(e.code, ERR_INVALID_ENV);
        assert!(e.msg.contains("'add' is unknown"), "{}", e.msg);
    }

    #[test]
    fn each_command_needs_its_environment_and_config_version() {
        let env = CniEnv::default();
        let names =
            |c: CniCommand| -> Vec<&str> { c.required(&env).iter().map(|(k, _)| *k).collect() };
        assert_eq!(names(CniCommand::Add), names(CniCommand::Check));
        assert!(!names(CniCommand::Del).contains(&"CNI_NETNS"));
        assert_eq!(names(CniCommand::Gc), vec!["CNI_PATH"]);
        assert!(names(CniCommand::Status).is_empty());
        assert_eq!(CniCommand::Check.min_version(), "0.4.0");
        assert_eq!(CniCommand::Gc.min_version(), "1.1.0");
        assert_eq!(CniCommand::Add.min_version(), "0.0.0");
    }

    #[test]
    fn a_missing_variable_is_named() {
        let env = CniEnv {
            command: "DEL".into(),
            container_id: Some("c1".into()),
            ..Default::default()
        };
        let e = check_env(CniCommand::Del, &env).unwrap_err();
        assert_eq!(e.msg, "DEL needs CNI_IFNAME, CNI_PATH set");
    }

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
