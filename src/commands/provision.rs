//! `carehub provision`: gives a gateway its identity from a provisioning bundle
//! a field engineer drops on the boot partition or a USB stick from a laptop
//! (docs/imaging.md), and writes the configuration the daemon runs with.
//!
//! A bundle is a folder `carehub-provision/` holding `provision.toml` (gateway
//! id, site, broker, Wi-Fi), the gateway's `gateway.pem` and `gateway.key`, the
//! broker's `ca.pem`, and optionally `carehub.toml` (more carehub settings). All
//! of it is checked before any of it is applied: a bundle with one fault applies
//! nothing, and says why in `PROVISION-FAILED.txt` beside it, which the engineer
//! reads on the laptop. A good bundle is applied by writing every file beside
//! its destination first and renaming them into place only then; the key and
//! the Wi-Fi passphrase are then overwritten and deleted from the stick, and
//! `PROVISIONED.txt` says what was done.
//!
//! A bundle may also hold `authorized_keys`: the OpenSSH public keys of the
//! field engineers allowed to log in as root over SSH (key only; root has no
//! password). Every line is checked (a known key type whose encoded key names
//! the same type, RSA of 2048 bits or more, no private key); the file replaces
//! `authorized_keys` in the system directory (`/data/system`, mode 0600,
//! owned by root), where the image's sshd looks. A bundle without it leaves
//! the keys the box has; factory reset removes them.
//!
//! Every run, bundle or not, lays the box's settings (`site.toml` in the state
//! directory, the part a bundle provides) over the image's production defaults
//! (`/etc/carehub/carehub.toml`) into `carehub.toml` in the state directory:
//! so an update that changes a default reaches provisioned boxes, and a box
//! nobody provisioned still runs with the production defaults. With
//! `--set-hostname` the host name becomes `carehub-<gateway id>`, which avahi
//! announces as `carehub-<id>.local`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Config;
use crate::model::Timestamp;

/// The folder a bundle lives in, on the boot partition or a stick.
pub const BUNDLE_DIR: &str = "carehub-provision";
/// The bundle's settings file.
pub const PROVISION_FILE: &str = "provision.toml";
/// The box's settings as provisioned, in the state directory.
pub const SITE_FILE: &str = "site.toml";
/// The configuration the daemon runs with, in the state directory.
pub const CONFIG_FILE: &str = "carehub.toml";
/// Written beside a bundle that was refused.
pub const FAILED_FILE: &str = "PROVISION-FAILED.txt";
/// Written beside a bundle that was applied.
pub const DONE_FILE: &str = "PROVISIONED.txt";
/// The Wi-Fi configuration wpa_supplicant@wlan0 reads, in the system directory.
pub const WIFI_FILE: &str = "wpa_supplicant-wlan0.conf";
/// The host name, in the system directory.
pub const HOSTNAME_FILE: &str = "hostname";

const CERT_DIR: &str = "certs";
const BUNDLE_CERT: &str = "gateway.pem";
const BUNDLE_KEY: &str = "gateway.key";
const BUNDLE_CA: &str = "ca.pem";
const BUNDLE_EXTRA: &str = "carehub.toml";
/// The engineers' SSH public keys, in a bundle and in the system directory.
pub const SSH_KEYS_FILE: &str = "authorized_keys";
/// Files of a bundle that hold secrets: overwritten and deleted once applied.
const SECRET_FILES: [&str; 2] = [BUNDLE_KEY, PROVISION_FILE];

#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Write a bundle to fill in into DIR (DIR/carehub-provision/...) and stop.
    #[arg(long, value_name = "DIR")]
    pub example: Option<PathBuf>,
    /// Where to look for a bundle: DIR/carehub-provision/ (or DIR itself when
    /// it holds provision.toml). The first one found is used. Default: the
    /// boot partition and a USB stick labelled CAREHUB.
    #[arg(long = "from", value_name = "DIR")]
    pub from: Vec<PathBuf>,
    /// Run as at boot: no bundle is not an error, and a refused bundle is
    /// reported without stopping the box from starting with what it had.
    #[arg(long)]
    pub boot: bool,
    /// carehub's state directory (on /data), where certificates and the
    /// configuration go.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/carehub")]
    pub state_dir: PathBuf,
    /// Where root-only settings go (Wi-Fi, host name).
    #[arg(long, value_name = "DIR", default_value = "/data/system")]
    pub system_dir: PathBuf,
    /// The image's production configuration, under the box's settings.
    #[arg(long, value_name = "PATH", default_value = "/etc/carehub/carehub.toml")]
    pub image_config: PathBuf,
    /// The account carehub runs as: it owns the state directory's files.
    #[arg(long, value_name = "USER", default_value = "carehub")]
    pub user: String,
    /// Set the running system's host name to carehub-<gateway id>.
    #[arg(long)]
    pub set_hostname: bool,
}

