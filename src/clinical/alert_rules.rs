//! Alert rules, pure: given a snapshot of what the gateway knows now, the set of
//! alert *causes* that hold, and the causes that cannot be judged now. No IO and
//! no clock (the caller passes `now`).
//!
//! The lifecycle (raise once, latch clinical alerts until acknowledged, clear
//! technical ones after the minimum hold, announce again) lives in the store
//! (`store::alert_book`); this module only answers "which causes hold right now".
//! Each cause has a stable key (subject + rule), so a cause that keeps holding
//! maps to the same open alert and never to a storm of new ones.
//!
//! A cause that cannot be judged is not a cause that has cleared: a resident
//! with no current score (every value older than the window), or a parameter
//! with no current plausible value, is *undetermined*, and the book leaves its
//! alerts exactly as they are.

use std::time::Duration;

use super::news2::{Band, Parameter};
use super::{Freshness, VitalSample, chart_value, freshness, news2_from_readings};
use crate::model::{ReadingId, Timestamp};

/// How urgent an alert is, in the order staff should act on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The gateway needs attention (battery, disk, certificate, backlog).
    Warning,
    /// A resident may be deteriorating: urgent ward-based response.
    Urgent,
    /// NEWS2 7 or more: emergency response.
    Emergency,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Urgent => "urgent",
            Severity::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "warning" => Some(Severity::Warning),
            "urgent" => Some(Severity::Urgent),
            "emergency" => Some(Severity::Emergency),
            _ => None,
        }
    }
}

/// The two kinds of alert, which follow different lifecycles (IEC 60601-1-8's
/// latching and non-latching alarm signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertClass {
    /// About a resident (a NEWS2 band, a single parameter scoring 3, a nurse's
    /// limit): latches. Once raised it stays until a member of staff has
    /// acknowledged it, even when its cause has cleared meanwhile.
    Clinical,
    /// About the equipment (a sensor silent, a battery, the backlog, the
    /// certificate, the disk, a device clock, a glucose meter renumbered): clears itself once its cause
    /// has stopped holding for the minimum hold, and the clearing is recorded.
    Technical,
}

impl AlertClass {
    /// The class of a rule, as stored in the alert book.
    pub fn of_rule(rule: &str) -> AlertClass {
        match rule {
            "news2" | "news2-single-3" | "threshold" => AlertClass::Clinical,
            _ => AlertClass::Technical,
        }
    }
}

/// Per-resident limits set by a nurse. A value at or beyond a limit raises an
/// alert. The defaults are the chart's 3-point boundaries (scale 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// SpO₂ at or below this, in %.
    pub spo2_low: f64,
    /// Pulse at or below this, per minute.
    pub pulse_low: f64,
    /// Pulse at or above this, per minute.
    pub pulse_high: f64,
    /// Systolic pressure at or below this, in mmHg.
    pub systolic_low: f64,
    /// Systolic pressure at or above this, in mmHg.
    pub systolic_high: f64,
    /// Temperature at or below this, in °C.
    pub temperature_low: f64,
    /// Temperature at or above this, in °C (the chart scores 2 from 39.1).
    pub temperature_high: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            spo2_low: 91.0,
            pulse_low: 40.0,
            pulse_high: 131.0,
            systolic_low: 90.0,
            systolic_high: 220.0,
            temperature_low: 35.0,
            temperature_high: 39.1,
        }
    }
}

/// What the rules know of one resident.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidentState {
    pub id: i64,
    pub display_name: String,
    /// The room, named beside the resident in alert texts.
    pub room: String,
    /// The newest sensor value of each quantity.
    pub vitals: Vec<VitalSample>,
    /// A nurse's override; `None` means the chart defaults, which the single-3
    /// rule already covers, so no separate threshold alert is raised.
    pub thresholds: Option<Thresholds>,
    /// Scale 2 only where a nurse has set it.
    pub spo2_scale: super::news2::Spo2Scale,
}

/// What the rules know of one assigned device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Printable address, e.g. `A4:C1:38:00:00:01`.
    pub address: String,
    pub resident_id: Option<i64>,
    pub last_seen: Option<Timestamp>,
    /// When it was assigned to its resident (its current assignment).
    pub assigned_at: Option<Timestamp>,
    pub battery_percent: Option<u8>,
    /// A glucose meter whose record numbering started again (memory cleared,
    /// reset, the number wrapped): when the gateway found it, and the number
    /// it started again at (hazard H35).
    pub meter_renumbered: Option<(Timestamp, u16)>,
}

/// How long `device:…/meter-renumbered` stays raised after a glucose meter's
/// record numbering started again: a day, so that every shift sees it. The
/// pairing record keeps the line after that.
pub const METER_RENUMBERED_ALERT_FOR: Duration = Duration::from_secs(86_400);

