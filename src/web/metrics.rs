//! `GET /metrics`: the gateway's counters in the Prometheus text format
//! (version 0.0.4), written by hand: a few dozen lines do not need a crate.
//! Every family has its HELP and TYPE lines; label values are escaped as the
//! format says (backslash, double quote, line feed).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, WebError, read};
use crate::model::Timestamp;
use crate::uplink::ConnectionState;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Requests the web server answered, by status class.
#[derive(Debug, Default)]
pub struct WebMetrics {
    /// 1xx to 5xx at indexes 0 to 4.
    by_class: [AtomicU64; 5],
}

impl WebMetrics {
    pub fn count(&self, status: u16) {
        if let Some(slot) = usize::from(status / 100)
            .checked_sub(1)
            .and_then(|i| self.by_class.get(i))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Middleware: counts every response by its status class.
pub async fn count(
    State(m): State<std::sync::Arc<WebMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let res = next.run(req).await;
    m.count(res.status().as_u16());
    res
}

/// Builds the exposition text family by family.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// HELP text escaping: backslash and line feed.
fn escape_help(s: &str) -> String {
    s.replace('\\', r"\\").replace('\n', r"\n")
}

/// Label value escaping: backslash, double quote and line feed.
pub fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// A sample value as the format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// One family: HELP, TYPE and its samples (labels, value).
    pub fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(&[(&str, &str)], f64)],
    ) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", number(*value));
        }
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help, &[(&[], value)]);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

const STATES: [ConnectionState; 5] = [
    ConnectionState::Disabled,
    ConnectionState::Connecting,
    ConnectionState::Connected,
    ConnectionState::Backoff,
    ConnectionState::Stopped,
];