/// Default places a bundle is looked for (boot partition, USB stick).
pub const DEFAULT_SOURCES: [&str; 2] = ["/boot/firmware", "/run/carehub-usb"];

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The bundle has faults; nothing of it was applied.
    #[error("provisioning bundle {dir} refused, nothing applied:\n{}", .faults.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Refused { dir: PathBuf, faults: Vec<String> },
    /// No bundle in any of the places looked at (outside `--boot`).
    #[error("no provisioning bundle ({BUNDLE_DIR}/{PROVISION_FILE}) in {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoBundle(Vec<PathBuf>),
    /// The image's configuration and the box's settings do not make a valid
    /// configuration.
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The service account does not exist.
    #[error("no account {0:?} to own carehub's files")]
    NoUser(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `provision.toml`: what a field engineer fills in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    gateway: GatewaySection,
    site: SiteSection,
    broker: Option<BrokerSection>,
    wifi: Option<WifiSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteSection {
    id: String,
    timezone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerSection {
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WifiSection {
    ssid: String,
    passphrase: String,
    country: String,
}

/// What the command did, for its output.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The bundle applied, if one was.
    pub applied_from: Option<PathBuf>,
    /// A bundle refused under `--boot` (nothing of it applied).
    pub refused: Option<ProvisionError>,
    /// The configuration written.
    pub config: PathBuf,
    /// The host name, once provisioned.
    pub hostname: Option<String>,
}

impl Outcome {
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(dir) = &self.applied_from {
            let _ = writeln!(s, "applied the provisioning bundle in {}", dir.display());
        }
        if let Some(e) = &self.refused {
            let _ = writeln!(s, "{e}");
        }
        let _ = writeln!(s, "configuration: {}", self.config.display());
        match &self.hostname {
            Some(h) => {
                let _ = writeln!(s, "host name: {h} (announced as {h}.local)");
            }
            None => s.push_str("not provisioned yet: no gateway id, host name unchanged\n"),
        }
        s
    }
}

/// Runs the command (not `--example`).
pub fn run(args: &ProvisionArgs) -> Result<Outcome, ProvisionError> {
    let image = Config::load(&args.image_config)?;
    let sources: Vec<PathBuf> = if args.from.is_empty() {
        DEFAULT_SOURCES.iter().map(PathBuf::from).collect()
    } else {
        args.from.clone()
    };
    let mut outcome = Outcome::default();
    match find_bundle(&sources) {
        None if !args.boot => return Err(ProvisionError::NoBundle(sources)),
        None => {}
        Some(dir) => match check_bundle(&dir, &image, &args.state_dir, Timestamp::now()) {
            Ok(checked) => {
                apply(&checked, args)?;
                consume(&dir, &checked)?;
                outcome.applied_from = Some(dir);
            }
            Err(faults) => {
                report_refusal(&dir, &faults);
                let e = ProvisionError::Refused { dir, faults };
                if !args.boot {
                    return Err(e);
                }
                outcome.refused = Some(e);
            }
        },
    }
    let (config, gateway) = write_config(args, &image)?;
    outcome.config = config;
    if let Some(id) = gateway {
        let name = hostname_for(&id);
        write_file(
            &args.system_dir.join(HOSTNAME_FILE),
            format!("{name}\n").as_bytes(),
            0o644,
            None,
        )?;
        if args.set_hostname {
            let proc = Path::new("/proc/sys/kernel/hostname");
            std::fs::write(proc, name.as_bytes()).map_err(io_err(proc))?;
        }
        outcome.hostname = Some(name);
    }
    Ok(outcome)
}

/// The first bundle found in `sources`.
fn find_bundle(sources: &[PathBuf]) -> Option<PathBuf> {
    sources.iter().find_map(|s| {
        [s.join(BUNDLE_DIR), s.clone()]
            .into_iter()
            .find(|d| d.join(PROVISION_FILE).is_file())
    })
}

/// A bundle that passed every check, with what each file will hold.
#[derive(Debug)]
struct Checked {
    gateway_id: String,
    /// The box's settings, a carehub configuration overlay.
    site_toml: String,
    cert: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    wifi: Option<String>,
    ssh_keys: Option<String>,
    web_self_signed: bool,
}

/// The host name of a gateway: `carehub-` and its id, lower case, `_` as `-`.
pub fn hostname_for(gateway_id: &str) -> String {
    format!(
        "carehub-{}",
        gateway_id.to_ascii_lowercase().replace('_', "-")
    )
}

/// Checks everything in the bundle; every fault found, not just the first.
fn check_bundle(
    dir: &Path,
    image: &Config,
    state_dir: &Path,
    now: Timestamp,
) -> Result<Checked, Vec<String>> {
    let mut faults = Vec::new();
    let read = |name: &str, faults: &mut Vec<String>| -> Option<Vec<u8>> {
        match std::fs::read(dir.join(name)) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                faults.push(format!("{name}: cannot read: {e}"));
                None
            }
        }
    };
    let text = read(PROVISION_FILE, &mut faults)
        .map(|b| String::from_utf8(b).map_err(|_| format!("{PROVISION_FILE}: not UTF-8 text")));
    let bundle = match text {
        Some(Ok(t)) => match toml::from_str::<BundleFile>(&t) {
            Ok(b) => Some(b),
            Err(e) => {
                faults.push(format!("{PROVISION_FILE}: {}", e.to_string().trim()));
                None
            }
        },
        Some(Err(f)) => {
            faults.push(f);
            None
        }
        None => {
            faults.push(format!("{PROVISION_FILE}: missing"));
            None
        }
    };
    let cert = read(BUNDLE_CERT, &mut faults);
    let key = read(BUNDLE_KEY, &mut faults);
    let ca = read(BUNDLE_CA, &mut faults);
    let extra = read(BUNDLE_EXTRA, &mut faults);
    let ssh_keys = match read(SSH_KEYS_FILE, &mut faults).map(String::from_utf8) {
        Some(Ok(text)) => match check_authorized_keys(&text) {
            Ok(keys) => Some(keys),
            Err(f) => {
                faults.extend(f);
                None
            }
        },
        Some(Err(_)) => {
            faults.push(format!("{SSH_KEYS_FILE}: not UTF-8 text"));
            None
        }
        None => None,
    };

    let Some(bundle) = bundle else {
        return Err(faults);
    };
    let id = bundle.gateway.id.trim().to_owned();
    if let Err(f) = check_gateway_id(&id) {
        faults.push(f);
    }
    if bundle.site.id.trim().is_empty() {
        faults.push(format!("{PROVISION_FILE}: site.id is empty"));
    }

    // The certificates: all three or none; with a broker, all three.
    let cert_files = match (&cert, &key, &ca) {
        (Some(c), Some(k), Some(a)) => Some((c.clone(), k.clone(), a.clone())),
        (None, None, None) => None,
        _ => {
            let missing: Vec<&str> = [(BUNDLE_CERT, &cert), (BUNDLE_KEY, &key), (BUNDLE_CA, &ca)]
                .iter()
                .filter(|(_, f)| f.is_none())
                .map(|(n, _)| *n)
                .collect();
            faults.push(format!(
                "{} missing: {BUNDLE_CERT}, {BUNDLE_KEY} and {BUNDLE_CA} go together",
                missing.join(", ")
            ));
            None
        }
    };
    if bundle.broker.is_some() && cert_files.is_none() && cert.is_none() {
        faults.push(format!(
            "[broker] is set but the bundle has no {BUNDLE_CERT}, {BUNDLE_KEY} and {BUNDLE_CA}"
        ));
    }
    if bundle.broker.is_none() && cert_files.is_some() {
        faults.push(format!(
            "the bundle has certificates but {PROVISION_FILE} has no [broker] to use them with"
        ));
    }
    if let Some((c, _, _)) = &cert_files {
        check_certificate(dir, c, &id, now, &mut faults);
    }
    if let Some(b) = &bundle.broker {
        if b.host.trim().is_empty() || b.host.contains(char::is_whitespace) {
            faults.push(format!(
                "{PROVISION_FILE}: broker.host {:?} is not a host name",
                b.host
            ));
        }
        if b.port == Some(0) {
            faults.push(format!("{PROVISION_FILE}: broker.port 0 is not a port"));
        }
    }
    let wifi = match &bundle.wifi {
        Some(w) => match wifi_config(w) {
            Ok(conf) => Some(conf),
            Err(f) => {
                faults.push(f);
                None
            }
        },
        None => None,
    };

    // The box's settings as a configuration overlay: the bundle's own
    // carehub.toml, then what provision.toml says, which wins.
    let mut overlay = match extra.map(String::from_utf8) {
        Some(Ok(t)) => match toml::from_str::<toml::Table>(&t) {
            Ok(table) => table,
            Err(e) => {
                faults.push(format!("{BUNDLE_EXTRA}: {}", e.to_string().trim()));
                toml::Table::new()
            }
        },
        Some(Err(_)) => {
            faults.push(format!("{BUNDLE_EXTRA}: not UTF-8 text"));
            toml::Table::new()
        }
        None => toml::Table::new(),
    };
    set(&mut overlay, "site", "id", bundle.site.id.trim().into());
    set(&mut overlay, "site", "gateway_id", id.clone().into());
    if let Some(tz) = &bundle.site.timezone {
        set(&mut overlay, "site", "timezone", tz.trim().into());
    }
    if let Some(b) = &bundle.broker {
        let certs = state_dir.join(CERT_DIR);
        set(&mut overlay, "uplink", "enabled", true.into());
        set(&mut overlay, "uplink", "host", b.host.trim().into());
        if let Some(port) = b.port {
            set(&mut overlay, "uplink", "port", i64::from(port).into());
        }
        for (k, f) in [
            ("ca_file", BUNDLE_CA),
            ("cert_file", BUNDLE_CERT),
            ("key_file", BUNDLE_KEY),
        ] {
            set(
                &mut overlay,
                "uplink",
                k,
                certs.join(f).display().to_string().into(),
            );
        }
    }
    let site_toml = toml::to_string(&overlay).unwrap_or_default();
    let merged = Config::parse(&dir.join(BUNDLE_EXTRA), &site_toml, image.clone());
    let web_self_signed = match merged {
        Ok(c) => c.web.cert_file.as_os_str().is_empty(),
        Err(e) => {
            // The file named is the bundle's settings as a whole.
            faults.push(format!(
                "the settings do not make a valid carehub configuration: {}{}",
                e.key.map(|k| format!("key `{k}`: ")).unwrap_or_default(),
                e.message
            ));
            false
        }
    };
    if !faults.is_empty() {
        return Err(faults);
    }
    Ok(Checked {
        gateway_id: id,
        site_toml,
        cert: cert_files,
        wifi,
        ssh_keys,
        web_self_signed,
    })
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

