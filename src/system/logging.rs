//! Logging: structured records to the journal when systemd connected our stderr to
//! journald, plain text otherwise (a terminal, a test, a pipe).
//!
//! systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose stderr goes to
//! the journal; the variable alone is not enough (a child process inherits it with a
//! different stderr), so the device and inode are compared with fd 2. Journal
//! records carry `PRIORITY`, `STAGE` (the pipeline stage, from the event's `stage`
//! field or its module), `DEVICE` when an event names one, every other field in
//! upper case, and the source location, so `journalctl -u carehub STAGE=store` works.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// What can go wrong setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `JOURNAL_STREAM` is set but is not `<device>:<inode>`.
    #[error("JOURNAL_STREAM {0:?} is not <device>:<inode>")]
    BadJournalStream(String),
    /// fd 2 cannot be inspected.
    #[error("cannot stat stderr: {0}")]
    Stat(#[source] nix::Error),
}

/// Installs the global subscriber: journald when stderr is the journal, else text on
/// stderr. `RUST_LOG` filters either way (default `info`).
pub fn init() {
    let filter = filter_from(std::env::var("RUST_LOG").ok().as_deref());
    let journal = match stderr_is_journal() {
        Ok(yes) => yes,
        Err(e) => {
            // Not fatal: text on stderr still reaches the journal, unstructured.
            eprintln!("carehub: {e}; logging as text");
            false
        }
    };
    if journal {
        tracing_subscriber::registry()
            .with(filter)
            .with(JournalLayer)
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
}

/// `RUST_LOG` read as a list of `level` and `target=level` directives
/// (`info,carehub::ble=debug`); unset or empty: `info`; one that does not
/// parse is said on stderr and `info` is used.
///
/// `Targets` rather than `EnvFilter`: the daemon never filtered on spans or
/// fields, and `EnvFilter` brings a regular-expression engine into the binary
/// (~0.3 MB of code, resident in every gateway: docs/reliability.md, memory).
fn filter_from(value: Option<&str>) -> Targets {
    let info = Targets::new().with_default(LevelFilter::INFO);
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return info;
    };
    value.parse().unwrap_or_else(|e| {
        eprintln!(
            "carehub: RUST_LOG={value:?} is not a list of target=level ({e}); logging at info"
        );
        info
    })
}

/// Whether fd 2 is the journal stream systemd announced in `JOURNAL_STREAM`.
pub fn stderr_is_journal() -> Result<bool, LoggingError> {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return Ok(false);
    };
    let value = value.to_string_lossy().into_owned();
    let (dev, ino) =
        parse_journal_stream(&value).ok_or(LoggingError::BadJournalStream(value.clone()))?;
    let st = nix::sys::stat::fstat(std::io::stderr()).map_err(LoggingError::Stat)?;
    Ok(st.st_dev == dev && st.st_ino == ino)
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Sends each event to journald as one structured record.
pub struct JournalLayer;

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let record = journal_record(
            *meta.level(),
            meta.target(),
            meta.file().zip(meta.line()),
            fields,
        );
        let refs: Vec<&str> = record.iter().map(String::as_str).collect();
        if let Err(e) = systemd::journal::send(&refs) {
            // The journal is gone; stderr is the last place left to say so.
            eprintln!("carehub: cannot write to the journal: {e}");
        }
    }
}

/// An event's message and fields, in the order they were recorded.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    other: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.other.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.other.push((field.name(), format!("{value:?}")));
        }
    }
}

/// syslog priorities (RFC 5424) as journald reads them.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The pipeline stage of a `carehub::<stage>::...` target.
fn stage_of(target: &str) -> Option<&str> {
    let mut parts = target.split("::");
    (parts.next()? == "carehub").then(|| parts.next()).flatten()
}