/// What the rules know of the gateway itself.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GatewayState {
    /// Age of the oldest reading not yet acknowledged by the cloud.
    pub backlog_age: Option<Duration>,
    /// Days until the client certificate expires (negative once expired).
    pub cert_days_left: Option<i64>,
    /// Free bytes on the data partition.
    pub disk_free_bytes: Option<u64>,
    /// How long the staff pages have not answered the gateway's own probe.
    pub web_unanswered_for: Option<Duration>,
    /// Readings the uplink holds because the broker refused them again and
    /// again (MQTT 5 reason codes).
    pub uplink_held_readings: u64,
    /// When the database file was last found damaged (while running, or by
    /// the start-up check), from the record kept in the fresh file.
    pub database_damaged_at: Option<Timestamp>,
}

/// How long `gateway/database` stays raised after the database was found
/// damaged: long enough for an engineer to be called and the cloud to hear of
/// it across a weekend; the Gateway page keeps the record after that.
pub const DATABASE_DAMAGE_ALERT_FOR: Duration = Duration::from_secs(7 * 86_400);

/// The staff pages not answering for longer than this raise `gateway/web`: the
/// web stage mends itself and never restarts the daemon, so someone must know
/// (the alert goes to the cloud with the others).
pub const WEB_UNANSWERED_AFTER: Duration = Duration::from_secs(60);

/// Everything the rules look at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub residents: Vec<ResidentState>,
    pub devices: Vec<DeviceState>,
    pub gateway: GatewayState,
    /// When the gateway (this process) started: no sensor is silent for longer
    /// than the gateway has been listening.
    pub started_at: Option<Timestamp>,
}

/// The configurable limits of the non-clinical rules, from `[alerts]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// The care home's zone: times in alert texts are its wall-clock times.
    pub zone: crate::model::SiteZone,
    /// Readings older than this relative to each other or to now are stale.
    pub freshness_window: Duration,
    /// An assigned sensor not heard for longer than this is silent.
    pub sensor_silent_after: Duration,
    /// A battery at or below this percentage is low.
    pub battery_low_percent: u8,
    /// An uplink backlog older than this needs attention.
    pub backlog_max_age: Duration,
    /// A certificate with this many days or fewer left is close to expiry.
    pub cert_warn_days: i64,
    /// Free disk at or below this is low.
    pub disk_low_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            zone: crate::model::SiteZone::utc(),
            freshness_window: Duration::from_secs(3600),
            sensor_silent_after: Duration::from_secs(4 * 3600),
            battery_low_percent: 15,
            backlog_max_age: Duration::from_secs(6 * 3600),
            cert_warn_days: 14,
            disk_low_bytes: 256 * 1024 * 1024,
        }
    }
}

/// How alerts live once raised, from `[alerts]`; the book applies it.
///
/// The boundary rule is a minimum hold, not a hysteresis band: a cause counts
/// as cleared only after it has not held for `clear_hold` without a break, and
/// holding again at any moment restarts that. A pulse moving between 130 and 131
/// therefore raises one alert and keeps it, never a raise and a clear per reading;
/// a hold is the same rule for every kind of cause (a band, a limit, a battery),
/// where a band would need a margin per parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// A cause must stay away this long before its alert counts as cleared.
    pub clear_hold: Duration,
    /// An emergency alert nobody has acknowledged is announced again (page and
    /// MQTT) each time this long has passed since it was last announced.
    pub reannounce_after: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            clear_hold: Duration::from_secs(10 * 60),
            reannounce_after: Duration::from_secs(15 * 60),
        }
    }
}

/// Why an alert is open. The `key` is unique per subject and rule (and NEWS2
/// band): while the cause holds, it is the same alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// E.g. `resident:3/news2:high`, `device:A4:C1:38:00:00:01/battery`, `gateway/disk`.
    pub key: String,
    pub resident_id: Option<i64>,
    /// E.g. `news2`, `news2-single-3`, `threshold`, `sensor-silent`.
    pub rule: &'static str,
    pub severity: Severity,
    /// For staff: what holds, with the value, its unit and its time.
    pub message: String,
    /// The NEWS2 aggregate, for NEWS2 causes.
    pub score: Option<u8>,
    /// The NEWS2 band or the severity, as the wire's `level`.
    pub level: &'static str,
    /// The score behind it is partial (`missing` says what it lacks).
    pub partial: bool,
    /// The NEWS2 parameters the score behind it lacks (or left out as implausible).
    pub missing: Vec<Parameter>,
    /// The parameter that scored 3 or crossed a nurse's limit.
    pub parameter: Option<Parameter>,
    /// The stored readings it was computed from.
    pub reading_ids: Vec<ReadingId>,
}

/// What the rules found: the causes that hold, and the keys of alerts that cannot
/// be judged now (left as they are: neither raised nor cleared).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation {
    /// The causes that hold at `now`, sorted by key, one per key.
    pub causes: Vec<Cause>,
    /// Key prefixes: an open alert whose key starts with one is undetermined.
    pub undetermined: Vec<String>,
}

impl Evaluation {
    /// Whether the alert with this key can be judged now.
    pub fn is_undetermined(&self, key: &str) -> bool {
        self.undetermined
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }
}

