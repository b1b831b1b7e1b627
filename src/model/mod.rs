//! Domain types shared by every stage: what a reading is, which device sent it and
//! whom it belongs to.
//!
//! These types carry no serde: every wire format (MQTT JSON, the JSON API, SQLite
//! rows) is its own type at the edge with an explicit conversion, so that changing
//! a wire format is a visible decision. Units travel with values everywhere: a
//! `Reading` cannot be built without a [`Unit`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod zone;

pub use zone::{CivilTime, SiteZone};

/// A point in time, as milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_unix_ms(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub const fn unix_ms(self) -> i64 {
        self.0
    }

    /// The gateway's wall clock now. Only the edges call this: `decode` and
    /// `clinical` are handed times, never read the clock.
    pub fn now() -> Self {
        let ms = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        Timestamp(ms)
    }

    /// How long before `later` this was; zero when `later` is earlier.
    pub fn age_at(self, later: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T20:41:07.123Z`.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => {
                let f = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                );
                t.format(&f).unwrap_or_else(|_| format!("@{}ms", self.0))
            }
            Err(_) => format!("@{}ms", self.0),
        }
    }
}

/// A reading's unique identity, a UUID, so the cloud can drop the duplicates that
/// at-least-once delivery produces. A reading from a sensor gets it from the store
/// when it is committed (a UUIDv8 of the store's random prefix and the reading's
/// sequence number; `docs/decisions/0011-reading-ids-from-seq.md`), so that it costs
/// no bytes on disk; until then it is [`ReadingId::UNASSIGNED`]. A producer that must
/// know the id before the commit (a staff observation set) makes one with
/// [`ReadingId::new`] (UUIDv7) and the store keeps it. Either way it never changes
/// once stored: every resend carries the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadingId(uuid::Uuid);

impl ReadingId {
    /// "The store gives this reading its id when it commits it" (the nil UUID,
    /// which no stored reading has).
    pub const UNASSIGNED: ReadingId = ReadingId(uuid::Uuid::nil());

    /// Whether this is [`ReadingId::UNASSIGNED`].
    pub fn is_unassigned(&self) -> bool {
        self.0.is_nil()
    }

    /// A new id whose time part is `at`; ids made later sort later.
    pub fn new(at: Timestamp) -> Self {
        let ms = u64::try_from(at.unix_ms()).unwrap_or(0);
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        ReadingId(uuid::Uuid::new_v7(ts))
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ReadingId(uuid::Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for ReadingId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(ReadingId)
    }
}

/// A Bluetooth device address, in the display order BlueZ uses (`AA:BB:CC:DD:EE:FF`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceAddress(pub [u8; 6]);

impl DeviceAddress {
    /// Stands for "entered by staff" on readings from an observation set typed
    /// into the web UI (no Bluetooth device has the all-zero address); who
    /// entered them is kept beside them in `observation_sets`.
    pub const STAFF: DeviceAddress = DeviceAddress([0; 6]);
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Why a string is not a Bluetooth address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Bluetooth address {0:?}: expected six hex pairs like AA:BB:CC:DD:EE:FF")]
pub struct AddressError(pub String);

impl FromStr for DeviceAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| AddressError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(AddressError(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| AddressError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(AddressError(s.to_owned()));
        }
        Ok(DeviceAddress(out))
    }
}

/// What was measured. The snake-case names are the vocabulary of every wire format
/// (see `docs/decode.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quantity {
    // Vital signs.
    HeartRate,
    PulseRate,
    Spo2,
    BodyTemperature,
    SystolicPressure,
    DiastolicPressure,
    MeanArterialPressure,
    CuffPressure,
    /// A thermometer's settling values while it measures (GATT Intermediate
    /// Temperature, 0x2A1E): not a body temperature, never scored or alerted on.
    IntermediateTemperature,
    BodyWeight,
    BodyMassIndex,
    BodyHeight,
    BloodGlucose,
    RrInterval,
    EnergyExpended,
    PulseAmplitudeIndex,
    /// Breaths per minute, counted by staff.
    RespirationRate,
    /// ACVPU as its position on the scale (unit "1"): 0 alert, 1 new confusion,
    /// 2 voice, 3 pain, 4 unresponsive. Entered by staff.
    Consciousness,
    /// On supplemental oxygen: 1 yes, 0 no (air). Entered by staff.
    SupplementalOxygen,
    // Device health.
    BatteryLevel,
    BatteryVoltage,
    SignalStrength,
    // Room and ambient.
    Temperature,
    Humidity,
    Pressure,
    Illuminance,
    DewPoint,
    Co2,
    Voc,
    Pm2_5,
    Pm10,
    Motion,
    Occupancy,
    Presence,
    Door,
    Window,
    Opening,
    Moisture,
    Smoke,
    CarbonMonoxide,
    BatteryLow,
    Acceleration,
    Count,
    // Further BTHome v2 objects and advertisement fields.
    Energy,
    Power,
    Current,
    Distance,
    Duration,
    Rotation,
    Speed,
    UvIndex,
    Volume,
    VolumeStorage,
    FlowRate,
    GasVolume,
    WaterVolume,
    DeviceTimestamp,
    AngularVelocity,
    Conductivity,
    Direction,
    Precipitation,
    Channel,
    RotationalSpeed,
    LightLevel,
    MoistureLevel,
    TxPower,
    MovementCount,
    BinaryGeneric,
    PowerState,
    BatteryCharging,
    Cold,
    Connectivity,
    GarageDoor,
    GasDetected,
    Heat,
    LightDetected,
    Lock,
    Moving,
    Plug,
    Problem,
    Running,
    Safety,
    Sound,
    Tamper,
    Vibration,
}

impl Quantity {
    pub const ALL: &'static [Quantity] = &[
        Quantity::HeartRate,
        Quantity::PulseRate,
        Quantity::Spo2,
        Quantity::BodyTemperature,
        Quantity::SystolicPressure,
        Quantity::DiastolicPressure,
        Quantity::MeanArterialPressure,
        Quantity::CuffPressure,
        Quantity::IntermediateTemperature,
        Quantity::BodyWeight,
        Quantity::BodyMassIndex,
        Quantity::BodyHeight,
        Quantity::BloodGlucose,
        Quantity::RrInterval,
        Quantity::EnergyExpended,
        Quantity::PulseAmplitudeIndex,
        Quantity::RespirationRate,
        Quantity::Consciousness,
        Quantity::SupplementalOxygen,
        Quantity::BatteryLevel,
        Quantity::BatteryVoltage,
        Quantity::SignalStrength,
        Quantity::Temperature,
        Quantity::Humidity,
        Quantity::Pressure,
        Quantity::Illuminance,
        Quantity::DewPoint,
        Quantity::Co2,
        Quantity::Voc,
        Quantity::Pm2_5,
        Quantity::Pm10,
        Quantity::Motion,
        Quantity::Occupancy,
        Quantity::Presence,
        Quantity::Door,
        Quantity::Window,
        Quantity::Opening,
        Quantity::Moisture,
        Quantity::Smoke,
        Quantity::CarbonMonoxide,
        Quantity::BatteryLow,
        Quantity::Acceleration,
        Quantity::Count,
        Quantity::Energy,
        Quantity::Power,
        Quantity::Current,
        Quantity::Distance,
        Quantity::Duration,
        Quantity::Rotation,
        Quantity::Speed,
        Quantity::UvIndex,
        Quantity::Volume,
        Quantity::VolumeStorage,
        Quantity::FlowRate,
        Quantity::GasVolume,
        Quantity::WaterVolume,
        Quantity::DeviceTimestamp,
        Quantity::AngularVelocity,
        Quantity::Conductivity,
        Quantity::Direction,
        Quantity::Precipitation,
        Quantity::Channel,
        Quantity::RotationalSpeed,
        Quantity::LightLevel,
        Quantity::MoistureLevel,
        Quantity::TxPower,
        Quantity::MovementCount,
        Quantity::BinaryGeneric,
        Quantity::PowerState,
        Quantity::BatteryCharging,
        Quantity::Cold,
        Quantity::Connectivity,
        Quantity::GarageDoor,
        Quantity::GasDetected,
        Quantity::Heat,
        Quantity::LightDetected,
        Quantity::Lock,
        Quantity::Moving,
        Quantity::Plug,
        Quantity::Problem,
        Quantity::Running,
        Quantity::Safety,
        Quantity::Sound,
        Quantity::Tamper,
        Quantity::Vibration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Quantity::HeartRate => "heart_rate",
            Quantity::PulseRate => "pulse_rate",
            Quantity::Spo2 => "spo2",
            Quantity::BodyTemperature => "body_temperature",
            Quantity::SystolicPressure => "systolic_pressure",
            Quantity::DiastolicPressure => "diastolic_pressure",
            Quantity::MeanArterialPressure => "mean_arterial_pressure",
            Quantity::CuffPressure => "cuff_pressure",
            Quantity::IntermediateTemperature => "intermediate_temperature",
            Quantity::BodyWeight => "body_weight",
            Quantity::BodyMassIndex => "body_mass_index",
            Quantity::BodyHeight => "body_height",
            Quantity::BloodGlucose => "blood_glucose",
            Quantity::RrInterval => "rr_interval",
            Quantity::EnergyExpended => "energy_expended",
            Quantity::PulseAmplitudeIndex => "pulse_amplitude_index",
            Quantity::RespirationRate => "respiration_rate",
            Quantity::Consciousness => "consciousness",
            Quantity::SupplementalOxygen => "supplemental_oxygen",
            Quantity::BatteryLevel => "battery_level",
            Quantity::BatteryVoltage => "battery_voltage",
            Quantity::SignalStrength => "signal_strength",
            Quantity::Temperature => "temperature",
            Quantity::Humidity => "humidity",
            Quantity::Pressure => "pressure",
            Quantity::Illuminance => "illuminance",
            Quantity::DewPoint => "dew_point",
            Quantity::Co2 => "co2",
            Quantity::Voc => "voc",
            Quantity::Pm2_5 => "pm2_5",
            Quantity::Pm10 => "pm10",
            Quantity::Motion => "motion",
            Quantity::Occupancy => "occupancy",
            Quantity::Presence => "presence",
            Quantity::Door => "door",
            Quantity::Window => "window",
            Quantity::Opening => "opening",
            Quantity::Moisture => "moisture",
            Quantity::Smoke => "smoke",
            Quantity::CarbonMonoxide => "carbon_monoxide",
            Quantity::BatteryLow => "battery_low",
            Quantity::Acceleration => "acceleration",
            Quantity::Count => "count",
            Quantity::Energy => "energy",
            Quantity::Power => "power",
            Quantity::Current => "current",
            Quantity::Distance => "distance",
            Quantity::Duration => "duration",
            Quantity::Rotation => "rotation",
            Quantity::Speed => "speed",
            Quantity::UvIndex => "uv_index",
            Quantity::Volume => "volume",
            Quantity::VolumeStorage => "volume_storage",
            Quantity::FlowRate => "flow_rate",
            Quantity::GasVolume => "gas_volume",
            Quantity::WaterVolume => "water_volume",
            Quantity::DeviceTimestamp => "device_timestamp",
            Quantity::AngularVelocity => "angular_velocity",
            Quantity::Conductivity => "conductivity",
            Quantity::Direction => "direction",
            Quantity::Precipitation => "precipitation",
            Quantity::Channel => "channel",
            Quantity::RotationalSpeed => "rotational_speed",
            Quantity::LightLevel => "light_level",
            Quantity::MoistureLevel => "moisture_level",
            Quantity::TxPower => "tx_power",
            Quantity::MovementCount => "movement_count",
            Quantity::BinaryGeneric => "binary_generic",
            Quantity::PowerState => "power_state",
            Quantity::BatteryCharging => "battery_charging",
            Quantity::Cold => "cold",
            Quantity::Connectivity => "connectivity",
            Quantity::GarageDoor => "garage_door",
            Quantity::GasDetected => "gas_detected",
            Quantity::Heat => "heat",
            Quantity::LightDetected => "light_detected",
            Quantity::Lock => "lock",
            Quantity::Moving => "moving",
            Quantity::Plug => "plug",
            Quantity::Problem => "problem",
            Quantity::Running => "running",
            Quantity::Safety => "safety",
            Quantity::Sound => "sound",
            Quantity::Tamper => "tamper",
            Quantity::Vibration => "vibration",
        }
    }

    pub fn parse(s: &str) -> Option<Quantity> {
        Quantity::ALL.iter().copied().find(|q| q.as_str() == s)
    }

    /// Vital signs are a resident's clinical data: they outrank room data when the
    /// buffer must evict, and they are what staff see on a resident's tile.
    pub fn is_vital_sign(self) -> bool {
        matches!(
            self,
            Quantity::HeartRate
                | Quantity::PulseRate
                | Quantity::Spo2
                | Quantity::BodyTemperature
                | Quantity::SystolicPressure
                | Quantity::DiastolicPressure
                | Quantity::MeanArterialPressure
                | Quantity::BodyWeight
                | Quantity::BodyMassIndex
                | Quantity::BodyHeight
                | Quantity::BloodGlucose
                | Quantity::RrInterval
                | Quantity::PulseAmplitudeIndex
                | Quantity::RespirationRate
                | Quantity::Consciousness
                | Quantity::SupplementalOxygen
        )
    }

    /// A label a care worker understands.
    pub fn label(self) -> &'static str {
        match self {
            Quantity::HeartRate => "Heart rate",
            Quantity::PulseRate => "Pulse",
            Quantity::Spo2 => "SpO₂",
            Quantity::BodyTemperature => "Temperature",
            Quantity::SystolicPressure => "Systolic BP",
            Quantity::DiastolicPressure => "Diastolic BP",
            Quantity::MeanArterialPressure => "Mean arterial pressure",
            Quantity::CuffPressure => "Cuff pressure",
            Quantity::IntermediateTemperature => "Temperature while measuring",
            Quantity::BodyWeight => "Weight",
            Quantity::BodyMassIndex => "BMI",
            Quantity::BodyHeight => "Height",
            Quantity::BloodGlucose => "Blood glucose",
            Quantity::RrInterval => "RR interval",
            Quantity::EnergyExpended => "Energy expended",
            Quantity::PulseAmplitudeIndex => "Perfusion index",
            Quantity::RespirationRate => "Respiration rate",
            Quantity::Consciousness => "Consciousness (ACVPU)",
            Quantity::SupplementalOxygen => "On oxygen",
            Quantity::BatteryLevel => "Battery",
            Quantity::BatteryVoltage => "Battery voltage",
            Quantity::SignalStrength => "Signal",
            Quantity::Temperature => "Room temperature",
            Quantity::Humidity => "Humidity",
            Quantity::Pressure => "Air pressure",
            Quantity::Illuminance => "Light",
            Quantity::DewPoint => "Dew point",
            Quantity::Co2 => "CO₂",
            Quantity::Voc => "VOC",
            Quantity::Pm2_5 => "PM2.5",
            Quantity::Pm10 => "PM10",
            Quantity::Motion => "Motion",
            Quantity::Occupancy => "Occupancy",
            Quantity::Presence => "Presence",
            Quantity::Door => "Door",
            Quantity::Window => "Window",
            Quantity::Opening => "Opening",
            Quantity::Moisture => "Moisture",
            Quantity::Smoke => "Smoke",
            Quantity::CarbonMonoxide => "Carbon monoxide",
            Quantity::BatteryLow => "Battery low",
            Quantity::Acceleration => "Acceleration",
            Quantity::Count => "Count",
            Quantity::Energy => "Energy",
            Quantity::Power => "Power",
            Quantity::Current => "Current",
            Quantity::Distance => "Distance",
            Quantity::Duration => "Duration",
            Quantity::Rotation => "Rotation",
            Quantity::Speed => "Speed",
            Quantity::UvIndex => "UV index",
            Quantity::Volume => "Volume",
            Quantity::VolumeStorage => "Stored volume",
            Quantity::FlowRate => "Flow rate",
            Quantity::GasVolume => "Gas",
            Quantity::WaterVolume => "Water",
            Quantity::DeviceTimestamp => "Device time",
            Quantity::AngularVelocity => "Gyroscope",
            Quantity::Conductivity => "Conductivity",
            Quantity::Direction => "Direction",
            Quantity::Precipitation => "Precipitation",
            Quantity::Channel => "Channel",
            Quantity::RotationalSpeed => "Rotational speed",
            Quantity::LightLevel => "Light level",
            Quantity::MoistureLevel => "Moisture level",
            Quantity::TxPower => "Transmit power",
            Quantity::MovementCount => "Movements",
            Quantity::BinaryGeneric => "On/off",
            Quantity::PowerState => "Power on",
            Quantity::BatteryCharging => "Charging",
            Quantity::Cold => "Cold",
            Quantity::Connectivity => "Connected",
            Quantity::GarageDoor => "Garage door",
            Quantity::GasDetected => "Gas detected",
            Quantity::Heat => "Heat",
            Quantity::LightDetected => "Light detected",
            Quantity::Lock => "Unlocked",
            Quantity::Moving => "Moving",
            Quantity::Plug => "Plug",
            Quantity::Problem => "Problem",
            Quantity::Running => "Running",
            Quantity::Safety => "Safe",
            Quantity::Sound => "Sound",
            Quantity::Tamper => "Tamper",
            Quantity::Vibration => "Vibration",
        }
    }
}

