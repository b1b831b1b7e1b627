//! `/gateway` and `/api/v1/gateway`: is this box doing its job? The cloud link
//! and its last error, what waits to be sent and for how long, what was evicted
//! and why, disk and database size, the certificate's expiry, the Bluetooth
//! adapter, version, uptime and the last commit. Gathered once per request from
//! counters in memory and one small query (the oldest unsent reading).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::Html;
use maud::html;
use serde::Serialize;

use super::layout::{self, Frame, Section, date_time};
use super::{AppState, WebError, describe_age, read};
use crate::model::Timestamp;
use crate::uplink::ConnectionState;

/// Days before expiry from which the certificate is flagged.
pub const CERTIFICATE_WARNING_DAYS: i64 = 30;

#[derive(Debug, Serialize)]
pub struct GatewayJson {
    pub gateway_id: String,
    pub version: &'static str,
    pub started_at: String,
    pub uptime_s: u64,
    pub generated_at: String,
    pub uplink: UplinkPart,
    pub outbox: OutboxPart,
    /// Every reason and class, zeros included.
    pub evictions: Vec<EvictionJson>,
    pub storage: StoragePart,
    pub certificate: CertificatePart,
    pub bluetooth: BluetoothPart,
}

#[derive(Debug, Serialize)]
pub struct UplinkPart {
    /// `"disabled"`, `"connecting"`, `"connected"`, `"waiting to reconnect"`, `"stopped"`.
    pub state: &'static str,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub connections: u64,
    pub readings_delivered: u64,
    /// `"5"` or `"3.1.1"`; `null` while the uplink is disabled.
    pub protocol: Option<&'static str>,
    /// Whether the broker can tell this gateway that it refused a message:
    /// only under MQTT 5. Under 3.1.1 a refused message looks delivered.
    pub refusals_visible: bool,
    /// Messages the broker refused since start (MQTT 5 reason code >= 0x80).
    pub messages_refused: u64,
    pub last_refusal: Option<String>,
    pub last_refusal_at: Option<String>,
    /// Readings held after repeated refusals: kept, not sent until a retry.
    pub held_readings: u64,
    /// `uplink.receipts`: readings the broker has, kept until the cloud
    /// consumer's receipt (docs/mqtt.md); sent again after the time-out.
    pub awaiting_receipt: u64,
    pub receipt_timeouts: u64,
    /// The broker's Maximum Packet Size (MQTT 5), if it stated one.
    pub max_packet_size: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct OutboxPart {
    pub readings: u64,
    pub bytes: u64,
    /// When the oldest waiting reading was received; `null` when nothing waits.
    pub oldest_unsent_at: Option<String>,
    pub oldest_unsent_age_s: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct EvictionJson {
    /// `"readings"`, `"bytes"`, `"age"` or `"disk"`.
    pub reason: &'static str,
    /// `"vital"` or `"room"`.
    pub class: &'static str,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct StoragePart {
    pub disk_free_bytes: u64,
    pub database_bytes: u64,
    pub disk_full: bool,
    /// The storage is failing writes or syncs; the writer is trying again.
    pub storage_failing: bool,
    pub readings_committed: u64,
    pub commit_errors: u64,
    pub last_commit_at: Option<String>,
    /// The newest record of a damaged database, in words; kept after the
    /// restart that replaced it (`store_damage`, docs/decisions/0015).
    pub corruption: Option<String>,
    /// When that damage was found (RFC 3339).
    pub corruption_found_at: Option<String>,
    /// This run's start replaced the damaged database (`carehub health-check`
    /// fails then; the record itself stays for good).
    pub replaced_at_start: bool,
    /// Damage found while running, in words: the daemon is stopping so that
    /// its start-up check replaces the file.
    pub damage_found: Option<String>,
    pub damage_found_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CertificatePart {
    pub expires_at: Option<String>,
    /// Whole days left; negative once expired.
    pub days_left: Option<i64>,
    /// True from [`CERTIFICATE_WARNING_DAYS`] before expiry.
    pub warning: bool,
    pub message: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BluetoothPart {
    /// `"ble"` or `"simulator"`.
    pub source: &'static str,
    pub adapter: Option<String>,
    /// True while the adapter is present and scanning.
    pub scanning: bool,
    pub adapter_losses: u64,
    pub bluez_restarts: u64,
}

/// The times of [`GatewayJson`] as times, for the page's "N min ago".
#[derive(Debug, Default)]
pub struct Times {
    pub last_error: Option<Timestamp>,
    pub last_commit: Option<Timestamp>,
    pub certificate_expires: Option<Timestamp>,
}

/// Collects the status; the only disk read is the oldest unsent reading.
pub async fn gather(state: &AppState) -> Result<(GatewayJson, Times), WebError> {
    let stats = read(&state.reader, |r| r.stats()).await?;
    let now = Timestamp::now();
    let up = state.uplink.snapshot();
    let days_left = up
        .certificate_expires_at
        .map(|t| (t.unix_ms() - now.unix_ms()).div_euclid(86_400_000));
    let warning =
        days_left.is_some_and(|d| d < CERTIFICATE_WARNING_DAYS) || up.certificate_warning.is_some();
    let message = up.certificate_warning.clone().or_else(|| {
        days_left
            .filter(|d| *d < CERTIFICATE_WARNING_DAYS)
            .map(|d| format!("the gateway certificate expires in {d} days; request a new one"))
    });
    let ble = state.ble.as_ref();
    let times = Times {
        last_error: up.last_error.as_ref().map(|(t, _)| *t),
        last_commit: stats.last_commit,
        certificate_expires: up.certificate_expires_at,
    };
    let json = GatewayJson {
        gateway_id: state.gateway_name.to_string(),
        version: state.version,
        started_at: state.started_at.to_rfc3339(),
        uptime_s: state.started_at.age_at(now).as_secs(),
        generated_at: now.to_rfc3339(),
        uplink: UplinkPart {
            state: up.state.as_str(),
            last_error: up.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_at: up.last_error.as_ref().map(|(t, _)| t.to_rfc3339()),
            connections: up.connections,
            readings_delivered: up.readings_delivered,
            protocol: up.protocol,
            refusals_visible: up.protocol == Some(crate::config::Protocol::V5.as_str()),
            messages_refused: up.messages_refused,
            last_refusal: up.last_refusal.as_ref().map(|(_, e)| e.clone()),
            last_refusal_at: up.last_refusal.as_ref().map(|(t, _)| t.to_rfc3339()),
            held_readings: up.held_readings,
            awaiting_receipt: up.awaiting_receipt,
            receipt_timeouts: up.receipt_timeouts,
            max_packet_size: up.max_packet_size,
        },
        outbox: OutboxPart {
            readings: stats.outbox_depth,
            bytes: stats.outbox_bytes,
            oldest_unsent_at: stats.oldest_unsent.map(Timestamp::to_rfc3339),
            oldest_unsent_age_s: stats.oldest_unsent_age(now).map(|d| d.as_secs()),
        },
        evictions: stats
            .evicted
            .iter()
            .map(|(reason, class, count)| EvictionJson {
                reason: reason.as_str(),
                class: class.as_str(),
                count: *count,
            })
            .collect(),
        storage: StoragePart {
            disk_free_bytes: stats.free_disk_bytes,
            database_bytes: stats.database_bytes,
            disk_full: stats.disk_full,
            storage_failing: stats.storage_failing,
            readings_committed: stats.readings_committed,
            commit_errors: stats.commit_errors,
            last_commit_at: stats.last_commit.map(Timestamp::to_rfc3339),
            corruption: stats.corruption.as_ref().map(describe_damage),
            corruption_found_at: stats.corruption.as_ref().map(|c| c.at.to_rfc3339()),
            replaced_at_start: stats.replaced_at_start,
            damage_found: stats.damage.as_ref().map(|d| {
                format!(
                    "the database file is damaged ({}); carehub is restarting to move it aside and start a fresh one",
                    d.reason
                )
            }),
            damage_found_at: stats.damage.as_ref().map(|d| d.at.to_rfc3339()),
        },
        certificate: CertificatePart {
            expires_at: up.certificate_expires_at.map(Timestamp::to_rfc3339),
            days_left,
            warning,
            message,
        },
        bluetooth: BluetoothPart {
            source: if ble.is_some() { "ble" } else { "simulator" },
            adapter: ble.map(|b| b.adapter.clone()),
            scanning: ble.is_some_and(|b| b.status.scanning.load(Ordering::Relaxed)),
            adapter_losses: ble.map_or(0, |b| b.status.adapter_losses.load(Ordering::Relaxed)),
            bluez_restarts: ble.map_or(0, |b| b.status.bluez_restarts.load(Ordering::Relaxed)),
        },
    };
    Ok((json, times))
}

/// The record of a damaged database in words: when, why, where the file lies
/// and what became of its undelivered readings.
fn describe_damage(c: &crate::store::CorruptionAlarm) -> String {
    let replaced = match &c.moved_to {
        Some(p) => format!("it was moved to {} and a fresh one started", p.display()),
        None => "the start-up check then found it sound; it was kept".to_owned(),
    };
    format!(
        "at {} the database was found damaged ({}); {replaced}; {} undelivered readings were copied out of it, {} received after the damage were kept, {} could not be read and stay in the damaged file",
        c.at.to_rfc3339(),
        c.reason,
        c.recovered,
        c.rescued,
        c.unreadable
    )
}

/// `GET /api/v1/gateway`
pub async fn json(State(state): State<AppState>) -> Result<Json<GatewayJson>, WebError> {
    Ok(Json(gather(&state).await?.0))
}

/// "1.2 GB", "350 MB", "12 kB".
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, size) in UNITS {
        if n as f64 >= size {
            return format!("{:.1} {unit}", n as f64 / size);
        }
    }
    format!("{n} bytes")
}

/// `POST /gateway/uplink/retry`: staff ask the uplink to send the readings it
/// holds after repeated refusals again (say, once the broker's ACL is fixed).
/// The audit log records who asked.
pub async fn retry_held(State(state): State<AppState>) -> axum::response::Redirect {
    state.uplink.request_retry();
    axum::response::Redirect::to("/gateway")
}

/// `GET /gateway`
pub async fn page(State(state): State<AppState>) -> Result<Html<String>, WebError> {
    let (g, times) = gather(&state).await?;
    let now = Timestamp::now();
    let up_snapshot = state.uplink.snapshot();
    let up_state = up_snapshot.state;
    let up_refusal_at = up_snapshot.last_refusal.as_ref().map(|(t, _)| *t);
    let evicted_total: u64 = g.evictions.iter().map(|e| e.count).sum();
    let body = html! {
        @if let Some(d) = &g.storage.damage_found {
            p.notice.bad role="alert" { strong { "DATABASE DAMAGED: " } (d) }
        }
        @if let Some(c) = &g.storage.corruption {
            p.notice.bad role="alert" { strong { "DATABASE REPLACED: " } (c) ". Call support: the damaged file is kept for an engineer." }
        }
        @if g.storage.storage_failing {
            p.notice.bad role="alert" { strong { "STORAGE FAILING: " } "the gateway cannot write to its storage card and is trying again; new readings are held in memory for a short time only. Call support to replace the card." }
        }
        @if g.storage.disk_full {
            p.notice.bad role="alert" { strong { "DISK FULL: " } "new readings may not be stored. Free space on the gateway." }
        }
        @if let Some(m) = &g.certificate.message {
            p.notice.warn role="alert" { strong { "CERTIFICATE: " } (m) }
        }
        div.tiles {
            section.card aria-labelledby="gw-uplink" {
                h2 id="gw-uplink" { "Cloud link" }
                dl.facts {
                    dt { "State" }
                    dd {
                        (g.uplink.state)
                        @match up_state {
                            ConnectionState::Connected => span.badge.ok { "OK" },
                            ConnectionState::Disabled => span.badge { "OFF" },
                            _ => span.badge.bad { "NOT CONNECTED" },
                        }
                    }
                    dt { "Last problem" }
                    dd {
                        @match (&g.uplink.last_error, times.last_error) {
                            (Some(e), Some(t)) => { (e) span.age { (date_time(t)) ", " (describe_age(t.age_at(now))) } },
                            _ => "none",
                        }
                    }
                    dt { "Connections since start" } dd { (g.uplink.connections) }
                    dt { "Readings delivered since start" } dd { (g.uplink.readings_delivered) }
                    @if let Some(p) = g.uplink.protocol {
                        dt { "Protocol" }
                        dd {
                            "MQTT " (p)
                            @if !g.uplink.refusals_visible {
                                " " span.badge.warn { "REFUSALS NOT VISIBLE" }
                                p.hint { "Under MQTT 3.1.1 a broker that refuses a message still acknowledges it: such readings are lost without trace. Set uplink.protocol = \"5\" if the broker supports MQTT 5." }
                            }
                        }
                    }
                    @if g.uplink.refusals_visible {
                        dt { "Refused by the broker" }
                        dd {
                            (g.uplink.messages_refused) " messages since start"
                            @if let (Some(r), Some(t)) = (&g.uplink.last_refusal, up_refusal_at) {
                                br; "last: " (r) span.age { (date_time(t)) ", " (describe_age(t.age_at(now))) }
                            }
                        }
                    }
                    @if g.uplink.refusals_visible || g.uplink.held_readings > 0 {
                        dt { "Held" }
                        dd {
                            @if g.uplink.held_readings == 0 { "none" } @else {
                                span.badge.bad { "HELD" } " " (g.uplink.held_readings) " readings refused again and again (or in flight each time the connection died): kept, not sent"
                                form method="post" action="/gateway/uplink/retry" {
                                    (crate::web::csrf_field())
                                    button type="submit" { "Try held readings again" }
                                }
                            }
                        }
                    }
                }
            }
            section.card aria-labelledby="gw-outbox" {
                h2 id="gw-outbox" { "Waiting to be sent" }
                dl.facts {
                    dt { "Readings" } dd { (g.outbox.readings) " (" (bytes(g.outbox.bytes)) ")" }
                    dt { "Oldest waiting" }
                    dd {
                        @match g.outbox.oldest_unsent_age_s {
                            Some(s) => { "received " (describe_age(Duration::from_secs(s))) }
                            None => "nothing waiting",
                        }
                    }
                    dt { "Evicted before sending" }
                    dd {
                        @if evicted_total == 0 { "none" } @else {
                            (evicted_total) span.badge.bad { "DATA LOST" }
                        }
                    }
                }
                @if evicted_total > 0 {
                    table.list {
                        thead { tr { th scope="col" { "Why" } th scope="col" { "Kind" } th scope="col" { "Readings" } } }
                        tbody {
                            @for e in g.evictions.iter().filter(|e| e.count > 0) {
                                tr { td { (reason_words(e.reason)) } td { (e.class) } td { (e.count) } }
                            }
                        }
                    }
                }
            }
            section.card aria-labelledby="gw-storage" {
                h2 id="gw-storage" { "Storage" }
                dl.facts {
                    dt { "Disk free" } dd { (bytes(g.storage.disk_free_bytes)) }
                    dt { "Database size" } dd { (bytes(g.storage.database_bytes)) }
                    dt { "Last stored" }
                    dd {
                        @match times.last_commit {
                            Some(t) => { (describe_age(t.age_at(now))) span.age { (date_time(t)) } },
                            None => "nothing stored since start",
                        }
                    }
                    dt { "Store errors since start" } dd { (g.storage.commit_errors) }
                }
            }
            section.card aria-labelledby="gw-cert" {
                h2 id="gw-cert" { "Certificate" }
                dl.facts {
                    dt { "Expires" }
                    dd {
                        @match (times.certificate_expires, g.certificate.days_left) {
                            (Some(t), Some(d)) if d < 0 => { (date_time(t)) span.badge.bad { "EXPIRED" } },
                            (Some(t), Some(d)) => {
                                (date_time(t)) span.age { (d) " days left" }
                                @if g.certificate.warning { span.badge.bad { "RENEW SOON" } }
                            },
                            _ => "no certificate loaded",
                        }
                    }
                }
            }
            section.card aria-labelledby="gw-ble" {
                h2 id="gw-ble" { "Bluetooth" }
                dl.facts {
                    @if let Some(adapter) = &g.bluetooth.adapter {
                        dt { "Adapter" }
                        dd {
                            (adapter)
                            @if g.bluetooth.scanning { span.badge.ok { "SCANNING" } } @else { span.badge.bad { "NOT SCANNING" } }
                        }
                        dt { "Adapter lost since start" } dd { (g.bluetooth.adapter_losses) " times" }
                        dt { "Bluetooth service restarts" } dd { (g.bluetooth.bluez_restarts) }
                    } @else {
                        dt { "Source" } dd { "simulated sensors (no Bluetooth adapter in use)" }
                    }
                }
            }
            section.card aria-labelledby="gw-sw" {
                h2 id="gw-sw" { "Software" }
                dl.facts {
                    dt { "Gateway" } dd { (g.gateway_id) }
                    dt { "Version" } dd { (g.version) }
                    dt { "Running for" } dd { (uptime(g.uptime_s)) span.age { "since " (date_time(state.started_at)) } }
                }
            }
        }
    };
    let frame = Frame {
        gateway: &state.gateway_name,
        section: Section::Gateway,
        now,
        live: Some("readings devices uplink alerts"),
    };
    Ok(Html(layout::page(frame, "Gateway", body).into_string()))
}

fn reason_words(reason: &str) -> &'static str {
    match reason {
        "readings" => "too many readings waiting",
        "bytes" => "too much data waiting",
        "age" => "waited too long",
        "disk" => "disk space low",
        _ => "other",
    }
}

/// "3 days 4 h", "2 h 5 min", "12 min".
pub fn uptime(s: u64) -> String {
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} days {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_uptimes_read_naturally() {
        for (n, text) in [
            (0, "0 bytes"),
            (999, "999 bytes"),
            (12_345, "12.3 kB"),
            (350_000_000, "350.0 MB"),
            (1_200_000_000, "1.2 GB"),
        ] {
            assert_eq!(bytes(n), text);
        }
        for (s, text) in [
            (59, "0 min"),
            (720, "12 min"),
            (7500, "2 h 5 min"),
            (3 * 86_400 + 4 * 3600 + 59, "3 days 4 h"),
        ] {
            assert_eq!(uptime(s), text);
        }
    }
}