/// The causes that hold at `now` and those that cannot be judged.
pub fn evaluate(snapshot: &Snapshot, limits: &Limits, now: Timestamp) -> Evaluation {
    let mut out = Vec::new();
    let mut undetermined = Vec::new();
    for r in &snapshot.residents {
        resident_causes(r, limits, now, &mut out, &mut undetermined);
        clock_causes(r, &mut out);
    }
    for d in &snapshot.devices {
        device_causes(d, snapshot.started_at, limits, now, &mut out);
    }
    gateway_causes(&snapshot.gateway, limits, now, &mut out);
    out.sort_by(|a, b| a.key.cmp(&b.key));
    // One cause per key: a pulse from an oximeter and from a chest strap both
    // crossing a limit are one alert, not two (the first, by key order, stays).
    out.dedup_by(|later, first| later.key == first.key);
    undetermined.sort();
    undetermined.dedup();
    Evaluation {
        causes: out,
        undetermined,
    }
}

fn resident_causes(
    r: &ResidentState,
    limits: &Limits,
    now: Timestamp,
    out: &mut Vec<Cause>,
    undetermined: &mut Vec<String>,
) {
    let subject = format!("resident:{}", r.id);
    // No current score says nothing about the resident now: no clinical alert
    // is raised from it, and none is taken as cleared (the silent-sensor rule
    // covers the gap).
    let s = match news2_from_readings(&r.vitals, r.spo2_scale, now, limits.freshness_window) {
        Some(s) if !s.stale => s,
        _ => {
            undetermined.push(format!("{subject}/"));
            return;
        }
    };
    // A parameter without a current plausible value cannot be judged: its
    // single-3 and limit alerts stay as they are.
    for p in &s.score.missing {
        undetermined.push(format!("{subject}/news2-single-3:{}", p.as_str()));
        undetermined.push(format!("{subject}/threshold:{}", p.as_str()));
    }
    let who = who(r);
    let partial = if s.score.partial() {
        " from incomplete observations"
    } else {
        ""
    };
    let clinical = |key: String, rule, severity: Severity, message, level, parameter| Cause {
        key,
        resident_id: Some(r.id),
        rule,
        severity,
        message,
        score: Some(s.score.total),
        level,
        partial: s.score.partial(),
        missing: s.score.missing.clone(),
        parameter,
        reading_ids: s.reading_ids.clone(),
    };
    if s.score.band >= Band::Medium {
        let emergency = s.score.band == Band::High;
        out.push(clinical(
            // The band is part of the key: medium rising to high raises a new
            // emergency alert, so an escalation is never hidden inside an alert
            // staff have already acknowledged.
            format!("{subject}/news2:{}", s.score.band.as_str()),
            "news2",
            if emergency {
                Severity::Emergency
            } else {
                Severity::Urgent
            },
            format!(
                "{who} — NEWS2 {}{partial}, {} risk, at {}",
                s.score.total,
                s.score.band.as_str(),
                limits.zone.clock(s.newest)
            ),
            s.score.band.as_str(),
            None,
        ));
    }
    for (p, points) in &s.score.components {
        if *points == 3 {
            out.push(clinical(
                format!("{subject}/news2-single-3:{}", p.as_str()),
                "news2-single-3",
                Severity::Urgent,
                match scored_value(r, *p, now, limits.freshness_window) {
                    Some((value, at)) => format!(
                        "{who} — {} {} (scores 3) at {}",
                        p.spoken(),
                        p.value_words(value),
                        limits.zone.clock(at)
                    ),
                    None => format!("{who} — {} scores 3", p.spoken()),
                },
                "low-medium",
                Some(*p),
            ));
        }
    }
    if let Some(t) = &r.thresholds {
        threshold_causes(r, t, limits, now, &subject, out);
    }
}

/// "Doreen Baptiste, Room 3": whom an alert is about, as staff find them.
fn who(r: &ResidentState) -> String {
    if r.room.trim().is_empty() {
        r.display_name.clone()
    } else {
        format!("{}, {}", r.display_name, r.room)
    }
}

/// The newest current value of NEWS2 parameter `p` (in the chart's unit) and
/// when it was taken: the value the score used for it.
fn scored_value(
    r: &ResidentState,
    p: Parameter,
    now: Timestamp,
    window: Duration,
) -> Option<(f64, Timestamp)> {
    r.vitals
        .iter()
        .filter(|v| freshness(v.taken_at, now, window) == Freshness::Current)
        .filter_map(|v| {
            let (param, value) = super::chart_value(v.quantity, v.unit, v.value.number()?)?;
            (param == p && p.plausible(value)).then_some((value, v.taken_at))
        })
        .max_by_key(|(_, at)| *at)
}