/// A unit of measure, written on every wire as its UCUM code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    PerMinute,
    Percent,
    Celsius,
    Fahrenheit,
    MillimetreOfMercury,
    Kilopascal,
    Hectopascal,
    Kilogram,
    Pound,
    Metre,
    Inch,
    KilogramPerSquareMetre,
    MillimolePerLitre,
    MilligramPerDecilitre,
    KilogramPerLitre,
    MolePerLitre,
    Millisecond,
    Second,
    Kilojoule,
    Lux,
    PartsPerMillion,
    MicrogramPerCubicMetre,
    Volt,
    Watt,
    DecibelMilliwatt,
    MetrePerSecondSquared,
    KilowattHour,
    Ampere,
    MetrePerSecond,
    Millimetre,
    Degree,
    DegreePerSecond,
    Litre,
    Millilitre,
    CubicMetre,
    CubicMetrePerHour,
    MicrosiemensPerCentimetre,
    StandardGravity,
    /// Dimensionless: counts, and binary states (0 or 1).
    One,
}

impl Unit {
    pub const ALL: &'static [Unit] = &[
        Unit::PerMinute,
        Unit::Percent,
        Unit::Celsius,
        Unit::Fahrenheit,
        Unit::MillimetreOfMercury,
        Unit::Kilopascal,
        Unit::Hectopascal,
        Unit::Kilogram,
        Unit::Pound,
        Unit::Metre,
        Unit::Inch,
        Unit::KilogramPerSquareMetre,
        Unit::MillimolePerLitre,
        Unit::MilligramPerDecilitre,
        Unit::KilogramPerLitre,
        Unit::MolePerLitre,
        Unit::Millisecond,
        Unit::Second,
        Unit::Kilojoule,
        Unit::Lux,
        Unit::PartsPerMillion,
        Unit::MicrogramPerCubicMetre,
        Unit::Volt,
        Unit::Watt,
        Unit::DecibelMilliwatt,
        Unit::MetrePerSecondSquared,
        Unit::KilowattHour,
        Unit::Ampere,
        Unit::MetrePerSecond,
        Unit::Millimetre,
        Unit::Degree,
        Unit::DegreePerSecond,
        Unit::Litre,
        Unit::Millilitre,
        Unit::CubicMetre,
        Unit::CubicMetrePerHour,
        Unit::MicrosiemensPerCentimetre,
        Unit::StandardGravity,
        Unit::One,
    ];

    /// The UCUM code, as used on every wire.
    pub fn ucum(self) -> &'static str {
        match self {
            Unit::PerMinute => "/min",
            Unit::Percent => "%",
            Unit::Celsius => "Cel",
            Unit::Fahrenheit => "[degF]",
            Unit::MillimetreOfMercury => "mm[Hg]",
            Unit::Kilopascal => "kPa",
            Unit::Hectopascal => "hPa",
            Unit::Kilogram => "kg",
            Unit::Pound => "[lb_av]",
            Unit::Metre => "m",
            Unit::Inch => "[in_i]",
            Unit::KilogramPerSquareMetre => "kg/m2",
            Unit::MillimolePerLitre => "mmol/L",
            Unit::MilligramPerDecilitre => "mg/dL",
            Unit::KilogramPerLitre => "kg/L",
            Unit::MolePerLitre => "mol/L",
            Unit::Millisecond => "ms",
            Unit::Second => "s",
            Unit::Kilojoule => "kJ",
            Unit::Lux => "lx",
            Unit::PartsPerMillion => "[ppm]",
            Unit::MicrogramPerCubicMetre => "ug/m3",
            Unit::Volt => "V",
            Unit::Watt => "W",
            Unit::DecibelMilliwatt => "dB[mW]",
            Unit::MetrePerSecondSquared => "m/s2",
            Unit::KilowattHour => "kW.h",
            Unit::Ampere => "A",
            Unit::MetrePerSecond => "m/s",
            Unit::Millimetre => "mm",
            Unit::Degree => "deg",
            Unit::DegreePerSecond => "deg/s",
            Unit::Litre => "L",
            Unit::Millilitre => "mL",
            Unit::CubicMetre => "m3",
            Unit::CubicMetrePerHour => "m3/h",
            Unit::MicrosiemensPerCentimetre => "uS/cm",
            Unit::StandardGravity => "[g]",
            Unit::One => "1",
        }
    }

    pub fn from_ucum(code: &str) -> Option<Unit> {
        Unit::ALL.iter().copied().find(|u| u.ucum() == code)
    }

    /// How a person reads the unit on screen.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::PerMinute => "/min",
            Unit::Percent => "%",
            Unit::Celsius => "°C",
            Unit::Fahrenheit => "°F",
            Unit::MillimetreOfMercury => "mmHg",
            Unit::Kilopascal => "kPa",
            Unit::Hectopascal => "hPa",
            Unit::Kilogram => "kg",
            Unit::Pound => "lb",
            Unit::Metre => "m",
            Unit::Inch => "in",
            Unit::KilogramPerSquareMetre => "kg/m²",
            Unit::MillimolePerLitre => "mmol/L",
            Unit::MilligramPerDecilitre => "mg/dL",
            Unit::KilogramPerLitre => "kg/L",
            Unit::MolePerLitre => "mol/L",
            Unit::Millisecond => "ms",
            Unit::Second => "s",
            Unit::Kilojoule => "kJ",
            Unit::Lux => "lx",
            Unit::PartsPerMillion => "ppm",
            Unit::MicrogramPerCubicMetre => "µg/m³",
            Unit::Volt => "V",
            Unit::Watt => "W",
            Unit::DecibelMilliwatt => "dBm",
            Unit::MetrePerSecondSquared => "m/s²",
            Unit::KilowattHour => "kWh",
            Unit::Ampere => "A",
            Unit::MetrePerSecond => "m/s",
            Unit::Millimetre => "mm",
            Unit::Degree => "°",
            Unit::DegreePerSecond => "°/s",
            Unit::Litre => "L",
            Unit::Millilitre => "mL",
            Unit::CubicMetre => "m³",
            Unit::CubicMetrePerHour => "m³/h",
            Unit::MicrosiemensPerCentimetre => "µS/cm",
            Unit::StandardGravity => "g",
            Unit::One => "",
        }
    }
}

