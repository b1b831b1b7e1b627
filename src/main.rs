//! The `carehub` command: thin. Parses arguments, calls into the library, maps an
//! error to a message and an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use carehub::config::{self, Config};
use carehub::daemon::Launch;
use carehub::system::notify::Notifier;
use carehub::system::reload::ConfigSource;

#[derive(Parser)]
#[command(
    name = "carehub",
    version,
    about = "Edge hub for care homes: residents' BLE health sensors, buffered and forwarded"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon with a configuration file.
    Run {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Run on embedded defaults: simulated sensors, SQLite under the data
    /// directory, no broker, web page on 127.0.0.1:8080.
    Demo {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, value_name = "DIR", default_value = "carehub-data")]
        data_dir: PathBuf,
        /// Number of simulated residents.
        #[arg(long, value_name = "N")]
        residents: Option<u16>,
        /// A configuration file laid over the demo defaults (e.g. to add an uplink).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Open the running daemon's pairing window so new sensors can pair.
    Pair(carehub::commands::pair::PairArgs),
    /// Import a provisioning bundle (gateway id, certificates, broker, Wi-Fi)
    /// from the boot partition or a USB stick and write the configuration the
    /// gateway runs with; `--example DIR` writes a bundle to fill in.
    Provision(carehub::commands::provision::ProvisionArgs),
    /// Wait until carehub is healthy (stages beating, adapter present, store
    /// writable, uplink connected or not configured); exit 1 naming what is not.
    HealthCheck(carehub::commands::health_check::HealthCheckArgs),
    /// Forget everything the box learnt (provisioning, certificates, database,
    /// Bluetooth bonds, Wi-Fi) so it boots as flashed. Stop carehub first.
    FactoryReset(carehub::commands::support::FactoryResetArgs),
    /// Pack the journal, configuration, health and versions into one file for
    /// support (no keys, tokens or passphrases).
    ExportLogs(carehub::commands::support::ExportLogsArgs),
    /// Score one set of observations with NEWS2 (RCP 2017); prints JSON.
    News2(carehub::commands::news2_cli::News2Args),
    /// Decode one advertisement or characteristic value and print it as JSON
    /// (see docs/decode.md); `--stdin` decodes one JSON input per line.
    Decode {
        #[arg(long, value_name = "AA:BB:CC:DD:EE:FF")]
        mac: Option<String>,
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Bind key (32 hex digits) for BTHome, pvvx or MiBeacon encryption.
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
        #[arg(long = "service-data", value_name = "UUID=HEX")]
        service_data: Vec<String>,
        #[arg(long = "manufacturer-data", value_name = "COMPANY=HEX")]
        manufacturer_data: Vec<String>,
        #[arg(long, value_name = "UUID=HEX")]
        characteristic: Option<String>,
        /// Read one JSON advertisement per line; print one JSON result per line.
        #[arg(long)]
        stdin: bool,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage the gateway's uplink certificate.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Test support for the store's crash test: ingests and drains until killed.
    #[command(hide = true)]
    StoreCrashChild {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        run: u32,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Make a new P-256 key and a certificate signing request (CN = gateway id)
    /// for the fleet CA: writes DIR/ID.key (mode 0600) and DIR/ID.csr.
    Request {
        #[arg(long, value_name = "ID")]
        gateway_id: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print a certificate's subject, issuer, validity and days left.
    Show { path: PathBuf },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a complete configuration file, every key commented, with its default.
    Example,
    /// Validate a configuration file; errors name the line and the key.
    Check { path: PathBuf },
}

fn main() -> ExitCode {
    // Before any thread: arenas made earlier would stay (system::memory).
    carehub::system::memory::one_malloc_arena();
    let cli = Cli::parse();
    carehub::system::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carehub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Pair(args) => {
            let json = carehub::commands::pair::run(&args)?;
            println!("{json}");
            Ok(())
        }
        Command::Provision(args) => {
            if let Some(dir) = &args.example {
                let out = carehub::commands::provision::write_example(dir)?;
                println!("wrote an example bundle to fill in: {}", out.display());
            } else {
                print!("{}", carehub::commands::provision::run(&args)?.render());
            }
            Ok(())
        }
        Command::HealthCheck(args) => {
            println!("{}", carehub::commands::health_check::run(&args)?);
            Ok(())
        }
        Command::FactoryReset(args) => {
            let removed = carehub::commands::support::factory_reset(&args)?;
            for p in &removed {
                println!("removed {}", p.display());
            }
            println!("factory reset done: reboot to start as flashed (then provision again)");
            Ok(())
        }
        Command::ExportLogs(args) => {
            let names = carehub::commands::support::export_logs(&args)?;
            println!("wrote {} ({})", args.out.display(), names.join(", "));
            Ok(())
        }
        Command::News2(args) => {
            let json = carehub::commands::news2_cli::run(&args).map_err(anyhow::Error::msg)?;
            println!("{json}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            let config = Config::load(&path)?;
            for w in config.warnings() {
                println!("{}: warning: {w}", path.display());
            }
            println!("{}: ok", path.display());
            Ok(())
        }
        Command::Decode {
            mac,
            name,
            key,
            service_data,
            manufacturer_data,
            characteristic,
            stdin,
        } => {
            use carehub::decode::cli;
            if stdin {
                cli::run_stdin(std::io::stdin().lock(), std::io::stdout().lock())?;
            } else {
                let input = cli::Input {
                    mac,
                    name,
                    key,
                    service_data,
                    manufacturer_data,
                    characteristic,
                };
                println!("{}", cli::run_once(&input)?);
            }
            Ok(())
        }
        Command::StoreCrashChild { db, run } => carehub::store::crash_child::run(db, run),
        Command::Cert {
            command: CertCommand::Request { gateway_id, out },
        } => {
            let r = carehub::uplink::cert::request(&gateway_id, &out)?;
            println!("key:     {}", r.key.display());
            println!("request: {}", r.csr.display());
            println!(
                "send the request to the fleet CA; install the certificate as uplink.cert_file"
            );
            Ok(())
        }
        Command::Cert {
            command: CertCommand::Show { path },
        } => {
            let info = carehub::uplink::cert::read_cert_info(&path)?;
            print!("{}", info.render(carehub::model::Timestamp::now()));
            Ok(())
        }
        Command::Run { config: path } => {
            let config = Config::load(&path)?;
            let source = ConfigSource {
                path: Some(path),
                base: Config::default(),
            };
            serve(config, source, true, false, |_| {})
        }
        Command::Demo {
            listen,
            data_dir,
            residents,
            config,
        } => {
            let config_path = config.clone();
            let mut base = Config::default();
            base.store.path = data_dir.join("carehub.db");
            base.web.listen = listen;
            // The demo's page is plain HTTP on loopback (see docs/security.md).
            base.web.https = false;
            let mut config = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Config::parse(path, &text, base.clone())?
                }
                None => base.clone(),
            };
            if let Some(n) = residents {
                anyhow::ensure!(
                    (1..=500).contains(&n),
                    "--residents must be 1 to 500, not {n}"
                );
                config.simulator.residents = n;
            }
            // A reload reads the file over the same demo base, not over --residents.
            let source = ConfigSource {
                path: config_path,
                base,
            };
            // Plain HTTP is for loopback only: anywhere else the demo serves
            // HTTPS with the gateway's self-signed certificate.
            if !config.web.listen.ip().is_loopback() {
                config.web.https = true;
            }
            serve(config, source, false, true, |ready| {
                match &ready.sign_in_url {
                    Some(link) => println!(
                        "carehub demo: open {link} in a browser to sign in as the demo admin (the link works once, for 15 minutes; Ctrl-C to stop)"
                    ),
                    None => println!(
                        "carehub demo: open {} in a browser (Ctrl-C to stop)",
                        ready.url
                    ),
                }
            })
        }
    }
}

fn serve(
    config: Config,
    source: ConfigSource,
    require_user: bool,
    demo: bool,
    on_ready: impl FnOnce(&carehub::daemon::Ready),
) -> anyhow::Result<()> {
    let runtime = carehub::system::memory::runtime().context("cannot start the async runtime")?;
    let notifier = Notifier::from_env();
    let result = runtime.block_on(async {
        let shutdown =
            carehub::system::shutdown_signal().context("cannot install signal handlers")?;
        let launch = Launch {
            source,
            notifier,
            require_user,
            demo,
        };
        carehub::daemon::run(config, launch, shutdown, on_ready).await
    });
    if let Err(e) = &result {
        // `systemctl status` then shows why, beside the journal's error line.
        notifier.status(&format!("failed: {e:#}"));
    }
    result
}
