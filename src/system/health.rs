//! Stage heartbeats: each long-running stage records when it last made progress,
//! so that health checks (and the systemd watchdog) mean "every stage is moving",
//! not merely "the process exists".

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::model::Timestamp;

/// One stage's heartbeat. Cheap to clone; clones share the beat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: &'static str,
    last_ms: Arc<AtomicI64>,
    /// Whether this stage stalling stops the systemd watchdog (see
    /// [`Health::register_self_healing`]).
    gates_watchdog: bool,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms
            .store(Timestamp::now().unix_ms(), Ordering::Relaxed);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn last(&self) -> Timestamp {
        Timestamp::from_unix_ms(self.last_ms.load(Ordering::Relaxed))
    }

    /// Whether a stall of this stage withholds the watchdog.
    pub fn gates_watchdog(&self) -> bool {
        self.gates_watchdog
    }
}

/// Every stage's heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Health {
    beats: Vec<Heartbeat>,
}

impl Health {
    /// Registers a stage; it counts as having beaten now.
    pub fn register(&mut self, name: &'static str) -> Heartbeat {
        self.add(name, true)
    }

    /// Registers a stage whose stall is reported (STATUS, log, `/healthz`) but
    /// does not stop the systemd watchdog: the stage recovers by itself, and a
    /// restart of the whole daemon would cost more than it mends. The web
    /// stage is one: anyone on the network can make it slow, and a restart
    /// would stop the sensors, the alerts and the uplink with it.
    pub fn register_self_healing(&mut self, name: &'static str) -> Heartbeat {
        self.add(name, false)
    }

    fn add(&mut self, name: &'static str, gates_watchdog: bool) -> Heartbeat {
        let hb = Heartbeat {
            name,
            last_ms: Arc::new(AtomicI64::new(Timestamp::now().unix_ms())),
            gates_watchdog,
        };
        self.beats.push(hb.clone());
        hb
    }

    /// The stalled stages (as [`Health::stalled`]) whose stall withholds the
    /// watchdog.
    pub fn stalled_gating(&self, now: Timestamp, within: Duration) -> Vec<&'static str> {
        self.beats
            .iter()
            .filter(|b| b.gates_watchdog && b.last().age_at(now) > within)
            .map(|b| b.name)
            .collect()
    }

    /// The stages that have not beaten within `within` of `now`.
    pub fn stalled(&self, now: Timestamp, within: Duration) -> Vec<&'static str> {
        self.beats
            .iter()
            .filter(|b| b.last().age_at(now) > within)
            .map(|b| b.name)
            .collect()
    }

    pub fn stages(&self) -> impl Iterator<Item = &Heartbeat> {
        self.beats.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_that_stops_beating_is_reported() {
        let mut h = Health::default();
        let a = h.register("a");
        let _b = h.register("b");
        let later = Timestamp::now().saturating_add(Duration::from_secs(10));
        assert_eq!(h.stalled(later, Duration::from_secs(5)), vec!["a", "b"]);
        a.beat();
        let soon = Timestamp::now().saturating_add(Duration::from_secs(1));
        assert!(h.stalled(soon, Duration::from_secs(5)).is_empty());
    }
}
