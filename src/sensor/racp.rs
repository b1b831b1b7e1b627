//! How far each glucose meter's records are filed, and whether a record that
//! arrives is new, a repeat, or the first of a meter whose numbering started
//! again (hazard H35).
//!
//! A meter numbers its records (a 16-bit sequence number) and the gateway
//! asks it over RACP only for records from the last one filed on. That number
//! alone cannot tell a repeat from a new record once the meter's numbering
//! starts again (memory cleared, a reset, a battery change on some models, or
//! the number wrapping after 65,535), and the record's base time (the meter's
//! own clock) cannot either: many meters reset their clock with the battery,
//! and the user never sets it again. So the gateway remembers what it filed:
//! a fingerprint of each record's content ([`RecordKey`]: number, base time
//! and offset, value, unit, type and location), the last [`FILED_KEPT`] per
//! meter, saved with the progress. A record is a repeat only when that very
//! record was filed ([`judge`]); a number above the last filed is new unless
//! it is a record from before a wrap sent again.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// A glucose record's content, packed: its sequence number (16 bits), base
/// time as sent (7 bytes, so a year-0 date is kept as it is), time offset
/// (present bit and 16 bits), concentration (present bit, unit bit, the
/// SFLOAT's 16 bits, type and location byte). Two records with the same key
/// are the same record sent twice; the sensor status and the "context
/// follows" flag are left out (not part of what was measured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(pub u128);

impl RecordKey {
    /// The key of a Glucose Measurement value (flags, sequence number, base
    /// time, then the optional offset and concentration); `None` when the
    /// value is too short for the fields its flags announce.
    pub fn of(value: &[u8]) -> Option<RecordKey> {
        let flags = *value.first()?;
        let head = value.get(1..10)?;
        let mut key: u128 = 0;
        for b in head {
            key = (key << 8) | u128::from(*b);
        }
        let mut rest = value.get(10..)?.iter().copied();
        let mut take = |n: usize| -> Option<u128> {
            (0..n).try_fold(0u128, |k, _| Some((k << 8) | u128::from(rest.next()?)))
        };
        let offset = if flags & 0x01 != 0 {
            (1 << 16) | take(2)?
        } else {
            0
        };
        let concentration = if flags & 0x02 != 0 {
            (1 << 25) | (u128::from(flags & 0x04 != 0) << 24) | take(3)?
        } else {
            0
        };
        // 72 bits of number and base time, 17 of offset, 26 of concentration.
        Some(RecordKey((key << 43) | (offset << 26) | concentration))
    }

    /// As saved in the store (16 bytes, big-endian).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// From the store's 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<RecordKey> {
        Some(RecordKey(u128::from_be_bytes(bytes.try_into().ok()?)))
    }
}

/// The sequence number, base time and content key of a Glucose Measurement
/// notification (flags, then the sequence number, then the base time), if
/// the frame is one.
pub fn glucose_record(n: &Notification) -> Option<(MeterRecord, RecordKey)> {
    if n.characteristic != uuid16(GLUCOSE_MEASUREMENT) {
        return None;
    }
    let b = |i: usize| n.value.get(i).copied();
    let key = RecordKey::of(&n.value)?;
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
    Some((
        MeterRecord {
            sequence,
            base_time,
        },
        key,
    ))
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
    /// Not filed yet, and numbered at or below the last record filed: the
    /// meter's numbering started again and this is a new record. File it;
    /// the progress starts again from it.
    Renumbered,
}

/// How many record fingerprints are kept per meter: more than a meter holds
/// (the common ones hold 500 to 2,000 records), so that every record a meter
/// can send again that was filed is still known. 64 KiB per meter at most.
pub const FILED_KEPT: usize = 4096;

