//! `vethfp agent`: the long-running front end.
//!
//! The datapath never depends on the agent: everything is pinned, so the agent may crash, be
//! killed or upgraded while traffic flows. What the agent adds:
//! - on start, and every `reconcile_interval` as a safety net, a reconciliation pass
//!   ([`crate::registry::reconcile`]): vanished endpoints removed, missing links re-attached, links of
//!   an older build switched in place to this build's programs. A pass reads without the
//!   state lock (one dump per kind of object, container sides a round-robin slice) and takes
//!   the lock only to repair what it found;
//! - a netlink link watch ([`crate::sys::events`]): a host end deleted by someone else, or gone
//!   with its container's namespace, is cleaned up right away;
//! - TCP hand-off ([`handoff`]): each TCP flow the kernel admitted gets its conntrack entry
//!   made liberal, then the fast path; destroy notifications demote it;
//! - Prometheus metrics and the probes `/healthz`, `/readyz` over HTTP ([`crate::agent::metrics`]);
//! - optionally, BPF debug events through aya-log (`--bpf-log`).
//!
//! Concurrency with the CLI: every change the agent makes happens under the same state lock
//! (flock on the state directory) that CLI writes take, so the two never interleave. Reads
//! (metrics) take no lock. See docs/ARCHITECTURE.md, "Agent and CLI concurrency".

mod bridges;
mod handoff;
pub(crate) mod metrics;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{debug, error, info, warn};

use crate::{
    DatapathError, NetlinkError,
    agent::metrics::AgentMetrics,
    registry::node::{self, LinkEvent, LinkTable},
    registry::reconcile::{HookScope, Report},
    registry::{EndpointError, Registry},
};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub bpffs: PathBuf,
    pub metrics_addr: SocketAddr,
    /// Remove every endpoint and pin on SIGTERM/SIGINT instead of leaving the datapath.
    pub cleanup_on_exit: bool,
    /// Turn on BPF debug events (aya-log) and print them.
    pub bpf_log: bool,
    /// Period of the safety-net reconciliation.
    pub reconcile_interval: Duration,
    /// Serve the per-endpoint series (`vethfp_endpoint_*`, ~40 per endpoint) at /metrics.
    /// Off, a scrape reads no per-endpoint map entry: node-wide series only.
    pub per_endpoint_metrics: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("BPF log: {0}")]
    BpfLog(String),
    #[error("a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// State shared by the agent's tasks: the state dir and a registry opened for reading (the
/// maps); writes through it are made under the state lock (see [`Shared::write`]).
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    /// For writes ([`Shared::write`]) and short reads.
    reg: Mutex<Opened>,
    /// The periodic pass's own registry (its map fds and tc socket): a pass reads for
    /// hundreds of ms at a full node, and a write that holds the state lock must never wait
    /// for it (nor for a /metrics scrape, which has its own too).
    survey_reg: Mutex<Opened>,
    metrics_reg: Mutex<Opened>,
    pub(crate) metrics: AgentMetrics,
    /// Where the next pass's round of container-side checks starts (position in the records
    /// sorted by host end name).
    container_cursor: AtomicUsize,
    /// Interfaces whose qdiscs or filters changed since the last pass (tc notifications):
    /// the next pass looks at their hooks besides its round-robin slice.
    hooks_named: Mutex<BTreeSet<u32>>,
    /// The node's links, kept by the link watch (replaced when the watch restarts).
    links: Mutex<LinkTable>,
    /// Passes so far: every [`LINK_DUMP_EVERY`]th dumps the links instead of reading the
    /// table.
    passes: AtomicUsize,
}

/// A periodic pass dumps the node's links itself once in this many (about every 5 min at
/// the default interval), so that even a table that missed something without the kernel
/// saying so (none is known) is not trusted for long.
const LINK_DUMP_EVERY: usize = 30;

/// The registry and the identity (device, inode) of the config map pin it was opened from:
/// when the pin changes (the state dir was removed, or removed and made again), the map fds
/// held here describe a state nobody else sees any more and must never be acted on.
pub(crate) struct Opened {
    reg: Registry,
    ident: Option<(u64, u64)>,
}

impl std::ops::Deref for Opened {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.reg
    }
}

impl std::ops::DerefMut for Opened {
    fn deref_mut(&mut self) -> &mut Registry {
        &mut self.reg
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("dir", &self.dir).finish()
    }
}