/// The whole exposition for the state now.
pub async fn render(state: &AppState) -> Result<String, WebError> {
    let stats = read(&state.reader, |r| r.stats()).await?;
    let now = Timestamp::now();
    let up = state.uplink.snapshot();
    let ingest = &state.ingest;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut e = Exposition::default();
    e.family(
        "carehub_build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
        &[(
            &[("version", state.version), ("gateway", &state.gateway_name)],
            1.0,
        )],
    );
    e.single(
        "carehub_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        state.started_at.age_at(now).as_secs_f64(),
    );
    e.single(
        "carehub_frames_received_total",
        "counter",
        "Frames (advertisements and notifications) the sensor source delivered.",
        load(&ingest.frames),
    );
    e.single(
        "carehub_readings_decoded_total",
        "counter",
        "Readings decoded from frames (readings in).",
        load(&ingest.readings),
    );
    e.single(
        "carehub_decode_errors_total",
        "counter",
        "Frames that could not be decoded.",
        load(&ingest.decode_errors),
    );
    e.single(
        "carehub_frames_refused_total",
        "counter",
        "Of the frames not decoded, those refused as replayed, forged or downgraded: someone may be imitating a sensor.",
        load(&ingest.refused),
    );
    e.single(
        "carehub_frames_unregistered_total",
        "counter",
        "Frames from devices nobody registered, dropped.",
        load(&ingest.unregistered),
    );
    e.single(
        "carehub_readings_committed_total",
        "counter",
        "Readings committed to the database since start.",
        stats.readings_committed as f64,
    );
    e.single(
        "carehub_store_commit_errors_total",
        "counter",
        "Store commits that failed since start.",
        stats.commit_errors as f64,
    );
    e.single(
        "carehub_readings_delivered_total",
        "counter",
        "Readings the cloud broker acknowledged since start (readings out).",
        up.readings_delivered as f64,
    );
    e.single(
        "carehub_uplink_messages_delivered_total",
        "counter",
        "MQTT messages the broker acknowledged since start.",
        up.messages_delivered as f64,
    );
    e.single(
        "carehub_uplink_messages_refused_total",
        "counter",
        "MQTT messages the broker refused since start (MQTT 5 PUBACK reason code 0x80 or more; always 0 under MQTT 3.1.1, which cannot say).",
        up.messages_refused as f64,
    );
    e.single(
        "carehub_uplink_held_readings",
        "gauge",
        "Readings held after the broker refused them again and again: kept in the outbox, not sent until a reconnect, a reload or a retry.",
        up.held_readings as f64,
    );
    e.single(
        "carehub_uplink_awaiting_receipt",
        "gauge",
        "Receipts mode: readings the broker has taken whose receipt from the cloud consumer is awaited (kept in the outbox).",
        up.awaiting_receipt as f64,
    );
    e.single(
        "carehub_uplink_receipt_timeouts_total",
        "counter",
        "Receipts mode: readings sent again since start because no receipt came in time.",
        up.receipt_timeouts as f64,
    );
    e.single(
        "carehub_uplink_connections_total",
        "counter",
        "Connections made to the broker since start.",
        up.connections as f64,
    );
    let state_samples: Vec<(&[(&str, &str)], f64)> = STATES
        .iter()
        .map(|s| -> (&[(&str, &str)], f64) {
            let labels: &[(&str, &str)] = match s {
                ConnectionState::Disabled => &[("state", "disabled")],
                ConnectionState::Connecting => &[("state", "connecting")],
                ConnectionState::Connected => &[("state", "connected")],
                ConnectionState::Backoff => &[("state", "waiting to reconnect")],
                ConnectionState::Stopped => &[("state", "stopped")],
            };
            (labels, if *s == up.state { 1.0 } else { 0.0 })
        })
        .collect();
    e.family(
        "carehub_uplink_state",
        "gauge",
        "1 for the uplink's current state, 0 for the others.",
        &state_samples,
    );
    e.single(
        "carehub_outbox_readings",
        "gauge",
        "Readings waiting for the cloud's acknowledgement (backlog).",
        stats.outbox_depth as f64,
    );
    e.single(
        "carehub_outbox_bytes",
        "gauge",
        "Estimated bytes of reading data waiting.",
        stats.outbox_bytes as f64,
    );
    e.single(
        "carehub_outbox_oldest_unsent_seconds",
        "gauge",
        "Age of the oldest reading waiting to be sent; 0 when nothing waits.",
        stats
            .oldest_unsent_age(now)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    let evicted: Vec<(Vec<(&str, &str)>, f64)> = stats
        .evicted
        .iter()
        .map(|(reason, class, n)| {
            (
                vec![("reason", reason.as_str()), ("class", class.as_str())],
                *n as f64,
            )
        })
        .collect();
    let evicted: Vec<(&[(&str, &str)], f64)> =
        evicted.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
    e.family(
        "carehub_evicted_readings_total",
        "counter",
        "Readings evicted from the outbox before delivery, by reason and class.",
        &evicted,
    );
    e.single(
        "carehub_history_purged_total",
        "counter",
        "Delivered readings purged from local history.",
        stats.history_purged as f64,
    );
    e.single(
        "carehub_disk_free_bytes",
        "gauge",
        "Free bytes on the database's filesystem at the last check.",
        stats.free_disk_bytes as f64,
    );
    e.single(
        "carehub_database_bytes",
        "gauge",
        "The database file and its WAL, in bytes.",
        stats.database_bytes as f64,
    );
    if let Some(t) = up.certificate_expires_at {
        e.single(
            "carehub_certificate_expiry_seconds",
            "gauge",
            "Seconds until the gateway certificate expires; negative once expired.",
            (t.unix_ms() - now.unix_ms()) as f64 / 1000.0,
        );
    }
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let requests: Vec<(Vec<(&str, &str)>, f64)> = classes
        .iter()
        .zip(&state.web_metrics.by_class)
        .map(|(c, n)| (vec![("code", *c)], load(n)))
        .collect();
    let requests: Vec<(&[(&str, &str)], f64)> =
        requests.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
    e.family(
        "carehub_web_requests_total",
        "counter",
        "Web requests answered, by status class.",
        &requests,
    );
    if let Some(rss) = crate::system::memory::resident_bytes() {
        e.single(
            "process_resident_memory_bytes",
            "gauge",
            "The daemon's resident memory (VmRSS), in bytes.",
            rss as f64,
        );
    }
    e.single(
        "carehub_sqlite_heap_bytes",
        "gauge",
        "SQLite's heap in the daemon (page caches, schemas, statements), in bytes.",
        crate::store::sqlite_heap_bytes() as f64,
    );
    e.single(
        "carehub_web_event_streams",
        "gauge",
        "Open live-update streams (/events).",
        state.events.clients() as f64,
    );
    Ok(e.finish())
}

/// `GET /metrics`
pub async fn metrics(State(state): State<AppState>) -> Result<Response, WebError> {
    let body = render(&state).await?;
    Ok((
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// A strict reader of the text format, for tests: checks what Prometheus
/// checks and returns (name, labels, value) per sample.
#[cfg(test)]
pub(crate) mod parse {
    use std::collections::{HashMap, HashSet};

    pub type Sample = (String, Vec<(String, String)>, f64);

    fn valid_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn label_value(s: &str) -> Result<(String, &str), String> {
        let mut out = String::new();
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((out, &s[i + 1..])),
                '\\' => match chars.next() {
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, 'n')) => out.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                '\n' => return Err("raw line feed in a label value".into()),
                c => out.push(c),
            }
        }
        Err("unterminated label value".into())
    }

    pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
        if !text.ends_with('\n') {
            return Err("the exposition must end with a line feed".into());
        }
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped = HashSet::new();
        let mut series = HashSet::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kw, name, tail) = (
                    parts.next(),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                if !valid_name(name) {
                    return Err(format!("bad name in {line:?}"));
                }
                match kw {
                    Some("HELP") if !helped.insert(name.to_owned()) => {
                        return Err(format!("second HELP for {name}"));
                    }
                    Some("TYPE") => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail)
                        {
                            return Err(format!("bad type {tail:?}"));
                        }
                        if tail == "counter" && !name.ends_with("_total") {
                            return Err(format!("counter {name} must end in _total"));
                        }
                        if types.insert(name.to_owned(), tail.to_owned()).is_some() {
                            return Err(format!("second TYPE for {name}"));
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or(format!("no value in {line:?}"))?;
            let name = &line[..name_end];
            if !valid_name(name) {
                return Err(format!("bad metric name in {line:?}"));
            }
            if !types.contains_key(name) {
                return Err(format!("sample {name} before its TYPE"));
            }
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    if let Some(r) = rest.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    let eq = rest.find('=').ok_or(format!("bad labels in {line:?}"))?;
                    let key = &rest[..eq];
                    if !valid_name(key) || key.starts_with("__") {
                        return Err(format!("bad label name {key:?}"));
                    }
                    let r = rest[eq + 1..]
                        .strip_prefix('"')
                        .ok_or(format!("unquoted label in {line:?}"))?;
                    let (value, r) = label_value(r)?;
                    labels.push((key.to_owned(), value));
                    rest = r.strip_prefix(',').unwrap_or(r);
                }
            }
            let value = rest
                .strip_prefix(' ')
                .ok_or(format!("no space before the value in {line:?}"))?;
            let v: f64 = match value {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|e| format!("bad value {v:?}: {e}"))?,
            };
            let mut key = labels.clone();
            key.sort();
            if !series.insert((name.to_owned(), key)) {
                return Err(format!("duplicate series in {line:?}"));
            }
            out.push((name.to_owned(), labels, v));
        }
        for name in types.keys() {
            if !helped.contains(name) {
                return Err(format!("{name} has no HELP"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_format_says() {
        for (raw, escaped) in [
            ("plain", "plain"),
            ("a\"b", "a\\\"b"),
            ("back\\slash", "back\\\\slash"),
            ("two\nlines", "two\\nlines"),
        ] {
            assert_eq!(escape_label(raw), escaped);
            let mut e = Exposition::default();
            e.family(
                "x_total",
                "counter",
                "help\nwith \\ line",
                &[(&[("l", raw)], 1.0)],
            );
            let text = e.finish();
            assert!(
                text.contains("# HELP x_total help\\nwith \\\\ line\n"),
                "{text}"
            );
            let parsed = parse::parse(&text).unwrap_or_else(|err| panic!("{err}: {text}"));
            assert_eq!(parsed[0].1, vec![("l".to_owned(), raw.to_owned())]);
        }
    }

    #[test]
    fn the_reader_refuses_what_prometheus_refuses() {
        for bad in [
            "x 1\n",
            "# TYPE x counter\n# HELP x h\nx 1\n",
            "# HELP x_total h\n# TYPE x_total counter\nx_total{l=\"a} 1\n",
            "# HELP x_total h\n# TYPE x_total counter\nx_total 1\nx_total 2\n",
            "# HELP x h\n# TYPE x gauge\nx one\n",
            "# HELP x h\n# TYPE x gauge\nx 1",
        ] {
            assert!(parse::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
