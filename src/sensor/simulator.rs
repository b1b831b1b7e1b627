//! A deterministic, seeded stand-in for a care home full of sensors.
//!
//! It emits the *bytes* real sensors send (GATT notifications from oximeters, heart
//! rate straps, thermometers, blood-pressure cuffs and scales; BTHome v2 adverts from
//! room sensors), so the demo and the tests drive the real decode → store → web path.
//! Each resident has a physiology that drifts slowly around a personal baseline and
//! now and then deteriorates (rising pulse and temperature, falling SpO₂ and blood
//! pressure) and recovers, so a dashboard has something meaningful to show.
//!
//! The same seed gives the same residents, devices and sequence of values.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Advertisement, Frame, Notification, RawFrame, uuid16};
use crate::decode::ieee11073::{encode_float, encode_sfloat};
use crate::decode::{bthome, gatt};
use crate::model::{
    Device, DeviceAddress, DeviceKind, Resident, ResidentId, SiteZone, Subject, Timestamp,
};

/// The simulator's settings; see `[simulator]` in the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    pub residents: u16,
    pub seed: u64,
    /// The site's time zone: simulated devices keep local time, as real ones do.
    pub timezone: String,
    /// Every device speaks this often instead of at its kind's own pace (load
    /// tests, the soak).
    pub every: Option<Duration>,
}

const NAMES: &[&str] = &[
    "Margaret Ellis",
    "Arthur Kowalski",
    "Doreen Baptiste",
    "Harold Singh",
    "Joan McAllister",
    "Winston Okafor",
    "Edna Thompson",
    "Kenneth Li",
    "Beryl Hughes",
    "Stanley Adeyemi",
    "Iris Novak",
    "Cyril Patel",
];

/// How often each kind of device speaks.
fn period(kind: DeviceKind) -> Duration {
    match kind {
        DeviceKind::HeartRateMonitor | DeviceKind::PulseOximeter => Duration::from_secs(5),
        DeviceKind::RoomSensor => Duration::from_secs(30),
        DeviceKind::Thermometer | DeviceKind::BloodPressureMonitor => Duration::from_secs(15 * 60),
        DeviceKind::WeightScale => Duration::from_secs(6 * 3600),
        DeviceKind::GlucoseMeter | DeviceKind::Unknown => Duration::from_secs(3600),
    }
}

/// Battery level notifications from health devices this often.
const BATTERY_PERIOD: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone)]
struct Physiology {
    baseline_hr: f64,
    baseline_spo2: f64,
    baseline_temp: f64,
    baseline_sys: f64,
    weight_kg: f64,
    hr: f64,
    spo2: f64,
    temp: f64,
    sys: f64,
    /// 0 when well; rises to 1 during a deterioration episode and falls back.
    severity: f64,
    /// +1 while worsening, -1 while recovering, 0 when well.
    trend: f64,
    /// When the physiology was last advanced.
    last_step: Option<Timestamp>,
}

#[derive(Debug, Clone)]
struct SimDevice {
    device: Device,
    resident: Option<usize>,
    next_due: Option<Timestamp>,
    next_battery: Option<Timestamp>,
    battery: u8,
    packet_id: u8,
}

/// The simulated home. Call [`Simulator::roster`] once to provision the residents
/// and devices, then [`Simulator::poll`] repeatedly.
#[derive(Debug)]
pub struct Simulator {
    rng: SmallRng,
    zone: SiteZone,
    residents: Vec<(Resident, Physiology)>,
    devices: Vec<SimDevice>,
    every: Option<Duration>,
}

