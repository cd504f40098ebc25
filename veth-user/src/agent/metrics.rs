//! The agent's Prometheus endpoint: `GET /metrics` in the OpenMetrics text format
//! (prometheus-client), served over HTTP/1.1 (hyper).
//!
//! Datapath values are read from the pinned maps at scrape time (a [`Collector`]), so they are
//! exactly what `vethfp stats --json` and `status --json` show at that moment:
//!
//! | metric | labels |
//! |---|---|
//! | `vethfp_endpoint_packets_total`, `vethfp_endpoint_bytes_total` | host_if, netns, direction, verdict |
//! | `vethfp_endpoint_drops_total` (packets, both directions) | host_if, netns, reason |
//! | (the three above only with `agent --per-endpoint-metrics=true`, the default) | |
//! | `vethfp_endpoints` | |
//! | `vethfp_uplink_packets_total`, `vethfp_uplink_bytes_total` | uplink, counter (received_fast, received_stack, sent_fast) |
//! | `vethfp_fast_path_enabled` | |
//! | `vethfp_agent_info` | version |
//! | `vethfp_flow_table_flows` | state (admitted, pending, waiting, closing, expired) |
//! | `vethfp_flow_table_handed_off` | |
//! | `vethfp_tcp_handoffs_total`, `vethfp_tcp_handoff_delay_seconds` (histogram), `vethfp_flows_swept_total` | |
//! | `vethfp_tcp_handoff_refusals_total`, `vethfp_tcp_demotions_total` | reason |
//! | `vethfp_agent_reconcile_pass_seconds`, `vethfp_agent_reconcile_lock_held_seconds` (histograms), `vethfp_agent_container_checks_total`, `vethfp_agent_hook_checks_total` | |
//! | `vethfp_agent_reconciles_total`, `vethfp_agent_reconcile_duration_seconds` (last pass), `vethfp_agent_endpoints_removed_total`, `vethfp_agent_links_reattached_total`, `vethfp_agent_programs_replaced_total`, `vethfp_agent_event_cleanup_seconds` (histogram: link event → state removed) | |

use std::{convert::Infallible, sync::Arc, sync::atomic::AtomicU64, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry as PromRegistry,
};
use tokio::net::TcpListener;
use veth_common::{DIR_FROM_CONTAINER, DIR_TO_CONTAINER, Dir, V_FAST_UPLINK, V_STACK, Verdict};

use crate::{
    agent::Shared,
    registry::{EndpointStats, Status},
};

/// Counters the agent keeps about itself.
#[derive(Debug)]
pub struct AgentMetrics {
    pub reconciles: Counter,
    pub reconcile_seconds: Gauge<f64, AtomicU64>,
    pub removed: Counter,
    pub reattached: Counter,
    pub replaced: Counter,
    pub event_cleanup: Histogram,
    /// Parts of live endpoints restored, by part ("addr_v4", "route", ...).
    pub repairs: Family<Vec<(String, String)>, Counter>,
    /// Times the state dir was found removed or replaced and opened anew.
    pub state_reopened: Counter,
    /// TCP flows handed off (conntrack entry made liberal, flow marked).
    pub handoffs: Counter,
    /// TCP hand-offs refused, by reason.
    pub handoff_refusals: Family<Vec<(String, String)>, Counter>,
    /// Handed-off flows demoted, by reason.
    pub demotions: Family<Vec<(String, String)>, Counter>,
    /// Datapath report → flow marked handed off.
    pub handoff_delay: Histogram,
    /// Flow-table entries removed by the sweep (stale pending, closing or expired).
    pub flows_swept: Counter,
    /// Duration of each reconciliation pass (read, and repair if any).
    pub pass_seconds: Histogram,
    /// State lock held by a pass that repaired something (a pass that found nothing to
    /// repair never takes the lock and is not observed here).
    pub lock_held: Histogram,
    /// Container sides looked at by passes (a round-robin slice each).
    pub container_checks: Counter,
    /// Endpoints whose hooks (tc filters, XDP link) passes looked at: a round-robin slice
    /// each, those tc notifications named, every one on a full pass.
    pub hook_checks: Counter,
}

