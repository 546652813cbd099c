//! First pass over a configuration file: parses the TOML into a spanned tree
//! and decodes it into raw, still-unvalidated sections, recording every
//! syntax error, unknown key, wrong type and malformed value with its exact
//! location instead of stopping at the first one.

use super::timing::TIMING_FIELDS;
use super::{Role, Timing, TimingPreset};
use crate::diagnostic::{Diagnostic, LineIndex, Severity};
use crate::duration::parse_duration;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A decoded value with the byte range it came from.
#[derive(Debug, Clone)]
pub(super) struct Sp<T> {
    pub v: T,
    pub span: Range<usize>,
}

/// Decoding context: the source text and the diagnostics found so far.
pub(crate) struct Cx<'a> {
    text: &'a str,
    path: &'a Path,
    index: LineIndex<'a>,
    diags: Vec<Diagnostic>,
    /// Field -> where it is, for checks made after loading.
    locs: std::collections::BTreeMap<String, Range<usize>>,
}

#[derive(Debug, Default)]
pub(super) struct RawCluster {
    pub span: Range<usize>,
    pub name: Option<Sp<String>>,
    pub secret_file: Option<Sp<String>>,
    pub auto_failback: Option<bool>,
    pub failback_after: Option<Sp<Duration>>,
    pub consensus_port: Option<Sp<u16>>,
    pub timing: Timing,
    pub timing_span: Range<usize>,
    /// Where each explicitly set timing value is, to point errors at it.
    pub timing_fields: Vec<(&'static str, Range<usize>)>,
}

#[derive(Debug, Default)]
pub(super) struct RawApi {
    pub listen: Option<Sp<Option<SocketAddr>>>,
    pub socket_dir: Option<Sp<String>>,
}

#[derive(Debug, Default)]
pub(super) struct RawPaths {
    pub state_dir: Option<Sp<String>>,
    pub log_dir: Option<Sp<String>>,
}

#[derive(Debug)]
pub(super) struct RawChannel {
    pub span: Range<usize>,
    pub name: Option<Sp<String>>,
    pub port: Option<Sp<u16>>,
}

#[derive(Debug)]
pub(super) struct RawNode {
    pub span: Range<usize>,
    pub name: Option<Sp<String>>,
    pub role: Option<Sp<Role>>,
    /// The `role` key is present (even if its value was invalid).
    pub has_role: bool,
    pub priority: Option<Sp<u32>>,
    /// (channel name, address) in file order.
    pub address: Vec<(Sp<String>, Sp<IpAddr>)>,
    pub address_span: Option<Range<usize>>,
}

#[derive(Debug)]
pub(super) struct RawResource {
    pub span: Range<usize>,
    pub name: Option<Sp<String>>,
    pub kind: Option<Sp<String>>,
    pub vip: RawVip,
    pub svc: RawService,
    pub exec: RawExec,
    pub ocf: RawOcf,
    pub script: Option<Sp<String>>,
    pub unit: Option<Sp<String>>,
}

/// Keys common to the service types (exec, ocf, lsb, systemd).
#[derive(Debug, Default)]
pub(super) struct RawService {
    pub group: Option<Sp<String>>,
    pub placement: Option<Sp<String>>,
    pub on_fail: Option<Sp<String>>,
    pub max_restarts: Option<Sp<u32>>,
    /// (key, value) of the duration keys that were set.
    pub durations: Vec<(&'static str, Sp<Duration>)>,
}

#[derive(Debug, Default)]
pub(super) struct RawExec {
    pub command: Option<Sp<Vec<String>>>,
    pub user: Option<Sp<String>>,
    pub workdir: Option<Sp<String>>,
    pub check: Option<Sp<super::ServiceCheck>>,
    pub env: Vec<(Sp<String>, Sp<String>)>,
}

#[derive(Debug, Default)]
pub(super) struct RawOcf {
    pub agent: Option<Sp<String>>,
    pub ocf_root: Option<Sp<String>>,
    pub check_level: Option<Sp<u32>>,
    pub params: Vec<(Sp<String>, Sp<String>)>,
}

#[derive(Debug, Default)]
pub(super) struct RawVip {
    pub address: Option<Sp<String>>,
    pub interface: Option<Sp<String>>,
    pub announce_count: Option<Sp<u32>>,
    pub announce_interval: Option<Sp<Duration>>,
}

#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub doc_span: Range<usize>,
    pub cluster: Option<RawCluster>,
    pub api: RawApi,
    pub paths: RawPaths,
    pub channels: Vec<RawChannel>,
    pub nodes: Vec<RawNode>,
    pub resources: Vec<RawResource>,
    pub monitoring: Option<super::watch::RawMonitoring>,
    pub watches: Vec<super::watch::RawWatch>,
    pub replicates: Vec<super::replicate::RawReplicate>,
}

const TOP_KEYS: &[&str] = &[
    "cluster",
    "api",
    "paths",
    "channel",
    "node",
    "resource",
    "monitoring",
    "watch",
    "replicate",
];
const CLUSTER_KEYS: &[&str] = &[
    "name",
    "secret_file",
    "timing",
    "auto_failback",
    "failback_after",
    "consensus_port",
];
const API_KEYS: &[&str] = &["listen", "socket_dir"];
const PATHS_KEYS: &[&str] = &["state_dir", "log_dir"];
const CHANNEL_KEYS: &[&str] = &["name", "port"];
const NODE_KEYS: &[&str] = &["name", "role", "priority", "address"];
const RESOURCE_KEYS: &[&str] = &["name", "type"];
/// Duration keys of the service types.
pub(super) const SERVICE_DURATIONS: &[&str] = &[
    "restart_window",
    "failure_timeout",
    "restart_backoff",
    "monitor_interval",
    "monitor_timeout",
    "start_timeout",
    "stop_timeout",
];
const SERVICE_KEYS: &[&str] = &["group", "placement", "on_fail", "max_restarts"];
const EXEC_KEYS: &[&str] = &["command", "user", "workdir", "check", "env"];
const OCF_KEYS: &[&str] = &["agent", "ocf_root", "check_level", "params"];
const LSB_KEYS: &[&str] = &["script"];
const SYSTEMD_KEYS: &[&str] = &["unit"];
const VIP_KEYS: &[&str] = &[
    "address",
    "interface",
    "announce_count",
    "announce_interval",
];

pub(super) type Table<'i> = DeTable<'i>;

impl<'a> Cx<'a> {
    pub fn new(text: &'a str, path: &'a Path) -> Self {
        Cx {
            text,
            path,
            index: LineIndex::new(text),
            diags: Vec::new(),
            locs: Default::default(),
        }
    }

