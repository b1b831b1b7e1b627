//! Sources of raw sensor data: what a radio (or the simulator) hands the pipeline.
//!
//! A source produces [`RawFrame`]s, the bytes exactly as a sensor sent them plus the
//! moment they arrived. It knows nothing of formats: `decode` turns bytes into
//! values. Every source feeds the same bounded channel, so the simulator drives the
//! same decode → store → web path as real Bluetooth does.
//!
//! [`Source`] is the seam: the daemon picks one from `[sensors] source` and hands it
//! the channel; the simulator, the BlueZ source in `crate::ble` and (later) the
//! hardware-in-the-loop rigs all implement it and nothing downstream knows which.

pub mod racp;
pub mod simulator;

pub use racp::{RacpProgress, glucose_record};

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{DeviceAddress, Timestamp};
use crate::system::health::Heartbeat;

/// What every source is given to run: where frames go, when to stop, and the
/// heartbeat that says it is still making progress.
pub struct SourceContext {
    pub frames: mpsc::Sender<RawFrame>,
    pub cancel: CancellationToken,
    pub heartbeat: Heartbeat,
}

/// A running source: it ends when `cancel` fires or the channel closes, and drops
/// its sender then, which is what lets ingest drain and stop.
pub type SourceTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A producer of [`RawFrame`]s.
pub trait Source: Send {
    /// A short name for logs and status, e.g. `"simulator"`, `"ble"`.
    fn name(&self) -> &'static str;
    /// Starts the source; the returned task runs until cancelled.
    fn start(self: Box<Self>, ctx: SourceContext) -> SourceTask;
}

/// The Bluetooth base UUID with a 16-bit short UUID in place.
pub const fn uuid16(short: u16) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_1000_8000_0080_5f9b_34fb | ((short as u128) << 96))
}

/// The 16-bit short form of a Bluetooth SIG UUID, if it is one.
pub fn short_uuid(uuid: &Uuid) -> Option<u16> {
    let v = uuid.as_u128();
    let short = (v >> 96) as u32;
    (v & !(0xFFFF_FFFFu128 << 96) == uuid16(0).as_u128() && short <= 0xFFFF).then_some(short as u16)
}

/// One advertisement as BlueZ reports it: service data and manufacturer data are the
/// bytes *after* the UUID or company identifier.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Advertisement {
    pub address: DeviceAddress,
    pub local_name: Option<String>,
    pub rssi: Option<i16>,
    pub service_data: Vec<(Uuid, Vec<u8>)>,
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    pub services: Vec<Uuid>,
}

/// A GATT characteristic value, notified, indicated or read from a connected device.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub address: DeviceAddress,
    pub characteristic: Uuid,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Advertisement(Advertisement),
    Notification(Notification),
}

impl Frame {
    pub fn address(&self) -> DeviceAddress {
        match self {
            Frame::Advertisement(a) => a.address,
            Frame::Notification(n) => n.address,
        }
    }
}

/// What a source sends down the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFrame {
    pub frame: Frame,
    pub received_at: Timestamp,
}

/// Glucose Measurement (0x2A18), the records a meter hands over on request.
pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_uuids_round_trip() {
        assert_eq!(
            uuid16(0x2A37).to_string(),
            "00002a37-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(short_uuid(&uuid16(0xFCD2)), Some(0xFCD2));
        assert_eq!(short_uuid(&Uuid::from_u128(1)), None);
    }
}
