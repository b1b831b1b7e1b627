//! One GATT session with a health device: wait for a connection slot, connect,
//! discover, subscribe to the measurement characteristics, read the battery, and
//! pass every value on as a [`Notification`] until the device goes away.
//!
//! Devices that measure on demand (BP cuffs, scales, thermometers) connect,
//! deliver what they stored and disconnect: a session that ends with the device
//! disconnecting is the normal outcome, not an error.
//!
//! Two devices need the gateway to speak first:
//! - a glucose meter (0x1808) sends nothing until asked over its Record Access
//!   Control Point (RACP, 0x2A52): once subscribed to the measurement, its
//!   context and the RACP, the session asks for the stored records, all of
//!   them the first time, then those from the last sequence number the
//!   gateway has filed on ([`RacpProgress`], kept in the store across
//!   restarts), whose record at that number shows whether the numbering goes
//!   on; with nothing new the meter is asked for its last record; when its
//!   numbering went back (another record at the number filed, or a last
//!   record below it: memory cleared, a reset, the number wrapped; H35) for
//!   all its records ([`RacpExchange`]);
//! - a device that offers a writable Current Time (0x2A2B, Current Time
//!   Service) has its clock set to the site's civil time, but only while the
//!   gateway's own clock is synchronised: a gateway that booted in the past
//!   must not spread its wrong time to the residents' devices.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, ValueNotification, WriteType};
use btleplug::platform::Peripheral;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::BleError;
use crate::decode::gatt;
use crate::model::{DeviceAddress, DeviceKind, SiteZone, Timestamp};
use crate::sensor::{Frame, Notification, RawFrame, short_uuid, uuid16};

/// GATT services that mark a device as a health device the gateway connects to.
pub const HEALTH_SERVICES: [u16; 6] = [0x180D, 0x1809, 0x1810, 0x1822, 0x181D, 0x1808];

/// Characteristics carrying measurements (notified or indicated).
const MEASUREMENTS: [u16; 9] = [
    gatt::HEART_RATE_MEASUREMENT,
    gatt::TEMPERATURE_MEASUREMENT,
    gatt::INTERMEDIATE_TEMPERATURE,
    gatt::BLOOD_PRESSURE_MEASUREMENT,
    gatt::INTERMEDIATE_CUFF_PRESSURE,
    gatt::PLX_SPOT_CHECK,
    gatt::PLX_CONTINUOUS,
    gatt::WEIGHT_MEASUREMENT,
    0x2A18, // Glucose Measurement: subscribed so it is seen; no decoder yet
];

/// Glucose Measurement Context: subscribed before the RACP is used, as the
/// Glucose Profile asks; its values are not readings and are not passed on.
const GLUCOSE_CONTEXT: u16 = 0x2A34;

/// Record Access Control Point (write, indicate).
const RACP: u16 = 0x2A52;

/// Current Time (Current Time Service 0x1805).
const CURRENT_TIME: u16 = 0x2A2B;

/// RACP op codes and answers (Glucose Service 1.0, 3.4).
const RACP_REPORT_STORED_RECORDS: u8 = 0x01;
const RACP_RESPONSE_CODE: u8 = 0x06;
const RACP_SUCCESS: u8 = 0x01;
const RACP_NO_RECORDS_FOUND: u8 = 0x06;

/// Most RACP questions one session asks a meter: the first, its last record,
/// all records (a meter that answers each is asked nothing more).
const RACP_MOST_QUESTIONS: u8 = 3;

/// What each meter has handed over and ingest has filed (shared with ingest,
/// saved in the store, loaded at start).
pub use crate::sensor::RacpProgress;
pub use crate::sensor::racp::RacpQuery;
use crate::sensor::racp::Verdict;

/// A meter's answer to "report stored records".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpAnswer {
    /// It sent what was asked for.
    Success,
    /// It holds no record that matches.
    NoRecords,
    /// Any other response code (not supported, procedure failed, ...).
    Other(u8),
}

impl RacpAnswer {
    /// The answer in a RACP indication, if it answers "report stored records".
    pub fn parse(value: &[u8]) -> Option<RacpAnswer> {
        match value {
            [RACP_RESPONSE_CODE, _, RACP_REPORT_STORED_RECORDS, code, ..] => Some(match *code {
                RACP_SUCCESS => RacpAnswer::Success,
                RACP_NO_RECORDS_FOUND => RacpAnswer::NoRecords,
                other => RacpAnswer::Other(other),
            }),
            _ => None,
        }
    }
}

/// One session's RACP exchange with a meter (pure): what to ask first, which
/// records to pass on, and what to ask after each answer.
///
/// The gateway asks for the records from the last number filed on (that
/// record included: "greater than or equal to"). The meter's record at that
/// number, when it is the record filed (its fingerprint), shows the
/// numbering goes on, and is not passed on again; another record at that
/// number means the numbering went back (memory cleared or a reset, and the
/// meter has since taken as many records or more; H35). A meter with no
/// record from that number on, or only that one, is asked for its last
/// record: a last number below the one filed, or the same number on another
/// record, means the numbering went back (or wrapped after 65,535). When it
/// went back the meter is asked for all its records, of which ingest files
/// the new ones and drops the repeats (`sensor::racp::judge`); the records
/// that showed it are not passed on then: they come again, in order, with all
/// the others, and filed first they would make the older new records look
/// like repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RacpExchange {
    /// The last number filed when the exchange was decided.
    saved: Option<u16>,
    asked: RacpQuery,
    /// The highest sequence number the meter sent since the last question.
    highest: Option<u16>,
    /// A record sent in answer to this question showed the meter's
    /// numbering went back.
    back: bool,
    questions_left: u8,
}