/// A device whose clock is ahead of the gateway beyond the tolerance: its times
/// are not used (the received time is), and staff are told to set its clock.
fn clock_causes(r: &ResidentState, out: &mut Vec<Cause>) {
    for v in &r.vitals {
        let (Some(ahead), Some(device)) = (v.clock_ahead(), v.device) else {
            continue;
        };
        let mut c = warning(
            format!("device:{device}/clock"),
            Some(r.id),
            "device-clock",
            format!(
                "sensor {device} clock is {} min ahead: check clock (its readings are timed on receipt)",
                ahead.as_secs().div_ceil(60)
            ),
        );
        c.reading_ids = v.reading_id.into_iter().collect();
        out.push(c);
    }
}

fn threshold_causes(
    r: &ResidentState,
    t: &Thresholds,
    limits: &Limits,
    now: Timestamp,
    subject: &str,
    out: &mut Vec<Cause>,
) {
    for v in &r.vitals {
        if freshness(v.taken_at, now, limits.freshness_window) != Freshness::Current {
            continue;
        }
        // A special value ("not a number") is never turned into a number.
        let Some(n) = v.value.number() else { continue };
        // The chart's parameter and unit: the one conversion (kPa, °F) in `clinical`.
        let Some((param, value)) = chart_value(v.quantity, v.unit, n) else {
            continue;
        };
        let (unit, low, high) = match param {
            Parameter::Spo2 => ("%", t.spo2_low, f64::INFINITY),
            Parameter::Pulse => ("/min", t.pulse_low, t.pulse_high),
            Parameter::Systolic => ("mmHg", t.systolic_low, t.systolic_high),
            Parameter::Temperature => ("°C", t.temperature_low, t.temperature_high),
            Parameter::RespRate | Parameter::Oxygen | Parameter::Consciousness => continue,
        };
        // An implausible value is a sensor fault, shown as such; it neither
        // raises nor clears a limit alert.
        if !param.plausible(value) {
            continue;
        }
        let side = if value <= low {
            "at or below"
        } else if value >= high {
            "at or above"
        } else {
            continue;
        };
        let limit = if value <= low { low } else { high };
        out.push(Cause {
            key: format!("{subject}/threshold:{}", param.as_str()),
            resident_id: Some(r.id),
            rule: "threshold",
            severity: Severity::Urgent,
            message: format!(
                "{} — {} {} at {} is {side} the resident's limit {limit:.1} {unit}",
                who(r),
                param.spoken(),
                param.value_words(value),
                limits.zone.clock(v.taken_at)
            ),
            score: None,
            level: Severity::Urgent.as_str(),
            partial: false,
            missing: Vec::new(),
            parameter: Some(param),
            reading_ids: v.reading_id.into_iter().collect(),
        });
    }
}

fn device_causes(
    d: &DeviceState,
    started_at: Option<Timestamp>,
    limits: &Limits,
    now: Timestamp,
    out: &mut Vec<Cause>,
) {
    // Only sensors assigned to a resident are expected to report.
    let Some(resident) = d.resident_id else {
        return;
    };
    let subject = format!("device:{}", d.address);
    // Silent only after `sensor_silent_after` with nothing heard, counted from
    // the latest of: last heard, assigned, the gateway's start. A sensor
    // registered a second ago, or not heard while the gateway was off, is not
    // silent yet.
    let since = [d.last_seen, d.assigned_at, started_at]
        .into_iter()
        .flatten()
        .max();
    let silent = match (d.last_seen, since) {
        (_, Some(t)) if t.age_at(now) <= limits.sensor_silent_after => None,
        (Some(t), _) => Some(format!(
            "last heard {} min ago",
            t.age_at(now).as_secs() / 60
        )),
        (None, Some(t)) => Some(format!(
            "not heard in the {} min since it was assigned or the gateway started",
            t.age_at(now).as_secs() / 60
        )),
        (None, None) => Some("never heard".to_owned()),
    };
    if let Some(what) = silent {
        out.push(warning(
            format!("{subject}/sensor-silent"),
            Some(resident),
            "sensor-silent",
            format!("sensor {} is silent: {what}", d.address),
        ));
    }
    if let Some(b) = d
        .battery_percent
        .filter(|b| *b <= limits.battery_low_percent)
    {
        out.push(warning(
            format!("{subject}/battery-low"),
            Some(resident),
            "battery-low",
            format!("sensor {} battery at {b} %", d.address),
        ));
    }
    // Its new records are filed (ingest's rule, H35); staff are told so that
    // someone checks the meter (its memory, its clock) and knows why its
    // numbers start again.
    if let Some((at, sequence)) = d
        .meter_renumbered
        .filter(|(at, _)| at.age_at(now) < METER_RENUMBERED_ALERT_FOR)
    {
        out.push(warning(
            format!("{subject}/meter-renumbered"),
            Some(resident),
            "meter-renumbered",
            format!(
                "glucose meter {}: {} (found at {})",
                d.address,
                crate::sensor::racp::renumbered_words(sequence),
                limits.zone.clock(at)
            ),
        ));
    }
}

