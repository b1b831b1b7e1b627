//! The device registry's pairing state and the pairing record, in SQLite.
//!
//! Pairing and assigning decide whose data a device's readings are, so every such
//! event is written to `pairing_events` in the same transaction as the change it
//! records (a bond, an assignment, an un-assignment, a removal). Where the change
//! matters to attribution, the caller waits for that commit before the change
//! takes effect in memory, so that a restart never forgets what already happened.
//! Signal strength and last-seen times are written only for devices already in
//! the registry: strangers walking past are never persisted.

use rusqlite::{OptionalExtension, params};

use super::StoreError;
use crate::decode::{BindKey, ReplayCounters};
use crate::model::{Device, DeviceAddress, DeviceKind, Resident, ResidentId, Subject, Timestamp};
use crate::sensor::racp::{
    BaseTime, FILED_KEPT, Filed, MeterProgress, MeterRecord, RacpSave, RecordKey, SavedMeter,
    renumbered_words,
};

/// What a recorded event changes in the `devices` table.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryChange {
    /// Nothing: the record only (a window opened, an agent refusal).
    Note,
    /// BlueZ holds a bond with the device now. A device not yet registered gets
    /// a row with no subject ("paired, not assigned").
    Bonded {
        kind: DeviceKind,
        name: Option<String>,
    },
    /// The bond was removed from BlueZ.
    BondRemoved,
    /// The device (as given) is assigned to its subject from now on.
    Assigned(Device),
    /// The device belongs to nobody from now on; its row stays.
    Unassigned,
    /// The device encrypts with this key from now on (its counters start again).
    KeySet(BindKey),
    /// The device's key is forgotten (with its counters).
    KeyCleared,
}

/// One event of the pairing record, and the registry change it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct PairingRecord {
    pub at: Timestamp,
    pub device: Option<DeviceAddress>,
    pub what: String,
    /// Who asked: the API caller's address, "cli (carehub pair)", or "gateway".
    pub who: String,
    pub change: RegistryChange,
}

/// What the radio last heard from a device, to persist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub device: DeviceAddress,
    pub rssi: Option<i16>,
    pub at: Timestamp,
    /// The last encryption counters the decoder accepted from it under this key
    /// (from ingest), saved only while the device still has that key.
    pub replay: Option<(BindKey, ReplayCounters)>,
}

/// A registered device's bind key and the counters saved for it, to load into
/// the decoder at start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredKey {
    pub device: DeviceAddress,
    pub key: BindKey,
    pub replay: ReplayCounters,
}

/// One event as read back from `pairing_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPairingEvent {
    pub seq: i64,
    pub at: Timestamp,
    pub device: Option<String>,
    pub what: String,
    pub who: Option<String>,
}

/// One registered device with its pairing state, for the staff page and the API.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    pub device: Device,
    pub paired: bool,
    pub bonded_at: Option<Timestamp>,
    pub assigned_at: Option<Timestamp>,
    pub rssi: Option<i16>,
    pub battery_percent: Option<u8>,
    pub last_seen: Option<Timestamp>,
    /// Whether staff gave it an encryption (bind) key. The key itself is never
    /// read back out of the store except into the decoder.
    pub has_key: bool,
}