    /// Line and column of the fields recorded with [`Cx::locate`].
    pub fn locations(&self) -> std::collections::BTreeMap<String, (usize, usize)> {
        self.locs
            .iter()
            .map(|(k, span)| (k.clone(), self.index.position(span.start)))
            .collect()
    }

    pub(super) fn locate(&mut self, field: String, span: &Range<usize>) {
        self.locs.insert(field, span.clone());
    }

    pub fn finish(mut self) -> Vec<Diagnostic> {
        // The TOML parser's recovery can report one problem twice.
        let mut seen = std::collections::HashSet::new();
        self.diags
            .retain(|d| seen.insert((d.line, d.column, d.field.clone(), d.message.clone())));
        self.diags
    }

    /// Whether an error was already reported for `field` (so that a
    /// missing or dependent value is not reported a second time).
    pub fn reported(&self, field: &str) -> bool {
        self.diags
            .iter()
            .any(|d| d.severity == Severity::Error && d.field == field)
    }

    /// Whether an error was reported for a field matching `pred`.
    pub fn reported_where(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.diags
            .iter()
            .any(|d| d.severity == Severity::Error && pred(&d.field))
    }

    fn push(&mut self, severity: Severity, span: &Range<usize>, field: &str, message: String) {
        let (line, column) = self.index.position(span.start);
        self.diags.push(Diagnostic {
            severity,
            file: self.path.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message,
        });
    }

