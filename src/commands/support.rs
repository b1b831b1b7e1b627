//! Field support commands for the gateway image (docs/imaging.md):
//! `carehub factory-reset` forgets everything the box learnt (provisioning,
//! certificates, the database, Bluetooth bonds, Wi-Fi) so it boots as it was
//! flashed; `carehub export-logs` packs what support needs (the journal, the
//! configuration, status and versions; never a key, a token or a passphrase)
//! into one file an engineer can send. The Gateway page's download of the same
//! file belongs to the web UI and is not here.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct FactoryResetArgs {
    /// Required: the reset cannot be undone.
    #[arg(long)]
    pub yes: bool,
    /// Also when readings are still waiting for the cloud (they are lost).
    #[arg(long)]
    pub discard_unsent: bool,
    /// carehub's state directory (database, certificates, configuration).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/carehub")]
    pub state_dir: PathBuf,
    /// Other directories whose contents go too (root-only settings,
    /// Bluetooth bonds, SSH host keys, RAUC's slot state stays).
    #[arg(
        long = "also",
        value_name = "DIR",
        default_values = ["/data/system", "/data/bluetooth"]
    )]
    pub also: Vec<PathBuf>,
}

/// Why the reset or the export stopped.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    /// `--yes` was not given.
    #[error(
        "factory reset deletes the database, certificates, settings and bonds; run again with --yes"
    )]
    NotConfirmed,
    /// Readings still wait for the cloud.
    #[error(
        "{0} readings have not reached the cloud yet; wait for the uplink (Gateway page) or run again with --discard-unsent"
    )]
    Unsent(u64),
    /// carehub is running (its web listener answers).
    #[error("carehub is running: systemctl stop carehub first")]
    Running,
    /// The store could not be read.
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A tool the export runs failed.
    #[error("{0}")]
    Tool(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SupportError + '_ {
    move |source| SupportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Empties the state directory and the others; returns what was removed.
pub fn factory_reset(args: &FactoryResetArgs) -> Result<Vec<PathBuf>, SupportError> {
    if !args.yes {
        return Err(SupportError::NotConfirmed);
    }
    let config = args.state_dir.join(super::provision::CONFIG_FILE);
    // The configured database and the default one in the state directory.
    let mut databases = vec![args.state_dir.join("carehub.db")];
    if let Ok(c) = Config::load(&config) {
        databases.push(c.store.path);
    }
    databases.dedup();
    if let Ok(c) = Config::load(&config) {
        let addr = match c.web.listen.ip() {
            ip if ip.is_unspecified() => {
                std::net::SocketAddr::from(([127, 0, 0, 1], c.web.listen.port()))
            }
            _ => c.web.listen,
        };
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok() {
            return Err(SupportError::Running);
        }
    }
    let mut unsent = 0;
    for db in &databases {
        unsent += crate::store::unsent_readings(db)?;
    }
    if unsent > 0 && !args.discard_unsent {
        return Err(SupportError::Unsent(unsent));
    }
    let mut removed = Vec::new();
    for dir in std::iter::once(&args.state_dir).chain(&args.also) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(SupportError::Io {
                    path: dir.clone(),
                    source: e,
                });
            }
        };
        for entry in entries {
            let path = entry.map_err(io_err(dir))?.path();
            let r = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.map_err(io_err(&path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[derive(Debug, clap::Args)]
pub struct ExportLogsArgs {
    /// The file to write (a .tar.gz).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The configuration the daemon runs with.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/carehub/carehub.toml"
    )]
    pub config: PathBuf,
    /// Journal lines to include (this boot and the ones before, newest last).
    #[arg(long, value_name = "N", default_value = "20000")]
    pub lines: u32,
}

/// Writes the support bundle; returns the names of the files in it.
pub fn export_logs(args: &ExportLogsArgs) -> Result<Vec<String>, SupportError> {
    let work = std::env::temp_dir().join(format!("carehub-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let dir = work.join("carehub-logs");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let result = collect(args, &dir).and_then(|names| {
        let out = Command::new("tar")
            .arg("-czf")
            .arg(&args.out)
            .arg("-C")
            .arg(&work)
            .arg("carehub-logs")
            .output()
            .map_err(|e| SupportError::Tool(format!("tar: {e}")))?;
        if !out.status.success() {
            return Err(SupportError::Tool(format!(
                "tar: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(names)
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn collect(args: &ExportLogsArgs, dir: &Path) -> Result<Vec<String>, SupportError> {
    let mut names = Vec::new();
    let mut put = |name: &str, text: String| -> Result<(), SupportError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io_err(&p))?;
        names.push(name.to_owned());
        Ok(())
    };
    // The configuration holds file names, not secrets; the key, the token and
    // the Wi-Fi key are never read.
    put(
        "carehub.toml",
        std::fs::read_to_string(&args.config)
            .unwrap_or_else(|e| format!("# cannot read {}: {e}\n", args.config.display())),
    )?;
    let config = Config::load(&args.config).ok();
    let status = match &config {
        Some(c) => {
            let problems = super::health_check::check_once(c);
            if problems.is_empty() {
                "healthy\n".to_owned()
            } else {
                problems.iter().map(|p| format!("- {p}\n")).collect()
            }
        }
        None => "no readable configuration\n".to_owned(),
    };
    put("health.txt", status)?;
    put(
        "versions.txt",
        format!(
            "carehub {}\n\n{}\n{}\n{}",
            env!("CARGO_PKG_VERSION"),
            tool("uname", &["-a"]),
            std::fs::read_to_string("/etc/os-release").unwrap_or_default(),
            tool("rauc", &["status"])
        ),
    )?;
    let lines = args.lines.to_string();
    put(
        "journal.txt",
        tool(
            "journalctl",
            // --merge: the read-only root has a new machine id at every
            // boot, so each boot's journal is in its own folder on /data;
            // without it only this boot's would be read.
            &[
                "--no-pager",
                "--merge",
                "-o",
                "short-iso-precise",
                "-n",
                &lines,
            ],
        ),
    )?;
    put(
        "units.txt",
        tool("systemctl", &["--no-pager", "--failed"])
            + &tool(
                "systemctl",
                &[
                    "--no-pager",
                    "status",
                    "carehub",
                    "carehub-provision",
                    "carehub-healthy",
                    "bluetooth",
                ],
            ),
    )?;
    Ok(names)
}

/// A tool's output, or why there is none (a missing tool is not fatal).
fn tool(name: &str, args: &[&str]) -> String {
    match Command::new(name).args(args).output() {
        Ok(o) => format!(
            "$ {name} {}\n{}{}\n",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("$ {name} {}\n(not run: {e})\n", args.join(" ")),
    }
}