impl Simulator {
    #[allow(clippy::indexing_slicing, reason = "modulo the table length")]
    pub fn new(config: &SimulatorConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let mut residents = Vec::new();
        let mut devices = Vec::new();
        for i in 0..usize::from(config.residents) {
            let name = match NAMES.get(i) {
                Some(n) => (*n).to_owned(),
                None => format!("{} ({})", NAMES[i % NAMES.len()], i / NAMES.len() + 1),
            };
            let id = ResidentId(i as i64 + 1);
            let room = format!("Room {}", i + 1);
            let reference = format!("res-{:08x}", rng.random::<u32>());
            let baseline_hr = rng.random_range(62.0..86.0);
            let baseline_spo2 = rng.random_range(95.0..98.5);
            let baseline_temp = rng.random_range(36.3..37.0);
            let baseline_sys = rng.random_range(112.0..148.0);
            // The third resident starts part-way into a deterioration, so a fresh demo
            // shows what one looks like.
            let severity = if i == 2 { 0.7 } else { 0.0 };
            let phys = Physiology {
                baseline_hr,
                baseline_spo2,
                baseline_temp,
                baseline_sys,
                weight_kg: rng.random_range(48.0..92.0),
                hr: baseline_hr + 38.0 * severity,
                spo2: baseline_spo2 - 9.0 * severity,
                temp: baseline_temp + 2.2 * severity,
                sys: baseline_sys - 32.0 * severity,
                severity,
                trend: if i == 2 { 1.0 } else { 0.0 },
                last_step: None,
            };
            residents.push((
                Resident {
                    id,
                    display_name: name,
                    room: room.clone(),
                    reference,
                },
                phys,
            ));

            let mut kinds = vec![
                DeviceKind::PulseOximeter,
                DeviceKind::Thermometer,
                DeviceKind::BloodPressureMonitor,
                DeviceKind::WeightScale,
            ];
            if i % 2 == 1 {
                kinds.push(DeviceKind::HeartRateMonitor);
            }
            for kind in kinds {
                devices.push(SimDevice {
                    device: Device {
                        address: address(kind, i),
                        kind,
                        model: Some(model(kind).to_owned()),
                        name: Some(format!("{} {}", model(kind), i + 1)),
                        subject: Subject::Resident(id),
                    },
                    resident: Some(i),
                    next_due: None,
                    next_battery: None,
                    battery: rng.random_range(40..=100),
                    packet_id: 0,
                });
            }
            devices.push(SimDevice {
                device: Device {
                    address: address(DeviceKind::RoomSensor, i),
                    kind: DeviceKind::RoomSensor,
                    model: Some(model(DeviceKind::RoomSensor).to_owned()),
                    name: Some(format!("Room sensor {}", i + 1)),
                    subject: Subject::Room(room),
                },
                resident: None,
                next_due: None,
                next_battery: None,
                battery: rng.random_range(40..=100),
                packet_id: 0,
            });
        }
        Simulator {
            rng,
            zone: SiteZone::named(&config.timezone).unwrap_or_else(|_| SiteZone::utc()),
            residents,
            devices,
            every: config.every,
        }
    }

    /// The residents and their devices, to be provisioned in the store.
    pub fn roster(&self) -> (Vec<Resident>, Vec<Device>) {
        (
            self.residents.iter().map(|(r, _)| r.clone()).collect(),
            self.devices.iter().map(|d| d.device.clone()).collect(),
        )
    }

