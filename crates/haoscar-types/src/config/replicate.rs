//! `[[replicate]]`: sets of directories the active head replicates to the
//! other heads (the model, its decoding with locations, its validation).

use super::decode::{join, Cx, Sp, Table};
use serde::Serialize;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

/// A replicated set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replicate {
    pub name: String,
    /// Absolute directories, the same on every head.
    pub paths: Vec<PathBuf>,
    /// Names left out (`*.tmp`, `cache/**`; see the configuration reference).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// A head taking over starts the services of `group` with its copy only
    /// if it is at most this far behind the previous source; otherwise it
    /// holds them until the old head hands its writes over or an operator
    /// accepts the loss.
    #[serde(with = "crate::duration::serde_text")]
    pub max_lag_on_failover: Duration,
    /// The service group that needs this set: it starts only once the set
    /// is ready on the active head (placed first in the group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Alerts sent on this set's critical events (split brain, services
    /// held at a failover), in the watch lists' `alert` syntax.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert: Vec<String>,
    #[serde(skip)]
    pub alerts: Vec<crate::watchspec::AlertSpec>,
    /// Extended attributes of files and directories are replicated too
    /// (POSIX ACLs, SELinux labels, file capabilities, `user.*`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub xattrs: bool,
}

/// Default of `max_lag_on_failover`.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct RawReplicate {
    path: String,
    span: Range<usize>,
    name: Option<Sp<String>>,
    paths: Option<Sp<Vec<String>>>,
    exclude: Option<Sp<Vec<String>>>,
    max_lag: Option<Sp<Duration>>,
    group: Option<Sp<String>>,
    alert: Option<Sp<Vec<String>>>,
    xattrs: Option<bool>,
    /// The `paths` key is present (even if its value was invalid).
    has_paths: bool,
}

const KEYS: &[&str] = &[
    "name",
    "paths",
    "exclude",
    "max_lag_on_failover",
    "group",
    "alert",
    "xattrs",
];

impl Cx<'_> {
    pub(super) fn replicate(
        &mut self,
        t: &Table<'_>,
        span: Range<usize>,
        path: &str,
    ) -> RawReplicate {
        self.check_keys(t, path, KEYS);
        RawReplicate {
            path: path.to_string(),
            span,
            name: self.string(t, path, "name"),
            paths: self.string_array(t, path, "paths"),
            exclude: self.string_array(t, path, "exclude"),
            max_lag: self.duration(t, path, "max_lag_on_failover"),
            group: self.string(t, path, "group"),
            alert: self.string_array(t, path, "alert"),
            xattrs: self.boolean(t, path, "xattrs"),
            has_paths: t.contains_key("paths"),
        }
    }
}

/// Checks every set and reports every problem (a set with one is left
/// out of the result; the configuration is refused anyway). Names and
/// directories are compared with every set's, valid or not.
pub(super) fn validate_replicates(
    cx: &mut Cx<'_>,
    raw: &[RawReplicate],
    resources: &[super::Resource],
) -> Vec<Replicate> {
    let mut out: Vec<Replicate> = Vec::new();
    // Every set name and directory seen so far, from valid sets or not.
    let mut names: Vec<&str> = Vec::new();
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for r in raw {
        let mut ok = true;
        let name = match &r.name {
            None => {
                cx.error(
                    &r.span,
                    &join(&r.path, "name"),
                    "missing required key \"name\"",
                );
                ok = false;
                None
            }
            Some(name) if !super::validate::is_simple_name(&name.v) => {
                cx.error(
                    &name.span,
                    &join(&r.path, "name"),
                    format!(
                        "{:?} is not a valid set name (lowercase letters, digits, '-' and '_')",
                        name.v
                    ),
                );
                ok = false;
                Some(name)
            }
            Some(name) => {
                if names.contains(&name.v.as_str()) {
                    cx.error(
                        &name.span,
                        &join(&r.path, "name"),
                        format!("replicated set {:?} is defined twice", name.v),
                    );
                    ok = false;
                }
                Some(name)
            }
        };
        if let Some(n) = name {
            names.push(&n.v);
        }
        let label = name.map_or_else(|| r.path.clone(), |n| n.v.clone());
        let field = join(&r.path, "paths");
        let mut paths = Vec::new();
        match &r.paths {
            // Present but not an array of strings, or empty: said already.
            None if r.has_paths => ok = false,
            None => {
                cx.error(&r.span, &field, "missing required key \"paths\"");
                ok = false;
            }
            Some(list) => {
                for p in &list.v {
                    let clean = p.trim_end_matches('/');
                    let bad = !p.starts_with('/')
                        || clean.is_empty()
                        || clean
                            .split('/')
                            .skip(1)
                            .any(|c| c.is_empty() || c == "." || c == "..");
                    if bad {
                        cx.error(
                            &list.span,
                            &field,
                            format!(
                                "{p:?} must be an absolute directory path without `.` or `..` (not /)"
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    let pb = PathBuf::from(clean);
                    // One directory in one set only, and never one inside
                    // another.
                    let overlap = dirs
                        .iter()
                        .find(|(_, q)| pb.starts_with(q) || q.starts_with(&pb));
                    if let Some((set, q)) = overlap {
                        cx.error(
                            &list.span,
                            &field,
                            format!("{p:?} overlaps {} of set {set:?}", q.display()),
                        );
                        ok = false;
                        continue;
                    }
                    dirs.push((label.clone(), pb.clone()));
                    paths.push(pb);
                }
            }
        }
        let group = r.group.as_ref().and_then(|g| {
            let members: Vec<&super::Resource> = resources
                .iter()
                .filter(|res| res.group() == Some(g.v.as_str()))
                .collect();
            let field = join(&r.path, "group");
            if members.is_empty() {
                let mut groups: Vec<&str> = resources.iter().filter_map(|res| res.group()).collect();
                groups.sort();
                groups.dedup();
                cx.error(
                    &g.span,
                    &field,
                    format!(
                        "no service resource is in group {:?} (groups: {})",
                        g.v,
                        if groups.is_empty() {
                            "none".to_string()
                        } else {
                            groups.join(", ")
                        }
                    ),
                );
                return None;
            }
            if let Some(m) = members.iter().find(|m| {
                m.service
                    .as_ref()
                    .is_some_and(|s| s.placement != super::Placement::Active)
            }) {
                cx.error(
                    &g.span,
                    &field,
                    format!(
                        "group {:?} has {:?} with placement = \"every-head\": a replicated set's group runs on the active head only (a standby's copy is written by replication)",
                        g.v, m.name
                    ),
                );
                return None;
            }
            Some(g.v.clone())
        });
        if r.group.is_some() && group.is_none() {
            ok = false;
        }
        let mut alerts = Vec::new();
        if let Some(list) = &r.alert {
            for (i, a) in list.v.iter().enumerate() {
                match crate::watchspec::AlertSpec::parse(a) {
                    Ok(s) => alerts.push(s),
                    Err(e) => {
                        cx.error(&list.span, &format!("{}.alert[{i}]", r.path), e.0);
                        ok = false;
                    }
                }
            }
        }
        if let (true, Some(name)) = (ok, name) {
            out.push(Replicate {
                alert: r.alert.as_ref().map(|a| a.v.clone()).unwrap_or_default(),
                alerts,
                name: name.v.clone(),
                paths,
                exclude: r.exclude.as_ref().map(|e| e.v.clone()).unwrap_or_default(),
                max_lag_on_failover: r.max_lag.as_ref().map_or(DEFAULT_MAX_LAG, |d| d.v),
                group,
                xattrs: r.xattrs.unwrap_or(false),
            });
        }
    }
    out
}