fn gateway_causes(g: &GatewayState, limits: &Limits, now: Timestamp, out: &mut Vec<Cause>) {
    if let Some(at) = g
        .database_damaged_at
        .filter(|at| at.age_at(now) < DATABASE_DAMAGE_ALERT_FOR)
    {
        let mut cause = warning(
            "gateway/database".into(),
            None,
            "database-damaged",
            format!(
                "the gateway's database was found damaged at {}: it was replaced by a fresh one and what could be read was copied into it; the damaged file is kept. Call support (Gateway page)",
                at.to_rfc3339()
            ),
        );
        cause.severity = Severity::Urgent;
        cause.level = Severity::Urgent.as_str();
        out.push(cause);
    }
    if let Some(age) = g.backlog_age.filter(|a| *a > limits.backlog_max_age) {
        out.push(warning(
            "gateway/uplink-backlog".into(),
            None,
            "uplink-backlog",
            format!(
                "readings not delivered for {} min; check the internet link",
                age.as_secs() / 60
            ),
        ));
    }
    if let Some(days) = g.cert_days_left.filter(|d| *d <= limits.cert_warn_days) {
        let what = if days < 0 {
            "has expired".to_owned()
        } else {
            format!("expires in {days} days")
        };
        out.push(warning(
            "gateway/certificate".into(),
            None,
            "certificate-expiry",
            format!("the uplink certificate {what}"),
        ));
    }
    if let Some(for_) = g.web_unanswered_for.filter(|d| *d > WEB_UNANSWERED_AFTER) {
        out.push(warning(
            "gateway/web".into(),
            None,
            "web-unanswered",
            format!(
                "the staff pages have not answered for {} s; readings are still collected and sent",
                for_.as_secs()
            ),
        ));
    }
    if g.uplink_held_readings > 0 {
        out.push(warning(
            "gateway/uplink-held".into(),
            None,
            "uplink-refused",
            format!(
                "the cloud broker refuses {} readings again and again; they are kept on the gateway and not sent: check the broker's ACL for this gateway, then retry on the gateway page",
                g.uplink_held_readings
            ),
        ));
    }
    if let Some(free) = g.disk_free_bytes.filter(|f| *f <= limits.disk_low_bytes) {
        out.push(warning(
            "gateway/disk".into(),
            None,
            "disk-low",
            format!("only {} MB of disk free", free / (1024 * 1024)),
        ));
    }
}

