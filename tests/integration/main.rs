//! Cross-component tests: the real `carehub` binary, real SQLite files, real
//! sockets. One binary, one module per area.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

mod alerts;
mod ble;
mod ble_registry;
mod ble_support;
mod browser;
mod browser_pairing;
mod browser_support;
mod decode_cli;
mod demo;
mod fhir_models;
mod module_cycles;
mod mqtt;
mod mqtt_receipts;
mod mqtt_support;
mod mqtt_v5;
mod news2;
mod provision;
mod reliability;
mod store_caps;
mod store_crash;
mod store_damage;
mod store_full_disk;
mod support;
mod systemd;
mod web;
mod web_https;
mod web_security;
