//! Cross-component tests: the real `carehub` binary, real SQLite files, real
//! sockets. One binary, one module per area.

mod demo;
mod mqtt;
mod mqtt_support;
mod store_caps;
mod store_crash;
mod store_full_disk;
mod support;