fn warning(key: String, resident_id: Option<i64>, rule: &'static str, message: String) -> Cause {
    Cause {
        key,
        resident_id,
        rule,
        severity: Severity::Warning,
        message,
        score: None,
        level: Severity::Warning.as_str(),
        partial: false,
        missing: Vec::new(),
        parameter: None,
        reading_ids: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;
    use crate::model::{Quantity, Unit};

    const NOW: i64 = 100_000_000;

    fn ago(min: i64) -> Timestamp {
        Timestamp::from_unix_ms(NOW - min * 60_000)
    }

    fn v(quantity: Quantity, n: f64, unit: Unit, min_ago: i64) -> VitalSample {
        VitalSample {
            quantity,
            value: Value::Number(n),
            unit,
            taken_at: ago(min_ago),
            device_time: None,
            device: None,
            reading_id: None,
        }
    }

    fn resident(vitals: Vec<VitalSample>, thresholds: Option<Thresholds>) -> Snapshot {
        Snapshot {
            residents: vec![ResidentState {
                id: 1,
                display_name: "Ada".into(),
                room: "Room 1".into(),
                vitals,
                thresholds,
                spo2_scale: Default::default(),
            }],
            ..Default::default()
        }
    }

    /// The keys of the causes that hold, with their severity.
    fn check(snapshot: &Snapshot, expected: &[(&str, Severity)]) {
        let got: Vec<(String, Severity)> = evaluate(snapshot, &Limits::default(), ago(0))
            .causes
            .into_iter()
            .map(|c| (c.key, c.severity))
            .collect();
        let expected: Vec<(String, Severity)> =
            expected.iter().map(|(k, s)| (k.to_string(), *s)).collect();
        assert_eq!(got, expected);
    }

    use Quantity as Q;
    use Severity::*;
    use Unit as U;

    /// Issue 20: an alert text a carer can act on: who, where, what, the value
    /// with its unit, and when (site time), in words, not program names.
    #[test]
    fn alert_texts_name_resident_room_value_unit_and_time() {
        let message = |vitals: Vec<VitalSample>, thresholds| {
            evaluate(&resident(vitals, thresholds), &Limits::default(), ago(0))
                .causes
                .into_iter()
                .map(|c| c.message)
                .collect::<Vec<_>>()
        };
        // NOW is 03:46:40 UTC; one minute ago is 03:45.
        assert_eq!(
            message(vec![v(Q::Spo2, 91.0, U::Percent, 1)], None),
            ["Ada, Room 1 — oxygen saturation 91 % (scores 3) at 03:45"]
        );
        assert_eq!(
            message(
                vec![
                    v(Q::Spo2, 91.0, U::Percent, 1),
                    v(Q::PulseRate, 131.0, U::PerMinute, 2),
                    v(Q::BodyTemperature, 39.2, U::Celsius, 3),
                ],
                None
            ),
            [
                "Ada, Room 1 — pulse 131 /min (scores 3) at 03:44",
                "Ada, Room 1 — oxygen saturation 91 % (scores 3) at 03:45",
                "Ada, Room 1 — NEWS2 8 from incomplete observations, high risk, at 03:45",
            ]
        );
        let limits = Thresholds {
            spo2_low: 93.0,
            ..Thresholds::default()
        };
        assert_eq!(
            message(vec![v(Q::Spo2, 93.0, U::Percent, 1)], Some(limits)),
            [
                "Ada, Room 1 — oxygen saturation 93 % at 03:45 is at or below the resident's limit 93.0 %"
            ]
        );
    }

    #[test]
    fn news2_bands_and_single_three() {
        let normal = vec![
            v(Q::Spo2, 97.0, U::Percent, 1),
            v(Q::PulseRate, 70.0, U::PerMinute, 1),
            v(Q::SystolicPressure, 120.0, U::MillimetreOfMercury, 1),
            v(Q::BodyTemperature, 37.0, U::Celsius, 1),
        ];
        check(&resident(normal, None), &[]);
        // SpO₂ 91 scores 3 alone: low-medium, single-3 only (aggregate 3).
        check(
            &resident(vec![v(Q::Spo2, 91.0, U::Percent, 1)], None),
            &[("resident:1/news2-single-3:spo2", Urgent)],
        );
        // SpO₂ 92 (2) + pulse 111 (2) + temperature 39.1 (2) = 6: medium.
        check(
            &resident(
                vec![
                    v(Q::Spo2, 92.0, U::Percent, 1),
                    v(Q::PulseRate, 111.0, U::PerMinute, 1),
                    v(Q::BodyTemperature, 39.1, U::Celsius, 1),
                ],
                None,
            ),
            &[("resident:1/news2:medium", Urgent)],
        );
        // 4 (SpO₂ 92 + pulse 111) is still low: no alert.
        check(
            &resident(
                vec![
                    v(Q::Spo2, 92.0, U::Percent, 1),
                    v(Q::PulseRate, 111.0, U::PerMinute, 1),
                ],
                None,
            ),
            &[],
        );
        // SpO₂ 91 (3) + pulse 131 (3) + systolic 90 (3) = 9: high, and three single-3s.
        check(
            &resident(
                vec![
                    v(Q::Spo2, 91.0, U::Percent, 1),
                    v(Q::PulseRate, 131.0, U::PerMinute, 1),
                    v(Q::SystolicPressure, 90.0, U::MillimetreOfMercury, 1),
                ],
                None,
            ),
            &[
                ("resident:1/news2-single-3:pulse", Urgent),
                ("resident:1/news2-single-3:spo2", Urgent),
                ("resident:1/news2-single-3:systolic", Urgent),
                ("resident:1/news2:high", Emergency),
            ],
        );
    }

    #[test]
    fn a_stale_score_raises_nothing_and_nan_is_not_a_number() {
        check(&resident(vec![v(Q::Spo2, 85.0, U::Percent, 61)], None), &[]);
        let nan = VitalSample {
            quantity: Q::Spo2,
            value: Value::Special(crate::model::SpecialValue::NotANumber),
            unit: U::Percent,
            taken_at: ago(1),
            device_time: None,
            device: None,
            reading_id: None,
        };
        check(&resident(vec![nan], Some(Thresholds::default())), &[]);
    }

    #[test]
    fn two_sources_of_one_parameter_make_one_cause() {
        let t = Thresholds {
            pulse_high: 100.0,
            ..Thresholds::default()
        };
        check(
            &resident(
                vec![
                    v(Q::PulseRate, 105.0, U::PerMinute, 1),
                    v(Q::HeartRate, 104.0, U::PerMinute, 2),
                ],
                Some(t),
            ),
            &[("resident:1/threshold:pulse", Urgent)],
        );
    }

    #[test]
    fn nurse_thresholds_raise_at_their_boundary() {
        let t = Thresholds {
            spo2_low: 94.0,
            temperature_high: 38.0,
            ..Thresholds::default()
        };
        check(
            &resident(vec![v(Q::Spo2, 95.0, U::Percent, 1)], Some(t)),
            &[],
        );
        check(
            &resident(vec![v(Q::Spo2, 94.0, U::Percent, 1)], Some(t)),
            &[("resident:1/threshold:spo2", Urgent)],
        );
        // 100.4 °F = 38.0 °C: converted before comparing.
        check(
            &resident(
                vec![v(Q::BodyTemperature, 100.4, U::Fahrenheit, 1)],
                Some(t),
            ),
            &[("resident:1/threshold:temperature", Urgent)],
        );
        check(
            &resident(vec![v(Q::BodyTemperature, 37.9, U::Celsius, 1)], Some(t)),
            &[],
        );
    }

    fn device(
        resident_id: Option<i64>,
        seen_min_ago: Option<i64>,
        battery: Option<u8>,
    ) -> Snapshot {
        Snapshot {
            devices: vec![DeviceState {
                address: "A4:C1:38:00:00:01".into(),
                resident_id,
                last_seen: seen_min_ago.map(ago),
                assigned_at: None,
                battery_percent: battery,
                meter_renumbered: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn silent_sensor_and_low_battery() {
        check(&device(Some(1), Some(240), Some(16)), &[]);
        check(
            &device(Some(1), Some(241), Some(15)),
            &[
                ("device:A4:C1:38:00:00:01/battery-low", Warning),
                ("device:A4:C1:38:00:00:01/sensor-silent", Warning),
            ],
        );
        check(
            &device(Some(1), None, None),
            &[("device:A4:C1:38:00:00:01/sensor-silent", Warning)],
        );
        // An unassigned device is not expected to report.
        check(&device(None, None, Some(1)), &[]);
    }

    /// H35: a glucose meter whose record numbering started again raises a
    /// technical alert naming it and the number, for a day after it was found.
    #[test]
    fn a_renumbered_glucose_meter_is_a_technical_alert_for_a_day() {
        let snap = |resident_id: Option<i64>, min_ago: i64| Snapshot {
            devices: vec![DeviceState {
                address: "C0:FF:EE:00:00:08".into(),
                resident_id,
                last_seen: Some(ago(0)),
                assigned_at: None,
                battery_percent: None,
                meter_renumbered: Some((ago(min_ago), 1)),
            }],
            ..Default::default()
        };
        let raised = [("device:C0:FF:EE:00:00:08/meter-renumbered", Warning)];
        check(&snap(Some(1), 0), &raised);
        check(&snap(Some(1), 24 * 60 - 1), &raised);
        check(&snap(Some(1), 24 * 60), &[]);
        let c = &evaluate(&snap(Some(1), 5), &Limits::default(), ago(0)).causes[0];
        assert_eq!(c.rule, "meter-renumbered");
        assert_eq!(AlertClass::of_rule(c.rule), AlertClass::Technical);
        assert_eq!(c.resident_id, Some(1));
        assert!(
            c.message.starts_with("glucose meter C0:FF:EE:00:00:08: the meter's record numbering started again at 1 (memory cleared or reset); records since are filed"),
            "{}",
            c.message
        );
    }

    /// Issue 15: a sensor is silent only after `sensor_silent_after` with
    /// nothing heard since the latest of last heard, assigned and the gateway's
    /// start; never "never heard" in its first second.
    #[test]
    fn silent_counts_from_assignment_or_gateway_start() {
        let snap = |seen: Option<i64>, assigned: Option<i64>, started: Option<i64>| Snapshot {
            devices: vec![DeviceState {
                address: "A4:C1:38:00:00:01".into(),
                resident_id: Some(1),
                last_seen: seen.map(ago),
                assigned_at: assigned.map(ago),
                battery_percent: None,
                meter_renumbered: None,
            }],
            started_at: started.map(ago),
            ..Default::default()
        };
        let silent = [("device:A4:C1:38:00:00:01/sensor-silent", Warning)];
        // Registered a second ago, at the start of the demo: not silent.
        check(&snap(None, Some(0), Some(0)), &[]);
        // Assigned long ago but the gateway just started: not silent yet.
        check(&snap(None, Some(10_000), Some(1)), &[]);
        check(&snap(Some(5_000), Some(10_000), Some(240)), &[]);
        check(&snap(Some(5_000), Some(10_000), Some(241)), &silent);
        // Heard recently: not silent, whatever the other times.
        check(&snap(Some(3), Some(10_000), Some(10_000)), &[]);
        // Assigned recently, never heard: silent only after the limit.
        check(&snap(None, Some(240), Some(10_000)), &[]);
        check(&snap(None, Some(241), Some(10_000)), &silent);
        let c = &evaluate(
            &snap(None, Some(241), Some(10_000)),
            &Limits::default(),
            ago(0),
        )
        .causes[0];
        assert!(
            c.message.contains("not heard in the 241 min"),
            "{}",
            c.message
        );
    }

    /// Issue 15: a resident with no current score, or a parameter with no
    /// current value, is undetermined: the book leaves those alerts alone.
    #[test]
    fn stale_and_missing_parameters_are_undetermined_not_cleared() {
        let e = evaluate(
            &resident(vec![v(Q::PulseRate, 131.0, U::PerMinute, 61)], None),
            &Limits::default(),
            ago(0),
        );
        assert!(e.causes.is_empty());
        assert!(e.is_undetermined("resident:1/news2:high"));
        assert!(e.is_undetermined("resident:1/news2-single-3:pulse"));
        assert!(!e.is_undetermined("resident:2/news2:high"));
        // SpO₂ current, pulse stale: the pulse alerts cannot be judged, SpO₂'s can.
        let e = evaluate(
            &resident(
                vec![
                    v(Q::Spo2, 97.0, U::Percent, 1),
                    v(Q::PulseRate, 131.0, U::PerMinute, 61),
                ],
                Some(Thresholds::default()),
            ),
            &Limits::default(),
            ago(0),
        );
        assert!(e.causes.is_empty(), "{:?}", e.causes);
        assert!(e.is_undetermined("resident:1/news2-single-3:pulse"));
        assert!(e.is_undetermined("resident:1/threshold:pulse"));
        assert!(!e.is_undetermined("resident:1/news2-single-3:spo2"));
        assert!(!e.is_undetermined("resident:1/news2:medium"));
    }

    /// Issue 15: one implausible value (a thermometer pointed at a wall) is left
    /// out; every other parameter is still scored and alerted on.
    #[test]
    fn an_implausible_value_leaves_the_other_alerts_standing() {
        let snap = resident(
            vec![
                v(Q::Spo2, 91.0, U::Percent, 1),
                v(Q::PulseRate, 131.0, U::PerMinute, 1),
                v(Q::SystolicPressure, 90.0, U::MillimetreOfMercury, 1),
                v(Q::BodyTemperature, 20.0, U::Celsius, 1),
            ],
            Some(Thresholds::default()),
        );
        check(
            &snap,
            &[
                ("resident:1/news2-single-3:pulse", Urgent),
                ("resident:1/news2-single-3:spo2", Urgent),
                ("resident:1/news2-single-3:systolic", Urgent),
                ("resident:1/news2:high", Emergency),
                ("resident:1/threshold:pulse", Urgent),
                ("resident:1/threshold:spo2", Urgent),
                ("resident:1/threshold:systolic", Urgent),
            ],
        );
        let e = evaluate(&snap, &Limits::default(), ago(0));
        let high = e.causes.iter().find(|c| c.rule == "news2").unwrap();
        assert!(high.partial);
        assert!(high.missing.contains(&Parameter::Temperature));
        // The implausible temperature's own alerts cannot be judged.
        assert!(e.is_undetermined("resident:1/threshold:temperature"));
    }

    /// Issue 15: a device clock more than 2 minutes ahead is not trusted: the
    /// value counts from its receipt (so the score stays current and alerts),
    /// and a technical alert names the device.
    #[test]
    fn a_fast_device_clock_keeps_alerts_and_names_the_device() {
        let dev: crate::model::DeviceAddress = "C0:00:00:00:00:07".parse().unwrap();
        let mut pulse = v(Q::PulseRate, 131.0, U::PerMinute, 0);
        pulse.device = Some(dev);
        pulse.device_time = Some(ago(-60));
        check(
            &resident(vec![pulse], None),
            &[
                ("device:C0:00:00:00:00:07/clock", Warning),
                ("resident:1/news2-single-3:pulse", Urgent),
            ],
        );
        let e = evaluate(&resident(vec![pulse], None), &Limits::default(), ago(0));
        assert!(
            e.causes[0].message.contains("60 min ahead: check clock"),
            "{}",
            e.causes[0].message
        );
        // Two minutes ahead is within the tolerance.
        pulse.device_time = Some(Timestamp::from_unix_ms(NOW + 120_000));
        check(
            &resident(vec![pulse], None),
            &[("resident:1/news2-single-3:pulse", Urgent)],
        );
    }

    #[test]
    fn gateway_backlog_certificate_and_disk() {
        let g = |backlog_min: u64, cert: i64, disk_mb: u64| Snapshot {
            gateway: GatewayState {
                backlog_age: Some(Duration::from_secs(backlog_min * 60)),
                cert_days_left: Some(cert),
                disk_free_bytes: Some(disk_mb * 1024 * 1024),
                web_unanswered_for: Some(Duration::from_secs(backlog_min - 300)),
                uplink_held_readings: 0,
                database_damaged_at: None,
            },
            ..Default::default()
        };
        check(&g(360, 15, 257), &[]);
        check(
            &g(361, 14, 256),
            &[
                ("gateway/certificate", Warning),
                ("gateway/disk", Warning),
                ("gateway/uplink-backlog", Warning),
                ("gateway/web", Warning),
            ],
        );
        check(&Snapshot::default(), &[]);
        // Readings held after repeated refusals by the broker.
        let held = Snapshot {
            gateway: GatewayState {
                uplink_held_readings: 700,
                ..Default::default()
            },
            ..Default::default()
        };
        check(&held, &[("gateway/uplink-held", Warning)]);
    }

    #[test]
    fn a_damaged_database_is_an_urgent_technical_alert_for_a_week() {
        let found = |days_ago: i64| Snapshot {
            gateway: GatewayState {
                database_damaged_at: Some(Timestamp::from_unix_ms(NOW - days_ago * 86_400_000)),
                ..Default::default()
            },
            ..Default::default()
        };
        check(&found(0), &[("gateway/database", Urgent)]);
        check(&found(6), &[("gateway/database", Urgent)]);
        check(&found(7), &[]);
        assert_eq!(
            AlertClass::of_rule("database-damaged"),
            AlertClass::Technical
        );
    }
}
