//! How far each glucose meter's records are filed, and whether a record that
//! arrives is new, a repeat, or the first of a meter whose numbering started
//! again (hazard H35).
//!
//! A meter numbers its records (a 16-bit sequence number) and the gateway
//! asks it over RACP only for records after the last one filed. That number
//! alone cannot tell a repeat from a new record once the meter's numbering
//! starts again (memory cleared, a reset, a battery change on some models, or
//! the number wrapping after 65,535): the record's base time, the meter's own
//! clock when it was taken, can. A record at or below the last number filed
//! is a repeat only when its base time is not later than that record's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{GLUCOSE_MEASUREMENT, Notification, uuid16};
use crate::model::{DeviceAddress, Timestamp};

/// A record's base time exactly as the meter gave it: its local civil time
/// with no zone, as the number `YYYYMMDDhhmmss`, so that two of them compare
/// as the times do and the stored value reads as a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseTime(pub i64);

impl BaseTime {
    /// From the Date Time fields; `None` when the meter does not know the
    /// date (year, month or day 0, as the Glucose Service allows) or a field
    /// is out of range.
    pub fn from_fields(
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
    ) -> Option<Self> {
        let known = (1582..=9999).contains(&year)
            && (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour < 24
            && minute < 60
            && second < 60;
        known
            .then(|| {
                let date = (i64::from(year) * 100 + i64::from(month)) * 100 + i64::from(day);
                ((date * 100 + i64::from(hour)) * 100 + i64::from(minute)) * 100 + i64::from(second)
            })
            .map(BaseTime)
    }
}

/// What identifies a glucose record: its sequence number and base time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterRecord {
    pub sequence: u16,
    /// `None` when the meter does not know its date.
    pub base_time: Option<BaseTime>,
}

/// The sequence number and base time of a Glucose Measurement notification
/// (flags, then the sequence number, then the base time), if the frame is one.
pub fn glucose_record(n: &Notification) -> Option<MeterRecord> {
    if n.characteristic != uuid16(GLUCOSE_MEASUREMENT) {
        return None;
    }
    let b = |i: usize| n.value.get(i).copied();
    let sequence = u16::from_le_bytes([b(1)?, b(2)?]);
    let base_time = (|| {
        BaseTime::from_fields(
            u16::from_le_bytes([b(3)?, b(4)?]),
            b(5)?,
            b(6)?,
            b(7)?,
            b(8)?,
            b(9)?,
        )
    })();
    Some(MeterRecord {
        sequence,
        base_time,
    })
}

/// How far one meter's records are filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterProgress {
    /// The record with the highest sequence number filed under the meter's
    /// current numbering.
    pub last: MeterRecord,
    /// The last record filed under the numbering before the latest
    /// renumbering: a meter whose number wrapped still holds records from
    /// before the wrap, higher numbers than `last`, that are repeats.
    pub before: Option<MeterRecord>,
}

/// What a record that arrives is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not filed yet: file it.
    New,
    /// Filed already: do not file it again.
    Repeat,
    /// At or below the last number filed but taken later than that record:
    /// the meter's numbering started again and this is a new record. File it;
    /// the progress starts again from it.
    Renumbered,
}

/// Whether `record` is new, given how far the meter's records are filed.
pub fn judge(progress: Option<&MeterProgress>, record: MeterRecord) -> Verdict {
    let Some(p) = progress else {
        return Verdict::New;
    };
    // Not later than the saved one (or either time unknown): a repeat.
    let not_later = |saved: &MeterRecord| match (record.base_time, saved.base_time) {
        (Some(t), Some(s)) => t <= s,
        _ => true,
    };
    // A record of the numbering before the last renumbering, sent again.
    if let Some(b) = &p.before
        && record.base_time.is_some()
        && b.base_time.is_some()
        && record.sequence <= b.sequence
        && not_later(b)
    {
        return Verdict::Repeat;
    }
    if record.sequence > p.last.sequence {
        Verdict::New
    } else if not_later(&p.last) {
        Verdict::Repeat
    } else {
        Verdict::Renumbered
    }
}

/// A meter's numbering that started again, as ingest found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renumbering {
    /// When the gateway found it (the record's received time).
    pub at: Timestamp,
    /// The number the meter started again at (the first record found).
    pub sequence: u16,
}

/// The words of the pairing record's line (and the technical alert) for a
/// meter whose numbering started again at `sequence`.
pub fn renumbered_words(sequence: u16) -> String {
    format!(
        "the meter's record numbering started again at {sequence} (memory cleared or reset); records since are filed"
    )
}

/// What the gateway asks a meter for over its Record Access Control Point
/// ("report stored records", op code 0x01, Glucose Service 1.0 section 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpQuery {
    /// Every record it holds (operator 0x01).
    All,
    /// The records from this sequence number on (operator 0x03 "greater than
    /// or equal to", filter type 0x01 sequence number).
    From(u16),
    /// Its last record only (operator 0x06), to learn its highest number.
    Last,
}

