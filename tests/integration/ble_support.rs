//! The tier-2 BLE rig: a private `dbus-daemon` standing in for the system bus, a
//! fake BlueZ on it (python-dbusmock's bluez5 template extended in
//! `fake_bluez.py` with GATT, notifications and scanning), and the real `carehub`
//! binary pointed at it through `DBUS_SYSTEM_BUS_ADDRESS`. Nothing in carehub is
//! replaced: btleplug, bluez-async and the `dbus` crate talk D-Bus to the fake as
//! they would to bluetoothd.
//!
//! Every process is killed on drop. Each test gets its own bus, so tests run in
//! parallel. Needs `dbus-daemon`, `dbus-send` and a Python with python-dbusmock
//! (`scripts/test` installs them; `CAREHUB_TEST_PYTHON` overrides the venv path).
//! A missing piece fails the test with a message saying what to install.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carehub::model::{Device, DeviceKind, Resident};
use carehub::store::{Store, StoreSettings};

use crate::support::{Daemon, free_port, wait_for};

/// Where `scripts/test` makes the venv with python-dbusmock.
fn python() -> PathBuf {
    match std::env::var_os("CAREHUB_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-ble/bin/python"),
    }
}

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/fake_bluez.py")
}

/// A full 128-bit UUID string for a 16-bit SIG UUID.
pub fn uuid16(short: u16) -> String {
    format!("0000{short:04x}-0000-1000-8000-00805f9b34fb")
}

pub struct FakeBluez {
    dir: tempfile::TempDir,
    bus: Child,
    mock: Option<Child>,
}

