//! Alert rules, pure: given a snapshot of what the gateway knows now, the set of
//! alert *causes* that should be open. No IO and no clock (the caller passes `now`).
//!
//! The lifecycle (raise once, resolve when the cause clears, acknowledge) lives in
//! the store; this module only answers "which causes hold right now". Each cause
//! has a stable key (subject + rule), so a cause that keeps holding maps to the
//! same open alert and never to a storm of new ones.

use std::time::Duration;

use super::news2::{Band, Parameter};
use super::{Freshness, VitalSample, freshness, news2_from_readings};
use crate::model::{Quantity, Timestamp, Unit};

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
    pub battery_percent: Option<u8>,
}

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
}

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
}

/// The configurable limits of the non-clinical rules, from `[alerts]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
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
            freshness_window: Duration::from_secs(3600),
            sensor_silent_after: Duration::from_secs(4 * 3600),
            battery_low_percent: 15,
            backlog_max_age: Duration::from_secs(6 * 3600),
            cert_warn_days: 14,
            disk_low_bytes: 256 * 1024 * 1024,
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
}

/// The causes that hold at `now`, sorted by key.
pub fn evaluate(snapshot: &Snapshot, limits: &Limits, now: Timestamp) -> Vec<Cause> {
    let mut out = Vec::new();
    for r in &snapshot.residents {
        resident_causes(r, limits, now, &mut out);
    }
    for d in &snapshot.devices {
        device_causes(d, limits, now, &mut out);
    }
    gateway_causes(&snapshot.gateway, limits, &mut out);
    out.sort_by(|a, b| a.key.cmp(&b.key));
    // One cause per key: a pulse from an oximeter and from a chest strap both
    // crossing a limit are one alert, not two (the first, by key order, stays).
    out.dedup_by(|later, first| later.key == first.key);
    out
}

fn resident_causes(r: &ResidentState, limits: &Limits, now: Timestamp, out: &mut Vec<Cause>) {
    let subject = format!("resident:{}", r.id);
    // A stale score says nothing about the resident now: no clinical alert is
    // raised or kept open from it (the silent-sensor rule covers the gap).
    let Some(s) = news2_from_readings(&r.vitals, r.spo2_scale, now, limits.freshness_window) else {
        return;
    };
    if s.stale {
        return;
    }
    let partial = if s.score.partial() { " (partial)" } else { "" };
    if s.score.band >= Band::Medium {
        let emergency = s.score.band == Band::High;
        out.push(Cause {
            // The band is part of the key: medium rising to high resolves the
            // medium alert and raises a new emergency one, so an escalation is
            // never hidden inside an alert staff have already acknowledged.
            key: format!("{subject}/news2:{}", s.score.band.as_str()),
            resident_id: Some(r.id),
            rule: "news2",
            severity: if emergency {
                Severity::Emergency
            } else {
                Severity::Urgent
            },
            message: format!(
                "{}: NEWS2 {}{partial}, {} risk",
                r.display_name,
                s.score.total,
                s.score.band.as_str()
            ),
            score: Some(s.score.total),
            level: s.score.band.as_str(),
        });
    }
    for (p, points) in &s.score.components {
        if *points == 3 {
            out.push(Cause {
                key: format!("{subject}/news2-single-3:{}", p.as_str()),
                resident_id: Some(r.id),
                rule: "news2-single-3",
                severity: Severity::Urgent,
                message: format!("{}: {} scores 3{partial}", r.display_name, p.as_str()),
                score: Some(s.score.total),
                level: "low-medium",
            });
        }
    }
    if let Some(t) = &r.thresholds {
        threshold_causes(r, t, limits, now, &subject, out);
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
        let (param, value, unit, low, high) = match (v.quantity, v.unit) {
            (Quantity::Spo2, Unit::Percent) => (Parameter::Spo2, n, "%", t.spo2_low, f64::INFINITY),
            (Quantity::PulseRate | Quantity::HeartRate, Unit::PerMinute) => {
                (Parameter::Pulse, n, "/min", t.pulse_low, t.pulse_high)
            }
            (Quantity::SystolicPressure, Unit::MillimetreOfMercury) => (
                Parameter::Systolic,
                n,
                "mmHg",
                t.systolic_low,
                t.systolic_high,
            ),
            (Quantity::SystolicPressure, Unit::Kilopascal) => (
                Parameter::Systolic,
                n * 7.500_617,
                "mmHg",
                t.systolic_low,
                t.systolic_high,
            ),
            (Quantity::BodyTemperature, Unit::Celsius) => (
                Parameter::Temperature,
                n,
                "°C",
                t.temperature_low,
                t.temperature_high,
            ),
            (Quantity::BodyTemperature, Unit::Fahrenheit) => (
                Parameter::Temperature,
                (n - 32.0) * 5.0 / 9.0,
                "°C",
                t.temperature_low,
                t.temperature_high,
            ),
            _ => continue,
        };
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
                "{}: {} {value:.1} {unit} at {} is {side} the resident's limit {limit:.1} {unit}",
                r.display_name,
                param.as_str(),
                v.taken_at.to_rfc3339()
            ),
            score: None,
            level: Severity::Urgent.as_str(),
        });
    }
}

fn device_causes(d: &DeviceState, limits: &Limits, now: Timestamp, out: &mut Vec<Cause>) {
    // Only sensors assigned to a resident are expected to report.
    let Some(resident) = d.resident_id else {
        return;
    };
    let subject = format!("device:{}", d.address);
    let silent = match d.last_seen {
        None => Some("never heard".to_owned()),
        Some(t) if t.age_at(now) > limits.sensor_silent_after => Some(format!(
            "last heard {} min ago",
            t.age_at(now).as_secs() / 60
        )),
        Some(_) => None,
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
}

fn gateway_causes(g: &GatewayState, limits: &Limits, out: &mut Vec<Cause>) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

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
        }
    }

    fn resident(vitals: Vec<VitalSample>, thresholds: Option<Thresholds>) -> Snapshot {
        Snapshot {
            residents: vec![ResidentState {
                id: 1,
                display_name: "Ada".into(),
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
                battery_percent: battery,
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

    #[test]
    fn gateway_backlog_certificate_and_disk() {
        let g = |backlog_min: u64, cert: i64, disk_mb: u64| Snapshot {
            gateway: GatewayState {
                backlog_age: Some(Duration::from_secs(backlog_min * 60)),
                cert_days_left: Some(cert),
                disk_free_bytes: Some(disk_mb * 1024 * 1024),
                web_unanswered_for: Some(Duration::from_secs(backlog_min - 300)),
                uplink_held_readings: 0,
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
}