    /// Every frame due at `now`. The first call schedules every device to speak
    /// within three seconds, so a fresh demo fills its page at once.
    #[allow(
        clippy::indexing_slicing,
        reason = "indexes come from 0..devices.len() and the devices never shrink"
    )]
    pub fn poll(&mut self, now: Timestamp) -> Vec<RawFrame> {
        let mut out = Vec::new();
        let every = self.every;
        for idx in 0..self.devices.len() {
            let (due, battery_due) = {
                let d = &mut self.devices[idx];
                if d.next_due.is_none() {
                    let offset = Duration::from_millis(self.rng.random_range(0..3000));
                    d.next_due = Some(now.saturating_add(offset));
                    d.next_battery = Some(now.saturating_add(offset + Duration::from_millis(200)));
                }
                (
                    d.next_due.is_some_and(|t| t <= now),
                    d.next_battery.is_some_and(|t| t <= now),
                )
            };
            if due {
                let frame = self.frame_for(idx, now);
                let d = &mut self.devices[idx];
                d.next_due = Some(now.saturating_add(every.unwrap_or(period(d.device.kind))));
                out.push(RawFrame {
                    frame,
                    received_at: now,
                });
            }
            let kind = self.devices[idx].device.kind;
            if battery_due && kind != DeviceKind::RoomSensor {
                let d = &mut self.devices[idx];
                if self.rng.random_bool(0.05) {
                    d.battery = d.battery.saturating_sub(1).max(5);
                }
                d.next_battery = Some(now.saturating_add(BATTERY_PERIOD));
                out.push(RawFrame {
                    frame: Frame::Notification(Notification {
                        address: d.device.address,
                        characteristic: uuid16(gatt::BATTERY_LEVEL),
                        value: vec![d.battery],
                    }),
                    received_at: now,
                });
            }
        }
        out
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "idx is a device index from poll; a device's resident index was made with the residents"
    )]
    fn frame_for(&mut self, idx: usize, now: Timestamp) -> Frame {
        let kind = self.devices[idx].device.kind;
        let address = self.devices[idx].device.address;
        if let Some(r) = self.devices[idx].resident {
            // Physiology moves with real time, however many devices report it.
            let last = self.residents[r].1.last_step.replace(now).unwrap_or(now);
            self.step(r, last.age_at(now));
        }
        let notify = |characteristic: u16, value: Vec<u8>| {
            Frame::Notification(Notification {
                address,
                characteristic: uuid16(characteristic),
                value,
            })
        };
        let phys = self.devices[idx]
            .resident
            .map(|r| self.residents[r].1.clone());
        match (kind, phys) {
            (DeviceKind::PulseOximeter, Some(p)) => {
                // PLX Continuous: flags 0, SpO2 and pulse rate as SFLOAT.
                let mut v = vec![0x00];
                v.extend(sfloat_bytes(p.spo2.round(), 0));
                v.extend(sfloat_bytes(p.hr.round(), 0));
                notify(gatt::PLX_CONTINUOUS, v)
            }
            (DeviceKind::HeartRateMonitor, Some(p)) => {
                // Heart Rate Measurement: u8 rate, sensor contact detected (bits 1-2 = 3),
                // one RR interval in 1/1024 s.
                let hr = p.hr.round().clamp(30.0, 250.0);
                let rr = (60.0 / hr * 1024.0).round() as u16;
                let mut v = vec![0x16, hr as u8];
                v.extend(rr.to_le_bytes());
                notify(gatt::HEART_RATE_MEASUREMENT, v)
            }
            (DeviceKind::Thermometer, Some(p)) => {
                // Temperature Measurement: Celsius, with type (2 = body)... here mouth (6).
                let mut v = vec![0x04];
                let raw = encode_float((p.temp * 10.0).round() / 10.0, -1).unwrap_or(0x007F_FFFF);
                v.extend(raw.to_le_bytes());
                v.push(6);
                notify(gatt::TEMPERATURE_MEASUREMENT, v)
            }
            (DeviceKind::BloodPressureMonitor, Some(p)) => {
                // Blood Pressure Measurement: mmHg, time stamp, pulse rate.
                let sys = p.sys.round();
                let dia = (sys * 0.62).round();
                let map = ((sys + 2.0 * dia) / 3.0).round();
                let mut v = vec![0x06];
                v.extend(sfloat_bytes(sys, 0));
                v.extend(sfloat_bytes(dia, 0));
                v.extend(sfloat_bytes(map, 0));
                v.extend(date_time_bytes(&self.zone, now));
                v.extend(sfloat_bytes(p.hr.round(), 0));
                notify(gatt::BLOOD_PRESSURE_MEASUREMENT, v)
            }
            (DeviceKind::WeightScale, Some(p)) => {
                let raw = (p.weight_kg / 0.005).round() as u16;
                let mut v = vec![0x00];
                v.extend(raw.to_le_bytes());
                notify(gatt::WEIGHT_MEASUREMENT, v)
            }
            _ => {
                // A BTHome v2 room sensor: packet id, battery, temperature, humidity, motion.
                let d = &mut self.devices[idx];
                d.packet_id = d.packet_id.wrapping_add(1);
                let temp = self.rng.random_range(19.5..23.5f64);
                let humidity = self.rng.random_range(35.0..60.0f64);
                let motion = u8::from(self.rng.random_bool(0.3));
                let d = &self.devices[idx];
                let mut v = vec![0x40, 0x00, d.packet_id, 0x01, d.battery];
                v.push(0x02);
                v.extend(((temp * 100.0).round() as i16).to_le_bytes());
                v.push(0x03);
                v.extend(((humidity * 100.0).round() as u16).to_le_bytes());
                v.extend([0x21, motion]);
                Frame::Advertisement(Advertisement {
                    address,
                    local_name: Some("carehub-room".into()),
                    rssi: Some(-60 - i16::from(d.packet_id % 20)),
                    service_data: vec![(uuid16(bthome::SERVICE_UUID), v)],
                    manufacturer_data: vec![],
                    services: vec![],
                })
            }
        }
    }

    /// Advances one resident's physiology by `dt`.
    #[allow(
        clippy::indexing_slicing,
        reason = "r is a resident index made with the residents, which never shrink"
    )]
    fn step(&mut self, r: usize, dt: Duration) {
        let rng = &mut self.rng;
        let p = &mut self.residents[r].1;
        let minutes = dt.as_secs_f64() / 60.0;
        // Episodes start rarely (about once in three hours per resident), worsen over
        // about 20 minutes, hold, then recover.
        if p.trend == 0.0 && rng.random_bool((minutes / 180.0).min(1.0)) {
            p.trend = 1.0;
        }
        p.severity = (p.severity + p.trend * minutes / 20.0).clamp(0.0, 1.0);
        if p.severity >= 1.0 && rng.random_bool((minutes / 30.0).min(1.0)) {
            p.trend = -1.0;
        }
        if p.severity <= 0.0 && p.trend < 0.0 {
            p.trend = 0.0;
        }
        let s = p.severity;
        let pull = (minutes / 10.0).min(1.0);
        let mut walk = |current: f64, target: f64, noise: f64| {
            current + (target - current) * pull + rng.random_range(-noise..=noise)
        };
        p.hr = walk(p.hr, p.baseline_hr + 38.0 * s, 1.5).clamp(35.0, 180.0);
        p.spo2 = walk(p.spo2, p.baseline_spo2 - 9.0 * s, 0.4).clamp(70.0, 100.0);
        p.temp = walk(p.temp, p.baseline_temp + 2.2 * s, 0.05).clamp(34.0, 41.0);
        p.sys = walk(p.sys, p.baseline_sys - 32.0 * s, 2.0).clamp(70.0, 220.0);
    }
}