/// A gateway id must be a certificate CN, an MQTT client id and, after
/// `carehub-`, one DNS label.
fn check_gateway_id(id: &str) -> Result<(), String> {
    let ok = (1..=55).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !id.ends_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{PROVISION_FILE}: gateway.id {id:?} must be 1 to 55 letters, digits, '-' or '_', not ending in '-' or '_'"
        ))
    }
}

/// The certificate, key and CA make a working mutual-TLS client for this
/// gateway: the key is the certificate's, the CN is the gateway id, and the
/// certificate has not expired.
fn check_certificate(dir: &Path, cert: &[u8], id: &str, now: Timestamp, faults: &mut Vec<String>) {
    match crate::uplink::cert::parse_cert_info(cert) {
        Ok(info) => {
            if info.common_name.as_deref() != Some(id) {
                faults.push(format!(
                    "{BUNDLE_CERT}: issued to {:?}, not to gateway.id {id:?}",
                    info.common_name.unwrap_or_default()
                ));
            }
            if info.not_after <= now {
                faults.push(format!(
                    "{BUNDLE_CERT}: expired on {}",
                    info.not_after.to_rfc3339()
                ));
            }
        }
        Err(e) => faults.push(format!("{BUNDLE_CERT}: not a PEM certificate: {e}")),
    }
    let files = crate::uplink::tls::TlsFiles {
        ca: dir.join(BUNDLE_CA),
        cert: dir.join(BUNDLE_CERT),
        key: dir.join(BUNDLE_KEY),
    };
    if let Err(e) = crate::uplink::tls::client_config(&files) {
        let e = e.to_string();
        let e = e.replace(&format!("{}/", dir.display()), "");
        faults.push(e);
    }
}

