//! The configuration file: one TOML file, typed, every key documented with its default.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and
//! every error names the file, the line and the key at fault. [`EXAMPLE`] is the
//! complete commented file that `carehub config example` prints; a test checks that
//! it parses to exactly [`Config::default`], so the documentation cannot drift.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{AddressError, DeviceAddress};
use crate::sensor::simulator::SimulatorConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub site: SiteConfig,
    pub sensors: SensorsConfig,
    pub simulator: SimulatorSection,
    pub ble: BleConfig,
    pub store: StoreConfig,
    pub web: WebConfig,
    pub clinical: ClinicalConfig,
    pub alerts: AlertsConfig,
    pub system: SystemConfig,
    pub uplink: UplinkConfig,
}

/// `[site]`: who this gateway is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// The care home's identifier in uplink topics. Default `"demo-site"`.
    pub id: String,
    /// This gateway's identifier (and its certificate's CN). Default `"carehub-gw"`.
    pub gateway_id: String,
    /// The care home's time zone (IANA name): device clocks show local time, and
    /// this turns them into instants. Default `"Europe/London"`.
    pub timezone: String,
}

/// Where sensor data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The seeded simulator (demo, tests, benchmarks).
    Simulator,
    /// The Bluetooth adapter through BlueZ.
    Ble,
}

/// `[sensors]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorsConfig {
    /// `"simulator"` or `"ble"`. Default `"simulator"`.
    pub source: SourceKind,
    /// Frames buffered between the source and the decoder. Default 1024.
    pub channel_capacity: usize,
}

/// `[simulator]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorSection {
    /// Number of simulated residents, 1 to 500. Default 8.
    pub residents: u16,
    /// Seed: the same seed gives the same home and the same values. Default 1.
    pub seed: u64,
    /// Every device speaks every this many milliseconds (load tests and the
    /// soak); 0 keeps each kind's own pace. Default 0.
    pub every_ms: u64,
}

/// `[ble]`: the Bluetooth source (used when `sensors.source = "ble"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BleConfig {
    /// The BlueZ adapter to use. Default `"hci0"`.
    pub adapter: String,
    /// Most GATT connections held at once; more wait their turn. Default 4.
    pub max_connections: usize,
    /// Longest wait for a connect or a service discovery. Default 20000.
    pub connect_timeout_ms: u64,
    /// First wait before reconnecting a device or restarting Bluetooth. Default 1000.
    pub reconnect_min_ms: u64,
    /// Longest wait, reached by doubling. Default 60000.
    pub reconnect_max_ms: u64,
    /// With sensors registered and nothing heard for this long, restart discovery.
    /// Default 60.
    pub silence_restart_s: u32,
    /// Devices that may pair without a pairing window: `"AA:BB:CC:DD:EE:FF"` or
    /// `"AA:BB:CC:DD:EE:FF=Model"` (the model must match the advertised name).
    /// Default empty.
    pub allow: Vec<String>,
}

/// How hard SQLite syncs to disk on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit reaches the disk before it is reported: nothing committed is
    /// lost on a power cut. The default.
    Full,
    /// WAL commits may be lost on power cut (never corrupted); fewer fsyncs.
    Normal,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite database file. Default `"/var/lib/carehub/carehub.db"`.
    pub path: PathBuf,
    /// A commit groups at most this many readings. Default 1000.
    pub commit_max_readings: usize,
    /// A commit waits at most this long for more readings to group. Default 20.
    pub commit_max_delay_ms: u64,
    /// `"full"` or `"normal"`. Default `"full"`.
    pub synchronous: Synchronous,
    /// Most readings the outbox holds before it evicts. Default 5000000.
    pub max_outbox_readings: u64,
    /// Most bytes of reading data the outbox holds before it evicts. Default 512.
    pub max_outbox_mb: u64,
    /// A reading still undelivered after this many days is evicted. Default 30.
    pub max_outbox_age_days: u32,
    /// Free space kept on the database's filesystem; below it the store frees
    /// history, then room data, then vital signs. Default 100.
    pub min_free_disk_mb: u64,
    /// Delivered readings are kept this many days for charts. Default 7.
    pub history_days: u32,
}

/// `[web]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address and port of the staff web page. Default `"127.0.0.1:8080"`.
    pub listen: SocketAddr,
    /// Serve HTTPS. `false` (plain HTTP) is allowed only on a loopback `listen`
    /// address, as `carehub demo` does. Default `true`.
    pub https: bool,
    /// The web certificate chain (PEM), e.g. from the care home's CA; with
    /// `key_file`. Empty: a self-signed certificate is made in the state
    /// directory on first start. Default `""`.
    pub cert_file: PathBuf,
    /// The web certificate's private key (PEM). Default `""`.
    pub key_file: PathBuf,
    /// Extra DNS names or IP addresses for the self-signed certificate (the host
    /// name, `localhost` and the listen address are always in it). Default `[]`.
    pub names: Vec<String>,
    /// A plain-HTTP port on the `listen` address that only redirects to HTTPS;
    /// 0 for none. Default 0.
    pub http_redirect_port: u16,
    /// A session unused this many minutes is signed out. Default 30.
    pub session_idle_minutes: u32,
    /// A session ends this many hours after sign-in, used or not. Default 12.
    pub session_max_hours: u32,
}

