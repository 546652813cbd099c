//! `haoscar agent`: the per-node daemon. Loads and validates the cluster
//! configuration, picks the local node, reads the cluster key, runs the
//! authenticated heartbeat service on every detection channel, keeps the
//! event history, serves the control API (TCP + Unix socket) and shuts down
//! cleanly on SIGTERM/SIGINT. Later capabilities (election, VIPs, resources)
//! plug into this runtime.

use crate::config_apply::{self, Verdict};
use crate::failover::{self, Failover, HeadCtx};
use crate::services::{ServiceCtx, Services};
use crate::ConfigArgs;
use anyhow::{bail, Context, Result};
use haoscar_api::{ActionFuture, AgentView, Server};
use haoscar_core::membership::{BootId, LinkState, MembershipEvent, PeerState};
use haoscar_net::heartbeat::{self, HeartbeatConfig, HeartbeatHandle, LocalChannel, PeerAddrs};
use haoscar_net::wire::ClusterKey;
use haoscar_types::api::{self, ActionReply, Event, Liveness, NetCounters, Status};
use haoscar_types::config::{self, Config, Role};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// How many events the agent keeps in memory.
const EVENT_HISTORY: usize = 1000;

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    crate::logging::init_agent(args.log_json);
    let loaded = config::load(&args.cfg.config)
        .map_err(|d| anyhow::anyhow!("invalid configuration:\n{d}"))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    let node = local_node_name(&config, args.cfg.node.as_deref())?;
    let key = read_key(&config.cluster.secret_file)?;
    raise_priority();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Replication runs on threads of its own, at the normal priority: a
    // long hash, a slow disk or a lock held by a scan never holds up a
    // heartbeat or the lease, and under CPU contention they come first.
    let repl = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("haoscar-repl")
        .on_thread_start(|| {
            // SAFETY: gettid and setpriority only read their arguments.
            unsafe {
                let tid = libc::gettid();
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 0);
            }
        })
        .enable_all()
        .build()
        .context("cannot start the replication runtime")?;
    let result = rt.block_on(agent_main(
        config,
        node,
        key,
        args.cfg.config.clone(),
        repl.handle().clone(),
    ));
    // Do not wait for blocked helper threads (e.g. a stuck DNS or disk call).
    rt.shutdown_timeout(Duration::from_millis(200));
    repl.shutdown_timeout(Duration::from_millis(200));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Nice level the agent asks for: failure detection and the lease must keep
/// their timing when the head's CPUs are saturated by its workload.
const AGENT_NICE: libc::c_int = -10;

/// Raises the scheduling priority of this process (the agent, and the
/// guard in its own session): the thread's nice level (threads started
/// later inherit it) and, where the kernel groups sessions
/// (`sched_autogroup`) and this process leads its session (a service, the
/// guard), the session group's nice level, without which a nice level only
/// counts against processes of the same session. Needs root or
/// CAP_SYS_NICE. Failing is not fatal: logged.
pub(crate) fn raise_priority() {
    // SAFETY: setpriority only reads its arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot raise the process priority (nice {AGENT_NICE}); under heavy CPU load failover timing may suffer"
        );
    }
    // Only a session leader owns its group: raising the group of a shell or
    // a test runner would raise every process of that session.
    // SAFETY: getsid and getpid have no preconditions.
    let leader = unsafe { libc::getsid(0) == libc::getpid() };
    let autogroup = std::path::Path::new("/proc/self/autogroup");
    if leader && autogroup.exists() {
        if let Err(e) = std::fs::write(autogroup, AGENT_NICE.to_string()) {
            tracing::warn!(error = %e, "cannot raise the session's scheduling group priority (/proc/self/autogroup)");
        }
    }
}

/// The local node: `--node`, else the host name; it must be in the config.
pub fn local_node_name(config: &Config, explicit: Option<&str>) -> Result<String> {
    let name = match explicit {
        Some(n) => n.to_string(),
        None => {
            let host = nix::unistd::gethostname().context("cannot read the host name")?;
            let host = host.to_string_lossy().into_owned();
            // Accept a fully-qualified host name whose first label is the node.
            host.split('.').next().unwrap_or(&host).to_string()
        }
    };
    if config.node(&name).is_none() {
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        let listed =
            haoscar_types::nodeset::fold(names.iter().copied()).unwrap_or_else(|_| names.join(","));
        bail!(
            "node {name:?} is not in the configuration (nodes: {listed}); pass --node NAME{}",
            if explicit.is_none() {
                " (the default is the host name)"
            } else {
                ""
            }
        );
    }
    Ok(name)
}