    pub fn error(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, span, field, message.into());
    }

    pub fn warn(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, span, field, message.into());
    }

    /// Parses and decodes the whole document. `None` on syntax errors.
    pub fn decode_document(&mut self) -> Option<RawConfig> {
        let (doc, errors) = DeTable::parse_recoverable(self.text);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                let msg = e.message().trim().to_string();
                self.error(&span, "", format!("TOML syntax: {msg}"));
            }
            return None;
        }
        let doc_span = doc.span();
        let doc = doc.into_inner();
        let mut raw = RawConfig {
            doc_span,
            ..RawConfig::default()
        };
        self.check_keys(&doc, "", TOP_KEYS);
        if let Some((t, span)) = self.table(&doc, "", "cluster") {
            raw.cluster = Some(self.cluster(t, span));
        }
        if let Some((t, _)) = self.table(&doc, "", "api") {
            raw.api = self.api(t);
        }
        if let Some((t, _)) = self.table(&doc, "", "paths") {
            raw.paths = RawPaths {
                state_dir: self.string(t, "paths", "state_dir"),
                log_dir: self.string(t, "paths", "log_dir"),
            };
            self.check_keys(t, "paths", PATHS_KEYS);
        }
        for (i, (t, span)) in self.tables(&doc, "channel").into_iter().enumerate() {
            let path = format!("channel[{i}]");
            self.check_keys(t, &path, CHANNEL_KEYS);
            raw.channels.push(RawChannel {
                span,
                name: self.string(t, &path, "name"),
                port: self
                    .uint(t, &path, "port", 1, u64::from(u16::MAX))
                    .map(|s| Sp {
                        v: s.v as u16,
                        span: s.span,
                    }),
            });
        }
        for (i, (t, span)) in self.tables(&doc, "node").into_iter().enumerate() {
            let node = self.node(t, span, &format!("node[{i}]"));
            raw.nodes.push(node);
        }
        for (i, (t, span)) in self.tables(&doc, "resource").into_iter().enumerate() {
            let res = self.resource(t, span, &format!("resource[{i}]"));
            raw.resources.push(res);
        }
        if let Some((t, _)) = self.table(&doc, "", "monitoring") {
            raw.monitoring = Some(self.monitoring(t));
        }
        for (i, (t, span)) in self.tables(&doc, "watch").into_iter().enumerate() {
            let w = self.watch(t, span, &format!("watch[{i}]"));
            raw.watches.push(w);
        }
        for (i, (t, span)) in self.tables(&doc, "replicate").into_iter().enumerate() {
            let r = self.replicate(t, span, &format!("replicate[{i}]"));
            raw.replicates.push(r);
        }
        Some(raw)
    }

    fn cluster(&mut self, t: &Table<'_>, span: Range<usize>) -> RawCluster {
        let p = "cluster";
        self.check_keys(t, p, CLUSTER_KEYS);
        let mut c = RawCluster {
            span: span.clone(),
            name: self.string(t, p, "name"),
            secret_file: self.string(t, p, "secret_file"),
            auto_failback: self.boolean(t, p, "auto_failback"),
            failback_after: self.duration(t, p, "failback_after"),
            consensus_port: self
                .uint(t, p, "consensus_port", 1, u64::from(u16::MAX))
                .map(|s| Sp {
                    v: s.v as u16,
                    span: s.span,
                }),
            timing: Timing::default(),
            timing_span: span,
            timing_fields: Vec::new(),
        };
        if let Some((key, value)) = t.get_key_value("timing") {
            c.timing_span = key.span();
            let field = "cluster.timing";
            match value.get_ref() {
                DeValue::String(s) => match TimingPreset::from_name(s) {
                    Some(p) => c.timing = p.timing(),
                    None => self.error(
                        &value.span(),
                        field,
                        format!(
                            "unknown timing preset {s:?} (expected one of: {})",
                            TimingPreset::NAMES.join(", ")
                        ),
                    ),
                },
                DeValue::Table(tt) => {
                    let mut allowed = vec!["preset"];
                    allowed.extend_from_slice(TIMING_FIELDS);
                    self.check_keys(tt, field, &allowed);
                    if let Some(p) = self.string(tt, field, "preset") {
                        match TimingPreset::from_name(&p.v) {
                            Some(preset) => c.timing = preset.timing(),
                            None => self.error(
                                &p.span,
                                "cluster.timing.preset",
                                format!(
                                    "unknown timing preset {:?} (expected one of: {})",
                                    p.v,
                                    TimingPreset::NAMES.join(", ")
                                ),
                            ),
                        }
                    }
                    for f in TIMING_FIELDS {
                        if let Some(d) = self.duration(tt, field, f) {
                            c.timing.set(f, d.v);
                            c.timing_fields.push((f, d.span));
                        }
                    }
                }
                other => self.error(
                    &value.span(),
                    field,
                    format!(
                        "expected a preset name (string) or a table, found {}",
                        kind(other)
                    ),
                ),
            }
        }
        c
    }

    fn api(&mut self, t: &Table<'_>) -> RawApi {
        let p = "api";
        self.check_keys(t, p, API_KEYS);
        let listen = self.string(t, p, "listen").and_then(|s| {
            if s.v == "off" {
                return Some(Sp {
                    v: None,
                    span: s.span,
                });
            }
            match s.v.parse::<SocketAddr>() {
                Ok(a) => Some(Sp {
                    v: Some(a),
                    span: s.span,
                }),
                Err(_) => {
                    self.error(
                        &s.span,
                        "api.listen",
                        format!(
                            "{:?} is not an address:port (e.g. \"127.0.0.1:7950\") nor \"off\"",
                            s.v
                        ),
                    );
                    None
                }
            }
        });
        RawApi {
            listen,
            socket_dir: self.string(t, p, "socket_dir"),
        }
    }

    fn node(&mut self, t: &Table<'_>, span: Range<usize>, path: &str) -> RawNode {
        self.check_keys(t, path, NODE_KEYS);
        let role = self.string(t, path, "role").and_then(|s| {
            let role = match s.v.as_str() {
                "head" => Role::Head,
                "witness" => Role::Witness,
                "compute" => Role::Compute,
                other => {
                    self.error(
                        &s.span,
                        &format!("{path}.role"),
                        format!("unknown role {other:?} (expected head, witness or compute)"),
                    );
                    return None;
                }
            };
            Some(Sp {
                v: role,
                span: s.span,
            })
        });
        let mut node = RawNode {
            span,
            name: self.string(t, path, "name"),
            role,
            has_role: t.contains_key("role"),
            priority: self
                .uint(t, path, "priority", 0, u64::from(u32::MAX))
                .map(|s| Sp {
                    v: s.v as u32,
                    span: s.span,
                }),
            address: Vec::new(),
            address_span: None,
        };
        if let Some((at, aspan)) = self.table(t, path, "address") {
            node.address_span = Some(aspan);
            for (k, v) in at.iter() {
                let field = format!("{path}.address.{}", k.get_ref());
                let key = Sp {
                    v: k.get_ref().to_string(),
                    span: k.span(),
                };
                match v.get_ref() {
                    DeValue::String(s) => match s.parse::<IpAddr>() {
                        Ok(ip) => node.address.push((
                            key,
                            Sp {
                                v: ip,
                                span: v.span(),
                            },
                        )),
                        Err(_) => {
                            self.error(&v.span(), &field, format!("{s:?} is not an IP address"))
                        }
                    },
                    other => self.error(
                        &v.span(),
                        &field,
                        format!("expected an IP address string, found {}", kind(other)),
                    ),
                }
            }
        }
        node
    }

    fn resource(&mut self, t: &Table<'_>, span: Range<usize>, path: &str) -> RawResource {
        let kind = self.string(t, path, "type");
        self.locate(path.to_string(), &span);
        let mut r = RawResource {
            span: span.clone(),
            name: self.string(t, path, "name"),
            kind: None,
            vip: RawVip::default(),
            svc: RawService::default(),
            exec: RawExec::default(),
            ocf: RawOcf::default(),
            script: None,
            unit: None,
        };
        let mut allowed: Vec<&str> = RESOURCE_KEYS.to_vec();
        let type_name = kind.as_ref().map(|k| k.v.clone());
        match type_name.as_deref() {
            Some("vip") => {
                allowed.extend_from_slice(VIP_KEYS);
                r.vip = RawVip {
                    address: self.string(t, path, "address"),
                    interface: self.string(t, path, "interface"),
                    announce_count: self.uint(t, path, "announce_count", 0, 100).map(|s| Sp {
                        v: s.v as u32,
                        span: s.span,
                    }),
                    announce_interval: self.duration(t, path, "announce_interval"),
                };
            }
            Some(service @ ("exec" | "ocf" | "lsb" | "systemd")) => {
                allowed.extend_from_slice(SERVICE_KEYS);
                allowed.extend_from_slice(SERVICE_DURATIONS);
                r.svc = self.service(t, path);
                match service {
                    "exec" => {
                        allowed.extend_from_slice(EXEC_KEYS);
                        r.exec = RawExec {
                            command: self.string_array(t, path, "command"),
                            user: self.string(t, path, "user"),
                            workdir: self.string(t, path, "workdir"),
                            check: self.check(t, path),
                            env: self.string_map(t, path, "env"),
                        };
                    }
                    "ocf" => {
                        allowed.extend_from_slice(OCF_KEYS);
                        if let Some(a) = t.get("agent") {
                            self.locate(format!("{path}.agent"), &a.span());
                        }
                        if let Some(p) = t.get("params") {
                            self.locate(format!("{path}.params"), &p.span());
                        }
                        r.ocf = RawOcf {
                            agent: self.string(t, path, "agent"),
                            ocf_root: self.string(t, path, "ocf_root"),
                            check_level: self.uint(t, path, "check_level", 0, 1000).map(|s| Sp {
                                v: s.v as u32,
                                span: s.span,
                            }),
                            params: self.string_map(t, path, "params"),
                        };
                        for (k, _) in &r.ocf.params {
                            self.locate(format!("{path}.params.{}", k.v), &k.span);
                        }
                    }
                    "lsb" => {
                        allowed.extend_from_slice(LSB_KEYS);
                        r.script = self.string(t, path, "script");
                    }
                    _ => {
                        allowed.extend_from_slice(SYSTEMD_KEYS);
                        r.unit = self.string(t, path, "unit");
                    }
                }
            }
            Some(other) => {
                let span = kind
                    .as_ref()
                    .map(|k| k.span.clone())
                    .unwrap_or(span.clone());
                self.error(
                    &span,
                    &format!("{path}.type"),
                    format!(
                        "unknown resource type {other:?} (expected one of: {})",
                        super::RESOURCE_TYPES.join(", ")
                    ),
                );
                r.kind = kind;
                return r;
            }
            None => {}
        }
        self.check_keys(t, path, &allowed);
        r.kind = kind;
        r
    }

    fn service(&mut self, t: &Table<'_>, path: &str) -> RawService {
        let mut svc = RawService {
            group: self.string(t, path, "group"),
            placement: self.string(t, path, "placement"),
            on_fail: self.string(t, path, "on_fail"),
            max_restarts: self.uint(t, path, "max_restarts", 0, 1000).map(|s| Sp {
                v: s.v as u32,
                span: s.span,
            }),
            durations: Vec::new(),
        };
        for key in SERVICE_DURATIONS {
            if let Some(d) = self.duration(t, path, key) {
                svc.durations.push((key, d));
            }
        }
        svc
    }

    /// `check = { tcp = "..." }`, `{ http = "..." }` or `{ command = [...] }`.
    fn check(&mut self, t: &Table<'_>, path: &str) -> Option<Sp<super::ServiceCheck>> {
        use super::ServiceCheck;
        let (ct, span) = self.table(t, path, "check")?;
        let field = format!("{path}.check");
        self.check_keys(ct, &field, &["tcp", "http", "command"]);
        let mut found: Vec<ServiceCheck> = Vec::new();
        if let Some(a) = self.string(ct, &field, "tcp") {
            match a.v.parse::<SocketAddr>() {
                Ok(addr) => found.push(ServiceCheck::Tcp(addr)),
                Err(_) => self.error(
                    &a.span,
                    &format!("{field}.tcp"),
                    format!("{:?} is not an address:port (e.g. \"127.0.0.1:80\")", a.v),
                ),
            }
        }
        if let Some(u) = self.string(ct, &field, "http") {
            if u.v.starts_with("http://") && u.v.len() > "http://".len() {
                found.push(ServiceCheck::Http(u.v));
            } else {
                self.error(
                    &u.span,
                    &format!("{field}.http"),
                    format!(
                        "{:?} is not a plain http:// URL (e.g. \"http://127.0.0.1:8080/health\")",
                        u.v
                    ),
                );
            }
        }
        if let Some(c) = self.string_array(ct, &field, "command") {
            found.push(ServiceCheck::Command(c.v));
        }
        match found.len() {
            1 => found.pop().map(|v| Sp { v, span }),
            0 => {
                if !self.reported_where(|f| f.starts_with(&field)) {
                    self.error(&span, &field, "a check needs one of: tcp, http, command");
                }
                None
            }
            _ => {
                self.error(
                    &span,
                    &field,
                    "a check has exactly one of: tcp, http, command",
                );
                None
            }
        }
    }
    // ---- generic field readers -------------------------------------------------

    /// Reports keys of `t` that are not in `allowed`, suggesting close names.
    pub(super) fn check_keys(&mut self, t: &Table<'_>, path: &str, allowed: &[&str]) {
        for key in t.keys() {
            let name = key.get_ref();
            if !allowed.contains(&name.as_ref()) {
                let field = join(path, name);
                let hint = suggest(name, allowed)
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_else(|| format!("; known keys: {}", allowed.join(", ")));
                self.error(&key.span(), &field, format!("unknown key {name:?}{hint}"));
            }
        }
    }

    pub(super) fn get<'t, 'i>(
        &self,
        t: &'t Table<'i>,
        key: &str,
    ) -> Option<&'t Spanned<DeValue<'i>>> {
        t.get(key)
    }

    pub(super) fn table<'t, 'i>(
        &mut self,
        t: &'t Table<'i>,
        path: &str,
        key: &str,
    ) -> Option<(&'t Table<'i>, Range<usize>)> {
        let v = self.get(t, key)?;
        match v.get_ref() {
            DeValue::Table(inner) => Some((inner, v.span())),
            other => {
                let msg = format!("expected a table, found {}", kind(other));
                self.error(&v.span(), &join(path, key), msg);
                None
            }
        }
    }

    /// The entries of an array of tables (`[[key]]`).
    pub(super) fn tables<'t, 'i>(
        &mut self,
        t: &'t Table<'i>,
        key: &str,
    ) -> Vec<(&'t Table<'i>, Range<usize>)> {
        let Some(v) = self.get(t, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match v.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::Table(inner) => out.push((inner, item.span())),
                        other => {
                            let msg = format!("expected a table, found {}", kind(other));
                            self.error(&item.span(), &format!("{key}[{i}]"), msg);
                        }
                    }
                }
            }
            other => {
                let msg = format!(
                    "expected an array of tables ([[{key}]] sections), found {}",
                    kind(other)
                );
                self.error(&v.span(), key, msg);
            }
        }
        out
    }

    pub(super) fn string(&mut self, t: &Table<'_>, path: &str, key: &str) -> Option<Sp<String>> {
        let v = self.get(t, key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Sp {
                v: s.to_string(),
                span: v.span(),
            }),
            other => {
                let msg = format!("expected a string, found {}", kind(other));
                self.error(&v.span(), &join(path, key), msg);
                None
            }
        }
    }

    /// A non-empty array of strings.
    pub(super) fn string_array(
        &mut self,
        t: &Table<'_>,
        path: &str,
        key: &str,
    ) -> Option<Sp<Vec<String>>> {
        let v = self.get(t, key)?;
        let field = join(path, key);
        let DeValue::Array(items) = v.get_ref() else {
            let msg = format!(
                "expected an array of strings (e.g. [\"/usr/sbin/prog\", \"-f\"]), found {}",
                kind(v.get_ref())
            );
            self.error(&v.span(), &field, msg);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => {
                    ok = false;
                    let msg = format!("expected a string, found {}", kind(other));
                    self.error(&item.span(), &format!("{field}[{i}]"), msg);
                }
            }
        }
        if ok && out.is_empty() {
            self.error(&v.span(), &field, "must not be empty");
            return None;
        }
        ok.then_some(Sp {
            v: out,
            span: v.span(),
        })
    }

    /// A table of name -> text; integers, floats and booleans are taken as
    /// their text.
    pub(super) fn string_map(
        &mut self,
        t: &Table<'_>,
        path: &str,
        key: &str,
    ) -> Vec<(Sp<String>, Sp<String>)> {
        let Some((mt, _)) = self.table(t, path, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in mt.iter() {
            let field = format!("{}.{}", join(path, key), k.get_ref());
            let text = match v.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => i.as_str().to_string(),
                DeValue::Float(f) => f.as_str().to_string(),
                DeValue::Boolean(b) => b.to_string(),
                other => {
                    let msg = format!(
                        "expected a string, number or boolean, found {}",
                        kind(other)
                    );
                    self.error(&v.span(), &field, msg);
                    continue;
                }
            };
            out.push((
                Sp {
                    v: k.get_ref().to_string(),
                    span: k.span(),
                },
                Sp {
                    v: text,
                    span: v.span(),
                },
            ));
        }
        out
    }

    pub(super) fn boolean(&mut self, t: &Table<'_>, path: &str, key: &str) -> Option<bool> {
        let v = self.get(t, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                let msg = format!("expected true or false, found {}", kind(other));
                self.error(&v.span(), &join(path, key), msg);
                None
            }
        }
    }

    pub(super) fn uint(
        &mut self,
        t: &Table<'_>,
        path: &str,
        key: &str,
        min: u64,
        max: u64,
    ) -> Option<Sp<u64>> {
        let v = self.get(t, key)?;
        let field = join(path, key);
        match v.get_ref() {
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                let (neg, digits) = match digits.strip_prefix('-') {
                    Some(d) => (true, d.to_string()),
                    None => (false, digits.trim_start_matches('+').to_string()),
                };
                let digits = digits
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b")
                    .to_string();
                match u64::from_str_radix(&digits, i.radix()) {
                    Ok(n) if !neg && n >= min && n <= max => Some(Sp {
                        v: n,
                        span: v.span(),
                    }),
                    _ => {
                        self.error(
                            &v.span(),
                            &field,
                            format!(
                                "must be an integer from {min} to {max}, found {}",
                                i.as_str()
                            ),
                        );
                        None
                    }
                }
            }
            other => {
                let msg = format!("expected an integer, found {}", kind(other));
                self.error(&v.span(), &field, msg);
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        t: &Table<'_>,
        path: &str,
        key: &str,
    ) -> Option<Sp<Duration>> {
        let s = self.string(t, path, key)?;
        match parse_duration(&s.v) {
            Ok(d) => Some(Sp { v: d, span: s.span }),
            Err(e) => {
                self.error(&s.span, &join(path, key), e.to_string());
                None
            }
        }
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The allowed key closest to `name` if it is a plausible typo.
fn suggest<'k>(name: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("prority", NODE_KEYS), Some("priority"));
        assert_eq!(suggest("adress", NODE_KEYS), Some("address"));
        assert_eq!(suggest("zzzz", NODE_KEYS), None);
    }
}
