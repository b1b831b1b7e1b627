//! The writer thread: the only connection that writes, committing in groups.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::{Command, StoreError, StoreSettings, StoreStats, schema, subject_key};
use crate::config::Synchronous;
use crate::model::{Device, Reading, Resident, Subject, Timestamp};
use crate::system::health::Heartbeat;

const IDLE_BEAT: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) fn open_write_connection(settings: &StoreSettings) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(&settings.path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match settings.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

pub(super) fn spawn(
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    settings: StoreSettings,
    stats: Arc<StoreStats>,
    runtime: tokio::runtime::Handle,
    heartbeat: Heartbeat,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(conn, rx, settings, stats, runtime, heartbeat))
        .expect("spawning a thread at start-up only fails when the process is out of resources")
}

/// Collects commands into groups and commits each group in one transaction, until
/// every sender has gone; then commits what is left and returns.
fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    settings: StoreSettings,
    stats: Arc<StoreStats>,
    runtime: tokio::runtime::Handle,
    heartbeat: Heartbeat,
) {
    // Timers are made outside `block_on`; they need the runtime's context.
    let _context = runtime.enter();
    loop {
        heartbeat.beat();
        // Wake at least once a second while idle, so that the heartbeat says the
        // writer is waiting, not stuck.
        let first = match runtime.block_on(tokio::time::timeout(IDLE_BEAT, rx.recv())) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => break,
            Err(_) => continue,
        };
        let mut group = vec![first];
        let mut count = readings_in(&group[0]);
        let deadline = tokio::time::Instant::from_std(Instant::now() + settings.commit_max_delay);
        while count < settings.commit_max_readings {
            match rx.try_recv() {
                Ok(cmd) => {
                    count += readings_in(&cmd);
                    group.push(cmd);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            match runtime.block_on(tokio::time::timeout_at(deadline, rx.recv())) {
                Ok(Some(cmd)) => {
                    count += readings_in(&cmd);
                    group.push(cmd);
                }
                Ok(None) | Err(_) => break,
            }
        }
        commit_group(&mut conn, group, &stats);
    }
    tracing::debug!("store writer stopped: every producer has gone and all is committed");
}

fn readings_in(cmd: &Command) -> usize {
    match cmd {
        Command::Ingest { readings, .. } => readings.len(),
        Command::Provision { .. } => 1,
    }
}

fn commit_group(conn: &mut Connection, group: Vec<Command>, stats: &StoreStats) {
    let result = write_group(conn, &group);
    let now = Timestamp::now();
    let outcome = match result {
        Ok(n) => {
            stats
                .readings_committed
                .fetch_add(n as u64, Ordering::Relaxed);
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.last_commit_ms.store(now.unix_ms(), Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            stats.commit_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, commands = group.len(), "store commit failed; the group was not stored");
            Err(Arc::new(e))
        }
    };
    for cmd in group {
        let reply = match cmd {
            Command::Ingest { committed, .. } => committed,
            Command::Provision { committed, .. } => Some(committed),
        };
        if let Some(reply) = reply {
            // The producer may have stopped waiting; the data is stored either way.
            let _ = reply.send(outcome.clone());
        }
    }
}

fn write_group(conn: &mut Connection, group: &[Command]) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let mut stored = 0;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO outbox (id, device, resident_id, room, quantity, value, status, unit,
                                 measured_at_ms, received_at_ms, clock_synced, vital)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let mut latest = tx.prepare_cached(
            "INSERT INTO latest (subject, quantity, value, status, unit, taken_at_ms, device, reading_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (subject, quantity) DO UPDATE SET
                value = excluded.value, status = excluded.status, unit = excluded.unit,
                taken_at_ms = excluded.taken_at_ms, device = excluded.device,
                reading_id = excluded.reading_id
             WHERE excluded.taken_at_ms >= latest.taken_at_ms",
        )?;
        let mut seen = tx.prepare_cached(
            "UPDATE devices SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?2) WHERE address = ?1",
        )?;
        let mut battery =
            tx.prepare_cached("UPDATE devices SET battery_percent = ?2 WHERE address = ?1")?;
        for cmd in group {
            match cmd {
                Command::Ingest { readings, .. } => {
                    for r in readings {
                        write_reading(&mut insert, &mut latest, r)?;
                        let device = r.device.to_string();
                        seen.execute(params![device, r.received_at.unix_ms()])?;
                        if r.quantity == crate::model::Quantity::BatteryLevel
                            && let Some(pct) = r.value.number()
                        {
                            battery.execute(params![device, pct.round() as i64])?;
                        }
                        stored += 1;
                    }
                }
                Command::Provision {
                    residents, devices, ..
                } => provision(&tx, residents, devices)?,
            }
        }
    }
    tx.commit()?;
    Ok(stored)
}

fn write_reading(
    insert: &mut rusqlite::CachedStatement<'_>,
    latest: &mut rusqlite::CachedStatement<'_>,
    r: &Reading,
) -> Result<(), StoreError> {
    let (resident, room) = match &r.subject {
        Subject::Resident(id) => (Some(id.0), None),
        Subject::Room(room) => (None, Some(room.as_str())),
        Subject::Unassigned => (None, None),
    };
    let id = &r.id.as_bytes()[..];
    insert.execute(params![
        id,
        r.device.to_string(),
        resident,
        room,
        r.quantity.as_str(),
        r.value.number(),
        r.value.status(),
        r.unit.ucum(),
        r.measured_at.map(Timestamp::unix_ms),
        r.received_at.unix_ms(),
        r.clock_synced,
        r.quantity.is_vital_sign(),
    ])?;
    latest.execute(params![
        subject_key(&r.subject, &r.device),
        r.quantity.as_str(),
        r.value.number(),
        r.value.status(),
        r.unit.ucum(),
        r.taken_at().unix_ms(),
        r.device.to_string(),
        id,
    ])?;
    Ok(())
}

fn provision(
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