impl Shared {
    fn lock_inner(&self) -> MutexGuard<'_, Opened> {
        self.reg.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True if the state dir still holds the state our map fds belong to.
    fn current(&self, o: &Opened) -> bool {
        o.ident.is_some() && node::state_identity(&self.dir) == o.ident
    }

    /// Opens the state dir anew (re-creating it if it was removed). The caller holds the
    /// state lock.
    fn reopen(&self, o: &mut Opened) -> Result<(), EndpointError> {
        let reg = Registry::open_read(&self.dir)?;
        let ident = node::state_identity(&self.dir);
        warn!(
            bpffs = %self.dir.display(),
            "state directory was removed or replaced: re-opened it; the old map descriptors are dropped"
        );
        o.reg = reg;
        o.ident = ident;
        self.metrics.state_reopened.inc();
        Ok(())
    }

    /// The registry for reading (no state lock), re-opened first if the state dir was
    /// removed or replaced since.
    pub(crate) fn read(&self) -> Result<MutexGuard<'_, Opened>, EndpointError> {
        self.read_in(&self.reg)
    }

    /// [`Shared::read`] for the periodic pass, on its own registry.
    pub(crate) fn read_survey(&self) -> Result<MutexGuard<'_, Opened>, EndpointError> {
        self.read_in(&self.survey_reg)
    }

    /// [`Shared::read`] for /metrics, on its own registry.
    pub(crate) fn read_metrics(&self) -> Result<MutexGuard<'_, Opened>, EndpointError> {
        self.read_in(&self.metrics_reg)
    }

    fn read_in<'a>(&self, m: &'a Mutex<Opened>) -> Result<MutexGuard<'a, Opened>, EndpointError> {
        let lock = || m.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let g = lock();
            if self.current(&g) {
                return Ok(g);
            }
        }
        // Lock order is always state lock, then mutex (as in `write`).
        let _lock = node::lock_state(&self.dir)?;
        let mut g = lock();
        if !self.current(&g) {
            self.reopen(&mut g)?;
        }
        Ok(g)
    }

    /// Runs `f` on a blocking thread with the state lock held (waiting for a CLI write to
    /// finish first, never the other way round). The state is re-opened first if it was
    /// removed or replaced, and bound to this node namespace (refused if another owns it).
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, AgentError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Registry) -> Result<T, EndpointError> + Send + 'static,
    {
        Ok(self.write_timed(f).await?.0)
    }

    /// [`Shared::write`], also returning how long the state lock was held.
    pub(crate) async fn write_timed<T, F>(
        self: &Arc<Self>,
        f: F,
    ) -> Result<(T, Duration), AgentError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Registry) -> Result<T, EndpointError> + Send + 'static,
    {
        let sh = self.clone();
        blocking(move || {
            let lock = node::lock_state(&sh.dir)?;
            let taken = Instant::now();
            let mut g = sh.lock_inner();
            if !sh.current(&g) {
                sh.reopen(&mut g)?;
            }
            g.bind(true)?;
            let out = f(&mut g)?;
            drop(g);
            drop(lock);
            Ok((out, taken.elapsed()))
        })
        .await?
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    let started = Instant::now();
    let shared = open_shared(&cfg).await?;

    // Subscribe before the first pass, so no deletion can fall between the two.
    let (mut events, links) = node::watch_links()?;
    *shared.links.lock().unwrap_or_else(PoisonError::into_inner) = links;
    let mut term = on_signal(SignalKind::terminate(), "SIGTERM")?;
    let mut int = on_signal(SignalKind::interrupt(), "SIGINT")?;

    // Held while the agent lives (and dropped by the kernel if it is killed): every write
    // operation then switches TCP to per-flow hand-off (`registry::flows::sync_tcp`).
    let _agent_lock =
        crate::registry::flows::hold_agent_lock(&cfg.bpffs).map_err(|source| AgentError::Io {
            what: format!("locking {}/agent", cfg.bpffs.display()),
            source,
        })?;
    reconcile(&shared, "start", Hooks::All).await?;
    let _handoff = handoff::start(&shared)?;

    let logger = if cfg.bpf_log {
        Some(start_bpf_log(&shared).await?)
    } else {
        // A previous agent with --bpf-log may have been killed: switch the events off.
        set_bpf_log(&shared, false).await?;
        None
    };
    let local = serve_metrics(&cfg, &shared).await?;
    info!(
        bpffs = %cfg.bpffs.display(),
        metrics = ?local,
        startup_ms = started.elapsed().as_millis() as u64,
        "agent ready"
    );

    main_loop(&cfg, &shared, &mut events, &mut term, &mut int).await;
    drop(logger);
    shut_down(&cfg, &shared).await
}

