//! carehub: the edge hub that takes residents' Bluetooth health sensors to a durable
//! local buffer, a cloud uplink and a staff web page.
//!
//! Modules are listed in the order a reading flows through them; see ARCHITECTURE.md.

pub mod config;
pub mod model;

pub mod ble;
pub mod decode;
pub mod ingest;
pub mod sensor;
pub mod store;
pub mod uplink;

pub mod alert_stage;
pub mod clinical;
pub mod system;
pub mod web;

pub mod commands;
pub mod daemon;

#[cfg(test)]
mod test_alloc;