/// A sensor's special value: the sensor sent something that is deliberately not a
/// number. It is carried as a status and never turned into a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialValue {
    /// IEEE 11073 NaN: not a number.
    NotANumber,
    /// IEEE 11073 NRes: not at this resolution.
    NotAtResolution,
    PositiveInfinity,
    NegativeInfinity,
    /// IEEE 11073 reserved for future use.
    Reserved,
    /// The format's "not available" marker (e.g. Ruuvi's 0x8000).
    Unavailable,
    /// The device reports the measurement failed (e.g. a scale's 0xFFFF).
    Unsuccessful,
}

impl SpecialValue {
    pub const ALL: &'static [SpecialValue] = &[
        SpecialValue::NotANumber,
        SpecialValue::NotAtResolution,
        SpecialValue::PositiveInfinity,
        SpecialValue::NegativeInfinity,
        SpecialValue::Reserved,
        SpecialValue::Unavailable,
        SpecialValue::Unsuccessful,
    ];

    /// The `status` word on every wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialValue::NotANumber => "nan",
            SpecialValue::NotAtResolution => "nres",
            SpecialValue::PositiveInfinity => "+inf",
            SpecialValue::NegativeInfinity => "-inf",
            SpecialValue::Reserved => "reserved",
            SpecialValue::Unavailable => "unavailable",
            SpecialValue::Unsuccessful => "unsuccessful",
        }
    }

    /// What staff read for it: plain words, never the wire's status word.
    pub fn words(self) -> &'static str {
        match self {
            SpecialValue::NotANumber => "not a number",
            SpecialValue::NotAtResolution => "not at this resolution",
            SpecialValue::PositiveInfinity => "above its range",
            SpecialValue::NegativeInfinity => "below its range",
            SpecialValue::Reserved => "a reserved value",
            SpecialValue::Unavailable => "not available",
            SpecialValue::Unsuccessful => "measurement failed",
        }
    }

    pub fn parse(s: &str) -> Option<SpecialValue> {
        SpecialValue::ALL.iter().copied().find(|v| v.as_str() == s)
    }
}

