//! The `carehub` command: thin. Parses arguments, calls into the library, maps an
//! error to a message and an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use carehub::config::{self, Config};

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
    let cli = Cli::parse();
    init_logging();
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
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            Config::load(&path)?;
            println!("{}: ok", path.display());
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
        Command::Run { config } => {
            let config = Config::load(&config)?;
            serve(config, |_| {})
        }
        Command::Demo {
            listen,
            data_dir,
            residents,
            config,
        } => {
            let mut base = Config::default();
            base.store.path = data_dir.join("carehub.db");
            base.web.listen = listen;
            let mut config = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Config::parse(&path, &text, base)?
                }
                None => base,
            };
            if let Some(n) = residents {
                anyhow::ensure!(
                    (1..=500).contains(&n),
                    "--residents must be 1 to 500, not {n}"
                );
                config.simulator.residents = n;
            }
            serve(config, |addr| {
                println!("carehub demo: open http://{addr}/ in a browser (Ctrl-C to stop)");
            })
        }
    }
}

fn serve(config: Config, on_ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown =
            carehub::system::shutdown_signal().context("cannot install signal handlers")?;
        carehub::daemon::run(config, shutdown, on_ready).await
    })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