/// What the session does with a glucose record the meter sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStep {
    /// Pass it on to ingest.
    Pass,
    /// Not passed on: the record filed, sent again at the number asked from,
    /// or a record that comes again with all the others.
    Withhold,
    /// Not passed on, and the meter's numbering went back: it is asked for
    /// all its records next.
    WentBack,
}

impl RacpExchange {
    /// The exchange and its first question: one left unanswered by an
    /// earlier session, else all records (nothing filed yet) or the records
    /// from the last one filed on.
    pub fn start(saved: Option<u16>, pending: Option<(RacpQuery, Option<u16>)>) -> Self {
        let (asked, saved) = match (pending, saved) {
            (Some((query, then)), _) => (query, then),
            (None, None) => (RacpQuery::All, None),
            (None, Some(n)) => (RacpQuery::From(n), Some(n)),
        };
        RacpExchange {
            saved,
            asked,
            highest: None,
            back: false,
            questions_left: RACP_MOST_QUESTIONS - 1,
        }
    }

    /// The question asked now.
    pub fn asked(&self) -> RacpQuery {
        self.asked
    }

    /// The last number filed when the exchange was decided.
    pub fn saved(&self) -> Option<u16> {
        self.saved
    }

    /// A glucose record with this number arrived, `filed` when it is one the
    /// gateway filed already (`sensor::racp::judge` says a repeat): what to
    /// do with it.
    pub fn record(&mut self, sequence: u16, filed: bool) -> RecordStep {
        self.highest = Some(self.highest.map_or(sequence, |h| h.max(sequence)));
        if self.back {
            // The rest of this answer comes again with all the records.
            return RecordStep::Withhold;
        }
        match self.asked {
            // The record filed, still there: the numbering goes on.
            RacpQuery::From(n) if sequence == n && filed => RecordStep::Withhold,
            // Another record at that number: the numbering went back.
            RacpQuery::From(n) if sequence == n => {
                self.back = true;
                RecordStep::WentBack
            }
            // Not asked for (a careless meter that sends everything): filed
            // already, or its numbering went back, which is found at the
            // number asked from or by its last record.
            RacpQuery::From(n) if sequence < n => RecordStep::Withhold,
            RacpQuery::Last if self.went_back(sequence, filed) => {
                self.back = true;
                RecordStep::WentBack
            }
            _ => RecordStep::Pass,
        }
    }

    /// The meter's record numbered `last` shows its numbering went back:
    /// below the last number filed, or at it and not the record filed.
    fn went_back(&self, last: u16, filed: bool) -> bool {
        self.saved
            .is_some_and(|saved| last < saved || (last == saved && !filed))
    }

    /// The meter answered the question asked: what to ask next, if anything.
    pub fn answered(&mut self, answer: RacpAnswer) -> Option<RacpQuery> {
        let highest = self.highest.take();
        let back = std::mem::take(&mut self.back);
        let next = match (self.asked, answer) {
            (RacpQuery::From(_) | RacpQuery::Last, RacpAnswer::Success) if back => {
                Some(RacpQuery::All)
            }
            // Nothing after the last number filed: is the meter's last
            // record below it (or another record at it)?
            (RacpQuery::From(_), RacpAnswer::NoRecords) => Some(RacpQuery::Last),
            (RacpQuery::From(n), RacpAnswer::Success) if highest.is_none_or(|h| h <= n) => {
                Some(RacpQuery::Last)
            }
            _ => None,
        };
        let next = next.filter(|_| self.questions_left > 0)?;
        self.questions_left -= 1;
        self.asked = next;
        Some(next)
    }
}

/// The Current Time value (Exact Time 256 and the adjust reason) for `at` in
/// the site's civil time: year, month, day, hours, minutes, seconds, day of
/// week (1 = Monday), fractions of 1/256 s, and "external reference time
/// update" as the reason.
pub fn current_time_value(zone: &SiteZone, at: Timestamp) -> Option<Vec<u8>> {
    let c = zone.instant_to_civil(at)?;
    let day = jiff::civil::Date::new(
        i16::try_from(c.year).ok()?,
        i8::try_from(c.month).ok()?,
        i8::try_from(c.day).ok()?,
    )
    .ok()?;
    let weekday = u8::try_from(day.weekday().to_monday_one_offset()).ok()?;
    let [ylo, yhi] = c.year.to_le_bytes();
    let fraction = u8::try_from(at.unix_ms().rem_euclid(1000) * 256 / 1000).unwrap_or(0);
    Some(vec![
        ylo, yhi, c.month, c.day, c.hour, c.minute, c.second, weekday, fraction, 0x02,
    ])
}

/// How often a connected session asks BlueZ whether the link is still up, for
/// the disconnects BlueZ reports late or never.
const LINK_CHECK: Duration = Duration::from_secs(5);

/// How long a session keeps its connection slot while other devices wait for
/// one: after this it gives the slot up (disconnects) and queues again behind
/// them, so that more devices than `ble.max_connections` are all served in
/// turn. Only while someone waits: with slots to spare nobody is cut off.
pub const SLOT_SHARE: Duration = Duration::from_secs(30);

/// Longest wait for a best-effort disconnect when the session is stopped.
const DISCONNECT_WAIT: Duration = Duration::from_millis(500);