/// A measured number, or the sensor's statement that there is none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Always finite: decoders never build a `Number` from a special value.
    Number(f64),
    Special(SpecialValue),
}

impl Value {
    pub fn number(self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(n),
            Value::Special(_) => None,
        }
    }

    /// `"ok"` for a number, else the special value's word.
    pub fn status(self) -> &'static str {
        match self {
            Value::Number(_) => "ok",
            Value::Special(s) => s.as_str(),
        }
    }
}

/// Identifies a resident in the local database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResidentId(pub i64);

/// Whom or what a device's readings describe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Resident(ResidentId),
    Room(String),
    /// Not assigned: the reading is kept for diagnosis but belongs to nobody.
    Unassigned,
}

/// One measured value, with everything needed to trust it: what, from which device,
/// about whom, in which unit, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub id: ReadingId,
    pub device: DeviceAddress,
    pub subject: Subject,
    pub quantity: Quantity,
    pub value: Value,
    pub unit: Unit,
    /// When the device says it measured, if it said (its own clock, which may be
    /// wrong or unset); `None` when the format carries no time.
    pub measured_at: Option<Timestamp>,
    /// When the gateway received it.
    pub received_at: Timestamp,
    /// Whether the gateway's clock was synchronised (NTP) when it received it.
    pub clock_synced: bool,
}