/// Reads the cluster key: hex text (from `haoscar keygen`), at least 16
/// bytes, and not readable by group or others.
pub fn read_key(path: &Path) -> Result<ClusterKey> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot read the cluster key {} (create one with `haoscar keygen {}` and copy it to every node)",
            path.display(),
            path.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the cluster key {} has mode {mode:04o}: it must not be readable by group or others (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = hex::decode(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "the cluster key {} is not hex text ({e}); regenerate it with `haoscar keygen --force`",
            path.display()
        )
    })?;
    if bytes.len() < 16 {
        bail!(
            "the cluster key {} is too short ({} bytes, at least 16 needed)",
            path.display(),
            bytes.len()
        );
    }
    ClusterKey::new(bytes).map_err(|e| anyhow::anyhow!("the cluster key {}: {e}", path.display()))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which nodes this node exchanges heartbeats with: voters (heads and
/// witnesses) talk to each other, heads also to compute nodes, compute
/// nodes to the heads only. Only channels both sides are on are used.
pub fn heartbeat_peers(config: &Config, local: &str) -> Vec<PeerAddrs> {
    let Some(me) = config.node(local) else {
        return Vec::new();
    };
    config
        .nodes
        .iter()
        .filter(|n| n.name != me.name)
        .filter(|n| match (me.role, n.role) {
            (Role::Compute, r) => r == Role::Head,
            (Role::Witness, r) => r.votes(),
            (Role::Head, _) => true,
        })
        .filter_map(|n| {
            let addrs: Vec<(String, SocketAddr)> = n
                .address
                .iter()
                .filter(|(ch, _)| me.address.contains_key(*ch))
                .filter_map(|(ch, ip)| {
                    Some((ch.clone(), SocketAddr::new(*ip, config.channel(ch)?.port)))
                })
                .collect();
            (!addrs.is_empty()).then(|| PeerAddrs {
                name: n.name.clone(),
                addrs,
            })
        })
        .collect()
}

/// Shared agent state: what the control API reads.
struct Agent {
    config: Config,
    node: String,
    role: Role,
    boot: BootId,
    started: tokio::time::Instant,
    started_unix_ms: u64,
    heartbeat: HeartbeatHandle,
    channels: Vec<api::LocalChannel>,
    events: Mutex<EventLog>,
    /// Consensus and active role (heads and witnesses).
    failover: OnceLock<Arc<Failover>>,
    /// Events to commit to the replicated history.
    replicate: OnceLock<tokio::sync::mpsc::Sender<Event>>,
    /// Service resources (heads).
    services: OnceLock<Arc<tokio::sync::Mutex<Services>>>,
    resource_view: Arc<Mutex<BTreeMap<String, api::ResourceStatus>>>,
    /// The configuration this node runs now (changes with `config apply`).
    current: Mutex<Current>,
    /// The file the configuration was loaded from (rewritten on apply).
    config_path: PathBuf,
    /// This agent itself, for actions that outlive the API call.
    this: OnceLock<std::sync::Weak<Agent>>,
    /// Health monitoring (watch lists).
    monitoring: OnceLock<Arc<crate::monitoring::Monitoring>>,
    /// Replicated sets (heads).
    replication: OnceLock<Arc<crate::replication::Replication>>,
    /// Which replicated sets may be used here (shared with the services).
    sync_gates: OnceLock<Arc<crate::replication::SyncGates>>,
}

/// The configuration this node runs and how it relates to the cluster's.
#[derive(Clone)]
struct Current {
    config: Config,
    /// Digest of the whole configuration (announced in heartbeats).
    digest: u64,
    /// Digest of its resources: what `config apply` distributes.
    rdigest: u64,
    /// Version of the cluster's applied configuration (0: none).
    version: u64,
    problem: Option<String>,
}

struct EventLog {
    next_id: u64,
    items: VecDeque<Event>,
}

impl Agent {
    fn current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A strong reference to this agent (set once at start).
    fn me(&self) -> Arc<Agent> {
        self.this
            .get()
            .and_then(std::sync::Weak::upgrade)
            .unwrap_or_else(|| unreachable!("the agent registers itself before serving the API"))
    }

    /// `haoscar resource restart|stop|start|cleanup NAME`.
    async fn resource_action(
        &self,
        fo: &Failover,
        req: api::ResourceRequest,
    ) -> Result<ActionReply, (u16, String)> {
        use haoscar_types::service::ResourceOp;
        let cur = self.current();
        let Some(r) = cur.config.resources.iter().find(|r| r.name == req.name) else {
            let names: Vec<&str> = cur
                .config
                .resources
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            return Err((
                404,
                format!(
                    "no resource named {:?} (resources: {})",
                    req.name,
                    names.join(", ")
                ),
            ));
        };
        if r.service.is_none() {
            return Err((
                400,
                format!(
                    "{} is a vip: it follows the active head (use `haoscar switchover`)",
                    r.name
                ),
            ));
        }
        let by = if req.by.is_empty() {
            format!("operator@{}", self.node)
        } else {
            req.by.clone()
        };
        let (change, done) = match req.op.as_str() {
            "restart" => (ResourceOp::Restart { by: by.clone() }, "restart requested"),
            "stop" => (
                ResourceOp::Stop { by: by.clone() },
                "stopped (stays stopped until `haoscar resource start`)",
            ),
            "start" => (ResourceOp::Start { by: by.clone() }, "allowed to run again"),
            "cleanup" => (
                ResourceOp::Cleanup { by: by.clone() },
                "failures forgotten and unblocked",
            ),
            other => {
                return Err((
                    400,
                    format!(
                        "unknown operation {other:?} (expected restart, stop, start or cleanup)"
                    ),
                ))
            }
        };
        fo.consensus
            .propose(haoscar_consensus::Command::Resource {
                name: r.name.clone(),
                change,
            })
            .await
            .map_err(|e| (503, format!("cannot commit the request (no quorum?): {e}")))?;
        self.record(
            "resource_request",
            Some(&r.name),
            format!("{by} asked to {} {}", req.op, r.name),
        );
        Ok(ActionReply {
            message: format!("{}: {done}", r.name),
        })
    }

    /// `haoscar config apply FILE`: validate, distribute, wait until applied here.
    async fn apply_config(
        &self,
        fo: &Failover,
        req: api::ConfigApplyRequest,
    ) -> Result<ActionReply, (u16, String)> {
        let file = if req.file.is_empty() {
            "<request>".to_string()
        } else {
            req.file.clone()
        };
        let loaded = config::parse(&req.text, Path::new(&file))
            .map_err(|d| (400, format!("the new configuration is not valid:\n{d}")))?;
        let new = loaded.config;
        let cur = self.current();
        let bad = config_apply::incompatible(&cur.config, &new);
        if !bad.is_empty() {
            return Err((
                409,
                format!(
                    "config apply changes service resources and watch lists only; this file also changes {}: install it on every node and restart the agents instead",
                    bad.join(", ")
                ),
            ));
        }
        let digest = new.resources_digest();
        // "No change" against the cluster's version (this node's own may
        // differ: applying its file is how an operator makes it the
        // cluster's).
        let cluster = fo
            .consensus
            .with_state(|s| s.config.as_ref().map(|c| c.digest));
        if cluster.unwrap_or(cur.rdigest) == digest && cur.rdigest == digest {
            return Ok(ActionReply {
                message: format!(
                    "no change: the cluster already runs this configuration (version {})",
                    cur.version
                ),
            });
        }
        let by = if req.by.is_empty() {
            format!("operator@{}", self.node)
        } else {
            req.by.clone()
        };
        let text = new.to_toml();
        if text.starts_with("# cannot render") {
            return Err((500, format!("cannot render the configuration: {text}")));
        }
        fo.consensus
            .propose(haoscar_consensus::Command::ApplyConfig {
                text,
                digest,
                previous: cur.rdigest,
                by,
                at_unix_ms: unix_ms(SystemTime::now()),
            })
            .await
            .map_err(|e| {
                (
                    503,
                    format!("cannot commit the new configuration (no quorum?): {e}"),
                )
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.current();
            if c.rdigest == digest {
                let last = self
                    .local_events(50)
                    .into_iter()
                    .rev()
                    .find(|e| e.kind == "config_applied")
                    .map(|e| e.message)
                    .unwrap_or_default();
                return Ok(ActionReply { message: last });
            }
            // A problem this apply caused (not one the node had before).
            if let Some(p) = c.problem.filter(|p| Some(p) != cur.problem.as_ref()) {
                return Err((409, p));
            }
            if tokio::time::Instant::now() > deadline {
                return Err((
                    504,
                    "committed, but not applied on this node within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Follows the cluster's applied configuration: adopts a newer one
    /// (file rewritten, services changed), or reports a differing one.
    async fn follow_config(&self, fo: &Failover) {
        let applied = fo.consensus.with_state(|s| s.config.clone());
        let cur = self.current();
        match config_apply::verdict(cur.rdigest, applied.as_ref()) {
            Verdict::Current => {
                self.report_eligibility(fo, None).await;
                let version = applied.as_ref().map(|a| a.version).unwrap_or(0);
                if cur.problem.is_some() || cur.version != version {
                    self.set_current(Current {
                        version,
                        problem: None,
                        ..cur
                    });
                    fo.set_config_current(true);
                }
            }
            Verdict::Differs(why) => {
                self.report_eligibility(fo, Some(why.clone())).await;
                if cur.problem.as_deref() != Some(why.as_str()) {
                    tracing::error!("{why}");
                    self.record("config_differs", None, why.clone());
                    fo.set_config_current(false);
                    self.set_current(Current {
                        problem: Some(why),
                        ..cur
                    });
                }
            }
            Verdict::Adopt => {
                let Some(a) = applied else { return };
                let path = self.config_path.display().to_string();
                // The cluster's resources and watch lists with this node's
                // other sections (which may differ during a rolling restart).
                let new = match config::parse(&a.text, Path::new(&path)) {
                    Ok(l) => Config {
                        resources: l.config.resources,
                        monitoring_section: l.config.monitoring_section,
                        watches: l.config.watches,
                        ..cur.config.clone()
                    },
                    Err(d) => {
                        let why = format!(
                            "the cluster's configuration version {} does not load here:\n{d}",
                            a.version
                        );
                        self.report_eligibility(fo, Some(why.clone())).await;
                        fo.set_config_current(false);
                        self.set_current(Current {
                            problem: Some(why),
                            ..cur
                        });
                        return;
                    }
                };
                let bad = config_apply::incompatible(&cur.config, &new);
                if !bad.is_empty() {
                    let why = format!(
                        "the cluster's configuration version {} changes {} here: restart this agent with it",
                        a.version,
                        bad.join(", ")
                    );
                    if cur.problem.as_deref() != Some(why.as_str()) {
                        self.record("config_differs", None, why.clone());
                    }
                    self.report_eligibility(fo, Some(why.clone())).await;
                    fo.set_config_current(false);
                    self.set_current(Current {
                        problem: Some(why),
                        ..cur
                    });
                    return;
                }
                let text = new.to_toml();
                if text.starts_with("# cannot render") {
                    tracing::error!("{text}: the configuration file is left as it is");
                } else if let Err(e) = config_apply::write_atomically(&self.config_path, &text) {
                    tracing::warn!(file = %path, error = %e, "cannot rewrite the configuration file; running the new version anyway");
                }
                let (started, stopped, changed) = match self.services.get() {
                    Some(s) => s.lock().await.apply(&new.resources).await,
                    None => Default::default(),
                };
                if let Some(m) = self.monitoring.get() {
                    m.set_config(new.clone());
                }
                let full = new.digest();
                self.heartbeat.set_config_digest(full);
                self.set_current(Current {
                    config: new,
                    digest: full,
                    rdigest: a.digest,
                    version: a.version,
                    problem: None,
                });
                fo.set_config_current(true);
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                self.record(
                    "config_applied",
                    None,
                    format!(
                        "configuration version {} (by {}) applied on {}: groups started: {}; stopped: {}; changed: {}; the others untouched",
                        a.version,
                        a.by,
                        self.node,
                        list(&started),
                        list(&stopped),
                        list(&changed)
                    ),
                );
            }
        }
    }

    /// `haoscar watch silence TARGET --for D` (or `--lift`).
    async fn silence(
        &self,
        fo: &Failover,
        req: api::SilenceRequest,
    ) -> Result<api::ActionReply, (u16, String)> {
        let cfg = self.current().config;
        let known = cfg
            .watches
            .iter()
            .any(|w| w.group == req.target || w.services.iter().any(|s| w.key(s) == req.target));
        if !known {
            let keys: Vec<String> = cfg
                .watches
                .iter()
                .flat_map(|w| {
                    std::iter::once(w.group.clone()).chain(w.services.iter().map(move |s| w.key(s)))
                })
                .collect();
            return Err((
                404,
                format!(
                    "no watch group or service {:?} (known: {})",
                    req.target,
                    keys.join(", ")
                ),
            ));
        }
        let until = if req.for_ms == 0 {
            0
        } else {
            crate::monitoring::unix_ms_now().saturating_add(req.for_ms)
        };
        let cmd = haoscar_consensus::Command::WatchSilence {
            target: req.target.clone(),
            until_unix_ms: until,
            by: req.by.clone(),
        };
        match tokio::time::timeout(Duration::from_secs(5), fo.consensus.propose(cmd)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err((503, format!("cannot record the silence: {e}"))),
            Err(_) => return Err((503, "cannot record the silence: no quorum".to_string())),
        }
        let message = if until == 0 {
            format!("alerts of {} are no longer silenced", req.target)
        } else {
            format!(
                "alerts of {} silenced for {} (until {}), by {}",
                req.target,
                haoscar_types::duration::format_duration(Duration::from_millis(req.for_ms)),
                crate::monitoring::clock_full(until),
                req.by
            )
        };
        self.record("watch_silence", Some(&req.target), message.clone());
        Ok(api::ActionReply { message })
    }

    /// Records in the replicated state whether this head may be made
    /// active (only on heads, only when it changes; best effort: retried at
    /// the next applied entry).
    async fn report_eligibility(&self, fo: &Failover, reason: Option<String>) {
        if self.role != Role::Head {
            return;
        }
        let now = fo
            .consensus
            .with_state(|s| s.ineligible.get(&self.node).cloned());
        if now == reason {
            return;
        }
        // A failing critical watch check is the monitoring's to lift.
        let critical = now
            .as_deref()
            .is_some_and(|r| r.starts_with(crate::monitoring::CRITICAL_REASON_PREFIX));
        if reason.is_none() && critical {
            return;
        }
        let cmd = haoscar_consensus::Command::SetIneligible {
            node: self.node.clone(),
            reason,
        };
        if let Ok(Err(e)) =
            tokio::time::timeout(Duration::from_secs(2), fo.consensus.propose(cmd)).await
        {
            tracing::debug!(error = %e, "cannot record this head's eligibility yet");
        }
    }

    fn set_current(&self, c: Current) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
    }

    fn record(&self, kind: &str, subject: Option<&str>, message: String) {
        let Ok(mut log) = self.events.lock() else {
            return;
        };
        log.next_id += 1;
        let ev = failover::make_event(log.next_id, &self.node, kind, subject, message);
        if log.items.len() >= EVENT_HISTORY {
            log.items.pop_front();
        }
        if let Some(tx) = self.replicate.get() {
            // Best effort: a full queue or no quorum keeps it local only.
            let _ = tx.try_send(ev.clone());
        }
        log.items.push_back(ev);
    }

    fn local_events(&self, limit: usize) -> Vec<Event> {
        match self.events.lock() {
            Ok(log) => {
                let skip = log.items.len().saturating_sub(limit);
                log.items.iter().skip(skip).cloned().collect()
            }
            Err(_) => Vec::new(),
        }
    }

    fn on_membership(&self, ev: &MembershipEvent) {
        let peer = ev.peer();
        let (kind, msg) = match ev {
            MembershipEvent::ChannelUp { channel, .. } => {
                ("channel_up", format!("channel {channel} to {peer} is up"))
            }
            MembershipEvent::ChannelDown {
                channel,
                silent_for,
                ..
            } => (
                "channel_down",
                format!(
                    "channel {channel} to {peer} is down: no valid heartbeat for {} ms",
                    silent_for.as_millis()
                ),
            ),
            MembershipEvent::PeerUp { .. } => ("peer_up", format!("{peer} is up")),
            MembershipEvent::PeerDown { .. } => (
                "peer_down",
                format!("{peer} is down: silent on every channel"),
            ),
            MembershipEvent::PeerRestarted {
                previous, current, ..
            } => (
                "peer_restarted",
                format!("{peer} restarted (boot {previous} -> {current})"),
            ),
            MembershipEvent::ConfigMismatch { ours, theirs, .. } => (
                "config_mismatch",
                format!("{peer} runs a different configuration ({theirs:016x}, ours {ours:016x})"),
            ),
            MembershipEvent::ConfigMatch { .. } => (
                "config_match",
                format!("{peer} runs our configuration again"),
            ),
        };
        match kind {
            "channel_down" | "peer_down" | "config_mismatch" => tracing::warn!(peer, kind, "{msg}"),
            _ => tracing::info!(peer, kind, "{msg}"),
        }
        self.record(kind, Some(peer), msg);
    }

    fn counters(&self) -> NetCounters {
        let c = self.heartbeat.snapshot().counters;
        NetCounters {
            sent: c.sent,
            send_errors: c.send_errors,
            recv_errors: c.recv_errors,
            received_ok: c.received_ok,
            dropped_malformed: c.dropped_malformed,
            dropped_bad_mac: c.dropped_bad_mac,
            dropped_wrong_cluster: c.dropped_wrong_cluster,
            dropped_wrong_destination: c.dropped_wrong_destination,
            dropped_unknown_peer: c.dropped_unknown_peer,
            dropped_wrong_address: c.dropped_wrong_address,
            dropped_replay: c.dropped_replay,
            dropped_stale_boot: c.dropped_stale_boot,
            out_of_order: c.out_of_order,
        }
    }
}

fn liveness_link(s: LinkState) -> Liveness {
    match s {
        LinkState::Unknown => Liveness::Unknown,
        LinkState::Up => Liveness::Up,
        LinkState::Down => Liveness::Down,
    }
}

fn liveness_peer(s: PeerState) -> Liveness {
    match s {
        PeerState::Unknown => Liveness::Unknown,
        PeerState::Up => Liveness::Up,
        PeerState::Down => Liveness::Down,
    }
}

impl AgentView for Agent {
    fn status(&self) -> Status {
        let snap = self.heartbeat.snapshot();
        let peers = snap
            .peers
            .iter()
            .map(|p| {
                let node = self.config.node(&p.name);
                api::PeerStatus {
                    name: p.name.clone(),
                    role: node.map(|n| n.role).unwrap_or(Role::Compute),
                    state: liveness_peer(p.state),
                    boot_id: p.boot.map(|b| b.to_string()),
                    config_matches: p.config_digest.map(|_| !p.config_mismatch),
                    channels: p
                        .channels
                        .iter()
                        .map(|c| api::PeerChannel {
                            name: c.name.clone(),
                            address: node
                                .and_then(|n| n.address.get(&c.name))
                                .map(|a| a.to_string())
                                .unwrap_or_default(),
                            state: liveness_link(c.state),
                            last_heard_ms: c.last_heard_ago_ms,
                            rtt_ms: c.srtt_ms,
                            received: c.packets,
                        })
                        .collect(),
                }
            })
            .collect();
        let t = &self.config.cluster.timing;
        Status {
            api_version: api::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            cluster: self.config.cluster.name.clone(),
            node: self.node.clone(),
            role: self.role,
            boot_id: self.boot.to_string(),
            started_at_unix_ms: self.started_unix_ms,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            config_digest: format!("{:016x}", self.current().digest),
            timing: api::TimingStatus {
                preset: format!("{:?}", t.preset).to_lowercase(),
                heartbeat_interval_ms: t.heartbeat_interval.as_secs_f64() * 1000.0,
                dead_after_ms: t.dead_after.as_secs_f64() * 1000.0,
            },
            active: self.failover.get().and_then(|f| f.consensus.state().active),
            failover: self.failover.get().map(|f| f.status()),
            channels: self.channels.clone(),
            peers,
            counters: self.counters(),
            recent_events: self.events(20),
            resources: self.resources().map(|l| l.resources).unwrap_or_default(),
            config_problem: self.current().problem,
            monitoring: self
                .monitoring
                .get()
                .map(|m| m.summary_lines())
                .unwrap_or_default(),
        }
    }

    fn sync(&self) -> Option<api::SyncStatus> {
        self.replication.get().map(|r| r.status())
    }

    fn sync_verify(&self, set: String) -> haoscar_api::VerifyFuture {
        let rep = self.replication.get().cloned();
        let node = self.node.clone();
        Box::pin(async move {
            match rep {
                Some(rep) => {
                    let r = rep.clone();
                    rep.on_runtime(async move { r.verify(&set).await }).await
                }
                None => Err((409, format!("{node} is not a head"))),
            }
        })
    }

    fn watch(&self) -> Option<api::WatchStatus> {
        if self.role != Role::Head {
            return None;
        }
        self.monitoring.get().map(|m| m.status())
    }

    /// The replicated history (on heads and witnesses) merged with this
    /// node's own events that did not reach it (no quorum at the time),
    /// oldest first.
    fn events(&self, limit: usize) -> Vec<Event> {
        let local = self.local_events(EVENT_HISTORY);
        let Some(fo) = self.failover.get() else {
            let skip = local.len().saturating_sub(limit);
            return local.into_iter().skip(skip).collect();
        };
        let mut all = fo.events();
        let seen: std::collections::HashSet<(String, u64, String)> = all
            .iter()
            .map(|e| (e.node.clone(), e.id, e.kind.clone()))
            .collect();
        all.extend(
            local
                .into_iter()
                .filter(|e| !seen.contains(&(e.node.clone(), e.id, e.kind.clone()))),
        );
        all.sort_by_key(|e| e.at_unix_ms);
        let skip = all.len().saturating_sub(limit);
        all.into_iter().skip(skip).collect()
    }

    fn resources(&self) -> Option<api::ResourceList> {
        if self.role != Role::Head {
            return None;
        }
        let cur = self.current();
        let view = self
            .resource_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // VIPs follow the active role: shown from the failover loop's view.
        let fo_status = self.failover.get().map(|f| f.status());
        let vip_status = |name: &str| -> Option<api::ResourceStatus> {
            let v = fo_status.as_ref()?.vips.iter().find(|v| v.name == name)?;
            let holder = v.holder.as_deref().unwrap_or("nobody");
            Some(api::ResourceStatus {
                name: v.name.clone(),
                kind: "vip".into(),
                group: String::new(),
                placement: "active".into(),
                on_fail: String::new(),
                state: if v.held_here { "running" } else { "stopped" }.into(),
                since_unix_ms: self.started_unix_ms,
                pid: None,
                restarts_in_window: 0,
                max_restarts: 0,
                last_result: None,
                last_check_unix_ms: None,
                explanation: format!(
                    "{} on {}: follows the active head (held by {holder}); `haoscar switchover` moves it",
                    v.address, v.interface
                ),
                record: None,
            })
        };
        // In configuration order.
        let resources = cur
            .config
            .resources
            .iter()
            .filter_map(|r| match r.kind {
                config::ResourceKind::Vip(_) => vip_status(&r.name),
                _ => view.get(&r.name).cloned(),
            })
            .collect();
        Some(api::ResourceList {
            node: self.node.clone(),
            active: fo_status.as_ref().and_then(|f| f.active.clone()),
            config_version: cur.version,
            config_current: cur.problem.is_none(),
            config_problem: cur.problem.clone(),
            resources,
        })
    }

    fn action(&self, action: api::Action) -> ActionFuture {
        let this = self.me();
        let fo = self.failover.get().cloned();
        let node = self.node.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let Some(fo) = fo else {
                return Err((
                    409,
                    format!("{node} is a compute node: run this on a head or a witness"),
                ));
            };
            let message = match action {
                api::Action::Resource(req) => return this.resource_action(&fo, req).await,
                api::Action::ApplyConfig(req) => return this.apply_config(&fo, req).await,
                api::Action::Silence(req) => return this.silence(&fo, req).await,
                api::Action::SyncWait(req) => {
                    let Some(rep) = this.replication.get().cloned() else {
                        return Err((409, format!("{node} is not a head")));
                    };
                    let timeout = Duration::from_millis(req.timeout_ms.clamp(1, 3_600_000));
                    let r = rep.clone();
                    rep.on_runtime(async move { r.wait(timeout).await }).await?
                }
                api::Action::SyncAccept(req) => {
                    let Some(rep) = this.replication.get().cloned() else {
                        return Err((409, format!("{node} is not a head")));
                    };
                    rep.accept_loss(&req.set, &req.by).await?
                }
                api::Action::SyncResolve(req) => {
                    let Some(rep) = this.replication.get().cloned() else {
                        return Err((409, format!("{node} is not a head")));
                    };
                    let m = rep.resolve(&req.set, &req.keep, &req.by).await?;
                    this.record(
                        "sync_resolve",
                        Some(&req.set),
                        format!("{m} (by {})", req.by),
                    );
                    m
                }
                api::Action::Switchover(req) => {
                    if let Some(t) = &req.to {
                        match config.node(t).map(|n| n.role) {
                            Some(Role::Head) => {}
                            Some(r) => {
                                return Err((
                                    400,
                                    format!("{t} is a {r}: only heads can be active"),
                                ))
                            }
                            None => {
                                return Err((
                                    400,
                                    format!("no node named {t:?} in the configuration"),
                                ))
                            }
                        }
                    }
                    fo.switchover(req.to, &node).await?
                }
                api::Action::Standby(req) => {
                    match config.node(&req.node).map(|n| n.role) {
                        Some(_) => {}
                        None => {
                            return Err((
                                400,
                                format!("no node named {:?} in the configuration", req.node),
                            ))
                        }
                    }
                    fo.standby(&req.node, req.on).await?
                }
            };
            Ok(ActionReply { message })
        })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.current().config).unwrap_or(serde_json::Value::Null)
    }

    fn metrics(&self) -> String {
        let c = self.counters();
        let snap = self.heartbeat.snapshot();
        let mut m = Metrics::default();
        m.family(
            "haoscar_heartbeats_sent_total",
            "counter",
            "Heartbeat packets sent.",
        );
        m.sample("haoscar_heartbeats_sent_total", &[], c.sent as f64);
        m.family(
            "haoscar_heartbeats_received_total",
            "counter",
            "Valid heartbeat packets received.",
        );
        m.sample(
            "haoscar_heartbeats_received_total",
            &[],
            c.received_ok as f64,
        );
        m.family(
            "haoscar_heartbeats_dropped_total",
            "counter",
            "Packets dropped, by reason; never acted upon.",
        );
        for (reason, v) in [
            ("malformed", c.dropped_malformed),
            ("bad_mac", c.dropped_bad_mac),
            ("wrong_cluster", c.dropped_wrong_cluster),
            ("wrong_destination", c.dropped_wrong_destination),
            ("unknown_peer", c.dropped_unknown_peer),
            ("wrong_address", c.dropped_wrong_address),
            ("replay", c.dropped_replay),
            ("stale_boot", c.dropped_stale_boot),
            ("out_of_order", c.out_of_order),
        ] {
            m.sample(
                "haoscar_heartbeats_dropped_total",
                &[("reason", reason)],
                v as f64,
            );
        }
        m.family(
            "haoscar_heartbeat_send_errors_total",
            "counter",
            "Heartbeats the kernel refused to send.",
        );
        m.sample(
            "haoscar_heartbeat_send_errors_total",
            &[],
            c.send_errors as f64,
        );
        m.family(
            "haoscar_peer_up",
            "gauge",
            "Whether a peer is up (1) on at least one channel.",
        );
        for p in &snap.peers {
            let up = f64::from(u8::from(p.state == PeerState::Up));
            m.sample("haoscar_peer_up", &[("peer", &p.name)], up);
        }
        m.family(
            "haoscar_channel_up",
            "gauge",
            "Whether a channel to a peer is up (1).",
        );
        for p in &snap.peers {
            for ch in &p.channels {
                let up = f64::from(u8::from(ch.state == LinkState::Up));
                m.sample(
                    "haoscar_channel_up",
                    &[("peer", &p.name), ("channel", &ch.name)],
                    up,
                );
            }
        }
        m.family(
            "haoscar_channel_rtt_seconds",
            "gauge",
            "Smoothed heartbeat round-trip time.",
        );
        for p in &snap.peers {
            for ch in &p.channels {
                if let Some(rtt) = ch.srtt_ms {
                    let labels = [("peer", p.name.as_str()), ("channel", ch.name.as_str())];
                    m.sample("haoscar_channel_rtt_seconds", &labels, rtt / 1000.0);
                }
            }
        }
        m.0
    }
}

/// Prometheus text exposition, written by hand (a few lines of format).
#[derive(Default)]
struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

async fn agent_main(
    config: Config,
    node: String,
    key: ClusterKey,
    config_path: PathBuf,
    repl_rt: tokio::runtime::Handle,
) -> Result<()> {
    let me = config
        .node(&node)
        .cloned()
        .context("local node vanished from the configuration")?;
    for dir in [&config.paths.state_dir, &config.paths.log_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let now = SystemTime::now();
    // Greater than every earlier boot of this node, whatever the clock did.
    let boot =
        haoscar_net::boot::next_boot_id(&config.paths.state_dir, &node).with_context(|| {
            format!(
                "cannot record the boot id in {}",
                config.paths.state_dir.display()
            )
        })?;
    let digest = config.digest();
    let channels: Vec<LocalChannel> = me
        .address
        .iter()
        .filter_map(|(ch, ip)| {
            Some(LocalChannel {
                name: ch.clone(),
                bind: SocketAddr::new(*ip, config.channel(ch)?.port),
            })
        })
        .collect();
    let t = config.cluster.timing;
    let key_for_consensus = key.clone();
    let key_for_replication = key.clone();
    let hb = heartbeat::spawn(HeartbeatConfig {
        cluster: config.cluster.name.clone(),
        local: node.clone(),
        key,
        boot,
        interval: t.heartbeat_interval,
        dead_after: t.dead_after,
        config_digest: digest,
        role: me.role.as_str().to_string(),
        channels: channels.clone(),
        peers: heartbeat_peers(&config, &node),
    })
    .await
    .context("cannot start the heartbeat service")?;
    let mut membership_events = hb.subscribe();
    let agent = Arc::new(Agent {
        channels: channels
            .iter()
            .map(|c| api::LocalChannel {
                name: c.name.clone(),
                bind: c.bind.to_string(),
            })
            .collect(),
        config: config.clone(),
        node: node.clone(),
        role: me.role,
        boot,
        started: tokio::time::Instant::now(),
        started_unix_ms: unix_ms(now),
        heartbeat: hb,
        events: Mutex::new(EventLog {
            next_id: 0,
            items: VecDeque::new(),
        }),
        failover: OnceLock::new(),
        replicate: OnceLock::new(),
        services: OnceLock::new(),
        resource_view: Arc::default(),
        current: Mutex::new(Current {
            config: config.clone(),
            digest,
            rdigest: config.resources_digest(),
            version: 0,
            problem: None,
        }),
        config_path,
        this: OnceLock::new(),
        monitoring: OnceLock::new(),
        replication: OnceLock::new(),
        sync_gates: OnceLock::new(),
    });
    let _ = agent.this.set(Arc::downgrade(&agent));
    // Heads and witnesses: the consensus node, and on heads the active role.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut side_tasks = Vec::new();
    let mut head_task = None;
    if me.role.votes() {
        let fo = Arc::new(
            Failover::start(&config, &node, key_for_consensus, boot)
                .await
                .context("cannot start failover")?,
        );
        let _ = agent.failover.set(fo.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
        let _ = agent.replicate.set(tx);
        let c = fo.consensus.clone();
        side_tasks.push(tokio::spawn(async move {
            // In order; each retried for a few seconds (a hand-over or an
            // election in progress), then kept local only.
            while let Some(event) = rx.recv().await {
                let cmd = haoscar_consensus::Command::RecordEvent { event };
                let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    match tokio::time::timeout(Duration::from_secs(2), c.propose(cmd.clone())).await
                    {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) if tokio::time::Instant::now() >= give_up => {
                            tracing::debug!(error = %e, "event kept local only");
                            break;
                        }
                        Err(_) => {
                            // Appended but not committed in time (no quorum):
                            // proposing it again would only pile up entries.
                            tracing::debug!("event not committed in time (no quorum)");
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }));
        if me.role == Role::Head {
            let running = agent.current().config;
            let a = agent.clone();
            let rec = agent.clone();
            let _ = agent
                .sync_gates
                .set(crate::replication::SyncGates::new(&config));
            let services = Services::start(ServiceCtx {
                node: node.clone(),
                config: running,
                failover: fo.clone(),
                membership: Arc::new({
                    let a = agent.clone();
                    move || a.heartbeat.snapshot()
                }),
                record: Arc::new({
                    let a = agent.clone();
                    move |k: &str, s: Option<&str>, m: String| a.record(k, s, m)
                }),
                view: agent.resource_view.clone(),
                sync_gates: agent.sync_gates.get().cloned(),
            });
            let _ = agent
                .services
                .set(Arc::new(tokio::sync::Mutex::new(services)));
            let ctx = HeadCtx {
                config: config.clone(),
                config_path: agent.config_path.clone(),
                node: node.clone(),
                failover: fo,
                membership: Arc::new(move || a.heartbeat.snapshot()),
                record: Arc::new(move |k, s, m| rec.record(k, s, m)),
            };
            let rx = stop_rx.clone();
            head_task = Some(tokio::spawn(async move {
                if let Err(e) = failover::head_loop(ctx, rx).await {
                    tracing::error!(error = %format!("{e:#}"), "the active-role loop stopped");
                }
            }));
        }
        // Follow the cluster's applied configuration (after the services
        // exist, so that a newer version found at start is applied to them).
        {
            let a = agent.clone();
            let fo = agent.failover.get().cloned().context("failover not set")?;
            let mut applied = fo.consensus.raft().metrics();
            let mut last = applied.borrow().last_applied.map(|l| l.index);
            let mut stop = stop_rx.clone();
            side_tasks.push(tokio::spawn(async move {
                loop {
                    a.follow_config(&fo).await;
                    tokio::select! {
                        more = crate::services::next_applied(&mut applied, &mut last) => if !more { break },
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
    }
    // Health monitoring: local checks everywhere, the schedule on heads.
    {
        let mon = crate::monitoring::Monitoring::new(
            config.clone(),
            node.clone(),
            agent.failover.get().cloned(),
        );
        let _ = agent.monitoring.set(mon.clone());
        let recorder: crate::monitoring::Recorder = {
            let a = agent.clone();
            Arc::new(move |k: &str, s: Option<&str>, m: String| a.record(k, s, m))
        };
        let sender: crate::monitoring::ReportSender = {
            let a = agent.clone();
            Arc::new(move |to: String, body: Vec<u8>| {
                let a = a.clone();
                Box::pin(async move {
                    a.heartbeat.send_report(&to, body).await;
                })
            })
        };
        side_tasks.push(tokio::spawn(crate::monitoring::local_loop(
            mon.clone(),
            sender,
            recorder.clone(),
            stop_rx.clone(),
        )));
        if me.role == Role::Head {
            if let (Some(fo), Some(gates)) = (
                agent.failover.get().cloned(),
                agent.sync_gates.get().cloned(),
            ) {
                let membership: Arc<dyn Fn() -> heartbeat::HeartbeatSnapshot + Send + Sync> = {
                    let a = agent.clone();
                    Arc::new(move || a.heartbeat.snapshot())
                };
                let alerter: crate::replication::Alerter = {
                    let (m, r) = (mon.clone(), recorder.clone());
                    Arc::new(move |specs, set: &str, summary: String| {
                        m.event_alert(specs, "replication", set, summary, r.clone())
                    })
                };
                let rep = crate::replication::Replication::new(
                    config.clone(),
                    node.clone(),
                    key_for_replication,
                    fo,
                    membership,
                    recorder.clone(),
                    alerter,
                    gates,
                    repl_rt.clone(),
                );
                let _ = agent.replication.set(rep.clone());
                side_tasks.push(repl_rt.spawn(crate::replication::listen_loop(rep.clone())));
                side_tasks.push(repl_rt.spawn(crate::replication::role_loop(rep, stop_rx.clone())));
            }
            side_tasks.push(tokio::spawn(crate::monitoring::report_loop(
                mon.clone(),
                agent.heartbeat.subscribe_reports(),
            )));
            side_tasks.push(tokio::spawn(crate::monitoring::active_loop(
                mon,
                recorder,
                stop_rx.clone(),
            )));
        }
    }
    let socket = config.socket_path(&node);
    let server = Server::start(agent.clone(), config.api.listen, Some(&socket))
        .await
        .context("cannot start the control API")?;
    agent.record(
        "agent_started",
        None,
        format!(
            "agent {} started on {node} ({}), boot {boot}, config {digest:016x}, API {} and {}",
            env!("CARGO_PKG_VERSION"),
            me.role,
            socket.display(),
            server
                .tcp_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "no TCP".into())
        ),
    );
    tracing::info!(node = %node, role = %me.role, boot = %boot, socket = %socket.display(), "agent started");

    let events_agent = agent.clone();
    let events_task = tokio::spawn(async move {
        loop {
            match membership_events.recv().await {
                Ok(ev) => events_agent.on_membership(&ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "event history fell behind; some membership events were not recorded"
                    );
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });

    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let sig = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = sig, "shutting down");
    agent.record(
        "agent_stopping",
        None,
        format!("agent on {node} stopping ({sig})"),
    );
    // The hand-over and the consensus get 5 s; the services, their stop
    // timeouts: exiting before they are stopped would leave them running
    // while another head starts them.
    let budget = Duration::from_secs(5)
        + match agent.services.get() {
            Some(s) => s.lock().await.stop_budget(),
            None => Duration::ZERO,
        };
    let shutdown = async {
        // The active role first: VIPs released (or handed over), guard closed.
        let _ = stop_tx.send(true);
        if let Some(h) = head_task {
            let _ = h.await;
        }
        // Then the services (reverse order within each group).
        if let Some(s) = agent.services.get() {
            s.lock().await.shutdown().await;
        }
        for t in side_tasks {
            t.abort();
        }
        server.stop().await;
        events_task.abort();
        let _ = events_task.await;
        if let Some(fo) = agent.failover.get() {
            fo.shutdown().await;
        }
        // The API tasks and the event task are gone: this is the last reference.
        match Arc::try_unwrap(agent) {
            Ok(agent) => agent.heartbeat.shutdown().await,
            Err(_) => {
                tracing::debug!("agent state still shared at shutdown; heartbeats stop on exit")
            }
        }
    };
    if tokio::time::timeout(budget, shutdown).await.is_err() {
        tracing::warn!(
            budget_ms = budget.as_millis() as u64,
            "shutdown took longer than its budget; exiting anyway"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