/// The wpa_supplicant configuration for a network: the passphrase is turned
/// into the 256-bit PSK here, so it is never written in clear on the box.
/// WPA2's PBKDF2 iteration count (IEEE 802.11i).
const PBKDF2_ROUNDS: std::num::NonZeroU32 = match std::num::NonZeroU32::new(4096) {
    Some(n) => n,
    None => std::num::NonZeroU32::MIN,
};

fn wifi_config(w: &WifiSection) -> Result<String, String> {
    let ssid = w.ssid.as_bytes();
    if !(1..=32).contains(&ssid.len()) {
        return Err(format!(
            "{PROVISION_FILE}: wifi.ssid must be 1 to 32 bytes, not {}",
            ssid.len()
        ));
    }
    let p = &w.passphrase;
    if !(8..=63).contains(&p.len()) || !p.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(format!(
            "{PROVISION_FILE}: wifi.passphrase must be 8 to 63 printable ASCII characters"
        ));
    }
    let country = w.country.trim();
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{PROVISION_FILE}: wifi.country {country:?} must be a two-letter code like GB"
        ));
    }
    let mut psk = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA1,
        PBKDF2_ROUNDS,
        ssid,
        p.as_bytes(),
        &mut psk,
    );
    Ok(format!(
        "# Written by carehub provision. The network name is hex-encoded and the\n\
         # passphrase stored only as its WPA2 key.\n\
         ctrl_interface=/run/wpa_supplicant\n\
         country={country}\n\
         network={{\n    ssid={}\n    psk={}\n    key_mgmt=WPA-PSK\n}}\n",
        hex(ssid),
        hex(&psk)
    ))
}

