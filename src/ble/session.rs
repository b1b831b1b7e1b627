//! One GATT session with a health device: wait for a connection slot, connect,
//! discover, subscribe to the measurement characteristics, read the battery, and
//! pass every value on as a [`Notification`] until the device goes away.
//!
//! Devices that measure on demand (BP cuffs, scales, thermometers) connect,
//! deliver what they stored and disconnect: a session that ends with the device
//! disconnecting is the normal outcome, not an error.

use std::sync::Arc;
use std::time::Duration;

use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _};
use btleplug::platform::Peripheral;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::BleError;
use crate::decode::gatt;
use crate::model::{DeviceAddress, DeviceKind, Timestamp};
use crate::sensor::{Frame, Notification, RawFrame, short_uuid, uuid16};

/// GATT services that mark a device as a health device the gateway connects to.
pub const HEALTH_SERVICES: [u16; 6] = [0x180D, 0x1809, 0x1810, 0x1822, 0x181D, 0x1808];

/// Characteristics carrying measurements (notified or indicated).
const MEASUREMENTS: [u16; 9] = [
    gatt::HEART_RATE_MEASUREMENT,
    gatt::TEMPERATURE_MEASUREMENT,
    gatt::INTERMEDIATE_TEMPERATURE,
    gatt::BLOOD_PRESSURE_MEASUREMENT,
    gatt::INTERMEDIATE_CUFF_PRESSURE,
    gatt::PLX_SPOT_CHECK,
    gatt::PLX_CONTINUOUS,
    gatt::WEIGHT_MEASUREMENT,
    0x2A18, // Glucose Measurement: subscribed so it is seen; no decoder yet
];

/// How often a connected session asks BlueZ whether the link is still up, for
/// the disconnects BlueZ reports late or never.
const LINK_CHECK: Duration = Duration::from_secs(5);

/// Longest wait for a best-effort disconnect when the session is stopped.
const DISCONNECT_WAIT: Duration = Duration::from_millis(500);

/// Whether an advertised service list marks a health device.
pub fn is_health_device(services: &[Uuid]) -> bool {
    services
        .iter()
        .filter_map(short_uuid)
        .any(|s| HEALTH_SERVICES.contains(&s))
}

/// What kind of device its advertised services say it is.
pub fn kind_from_services(services: &[Uuid]) -> DeviceKind {
    for short in services.iter().filter_map(short_uuid) {
        let kind = match short {
            0x180D => DeviceKind::HeartRateMonitor,
            0x1822 => DeviceKind::PulseOximeter,
            0x1810 => DeviceKind::BloodPressureMonitor,
            0x1809 => DeviceKind::Thermometer,
            0x181D => DeviceKind::WeightScale,
            0x1808 => DeviceKind::GlucoseMeter,
            0xFCD2 => DeviceKind::RoomSensor,
            _ => continue,
        };
        return kind;
    }
    DeviceKind::Unknown
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The device disconnected (the normal end for spot-check devices).
    Disconnected,
    /// The gateway stopped the session (shutdown, round restart).
    Stopped,
}

/// What a session needs besides the device.
pub struct SessionContext {
    pub address: DeviceAddress,
    pub frames: mpsc::Sender<RawFrame>,
    pub slots: Arc<Semaphore>,
    /// Fires when the device disconnects or the gateway stops the session.
    pub stop: CancellationToken,
    pub connect_timeout: Duration,
}

/// Runs one session to its end.
pub async fn run(peripheral: Peripheral, ctx: SessionContext) -> Result<SessionEnd, BleError> {
    // The semaphore queues waiters first come, first served: a fair queue for the
    // connection slots the controller can hold.
    let _slot = tokio::select! {
        _ = ctx.stop.cancelled() => return Ok(SessionEnd::Stopped),
        slot = ctx.slots.clone().acquire_owned() => match slot {
            Ok(s) => s,
            Err(_) => return Ok(SessionEnd::Stopped),
        },
    };
    let result = connected(&peripheral, &ctx).await;
    if ctx.stop.is_cancelled() || result.is_err() {
        // Leave no half-open link behind; the device may already be gone.
        let _ = tokio::time::timeout(DISCONNECT_WAIT, peripheral.disconnect()).await;
    }
    result
}

async fn step<T>(
    what: &'static str,
    limit: Duration,
    stop: &CancellationToken,
    f: impl Future<Output = btleplug::Result<T>>,
) -> Result<Option<T>, BleError> {
    tokio::select! {
        _ = stop.cancelled() => Ok(None),
        r = tokio::time::timeout(limit, f) => match r {
            Ok(v) => Ok(Some(v?)),
            Err(_) => Err(BleError::Timeout(what)),
        },
    }
}