/// Writes `record` and its change inside the writer's transaction.
pub(super) fn write_record(
    tx: &rusqlite::Transaction<'_>,
    record: &PairingRecord,
) -> Result<(), StoreError> {
    let at = record.at.unix_ms();
    tx.prepare_cached(
        "INSERT INTO pairing_events (at_ms, device, what, who) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        at,
        record.device.map(|d| d.to_string()),
        record.what,
        record.who
    ])?;
    let Some(address) = record.device else {
        return Ok(());
    };
    let key = address.to_string();
    match &record.change {
        RegistryChange::Note => {}
        RegistryChange::Bonded { kind, name } => {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM devices WHERE address = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_some() {
                tx.execute(
                    "UPDATE devices SET paired = 1, bonded_at_ms = coalesce(bonded_at_ms, ?2),
                        name = coalesce(name, ?3) WHERE address = ?1",
                    params![key, at, name],
                )?;
            } else {
                tx.execute(
                    "INSERT INTO devices (address, kind, name, paired, bonded_at_ms)
                     VALUES (?1, ?2, ?3, 1, ?4)",
                    params![key, kind.as_str(), name, at],
                )?;
            }
        }
        RegistryChange::BondRemoved => {
            tx.execute(
                "UPDATE devices SET paired = 0, bonded_at_ms = NULL WHERE address = ?1",
                [&key],
            )?;
        }
        RegistryChange::Assigned(device) => {
            provision(tx, &[], std::slice::from_ref(device))?;
            tx.execute(
                "UPDATE devices SET assigned_at_ms = ?2 WHERE address = ?1",
                params![key, at],
            )?;
            // The history: the assignment in force ends, this one begins.
            close_assignment(tx, &key, at)?;
            let (resident, room) = match &device.subject {
                Subject::Resident(id) => (Some(id.0), None),
                Subject::Room(room) => (None, Some(room.as_str())),
                Subject::Unassigned => (None, None),
            };
            if resident.is_some() || room.is_some() {
                tx.execute(
                    "INSERT INTO device_assignments (address, resident_id, room, from_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![key, resident, room, at],
                )?;
            }
        }
        RegistryChange::Unassigned => {
            tx.execute(
                "UPDATE devices SET resident_id = NULL, room = NULL, assigned_at_ms = NULL
                 WHERE address = ?1",
                [&key],
            )?;
            close_assignment(tx, &key, at)?;
        }
        // Only for a registered device (callers check first: an error here would
        // fail the whole group commit, readings included). Device rows are never
        // deleted, so the check cannot go stale.
        // A new key, or none, starts the counters again.
        RegistryChange::KeySet(_) | RegistryChange::KeyCleared => {
            let bind_key = match &record.change {
                RegistryChange::KeySet(k) => Some(&k[..]),
                _ => None,
            };
            tx.execute(
                "UPDATE devices SET bind_key = ?2, bthome_counter = NULL, mibeacon_counter = NULL,
                    pvvx_counter = NULL
                 WHERE address = ?1",
                params![key, bind_key],
            )?;
        }
    }
    Ok(())
}

fn close_assignment(
    tx: &rusqlite::Transaction<'_>,
    address: &str,
    at: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE device_assignments SET until_ms = max(from_ms, ?2)
         WHERE address = ?1 AND until_ms IS NULL",
        params![address, at],
    )?;
    Ok(())
}

/// The assignment history of every device, oldest first: (device, subject,
/// from, until). Rows this build cannot read are skipped.
#[allow(clippy::type_complexity)]
pub(super) fn assignment_history(
    c: &rusqlite::Connection,
) -> Result<Vec<(DeviceAddress, Subject, Timestamp, Option<Timestamp>)>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT address, resident_id, room, from_ms, until_ms FROM device_assignments
         ORDER BY from_ms, id",
    )?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?
        .filter_map(|row| {
            let (address, resident, room, from, until) = row.ok()?;
            let subject = match (resident, room) {
                (Some(id), _) => Subject::Resident(crate::model::ResidentId(id)),
                (None, Some(room)) => Subject::Room(room),
                (None, None) => return None,
            };
            Some((
                address.parse().ok()?,
                subject,
                Timestamp::from_unix_ms(from),
                until.map(Timestamp::from_unix_ms),
            ))
        })
        .collect();
    Ok(rows)
}

/// Persists signal strength and last-seen for registered devices only.
pub(super) fn write_seen(tx: &rusqlite::Transaction<'_>, seen: &[Seen]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "UPDATE devices SET rssi = coalesce(?2, rssi),
            last_seen_ms = max(coalesce(last_seen_ms, 0), ?3) WHERE address = ?1",
    )?;
    // Counters only ever go up, and only for a device that still has its key:
    // a save racing a key change must not carry the old key's count over.
    let mut counters = tx.prepare_cached(
        "UPDATE devices SET bthome_counter = max(coalesce(bthome_counter, ?2), ?2),
            mibeacon_counter = max(coalesce(mibeacon_counter, ?3), ?3),
            pvvx_counter = coalesce(?5, pvvx_counter)
         WHERE address = ?1 AND bind_key = ?4",
    )?;
    for s in seen {
        stmt.execute(params![s.device.to_string(), s.rssi, s.at.unix_ms()])?;
        if let Some((key, replay)) = &s.replay {
            // pvvx's one-byte counter wraps: the last accepted is saved as it is
            // (the decoder only ever accepts one that rose).
            counters.execute(params![
                s.device.to_string(),
                replay.bthome,
                replay.mibeacon,
                &key[..],
                replay.pvvx
            ])?;
        }
    }
    Ok(())
}