/// Longest wait for a yielded link to be reported down before its slot goes
/// to a waiting device. BlueZ asks the kernel to disconnect only some 2.5 s
/// after `Disconnect` is called (seen in the virtual lab), and a slot handed
/// on after the best-effort wait ([`DISCONNECT_WAIT`]) put one link more than
/// `ble.max_connections` on the controller (the lab's
/// `more_devices_than_slots`). Bounded: a link BlueZ never reports down must
/// not keep the slot from everyone for good.
const YIELD_DISCONNECT_WAIT: Duration = Duration::from_secs(10);

/// How often a yielding session asks BlueZ whether its link is down yet.
const LINK_DOWN_POLL: Duration = Duration::from_millis(100);

/// Whether an advertised service list marks a health device.
pub fn is_health_device(services: &[Uuid]) -> bool {
    services
        .iter()
        .filter_map(short_uuid)
        .any(|s| HEALTH_SERVICES.contains(&s))
}

/// What kind of device its advertised services say it is.
pub fn kind_from_services(services: &[Uuid]) -> DeviceKind {
    for short in services.iter().filter_map(short_uuid) {
        let kind = match short {
            0x180D => DeviceKind::HeartRateMonitor,
            0x1822 => DeviceKind::PulseOximeter,
            0x1810 => DeviceKind::BloodPressureMonitor,
            0x1809 => DeviceKind::Thermometer,
            0x181D => DeviceKind::WeightScale,
            0x1808 => DeviceKind::GlucoseMeter,
            0xFCD2 => DeviceKind::RoomSensor,
            _ => continue,
        };
        return kind;
    }
    DeviceKind::Unknown
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The device disconnected (the normal end for spot-check devices).
    Disconnected,
    /// The gateway stopped the session (shutdown, round restart).
    Stopped,
    /// The session gave its connection slot to a device waiting for one
    /// ([`SLOT_SHARE`]); the device is served again in its turn.
    Yielded,
}

/// What a session needs besides the device.
pub struct SessionContext {
    pub address: DeviceAddress,
    pub frames: mpsc::Sender<RawFrame>,
    pub slots: Arc<Semaphore>,
    /// For a device dialled without being heard (a probe): the permit to
    /// probe, held until the connect has succeeded or failed, so that probes
    /// of devices that may not be there take at most one slot at a time.
    pub probe: Option<Arc<Semaphore>>,
    /// Fired when the radio hears the device while its probe waits for its
    /// turn: it is then dialled as a device heard, at once and with the whole
    /// connect time-out, instead of waiting behind probes of devices that may
    /// not be there ([`probe_turn`]).
    pub heard: CancellationToken,
    /// Fires when the device disconnects or the gateway stops the session.
    pub stop: CancellationToken,
    /// The round's own token (`stop`'s parent): fired when the round ends
    /// (shutdown, bluetoothd restarted, adapter lost).
    pub round: CancellationToken,
    pub connect_timeout: Duration,
    /// Longest wait for the link itself (the connect step) while probing: the
    /// connect time-out, or less for a probe. A session without a probe's
    /// permit waits the whole connect time-out.
    pub reach_timeout: Duration,
    /// The site's civil time zone, for setting device clocks.
    pub zone: SiteZone,
    /// What each glucose meter has already handed over.
    pub racp: RacpProgress,
    /// Whether the gateway's clock is synchronised now (asked when needed).
    pub clock_synchronised: fn() -> bool,
    /// How many sessions wait for a connection slot now (all sessions of the
    /// round share it).
    pub waiting: Arc<AtomicUsize>,
    /// How many sessions are giving their slot up now (shared likewise).
    pub yielding: Arc<AtomicUsize>,
}

/// Claims a turn for a session about to give its slot up: true while fewer
/// sessions are giving theirs up than devices wait. Without it, one waiting
/// device made every session that had held its slot [`SLOT_SHARE`] give it
/// up at the same check (the virtual lab's strap and oximeter both did, for
/// one cuff), and each continuous device lost a turn for nothing.
pub fn claim_turn(yielding: &AtomicUsize, waiting: usize) -> bool {
    yielding
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |y| {
            (y < waiting).then_some(y + 1)
        })
        .is_ok()
}

/// A turn claimed with [`claim_turn`], given back when dropped (once the
/// slot has gone on, or the session was stopped).
pub struct Turn<'a>(pub &'a AtomicUsize);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a session as waiting for a slot for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a probe's wait for its turn ended.
#[derive(Debug)]
pub enum ProbeTurn {
    /// Its turn: the permit is held until the connect has succeeded or failed.
    Permit(tokio::sync::OwnedSemaphorePermit),
    /// The device was heard while it waited: dial it as heard, no permit.
    Heard,
    /// The session was stopped while it waited.
    Stopped,
}

/// Waits for a probe's turn, one probe at a time, unless the device is heard
/// (`heard`) or the session stopped first. After a restart every registered
/// device not yet heard is probed, 15 s each when it is not there: the
/// virtual lab's cuff, switched on 2 s after carehub, waited behind four
/// probes of absent devices and was read after 63 s instead of 13 s.
pub async fn probe_turn(
    probes: &Arc<Semaphore>,
    stop: &CancellationToken,
    heard: &CancellationToken,
) -> ProbeTurn {
    tokio::select! {
        biased;
        _ = stop.cancelled() => ProbeTurn::Stopped,
        _ = heard.cancelled() => ProbeTurn::Heard,
        permit = probes.clone().acquire_owned() => match permit {
            Ok(p) => ProbeTurn::Permit(p),
            Err(_) => ProbeTurn::Stopped,
        },
    }
}

