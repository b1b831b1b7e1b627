//! The BlueZ side of pairing, which btleplug does not cover: an `org.bluez.Agent1`
//! that answers BlueZ's questions by the [`PairingPolicy`], and the
//! `Device1.Pair` / `Trusted` / `RemoveDevice` calls.
//!
//! The agent registers as `NoInputNoOutput`, so pairings are Just Works. BlueZ
//! asks the agent before it lets a device pair or use a service on its own
//! initiative; outside the window, and off the allow-list, the answer is
//! `org.bluez.Error.Rejected`. Passkey entry (for devices that display a passkey)
//! needs staff input from the web UI and is refused for now, with a log line.
//!
//! Written on the `dbus` crate btleplug already links, on the round's own
//! connection: when a round ends its connection closes and BlueZ drops the agent;
//! the next round (perhaps talking to a restarted bluetoothd) registers it again.

use std::ffi::CString;
use std::sync::Arc;
use std::time::Duration;

use dbus::channel::{MatchingReceiver, Sender};
use dbus::message::MatchRule;
use dbus::nonblock::stdintf::org_freedesktop_dbus::Properties;
use dbus::nonblock::{Proxy, SyncConnection};
use dbus::strings::ErrorName;
use dbus::{Message, Path};

use super::pairing::{Decision, PairingPolicy};
use super::{BleError, BleStatus};
use crate::model::{DeviceAddress, Timestamp};

/// Where the agent object lives on carehub's connection.
pub const AGENT_PATH: &str = "/org/carehub/agent";

/// Longest wait for BlueZ to answer a management call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a pairing to complete.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// BlueZ's object path for a device on `adapter`.
pub fn device_path(adapter: &str, address: DeviceAddress) -> String {
    format!(
        "/org/bluez/{adapter}/dev_{}",
        address.to_string().replace(':', "_")
    )
}

/// The address in a BlueZ device path, e.g. `/org/bluez/hci0/dev_AA_BB_..`.
fn address_of(path: &str) -> Option<DeviceAddress> {
    path.rsplit('/')
        .next()?
        .strip_prefix("dev_")?
        .replace('_', ":")
        .parse()
        .ok()
}

/// Serves the agent object and registers it as BlueZ's default agent.
/// `status` gives the name a device advertised, for model-restricted allow-list
/// entries.
pub async fn register(
    conn: &Arc<SyncConnection>,
    policy: PairingPolicy,
    status: Arc<BleStatus>,
) -> Result<(), BleError> {
    conn.start_receive(
        MatchRule::new_method_call().with_path(AGENT_PATH),
        Box::new(move |msg, conn| {
            let reply = answer(&msg, &policy, &status);
            let _ = conn.send(reply);
            true
        }),
    );
    let manager = Proxy::new("org.bluez", "/org/bluez", CALL_TIMEOUT, conn.clone());
    manager
        .method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "RegisterAgent",
            (Path::from(AGENT_PATH), "NoInputNoOutput"),
        )
        .await?;
    manager
        .method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "RequestDefaultAgent",
            (Path::from(AGENT_PATH),),
        )
        .await?;
    tracing::info!(
        path = AGENT_PATH,
        capability = "NoInputNoOutput",
        "pairing agent registered"
    );
    Ok(())
}

/// The reply to one Agent1 call.
fn answer(msg: &Message, policy: &PairingPolicy, status: &BleStatus) -> Message {
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let device = msg.read1::<Path>().ok().and_then(|p| address_of(&p));
    let reject = |why: &str| {
        let name = ErrorName::from("org.bluez.Error.Rejected");
        let text = CString::new(why).unwrap_or_default();
        msg.error(&name, &text)
    };
    match member.as_str() {
        "Release" | "Cancel" => msg.method_return(),
        "RequestAuthorization" | "RequestConfirmation" | "AuthorizeService" => {
            let Some(address) = device else {
                return reject("unknown device");
            };
            let name = status.name_of(address);
            match policy.decide(Timestamp::now(), address, name.as_deref()) {
                Decision::Pair(reason) => {
                    policy
                        .log
                        .record(Some(address), format!("{member} accepted ({reason:?})"));
                    msg.method_return()
                }
                Decision::Observe => {
                    policy.log.record(
                        Some(address),
                        format!(
                            "{member} rejected: no pairing window open and not on the allow-list"
                        ),
                    );
                    reject("no pairing window open")
                }
            }
        }
        "RequestPasskey" | "RequestPinCode" | "DisplayPasskey" | "DisplayPinCode" => {
            if let Some(address) = device {
                policy.log.record(
                    Some(address),
                    format!("{member} rejected: passkey pairing is not supported yet"),
                );
            }
            reject("passkey pairing is not supported by this gateway yet")
        }
        _ => {
            let name = ErrorName::from("org.freedesktop.DBus.Error.UnknownMethod");
            let text = CString::new(format!("no method {member}")).unwrap_or_default();
            msg.error(&name, &text)
        }
    }
}

/// Whether BlueZ holds a bond with the device.
pub async fn is_paired(
    conn: &Arc<SyncConnection>,
    adapter: &str,
    address: DeviceAddress,
) -> Result<bool, BleError> {
    let path = device_path(adapter, address);
    let device = Proxy::new("org.bluez", path, CALL_TIMEOUT, conn.clone());
    Ok(device.get::<bool>("org.bluez.Device1", "Paired").await?)
}

/// Pairs (bonds) with the device and marks it trusted so it may reconnect.
pub async fn pair(
    conn: &Arc<SyncConnection>,
    adapter: &str,
    address: DeviceAddress,
) -> Result<(), BleError> {
    let path = device_path(adapter, address);
    let device = Proxy::new("org.bluez", path, PAIR_TIMEOUT, conn.clone());
    device
        .method_call::<(), _, _, _>("org.bluez.Device1", "Pair", ())
        .await?;
    device.set("org.bluez.Device1", "Trusted", true).await?;
    Ok(())
}

/// Un-pairs: removes the device and its bond from BlueZ, on a connection of its
/// own (the web API calls this, outside any BLE round). `Ok(false)` when BlueZ
/// does not know the device.
pub async fn unpair(adapter: &str, address: DeviceAddress) -> Result<bool, BleError> {
    let (resource, conn) = dbus_tokio::connection::new_system_sync()?;
    let io = tokio::spawn(resource);
    let result = remove(&conn, adapter, address).await;
    io.abort();
    match result {
        Ok(()) => Ok(true),
        Err(BleError::Dbus(e)) if e.name() == Some("org.bluez.Error.DoesNotExist") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the device and its bond from BlueZ.
pub async fn remove(
    conn: &Arc<SyncConnection>,
    adapter: &str,
    address: DeviceAddress,
) -> Result<(), BleError> {
    let adapter_path = format!("/org/bluez/{adapter}");
    let proxy = Proxy::new("org.bluez", adapter_path, CALL_TIMEOUT, conn.clone());
    proxy
        .method_call::<(), _, _, _>(
            "org.bluez.Adapter1",
            "RemoveDevice",
            (Path::from(device_path(adapter, address)),),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths_round_trip() {
        let a: DeviceAddress = "A4:C1:38:0B:00:01".parse().unwrap();
        let p = device_path("hci0", a);
        assert_eq!(p, "/org/bluez/hci0/dev_A4_C1_38_0B_00_01");
        assert_eq!(address_of(&p), Some(a));
        assert_eq!(address_of("/org/bluez/hci0"), None);
        assert_eq!(address_of("/org/bluez/hci0/dev_A4_C1"), None);
    }
}