/// The records filed from one meter, as fingerprints, and what numbering
/// they belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filed {
    /// The last [`FILED_KEPT`] records filed, oldest first.
    keys: VecDeque<RecordKey>,
    /// The running number (per meter, from 0) the next record filed gets.
    next: u64,
    /// The running number of the first record of the current numbering.
    numbering_from: u64,
    /// Records were filed before fingerprints were kept (a meter paired
    /// before migration 14): a record not found among them is judged by the
    /// earlier rule too ([`judge_by_time`]) until [`FILED_KEPT`] are kept.
    legacy: bool,
    /// The session saw the meter's numbering go back: its last record was
    /// number N (below the last filed, or at it and not filed), when the
    /// running number was at the second value. Not saved.
    went_back: Option<(u16, u64)>,
}

impl Filed {
    /// As the store saved them: the kept fingerprints with their running
    /// numbers (oldest first), the first running number of the current
    /// numbering, and whether records were filed before fingerprints were kept.
    pub fn restore(kept: Vec<(u64, RecordKey)>, numbering_from: u64, legacy: bool) -> Filed {
        let next = kept
            .last()
            .map_or(numbering_from, |(n, _)| n.saturating_add(1));
        let skip = kept.len().saturating_sub(FILED_KEPT);
        Filed {
            keys: kept.into_iter().skip(skip).map(|(_, k)| k).collect(),
            next,
            numbering_from,
            legacy,
            went_back: None,
        }
    }

    /// Whether the record with this key was filed at or after running
    /// number `from` (as far as kept).
    fn since(&self, from: u64, key: RecordKey) -> bool {
        let front = self.next.saturating_sub(self.keys.len() as u64);
        let skip = usize::try_from(from.saturating_sub(front)).unwrap_or(usize::MAX);
        self.keys.iter().skip(skip).any(|k| *k == key)
    }

    /// Notes a record filed; returns its running number.
    fn push(&mut self, key: RecordKey, renumbered: bool) -> u64 {
        let n = self.next;
        if renumbered {
            self.numbering_from = n;
        }
        self.keys.push_back(key);
        if self.keys.len() > FILED_KEPT {
            self.keys.pop_front();
        }
        self.next = n.saturating_add(1);
        if self.next >= FILED_KEPT as u64 {
            // As many fingerprints kept as a meter can hold records: every
            // record filed before they were kept is gone from the meter.
            self.legacy = false;
        }
        n
    }

    /// The first running number of the current numbering.
    pub fn numbering_from(&self) -> u64 {
        self.numbering_from
    }

    /// Whether records were filed before fingerprints were kept.
    pub fn legacy(&self) -> bool {
        self.legacy
    }
}

/// Whether `record` (content `key`) is new, given how far the meter's
/// records are filed and what was filed from it. A record is a repeat only
/// when that record (the same key) was filed: under the current numbering
/// for a number at or below the last one filed, under any kept numbering for
/// a number above it (a wrapped meter's records from before the wrap). Where
/// the session saw the meter's numbering go back to N, its records up to N
/// are of the new numbering: repeats only of what was filed since. Neither
/// the meter's clock nor its numbering need to go forward.
pub fn judge(
    progress: Option<&MeterProgress>,
    filed: Option<&Filed>,
    record: MeterRecord,
    key: RecordKey,
) -> Verdict {
    let Some(p) = progress else {
        return Verdict::New;
    };
    let none = Filed::default();
    let f = filed.unwrap_or(&none);
    if let Some((last, at)) = f.went_back
        && record.sequence <= last
    {
        return if f.since(at, key) {
            Verdict::Repeat
        } else if f.numbering_from >= at {
            // The new numbering was found already: one of its records
            // (out of order, or missed before).
            Verdict::New
        } else {
            Verdict::Renumbered
        };
    }
    let by_time = f.legacy && judge_by_time(p, record) == Verdict::Repeat;
    if record.sequence > p.last.sequence {
        if f.since(0, key) || by_time {
            Verdict::Repeat
        } else {
            Verdict::New
        }
    } else if f.since(f.numbering_from, key) || by_time {
        Verdict::Repeat
    } else {
        Verdict::Renumbered
    }
}