/// `[clinical]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClinicalConfig {
    /// A vital sign older than this is shown as stale, never as current. Default 60.
    pub stale_after_minutes: u32,
}

/// `[alerts]`: when the gateway alerts staff about its sensors and itself. The
/// clinical rules (NEWS2 bands, a single 3, nurse thresholds) need no settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// The rules are evaluated at least this often, even with no new readings.
    /// Default 30.
    pub evaluate_every_seconds: u32,
    /// An assigned sensor not heard for this many minutes is silent. Default 240.
    pub sensor_silent_minutes: u32,
    /// A sensor battery at or below this percentage is low. Default 15.
    pub battery_low_percent: u8,
    /// Readings waiting for the cloud longer than this many minutes alert. Default 360.
    pub backlog_max_minutes: u32,
    /// The uplink certificate alerts this many days before it expires. Default 14.
    pub certificate_warn_days: u32,
    /// Free disk at or below this many MB alerts. Default 256.
    pub disk_low_mb: u64,
    /// The minimum hold: an alert's cause must have stopped holding for this
    /// many minutes, without a break, before the alert counts as cleared (a
    /// value on a boundary never raises and clears in a loop). Clinical alerts
    /// stay on the pages after that until staff acknowledge them. Default 10.
    pub clear_after_minutes: u32,
    /// An emergency alert (NEWS2 high) nobody has acknowledged is announced
    /// again, on the pages and over MQTT, every this many minutes. Default 15.
    pub reannounce_minutes: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            evaluate_every_seconds: 30,
            sensor_silent_minutes: 240,
            battery_low_percent: 15,
            backlog_max_minutes: 360,
            certificate_warn_days: 14,
            disk_low_mb: 256,
            clear_after_minutes: 10,
            reannounce_minutes: 15,
        }
    }
}

/// `[system]`: how the daemon sits on its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemConfig {
    /// The account the daemon drops to when it is started as root outside systemd,
    /// once the database is open and the web port bound. Under systemd the unit's
    /// `User=` decides and this is not used. Default `"carehub"`.
    pub user: String,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            user: "carehub".into(),
        }
    }
}

/// The shape of the readings message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// carehub's own JSON batch, schema version 1 (`docs/mqtt.md`).
    Json,
    /// A FHIR R4 transaction Bundle of Observations (HL7 Personal Health Device IG).
    Fhir,
}

/// The MQTT protocol version of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 5: a refused publish is seen (PUBACK reason code 0x80 or more) and
    /// the broker's maximum packet size is honoured.
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1: a broker that refuses a publish still answers with an
    /// ordinary PUBACK, so refusals cannot be seen.
    #[serde(rename = "3.1.1")]
    V311,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V5 => "5",
            Protocol::V311 => "3.1.1",
        }
    }
}

/// Compression of readings messages on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The payload as it is (JSON or FHIR text).
    None,
    /// Raw DEFLATE (RFC 1951) of the payload, announced by the MQTT 5 content
    /// type (`docs/mqtt.md`): about 20 bytes a JSON reading on the wire at 100
    /// readings a message instead of about 290.
    Deflate,
}