/// Runs one session to its end.
pub async fn run(peripheral: Peripheral, ctx: SessionContext) -> Result<SessionEnd, BleError> {
    let probing = match &ctx.probe {
        Some(probes) => match probe_turn(probes, &ctx.stop, &ctx.heard).await {
            ProbeTurn::Permit(p) => Some(p),
            ProbeTurn::Heard => {
                tracing::debug!(device = %ctx.address, "heard while waiting to be probed: dialled as heard");
                None
            }
            ProbeTurn::Stopped => return Ok(SessionEnd::Stopped),
        },
        None => None,
    };
    // The semaphore queues waiters first come, first served: a fair queue for the
    // connection slots the controller can hold.
    let waiting = Waiting::new(&ctx.waiting);
    let slot = tokio::select! {
        _ = ctx.stop.cancelled() => return Ok(SessionEnd::Stopped),
        slot = ctx.slots.clone().acquire_owned() => match slot {
            Ok(s) => s,
            Err(_) => return Ok(SessionEnd::Stopped),
        },
    };
    drop(waiting);
    let result = connected(&peripheral, &ctx, probing).await;
    // When the round ends (carehub stopping, BlueZ going away) a working link
    // is left to BlueZ: the next round (or the next carehub) takes it over,
    // as a device BlueZ holds connected, and a continuous device is not cut
    // off by a restart. (This was first done because the virtual lab's
    // disconnects never reached the devices; that was the lab's emulated
    // controller, fixed since: hw-tests/README.md, "What the lab found". A
    // disconnect that does not reach the device stays possible on Linux 6.1
    // in a rare race, see docs/hardware.md.)
    let round_over = ctx.round.is_cancelled() && result.is_ok();
    if matches!(result, Ok(SessionEnd::Yielded)) {
        // The turn claimed when the session decided to yield (claim_turn),
        // given back after the slot has gone on.
        let _turn = Turn(&ctx.yielding);
        // The slot goes on only once the link is down, so that the
        // controller never holds more links than slots.
        if !round_over && !let_go(&peripheral).await {
            tracing::warn!(device = %ctx.address, wait_s = YIELD_DISCONNECT_WAIT.as_secs(), "yielded link not reported down in time; giving its slot on all the same");
        }
        drop(slot);
    } else if !round_over && (ctx.stop.is_cancelled() || result.is_err()) {
        // Leave no half-open link behind; the device may already be gone.
        let _ = tokio::time::timeout(DISCONNECT_WAIT, peripheral.disconnect()).await;
    }
    result
}

/// Disconnects and waits until BlueZ reports the link down (at most
/// [`YIELD_DISCONNECT_WAIT`]); false when it was not reported down in time.
async fn let_go(peripheral: &Peripheral) -> bool {
    let down = async {
        // A failed Disconnect (the device left already) is answered by the
        // link state below.
        let _ = peripheral.disconnect().await;
        while peripheral.is_connected().await.unwrap_or(false) {
            tokio::time::sleep(LINK_DOWN_POLL).await;
        }
    };
    tokio::time::timeout(YIELD_DISCONNECT_WAIT, down)
        .await
        .is_ok()
}

async fn step<T>(
    what: &'static str,
    limit: Duration,
    stop: &CancellationToken,
    f: impl Future<Output = btleplug::Result<T>>,
) -> Result<Option<T>, BleError> {
    tokio::select! {
        _ = stop.cancelled() => Ok(None),
        r = tokio::time::timeout(limit, f) => match r {
            Ok(v) => Ok(Some(v?)),
            Err(_) => Err(BleError::Timeout(what)),
        },
    }
}