/// A device time this far ahead of the moment the gateway received the value is
/// still believed (clocks drift, and a measurement takes a moment); beyond it the
/// device's clock is wrong (a cuff still on summer time reads an hour ahead).
pub const CLOCK_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(120);

/// When a value was true as far as the gateway can trust it: the device's time,
/// unless that is more than [`CLOCK_TOLERANCE`] after the value was received (no
/// device measures the future), in which case the received time. Ordering,
/// freshness and scoring use this; the device's own time is kept beside it.
pub fn trusted_time(measured_at: Option<Timestamp>, received_at: Timestamp) -> Timestamp {
    match measured_at {
        Some(m) if m <= received_at.saturating_add(CLOCK_TOLERANCE) => m,
        _ => received_at,
    }
}

impl Reading {
    /// The device's claim of when the value was true: its own time if it gave
    /// one, else the moment the gateway received it (what is sent on the wire).
    pub fn taken_at(&self) -> Timestamp {
        self.measured_at.unwrap_or(self.received_at)
    }

    /// When the value was true as far as the gateway trusts it ([`trusted_time`]):
    /// what `latest`, freshness and the score use.
    pub fn trusted_at(&self) -> Timestamp {
        trusted_time(self.measured_at, self.received_at)
    }

    /// The device's clock is ahead of the gateway beyond [`CLOCK_TOLERANCE`]: its
    /// time is kept but not used.
    pub fn device_clock_ahead(&self) -> bool {
        self.measured_at.is_some_and(|m| m != self.trusted_at())
    }
}