/// `[uplink]`: the mutual-TLS MQTT connection to the cloud broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Whether to forward readings at all. Default `false` (the demo needs no broker).
    pub enabled: bool,
    /// The broker's host name; the broker's certificate must be valid for it.
    /// Default `"localhost"`.
    pub host: String,
    /// The broker's MQTT-over-TLS port. Default 8883.
    pub port: u16,
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    /// Default `"/etc/carehub/tls/ca.pem"`.
    pub ca_file: PathBuf,
    /// PEM file with this gateway's certificate (and any intermediates).
    /// Default `"/etc/carehub/tls/gateway.pem"`.
    pub cert_file: PathBuf,
    /// PEM file with this gateway's private key (PKCS#8, SEC1 or RSA).
    /// Default `"/etc/carehub/tls/gateway.key"`.
    pub key_file: PathBuf,
    /// `"5"` or `"3.1.1"`. Default `"5"`.
    pub protocol: Protocol,
    /// `"json"` or `"fhir"`. Default `"json"`.
    pub payload: PayloadFormat,
    /// `"none"` or `"deflate"` (MQTT 5 only: announced by the message's
    /// content type). Default `"none"`.
    pub compression: Compression,
    /// At most this many readings per message. Default 100.
    pub batch_max_readings: usize,
    /// At most this many messages published and not yet acknowledged. Default 64
    /// (cloud brokers cap it: AWS IoT Core at 100 a client).
    pub max_inflight: u16,
    /// MQTT keep-alive in seconds. Default 30.
    pub keep_alive_s: u64,
    /// First reconnect delay in milliseconds; doubles up to `backoff_max_ms`. Default 500.
    pub backoff_min_ms: u64,
    /// Longest reconnect delay in milliseconds. Default 60000.
    pub backoff_max_ms: u64,
    /// Warn this many days before the gateway certificate expires. Default 30.
    pub cert_warn_days: u32,
    /// MQTT 5: a batch the broker refused this many times in a row is held
    /// (kept, not sent again until a reconnect, a reload or a staff action).
    /// Default 3.
    pub hold_after_refusals: u32,
    /// End-to-end receipts: keep each reading in the outbox after the broker's
    /// PUBACK until the cloud consumer's receipt for it arrives on
    /// `carehub/v1/{site}/{gateway}/receipts`, and send it again when none came
    /// within `receipt_timeout_s` (docs/mqtt.md). Default `false`.
    pub receipts: bool,
    /// With `receipts`: seconds to wait for a receipt after the last PUBACK of
    /// a batch before sending the batch again. Default 120.
    pub receipt_timeout_s: u64,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            enabled: false,
            host: "localhost".into(),
            port: 8883,
            ca_file: PathBuf::from("/etc/carehub/tls/ca.pem"),
            cert_file: PathBuf::from("/etc/carehub/tls/gateway.pem"),
            key_file: PathBuf::from("/etc/carehub/tls/gateway.key"),
            protocol: Protocol::V5,
            payload: PayloadFormat::Json,
            compression: Compression::None,
            batch_max_readings: 100,
            max_inflight: 64,
            keep_alive_s: 30,
            backoff_min_ms: 500,
            backoff_max_ms: 60_000,
            cert_warn_days: 30,
            hold_after_refusals: 3,
            receipts: false,
            receipt_timeout_s: 120,
        }
    }
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            id: "demo-site".into(),
            gateway_id: "carehub-gw".into(),
            timezone: "Europe/London".into(),
        }
    }
}

impl SiteConfig {
    /// The site's zone; UTC only if `timezone` is invalid, which `validate`
    /// refuses before a daemon starts.
    pub fn zone(&self) -> crate::model::SiteZone {
        crate::model::SiteZone::named(&self.timezone)
            .unwrap_or_else(|_| crate::model::SiteZone::utc())
    }
}

impl Default for SensorsConfig {
    fn default() -> Self {
        SensorsConfig {
            source: SourceKind::Simulator,
            channel_capacity: 1024,
        }
    }
}

impl Default for SimulatorSection {
    fn default() -> Self {
        SimulatorSection {
            residents: 8,
            seed: 1,
            every_ms: 0,
        }
    }
}

impl Default for BleConfig {
    fn default() -> Self {
        BleConfig {
            adapter: "hci0".into(),
            max_connections: 4,
            connect_timeout_ms: 20_000,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 60_000,
            silence_restart_s: 60,
            allow: Vec::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/carehub/carehub.db"),
            commit_max_readings: 1000,
            commit_max_delay_ms: 20,
            synchronous: Synchronous::Full,
            max_outbox_readings: 5_000_000,
            max_outbox_mb: 512,
            max_outbox_age_days: 30,
            min_free_disk_mb: 100,
            history_days: 7,
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            https: true,
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            names: Vec::new(),
            http_redirect_port: 0,
            session_idle_minutes: 30,
            session_max_hours: 12,
        }
    }
}

impl Default for ClinicalConfig {
    fn default() -> Self {
        ClinicalConfig {
            stale_after_minutes: 60,
        }
    }
}

impl SimulatorSection {
    pub fn to_simulator_config(&self, site: &SiteConfig) -> SimulatorConfig {
        SimulatorConfig {
            residents: self.residents,
            seed: self.seed,
            timezone: site.timezone.clone(),
            every: (self.every_ms > 0).then(|| std::time::Duration::from_millis(self.every_ms)),
        }
    }
}

/// The complete configuration file with every key, its meaning and its default.
pub const EXAMPLE: &str = r#"# carehub configuration. Every key is optional; the value shown is the default.
# Unknown keys are errors. Check a file with: carehub config check PATH

[site]
# The care home's identifier, used in uplink topics.
id = "demo-site"
# This gateway's identifier; also the CN of its client certificate.
gateway_id = "carehub-gw"
# The care home's time zone (an IANA name). Health devices keep local time with
# no zone; this reads their clocks, daylight saving included.
timezone = "Europe/London"

[sensors]
# Where sensor data comes from: "simulator" (seeded, no hardware) or "ble"
# (the Bluetooth adapter through BlueZ).
source = "simulator"
# Frames buffered between the sensor source and the decoder.
channel_capacity = 1024

[simulator]
# Number of simulated residents, 1 to 500. Each has an oximeter, a thermometer,
# a blood-pressure cuff, a scale and a room sensor; every second one a heart-rate strap.
residents = 8
# The same seed gives the same residents, devices and values.
seed = 1
# Every device speaks every this many milliseconds, 100 to 3600000 (load tests,
# the soak); 0 keeps each kind's own pace (oximeters and straps every 5 s, room
# sensors every 30 s, cuffs and thermometers every 15 min, scales every 6 h).
every_ms = 0