/// A journald field name: upper-case ASCII letters, digits and `_`, not starting
/// with `_` (reserved for trusted fields) or a digit, at most 64 characters.
fn journal_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_uppercase()) {
        out.insert_str(0, "F_");
    }
    out.truncate(64);
    out
}

/// The `NAME=value` strings of one record. The MESSAGE repeats the fields as
/// `key=value` so that plain `journalctl` output still shows them.
fn journal_record(
    level: Level,
    target: &str,
    location: Option<(&str, u32)>,
    fields: Fields,
) -> Vec<String> {
    let mut message = fields.message;
    for (k, v) in &fields.other {
        let _ = write!(message, " {k}={v}");
    }
    let mut out = vec![
        format!("MESSAGE={message}"),
        format!("PRIORITY={}", priority(level)),
        "SYSLOG_IDENTIFIER=carehub".to_owned(),
        format!("TARGET={target}"),
    ];
    if let Some((file, line)) = location {
        out.push(format!("CODE_FILE={file}"));
        out.push(format!("CODE_LINE={line}"));
    }
    let explicit_stage = fields.other.iter().any(|(k, _)| *k == "stage");
    if !explicit_stage && let Some(stage) = stage_of(target) {
        out.push(format!("STAGE={stage}"));
    }
    for (k, v) in fields.other {
        out.push(format!("{}={v}", journal_name(k)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_directives_filter_by_target_and_a_bad_one_means_info() {
        let f = filter_from(Some("warn,carehub::ble=debug"));
        assert!(f.would_enable("carehub::ble::session", &Level::DEBUG));
        assert!(!f.would_enable("carehub::ble::session", &Level::TRACE));
        assert!(!f.would_enable("carehub::uplink", &Level::INFO));
        assert!(f.would_enable("carehub::uplink", &Level::WARN));
        for info in [None, Some(""), Some("  "), Some("carehub=loud")] {
            let f = filter_from(info);
            assert!(f.would_enable("carehub::store", &Level::INFO), "{info:?}");
            assert!(!f.would_enable("carehub::store", &Level::DEBUG), "{info:?}");
        }
    }

    fn check(level: Level, target: &str, fields: &[(&'static str, &str)], expected: &[&str]) {
        let f = Fields {
            message: "readings stored".into(),
            other: fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
        assert_eq!(
            journal_record(level, target, Some(("src/x.rs", 7)), f),
            expected
        );
    }

    #[test]
    fn records_carry_priority_stage_and_device() {
        check(
            Level::WARN,
            "carehub::ingest",
            &[("device", "AA:BB:CC:DD:EE:FF"), ("error", "short frame")],
            &[
                "MESSAGE=readings stored device=AA:BB:CC:DD:EE:FF error=short frame",
                "PRIORITY=4",
                "SYSLOG_IDENTIFIER=carehub",
                "TARGET=carehub::ingest",
                "CODE_FILE=src/x.rs",
                "CODE_LINE=7",
                "STAGE=ingest",
                "DEVICE=AA:BB:CC:DD:EE:FF",
                "ERROR=short frame",
            ],
        );
        // An explicit stage wins over the module; other crates have no stage.
        check(
            Level::ERROR,
            "carehub::system::probe",
            &[("stage", "web")],
            &[
                "MESSAGE=readings stored stage=web",
                "PRIORITY=3",
                "SYSLOG_IDENTIFIER=carehub",
                "TARGET=carehub::system::probe",
                "CODE_FILE=src/x.rs",
                "CODE_LINE=7",
                "STAGE=web",
            ],
        );
        check(
            Level::INFO,
            "hyper::proto",
            &[("_bad.name", "1")],
            &[
                "MESSAGE=readings stored _bad.name=1",
                "PRIORITY=6",
                "SYSLOG_IDENTIFIER=carehub",
                "TARGET=hyper::proto",
                "CODE_FILE=src/x.rs",
                "CODE_LINE=7",
                "F__BAD_NAME=1",
            ],
        );
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8-12345"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }
}