fn address(kind: DeviceKind, resident: usize) -> DeviceAddress {
    let k = match kind {
        DeviceKind::HeartRateMonitor => 1,
        DeviceKind::PulseOximeter => 2,
        DeviceKind::BloodPressureMonitor => 3,
        DeviceKind::Thermometer => 4,
        DeviceKind::WeightScale => 5,
        DeviceKind::GlucoseMeter => 6,
        DeviceKind::RoomSensor => 7,
        DeviceKind::Unknown => 0,
    };
    let [hi, lo] = (resident as u16).to_be_bytes();
    DeviceAddress([0xC0, 0xA1, 0x5E, k, hi, lo])
}

fn model(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::HeartRateMonitor => "Sim HR strap",
        DeviceKind::PulseOximeter => "Sim oximeter",
        DeviceKind::BloodPressureMonitor => "Sim BP cuff",
        DeviceKind::Thermometer => "Sim thermometer",
        DeviceKind::WeightScale => "Sim scale",
        DeviceKind::GlucoseMeter => "Sim glucose meter",
        DeviceKind::RoomSensor => "Sim BTHome room sensor",
        DeviceKind::Unknown => "Sim device",
    }
}

fn sfloat_bytes(v: f64, exponent: i8) -> [u8; 2] {
    encode_sfloat(v, exponent).unwrap_or(0x07FF).to_le_bytes()
}

/// A Date Time field as a device shows it: the site's local time, no zone.
fn date_time_bytes(zone: &SiteZone, at: Timestamp) -> [u8; 7] {
    let Some(t) = zone.instant_to_civil(at) else {
        // Year 0: "unknown", which the decoder reads as no device time.
        return [0; 7];
    };
    let [y0, y1] = t.year.to_le_bytes();
    [y0, y1, t.month, t.day, t.hour, t.minute, t.second]
}