[ble]
# Used when sensors.source = "ble". Only devices registered in the database (assigned
# to a resident or a room) are connected to; others are only listed as nearby.
# The BlueZ adapter.
adapter = "hci0"
# Most GATT connections held at once; further health devices queue, first come
# first served.
max_connections = 4
# Longest wait, in milliseconds, for a connect or a service discovery.
connect_timeout_ms = 20000
# Reconnecting a device (or restarting Bluetooth) waits this many milliseconds
# first, doubling on each failure...
reconnect_min_ms = 1000
# ...up to this many.
reconnect_max_ms = 60000
# With sensors registered and no advertisement heard for this many seconds, restart
# discovery (BlueZ can stop scanning silently).
silence_restart_s = 60
# Devices that may pair (bond) without a staff-opened pairing window, e.g.
# ["A4:C1:38:0B:00:01", "00:09:1F:80:12:34=UA-651BLE"]: an address, or an address
# and the model name the device must advertise. Anything else pairs only while a
# window is open (carehub pair --window 120, or the web API).
allow = []

[store]
# The SQLite database that buffers every reading.
path = "/var/lib/carehub/carehub.db"
# A commit groups at most this many readings...
commit_max_readings = 1000
# ...and waits at most this many milliseconds for more to group.
commit_max_delay_ms = 20
# "full": a commit is on disk before it is reported (nothing committed is lost on
# a power cut). "normal": fewer fsyncs; the last commits may be lost on power cut.
synchronous = "full"
# Caps on the outbox (readings not yet acknowledged by the cloud). When one is
# reached the oldest room/ambient readings are evicted first, then the oldest
# vital signs; every eviction is counted, logged and shown on the status page.
max_outbox_readings = 5000000
max_outbox_mb = 512
# An undelivered reading older than this many days is evicted.
max_outbox_age_days = 30
# Free space kept on the filesystem of the database. Below it the store deletes
# delivered history first, then room data, then vital signs.
min_free_disk_mb = 100
# Delivered readings are kept locally this many days for charts, then purged.
history_days = 7

[web]
# Address and port of the staff web page.
listen = "127.0.0.1:8080"
# Serve HTTPS. Plain HTTP (false) is allowed only on a loopback address, as in
# carehub demo: the page holds residents' health data and staff passwords.
https = true
# The web certificate chain and key (PEM), e.g. from the care home's CA. Leave
# both empty and the gateway makes a self-signed certificate on first start
# (web-cert.pem and web-key.pem beside the database).
cert_file = ""
key_file = ""
# Extra DNS names or IP addresses for the self-signed certificate, e.g.
# ["carehub.local", "192.168.1.20"]. The host name, localhost and the listen
# address are always included.
names = []
# A plain-HTTP port on the listen address that only redirects to HTTPS
# (e.g. 80); 0 for none.
http_redirect_port = 0
# Staff are signed out after this many minutes without using the page...
session_idle_minutes = 30
# ...and this many hours after signing in, whatever they do.
session_max_hours = 12

[clinical]
# A vital sign older than this many minutes is shown as stale, never as current.
stale_after_minutes = 60

[alerts]
# The alert rules run at least this often, even when no reading arrives.
evaluate_every_seconds = 30
# An assigned sensor not heard for this many minutes raises "sensor silent".
sensor_silent_minutes = 240
# A sensor battery at or below this percentage raises "battery low".
battery_low_percent = 15
# Readings waiting for the cloud longer than this many minutes raise an alert.
backlog_max_minutes = 360
# The uplink certificate raises an alert this many days before it expires.
certificate_warn_days = 14
# Free disk at or below this many MB raises "disk low".
disk_low_mb = 256
# An alert counts as cleared only once its cause has stayed away this many
# minutes without a break (a value on a boundary does not raise and clear in a
# loop). Alerts about a resident stay on the pages until staff acknowledge them.
clear_after_minutes = 10
# An emergency (NEWS2 high) alert nobody has acknowledged is announced again,
# on the pages and over MQTT, every this many minutes.
reannounce_minutes = 15

[system]
# The account carehub switches to when started as root outside systemd, after it
# has opened the database and bound the web port. Under systemd the unit's User=
# decides and this key is not used.
user = "carehub"