impl RacpQuery {
    /// The bytes written to the RACP.
    pub fn bytes(self) -> Vec<u8> {
        match self {
            RacpQuery::All => vec![0x01, 0x01],
            RacpQuery::From(n) => {
                let [lo, hi] = n.to_le_bytes();
                vec![0x01, 0x03, 0x01, lo, hi]
            }
            RacpQuery::Last => vec![0x01, 0x06],
        }
    }
}

/// What to save for one meter: its progress, and the renumbering found since
/// the last save, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RacpSave {
    pub device: DeviceAddress,
    pub progress: MeterProgress,
    pub renumbered: Option<Renumbering>,
}

/// The glucose records filed from each meter: the next connection asks the
/// meter (RACP) only for records after the last one, and a record that is a
/// repeat ([`judge`]) is not filed twice. Ingest advances it once it has
/// handed a record's readings to the store, and has the store save it
/// (`devices.racp_sequence`, `racp_base_time`, ...) right after them; the
/// daemon loads it from there at start, so a restart does not fetch every
/// record again. Cheap to clone; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct RacpProgress(Arc<Mutex<RacpState>>);

#[derive(Debug, Default)]
pub struct RacpState {
    meters: HashMap<DeviceAddress, MeterProgress>,
    /// A question a session decided to ask a meter and did not get answered
    /// (the meter hung up first), with the last number filed when it was
    /// decided: the next session asks it first.
    pending: HashMap<DeviceAddress, (RacpQuery, Option<u16>)>,
    /// Advanced since last handed to the store.
    unsaved: BTreeMap<DeviceAddress, (MeterProgress, Option<Renumbering>)>,
}

impl RacpProgress {
    fn state(&self) -> MutexGuard<'_, RacpState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the store saved (at start).
    pub fn load(&self, saved: &[(DeviceAddress, MeterProgress)]) {
        let mut s = self.state();
        for (device, progress) in saved {
            s.meters.insert(*device, *progress);
        }
    }

    /// The last sequence number filed from the meter, if any.
    pub fn last(&self, device: DeviceAddress) -> Option<u16> {
        self.state().meters.get(&device).map(|p| p.last.sequence)
    }

    /// How far the meter's records are filed.
    pub fn progress(&self, device: DeviceAddress) -> Option<MeterProgress> {
        self.state().meters.get(&device).copied()
    }

    /// The question to ask the meter first, left by a session that could not
    /// ask it, with the last number filed when it was decided.
    pub fn pending(&self, device: DeviceAddress) -> Option<(RacpQuery, Option<u16>)> {
        self.state().pending.get(&device).copied()
    }

    /// Sets (or with `None` clears) the question to ask the meter first.
    pub fn set_pending(&self, device: DeviceAddress, query: Option<(RacpQuery, Option<u16>)>) {
        let mut s = self.state();
        match query {
            Some(q) => s.pending.insert(device, q),
            None => s.pending.remove(&device),
        };
    }

    /// What the record is, given what was filed from its meter.
    pub fn judge(&self, device: DeviceAddress, record: MeterRecord) -> Verdict {
        judge(self.state().meters.get(&device), record)
    }

    /// Notes a record handed to the store, judged `verdict` (never a repeat),
    /// received at `at`.
    pub fn filed(
        &self,
        device: DeviceAddress,
        record: MeterRecord,
        verdict: Verdict,
        at: Timestamp,
    ) {
        let mut s = self.state();
        let now = match (s.meters.get(&device).copied(), verdict) {
            (Some(p), Verdict::Renumbered) => MeterProgress {
                last: record,
                before: Some(p.last),
            },
            (Some(p), _) if record.sequence <= p.last.sequence => return,
            (Some(p), _) => MeterProgress {
                last: record,
                before: p.before,
            },
            (None, _) => MeterProgress {
                last: record,
                before: None,
            },
        };
        s.meters.insert(device, now);
        let renumbered = (verdict == Verdict::Renumbered).then_some(Renumbering {
            at,
            sequence: record.sequence,
        });
        let entry = s.unsaved.entry(device).or_insert((now, None));
        entry.0 = now;
        // The renumbering found first since the last save is the one told.
        entry.1 = entry.1.or(renumbered);
    }

