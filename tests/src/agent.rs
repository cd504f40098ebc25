//! `vethfp agent` run inside a test node: start, wait until it serves /metrics, SIGKILL or
//! SIGTERM it, read its log; scrape and parse /metrics with a real HTTP client (ureq) from
//! inside the node's namespace (the agent's listener lives there).

use std::{
    collections::BTreeMap,
    io::Read,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{node::Node, node::vethfp_bin, ns::open_netns, ns::run_in_netns};

/// The metrics address every test agent uses: each node is its own namespace, so the same
/// loopback port never collides between tests running in parallel.
pub const METRICS_ADDR: &str = "127.0.0.1:9750";

/// A running `vethfp --bpffs DIR agent ...` in a node. SIGKILLed on Drop if still running.
pub struct Agent {
    child: Option<Child>,
    node_name: String,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent in `node` with `--metrics-addr 127.0.0.1:9750` and `extra` arguments,
    /// and waits until it serves /metrics (its initial reconciliation is done by then).
    pub fn start(node: &Node, extra: &[&str]) -> Agent {
        let mut a = Agent::spawn(node, extra);
        a.wait_ready();
        a
    }

    /// Starts the agent without waiting.
    pub fn spawn(node: &Node, extra: &[&str]) -> Agent {
        Agent::spawn_bin(node, &vethfp_bin(), extra)
    }

    /// [`Agent::spawn`] with another `vethfp` binary (an older build, for before/after
    /// measurements).
    pub fn spawn_bin(node: &Node, bin: &std::path::Path, extra: &[&str]) -> Agent {
        let nsf = open_netns(node.name());
        let fd = nsf.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.arg("--bpffs")
            .arg(node.bpffs_dir())
            .args(["agent", "--metrics-addr", METRICS_ADDR])
            .args(extra)
            .env("RUST_LOG", "info,vethfp=debug")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only setns (async-signal-safe) between fork and exec; enters the node for
        // the agent process only, never the machine's namespace (checked by open_netns).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn vethfp agent");
        drop(nsf);
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let l = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Agent {
            child: Some(child),
            node_name: node.name().to_string(),
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Everything the agent logged so far (stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls /metrics until it answers 200 (deadline 60 s); fails early if the agent exits.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _, _)) = http_get(&self.node_name, "/metrics") {
                return;
            }
            let c = self.child.as_mut().expect("agent running");
            if let Some(st) = c.try_wait().expect("wait agent") {
                self.finish_log();
                panic!(
                    "agent exited ({st}) before it was ready; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 60 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill(mut self) {
        let mut c = self.child.take().expect("agent running");
        c.kill().expect("SIGKILL agent");
        c.wait().expect("wait agent");
        self.finish_log();
    }

    /// SIGTERM and wait (deadline 60 s); returns the exit status and the full log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal_wait(libc::SIGTERM)
    }

    /// SIGINT and wait (deadline 60 s); returns the exit status and the full log.
    pub fn interrupt(mut self) -> (ExitStatus, String) {
        self.signal_wait(libc::SIGINT)
    }

    fn signal_wait(&mut self, sig: libc::c_int) -> (ExitStatus, String) {
        let mut c = self.child.take().expect("agent running");
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0, "kill agent");
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            if let Some(st) = c.try_wait().expect("wait agent") {
                break st;
            }
            if Instant::now() > deadline {
                c.kill().ok();
                c.wait().ok();
                panic!(
                    "agent did not exit 60 s after signal {sig}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.finish_log();
        (st, self.log())
    }

    fn finish_log(&mut self) {
        if let Some(r) = self.reader.take() {
            r.join().ok();
        }
    }

    /// GET /metrics, parsed; panics unless 200 with the OpenMetrics content type.
    pub fn scrape(&self) -> Metrics {
        let (status, ctype, body) = http_get(&self.node_name, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}; log:\n{}", self.log()));
        assert_eq!(status, 200, "GET /metrics: {body}");
        assert!(
            ctype.starts_with("application/openmetrics-text"),
            "content type {ctype}"
        );
        Metrics::parse(&body)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
        self.finish_log();
    }
}

/// GET `path` from the agent of node `node` (a real HTTP/1.1 client, in the node's netns).
/// Returns (status, content type, body).
pub fn http_get(node: &str, path: &str) -> Result<(u16, String, String), String> {
    let url = format!("http://{METRICS_ADDR}{path}");
    run_in_netns(node, move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent.get(&url).call().map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok((status, ctype, body))
    })
}

/// One sample: metric name (as exposed, e.g. `vethfp_endpoint_packets_total`) and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A parsed exposition (OpenMetrics / Prometheus text).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: BTreeMap<Sample, f64>,
    /// `# TYPE` lines: family name → type.
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("# TYPE name type");
                m.types.insert(name.into(), ty.into());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(i) => {
                    let end = line.rfind('}').expect("closing brace");
                    (
                        &line[..i],
                        parse_labels(&line[i + 1..end]),
                        &line[end + 1..],
                    )
                }
                None => {
                    let (n, r) = line.split_once(' ').expect("name value");
                    (n, BTreeMap::new(), r)
                }
            };
            let value: f64 = rest
                .split_whitespace()
                .next()
                .expect("value")
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
            let s = Sample {
                name: name.into(),
                labels,
            };
            assert!(
                m.samples.insert(s, value).is_none(),
                "duplicate sample {line}"
            );
        }
        m
    }

    /// The value of `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let s = Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.samples.get(&s).copied()
    }

    /// Every sample of `name`.
    pub fn all(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(s, _)| s.name == name)
            .map(|(s, v)| (&s.labels, *v))
            .collect()
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, r) = rest.split_once("=\"").expect("label=\"value\"");
        let mut val = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, c)) => val.push(c),
                    None => break,
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), val);
        rest = r[end..].trim_start_matches(',');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_text() {
        let m = Metrics::parse(
            "# HELP a x\n# TYPE a counter\na_total{host_if=\"v1\",netns=\"c\\\"1\"} 3\nb 1.5\n# EOF\n",
        );
        assert_eq!(
            m.get("a_total", &[("host_if", "v1"), ("netns", "c\"1")]),
            Some(3.0)
        );
        assert_eq!(m.get("b", &[]), Some(1.5));
        assert_eq!(m.types["a"], "counter");
    }
}