/// How often the simulator looks for due frames.
const SIMULATOR_TICK: Duration = Duration::from_millis(250);

impl super::Source for Simulator {
    fn name(&self) -> &'static str {
        "simulator"
    }

    fn start(self: Box<Self>, ctx: super::SourceContext) -> super::SourceTask {
        Box::pin(run(*self, ctx))
    }
}

async fn run(mut sim: Simulator, ctx: super::SourceContext) {
    let super::SourceContext {
        frames: tx,
        cancel,
        heartbeat,
    } = ctx;
    let mut tick = tokio::time::interval(SIMULATOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        heartbeat.beat();
        for frame in sim.poll(Timestamp::now()) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = tx.send(frame) => if sent.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::model::Quantity;

    fn sim(seed: u64) -> Simulator {
        Simulator::new(&SimulatorConfig {
            residents: 4,
            seed,
            timezone: "Europe/London".into(),
            every: None,
        })
    }

    #[test]
    fn same_seed_same_home() {
        let (mut a, mut b) = (sim(7), sim(7));
        assert_eq!(a.roster(), b.roster());
        let t0 = Timestamp::from_unix_ms(1_800_000_000_000);
        for s in 0..50 {
            let t = t0.saturating_add(Duration::from_secs(s * 5));
            assert_eq!(a.poll(t), b.poll(t));
        }
        assert_ne!(sim(8).roster().0[0].reference, a.roster().0[0].reference);
    }

    #[test]
    fn every_frame_decodes_and_every_device_speaks_within_three_seconds() {
        let mut s = sim(1);
        let (_, devices) = s.roster();
        let mut decoder = Decoder::new();
        let t0 = Timestamp::from_unix_ms(1_800_000_000_000);
        let mut heard = std::collections::HashSet::new();
        let mut spo2 = Vec::new();
        for ms in (0..=3000).step_by(250) {
            for f in s.poll(t0.saturating_add(Duration::from_millis(ms))) {
                let d = decoder
                    .decode(&f.frame)
                    .unwrap_or_else(|e| panic!("{f:?}: {e}"));
                heard.insert(f.frame.address());
                for v in d.values {
                    if v.quantity == Quantity::Spo2 {
                        spo2.push(v.value.number().unwrap());
                    }
                }
            }
        }
        assert_eq!(heard.len(), devices.len());
        assert!(spo2.iter().all(|v| (70.0..=100.0).contains(v)), "{spo2:?}");
    }

    #[test]
    fn a_set_pace_makes_every_device_speak_that_often() {
        let mut s = Simulator::new(&SimulatorConfig {
            residents: 4,
            seed: 1,
            timezone: "Europe/London".into(),
            every: Some(Duration::from_secs(1)),
        });
        let devices = s.roster().1.len();
        let t0 = Timestamp::from_unix_ms(1_800_000_000_000);
        // After the first three seconds (the staggered start, which also brings
        // the first battery levels), each second brings one frame from every
        // device: ten seconds, ten frames each (nine or eleven at the edges).
        for ms in (0..=3000).step_by(250) {
            s.poll(t0.saturating_add(Duration::from_millis(ms)));
        }
        let mut measurements = 0;
        for ms in (3250..=13000).step_by(250) {
            measurements += s.poll(t0.saturating_add(Duration::from_millis(ms))).len();
        }
        assert!(
            (devices * 9..=devices * 11).contains(&measurements),
            "{measurements} measurements from {devices} devices in 10 s"
        );
    }

    #[test]
    fn the_unwell_resident_deteriorates() {
        let mut s = sim(3);
        let p = &s.residents[2].1;
        assert!(p.spo2 < p.baseline_spo2 - 4.0, "starts unwell");
        for _ in 0..(5 * 12) {
            s.step(2, Duration::from_secs(5));
        }
        let p = &s.residents[2].1;
        assert!(
            p.spo2 < p.baseline_spo2 - 4.0,
            "spo2 {} baseline {}",
            p.spo2,
            p.baseline_spo2
        );
        assert!(p.hr > p.baseline_hr + 20.0);
    }
}