/// What kind of sensor a device is; decides how it is handled and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    HeartRateMonitor,
    PulseOximeter,
    BloodPressureMonitor,
    Thermometer,
    WeightScale,
    GlucoseMeter,
    RoomSensor,
    Unknown,
}

impl DeviceKind {
    pub const ALL: &'static [DeviceKind] = &[
        DeviceKind::HeartRateMonitor,
        DeviceKind::PulseOximeter,
        DeviceKind::BloodPressureMonitor,
        DeviceKind::Thermometer,
        DeviceKind::WeightScale,
        DeviceKind::GlucoseMeter,
        DeviceKind::RoomSensor,
        DeviceKind::Unknown,
    ];

    /// The kind in staff's words, for pages.
    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::HeartRateMonitor => "heart-rate strap",
            DeviceKind::PulseOximeter => "pulse oximeter",
            DeviceKind::BloodPressureMonitor => "blood pressure monitor",
            DeviceKind::Thermometer => "thermometer",
            DeviceKind::WeightScale => "weighing scale",
            DeviceKind::GlucoseMeter => "glucose meter",
            DeviceKind::RoomSensor => "room sensor",
            DeviceKind::Unknown => "sensor",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::HeartRateMonitor => "heart_rate_monitor",
            DeviceKind::PulseOximeter => "pulse_oximeter",
            DeviceKind::BloodPressureMonitor => "blood_pressure_monitor",
            DeviceKind::Thermometer => "thermometer",
            DeviceKind::WeightScale => "weight_scale",
            DeviceKind::GlucoseMeter => "glucose_meter",
            DeviceKind::RoomSensor => "room_sensor",
            DeviceKind::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceKind> {
        DeviceKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// A sensor the gateway knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub address: DeviceAddress,
    pub kind: DeviceKind,
    pub model: Option<String>,
    pub name: Option<String>,
    pub subject: Subject,
}