    /// What advanced since the last call, to save.
    pub fn take_unsaved(&self) -> Vec<RacpSave> {
        std::mem::take(&mut self.state().unsaved)
            .into_iter()
            .map(|(device, (progress, renumbered))| RacpSave {
                device,
                progress,
                renumbered,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sequence: u16, time: i64) -> MeterRecord {
        MeterRecord {
            sequence,
            base_time: Some(BaseTime(time)),
        }
    }

    fn filed(last: MeterRecord, before: Option<MeterRecord>) -> MeterProgress {
        MeterProgress { last, before }
    }

    const T1: i64 = 20261203090000;
    const T2: i64 = 20261203100000;
    const T3: i64 = 20261203110000;

    #[test]
    fn a_record_is_a_repeat_only_when_not_taken_after_the_last_one_filed() {
        use Verdict::*;
        let unknown = |sequence| MeterRecord {
            sequence,
            base_time: None,
        };
        for (progress, record, expected, why) in [
            (None, at(1, T1), New, "nothing filed yet"),
            (
                Some(filed(at(2, T1), None)),
                at(3, T2),
                New,
                "the next number",
            ),
            (
                Some(filed(at(2, T2), None)),
                at(2, T2),
                Repeat,
                "the same record again",
            ),
            (
                Some(filed(at(2, T2), None)),
                at(1, T1),
                Repeat,
                "an older record again",
            ),
            (
                Some(filed(at(2, T2), None)),
                at(1, T3),
                Renumbered,
                "memory cleared: number 1 again, taken later",
            ),
            (
                Some(filed(at(u16::MAX, T2), None)),
                at(0, T3),
                Renumbered,
                "the number wrapped to 0",
            ),
            (
                Some(filed(at(u16::MAX, T2), None)),
                at(1, T3),
                Renumbered,
                "the number wrapped to 1",
            ),
            (
                Some(filed(at(2, T2), None)),
                unknown(1),
                Repeat,
                "a meter that does not know its date: the number decides",
            ),
            (
                Some(filed(unknown(2), None)),
                at(1, T3),
                Repeat,
                "the saved record's date unknown: the number decides",
            ),
            (
                Some(filed(at(1, T3), Some(at(u16::MAX, T2)))),
                at(65_530, T1),
                Repeat,
                "after a wrap, a record from before it sent again",
            ),
            (
                Some(filed(at(1, T3), Some(at(u16::MAX, T2)))),
                at(u16::MAX, T2),
                Repeat,
                "after a wrap, the last record before it sent again",
            ),
            (
                Some(filed(at(1, T2), Some(at(10, T1)))),
                at(2, T3),
                New,
                "after a memory clear, the next record of the new numbering",
            ),
            (
                Some(filed(at(5, T3), Some(at(10, T1)))),
                at(3, T2),
                Repeat,
                "after a memory clear, a new-numbering record sent again",
            ),
        ] {
            assert_eq!(judge(progress.as_ref(), record), expected, "{why}");
        }
    }

    #[test]
    fn a_renumbering_starts_the_progress_again_and_is_saved_once() {
        let p = RacpProgress::default();
        let a = DeviceAddress([1, 2, 3, 4, 5, 6]);
        let now = Timestamp::from_unix_ms(1_796_288_400_000);
        p.load(&[(a, filed(at(10, T1), None))]);
        assert_eq!(p.last(a), Some(10));
        assert_eq!(p.judge(a, at(1, T2)), Verdict::Renumbered);
        p.filed(a, at(1, T2), Verdict::Renumbered, now);
        assert_eq!(p.judge(a, at(2, T3)), Verdict::New);
        p.filed(a, at(2, T3), Verdict::New, now);
        assert_eq!(p.last(a), Some(2));
        assert_eq!(p.judge(a, at(1, T2)), Verdict::Repeat);
        assert_eq!(p.judge(a, at(10, T1)), Verdict::Repeat);
        assert_eq!(
            p.take_unsaved(),
            vec![RacpSave {
                device: a,
                progress: filed(at(2, T3), Some(at(10, T1))),
                renumbered: Some(Renumbering {
                    at: now,
                    sequence: 1
                }),
            }]
        );
        assert_eq!(p.take_unsaved(), vec![]);
        // A record filed out of order never moves the progress back.
        p.filed(a, at(3, T3), Verdict::New, now);
        p.filed(a, at(2, T3), Verdict::New, now);
        assert_eq!(p.last(a), Some(3));
    }

    #[test]
    fn a_glucose_record_carries_its_number_and_base_time() {
        let a = DeviceAddress([1, 2, 3, 4, 5, 6]);
        let glucose = |value: Vec<u8>| Notification {
            address: a,
            characteristic: uuid16(GLUCOSE_MEASUREMENT),
            value,
        };
        let mut v = vec![0x02, 0x34, 0x12];
        v.extend_from_slice(&2026u16.to_le_bytes());
        v.extend_from_slice(&[12, 3, 9, 5, 7]);
        assert_eq!(
            glucose_record(&glucose(v.clone())),
            Some(MeterRecord {
                sequence: 0x1234,
                base_time: Some(BaseTime(20261203090507))
            })
        );
        // Year 0: the meter does not know the date.
        let mut unknown = v.clone();
        unknown.splice(3..5, [0, 0]);
        assert_eq!(glucose_record(&glucose(unknown)).unwrap().base_time, None);
        assert_eq!(
            glucose_record(&glucose(vec![0x02, 0x34, 0x12, 0xE8])),
            Some(MeterRecord {
                sequence: 0x1234,
                base_time: None
            })
        );
        assert_eq!(glucose_record(&glucose(vec![0x02, 0x34])), None);
        let mut other = glucose(v);
        other.characteristic = uuid16(0x2A37);
        assert_eq!(glucose_record(&other), None);
    }
}