[uplink]
# Forward readings to the cloud broker over MQTT with mutual TLS. Off by default
# so that the demo needs no broker. Topics and payloads: docs/mqtt.md.
enabled = false
# The broker's host name; its certificate must be valid for this name.
host = "localhost"
# The broker's MQTT-over-TLS port.
port = 8883
# The CA that signs the broker's certificate (PEM).
ca_file = "/etc/carehub/tls/ca.pem"
# This gateway's certificate, CN = site.gateway_id (PEM). Make a key and a
# certificate request with: carehub cert request --gateway-id ID --out DIR
cert_file = "/etc/carehub/tls/gateway.pem"
# This gateway's private key (PEM: PKCS#8, SEC1 or RSA).
key_file = "/etc/carehub/tls/gateway.key"
# MQTT version: "5" (default) or "3.1.1". Only MQTT 5 lets the broker say that
# it refused a message (PUBACK reason code); under 3.1.1 a refused message is
# acknowledged like a delivered one and lost without trace (docs/mqtt.md).
protocol = "5"
# "json" (carehub's JSON batch, schema 1) or "fhir" (FHIR R4 Observations).
payload = "json"
# "none" or "deflate": raw DEFLATE of each readings message, announced by its
# MQTT 5 content type; about 20 instead of 290 bytes a JSON reading on the wire
# at 100 readings a message (for a metered 4G link). MQTT 5 only; the cloud
# consumer must inflate it (docs/mqtt.md).
compression = "none"
# At most this many readings per message.
batch_max_readings = 100
# At most this many messages sent and not yet acknowledged by the broker
# (AWS IoT Core allows 100 a client). Each holds its message in memory until
# acknowledged: about 25 kB per message at 100 readings.
max_inflight = 64
# MQTT keep-alive, seconds.
keep_alive_s = 30
# Reconnect delay: starts here (milliseconds), doubles with jitter on each
# failure, up to backoff_max_ms.
backoff_min_ms = 500
backoff_max_ms = 60000
# Warn (log, status topic, web page) this many days before the certificate expires.
cert_warn_days = 30
# MQTT 5: a batch the broker refuses this many times in a row is held: kept in
# the outbox but set aside, so that the readings behind it still go; shown on
# the gateway page and /metrics and raised as an alert; tried again after a
# reconnect, a reload (SIGHUP) or a staff action on the gateway page.
hold_after_refusals = 3
# End-to-end receipts: keep each reading after the broker's PUBACK until the
# cloud consumer says it has it in its own database (a receipt on
# carehub/v1/{site}/{gateway}/receipts); a batch with no receipt within
# receipt_timeout_s seconds is sent again. Needs a consumer that sends receipts
# (docs/mqtt.md, tools/receipt_consumer.py); without one nothing is ever deleted.
receipts = false
receipt_timeout_s = 120
"#;

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the fault is not on one line (e.g. an unreadable file).
    pub line: Option<usize>,
    /// The dotted key at fault, e.g. `store.commit_max_readings`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Bytes a reading takes in a message, about, by payload (docs/performance.md),
/// for the message-size warnings of `config check`.
fn bytes_per_reading(payload: PayloadFormat) -> usize {
    match payload {
        PayloadFormat::Json => 330,
        PayloadFormat::Fhir => 1600,
    }
}

/// Known limits of cloud brokers, by host name suffix: (suffix, broker, largest
/// message in bytes, most QoS 1 messages in flight a client).
const KNOWN_BROKERS: &[(&str, &str, usize, u16)] = &[
    // AWS IoT Core: 128 KB a message, 100 in-flight unacknowledged a client.
    (".amazonaws.com", "AWS IoT Core", 128 * 1024, 100),
    // Azure Event Grid MQTT broker: 512 KB a message, 100 in flight.
    (".eventgrid.azure.net", "Azure Event Grid", 512 * 1024, 100),
];