/// The earlier rule (migration 13), for records filed before fingerprints
/// were kept: a record at or below the last number filed is a repeat unless
/// its base time is later than that record's (or, after a wrap, than the
/// last one of the numbering before).
pub fn judge_by_time(p: &MeterProgress, record: MeterRecord) -> Verdict {
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

/// What to save for one meter: its progress, the fingerprints of the records
/// filed since the last save, and the renumbering found since, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RacpSave {
    pub device: DeviceAddress,
    pub progress: MeterProgress,
    pub renumbered: Option<Renumbering>,
    /// The records filed since the last save: running number and key.
    pub filed: Vec<(u64, RecordKey)>,
    /// The first running number of the current numbering.
    pub numbering_from: u64,
    /// Whether records filed before fingerprints were kept may still be held.
    pub legacy: bool,
}

/// One meter as the store saved it (loaded at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMeter {
    pub progress: MeterProgress,
    pub filed: Filed,
}

/// The glucose records filed from each meter: the next connection asks the
/// meter (RACP) only for records from the last one on, and a record that is a
/// repeat ([`judge`]) is not filed twice. Ingest advances it once it has
/// handed a record's readings to the store, and has the store save it
/// (`devices.racp_sequence`, ..., and the fingerprints in `glucose_filed`)
/// right after them; the daemon loads it from there at start, so a restart
/// does not fetch every record again. Cheap to clone; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct RacpProgress(Arc<Mutex<RacpState>>);

#[derive(Debug, Default)]
pub struct RacpState {
    meters: HashMap<DeviceAddress, SavedMeter>,
    /// A question a session decided to ask a meter and did not get answered
    /// (the meter hung up first), with the last number filed when it was
    /// decided: the next session asks it first.
    pending: HashMap<DeviceAddress, (RacpQuery, Option<u16>)>,
    /// Filed since last handed to the store: the renumbering found first and
    /// the records' running numbers and keys.
    unsaved: BTreeMap<DeviceAddress, Unsaved>,
}

/// One meter's records filed since the last save: the renumbering found
/// first, and the records' running numbers and keys.
type Unsaved = (Option<Renumbering>, Vec<(u64, RecordKey)>);

impl RacpProgress {
    fn state(&self) -> MutexGuard<'_, RacpState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the store saved (at start).
    pub fn load(&self, saved: &[(DeviceAddress, SavedMeter)]) {
        let mut s = self.state();
        for (device, meter) in saved {
            s.meters.insert(*device, meter.clone());
        }
    }

    /// The last sequence number filed from the meter, if any.
    pub fn last(&self, device: DeviceAddress) -> Option<u16> {
        self.state()
            .meters
            .get(&device)
            .map(|m| m.progress.last.sequence)
    }