/// Saves how far each meter's records are filed: the last record (number and
/// base time) and the last one before the latest renumbering. A renumbering
/// found is saved with its time and number and gets its line in the pairing
/// record (who: "gateway"), in the same transaction.
pub(super) fn write_racp(
    tx: &rusqlite::Transaction<'_>,
    racp: &[RacpSave],
) -> Result<(), StoreError> {
    let mut progress = tx.prepare_cached(
        "UPDATE devices SET racp_sequence = ?2, racp_base_time = ?3,
                racp_before_sequence = ?4, racp_before_base_time = ?5,
                racp_numbering_from = ?6, racp_legacy = ?7
         WHERE address = ?1",
    )?;
    let mut print = tx.prepare_cached(
        "INSERT OR REPLACE INTO glucose_filed (device, n, record) VALUES (?1, ?2, ?3)",
    )?;
    let mut forget = tx.prepare_cached("DELETE FROM glucose_filed WHERE device = ?1 AND n < ?2")?;
    let mut renumbered = tx.prepare_cached(
        "UPDATE devices SET racp_renumbered_at_ms = ?2, racp_renumbered_sequence = ?3
         WHERE address = ?1",
    )?;
    let mut note = tx.prepare_cached(
        "INSERT INTO pairing_events (at_ms, device, what, who) VALUES (?1, ?2, ?3, 'gateway')",
    )?;
    for save in racp {
        let device = save.device.to_string();
        let p = &save.progress;
        let changed = progress.execute(params![
            device,
            p.last.sequence,
            p.last.base_time.map(|t| t.0),
            p.before.map(|b| b.sequence),
            p.before.and_then(|b| b.base_time).map(|t| t.0),
            i64::try_from(save.numbering_from).unwrap_or(i64::MAX),
            save.legacy,
        ])?;
        if changed > 0 {
            for (n, key) in &save.filed {
                let n = i64::try_from(*n).unwrap_or(i64::MAX);
                print.execute(params![device, n, key.to_bytes().as_slice()])?;
            }
            // Bounded: the last FILED_KEPT per meter.
            if let Some(newest) = save.filed.iter().map(|(n, _)| *n).max() {
                let keep_from = newest.saturating_add(1).saturating_sub(FILED_KEPT as u64);
                forget.execute(params![
                    device,
                    i64::try_from(keep_from).unwrap_or(i64::MAX)
                ])?;
            }
        }
        if let Some(r) = save.renumbered.filter(|_| changed > 0) {
            renumbered.execute(params![device, r.at.unix_ms(), r.sequence])?;
            note.execute(params![
                r.at.unix_ms(),
                device,
                renumbered_words(r.sequence)
            ])?;
        }
    }
    Ok(())
}

/// How far each meter's records are filed, and the fingerprints of the
/// records filed from it.
pub(super) fn racp_progress(
    c: &rusqlite::Connection,
) -> Result<Vec<(DeviceAddress, SavedMeter)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT address, racp_sequence, racp_base_time, racp_before_sequence, racp_before_base_time,
                racp_numbering_from, racp_legacy
         FROM devices WHERE racp_sequence IS NOT NULL ORDER BY address",
    )?;
    let mut prints =
        c.prepare_cached("SELECT n, record FROM glucose_filed WHERE device = ?1 ORDER BY n")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let record = |sequence: Option<i64>, time: Option<i64>| {
        Some(MeterRecord {
            sequence: u16::try_from(sequence?).ok()?,
            base_time: time.map(BaseTime),
        })
    };
    while let Some(r) = rows.next()? {
        let address: String = r.get(0)?;
        let Ok(device) = address.parse() else {
            continue;
        };
        let Some(last) = record(r.get(1)?, r.get(2)?) else {
            continue;
        };
        let before = record(r.get(3)?, r.get(4)?);
        let numbering_from = u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0);
        let legacy: bool = r.get(6)?;
        let mut kept = Vec::new();
        let mut p = prints.query(params![address])?;
        while let Some(row) = p.next()? {
            let n = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
            let bytes: Vec<u8> = row.get(1)?;
            // A fingerprint that does not read is left out: its record, sent
            // again, is filed once more rather than lost.
            if let Some(key) = RecordKey::from_bytes(&bytes) {
                kept.push((n, key));
            }
        }
        out.push((
            device,
            SavedMeter {
                progress: MeterProgress { last, before },
                filed: Filed::restore(kept, numbering_from, legacy),
            },
        ));
    }
    Ok(out)
}