/// A person living in the home.
#[derive(Debug, Clone, PartialEq)]
pub struct Resident {
    pub id: ResidentId,
    /// The name staff know the resident by. Never leaves the gateway.
    pub display_name: String,
    pub room: String,
    /// The pseudonymous reference that stands for the resident on the uplink.
    pub reference: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_round_trips_and_rejects_garbage() {
        let a: DeviceAddress = "a4:c1:38:00:00:01".parse().unwrap();
        assert_eq!(a.to_string(), "A4:C1:38:00:00:01");
        for bad in [
            "",
            "A4:C1:38:00:00",
            "A4:C1:38:00:00:01:02",
            "G4:C1:38:00:00:01",
            "A4C1:38:00:00:01",
        ] {
            assert!(bad.parse::<DeviceAddress>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reading_ids_sort_by_time() {
        let a = ReadingId::new(Timestamp::from_unix_ms(1_700_000_000_000));
        let b = ReadingId::new(Timestamp::from_unix_ms(1_700_000_000_001));
        assert!(a < b);
        assert_eq!(a.to_string().parse::<ReadingId>().unwrap(), a);
    }

    #[test]
    fn vocabularies_round_trip() {
        for q in Quantity::ALL {
            assert_eq!(Quantity::parse(q.as_str()), Some(*q));
        }
        for u in Unit::ALL {
            assert_eq!(Unit::from_ucum(u.ucum()), Some(*u));
        }
        for s in SpecialValue::ALL {
            assert_eq!(SpecialValue::parse(s.as_str()), Some(*s));
        }
        for k in DeviceKind::ALL {
            assert_eq!(DeviceKind::parse(k.as_str()), Some(*k));
        }
    }

    #[test]
    fn rfc3339_has_millis_and_zulu() {
        assert_eq!(
            Timestamp::from_unix_ms(1_763_930_467_123).to_rfc3339(),
            "2025-11-23T20:41:07.123Z"
        );
    }

    #[test]
    fn age_never_negative() {
        let t = Timestamp::from_unix_ms(10_000);
        assert_eq!(t.age_at(Timestamp::from_unix_ms(5_000)), Duration::ZERO);
        assert_eq!(
            t.age_at(Timestamp::from_unix_ms(70_000)),
            Duration::from_secs(60)
        );
    }

    /// Issue 15: a device clock ahead of the receipt by more than the
    /// tolerance is not trusted; behind it (a stored measurement) it is.
    #[test]
    fn a_device_time_ahead_of_its_receipt_is_not_trusted() {
        let received = Timestamp::from_unix_ms(10_000_000);
        let t = |ms: i64| Some(Timestamp::from_unix_ms(ms));
        assert_eq!(trusted_time(None, received), received);
        assert_eq!(
            trusted_time(t(10_120_000), received),
            received.saturating_add(CLOCK_TOLERANCE)
        );
        assert_eq!(trusted_time(t(10_120_001), received), received);
        assert_eq!(trusted_time(t(3_600_000), received).unix_ms(), 3_600_000);
    }
}