/// `tokio::task::spawn_blocking`, on a thread marked as one that may block on netlink
/// itself (see [`node::may_block_here`]): every blocking part of the agent runs through this.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        node::may_block_here();
        f()
    })
    .await
}

/// What the agent's tasks share: three read registries (events and repairs, the unlocked
/// survey, metrics scrapes), each opened on the state as it is now.
async fn open_shared(cfg: &Config) -> Result<Arc<Shared>, AgentError> {
    node::prepare_state_dir(&cfg.bpffs)?;
    let dir = cfg.bpffs.clone();
    let [reg, survey_reg, metrics_reg] = blocking(move || {
        Ok::<_, EndpointError>([
            Registry::open_read(&dir)?,
            Registry::open_read(&dir)?,
            Registry::open_read(&dir)?,
        ])
    })
    .await??;
    let ident = node::state_identity(&cfg.bpffs);
    Ok(Arc::new(Shared {
        dir: cfg.bpffs.clone(),
        reg: Mutex::new(Opened { reg, ident }),
        survey_reg: Mutex::new(Opened {
            reg: survey_reg,
            ident,
        }),
        metrics_reg: Mutex::new(Opened {
            reg: metrics_reg,
            ident,
        }),
        metrics: AgentMetrics::default(),
        container_cursor: AtomicUsize::new(0),
        hooks_named: Mutex::new(BTreeSet::new()),
        links: Mutex::new(LinkTable::default()),
        passes: AtomicUsize::new(0),
    }))
}

/// Periodic passes and link events until SIGTERM or SIGINT.
async fn main_loop(
    cfg: &Config,
    shared: &Arc<Shared>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.reconcile_interval,
        cfg.reconcile_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A pass soon, for the hooks a tc notification says were deleted (debounced: a burst of
    // deletions is looked at once).
    let mut soon: Option<tokio::time::Instant> = None;
    loop {
        let early = async move {
            match soon {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); break; }
            _ = int.recv() => { info!("SIGINT"); break; }
            _ = tick.tick() => {
                soon = None;
                if let Err(e) = reconcile(shared, "periodic", Hooks::Slice).await {
                    warn!("periodic reconciliation failed: {e}");
                }
            }
            _ = early => {
                soon = None;
                if let Err(e) = reconcile(shared, "tc notification", Hooks::Slice).await {
                    warn!("reconciliation after a tc notification failed: {e}");
                }
            }
            ev = events.recv() => match ev {
                Some(ev) => {
                    if on_events(shared, ev, events).await && soon.is_none() {
                        soon = Some(tokio::time::Instant::now() + HOOK_DEBOUNCE);
                    }
                }
                None => rewatch(shared, events).await,
            }
        }
    }
}

/// How long after a tc notification that deleted a hook of an endpoint its pass comes.
const HOOK_DEBOUNCE: Duration = Duration::from_millis(100);

/// Which endpoints' hooks a pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hooks {
    /// Every endpoint's: the first pass, and after lost notifications.
    All,
    /// The round-robin slice's and those tc notifications named since the last pass.
    Slice,
}

fn on_signal(kind: SignalKind, name: &str) -> Result<tokio::signal::unix::Signal, AgentError> {
    signal(kind).map_err(|source| AgentError::Io {
        what: format!("installing the {name} handler"),
        source,
    })
}

/// Serves /metrics, /healthz and /readyz; returns the address it listens on.
async fn serve_metrics(
    cfg: &Config,
    shared: &Arc<Shared>,
) -> Result<Option<std::net::SocketAddr>, AgentError> {
    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .map_err(|source| AgentError::Io {
            what: format!("binding the metrics listener on {}", cfg.metrics_addr),
            source,
        })?;
    let local = listener.local_addr().ok();
    let registry = Arc::new(metrics::registry(shared.clone(), cfg.per_endpoint_metrics));
    tokio::spawn(metrics::serve(listener, registry, shared.clone()));
    Ok(local)
}

/// A link event and whatever else is queued, handled as one batch. True if a tc
/// notification says a qdisc or filter of an endpoint or uplink was deleted: a pass should
/// look at its hooks soon.
async fn on_events(
    shared: &Arc<Shared>,
    first: LinkEvent,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
) -> bool {
    let mut batch = vec![first];
    while let Ok(more) = events.try_recv() {
        batch.push(more);
    }
    match handle_events(shared, batch).await {
        Ok(soon) => soon,
        Err(e) => {
            warn!("handling link events failed: {e}");
            false
        }
    }
}

