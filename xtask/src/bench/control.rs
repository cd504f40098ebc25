//! Control-plane bench: time to add and delete N endpoints with `vethfp pair add/del` and with
//! the reference CNI `ptp` plugin (host-local IPAM), and fast-path latency with N endpoints
//! installed versus 2.

use super::topo::{SOCKPERF_UDP_PORT, Vethfp, wait_listening};
use super::work::{pingpong, timed};
use crate::util::{Bg, DirGuard, Netns, check_interrupted, setns_cmd};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

pub const CNI_DIR: &str = "/usr/lib/cni";

pub enum Impl {
    Vethfp(Vethfp),
    Ptp,
}

impl Impl {
    pub fn name(&self) -> &'static str {
        match self {
            Impl::Vethfp(_) => "vethfp",
            Impl::Ptp => "cni-ptp",
        }
    }
}

#[derive(Serialize, Clone)]
pub struct CpResult {
    pub implementation: String,
    pub endpoints: usize,
    pub add_ms_per_endpoint: f64,
    pub del_ms_per_endpoint: f64,
    /// (UDP ping-pong median µs, p99 µs) between endpoints 0 and 1 with 2 endpoints installed.
    pub latency_2: Option<(f64, f64)>,
    /// The same with all `endpoints` installed.
    pub latency_n: Option<(f64, f64)>,
}

/// Is the CNI ptp plugin with host-local IPAM installed?
pub fn ptp_available() -> bool {
    Path::new(CNI_DIR).join("ptp").exists() && Path::new(CNI_DIR).join("host-local").exists()
}

struct Ptp {
    conf: String,
    _data: DirGuard,
}

impl Ptp {
    fn new(tag: &str) -> Result<Self> {
        let data = std::env::temp_dir().join(format!("{tag}-cni-ipam"));
        std::fs::create_dir_all(&data)?;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": tag,
            "type": "ptp",
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": "10.231.0.0/16",
                "dataDir": data,
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        })
        .to_string();
        Ok(Ptp {
            conf,
            _data: DirGuard(data),
        })
    }

    fn call(&self, node: &Netns, cmd: &str, c: &Netns, id: usize) -> Result<(f64, String)> {
        let mut p = setns_cmd(&node.path(), Path::new(CNI_DIR).join("ptp"))?;
        p.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", format!("{}-{id}", c.name))
            .env("CNI_NETNS", c.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = p.spawn().context("starting the CNI ptp plugin")?;
        child
            .stdin
            .take()
            .context("ptp stdin")?
            .write_all(self.conf.as_bytes())?;
        let out = child.wait_with_output()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "CNI ptp {cmd} for {} failed: {stdout}{}",
                c.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((ms, stdout))
    }
}

/// Add `n` endpoints, (optionally) measure latency at 2 and at n, delete them; per-endpoint ms.
pub fn run(imp: &Impl, n: usize, tag: &str, latency: bool, secs: u32) -> Result<CpResult> {
    let base = format!("{tag}-cp{}{n}", &imp.name()[..1]);
    println!(
        "bench: control plane {} with {n} endpoint(s): creating namespaces",
        imp.name()
    );
    let node = Netns::new(format!("{base}-n"))?;
    node.ip(&["addr", "add", "10.200.255.1/32", "dev", "lo"])?;
    let mut cs = Vec::with_capacity(n);
    for i in 0..n {
        check_interrupted()?;
        cs.push(Netns::new(format!("{base}-{i}"))?);
    }
    let ptp = match imp {
        Impl::Ptp => Some(Ptp::new(&base)?),
        Impl::Vethfp(_) => None,
    };
    // Each run pins under a directory of its own inside the bench's pin directory.
    let vethfp = match imp {
        Impl::Vethfp(v) => Some(Vethfp {
            bin: v.bin.clone(),
            bpffs: v.bpffs.join(&base),
        }),
        Impl::Ptp => None,
    };
    let _bpffs = vethfp.as_ref().map(|v| DirGuard(v.bpffs.clone()));

    let mut ips = Vec::with_capacity(n);
    let mut add_ms = 0.0;
    let mut latency_2 = None;
    for (i, c) in cs.iter().enumerate() {
        check_interrupted()?;
        let (ms, ip) = match (&vethfp, &ptp) {
            (Some(v), _) => {
                let host_if = format!("vfc{i}");
                let k = i + 2;
                let ip = format!("10.230.{}.{}", k / 256, k % 256);
                let ms = timed(&mut v.cmd(
                    &node,
                    &[
                        "pair",
                        "add",
                        &host_if,
                        "--netns",
                        &c.name,
                        "--addr",
                        &format!("{ip}/16"),
                    ],
                )?)?;
                (ms, ip)
            }
            (None, Some(p)) => {
                let (ms, out) = p.call(&node, "ADD", c, i)?;
                (ms, ptp_ip(&out)?)
            }
            _ => unreachable!(),
        };
        add_ms += ms;
        ips.push(ip);
        // Forwarding is off in this node: the latency probe between endpoints can only take
        // the unconditional fast path (admission `always`; the default `netfilter` needs the
        // kernel to forward each flow first). Set after the first (timed) add, which keeps
        // paying for creating the state, untimed.
        if i == 0
            && let Some(v) = &vethfp
        {
            crate::util::output(&mut v.cmd(&node, &["admission", "always"])?)
                .context("vethfp admission always failed")?;
        }
        if latency && i == 1 {
            latency_2 = Some(measure(&cs, &ips, secs)?);
        }
    }
    let latency_n = if latency && n >= 2 {
        Some(measure(&cs, &ips, secs)?)
    } else {
        None
    };

    let mut del_ms = 0.0;
    for (i, c) in cs.iter().enumerate() {
        check_interrupted()?;
        del_ms += match (&vethfp, &ptp) {
            (Some(v), _) => timed(&mut v.cmd(&node, &["pair", "del", &format!("vfc{i}")])?)?,
            (None, Some(p)) => p.call(&node, "DEL", c, i)?.0,
            _ => unreachable!(),
        };
    }
    let r = CpResult {
        implementation: imp.name().into(),
        endpoints: n,
        add_ms_per_endpoint: add_ms / n as f64,
        del_ms_per_endpoint: del_ms / n as f64,
        latency_2,
        latency_n,
    };
    println!(
        "bench: control plane {} n={n}: add {:.2} ms/endpoint, del {:.2} ms/endpoint",
        r.implementation, r.add_ms_per_endpoint, r.del_ms_per_endpoint
    );
    println!("bench: control plane {}: removing namespaces", imp.name());
    Ok(r)
}

/// UDP ping-pong from endpoint 0 to endpoint 1.
fn measure(cs: &[Netns], ips: &[String], secs: u32) -> Result<(f64, f64)> {
    let _srv = Bg::spawn(cs[1].cmd("sockperf").args([
        "server",
        "-i",
        &ips[1],
        "-p",
        &SOCKPERF_UDP_PORT.to_string(),
    ]))?;
    wait_listening(&cs[1], "-lun", SOCKPERF_UDP_PORT)?;
    pingpong(&cs[0], &ips[1], SOCKPERF_UDP_PORT, false, secs)
}

/// The container address from a CNI ADD result.
fn ptp_ip(result: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(result).context("parsing the CNI ADD result")?;
    let addr = v["ips"][0]["address"]
        .as_str()
        .context("CNI ADD result has no ips[0].address")?;
    Ok(addr.split('/').next().unwrap_or(addr).to_owned())
}