/// Every registered device's bind key with its saved counters.
pub(super) fn keys(c: &rusqlite::Connection) -> Result<Vec<StoredKey>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT address, bind_key, bthome_counter, mibeacon_counter, pvvx_counter
         FROM devices WHERE bind_key IS NOT NULL ORDER BY address",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let address: String = r.get(0)?;
        let key: Vec<u8> = r.get(1)?;
        let (Ok(device), Ok(key)) = (address.parse(), BindKey::try_from(key.as_slice())) else {
            continue;
        };
        let counter = |i: usize| -> rusqlite::Result<Option<u32>> {
            Ok(r.get::<_, Option<i64>>(i)?
                .and_then(|v| u32::try_from(v).ok()))
        };
        out.push(StoredKey {
            device,
            key,
            replay: ReplayCounters {
                bthome: counter(2)?,
                mibeacon: counter(3)?,
                pvvx: r
                    .get::<_, Option<i64>>(4)?
                    .and_then(|v| u8::try_from(v).ok()),
            },
        });
    }
    Ok(out)
}

/// The newest `limit` events of the record, newest first.
pub(super) fn pairing_events(
    c: &rusqlite::Connection,
    limit: usize,
) -> Result<Vec<StoredPairingEvent>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, at_ms, device, what, who FROM pairing_events ORDER BY seq DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(StoredPairingEvent {
            seq: r.get(0)?,
            at: Timestamp::from_unix_ms(r.get(1)?),
            device: r.get(2)?,
            what: r.get(3)?,
            who: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every registered device with its state. Rows this build cannot read are
/// skipped, as [`super::Reader::devices`] does.
pub(super) fn device_states(c: &rusqlite::Connection) -> Result<Vec<DeviceState>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT address, kind, model, name, resident_id, room, paired, bonded_at_ms,
                assigned_at_ms, rssi, battery_percent, last_seen_ms, bind_key IS NOT NULL
         FROM devices ORDER BY address",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let address: String = r.get(0)?;
        let kind: String = r.get(1)?;
        let (Ok(address), Some(kind)) = (address.parse(), DeviceKind::parse(&kind)) else {
            continue;
        };
        let subject = match (r.get::<_, Option<i64>>(4)?, r.get::<_, Option<String>>(5)?) {
            (Some(id), _) => Subject::Resident(ResidentId(id)),
            (None, Some(room)) => Subject::Room(room),
            (None, None) => Subject::Unassigned,
        };
        let ms = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
            Ok(r.get::<_, Option<i64>>(i)?.map(Timestamp::from_unix_ms))
        };
        out.push(DeviceState {
            device: Device {
                address,
                kind,
                model: r.get(2)?,
                name: r.get(3)?,
                subject,
            },
            paired: r.get(6)?,
            bonded_at: ms(7)?,
            assigned_at: ms(8)?,
            rssi: r
                .get::<_, Option<i64>>(9)?
                .and_then(|v| i16::try_from(v).ok()),
            battery_percent: r
                .get::<_, Option<i64>>(10)?
                .and_then(|v| u8::try_from(v).ok()),
            last_seen: ms(11)?,
            has_key: r.get(12)?,
        });
    }
    Ok(out)
}

pub(super) fn provision(
    tx: &rusqlite::Transaction<'_>,
    residents: &[Resident],
    devices: &[Device],
) -> Result<(), StoreError> {
    for r in residents {
        tx.execute(
            "INSERT INTO residents (id, display_name, room, reference) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name,
                room = excluded.room, reference = excluded.reference",
            params![r.id.0, r.display_name, r.room, r.reference],
        )?;
    }
    for d in devices {
        let (resident, room) = match &d.subject {
            Subject::Resident(id) => (Some(id.0), None),
            Subject::Room(room) => (None, Some(room.clone())),
            Subject::Unassigned => (None, None),
        };
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM devices WHERE address = ?1",
                [d.address.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            tx.execute(
                "UPDATE devices SET kind = ?2, model = ?3, name = ?4, resident_id = ?5, room = ?6 WHERE address = ?1",
                params![d.address.to_string(), d.kind.as_str(), d.model, d.name, resident, room],
            )?;
        } else {
            tx.execute(
                "INSERT INTO devices (address, kind, model, name, resident_id, room) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![d.address.to_string(), d.kind.as_str(), d.model, d.name, resident, room],
            )?;
        }
    }
    Ok(())
}