/// The watch thread ended (logged there): start a new one, resync.
async fn rewatch(
    shared: &Arc<Shared>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
) {
    warn!("link event watch ended; restarting it");
    tokio::time::sleep(Duration::from_secs(1)).await;
    match node::watch_links() {
        Ok((rx, links)) => {
            *events = rx;
            *shared.links.lock().unwrap_or_else(PoisonError::into_inner) = links;
        }
        Err(e) => error!("restarting the link event watch: {e}"),
    }
    let _ = reconcile(shared, "event watch restart", Hooks::All).await;
}

/// SIGTERM/SIGINT: leave the datapath in place, or with `--cleanup-on-exit` remove all.
async fn shut_down(cfg: &Config, shared: &Arc<Shared>) -> Result<(), AgentError> {
    if cfg.cleanup_on_exit {
        let n = shared.write(|reg| reg.remove_everything()).await?;
        info!(
            endpoints = n,
            "cleanup on exit: removed every endpoint and pin"
        );
    } else {
        if cfg.bpf_log {
            set_bpf_log(shared, false).await?;
        }
        info!("exiting; the datapath stays in place (pinned)");
    }
    Ok(())
}

/// Container sides looked at per pass: at least [`CONTAINER_CHECKS_MIN`], and enough that a
/// full round over every endpoint takes at most [`CONTAINER_ROUND_PASSES`] passes.
const CONTAINER_CHECKS_MIN: usize = 16;
const CONTAINER_ROUND_PASSES: usize = 32;

fn container_checks(endpoints: usize) -> usize {
    CONTAINER_CHECKS_MIN.max(endpoints.div_ceil(CONTAINER_ROUND_PASSES))
}

/// One reconciliation pass: the read half ([`Registry::survey`]) without the state lock,
/// then, only if it found something, the repair ([`Registry::repair_surveyed`]) under it.
/// A pass with nothing to repair never takes the lock, so CLI writes and CNI calls never
/// wait for one; a repair holds it for the suspects' endpoints only.
async fn reconcile(
    shared: &Arc<Shared>,
    why: &'static str,
    hooks: Hooks,
) -> Result<Report, AgentError> {
    let started = Instant::now();
    let (report, held) = survey_then_repair(shared, why, hooks).await?;
    let took = started.elapsed();
    let m = &shared.metrics;
    m.pass_seconds.observe(took.as_secs_f64());
    bridges::follow(shared, &[], true).await;
    m.reconciles.inc();
    m.reconcile_seconds.set(took.as_secs_f64());
    m.removed
        .inc_by((report.removed.len() + report.removed_uplinks.len()) as u64);
    m.reattached.inc_by(report.attached.len() as u64);
    m.replaced.inc_by(report.replaced.len() as u64);
    log_changes(m, &report, why);
    log_pass(&report, why, took, held);
    Ok(report)
}