/// OpenSSH public key types a field engineer's key may have. DSA is refused
/// (OpenSSH itself no longer accepts it).
const SSH_KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];
/// The smallest RSA modulus accepted, in bits.
const SSH_RSA_MIN_BITS: usize = 2048;

/// Checks an `authorized_keys` file: every line that is not blank or a
/// comment is `[options] type base64 [comment]` with a known type whose
/// encoded key names that same type. Returns the file to install (with a
/// header), or every fault, each with its line number.
fn check_authorized_keys(text: &str) -> Result<String, Vec<String>> {
    let mut faults = Vec::new();
    let mut keys = Vec::new();
    if text.contains("PRIVATE KEY") {
        faults.push(format!(
            "{SSH_KEYS_FILE}: holds a private key; put only public keys (the .pub files) in the bundle"
        ));
        return Err(faults);
    }
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match check_ssh_key_line(line) {
            Ok(()) => keys.push(line),
            Err(f) => faults.push(format!("{SSH_KEYS_FILE} line {}: {f}", n + 1)),
        }
    }
    if keys.is_empty() && faults.is_empty() {
        faults.push(format!("{SSH_KEYS_FILE}: no public key in it"));
    }
    if !faults.is_empty() {
        return Err(faults);
    }
    let mut out = String::from(
        "# Field engineers' SSH keys for root, written by carehub provision from\n\
         # the provisioning bundle. A new bundle with authorized_keys replaces them.\n",
    );
    for k in keys {
        out.push_str(k);
        out.push('\n');
    }
    Ok(out)
}

/// One key line: options (if any) come before the first known key type.
fn check_ssh_key_line(line: &str) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.contains(&"ssh-dss") {
        return Err("DSA keys (ssh-dss) are not accepted; use ssh-ed25519".to_owned());
    }
    let Some(at) = words.iter().position(|w| SSH_KEY_TYPES.contains(w)) else {
        return Err(format!(
            "no public key (a line starts with one of {}, then the key)",
            SSH_KEY_TYPES.join(", ")
        ));
    };
    let (Some(kind), Some(encoded)) = (words.get(at), words.get(at + 1)) else {
        return Err("the key itself is missing after its type".to_owned());
    };
    let blob = base64_decode(encoded).ok_or("the key is not valid base64")?;
    let mut r = SshReader(&blob);
    if r.string() != Some(kind.as_bytes()) {
        return Err(format!("the key does not hold a {kind} key"));
    }
    if *kind == "ssh-rsa" {
        let _exponent = r.string().ok_or("the RSA key is cut short")?;
        let modulus = r.string().ok_or("the RSA key is cut short")?;
        let bits = mpint_bits(modulus);
        if bits < SSH_RSA_MIN_BITS {
            return Err(format!(
                "RSA key of {bits} bits; at least {SSH_RSA_MIN_BITS} (better: ssh-ed25519)"
            ));
        }
    } else if r.string().is_none_or(<[u8]>::is_empty) {
        return Err(format!("the {kind} key is cut short"));
    }
    Ok(())
}

/// Reads the length-prefixed strings of an SSH wire-format blob.
struct SshReader<'a>(&'a [u8]);

impl<'a> SshReader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let s = rest.get(..len)?;
        self.0 = rest.get(len..)?;
        Some(s)
    }
}