async fn connected(
    peripheral: &Peripheral,
    ctx: &SessionContext,
    probing: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<SessionEnd, BleError> {
    let limit = ctx.connect_timeout;
    let holding_since = tokio::time::Instant::now();
    // The value stream first, before the link is up: BlueZ restores the
    // subscriptions of a bonded device on reconnection by itself, and a
    // spot-check device then indicates what it stored at once, before this
    // session has discovered or subscribed anything (the virtual lab's
    // current_time_set lost a thermometer's temperature that way).
    let Some(mut values) = step(
        "notification stream",
        limit,
        &ctx.stop,
        peripheral.notifications(),
    )
    .await?
    else {
        return Ok(SessionEnd::Stopped);
    };
    let result = set_up_and_serve(peripheral, ctx, &mut values, holding_since, probing).await;
    if result.is_err() {
        // A step that failed (BlueZ answered "In Progress" to a subscription
        // it was restoring itself) must not lose what already arrived.
        drain(&mut values, ctx).await;
    }
    result
}

/// The rest of a session, on a value stream opened before connecting.
async fn set_up_and_serve(
    peripheral: &Peripheral,
    ctx: &SessionContext,
    values: &mut (impl futures_util::Stream<Item = ValueNotification> + Unpin),
    holding_since: tokio::time::Instant,
    probing: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<SessionEnd, BleError> {
    let limit = ctx.connect_timeout;
    // A device BlueZ already holds connected (at start-up, or after a round
    // restart) is used as it is: Connect would fail with AlreadyConnected.
    let already = peripheral.is_connected().await.unwrap_or(false);
    // A probe gets the short reach time-out; a device heard (even one heard
    // while its probe waited) the whole connect time-out.
    let reach = if probing.is_some() {
        ctx.reach_timeout
    } else {
        ctx.connect_timeout
    };
    if !already
        && step("connect", reach, &ctx.stop, peripheral.connect())
            .await
            .map_err(BleError::unreachable)?
            .is_none()
    {
        return Ok(drain(values, ctx).await);
    }
    // Reached (or failed above): the next probe may go.
    drop(probing);
    if step(
        "service discovery",
        limit,
        &ctx.stop,
        peripheral.discover_services(),
    )
    .await?
    .is_none()
    {
        return Ok(drain(values, ctx).await);
    }
    let characteristics = peripheral.characteristics();
    // The clock first: a spot-check device hangs up soon after it has handed
    // over what it stored, which the subscriptions below start.
    if let Some(clock) = characteristics.iter().find(|c| {
        c.uuid == uuid16(CURRENT_TIME)
            && c.properties
                .intersects(CharPropFlags::WRITE | CharPropFlags::WRITE_WITHOUT_RESPONSE)
    }) {
        // Best effort: a clock not set is not a failed session.
        match set_clock(peripheral, clock, ctx).await {
            Ok(Some(())) => {}
            Ok(None) => return Ok(drain(values, ctx).await),
            Err(e) => tracing::warn!(device = %ctx.address, error = %e, "device clock not set"),
        }
    }
    let mut subscribed = 0;
    for c in characteristics.iter().filter(|c| is_measurement(c)) {
        if step("subscribe", limit, &ctx.stop, peripheral.subscribe(c))
            .await?
            .is_none()
        {
            return Ok(drain(values, ctx).await);
        }
        subscribed += 1;
    }
    let racp = characteristics.iter().find(|c| {
        c.uuid == uuid16(RACP)
            && c.properties.contains(CharPropFlags::INDICATE)
            && c.properties.contains(CharPropFlags::WRITE)
    });
    if let Some(racp) = racp {
        // The Glucose Profile: measurement, context and RACP indications on
        // before the first request, so that no record is sent to nobody.
        let context = characteristics.iter().find(|c| {
            c.uuid == uuid16(GLUCOSE_CONTEXT) && c.properties.contains(CharPropFlags::NOTIFY)
        });
        for c in context.into_iter().chain([racp]) {
            if step("subscribe", limit, &ctx.stop, peripheral.subscribe(c))
                .await?
                .is_none()
            {
                return Ok(drain(values, ctx).await);
            }
        }
    }
    if let Some(battery) = characteristics.iter().find(|c| {
        c.uuid == uuid16(gatt::BATTERY_LEVEL) && c.properties.contains(CharPropFlags::READ)
    }) {
        // A failed battery read is not a failed session: measurements matter more.
        match step("battery read", limit, &ctx.stop, peripheral.read(battery)).await {
            Ok(Some(value)) => {
                if !send(ctx, battery.uuid, value).await {
                    return Ok(drain(values, ctx).await);
                }
            }
            Ok(None) => return Ok(drain(values, ctx).await),
            Err(e) => tracing::warn!(device = %ctx.address, error = %e, "battery level not read"),
        }
    }
    if subscribed == 0 {
        return Err(BleError::NothingToSubscribe);
    }
    tracing::info!(device = %ctx.address, characteristics = subscribed, "gatt session up");
    let mut exchange = None;
    if let Some(racp) = racp {
        let ex = RacpExchange::start(ctx.racp.last(ctx.address), ctx.racp.pending(ctx.address));
        if ask_meter(peripheral, racp, ctx, &ex).await?.is_none() {
            return Ok(drain(values, ctx).await);
        }
        exchange = Some(ex);
    }

    let mut link_check = tokio::time::interval(LINK_CHECK);
    link_check.reset();
    loop {
        tokio::select! {
            // Values first: a spot-check device's last indication and its
            // disconnect arrive together, and the value must not be dropped.
            biased;
            v = values.next() => match v {
                Some(n) => {
                    if let (Some(racp), Some(ex)) = (racp, exchange.as_mut()) {
                        match racp_step(ex, ctx, &n) {
                            RacpStep::Withhold => continue,
                            RacpStep::Pass => {}
                            RacpStep::Ask => {
                                racp_answered(ctx.address, &n.value);
                                if ask_meter(peripheral, racp, ctx, ex).await?.is_none() {
                                    return Ok(drain(values, ctx).await);
                                }
                                continue;
                            }
                        }
                    }
                    if !forward(ctx, n).await {
                        return Ok(SessionEnd::Stopped);
                    }
                }
                None => return Ok(SessionEnd::Disconnected),
            },
            _ = ctx.stop.cancelled() => return Ok(SessionEnd::Disconnected),
            _ = link_check.tick() => {
                if !peripheral.is_connected().await.unwrap_or(false) {
                    return Ok(SessionEnd::Disconnected);
                }
                let waiting = ctx.waiting.load(Ordering::Relaxed);
                if holding_since.elapsed() >= SLOT_SHARE && claim_turn(&ctx.yielding, waiting) {
                    tracing::info!(device = %ctx.address, waiting, "devices wait for a connection slot: giving this one up for a turn");
                    return Ok(SessionEnd::Yielded);
                }
            }
        }
    }
}

/// What a value means to the session's RACP exchange.
enum RacpStep {
    /// Pass it on as usual.
    Pass,
    /// A record not to pass on (the meter's last record, which comes again
    /// with all the others).
    Withhold,
    /// The meter answered and is to be asked the exchange's next question.
    Ask,
}

/// Feeds one value to the RACP exchange; a question decided and not yet
/// answered is left in [`RacpProgress`] for the next session, should the
/// meter hang up first.
fn racp_step(ex: &mut RacpExchange, ctx: &SessionContext, n: &ValueNotification) -> RacpStep {
    if n.uuid == uuid16(gatt::GLUCOSE_MEASUREMENT) {
        let record = crate::sensor::glucose_record(&Notification {
            address: ctx.address,
            characteristic: n.uuid,
            value: n.value.clone(),
        });
        if let Some((r, key)) = record {
            let filed = ctx.racp.judge(ctx.address, r, key) == Verdict::Repeat;
            match ex.record(r.sequence, filed) {
                RecordStep::Pass => {}
                RecordStep::Withhold => return RacpStep::Withhold,
                RecordStep::WentBack => {
                    tracing::warn!(
                        device = %ctx.address,
                        record = r.sequence,
                        filed_up_to = ?ex.saved(),
                        "the meter's record numbering went back (its last record is below the last one filed, or its record at that number is another one): memory cleared, reset or wrapped; asking for all its records"
                    );
                    // Ingest takes its records up to that number for the new
                    // numbering's, whatever their clock says (H35).
                    ctx.racp.went_back(ctx.address, r.sequence);
                    return RacpStep::Withhold;
                }
            }
        }
        return RacpStep::Pass;
    }
    if n.uuid != uuid16(RACP) {
        return RacpStep::Pass;
    }
    let Some(answer) = RacpAnswer::parse(&n.value) else {
        return RacpStep::Pass;
    };
    let next = ex.answered(answer);
    ctx.racp
        .set_pending(ctx.address, next.map(|q| (q, ex.saved())));
    match next {
        Some(_) => RacpStep::Ask,
        None => RacpStep::Pass,
    }
}

/// Writes the exchange's question to the meter's RACP. `Ok(None)`: the
/// session was stopped.
async fn ask_meter(
    peripheral: &Peripheral,
    racp: &Characteristic,
    ctx: &SessionContext,
    ex: &RacpExchange,
) -> Result<Option<()>, BleError> {
    let asked = ex.asked();
    let what = match asked {
        RacpQuery::All => "asking the meter for all its stored records (RACP)",
        RacpQuery::From(_) => "asking the meter for its records from the last one filed on (RACP)",
        RacpQuery::Last => "asking the meter for its last record (RACP)",
    };
    tracing::info!(device = %ctx.address, question = ?asked, filed_up_to = ?ex.saved(), "{what}");
    step(
        "RACP request",
        ctx.connect_timeout,
        &ctx.stop,
        peripheral.write(racp, &asked.bytes(), WriteType::WithResponse),
    )
    .await
}

/// Passes one value on (RACP answers are logged, glucose context is not a
/// reading); false when the pipeline has closed.
async fn forward(ctx: &SessionContext, n: ValueNotification) -> bool {
    if n.uuid == uuid16(RACP) {
        racp_answered(ctx.address, &n.value);
        return true;
    }
    // Context records carry no reading of their own.
    if n.uuid == uuid16(GLUCOSE_CONTEXT) {
        return true;
    }
    // Ingest notes a glucose record as filed once it has handed it to the
    // store (RacpProgress): a record lost on the way is asked for again.
    send(ctx, n.uuid, n.value).await
}

/// A session stopped while it was still setting up (the device hung up, or
/// the gateway stopped): values already received are passed on all the same.
async fn drain(
    values: &mut (impl futures_util::Stream<Item = ValueNotification> + Unpin),
    ctx: &SessionContext,
) -> SessionEnd {
    while let Some(Some(n)) = values.next().now_or_never() {
        if !forward(ctx, n).await {
            break;
        }
    }
    SessionEnd::Stopped
}

/// Writes the site's civil time to the device's Current Time, when the
/// gateway's own clock is synchronised. `Ok(None)`: the session was stopped.
async fn set_clock(
    peripheral: &Peripheral,
    clock: &Characteristic,
    ctx: &SessionContext,
) -> Result<Option<()>, BleError> {
    if !(ctx.clock_synchronised)() {
        tracing::info!(device = %ctx.address, "gateway clock not synchronised: device clock left alone");
        return Ok(Some(()));
    }
    let now = Timestamp::now();
    let Some(value) = current_time_value(&ctx.zone, now) else {
        return Ok(Some(()));
    };
    let kind = if clock.properties.contains(CharPropFlags::WRITE) {
        WriteType::WithResponse
    } else {
        WriteType::WithoutResponse
    };
    let done = step(
        "current time write",
        ctx.connect_timeout,
        &ctx.stop,
        peripheral.write(clock, &value, kind),
    )
    .await?;
    if done.is_some() {
        tracing::info!(device = %ctx.address, time = %ctx.zone.date_time(now), zone = ctx.zone.name(), "device clock set");
    }
    Ok(done)
}

/// Logs the meter's answer to a RACP request.
fn racp_answered(address: DeviceAddress, value: &[u8]) {
    match RacpAnswer::parse(value) {
        Some(RacpAnswer::Success) => {
            tracing::info!(device = %address, "meter sent its stored records (RACP success)");
        }
        Some(RacpAnswer::NoRecords) => {
            tracing::info!(device = %address, "meter has no records that match (RACP)");
        }
        _ => {
            tracing::warn!(device = %address, answer = %hex(value), "unexpected RACP answer");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_measurement(c: &Characteristic) -> bool {
    short_uuid(&c.uuid).is_some_and(|s| MEASUREMENTS.contains(&s))
        && c.properties
            .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
}

/// Hands one value to the pipeline with the moment it arrived; false when the
/// pipeline has closed.
async fn send(ctx: &SessionContext, characteristic: Uuid, value: Vec<u8>) -> bool {
    let frame = RawFrame {
        frame: Frame::Notification(Notification {
            address: ctx.address,
            characteristic,
            value,
        }),
        received_at: Timestamp::now(),
    };
    ctx.frames.send(frame).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device heard while its probe waits behind another stops waiting at
    /// once, with no permit (so the probe queue is not held); one not heard
    /// waits its turn; a stopped session stops waiting.
    #[tokio::test]
    async fn a_probe_heard_while_it_waits_goes_at_once_without_a_permit() {
        let probes = Arc::new(Semaphore::new(1));
        let first = probes.clone().acquire_owned().await.unwrap();
        let stop = CancellationToken::new();
        let heard = CancellationToken::new();
        let waiter = tokio::spawn({
            let (probes, stop, heard) = (probes.clone(), stop.clone(), heard.clone());
            async move { probe_turn(&probes, &stop, &heard).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "went before its turn");
        heard.cancel();
        assert!(matches!(waiter.await.unwrap(), ProbeTurn::Heard));
        assert_eq!(probes.available_permits(), 0, "the first probe still holds");

        // Not heard: its turn comes when the first probe is done.
        let quiet = CancellationToken::new();
        let waiter = tokio::spawn({
            let (probes, stop, quiet) = (probes.clone(), stop.clone(), quiet.clone());
            async move { probe_turn(&probes, &stop, &quiet).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        let ProbeTurn::Permit(p) = waiter.await.unwrap() else {
            panic!("no permit")
        };
        // Stopped while waiting.
        let waiter = tokio::spawn({
            let (probes, stop, quiet) = (probes.clone(), stop.clone(), quiet.clone());
            async move { probe_turn(&probes, &stop, &quiet).await }
        });
        tokio::task::yield_now().await;
        stop.cancel();
        assert!(matches!(waiter.await.unwrap(), ProbeTurn::Stopped));
        drop(p);
    }

    /// One device waiting takes one slot, not every slot held past the
    /// share; two waiting take two; a turn given back can be claimed again.
    #[test]
    fn one_waiting_device_makes_one_session_give_its_slot_up() {
        let yielding = AtomicUsize::new(0);
        assert!(claim_turn(&yielding, 1));
        assert!(
            !claim_turn(&yielding, 1),
            "a second session gave its slot up for the same waiting device"
        );
        drop(Turn(&yielding));
        assert!(claim_turn(&yielding, 1));
        let two = AtomicUsize::new(0);
        assert!(claim_turn(&two, 2) && claim_turn(&two, 2));
        assert!(!claim_turn(&two, 2));
        assert!(!claim_turn(&AtomicUsize::new(0), 0), "nobody waits");
    }

    #[test]
    fn kinds_follow_the_first_known_service() {
        for (services, expected) in [
            (
                vec![uuid16(0x180F), uuid16(0x180D)],
                DeviceKind::HeartRateMonitor,
            ),
            (vec![uuid16(0x1810)], DeviceKind::BloodPressureMonitor),
            (vec![uuid16(0x1822)], DeviceKind::PulseOximeter),
            (vec![uuid16(0xFCD2)], DeviceKind::RoomSensor),
            (vec![uuid16(0x180F)], DeviceKind::Unknown),
            (vec![], DeviceKind::Unknown),
        ] {
            assert_eq!(kind_from_services(&services), expected, "{services:?}");
        }
    }

    #[test]
    fn racp_asks_for_all_records_then_only_newer_ones() {
        let first = |saved| RacpExchange::start(saved, None).asked();
        assert_eq!(first(None).bytes(), vec![0x01, 0x01]);
        // From the last number filed on, that record included.
        assert_eq!(first(Some(7)).bytes(), vec![0x01, 0x03, 0x01, 7, 0]);
        assert_eq!(
            first(Some(0x0200)).bytes(),
            vec![0x01, 0x03, 0x01, 0x00, 0x02]
        );
        assert_eq!(first(Some(u16::MAX)), RacpQuery::From(u16::MAX));
        assert_eq!(RacpQuery::Last.bytes(), vec![0x01, 0x06]);
        // A question an earlier session could not ask goes first.
        let ex = RacpExchange::start(Some(3), Some((RacpQuery::All, Some(9))));
        assert_eq!((ex.asked(), ex.saved()), (RacpQuery::All, Some(9)));
        assert_eq!(RacpAnswer::parse(&[6, 0, 1, 1]), Some(RacpAnswer::Success));
        assert_eq!(
            RacpAnswer::parse(&[6, 0, 1, 6]),
            Some(RacpAnswer::NoRecords)
        );
        assert_eq!(RacpAnswer::parse(&[6, 0, 1, 2]), Some(RacpAnswer::Other(2)));
        assert_eq!(RacpAnswer::parse(&[6, 0, 4, 1]), None);
        assert_eq!(RacpAnswer::parse(&[5, 0, 1]), None);
    }

    /// A question, the records sent in answer (what the session does with
    /// each), and the next question.
    type Step = (RacpQuery, Vec<(u16, RecordStep)>, Option<RacpQuery>);

    /// One exchange, step by step: the records the meter sends, its answer,
    /// and the next question. `same_meter`: the records it sends numbered at
    /// or below the last filed are the ones filed (else a new numbering's).
    fn exchange_of(
        saved: Option<u16>,
        same_meter: bool,
        steps: &[(&[u16], RacpAnswer)],
    ) -> Vec<Step> {
        let mut ex = RacpExchange::start(saved, None);
        let mut out = Vec::new();
        for (records, answer) in steps {
            let asked = ex.asked();
            let passed = records
                .iter()
                .map(|n| {
                    let filed = same_meter && saved.is_some_and(|s| *n <= s);
                    (*n, ex.record(*n, filed))
                })
                .collect();
            out.push((asked, passed, ex.answered(*answer)));
        }
        out
    }

    fn exchange(saved: Option<u16>, steps: &[(&[u16], RacpAnswer)]) -> Vec<Step> {
        exchange_of(saved, true, steps)
    }

    /// H35: the meter is asked from the last number filed on; its record at
    /// that number shows whether the numbering goes on. A meter whose
    /// numbering started again has none there, or another record there, or
    /// a last record below: it is asked for all its records. A meter with
    /// nothing new is asked no more than its last record.
    #[test]
    fn a_meter_whose_numbering_went_back_is_asked_for_all_its_records() {
        use RacpAnswer::*;
        use RacpQuery::*;
        use RecordStep::*;
        // Memory cleared: filed up to 10, the meter now holds 1 to 3.
        assert_eq!(
            exchange(
                Some(10),
                &[(&[], NoRecords), (&[3], Success), (&[1, 2, 3], Success)]
            ),
            vec![
                (From(10), vec![], Some(Last)),
                (Last, vec![(3, WentBack)], Some(All)),
                (All, vec![(1, Pass), (2, Pass), (3, Pass)], None),
            ]
        );
        // Nothing new: the record filed is still there, and is its last.
        assert_eq!(
            exchange(Some(10), &[(&[10], Success), (&[10], Success)]),
            vec![
                (From(10), vec![(10, Withhold)], Some(Last)),
                (Last, vec![(10, Pass)], None)
            ]
        );
        // "Success" with nothing sent counts as nothing from the number on.
        assert_eq!(
            exchange(Some(10), &[(&[], Success), (&[2], Success)]),
            vec![
                (From(10), vec![], Some(Last)),
                (Last, vec![(2, WentBack)], Some(All))
            ]
        );
        // Wrapped: filed up to 65,535, which it still holds; its last is 1.
        assert_eq!(
            exchange(Some(u16::MAX), &[(&[u16::MAX], Success), (&[1], Success)]),
            vec![
                (From(u16::MAX), vec![(u16::MAX, Withhold)], Some(Last)),
                (Last, vec![(1, WentBack)], Some(All))
            ]
        );
        // Renumbered up to the very number filed (10), another record 10:
        // the numbering went back all the same.
        assert_eq!(
            exchange_of(Some(10), false, &[(&[10], Success), (&[1, 10], Success)]),
            vec![
                (From(10), vec![(10, WentBack)], Some(All)),
                (All, vec![(1, Pass), (10, Pass)], None),
            ]
        );
        // Renumbered past it: its records 10 to 12 are a new numbering's,
        // and 1 to 9 too: all are asked for, the rest of the answer held.
        assert_eq!(
            exchange_of(Some(10), false, &[(&[10, 11, 12], Success)]),
            vec![(
                From(10),
                vec![(10, WentBack), (11, Withhold), (12, Withhold)],
                Some(All)
            )]
        );
        // New records after the last filed: nothing more to ask.
        assert_eq!(
            exchange(Some(10), &[(&[10, 11, 12], Success)]),
            vec![(From(10), vec![(10, Withhold), (11, Pass), (12, Pass)], None)]
        );
        // A careless meter sends everything: what is below the number asked
        // from is not passed on (filed, or found by the number or the last).
        assert_eq!(
            exchange(Some(3), &[(&[1, 2, 3, 4], Success)]),
            vec![(
                From(3),
                vec![(1, Withhold), (2, Withhold), (3, Withhold), (4, Pass)],
                None
            )]
        );
        // An empty meter, a refused question: nothing more.
        assert_eq!(
            exchange(Some(10), &[(&[], NoRecords), (&[], NoRecords)]),
            vec![(From(10), vec![], Some(Last)), (Last, vec![], None)]
        );
        assert_eq!(
            exchange(Some(10), &[(&[], Other(2))]),
            vec![(From(10), vec![], None)]
        );
        assert_eq!(
            exchange(None, &[(&[], NoRecords)]),
            vec![(All, vec![], None)]
        );
    }

    /// The exchange always ends: at most three questions in a session, even
    /// for a meter that answers every one with nothing.
    #[test]
    fn a_racp_exchange_asks_at_most_three_questions() {
        let mut ex = RacpExchange::start(Some(10), None);
        let mut asked = 1;
        for _ in 0..10 {
            ex.record(1, false);
            if ex.answered(RacpAnswer::Success).is_some() {
                asked += 1;
            }
            if ex.answered(RacpAnswer::NoRecords).is_some() {
                asked += 1;
            }
        }
        assert!(asked <= 3, "{asked}");
    }

    #[test]
    fn current_time_is_the_site_civil_time() {
        let london = SiteZone::named("Europe/London").unwrap();
        // 2026-07-01T11:30:15.500Z is 12:30:15 BST, a Wednesday.
        let summer = Timestamp::from_unix_ms(1_782_905_415_500);
        assert_eq!(
            current_time_value(&london, summer),
            Some(vec![0xEA, 0x07, 7, 1, 12, 30, 15, 3, 128, 0x02])
        );
        // 2026-12-03T09:00:00Z is 09:00 GMT, a Thursday.
        let winter = Timestamp::from_unix_ms(1_796_288_400_000);
        assert_eq!(
            current_time_value(&london, winter),
            Some(vec![0xEA, 0x07, 12, 3, 9, 0, 0, 4, 0, 0x02])
        );
    }

    #[test]
    fn health_devices_are_recognised_by_their_services() {
        for (services, expected) in [
            (vec![uuid16(0x180D)], true),
            (vec![uuid16(0x180F), uuid16(0x1810)], true),
            (vec![uuid16(0x1808)], true),
            (vec![uuid16(0xFCD2)], false),
            (vec![uuid16(0x180F)], false),
            (vec![], false),
            (vec![Uuid::from_u128(0x180D)], false),
        ] {
            assert_eq!(is_health_device(&services), expected, "{services:?}");
        }
    }
}