/// The survey without the state lock, then the repair under it only if the survey found
/// something. Returns the report and how long the lock was held (None: not taken).
async fn survey_then_repair(
    shared: &Arc<Shared>,
    why: &'static str,
    hooks: Hooks,
) -> Result<(Report, Option<Duration>), AgentError> {
    let sh = shared.clone();
    let survey = blocking(move || -> Result<_, EndpointError> {
        let named = std::mem::take(
            &mut *sh
                .hooks_named
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let scope = HookScope {
            all: hooks == Hooks::All,
            named,
        };
        // The links as the watch keeps them, or (a full pass, and now and then) dumped.
        let pass = sh.passes.fetch_add(1, Ordering::Relaxed);
        let links = (hooks == Hooks::Slice && !pass.is_multiple_of(LINK_DUMP_EVERY)).then(|| {
            sh.links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .snapshot()
        });
        let mut reg = sh.read_survey()?;
        let mut cursor = sh.container_cursor.load(Ordering::Relaxed);
        let n = reg.list_len()?;
        let s = reg.survey(&mut cursor, container_checks(n), &scope, links)?;
        sh.container_cursor.store(cursor, Ordering::Relaxed);
        Ok(s)
    })
    .await??;
    let m = &shared.metrics;
    m.container_checks.inc_by(survey.containers_checked as u64);
    m.hook_checks.inc_by(survey.hooks_checked as u64);
    if survey.clean() {
        let report = Report {
            endpoints: survey.endpoints,
            took: survey.took,
            ..Report::default()
        };
        return Ok((report, None));
    }
    for s in &survey.suspects {
        debug!(host_if = %s.name, seen = s.why, why, "reconcile: suspect, repairing under the lock");
    }
    let (report, held) = shared
        .write_timed(move |reg| reg.repair_surveyed(&survey))
        .await?;
    m.lock_held.observe(held.as_secs_f64());
    Ok((report, Some(held)))
}

/// One log line per thing a pass changed (and the repair counters by part).
fn log_changes(m: &AgentMetrics, report: &Report, why: &'static str) {
    for name in &report.removed {
        info!(host_if = %name, why, "removed endpoint: host interface is gone");
    }
    for (name, what) in &report.leftovers {
        info!(host_if = %name, why, "journal: {what}");
    }
    for (name, part) in &report.repaired {
        m.repaired(part);
        info!(host_if = %name, part, why, "repaired endpoint");
    }
    for name in &report.removed_uplinks {
        info!(uplink = %name, why, "removed uplink: interface is gone");
    }
    for (iface, hook) in &report.attached {
        info!(iface = %iface, hook, why, "re-attached missing link");
    }
    for (iface, hook, link, old, new) in &report.replaced {
        info!(
            iface = %iface, hook, link_id = link, old_prog = old, new_prog = new, why,
            "replaced program in place"
        );
    }
}

/// The pass's summary line: info when it changed something (or at start), else debug.
fn log_pass(report: &Report, why: &'static str, took: Duration, held: Option<Duration>) {
    let level_info = report.changed() || why == "start";
    let lock_held_us = held.map(|h| h.as_micros() as u64).unwrap_or(0);
    if level_info {
        info!(
            why,
            endpoints = report.endpoints,
            uplinks = report.uplinks,
            pruned_link_pins = report.pruned_link_pins,
            pruned_prog_pins = report.pruned_prog_pins,
            took_us = took.as_micros() as u64,
            lock_held_us,
            "reconciled"
        );
    } else {
        debug!(
            why,
            endpoints = report.endpoints,
            took_us = took.as_micros() as u64,
            locked = held.is_some(),
            lock_held_us,
            "reconciled, nothing to do"
        );
    }
}

/// Cleans up after interfaces that left the node. Only events about endpoints or uplinks
/// take the state lock.
async fn handle_events(shared: &Arc<Shared>, batch: Vec<LinkEvent>) -> Result<bool, AgentError> {
    if batch.contains(&LinkEvent::Overrun) {
        warn!("link notifications were lost; reconciling in full");
        reconcile(shared, "event overrun", Hooks::All).await?;
        return Ok(false);
    }
    bridges::follow(shared, &batch, false).await;
    let ours: BTreeSet<u32> = {
        let sh = shared.clone();
        blocking(move || -> Result<BTreeSet<u32>, EndpointError> {
            let mut reg = sh.read()?;
            let mut s: BTreeSet<u32> = reg.list()?.iter().map(|e| e.host_ifindex).collect();
            s.extend(reg.uplinks()?.iter().map(|u| u.ifindex));
            Ok(s)
        })
        .await??
    };
    // Qdiscs and filters of ours that changed: the next pass looks at their hooks; one that
    // was deleted makes that pass come soon.
    let mut hook_deleted = false;
    {
        let mut named = shared
            .hooks_named
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for e in &batch {
            if let LinkEvent::Tc { ifindex, deleted } = e
                && ours.contains(ifindex)
            {
                named.insert(*ifindex);
                hook_deleted |= *deleted;
            }
        }
    }
    // A host end set up again (`ip link set … down; up`): the kernel flushed its routes and
    // neighbours on the way down; restore them now.
    let up: BTreeSet<u32> = batch
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Up { ifindex } if ours.contains(ifindex) => Some(*ifindex),
            _ => None,
        })
        .collect();
    if !up.is_empty() {
        repair_up(shared, up).await?;
    }
    let gone: Vec<(u32, String, Instant)> = batch
        .into_iter()
        .filter_map(|e| match e {
            LinkEvent::Deleted { ifindex, name, at } if ours.contains(&ifindex) => {
                Some((ifindex, name, at))
            }
            _ => None,
        })
        .collect();
    if !gone.is_empty() {
        remove_gone(shared, gone).await?;
    }
    Ok(hook_deleted)
}