/// The bit length of an SSH mpint (big-endian, maybe a leading zero byte).
fn mpint_bits(m: &[u8]) -> usize {
    let mut bytes = m.iter().skip_while(|b| **b == 0);
    match bytes.next() {
        Some(first) => 8 * bytes.count() + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

/// Standard base64 with padding, strictly; `None` when it is not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if t.is_empty() || !t.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(t.len() / 4 * 3);
    let chunks = t.len() / 4;
    for (i, chunk) in t.chunks_exact(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return None;
        }
        let mut n = 0u32;
        for c in chunk.iter().take(4 - pad) {
            n = (n << 6) | value(*c)?;
        }
        n <<= 6 * pad;
        let bytes = n.to_be_bytes();
        out.extend(bytes.get(1..4 - pad)?);
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Applies a checked bundle: every file is written beside its destination
/// first, and only when all are written are they renamed into place.
fn apply(c: &Checked, args: &ProvisionArgs) -> Result<(), ProvisionError> {
    let owner = owner_of(&args.user)?;
    let certs = args.state_dir.join(CERT_DIR);
    let mut plan: Vec<Planned> = Vec::new();
    if let Some((cert, key, ca)) = &c.cert {
        plan.push((certs.join(BUNDLE_KEY), key.clone(), 0o600, owner));
        plan.push((certs.join(BUNDLE_CERT), cert.clone(), 0o644, owner));
        plan.push((certs.join(BUNDLE_CA), ca.clone(), 0o644, owner));
    }
    if let Some(w) = &c.wifi {
        plan.push((
            args.system_dir.join(WIFI_FILE),
            w.as_bytes().to_vec(),
            0o600,
            None,
        ));
    }
    if let Some(keys) = &c.ssh_keys {
        // Root's: sshd reads it as root and wants nobody else able to write it.
        plan.push((
            args.system_dir.join(SSH_KEYS_FILE),
            keys.as_bytes().to_vec(),
            0o600,
            None,
        ));
    }
    // Last, so it never names certificates that are not there yet.
    let header = format!(
        "# The settings of gateway {}, written by carehub provision from its\n\
         # bundle. carehub provision lays them over {} into {CONFIG_FILE}.\n",
        c.gateway_id,
        args.image_config.display()
    );
    plan.push((
        args.state_dir.join(SITE_FILE),
        format!("{header}{}", c.site_toml).into_bytes(),
        0o640,
        owner,
    ));

    for dir in [&args.state_dir, &args.system_dir] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    if c.cert.is_some() {
        make_dir(&certs, 0o700, owner)?;
    }
    let mut staged = Vec::new();
    for (path, bytes, mode, owner) in &plan {
        let tmp = staging_name(path);
        if let Err(e) = write_new(&tmp, bytes, *mode, *owner) {
            for t in &staged {
                let _ = std::fs::remove_file(t);
            }
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        staged.push(tmp);
    }
    for ((path, ..), tmp) in plan.iter().zip(&staged) {
        std::fs::rename(tmp, path).map_err(io_err(path))?;
    }
    for dir in [&args.state_dir, &args.system_dir, &certs] {
        sync_dir(dir);
    }
    // A self-signed web certificate names the host: let the daemon make a new
    // one with the new name.
    if c.web_self_signed {
        for f in [
            crate::web::tls::GENERATED_CERT,
            crate::web::tls::GENERATED_KEY,
        ] {
            let p = args.state_dir.join(f);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ProvisionError::Io { path: p, source: e }),
            }
        }
    }
    Ok(())
}

/// A file to write: where, what, its mode and its owner (uid, gid).
type Planned = (PathBuf, Vec<u8>, u32, Option<(u32, u32)>);

fn staging_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".provision-new");
    path.with_file_name(name)
}

fn owner_of(user: &str) -> Result<Option<(u32, u32)>, ProvisionError> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        _ => Err(ProvisionError::NoUser(user.to_owned())),
    }
}

fn make_dir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io_err(dir))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Writes a new file with its mode and owner from the start, and syncs it.
fn write_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), ProvisionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io_err(path))?;
    }
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Replaces a file atomically (write beside, rename).
fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), ProvisionError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = staging_name(path);
    write_new(&tmp, bytes, mode, owner)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Takes the secrets off the stick (overwritten, then deleted) and the rest of