impl AgentMetrics {
    pub fn refused(&self, reason: &str) {
        self.handoff_refusals
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    pub fn demoted(&self, reason: &str) {
        self.demotions
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    pub fn repaired(&self, part: &str) {
        self.repairs
            .get_or_create(&vec![("part".to_string(), part.to_string())])
            .inc();
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            reconciles: Counter::default(),
            reconcile_seconds: Gauge::default(),
            removed: Counter::default(),
            reattached: Counter::default(),
            replaced: Counter::default(),
            repairs: Family::default(),
            state_reopened: Counter::default(),
            handoffs: Counter::default(),
            handoff_refusals: Family::default(),
            demotions: Family::default(),
            // 10 µs .. ~0.33 s
            handoff_delay: Histogram::new(exponential_buckets(0.00001, 2.0, 16)),
            flows_swept: Counter::default(),
            // 100 µs .. ~3.3 s
            pass_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 10 µs .. ~0.33 s
            lock_held: Histogram::new(exponential_buckets(0.00001, 2.0, 16)),
            container_checks: Counter::default(),
            hook_checks: Counter::default(),
            // 100 µs .. ~3.3 s
            event_cleanup: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

/// The registry served at /metrics.
pub(crate) fn registry(shared: Arc<Shared>, per_endpoint: bool) -> PromRegistry {
    let mut r = PromRegistry::default();
    r.register(
        "vethfp_agent",
        "vethfp agent build",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let m = &shared.metrics;
    register_reconcile(&mut r, m);
    register_tcp(&mut r, m);
    register_passes(&mut r, m);
    r.register_collector(Box::new(DatapathCollector {
        shared,
        per_endpoint,
    }));
    r
}

/// The reconciliation and repair counters (registered first: their order is the page's).
fn register_reconcile(r: &mut PromRegistry, m: &AgentMetrics) {
    r.register(
        "vethfp_agent_reconciles",
        "Reconciliation passes (start, periodic, after lost link notifications)",
        m.reconciles.clone(),
    );
    r.register(
        "vethfp_agent_reconcile_duration_seconds",
        "Duration of the last reconciliation pass",
        m.reconcile_seconds.clone(),
    );
    r.register(
        "vethfp_agent_endpoints_removed",
        "Endpoints and uplinks removed because their interface left the node",
        m.removed.clone(),
    );
    r.register(
        "vethfp_agent_links_reattached",
        "Links attached again because their pin was missing",
        m.reattached.clone(),
    );
    r.register(
        "vethfp_agent_programs_replaced",
        "Links switched in place from another build's program to this build's",
        m.replaced.clone(),
    );
    r.register(
        "vethfp_agent_repairs",
        "Parts of live endpoints found missing or wrong and restored, by part",
        m.repairs.clone(),
    );
    r.register(
        "vethfp_agent_state_reopened",
        "Times the state directory was found removed or replaced and opened anew",
        m.state_reopened.clone(),
    );
    r.register(
        "vethfp_agent_event_cleanup_seconds",
        "Time from a link deletion notification to the endpoint's state being removed",
        m.event_cleanup.clone(),
    );
}

/// The TCP hand-off and flow-sweep metrics.
fn register_tcp(r: &mut PromRegistry, m: &AgentMetrics) {
    r.register(
        "vethfp_tcp_handoffs",
        "TCP flows handed off: the agent made the flow's conntrack entry liberal about windows, then admitted it",
        m.handoffs.clone(),
    );
    r.register(
        "vethfp_tcp_handoff_refusals",
        "TCP hand-offs refused (the flow stays on the kernel path), by reason",
        m.handoff_refusals.clone(),
    );
    r.register(
        "vethfp_tcp_demotions",
        "Handed-off TCP flows taken off the fast path, by reason",
        m.demotions.clone(),
    );
    r.register(
        "vethfp_tcp_handoff_delay_seconds",
        "Time from the datapath's report of a TCP flow to the flow being handed off",
        m.handoff_delay.clone(),
    );
    r.register(
        "vethfp_flows_swept",
        "Flow-table entries the agent removed: pending, closing or expired longer than twice the idle time",
        m.flows_swept.clone(),
    );
}

/// Per-pass duration, lock hold time and container checks.
fn register_passes(r: &mut PromRegistry, m: &AgentMetrics) {
    r.register(
        "vethfp_agent_reconcile_pass_seconds",
        "Duration of each reconciliation pass: the read without the state lock, and the repair if it found something",
        m.pass_seconds.clone(),
    );
    r.register(
        "vethfp_agent_reconcile_lock_held_seconds",
        "State lock held by each reconciliation pass that repaired something (a pass with nothing to repair never takes it)",
        m.lock_held.clone(),
    );
    r.register(
        "vethfp_agent_container_checks",
        "Container sides the reconciliation passes looked at (a round-robin slice per pass)",
        m.container_checks.clone(),
    );
    r.register(
        "vethfp_agent_hook_checks",
        "Endpoints whose hooks the reconciliation passes looked at (a round-robin slice per pass, those tc notifications named, all on a full pass)",
        m.hook_checks.clone(),
    );
}

/// Reads the pinned maps on every scrape: one pass over the endpoint records and one
/// counter lookup per endpoint (per-endpoint series on), the config, uplinks and flow table.
#[derive(Debug)]
struct DatapathCollector {
    shared: Arc<Shared>,
    /// Serve `vethfp_endpoint_*` (`agent --per-endpoint-metrics`).
    per_endpoint: bool,
}

type Labels = Vec<(&'static str, String)>;

fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut fam = enc.encode_descriptor(name, help, None, ty)?;
    let value = |m: MetricEncoder, v: u64| match ty {
        MetricType::Gauge => ConstGauge::new(v as i64).encode(m),
        _ => ConstCounter::new(v).encode(m),
    };
    // A single sample without labels: `name value`, not `name{} value`.
    if let [(labels, v)] = rows
        && labels.is_empty()
    {
        return value(fam, *v);
    }
    for (labels, v) in rows {
        value(fam.encode_family(labels)?, *v)?;
    }
    Ok(())
}

impl Collector for DatapathCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((stats, status)) = self.read() else {
            return Ok(());
        };
        let mut families = if self.per_endpoint {
            endpoint_families(&stats)
        } else {
            Vec::new()
        };
        families.extend(node_families(&status));
        families.extend(uplink_families(&status));
        for f in &families {
            family(&mut enc, f.name, f.help, f.kind, &f.rows)?;
        }
        Ok(())
    }
}

impl DatapathCollector {
    /// Counters of every endpoint (with its namespace, if per-endpoint series are on) and the
    /// node's status; None (logged) if the maps cannot be read.
    fn read(&self) -> Option<(Vec<(EndpointStats, String)>, Status)> {
        let read = (|| {
            let mut reg = self.shared.read_metrics()?;
            let stats = if self.per_endpoint {
                reg.stats_with_netns()?
            } else {
                Vec::new()
            };
            let status = reg.status()?;
            Ok::<_, crate::registry::EndpointError>((stats, status))
        })();
        read.inspect_err(|e| tracing::warn!("metrics: reading the maps failed: {e}"))
            .ok()
    }
}

/// One metric family as exposed: name, help, type and its samples.
struct Exposed {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Labels, u64)>,
}

fn gauge(name: &'static str, help: &'static str, v: u64) -> Exposed {
    Exposed {
        name,
        help,
        kind: MetricType::Gauge,
        rows: vec![(vec![], v)],
    }
}

/// Packets and bytes per endpoint, direction and verdict, and drops per reason.
fn endpoint_families(stats: &[(EndpointStats, String)]) -> Vec<Exposed> {
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    let mut drops = Vec::new();
    for (s, netns) in stats {
        for dir in Dir::ALL {
            for v in Verdict::ALL.into_iter().filter(|v| *v != Verdict::Reserved) {
                let labels: Labels = vec![
                    ("host_if", s.host_if.clone()),
                    ("netns", netns.clone()),
                    ("direction", dir.name().into()),
                    ("verdict", v.name().into()),
                ];
                let pb = s.counters.get(dir, v);
                packets.push((labels.clone(), pb.packets));
                bytes.push((labels, pb.bytes));
            }
        }
        for v in Verdict::ALL.into_iter().filter(|v| v.is_drop()) {
            let n: u64 = Dir::ALL.map(|d| s.counters.get(d, v).packets).iter().sum();
            let reason = v.name().trim_start_matches("drop_");
            drops.push((
                vec![
                    ("host_if", s.host_if.clone()),
                    ("netns", netns.clone()),
                    ("reason", reason.to_string()),
                ],
                n,
            ));
        }
    }
    let counter = |name, help, rows| Exposed {
        name,
        help,
        kind: MetricType::Counter,
        rows,
    };
    vec![
        counter(
            "vethfp_endpoint_packets",
            "Packets per endpoint by direction and verdict (as `vethfp stats --json`)",
            packets,
        ),
        counter(
            "vethfp_endpoint_bytes",
            "Bytes (frame length incl. Ethernet header) per endpoint by direction and verdict",
            bytes,
        ),
        counter(
            "vethfp_endpoint_drops",
            "Packets dropped per endpoint by reason, both directions",
            drops,
        ),
    ]
}

/// The node: endpoints, switches, the admission flow table and its events.
fn node_families(status: &Status) -> Vec<Exposed> {
    let ft = &status.flow_table;
    let netfilter = status.admission == crate::registry::flows::Admission::Netfilter;
    vec![
        gauge(
            "vethfp_endpoints",
            "Registered endpoints",
            status.endpoints as u64,
        ),
        gauge(
            "vethfp_fast_path_enabled",
            "1 if the fast path is on",
            status.fast_path as u64,
        ),
        gauge(
            "vethfp_admission_netfilter",
            "1 if admission is `netfilter` (the kernel admits each flow), 0 if `always`",
            netfilter as u64,
        ),
        gauge(
            "vethfp_flow_table_entries",
            "Entries in the admission flow table (pending and admitted)",
            ft.entries as u64,
        ),
        gauge(
            "vethfp_flow_table_admitted",
            "Admitted flows in the flow table",
            ft.admitted as u64,
        ),
        Exposed {
            name: "vethfp_flow_table_flows",
            help: "Flows in the flow table by what the datapath does with their next packet: admitted (fast path), pending, waiting (TCP, for the agent's hand-off), closing, expired (due for re-verification)",
            kind: MetricType::Gauge,
            rows: [
                ("admitted", ft.admitted),
                ("pending", ft.pending),
                ("waiting", ft.waiting),
                ("closing", ft.closing),
                ("expired", ft.expired),
            ]
            .map(|(k, v)| (vec![("state", k.to_string())], v as u64))
            .to_vec(),
        },
        gauge(
            "vethfp_flow_table_handed_off",
            "TCP flows in the flow table whose conntrack entry the agent made liberal",
            ft.handed_off as u64,
        ),
        gauge(
            "vethfp_flow_table_capacity",
            "Capacity of the admission flow table (LRU: full means the oldest are evicted)",
            ft.capacity as u64,
        ),
        Exposed {
            name: "vethfp_flows",
            help: "Node flow events: created, admitted, torn_down (TCP FIN/RST), expired (re-verify), insert_failed, reported (TCP hand-off candidates), report_lost (hand-off ring full)",
            kind: MetricType::Counter,
            rows: ft
                .counters
                .iter()
                .map(|(k, v)| (vec![("event", k.to_string())], *v))
                .collect(),
        },
    ]
}

/// Packets and bytes per attached uplink and counter.
fn uplink_families(status: &Status) -> Vec<Exposed> {
    let mut up_p = Vec::new();
    let mut up_b = Vec::new();
    for u in &status.uplinks {
        for (counter, d, v) in [
            ("received_fast", DIR_TO_CONTAINER, V_FAST_UPLINK),
            ("received_stack", DIR_TO_CONTAINER, V_STACK),
            ("sent_fast", DIR_FROM_CONTAINER, V_FAST_UPLINK),
        ] {
            let labels: Labels = vec![
                ("uplink", u.uplink.name.clone()),
                ("counter", counter.into()),
            ];
            up_p.push((labels.clone(), u.counters.c[d][v].packets));
            up_b.push((labels, u.counters.c[d][v].bytes));
        }
    }
    vec![
        Exposed {
            name: "vethfp_uplink_packets",
            help: "Packets per attached uplink (as `vethfp status --json`)",
            kind: MetricType::Counter,
            rows: up_p,
        },
        Exposed {
            name: "vethfp_uplink_bytes",
            help: "Bytes per attached uplink",
            kind: MetricType::Counter,
            rows: up_b,
        },
    ]
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves HTTP/1.1 on `listener` until the task is dropped: `/metrics`, and the probes
/// `/healthz` (the agent's event loop answers) and `/readyz` (the pinned state is open and the
/// start reconciliation has run; checked on every request).
pub(crate) async fn serve(listener: TcpListener, registry: Arc<PromRegistry>, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let registry = registry.clone();
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, registry, shared).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

fn response(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// Why the agent is not ready, or `None` when it is: the start reconciliation has run and the
/// pinned state opens (re-opened if it was removed or replaced).
fn not_ready(shared: &Shared) -> Option<String> {
    if shared.metrics.reconciles.get() == 0 {
        return Some("the start reconciliation has not run yet".into());
    }
    match shared.read_metrics() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "the pinned state under {} does not open: {e}",
            shared.dir.display()
        )),
    }
}

async fn handle(
    req: Request<Incoming>,
    registry: Arc<PromRegistry>,
    shared: Arc<Shared>,
) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => response(StatusCode::OK, text, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            match super::blocking(move || not_ready(&shared)).await {
                Ok(None) => response(StatusCode::OK, text, "ready\n"),
                Ok(Some(why)) => response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    text,
                    format!("not ready: {why}\n"),
                ),
                Err(e) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    text,
                    format!("readiness check failed: {e}\n"),
                ),
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => {
            // Map reads are syscalls: keep them off the event loop.
            let body = super::blocking(move || {
                let mut s = String::new();
                prometheus_client::encoding::text::encode(&mut s, &registry).map(|()| s)
            })
            .await;
            match body {
                // For HEAD, hyper sends the headers (with this body's length) only.
                Ok(Ok(s)) => response(StatusCode::OK, OPENMETRICS, s),
                _ => response(StatusCode::INTERNAL_SERVER_ERROR, text, "encoding failed\n"),
            }
        }
        (&Method::GET, "/") => response(
            StatusCode::OK,
            text,
            "vethfp agent: /metrics, /healthz, /readyz\n",
        ),
        (_, "/metrics") => {
            let mut r = response(StatusCode::METHOD_NOT_ALLOWED, text, "use GET\n");
            if let Ok(v) = "GET, HEAD".parse() {
                r.headers_mut().insert(ALLOW, v);
            }
            r
        }
        _ => response(
            StatusCode::NOT_FOUND,
            text,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}