/// Repairs the endpoints whose host end came up again. They are looked at without the state
/// lock first: a host end that came up with nothing missing (a `pair add` that just
/// finished, say) never makes a CLI write wait.
async fn repair_up(shared: &Arc<Shared>, up: BTreeSet<u32>) -> Result<(), AgentError> {
    let sh = shared.clone();
    let up = blocking(move || -> Result<BTreeSet<u32>, EndpointError> {
        let mut reg = sh.read()?;
        let mut wrong = BTreeSet::new();
        for ifindex in up {
            let Some(rec) = reg.record_by_ifindex(ifindex)? else {
                continue;
            };
            match reg.endpoint_missing(&rec) {
                Ok(parts) if parts.is_empty() => {}
                Ok(parts) => {
                    debug!(
                        ifindex,
                        ?parts,
                        "link up: missing, repairing under the lock"
                    );
                    wrong.insert(ifindex);
                }
                // Looked at again under the lock.
                Err(_) => {
                    wrong.insert(ifindex);
                }
            }
        }
        Ok(wrong)
    })
    .await??;
    if up.is_empty() {
        return Ok(());
    }
    let repaired = shared
        .write(move |reg| {
            let mut out = Vec::new();
            // A `pair add`/`pair del` in flight finishes its endpoint itself.
            let busy = reg.in_flight()?;
            for ifindex in up {
                if let Some(rec) = reg.record_by_ifindex(ifindex)? {
                    let name = String::from_utf8_lossy(&rec.host_name)
                        .trim_end_matches('\0')
                        .to_string();
                    if busy.contains(&name) {
                        continue;
                    }
                    match reg.repair_endpoint(&rec) {
                        Ok(parts) => out.extend(parts.into_iter().map(|p| (name.clone(), p))),
                        Err(e) => warn!(host_if = %name, "repairing after link up: {e}"),
                    }
                }
            }
            Ok(out)
        })
        .await?;
    for (name, part) in repaired {
        shared.metrics.repaired(part);
        info!(host_if = %name, part, "repaired endpoint after its link came up");
    }
    Ok(())
}

/// Removes the endpoints (and uplinks) whose interface left the node, re-checked under the
/// lock.
async fn remove_gone(
    shared: &Arc<Shared>,
    gone: Vec<(u32, String, Instant)>,
) -> Result<(), AgentError> {
    let done = shared
        .write(move |reg| {
            let mut done = Vec::new();
            let busy = reg.in_flight()?;
            for (ifindex, name, at) in gone {
                // Re-check under the lock: the event may be stale. A `pair del` in flight
                // removes its endpoint itself.
                if busy.contains(&name) || node::link_present(ifindex)? {
                    continue;
                }
                if let Some(host_if) = reg.remove_by_ifindex(ifindex)? {
                    done.push((host_if, at.elapsed()));
                } else if let Some(up) = reg.uplinks()?.into_iter().find(|u| u.ifindex == ifindex) {
                    reg.uplink_detach(&up.name)?;
                    done.push((up.name, at.elapsed()));
                } else {
                    debug!(ifindex, name = %name, "already removed");
                }
            }
            Ok(done)
        })
        .await?;
    for (name, took) in done {
        shared.metrics.removed.inc();
        shared.metrics.event_cleanup.observe(took.as_secs_f64());
        info!(
            host_if = %name,
            latency_us = took.as_micros() as u64,
            "interface left the node: endpoint removed"
        );
    }
    Ok(())
}

async fn set_bpf_log(shared: &Arc<Shared>, on: bool) -> Result<(), AgentError> {
    shared.write(move |reg| reg.set_bpf_log(on)).await
}

/// Turns the BPF debug events on and prints them (through `log`, hence tracing) until the
/// returned task is dropped. The programs log into one pinned ring buffer (AYA_LOGS).
async fn start_bpf_log(shared: &Arc<Shared>) -> Result<AbortOnDrop, AgentError> {
    let sh = shared.clone();
    let prog_id =
        blocking(move || -> Result<u32, AgentError> { Ok(sh.read()?.log_program_id()?) }).await??;
    let logger = aya_log::EbpfLogger::init_from_id(prog_id)
        .map_err(|e| AgentError::BpfLog(e.to_string()))?;
    // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, until it is
    // dropped, which only happens with the AsyncFd.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| AgentError::Io {
            what: "polling the BPF log ring buffer".into(),
            source: e.into(),
        })?;
    set_bpf_log(shared, true).await?;
    info!("BPF debug events on");
    let task = tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