impl FakeBluez {
    /// Starts the private bus and the fake bluetoothd, and waits until it owns
    /// `org.bluez`.
    pub fn start() -> FakeBluez {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("system_bus");
        let bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon not found: install Debian's dbus (scripts/test does)");
        let mut fake = FakeBluez {
            dir,
            bus,
            mock: None,
        };
        wait_for(Duration::from_secs(10), || {
            fake.dbus_send(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.GetId",
                &[],
            )
            .ok()
        })
        .expect("private dbus-daemon did not come up");
        fake.start_bluez();
        fake
    }

    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("system_bus").display())
    }

    /// Starts (or starts again) the fake bluetoothd: a new process, a new owner
    /// of `org.bluez`, no adapters.
    pub fn start_bluez(&mut self) {
        let python = python();
        assert!(
            python.exists(),
            "{} not found: run scripts/test (it makes the venv with python-dbusmock) or set CAREHUB_TEST_PYTHON",
            python.display()
        );
        let log = std::fs::File::create(self.dir.path().join("bluez.log")).unwrap();
        let mock = Command::new(&python)
            .args(["-m", "dbusmock", "--system", "--template"])
            .arg(template())
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start python-dbusmock");
        self.mock = Some(mock);
        wait_for(Duration::from_secs(15), || {
            let owned = self
                .dbus_send(
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    &["string:org.bluez"],
                )
                .ok()?;
            owned.contains("true").then_some(())
        })
        .unwrap_or_else(|| panic!("fake bluez did not take org.bluez:\n{}", self.log()));
    }

    /// Kills the fake bluetoothd, as a crash or `systemctl restart bluetooth` would.
    pub fn stop_bluez(&mut self) {
        if let Some(mut m) = self.mock.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bluez.log")).unwrap_or_default()
    }

    fn dbus_send(
        &self,
        dest: &str,
        path: &str,
        method: &str,
        args: &[&str],
    ) -> Result<String, String> {
        let out = Command::new("dbus-send")
            .args([
                "--system",
                "--print-reply=literal",
                &format!("--dest={dest}"),
                path,
                method,
            ])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .output()
            .expect("dbus-send not found: install Debian's dbus (scripts/test does)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Calls a method of the fake's `org.bluez.Mock` interface; panics on error.
    pub fn mock(&self, method: &str, args: &[&str]) -> String {
        self.dbus_send("org.bluez", "/", &format!("org.bluez.Mock.{method}"), args)
            .unwrap_or_else(|e| panic!("{method}{args:?} failed: {e}\n{}", self.log()))
    }

    pub fn add_adapter(&self) {
        self.mock("AddGatewayAdapter", &["string:hci0"]);
    }

    pub fn remove_adapter(&self) {
        self.mock("RemoveAdapterWithDevices", &["string:hci0"]);
    }

    pub fn add_sensor(&self, address: &str, name: &str, services: &[u16]) -> String {
        let uuids: Vec<String> = services.iter().map(|s| uuid16(*s)).collect();
        self.mock(
            "AddSensor",
            &[
                "string:hci0",
                &format!("string:{address}"),
                &format!("string:{name}"),
                &format!("array:string:{}", uuids.join(",")),
            ],
        )
    }

    pub fn add_service(&self, address: &str, service: u16) -> String {
        self.mock(
            "AddGattService",
            &[
                "string:hci0",
                &format!("string:{address}"),
                &format!("string:{}", uuid16(service)),
            ],
        )
    }

    /// A characteristic with `flags` (BlueZ words: read, notify, indicate) and an
    /// initial value in hex; returns its object path.
    pub fn add_characteristic(&self, service: &str, uuid: u16, flags: &str, value: &str) -> String {
        self.mock(
            "AddGattCharacteristic",
            &[
                &format!("string:{service}"),
                &format!("string:{}", uuid16(uuid)),
                &format!("array:string:{flags}"),
                &format!("string:{value}"),
            ],
        )
    }

    /// One advertisement with BTHome service data; false when the adapter is not
    /// scanning (nobody hears it).
    pub fn advertise_bthome(&self, address: &str, rssi: i16, payload_hex: &str) -> bool {
        self.mock(
            "Advertise",
            &[
                "string:hci0",
                &format!("string:{address}"),
                &format!("int16:{rssi}"),
                &format!("string:{}={payload_hex}", uuid16(0xFCD2)),
                "string:",
            ],
        )
        .contains("true")
    }

    /// An advertisement with no data (RSSI only), as a device in range sends
    /// while it is not connected; false when the adapter is not scanning.
    pub fn advertise_presence(&self, address: &str) -> bool {
        self.mock(
            "Advertise",
            &[
                "string:hci0",
                &format!("string:{address}"),
                "int16:-61",
                "string:",
                "string:",
            ],
        )
        .contains("true")
    }

    pub fn notify(&self, characteristic: &str, value_hex: &str) -> bool {
        self.mock(
            "Notify",
            &[
                &format!("string:{characteristic}"),
                &format!("string:{value_hex}"),
            ],
        )
        .contains("true")
    }

    /// Values a characteristic sends as soon as it is subscribed, after which the
    /// device disconnects: a spot-check device.
    pub fn store_then_disconnect(&self, characteristic: &str, values_hex: &[&str]) {
        self.mock(
            "StoreValues",
            &[
                &format!("string:{characteristic}"),
                &format!("array:string:{}", values_hex.join(",")),
                "boolean:true",
            ],
        );
    }

    /// On its next connection the device sends these values at once, before
    /// any subscription, then hangs up (a bonded spot-check device whose
    /// subscription real BlueZ restores by itself).
    pub fn indicate_on_reconnect(&self, characteristic: &str, values_hex: &[&str]) {
        self.mock(
            "IndicateOnReconnect",
            &[
                &format!("string:{characteristic}"),
                &format!("array:string:{}", values_hex.join(",")),
            ],
        );
    }

    /// The device leaves: its link drops and its subscriptions end.
    pub fn drop_link(&self, address: &str) {
        self.mock("DropLink", &["string:hci0", &format!("string:{address}")]);
    }

    pub fn stop_scanning(&self) {
        self.mock("StopScanning", &["string:hci0"]);
    }

    /// What the gateway wrote to a characteristic (its object path), in hex,
    /// oldest first.
    pub fn written(&self, characteristic: &str) -> Vec<String> {
        let out = self.mock("Written", &[&format!("string:{characteristic}")]);
        out.split_whitespace()
            .filter(|w| !w.is_empty() && w.len() % 2 == 0)
            .filter(|w| w.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_owned)
            .collect()
    }

    pub fn connect_count(&self, address: &str) -> u32 {
        let path = format!("/org/bluez/hci0/dev_{}", address.replace(':', "_"));
        let out = self.mock("ConnectCount", &[&format!("string:{path}")]);
        out.split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    }

    /// The device's link goes down only `delay_ms` after BlueZ answers its
    /// Disconnect.
    pub fn slow_disconnect(&self, address: &str, delay_ms: u32) {
        let path = format!("/org/bluez/hci0/dev_{}", address.replace(':', "_"));
        self.mock(
            "SlowDisconnect",
            &[&format!("string:{path}"), &format!("uint32:{delay_ms}")],
        );
    }

    /// The most devices connected at once so far.
    pub fn most_links(&self) -> u32 {
        let out = self.mock("MostLinks", &[]);
        out.split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    }

    fn property(&self, path: &str, interface: &str, name: &str) -> Option<String> {
        self.dbus_send(
            "org.bluez",
            path,
            "org.freedesktop.DBus.Properties.Get",
            &[&format!("string:{interface}"), &format!("string:{name}")],
        )
        .ok()
    }

    /// The adapter's `Pairable` and `PairableTimeout`, as BlueZ's D-Bus shows them.
    pub fn pairable(&self) -> (bool, u32) {
        let on = self
            .property("/org/bluez/hci0", "org.bluez.Adapter1", "Pairable")
            .is_some_and(|v| v.contains("true"));
        let timeout = self
            .property("/org/bluez/hci0", "org.bluez.Adapter1", "PairableTimeout")
            .and_then(|v| v.split_whitespace().last()?.parse().ok())
            .unwrap_or(0);
        (on, timeout)
    }

    pub fn notifying(&self, characteristic: &str) -> bool {
        self.property(characteristic, "org.bluez.GattCharacteristic1", "Notifying")
            .is_some_and(|v| v.contains("true"))
    }

    pub fn paired(&self, address: &str) -> bool {
        let path = format!("/org/bluez/hci0/dev_{}", address.replace(':', "_"));
        self.property(&path, "org.bluez.Device1", "Paired")
            .is_some_and(|v| v.contains("true"))
    }

    /// Plays BlueZ asking carehub's registered agent whether `address` may pair
    /// (`RequestAuthorization`): Ok when accepted, Err with the D-Bus error when
    /// refused.
    pub fn ask_agent(&self, address: &str) -> Result<(), String> {
        self.call_agent("RequestAuthorization", address).map(|_| ())
    }

    /// Plays BlueZ calling `method(device)` on carehub's agent and waits for the
    /// answer (up to 20 s). The agent is found by trying every peer on the bus.
    pub fn call_agent(&self, method: &str, address: &str) -> Result<String, String> {
        self.call_agent_with(method, address, &[])
    }

    /// [`FakeBluez::call_agent`] with more arguments after the device path
    /// (`uint32:123456` for `RequestConfirmation`).
    pub fn call_agent_with(
        &self,
        method: &str,
        address: &str,
        extra: &[&str],
    ) -> Result<String, String> {
        let names = self
            .dbus_send(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ListNames",
                &[],
            )
            .unwrap();
        let device = format!("objpath:/org/bluez/hci0/dev_{}", address.replace(':', "_"));
        // Every bus name is tried, the test's own dbus-send clients too, and
        // one still waiting for its answer never replies: a Cancel (answered
        // at once by the agent) must not wait out another call's time-out.
        let timeout = if method == "Cancel" { 2_000 } else { 20_000 };
        let mut last = String::from("no agent on the bus");
        for name in names.split_whitespace().filter(|n| n.starts_with(':')) {
            let out = Command::new("dbus-send")
                .args([
                    "--system",
                    "--print-reply=literal",
                    &format!("--reply-timeout={timeout}"),
                    &format!("--dest={name}"),
                    "/org/carehub/agent",
                    &format!("org.bluez.Agent1.{method}"),
                    &device,
                ])
                .args(extra)
                .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                return Ok(stdout);
            }
            if stderr.contains("org.bluez.Error") {
                return Err(stderr);
            }
            last = stderr;
        }
        Err(last)
    }

    /// Connects the device directly, as if another process had (or as BlueZ
    /// does for a device that reconnects by itself).
    pub fn connect_now(&self, address: &str) {
        let path = format!("/org/bluez/hci0/dev_{}", address.replace(':', "_"));
        self.dbus_send("org.bluez", &path, "org.bluez.Device1.Connect", &[])
            .unwrap_or_else(|e| panic!("connect {address}: {e}"));
    }

    pub fn connected(&self, address: &str) -> bool {
        let path = format!("/org/bluez/hci0/dev_{}", address.replace(':', "_"));
        self.property(&path, "org.bluez.Device1", "Connected")
            .is_some_and(|v| v.contains("true"))
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        self.stop_bluez();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// `(resident_id, room, quantity, value, unit)` of one row of the outbox.
pub type StoredReading = (Option<i64>, Option<String>, String, Option<f64>, String);

/// A carehub data directory with its database provisioned and a config that
/// selects the BLE source on the fake's bus.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Gateway {
    pub fn new(residents: Vec<Resident>, devices: Vec<Device>, ble_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        provision(&dir.path().join("carehub.db"), residents, devices);
        std::fs::write(
            dir.path().join("carehub.toml"),
            format!(
                "[sensors]\nsource = \"ble\"\n\n[ble]\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n{ble_extra}\n\n[store]\npath = \"{}\"\n\n[web]\nlisten = \"127.0.0.1:{port}\"\nhttps = false\n",
                dir.path().join("carehub.db").display()
            ),
        )
        .unwrap();
        crate::support::web_state_dir(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            dir.path(),
        );
        Gateway { dir, port }
    }

    /// Runs `carehub run --config` against `bluez`'s bus.
    pub fn run(&self, bluez: &FakeBluez) -> Daemon {
        let child = crate::support::carehub_as_service()
            .args(["run", "--config"])
            .arg(self.dir.path().join("carehub.toml"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", bluez.bus_address())
            .env("RUST_LOG", "info,carehub::ble=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start carehub");
        Daemon { child: Some(child) }
    }

    pub fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open_with_flags(
            self.dir.path().join("carehub.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(2)).unwrap();
        c
    }

    /// `(resident_id, room, quantity, value, unit)` of every stored reading from `device`.
    pub fn readings(&self, device: &str) -> Vec<StoredReading> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT resident_id, room, quantity, value, unit FROM readings_text WHERE device = ?1 ORDER BY seq")
            .unwrap();
        stmt.query_map([address_bytes(device)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Polls until `device` has stored at least `n` readings of `quantity`.
    pub fn wait_readings(&self, device: &str, quantity: &str, n: usize, limit: Duration) -> bool {
        wait_for(limit, || {
            (self
                .readings(device)
                .iter()
                .filter(|r| r.2 == quantity)
                .count()
                >= n)
                .then_some(())
        })
        .is_some()
    }
}

/// Writes residents and devices into a new database through carehub's own store.
fn provision(path: &Path, residents: Vec<Resident>, devices: Vec<Device>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = StoreSettings {
        path: path.to_owned(),
        commit_max_readings: 100,
        commit_max_delay: Duration::from_millis(5),
        synchronous: carehub::config::Synchronous::Full,
        ..StoreSettings::at(path)
    };
    rt.block_on(async move {
        let mut health = carehub::system::health::Health::default();
        let beat = health.register("store");
        let handle = tokio::runtime::Handle::current();
        let store = tokio::task::spawn_blocking(move || Store::open(settings, handle, beat))
            .await
            .unwrap()
            .unwrap();
        store.handle.provision(residents, devices).await.unwrap();
        let Store {
            handle,
            reader,
            writer,
        } = store;
        drop((handle, reader));
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
    });
}

pub fn resident(id: i64, name: &str, room: &str) -> Resident {
    Resident {
        id: carehub::model::ResidentId(id),
        display_name: name.into(),
        room: room.into(),
        reference: format!("ref-{id}"),
    }
}

pub fn device(address: &str, kind: DeviceKind, subject: carehub::model::Subject) -> Device {
    Device {
        address: address.parse().unwrap(),
        kind,
        model: None,
        name: None,
        subject,
    }
}

/// One HTTP request with an empty body; `None` while nothing listens.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_json(addr, method, path, "")
}

/// One HTTP request with a JSON body; `None` while nothing listens.
pub fn http_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    json: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        crate::support::auth_header(addr),
        json.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// The form the store keeps a device address in: its 6 bytes.
pub fn address_bytes(address: &str) -> Vec<u8> {
    let a: carehub::model::DeviceAddress = address.parse().expect("a test address");
    a.0.to_vec()
}
