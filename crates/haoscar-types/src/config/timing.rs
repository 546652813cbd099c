//! Failure-detection and election timing: the `fast`, `default` and
//! `conservative` presets and explicit overrides, with the relations between
//! the values that keep failover safe.

use serde::Serialize;
use std::time::Duration;

/// A named set of timing values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimingPreset {
    /// Dedicated, quiet networks: sub-second failover, more sensitive to load.
    Fast,
    /// A shared management LAN: about a second to fail over.
    Default,
    /// Busy or lossy networks, heavily loaded heads: several seconds.
    Conservative,
}

impl TimingPreset {
    pub const NAMES: &'static [&'static str] = &["fast", "default", "conservative"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "fast" => Some(Self::Fast),
            "default" => Some(Self::Default),
            "conservative" => Some(Self::Conservative),
            _ => None,
        }
    }

    /// The values of this preset.
    pub fn timing(self) -> Timing {
        let ms = Duration::from_millis;
        let (hb, dead, emin, emax, lease) = match self {
            Self::Fast => (50, 250, 300, 450, 200),
            Self::Default => (100, 600, 800, 1200, 600),
            Self::Conservative => (500, 3000, 4000, 6000, 3000),
        };
        Timing {
            preset: self,
            heartbeat_interval: ms(hb),
            dead_after: ms(dead),
            election_timeout_min: ms(emin),
            election_timeout_max: ms(emax),
            lease: ms(lease),
        }
    }
}

/// Resolved timing values (a preset plus any explicit overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// The preset the values started from.
    pub preset: TimingPreset,
    /// How often every node sends a heartbeat on every channel.
    #[serde(with = "crate::duration::serde_text")]
    pub heartbeat_interval: Duration,
    /// A channel to a peer is down after this long without a valid heartbeat;
    /// a peer is down when all its channels are.
    #[serde(with = "crate::duration::serde_text")]
    pub dead_after: Duration,
    /// Bounds of the randomised election timeout.
    #[serde(with = "crate::duration::serde_text")]
    pub election_timeout_min: Duration,
    #[serde(with = "crate::duration::serde_text")]
    pub election_timeout_max: Duration,
    /// How long the active head keeps its role without hearing from a quorum.
    #[serde(with = "crate::duration::serde_text")]
    pub lease: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        TimingPreset::Default.timing()
    }
}

/// Field names accepted in a `[cluster.timing]` table besides `preset`.
pub(crate) const TIMING_FIELDS: &[&str] = &[
    "heartbeat_interval",
    "dead_after",
    "election_timeout_min",
    "election_timeout_max",
    "lease",
];

impl Timing {
    pub(crate) fn set(&mut self, field: &str, value: Duration) {
        match field {
            "heartbeat_interval" => self.heartbeat_interval = value,
            "dead_after" => self.dead_after = value,
            "election_timeout_min" => self.election_timeout_min = value,
            "election_timeout_max" => self.election_timeout_max = value,
            "lease" => self.lease = value,
            _ => {}
        }
    }

    /// Violated relations, each as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.heartbeat_interval < Duration::from_millis(10) {
            out.push(("heartbeat_interval", "must be at least 10ms".to_string()));
        }
        if self.dead_after < self.heartbeat_interval * 3 {
            out.push((
                "dead_after",
                format!(
                    "must be at least 3 heartbeat intervals ({}), or one lost packet fails a channel",
                    crate::duration::format_duration(self.heartbeat_interval * 3)
                ),
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            out.push((
                "election_timeout_max",
                "must be greater than election_timeout_min (the random spread avoids tied elections)"
                    .to_string(),
            ));
        }
        if self.election_timeout_min <= self.heartbeat_interval * 2 {
            out.push((
                "election_timeout_min",
                "must exceed two heartbeat intervals".to_string(),
            ));
        }
        if self.lease >= self.election_timeout_min {
            out.push((
                "lease",
                "must be shorter than election_timeout_min, so the old active head steps down before a new one can be elected"
                    .to_string(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for name in TimingPreset::NAMES {
            let preset = TimingPreset::from_name(name).expect("known preset");
            assert_eq!(preset.timing().problems(), vec![], "{name}");
        }
    }

    #[test]
    fn lease_must_end_before_election() {
        let mut t = TimingPreset::Default.timing();
        t.lease = t.election_timeout_min;
        assert_eq!(t.problems()[0].0, "lease");
    }
}