impl Config {
    /// What `config check` warns about: valid settings that a known broker
    /// will refuse or that lose information.
    pub fn warnings(&self) -> Vec<String> {
        let u = &self.uplink;
        let mut out = Vec::new();
        if u.protocol == Protocol::V311 {
            out.push(
                "uplink.protocol = \"3.1.1\": a broker that refuses a message still acknowledges it under MQTT 3.1.1, so refused readings are deleted as delivered; use \"5\" if the broker supports it".into(),
            );
        }
        let host = u.host.to_ascii_lowercase();
        let message = u
            .batch_max_readings
            .saturating_mul(bytes_per_reading(u.payload))
            + 128;
        for &(suffix, broker, max_message, max_inflight) in KNOWN_BROKERS {
            if !host.ends_with(suffix) {
                continue;
            }
            if message > max_message {
                let fits = (max_message - 128) / bytes_per_reading(u.payload);
                out.push(format!(
                    "uplink.batch_max_readings = {}: a {payload} message of that many readings is about {} kB, over {broker}'s limit of {} kB a message; the broker would refuse it (at most about {fits} readings fit)",
                    u.batch_max_readings,
                    message / 1024,
                    max_message / 1024,
                    payload = match u.payload {
                        PayloadFormat::Json => "JSON",
                        PayloadFormat::Fhir => "FHIR",
                    },
                ));
            }
            if u.max_inflight > max_inflight {
                out.push(format!(
                    "uplink.max_inflight = {}: {broker} allows at most {max_inflight} unacknowledged QoS 1 messages a client",
                    u.max_inflight
                ));
            }
        }
        out
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text, Config::default())
    }

    /// Parses `text` as a file overlaid on `base`: keys the file sets win, the rest
    /// keep `base`'s values. Then validates the result.
    pub fn parse(file: &Path, text: &str, base: Config) -> Result<Config, ConfigError> {
        // Parse the file alone first: every field has a default, so this checks
        // each key's name and type with the span of the fault.
        toml::from_str::<Config>(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: file.to_owned(),
                line,
                key: line.and_then(|l| key_at_line(text, l)),
                message: e.message().to_owned(),
            }
        })?;
        let overlay: toml::Table =
            toml::from_str(text).map_err(|e: toml::de::Error| ConfigError {
                file: file.to_owned(),
                line: e.span().map(|s| line_of(text, s.start)),
                key: None,
                message: e.message().to_owned(),
            })?;
        let internal = |e: &dyn fmt::Display| ConfigError {
            file: file.to_owned(),
            line: None,
            key: None,
            message: format!("internal: cannot overlay the file on the defaults: {e}"),
        };
        let mut merged = toml::Table::try_from(&base).map_err(|e| internal(&e))?;
        merge(&mut merged, overlay);
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| internal(&e))?;
        config.validate().map_err(|(key, message)| ConfigError {
            file: file.to_owned(),
            line: line_of_key(text, key),
            key: Some(key.to_owned()),
            message,
        })?;
        Ok(config)
    }

    /// Checks what types cannot: ranges and relations between keys.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let every = self.simulator.every_ms;
        if every != 0 && !(100..=3_600_000).contains(&every) {
            return Err((
                "simulator.every_ms",
                format!("{every} is out of range: 0, or 100 to 3600000"),
            ));
        }
        if !(1..=500).contains(&self.simulator.residents) {
            return Err((
                "simulator.residents",
                format!("{} is out of range 1 to 500", self.simulator.residents),
            ));
        }
        if self.sensors.channel_capacity == 0 {
            return Err(("sensors.channel_capacity", "must be at least 1".into()));
        }
        if !(1..=16).contains(&self.ble.max_connections) {
            return Err((
                "ble.max_connections",
                format!("{} is out of range 1 to 16", self.ble.max_connections),
            ));
        }
        if self.ble.adapter.is_empty()
            || !self.ble.adapter.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err((
                "ble.adapter",
                format!("{:?} must be an adapter name like hci0", self.ble.adapter),
            ));
        }
        if self.ble.reconnect_min_ms == 0 || self.ble.reconnect_min_ms > self.ble.reconnect_max_ms {
            return Err((
                "ble.reconnect_min_ms",
                "must be at least 1 and at most ble.reconnect_max_ms".into(),
            ));
        }
        if self.ble.connect_timeout_ms == 0 {
            return Err(("ble.connect_timeout_ms", "must be at least 1".into()));
        }
        for entry in &self.ble.allow {
            if let Err(e) = entry.parse::<AllowEntry>() {
                return Err(("ble.allow", e.to_string()));
            }
        }
        if self.ble.silence_restart_s == 0 {
            return Err(("ble.silence_restart_s", "must be at least 1".into()));
        }
        let web = &self.web;
        if !web.https && !web.listen.ip().is_loopback() {
            return Err((
                "web.https",
                format!(
                    "plain HTTP is allowed only on a loopback address, not {}: set https = true or listen on 127.0.0.1",
                    web.listen
                ),
            ));
        }
        if web.cert_file.as_os_str().is_empty() != web.key_file.as_os_str().is_empty() {
            return Err((
                "web.cert_file",
                "set both cert_file and key_file, or neither (a self-signed certificate is made)"
                    .into(),
            ));
        }
        if web.http_redirect_port != 0
            && (!web.https || web.http_redirect_port == web.listen.port())
        {
            return Err((
                "web.http_redirect_port",
                "redirects to HTTPS need https = true and a port other than the listen port".into(),
            ));
        }
        if !(1..=1440).contains(&web.session_idle_minutes) {
            return Err((
                "web.session_idle_minutes",
                format!("{} is out of range 1 to 1440", web.session_idle_minutes),
            ));
        }
        if !(1..=168).contains(&web.session_max_hours)
            || u64::from(web.session_max_hours) * 60 < u64::from(web.session_idle_minutes)
        {
            return Err((
                "web.session_max_hours",
                "must be 1 to 168 and not shorter than session_idle_minutes".into(),
            ));
        }
        if self.store.commit_max_readings == 0 {
            return Err(("store.commit_max_readings", "must be at least 1".into()));
        }
        if self.store.commit_max_delay_ms > 10_000 {
            return Err((
                "store.commit_max_delay_ms",
                "must be at most 10000 (10 s)".into(),
            ));
        }
        if self.store.max_outbox_readings == 0 {
            return Err(("store.max_outbox_readings", "must be at least 1".into()));
        }
        if self.store.max_outbox_mb == 0 {
            return Err(("store.max_outbox_mb", "must be at least 1".into()));
        }
        if self.store.max_outbox_age_days == 0 {
            return Err(("store.max_outbox_age_days", "must be at least 1".into()));
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(("store.path", "must not be empty".into()));
        }
        if self.clinical.stale_after_minutes == 0 {
            return Err(("clinical.stale_after_minutes", "must be at least 1".into()));
        }
        if self.alerts.evaluate_every_seconds == 0 {
            return Err(("alerts.evaluate_every_seconds", "must be at least 1".into()));
        }
        if self.alerts.sensor_silent_minutes == 0 {
            return Err(("alerts.sensor_silent_minutes", "must be at least 1".into()));
        }
        if self.alerts.reannounce_minutes == 0 {
            return Err(("alerts.reannounce_minutes", "must be at least 1".into()));
        }
        if self.alerts.battery_low_percent > 100 {
            return Err(("alerts.battery_low_percent", "must be 0 to 100".into()));
        }
        if self.system.user.is_empty() || self.system.user.contains(['/', ':', '\0']) {
            return Err((
                "system.user",
                format!("{:?} is not a user name", self.system.user),
            ));
        }
        let u = &self.uplink;
        if !(1..=10_000).contains(&u.batch_max_readings) {
            return Err(("uplink.batch_max_readings", "must be 1 to 10000".into()));
        }
        if u.max_inflight == 0 {
            return Err(("uplink.max_inflight", "must be at least 1".into()));
        }
        if u.keep_alive_s < 5 {
            return Err(("uplink.keep_alive_s", "must be at least 5".into()));
        }
        if u.backoff_min_ms == 0 || u.backoff_min_ms > u.backoff_max_ms {
            return Err((
                "uplink.backoff_min_ms",
                "must be at least 1 and at most uplink.backoff_max_ms".into(),
            ));
        }
        if u.host.is_empty() {
            return Err(("uplink.host", "must not be empty".into()));
        }
        if u.compression == Compression::Deflate && u.protocol != Protocol::V5 {
            return Err((
                "uplink.compression",
                "\"deflate\" needs uplink.protocol = \"5\" (the content type announces it)".into(),
            ));
        }
        if u.hold_after_refusals == 0 {
            return Err(("uplink.hold_after_refusals", "must be at least 1".into()));
        }
        if u.receipt_timeout_s == 0 {
            return Err(("uplink.receipt_timeout_s", "must be at least 1".into()));
        }
        // Cloud brokers (AWS IoT, Azure IoT Hub) limit client ids to 128 bytes and
        // the client id is the gateway id.
        if self.site.gateway_id.len() > 128 {
            return Err((
                "site.gateway_id",
                "must be at most 128 characters (it is the MQTT client id)".into(),
            ));
        }
        if let Err(e) = crate::model::SiteZone::named(&self.site.timezone) {
            return Err(("site.timezone", e));
        }
        for (key, value) in [
            ("site.id", &self.site.id),
            ("site.gateway_id", &self.site.gateway_id),
        ] {
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err((
                    key,
                    format!(
                        "{value:?} must be non-empty letters, digits, '-' or '_' (it is used in MQTT topics)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// The dotted key defined on `line`, from the nearest `[table]` header above it.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = h.trim().to_owned();
        }
        if i + 1 == line {
            if t.starts_with('[') {
                return Some(table);
            }
            let key = t.split('=').next()?.trim().trim_matches('"');
            if key.is_empty() {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}

/// The line on which dotted `key` is set (or its table declared).
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut table_line = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = h.trim().to_owned();
            if table == key {
                table_line = Some(i + 1);
            }
            continue;
        }
        let Some(k) = t.split('=').next().map(|k| k.trim().trim_matches('"')) else {
            continue;
        };
        if t.contains('=') && !t.starts_with('#') {
            let full = if table.is_empty() {
                k.to_owned()
            } else {
                format!("{table}.{k}")
            };
            if full == key {
                return Some(i + 1);
            }
        }
    }
    table_line
}

/// What can be wrong with an allow-list entry (`ble.allow`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowEntryError {
    /// The address part is not an address.
    #[error("allow-list entry: {0}")]
    Address(#[from] AddressError),
    /// The model after `=` is empty.
    #[error("allow-list entry {0:?}: the model after '=' is empty")]
    EmptyModel(String),
}

/// One allow-list entry: an address, or an address that must also report `model`
/// (compared with the name the device advertises, since the model number
/// characteristic can only be read after connecting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub address: DeviceAddress,
    pub model: Option<String>,
}