/// the bundle too, and leaves a receipt.
fn consume(dir: &Path, c: &Checked) -> Result<(), ProvisionError> {
    for name in SECRET_FILES {
        let p = dir.join(name);
        if let (Ok(meta), Ok(mut f)) = (
            std::fs::metadata(&p),
            std::fs::OpenOptions::new().write(true).open(&p),
        ) {
            let zeros = vec![0u8; usize::try_from(meta.len()).unwrap_or(0)];
            let _ = f.write_all(&zeros).and_then(|()| f.sync_all());
        }
    }
    for name in [
        BUNDLE_KEY,
        PROVISION_FILE,
        BUNDLE_CERT,
        BUNDLE_CA,
        BUNDLE_EXTRA,
        SSH_KEYS_FILE,
        FAILED_FILE,
    ] {
        let p = dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProvisionError::Io { path: p, source: e }),
        }
    }
    let receipt = format!(
        "Applied by carehub provision at {}: gateway {}, host name {}.\n\
         The key and the Wi-Fi passphrase were deleted from this medium.\n",
        Timestamp::now().to_rfc3339(),
        c.gateway_id,
        hostname_for(&c.gateway_id)
    );
    let p = dir.join(DONE_FILE);
    std::fs::write(&p, receipt).map_err(io_err(&p))?;
    sync_dir(dir);
    Ok(())
}

/// Tells the engineer on the stick itself why the bundle was refused.
fn report_refusal(dir: &Path, faults: &[String]) {
    let mut text = format!(
        "carehub provision refused this bundle at {}; nothing of it was applied.\n\
         Fix these and put the card (or stick) back:\n",
        Timestamp::now().to_rfc3339()
    );
    for f in faults {
        let _ = writeln!(text, "  - {f}");
    }
    let _ = std::fs::write(dir.join(FAILED_FILE), text);
    sync_dir(dir);
}

/// Writes the configuration the daemon runs with; returns its path and the
/// provisioned gateway id, if the box has been provisioned.
fn write_config(
    args: &ProvisionArgs,
    image: &Config,
) -> Result<(PathBuf, Option<String>), ProvisionError> {
    let site = args.state_dir.join(SITE_FILE);
    let (config, gateway) = match std::fs::read_to_string(&site) {
        Ok(text) => {
            let c = Config::parse(&site, &text, image.clone())?;
            let id = c.site.gateway_id.clone();
            (c, Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (image.clone(), None),
        Err(e) => {
            return Err(ProvisionError::Io {
                path: site,
                source: e,
            });
        }
    };
    let body = toml::to_string(&config).map_err(|e| ProvisionError::Io {
        path: args.state_dir.join(CONFIG_FILE),
        source: std::io::Error::other(e),
    })?;
    let text = format!(
        "# Written by carehub provision at every boot: {} with {} over it.\n\
         # Do not edit: change the bundle (docs/imaging.md) or the image.\n{body}",
        args.image_config.display(),
        if gateway.is_some() {
            site.display().to_string()
        } else {
            "nothing (not provisioned)".to_owned()
        }
    );
    let path = args.state_dir.join(CONFIG_FILE);
    // Check what the daemon will read, exactly as it will read it.
    Config::parse(&path, &text, Config::default())?;
    let owner = owner_of(&args.user)?;
    write_file(&path, text.as_bytes(), 0o640, owner)?;
    Ok((path, gateway))
}

/// The files of an example bundle.
pub fn example_files() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (PROVISION_FILE, EXAMPLE_PROVISION),
        (
            "README.txt",
            "Fill in provision.toml, add gateway.pem, gateway.key and ca.pem\n\
             (carehub cert request; docs/imaging.md), optionally carehub.toml with\n\
             more carehub settings (carehub config example lists them all), optionally\n\
             authorized_keys with the SSH public keys (.pub) of the field engineers who\n\
             may log in as root, and copy this folder to the card's boot partition or a\n\
             USB stick labelled CAREHUB.\n",
        ),
    ])
}

const EXAMPLE_PROVISION: &str = r#"# carehub provisioning bundle: fill in, then copy this folder
# (carehub-provision/) to the SD card's boot partition or to a USB stick
# labelled CAREHUB. At its next boot the gateway checks all of it, applies it
# only if everything is right, deletes the key and this file from the card,
# and leaves PROVISIONED.txt (or PROVISION-FAILED.txt saying what to fix).
# Beside this file: gateway.pem and gateway.key (the gateway's certificate,
# CN = gateway.id, and its key) and ca.pem (the CA of the broker).

[gateway]
# 1 to 55 letters, digits, '-' or '_'. The box becomes carehub-<id>.local.
id = "GW-0042"

[site]
# The care home's identifier in uplink topics.
id = "oakfield-house"
# The care home's time zone (IANA name).
timezone = "Europe/London"

