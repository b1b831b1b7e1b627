//! End-to-end receipts (`uplink.receipts`): which leases wait for the cloud
//! consumer's word that it has their readings in its own database.
//!
//! A broker's PUBACK says only that the broker took a message. In receipts mode
//! a lease whose messages were all acknowledged by the broker is not acked in
//! the outbox: it stays leased (kept, not deleted, not sent again) until a
//! receipt on `carehub/v1/{site}/{gateway}/receipts` names every one of its
//! readings; then it is acked. One that has no complete receipt within the
//! time-out is released and sent again (the consumer de-duplicates by reading
//! id and sends the receipt again). A lease still waiting for a PUBACK when its
//! connection ends is released with the session's other batches, as ever;
//! one waiting only for its receipt outlives the connection (the receipt may
//! still come, or the time-out sends it again).
//!
//! Pure bookkeeping, no IO: the actor does the acks and releases it returns.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::ReadingId;
use crate::store::LeaseId;

/// One lease waiting for receipts.
#[derive(Debug)]
struct Waiting {
    /// Readings not yet named by a receipt.
    left: HashSet<ReadingId>,
    /// Readings in the lease (for the delivered count).
    readings: u64,
    /// Set once every message of the lease has its PUBACK: when to give up
    /// waiting and send the lease again.
    deadline: Option<Instant>,
}

/// The leases waiting for receipts, and which lease each reading is in.
#[derive(Debug)]
pub struct Receipts {
    timeout: Duration,
    leases: HashMap<LeaseId, Waiting>,
    owner: HashMap<ReadingId, LeaseId>,
}

impl Receipts {
    pub fn new(timeout: Duration) -> Receipts {
        Receipts {
            timeout,
            leases: HashMap::new(),
            owner: HashMap::new(),
        }
    }

    /// A lease is being published with these readings (called before its
    /// first message leaves, so that a receipt that overtakes a PUBACK counts).
    pub fn expect(&mut self, lease: LeaseId, ids: Vec<ReadingId>) {
        let readings = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        for id in &ids {
            self.owner.insert(*id, lease);
        }
        self.leases.insert(
            lease,
            Waiting {
                left: ids.into_iter().collect(),
                readings,
                deadline: None,
            },
        );
    }

    /// Every message of `lease` has its PUBACK: the receipt clock starts.
    pub fn published(&mut self, lease: LeaseId, now: Instant) {
        if let Some(w) = self.leases.get_mut(&lease) {
            w.deadline = Some(now + self.timeout);
        }
    }

    /// Whether `lease` waits here (for its PUBACKs or its receipts).
    pub fn tracks(&self, lease: LeaseId) -> bool {
        self.leases.contains_key(&lease)
    }

    /// A receipt named these readings: the leases now complete, with their
    /// readings, to be acked. Ids of no waiting lease (a repeat, a receipt for
    /// a lease already sent again) change nothing.
    pub fn receipt(&mut self, ids: &[ReadingId]) -> Vec<(LeaseId, u64)> {
        let mut done = Vec::new();
        for id in ids {
            let Some(lease) = self.owner.remove(id) else {
                continue;
            };
            let Some(w) = self.leases.get_mut(&lease) else {
                continue;
            };
            w.left.remove(id);
            if w.left.is_empty() {
                let readings = w.readings;
                self.leases.remove(&lease);
                done.push((lease, readings));
            }
        }
        done
    }

    /// Stops tracking `lease` (released, refused or held elsewhere).
    pub fn forget(&mut self, lease: LeaseId) {
        if let Some(w) = self.leases.remove(&lease) {
            for id in w.left {
                self.owner.remove(&id);
            }
        }
    }

    /// The leases whose receipt time ran out at `now`, with their readings, no
    /// longer tracked: to be released and sent again.
    pub fn expired(&mut self, now: Instant) -> Vec<(LeaseId, u64)> {
        let gone: Vec<(LeaseId, u64)> = self
            .leases
            .iter()
            .filter(|(_, w)| w.deadline.is_some_and(|d| d <= now))
            .map(|(l, w)| (*l, w.readings))
            .collect();
        for (lease, _) in &gone {
            self.forget(*lease);
        }
        gone
    }

    /// The earliest receipt deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().filter_map(|w| w.deadline).min()
    }

    /// Leases waiting only for receipts (every PUBACK in): they are kept when
    /// a connection ends.
    pub fn kept(&self) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, w)| w.deadline.is_some())
            .map(|(l, _)| *l)
            .collect()
    }

    /// Readings waiting for a receipt.
    pub fn waiting_readings(&self) -> u64 {
        u64::try_from(self.owner.len()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;

    fn ids(n: usize) -> Vec<ReadingId> {
        (0..n)
            .map(|i| ReadingId::new(Timestamp::from_unix_ms(1_000 + i as i64)))
            .collect()
    }

    #[test]
    fn a_lease_completes_only_when_every_reading_has_a_receipt() {
        let mut r = Receipts::new(Duration::from_secs(5));
        let a = ids(3);
        r.expect(LeaseId(1), a.clone());
        assert_eq!(r.waiting_readings(), 3);
        assert!(r.receipt(&a[..2]).is_empty());
        // A repeat of the same receipt changes nothing.
        assert!(r.receipt(&a[..2]).is_empty());
        assert_eq!(r.receipt(&a[2..]), vec![(LeaseId(1), 3)]);
        assert!(!r.tracks(LeaseId(1)));
        assert_eq!(r.waiting_readings(), 0);
        // A receipt for a lease no longer tracked is ignored.
        assert!(r.receipt(&a).is_empty());
    }

    #[test]
    fn only_leases_with_every_puback_in_time_out_or_outlive_a_connection() {
        let mut r = Receipts::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let (a, b) = (ids(2), ids(4).split_off(2));
        r.expect(LeaseId(1), a.clone());
        r.expect(LeaseId(2), b.clone());
        r.published(LeaseId(1), t0);
        assert_eq!(r.kept(), vec![LeaseId(1)]);
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(r.expired(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            r.expired(t0 + Duration::from_secs(5)),
            vec![(LeaseId(1), 2)]
        );
        // Expired: its readings no longer complete it; lease 2 still waits.
        assert!(r.receipt(&a).is_empty());
        assert!(r.tracks(LeaseId(2)));
        r.forget(LeaseId(2));
        assert_eq!(r.waiting_readings(), 0);
        assert!(r.receipt(&b).is_empty());
        assert_eq!(r.next_deadline(), None);
    }
}