impl FromStr for AllowEntry {
    type Err = AllowEntryError;
    /// `"AA:BB:CC:DD:EE:FF"` or `"AA:BB:CC:DD:EE:FF=Model name"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, model) = match s.split_once('=') {
            Some((_, m)) if m.trim().is_empty() => {
                return Err(AllowEntryError::EmptyModel(s.into()));
            }
            Some((a, m)) => (a, Some(m.trim().to_owned())),
            None => (s, None),
        };
        Ok(AllowEntry {
            address: address.trim().parse::<DeviceAddress>()?,
            model,
        })
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(m) => write!(f, "{}={m}", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

#[cfg(test)]
mod broker_limit_tests {
    use super::*;

    #[test]
    fn config_check_warns_about_known_broker_limits() {
        let mut c = Config::default();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        c.uplink.host = "a1b2c3-ats.iot.eu-west-2.amazonaws.com".into();
        // 100 JSON readings (about 33 kB) fit AWS IoT Core's 128 kB.
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        // 100 FHIR readings (about 160 kB) do not; nor 500 JSON readings.
        c.uplink.payload = PayloadFormat::Fhir;
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("AWS IoT Core's limit of 128 kB"), "{w:?}");
        c.uplink.payload = PayloadFormat::Json;
        c.uplink.batch_max_readings = 500;
        c.uplink.max_inflight = 200;
        let w = c.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].contains("at most 100 unacknowledged"), "{w:?}");
        // Another broker: no known limit.
        c.uplink.host = "mqtt.example.org".into();
        assert!(c.warnings().is_empty());
        c.uplink.protocol = Protocol::V311;
        assert!(c.warnings()[0].contains("refused readings are deleted as delivered"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, line: Option<usize>, key: &str, message_part: &str) {
        let e = Config::parse(Path::new("c.toml"), text, Config::default()).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (line, Some(key)), "{e}");
        assert!(e.message.contains(message_part), "{e}");
        assert!(e.to_string().starts_with("c.toml"), "{e}");
    }

    #[test]
    fn example_is_exactly_the_defaults() {
        let c = Config::parse(Path::new("example"), EXAMPLE, Config::default()).unwrap();
        assert_eq!(c, Config::default());
        let empty = Config::parse(Path::new("empty"), "", Config::default()).unwrap();
        assert_eq!(empty, Config::default());
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        check_err(
            "[store]\npath = \"/tmp/x.db\"\ncommit_max_readigns = 5\n",
            Some(3),
            "store.commit_max_readigns",
            "unknown field",
        );
        check_err("[sotre]\npath = \"x\"\n", Some(1), "sotre", "unknown field");
    }

    #[test]
    fn wrong_type_is_an_error_with_its_line() {
        check_err(
            "[simulator]\nseed = 2\nresidents = \"many\"\n",
            Some(3),
            "simulator.residents",
            "invalid type",
        );
        check_err(
            "[web]\nlisten = \"localhost\"\n",
            Some(2),
            "web.listen",
            "invalid",
        );
        check_err(
            "[sensors]\nsource = \"bluetooth\"\n",
            Some(2),
            "sensors.source",
            "unknown variant",
        );
        check_err(
            "[site]\nid = \"h\"\ntimezone = \"Mars/Olympus\"\n",
            Some(3),
            "site.timezone",
            "not a time zone",
        );
    }

    #[test]
    fn web_security_keys_are_checked() {
        check_err(
            "[web]\nlisten = \"0.0.0.0:8080\"\nhttps = false\n",
            Some(3),
            "web.https",
            "only on a loopback address",
        );
        check_err(
            "[web]\ncert_file = \"/etc/carehub/web.pem\"\n",
            Some(2),
            "web.cert_file",
            "set both",
        );
        check_err(
            "[web]\nhttps = false\nhttp_redirect_port = 8081\n",
            Some(3),
            "web.http_redirect_port",
            "need https = true",
        );
        check_err(
            "[web]\nsession_idle_minutes = 0\n",
            Some(2),
            "web.session_idle_minutes",
            "out of range",
        );
        let ok = Config::parse(
            Path::new("c.toml"),
            "[web]\nlisten = \"127.0.0.1:8080\"\nhttps = false\n",
            Config::default(),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = Config::parse(Path::new("c.toml"), "[web]\nlisten = \n", Config::default())
            .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn out_of_range_is_an_error_with_its_line() {
        check_err(
            "[simulator]\n\nresidents = 0\n",
            Some(3),
            "simulator.residents",
            "out of range",
        );
        check_err(
            "[simulator]\nevery_ms = 5\n",
            Some(2),
            "simulator.every_ms",
            "out of range",
        );
        check_err("[site]\nid = \"care home/1\"\n", Some(2), "site.id", "MQTT");
        check_err(
            "[system]\nuser = \"\"\n",
            Some(2),
            "system.user",
            "not a user name",
        );
        check_err(
            "[ble]\nallow = [\"AA:BB\"]\n",
            Some(2),
            "ble.allow",
            "invalid Bluetooth address",
        );
        check_err(
            "[ble]\nmax_connections = 0\n",
            Some(2),
            "ble.max_connections",
            "out of range",
        );
        check_err(
            "[ble]\nreconnect_min_ms = 9000\nreconnect_max_ms = 10\n",
            Some(2),
            "ble.reconnect_min_ms",
            "at most",
        );
    }

    #[test]
    fn overlay_keeps_base_values_it_does_not_set() {
        let mut base = Config::default();
        base.store.path = "/data/demo.db".into();
        let c = Config::parse(Path::new("o"), "[simulator]\nresidents = 3\n", base).unwrap();
        assert_eq!(c.store.path, PathBuf::from("/data/demo.db"));
        assert_eq!(c.simulator.residents, 3);
    }
}