[broker]
# The cloud MQTT broker (mutual TLS). Remove this section, and the three
# certificate files, for a box with no uplink.
host = "mqtt.example.org"
port = 8883

# Wi-Fi, for a box without Ethernet. Remove the section for Ethernet only.
[wifi]
ssid = "CareHome-Staff"
passphrase = "change me please"
# Two-letter country code (radio rules).
country = "GB"
"#;

/// Writes an example bundle into `dir/carehub-provision/`; refuses to
/// overwrite one.
pub fn write_example(dir: &Path) -> Result<PathBuf, ProvisionError> {
    let out = dir.join(BUNDLE_DIR);
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    for (name, text) in example_files() {
        let p = out.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(io_err(&p))?;
        f.write_all(text.as_bytes()).map_err(io_err(&p))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ids_that_make_a_host_name() {
        for (id, ok) in [
            ("GW-0042", true),
            ("gw_7", true),
            ("a", true),
            ("", false),
            ("gw 1", false),
            ("gw-", false),
            ("gw.example", false),
            (&"x".repeat(55), true),
            (&"x".repeat(56), false),
        ] {
            assert_eq!(check_gateway_id(id).is_ok(), ok, "{id:?}");
        }
        assert_eq!(hostname_for("GW_0042"), "carehub-gw-0042");
    }

    #[test]
    fn wifi_passphrase_becomes_the_wpa2_key() {
        // IEEE 802.11i-2004 annex H.4 test vector: "password" / "IEEE".
        let conf = wifi_config(&WifiSection {
            ssid: "IEEE".into(),
            passphrase: "password".into(),
            country: "GB".into(),
        })
        .unwrap();
        assert!(
            conf.contains("psk=f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"),
            "{conf}"
        );
        assert!(conf.contains("ssid=49454545"), "{conf}");
        assert!(!conf.contains("password"));
    }

    #[test]
    fn wifi_settings_out_of_range_are_refused() {
        let w = |ssid: &str, p: &str, c: &str| WifiSection {
            ssid: ssid.into(),
            passphrase: p.into(),
            country: c.into(),
        };
        assert!(wifi_config(&w("", "password", "GB")).is_err());
        assert!(wifi_config(&w("x", "short", "GB")).is_err());
        assert!(wifi_config(&w("x", "password\n", "GB")).is_err());
        assert!(wifi_config(&w("x", "password", "gb")).is_err());
    }

    #[test]
    fn base64_is_decoded_strictly() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("aGVsbA==").unwrap(), b"hell");
        for bad in ["", "aGVsbG8", "aGV=bG8=", "aGVsbG8*", "a===", "aGVs\nbG8="] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ssh_key_lines_name_their_fault() {
        // An ed25519 blob: the type string, then a 32-byte key.
        let mut blob = Vec::new();
        blob.extend(11u32.to_be_bytes());
        blob.extend(b"ssh-ed25519");
        blob.extend(32u32.to_be_bytes());
        blob.extend([7u8; 32]);
        let b64 = |b: &[u8]| {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut s = String::new();
            for c in b.chunks(3) {
                let n = c.iter().fold(0u32, |n, x| (n << 8) | u32::from(*x)) << (8 * (3 - c.len()));
                for i in 0..4 {
                    if i <= c.len() {
                        s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                    } else {
                        s.push('=');
                    }
                }
            }
            s
        };
        let key = b64(&blob);
        assert_eq!(base64_decode(&key).unwrap(), blob);
        assert!(check_ssh_key_line(&format!("ssh-ed25519 {key} me")).is_ok());
        assert!(check_ssh_key_line(&format!("no-pty ssh-ed25519 {key}")).is_ok());
        let cut = b64(&blob[..20]);
        assert!(check_ssh_key_line(&format!("ssh-ed25519 {cut}")).is_err());
        assert!(check_ssh_key_line(&format!("ssh-rsa {key}")).is_err());
        assert!(check_ssh_key_line("ssh-ed25519").is_err());
        assert!(check_ssh_key_line("hello world").is_err());
        assert!(check_authorized_keys("# nobody\n\n").is_err());
        assert!(check_authorized_keys("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n").is_err());
    }

    #[test]
    fn the_example_bundle_parses() {
        let b: BundleFile = toml::from_str(EXAMPLE_PROVISION).unwrap();
        assert_eq!(b.gateway.id, "GW-0042");
        assert!(wifi_config(b.wifi.as_ref().unwrap()).is_ok());
    }
}