async fn connected(peripheral: &Peripheral, ctx: &SessionContext) -> Result<SessionEnd, BleError> {
    let limit = ctx.connect_timeout;
    // A device BlueZ already holds connected (at start-up, or after a round
    // restart) is used as it is: Connect would fail with AlreadyConnected.
    let already = peripheral.is_connected().await.unwrap_or(false);
    if !already
        && step("connect", limit, &ctx.stop, peripheral.connect())
            .await?
            .is_none()
    {
        return Ok(SessionEnd::Stopped);
    }
    if step(
        "service discovery",
        limit,
        &ctx.stop,
        peripheral.discover_services(),
    )
    .await?
    .is_none()
    {
        return Ok(SessionEnd::Stopped);
    }
    let characteristics = peripheral.characteristics();
    // Subscribe to the stream before enabling notifications so none is missed.
    let Some(mut values) = step(
        "notification stream",
        limit,
        &ctx.stop,
        peripheral.notifications(),
    )
    .await?
    else {
        return Ok(SessionEnd::Stopped);
    };
    let mut subscribed = 0;
    for c in characteristics.iter().filter(|c| is_measurement(c)) {
        if step("subscribe", limit, &ctx.stop, peripheral.subscribe(c))
            .await?
            .is_none()
        {
            return Ok(SessionEnd::Stopped);
        }
        subscribed += 1;
    }
    if let Some(battery) = characteristics.iter().find(|c| {
        c.uuid == uuid16(gatt::BATTERY_LEVEL) && c.properties.contains(CharPropFlags::READ)
    }) {
        // A failed battery read is not a failed session: measurements matter more.
        match step("battery read", limit, &ctx.stop, peripheral.read(battery)).await {
            Ok(Some(value)) => {
                if !send(ctx, battery.uuid, value).await {
                    return Ok(SessionEnd::Stopped);
                }
            }
            Ok(None) => return Ok(SessionEnd::Stopped),
            Err(e) => tracing::warn!(device = %ctx.address, error = %e, "battery level not read"),
        }
    }
    if subscribed == 0 {
        return Err(BleError::NothingToSubscribe);
    }
    tracing::info!(device = %ctx.address, characteristics = subscribed, "gatt session up");

    let mut link_check = tokio::time::interval(LINK_CHECK);
    link_check.reset();
    loop {
        tokio::select! {
            // Values first: a spot-check device's last indication and its
            // disconnect arrive together, and the value must not be dropped.
            biased;
            v = values.next() => match v {
                Some(n) => {
                    if !send(ctx, n.uuid, n.value).await {
                        return Ok(SessionEnd::Stopped);
                    }
                }
                None => return Ok(SessionEnd::Disconnected),
            },
            _ = ctx.stop.cancelled() => return Ok(SessionEnd::Disconnected),
            _ = link_check.tick() => {
                if !peripheral.is_connected().await.unwrap_or(false) {
                    return Ok(SessionEnd::Disconnected);
                }
            }
        }
    }
}

fn is_measurement(c: &Characteristic) -> bool {
    short_uuid(&c.uuid).is_some_and(|s| MEASUREMENTS.contains(&s))
        && c.properties
            .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
}

/// Hands one value to the pipeline with the moment it arrived; false when the
/// pipeline has closed.
async fn send(ctx: &SessionContext, characteristic: Uuid, value: Vec<u8>) -> bool {
    let frame = RawFrame {
        frame: Frame::Notification(Notification {
            address: ctx.address,
            characteristic,
            value,
        }),
        received_at: Timestamp::now(),
    };
    ctx.frames.send(frame).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_first_known_service() {
        for (services, expected) in [
            (
                vec![uuid16(0x180F), uuid16(0x180D)],
                DeviceKind::HeartRateMonitor,
            ),
            (vec![uuid16(0x1810)], DeviceKind::BloodPressureMonitor),
            (vec![uuid16(0x1822)], DeviceKind::PulseOximeter),
            (vec![uuid16(0xFCD2)], DeviceKind::RoomSensor),
            (vec![uuid16(0x180F)], DeviceKind::Unknown),
            (vec![], DeviceKind::Unknown),
        ] {
            assert_eq!(kind_from_services(&services), expected, "{services:?}");
        }
    }

    #[test]
    fn health_devices_are_recognised_by_their_services() {
        for (services, expected) in [
            (vec![uuid16(0x180D)], true),
            (vec![uuid16(0x180F), uuid16(0x1810)], true),
            (vec![uuid16(0x1808)], true),
            (vec![uuid16(0xFCD2)], false),
            (vec![uuid16(0x180F)], false),
            (vec![], false),
            (vec![Uuid::from_u128(0x180D)], false),
        ] {
            assert_eq!(is_health_device(&services), expected, "{services:?}");
        }
    }
}