    /// How far the meter's records are filed.
    pub fn progress(&self, device: DeviceAddress) -> Option<MeterProgress> {
        self.state().meters.get(&device).map(|m| m.progress)
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

    /// The session saw the meter's numbering go back: its last record is
    /// numbered `last`. Its records up to `last` are of a new numbering from
    /// now on (in this run): repeats only of what is filed from now.
    pub fn went_back(&self, device: DeviceAddress, last: u16) {
        if let Some(m) = self.state().meters.get_mut(&device) {
            m.filed.went_back = Some((last, m.filed.next));
        }
    }

    /// What the record is, given what was filed from its meter.
    pub fn judge(&self, device: DeviceAddress, record: MeterRecord, key: RecordKey) -> Verdict {
        let s = self.state();
        let m = s.meters.get(&device);
        judge(m.map(|m| &m.progress), m.map(|m| &m.filed), record, key)
    }

    /// Notes a record handed to the store, judged `verdict` (never a repeat),
    /// received at `at`.
    pub fn filed(
        &self,
        device: DeviceAddress,
        record: MeterRecord,
        key: RecordKey,
        verdict: Verdict,
        at: Timestamp,
    ) {
        let mut s = self.state();
        let renumbered = verdict == Verdict::Renumbered;
        let m = s.meters.entry(device).or_insert_with(|| SavedMeter {
            progress: MeterProgress {
                last: record,
                before: None,
            },
            filed: Filed::default(),
        });
        let p = m.progress;
        if renumbered {
            m.progress = MeterProgress {
                last: record,
                before: Some(p.last),
            };
        } else if record.sequence > p.last.sequence {
            // A record filed out of order never moves the progress back.
            m.progress.last = record;
        }
        let n = m.filed.push(key, renumbered);
        let renumbering = renumbered.then_some(Renumbering {
            at,
            sequence: record.sequence,
        });
        let entry = s.unsaved.entry(device).or_default();
        // The renumbering found first since the last save is the one told.
        entry.0 = entry.0.or(renumbering);
        entry.1.push((n, key));
    }

    /// What advanced since the last call, to save.
    pub fn take_unsaved(&self) -> Vec<RacpSave> {
        let mut s = self.state();
        let unsaved = std::mem::take(&mut s.unsaved);
        unsaved
            .into_iter()
            .filter_map(|(device, (renumbered, filed))| {
                let m = s.meters.get(&device)?;
                Some(RacpSave {
                    device,
                    progress: m.progress,
                    renumbered,
                    filed,
                    numbering_from: m.filed.numbering_from,
                    legacy: m.filed.legacy,
                })
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

    /// A Glucose Measurement value: number, base time (year, month, day,
    /// hour, minute), mg/dL (kg/L, exponent -5), capillary blood, finger.
    fn value(sequence: u16, (y, mo, d, h, mi): (u16, u8, u8, u8, u8), mgdl: u16) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend_from_slice(&sequence.to_le_bytes());
        v.extend_from_slice(&y.to_le_bytes());
        v.extend_from_slice(&[mo, d, h, mi, 0]);
        v.extend_from_slice(&(0xB000u16 | (mgdl & 0x0FFF)).to_le_bytes());
        v.push(0x11);
        v
    }

    fn record(sequence: u16, time: (u16, u8, u8, u8, u8), mgdl: u16) -> (MeterRecord, RecordKey) {
        glucose_record(&Notification {
            address: METER,
            characteristic: uuid16(GLUCOSE_MEASUREMENT),
            value: value(sequence, time, mgdl),
        })
        .unwrap()
    }

    const METER: DeviceAddress = DeviceAddress([1, 2, 3, 4, 5, 6]);
    const DEC3: (u16, u8, u8, u8, u8) = (2026, 12, 3, 9, 0);
    /// The clock a meter falls back to when its battery is changed.
    const Y2000: (u16, u8, u8, u8, u8) = (2000, 1, 1, 0, 0);
    const YEAR0: (u16, u8, u8, u8, u8) = (0, 0, 0, 0, 0);

    fn minutes((y, mo, d, h, mi): (u16, u8, u8, u8, u8), m: u8) -> (u16, u8, u8, u8, u8) {
        (y, mo, d, h, mi + m)
    }

    /// Judges `record` and, unless a repeat, files it, as ingest does.
    fn file(p: &RacpProgress, (r, key): (MeterRecord, RecordKey)) -> Verdict {
        let v = p.judge(METER, r, key);
        if v != Verdict::Repeat {
            p.filed(METER, r, key, v, Timestamp::from_unix_ms(0));
        }
        v
    }

    /// A meter whose records 1 to 3 were filed, taken at `time` + n minutes
    /// with 90 + n mg/dL.
    fn three_filed(time: (u16, u8, u8, u8, u8)) -> RacpProgress {
        let p = RacpProgress::default();
        for n in 1..=3u8 {
            assert_eq!(
                file(&p, record(n.into(), minutes(time, n), 90 + u16::from(n))),
                Verdict::New
            );
        }
        p
    }

    /// H35: a record is a repeat only when that very record was filed;
    /// neither the meter's clock nor its numbering need to go forward. Every
    /// "memory cleared" case here was a repeat (lost) under the rule by base
    /// time.
    #[test]
    fn a_record_is_a_repeat_only_when_that_record_was_filed() {
        use Verdict::*;
        // The same record again, an older one again, the next one.
        let p = three_filed(DEC3);
        assert_eq!(file(&p, record(3, minutes(DEC3, 3), 93)), Repeat);
        assert_eq!(file(&p, record(1, minutes(DEC3, 1), 91)), Repeat);
        assert_eq!(file(&p, record(4, minutes(DEC3, 4), 94)), New);

        // Memory cleared and the clock reset to 2000-01-01: the new records,
        // numbered 1 and 2 again and "taken" before the old ones, are filed
        // once each, also when sent again.
        let p = three_filed(DEC3);
        assert_eq!(file(&p, record(1, Y2000, 150)), Renumbered);
        assert_eq!(file(&p, record(2, minutes(Y2000, 1), 160)), New);
        assert_eq!(file(&p, record(1, Y2000, 150)), Repeat);
        assert_eq!(file(&p, record(2, minutes(Y2000, 1), 160)), Repeat);
        assert_eq!(p.last(METER), Some(2));
        // An old record sent again (numbered above the new last one).
        assert_eq!(file(&p, record(3, minutes(DEC3, 3), 93)), Repeat);

        // Memory cleared, the clock set back to the old records' very times:
        // the same number and base time, another value.
        let p = three_filed(DEC3);
        assert_eq!(file(&p, record(1, minutes(DEC3, 1), 140)), Renumbered);
        assert_eq!(file(&p, record(2, minutes(DEC3, 2), 141)), New);
        assert_eq!(file(&p, record(1, minutes(DEC3, 1), 140)), Repeat);

        // Year 0 (the meter does not know its date): judged by content too.
        let p = three_filed(YEAR0);
        assert_eq!(file(&p, record(2, minutes(YEAR0, 2), 92)), Repeat);
        assert_eq!(file(&p, record(1, YEAR0, 120)), Renumbered);
        assert_eq!(file(&p, record(1, YEAR0, 120)), Repeat);

        // Renumbered up to the very number filed: another record 3.
        let p = three_filed(DEC3);
        assert_eq!(file(&p, record(3, Y2000, 130)), Renumbered);

        // The number wrapped after 65,535, the clock went back as well: 0
        // and 1 are filed, the records from before the wrap stay repeats.
        let p = RacpProgress::default();
        let (old1, old2) = (record(65_534, DEC3, 100), record(65_535, DEC3, 101));
        assert_eq!(file(&p, old1), New);
        assert_eq!(file(&p, old2), New);
        assert_eq!(file(&p, record(0, Y2000, 102)), Renumbered);
        assert_eq!(file(&p, record(1, Y2000, 103)), New);
        assert_eq!(file(&p, old1), Repeat);
        assert_eq!(file(&p, old2), Repeat);
        assert_eq!(file(&p, record(0, Y2000, 102)), Repeat);
        assert_eq!(p.last(METER), Some(1));
    }

    /// Where the session saw the numbering go back to N, the meter's records
    /// up to N are the new numbering's: a year-0 record whose number and
    /// value happen to equal a filed one's is filed all the same.
    #[test]
    fn a_numbering_the_session_saw_go_back_is_judged_only_by_what_was_filed_since() {
        use Verdict::*;
        let p = three_filed(YEAR0);
        // Without the session's word, number 2 with value 92 is the filed one.
        let (r, key) = record(2, minutes(YEAR0, 2), 92);
        assert_eq!(p.judge(METER, r, key), Repeat);
        p.went_back(METER, 2);
        assert_eq!(file(&p, record(1, minutes(YEAR0, 1), 91)), Renumbered);
        assert_eq!(file(&p, record(2, minutes(YEAR0, 2), 92)), New);
        assert_eq!(file(&p, record(1, minutes(YEAR0, 1), 91)), Repeat);
        assert_eq!(file(&p, record(2, minutes(YEAR0, 2), 92)), Repeat);
        // Above N, as usual: the old numbering's record 3 is a repeat.
        assert_eq!(file(&p, record(3, minutes(YEAR0, 3), 93)), Repeat);
        assert_eq!(file(&p, record(3, minutes(YEAR0, 3), 94)), New);
    }

    /// The rule by base time (migration 13), still used for meters that
    /// filed records before fingerprints were kept, until as many are kept
    /// as a meter holds.
    #[test]
    fn a_meter_filed_before_fingerprints_is_also_judged_by_base_time() {
        use Verdict::*;
        let unknown = |sequence| MeterRecord {
            sequence,
            base_time: None,
        };
        for (progress, record, expected, why) in [
            (filed(at(2, T1), None), at(3, T2), New, "the next number"),
            (
                filed(at(2, T2), None),
                at(2, T2),
                Repeat,
                "the same record again",
            ),
            (
                filed(at(2, T2), None),
                at(1, T1),
                Repeat,
                "an older record again",
            ),
            (
                filed(at(2, T2), None),
                at(1, T3),
                Renumbered,
                "memory cleared: number 1 again, taken later",
            ),
            (
                filed(at(u16::MAX, T2), None),
                at(0, T3),
                Renumbered,
                "the number wrapped to 0",
            ),
            (
                filed(at(2, T2), None),
                unknown(1),
                Repeat,
                "a meter that does not know its date: the number decides",
            ),
            (
                filed(at(1, T3), Some(at(u16::MAX, T2))),
                at(65_530, T1),
                Repeat,
                "after a wrap, a record from before it sent again",
            ),
            (
                filed(at(1, T2), Some(at(10, T1))),
                at(2, T3),
                New,
                "after a memory clear, the next record of the new numbering",
            ),
        ] {
            assert_eq!(judge_by_time(&progress, record), expected, "{why}");
            let legacy = Filed::restore(vec![], 0, true);
            let key = RecordKey(u128::from(record.sequence));
            assert_eq!(
                judge(Some(&progress), Some(&legacy), record, key),
                expected,
                "legacy: {why}"
            );
        }
        // A legacy meter: what its fingerprints know counts as well.
        let p = RacpProgress::default();
        p.load(&[(
            METER,
            SavedMeter {
                progress: filed(at(3, T3), None),
                filed: Filed::restore(vec![], 0, true),
            },
        )]);
        let (r, key) = record(4, DEC3, 100);
        assert_eq!(file(&p, (r, key)), New);
        // Number 4 again, a later time than 3 by the clock: filed already.
        assert_eq!(p.judge(METER, r, key), Repeat);
        // Once as many are kept as a meter holds, the clock no longer counts.
        for n in 5..(FILED_KEPT as u16 + 5) {
            file(&p, record(n, DEC3, 100));
        }
        assert_eq!(file(&p, record(2, Y2000, 80)), Renumbered);
    }

    #[test]
    fn fingerprints_are_kept_bounded_and_saved_with_their_running_numbers() {
        let p = RacpProgress::default();
        let now = Timestamp::from_unix_ms(1_796_288_400_000);
        let first = record(10, DEC3, 100);
        file(&p, first);
        let saved = p.take_unsaved();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].filed, vec![(0, first.1)]);
        assert_eq!((saved[0].numbering_from, saved[0].legacy), (0, false));
        let renumbered = record(1, Y2000, 120);
        assert_eq!(
            p.judge(METER, renumbered.0, renumbered.1),
            Verdict::Renumbered
        );
        p.filed(METER, renumbered.0, renumbered.1, Verdict::Renumbered, now);
        assert_eq!(
            p.take_unsaved(),
            vec![RacpSave {
                device: METER,
                progress: filed(renumbered.0, Some(first.0)),
                renumbered: Some(Renumbering {
                    at: now,
                    sequence: 1
                }),
                filed: vec![(1, renumbered.1)],
                numbering_from: 1,
                legacy: false,
            }]
        );
        assert_eq!(p.take_unsaved(), vec![]);
        // A record filed out of order never moves the progress back.
        file(&p, record(3, Y2000, 1));
        let (r2, k2) = record(2, minutes(Y2000, 1), 2);
        p.filed(METER, r2, k2, Verdict::New, now);
        assert_eq!(p.last(METER), Some(3));
        // Bounded: the oldest fingerprints go; restored as saved.
        let mut kept = Vec::new();
        for n in 0..(FILED_KEPT as u64 + 10) {
            kept.push((n, RecordKey(u128::from(n))));
        }
        let f = Filed::restore(kept, 5, false);
        assert_eq!(f.keys.len(), FILED_KEPT);
        assert_eq!(f.next, FILED_KEPT as u64 + 10);
        assert!(!f.since(0, RecordKey(9)) && f.since(0, RecordKey(10)));
        let mut f = f;
        f.push(RecordKey(1 << 100), false);
        assert_eq!(f.keys.len(), FILED_KEPT);
        assert!(!f.since(0, RecordKey(10)));
    }

    #[test]
    fn a_record_key_is_its_number_time_value_unit_and_type() {
        let base = value(7, DEC3, 100);
        let key = |v: &[u8]| RecordKey::of(v).unwrap();
        let k = key(&base);
        assert_eq!(RecordKey::from_bytes(&k.to_bytes()), Some(k));
        let mut other_value = base.clone();
        other_value[10] ^= 1;
        let mut other_type = base.clone();
        other_type[12] = 0x12;
        let mut mmol = base.clone();
        mmol[0] |= 0x04;
        let mut other_second = base.clone();
        other_second[9] = 1;
        for (changed, why) in [
            (other_value, "value"),
            (other_type, "type"),
            (mmol, "unit"),
            (other_second, "second"),
            (value(8, DEC3, 100), "number"),
        ] {
            assert_ne!(key(&changed), k, "{why}");
        }
        // A time offset is part of it; sensor status and "context follows"
        // are not.
        let mut offset = base.clone();
        offset[0] |= 0x01;
        offset.splice(10..10, [60, 0]);
        assert_ne!(key(&offset), k);
        let mut status = base.clone();
        status[0] |= 0x08 | 0x10;
        status.extend_from_slice(&[1, 0]);
        assert_eq!(key(&status), k);
        // Too short for what its flags announce: no key.
        assert_eq!(RecordKey::of(&base[..12]), None);
    }

    #[test]
    fn a_glucose_record_carries_its_number_and_base_time() {
        let a = DeviceAddress([1, 2, 3, 4, 5, 6]);
        let glucose = |value: Vec<u8>| Notification {
            address: a,
            characteristic: uuid16(GLUCOSE_MEASUREMENT),
            value,
        };
        let mut v = vec![0x00, 0x34, 0x12];
        v.extend_from_slice(&2026u16.to_le_bytes());
        v.extend_from_slice(&[12, 3, 9, 5, 7]);
        assert_eq!(
            glucose_record(&glucose(v.clone())).map(|r| r.0),
            Some(MeterRecord {
                sequence: 0x1234,
                base_time: Some(BaseTime(20261203090507))
            })
        );
        // Year 0: the meter does not know the date.
        let mut unknown = v.clone();
        unknown.splice(3..5, [0, 0]);
        assert_eq!(glucose_record(&glucose(unknown)).unwrap().0.base_time, None);
        assert_eq!(glucose_record(&glucose(vec![0x02, 0x34, 0x12, 0xE8])), None);
        assert_eq!(glucose_record(&glucose(vec![0x02, 0x34])), None);
        let mut other = glucose(v);
        other.characteristic = uuid16(0x2A37);
        assert_eq!(glucose_record(&other), None);
    }
}
