//! A real mosquitto with a mutual-TLS listener for the uplink tests: a test PKI
//! made with rcgen (fleet CA, broker, gateway, subscriber, and the bad cases: a
//! foreign CA, an expired certificate, a broker certificate for another host),
//! the broker on a free loopback port (stopped and restarted on demand, killed on
//! drop), and a cloud-side subscriber with its own client certificate.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use time::OffsetDateTime;

use super::support::{free_port, wait_for};

/// The program, or a failure that says how to install it (never a silent skip).
pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed: run scripts/test (it installs the Debian package) or apt-get install mosquitto"
    );
}

/// The test PKI, written as PEM files into a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

/// A certificate and key pair on disk.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        let fleet = ca("carehub test fleet CA");
        let other = ca("some other CA");
        pki.write("ca.pem", &fleet.pem());
        pki.write("other-ca.pem", &other.pem());
        let now = OffsetDateTime::now_utc();
        let year = time::Duration::days(365);
        pki.leaf(
            &fleet,
            "server",
            "localhost",
            &["localhost"],
            true,
            now - time::Duration::days(1),
            now + year,
        );
        pki.leaf(
            &fleet,
            "wrong-host",
            "broker.elsewhere.example",
            &["broker.elsewhere.example"],
            true,
            now - time::Duration::days(1),
            now + year,
        );
        pki.leaf(
            &fleet,
            "gateway",
            "gw-test",
            &[],
            false,
            now - time::Duration::days(1),
            now + year,
        );
        pki.leaf(
            &fleet,
            "gateway-soon",
            "gw-test",
            &[],
            false,
            now - time::Duration::days(1),
            now + time::Duration::days(10),
        );
        pki.leaf(
            &fleet,
            "subscriber",
            "cloud-subscriber",
            &[],
            false,
            now - time::Duration::days(1),
            now + year,
        );
        pki.leaf(
            &other,
            "foreign",
            "gw-test",
            &[],
            false,
            now - time::Duration::days(1),
            now + year,
        );
        pki.leaf(
            &fleet,
            "expired",
            "gw-test",
            &[],
            false,
            now - time::Duration::days(60),
            now - time::Duration::days(1),
        );
        // A broker certificate for the right host from another CA: an
        // impostor, or a broker whose certificate was replaced by mistake.
        pki.leaf(
            &other,
            "impostor",
            "localhost",
            &["localhost"],
            true,
            now - time::Duration::days(1),
            now + year,
        );
        pki.write("empty.pem", "");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pair(&self, name: &str) -> Pair {
        Pair {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        }
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    #[allow(clippy::too_many_arguments)]
    fn leaf(
        &self,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        cn: &str,
        dns: &[&str],
        server: bool,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) {
        let mut p =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = not_before;
        p.not_after = not_after;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }
}

/// A mosquitto broker with a mutual-TLS listener on 127.0.0.1:`port`.
pub struct Broker {
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Writes the configuration; call [`Broker::start`] to run it. `server` names
    /// the broker's certificate pair in `pki`.
    pub fn new(pki: &Pki, server: &str) -> Broker {
        Broker::with_config(pki, server, "")
    }

    /// Like [`Broker::new`], with `extra` lines appended to the configuration
    /// (an ACL file, a packet-size limit).
    pub fn with_config(pki: &Pki, server: &str, extra: &str) -> Broker {
        Broker::on_port_with_config(pki, server, free_port(), extra)
    }

    /// As [`Broker::new`], on a given port: another broker where the gateway
    /// expects its own.
    pub fn on_port(pki: &Pki, server: &str, port: u16) -> Broker {
        Broker::on_port_with_config(pki, server, port, "")
    }

    fn on_port_with_config(pki: &Pki, server: &str, port: u16, extra: &str) -> Broker {
        let dir = pki.dir.path().join(format!("broker-{port}-{server}"));
        std::fs::create_dir_all(&dir).unwrap();
        let s = pki.pair(server);
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\n\
             allow_anonymous false\n\
             persistence true\npersistence_location {dir}/\nautosave_interval 1\n\
             max_queued_messages 0\n\
             user root\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n{extra}",
            ca = pki.path("ca.pem").display(),
            cert = s.cert.display(),
            key = s.key.display(),
            dir = dir.display(),
        );
        std::fs::write(&conf, text).unwrap();
        Broker {
            port,
            conf,
            log: dir.join("mosquitto.log"),
            child: None,
        }
    }

    /// The running broker's process id (benches read its CPU time).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .unwrap_or_else(|| panic!("mosquitto did not listen on {port}: {}", self.log_text()));
    }

    /// Stops the broker with `signal` (SIGTERM lets it save its persistence file).
    pub fn stop(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }

    /// SIGHUP: mosquitto reads its configuration and ACL file again.
    #[allow(dead_code)]
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A message the subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// The cloud side: a persistent-session QoS 1 subscriber to `carehub/v1/#` with
/// its own client certificate, on its own thread, reconnecting across broker
/// restarts.
pub struct Subscriber {
    pub received: Arc<Mutex<Vec<Received>>>,
    subscribed: Arc<Mutex<bool>>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A rustls client configuration for test-side clients.
pub fn client_tls(pki: &Pki, pair: &str) -> Arc<rustls::ClientConfig> {
    let p = pki.pair(pair);
    carehub::uplink::tls::client_config(&carehub::uplink::tls::TlsFiles {
        ca: pki.path("ca.pem"),
        cert: p.cert,
        key: p.key,
    })
    .unwrap()
}

impl Subscriber {
    pub fn start(pki: &Pki, port: u16) -> Subscriber {
        Subscriber::start_as(pki, port, "cloud-subscriber")
    }

    pub fn start_as(pki: &Pki, port: u16, client_id: &str) -> Subscriber {
        let client_id = client_id.to_owned();
        let received = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let stop = Arc::new(tokio::sync::Notify::new());
        let tls = client_tls(pki, "subscriber");
        let (r, s, st) = (received.clone(), subscribed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut o = MqttOptions::new(client_id, "localhost", port);
                o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
                o.set_clean_session(false);
                o.set_keep_alive(Duration::from_secs(5));
                o.set_max_packet_size(16 << 20, 16 << 20);
                let (client, mut events) = AsyncClient::new(o, 100);
                loop {
                    tokio::select! {
                        _ = st.notified() => break,
                        ev = events.poll() => match ev {
                            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                                if !ack.session_present {
                                    client.subscribe("carehub/v1/#", QoS::AtLeastOnce).await.unwrap();
                                }
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() = true,
                            Ok(Event::Incoming(Packet::Publish(p))) => r.lock().unwrap().push(Received {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            }),
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        },
                    }
                }
            });
        });
        Subscriber {
            received,
            subscribed,
            stop,
            thread: Some(thread),
        }
    }

    pub fn wait_subscribed(&self) {
        wait_for(Duration::from_secs(10), || {
            self.subscribed.lock().unwrap().then_some(())
        })
        .expect("subscriber never got its SUBACK");
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Reading ids seen on the readings topic (JSON format), with how often, and
    /// each id's distinct payloads (a repeat must be the same reading).
    pub fn reading_ids(&self) -> HashMap<String, Vec<serde_json::Value>> {
        let mut out: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
        for m in self.messages() {
            if !m.topic.ends_with("/readings") {
                continue;
            }
            let msg: carehub::uplink::payload::ReadingsMessage =
                serde_json::from_slice(&m.payload).expect("readings message parses as schema 1");
            for r in msg.readings {
                out.entry(r.id.clone())
                    .or_default()
                    .push(serde_json::to_value(&r).unwrap());
            }
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
