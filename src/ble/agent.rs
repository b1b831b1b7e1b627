//! The BlueZ side of pairing, which btleplug does not cover: an `org.bluez.Agent1`
//! that answers BlueZ's questions by the [`PairingPolicy`], and the
//! `Device1.Pair` / `Trusted` / `RemoveDevice` calls.
//!
//! The agent registers as `KeyboardDisplay`: sensors without IO pair with Just
//! Works, and a sensor that displays a passkey makes BlueZ ask the agent for it
//! (`RequestPasskey`). That request is held ([`PasskeyRequests`]) until a staff
//! member types the number shown on the device into the pairing page; BlueZ
//! gets the answer then. A sensor with a display and a yes/no button pairs by
//! numeric comparison (`RequestConfirmation`): that request is held the same
//! way, with the number, until staff confirm or reject that the device shows
//! the same number; it is never accepted on its own, also inside a window. BlueZ also asks the agent before it lets a device pair
//! or use a service on its own initiative. Outside the window, and off the
//! allow-list, every answer is `org.bluez.Error.Rejected`.
//!
//! Written on the `dbus` crate btleplug already links, on the round's own
//! connection: when a round ends its connection closes and BlueZ drops the agent;
//! the next round (perhaps talking to a restarted bluetoothd) registers it again.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, PoisonError};
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

/// Longest wait for a pairing to complete, staff typing a passkey or
/// confirming a number included (the kernel's SMP gives up after 30 s without
/// progress, and BlueZ then fails the call first).
const PAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// The capability the agent registers with.
const CAPABILITY: &str = "KeyboardDisplay";

/// A passkey request older than this is dropped: BlueZ has given up on it.
const PASSKEY_WAIT: Duration = Duration::from_secs(60);

/// What can go wrong answering a passkey request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyError {
    /// No device is waiting for a passkey (never asked, answered, or expired).
    #[error("{0} is not waiting for a passkey")]
    NoRequest(DeviceAddress),
    /// Passkeys are six decimal digits.
    #[error("a passkey is 6 digits, 000000 to 999999")]
    OutOfRange,
    /// BlueZ's connection went away before the answer could be sent.
    #[error("bluetooth is not reachable; ask the device to pair again")]
    Gone,
}

/// What can go wrong answering a numeric comparison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    /// No device is waiting for a confirmation (never asked, answered, or expired).
    #[error("{0} is not waiting for a number to be confirmed")]
    NoRequest(DeviceAddress),
    /// BlueZ's connection went away before the answer could be sent.
    #[error("bluetooth is not reachable; ask the device to pair again")]
    Gone,
}

/// What BlueZ asked and is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The passkey the device displays (`RequestPasskey`).
    Passkey,
    /// Whether the device shows this number (`RequestConfirmation`).
    Confirm(u32),
}

struct PendingPasskey {
    call: Message,
    conn: Arc<SyncConnection>,
    asked_at: Timestamp,
    asked: Asked,
}

/// BlueZ's passkey and numeric-comparison questions waiting for staff to
/// answer them. Cheap to clone.
#[derive(Clone, Default)]
pub struct PasskeyRequests(Arc<Mutex<HashMap<DeviceAddress, PendingPasskey>>>);

/// A numeric comparison waiting for staff: the device, the number BlueZ
/// computed (the device shows the same one if nobody is in the middle), since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmRequest {
    pub address: DeviceAddress,
    pub number: u32,
    pub since: Timestamp,
}

impl std::fmt::Debug for PasskeyRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.pending()).finish()
    }
}

impl PasskeyRequests {
    fn hold(&self, address: DeviceAddress, call: Message, conn: Arc<SyncConnection>, asked: Asked) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(
            address,
            PendingPasskey {
                call,
                conn,
                asked_at: Timestamp::now(),
                asked,
            },
        );
    }

    fn expire(map: &mut HashMap<DeviceAddress, PendingPasskey>) {
        let now = Timestamp::now();
        map.retain(|_, p| p.asked_at.age_at(now) < PASSKEY_WAIT);
    }

    /// Devices waiting for a passkey, and since when.
    pub fn pending(&self) -> Vec<(DeviceAddress, Timestamp)> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Self::expire(&mut map);
        let mut v: Vec<_> = map
            .iter()
            .filter(|(_, p)| p.asked == Asked::Passkey)
            .map(|(a, p)| (*a, p.asked_at))
            .collect();
        v.sort();
        v
    }

    /// Devices waiting for staff to confirm a number, oldest first.
    pub fn pending_confirms(&self) -> Vec<ConfirmRequest> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut map);
        let mut v: Vec<ConfirmRequest> = map
            .iter()
            .filter_map(|(a, p)| match p.asked {
                Asked::Confirm(number) => Some(ConfirmRequest {
                    address: *a,
                    number,
                    since: p.asked_at,
                }),
                Asked::Passkey => None,
            })
            .collect();
        v.sort_by_key(|c| (c.since, c.address));
        v
    }

    /// Tells BlueZ whether staff saw the same number on the device: `accept`
    /// lets the pairing go on, anything else ends it without a bond.
    pub fn confirm(&self, address: DeviceAddress, accept: bool) -> Result<u32, ConfirmError> {
        let pending = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Self::expire(&mut map);
            match map.get(&address).map(|p| p.asked) {
                Some(Asked::Confirm(_)) => map.remove(&address),
                _ => None,
            }
        }
        .ok_or(ConfirmError::NoRequest(address))?;
        let Asked::Confirm(number) = pending.asked else {
            return Err(ConfirmError::NoRequest(address));
        };
        let reply = if accept {
            pending.call.method_return()
        } else {
            let name = ErrorName::from("org.bluez.Error.Rejected");
            let text = CString::new("staff said the numbers differ").unwrap_or_default();
            pending.call.error(&name, &text)
        };
        pending
            .conn
            .send(reply)
            .map(|_| number)
            .map_err(|()| ConfirmError::Gone)
    }

    /// Gives BlueZ the passkey staff read off the device.
    pub fn answer(&self, address: DeviceAddress, passkey: u32) -> Result<(), PasskeyError> {
        if passkey > 999_999 {
            return Err(PasskeyError::OutOfRange);
        }
        let pending = {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            Self::expire(&mut map);
            match map.get(&address).map(|p| p.asked) {
                Some(Asked::Passkey) => map.remove(&address),
                _ => None,
            }
        }
        .ok_or(PasskeyError::NoRequest(address))?;
        let reply = pending.call.method_return().append1(passkey);
        pending
            .conn
            .send(reply)
            .map(|_| ())
            .map_err(|()| PasskeyError::Gone)
    }

    /// Drops every held request (BlueZ cancelled, or the round ended), and
    /// says which devices were still waiting for staff. Each held call is
    /// answered "rejected", so nothing waits on it any more.
    fn clear(&self) -> Vec<DeviceAddress> {
        let held: Vec<(DeviceAddress, PendingPasskey)> = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().collect()
        };
        let name = ErrorName::from("org.bluez.Error.Rejected");
        let text = CString::new("cancelled").unwrap_or_default();
        let mut waiting = Vec::with_capacity(held.len());
        for (address, pending) in held {
            let _ = pending.conn.send(pending.call.error(&name, &text));
            waiting.push(address);
        }
        waiting.sort();
        waiting
    }
}

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
    passkeys: PasskeyRequests,
) -> Result<(), BleError> {
    // Requests held from a previous round belong to a connection that is gone.
    passkeys.clear();
    let own = conn.clone();
    conn.start_receive(
        MatchRule::new_method_call().with_path(AGENT_PATH),
        Box::new(move |msg, conn| {
            match answer(&msg, &policy, &status) {
                Answer::Now(reply) => {
                    let _ = conn.send(reply);
                }
                Answer::AskStaff(address, asked) => {
                    let what = match asked {
                        Asked::Passkey => "passkey requested: type the number the device shows on the pairing page".to_owned(),
                        Asked::Confirm(n) => format!(
                            "numeric comparison: does the device show {n:06}? Confirm or reject on the pairing page"
                        ),
                    };
                    policy.log.record(Some(address), what);
                    passkeys.hold(address, msg, own.clone(), asked);
                }
                Answer::Cancelled => {
                    // BlueZ gave up (the device went away, or SMP timed out
                    // while staff had not answered): nothing bonds, say so.
                    for address in passkeys.clear() {
                        policy.log.record(
                            Some(address),
                            "pairing cancelled before staff answered: no bond",
                        );
                    }
                    let _ = conn.send(msg.method_return());
                }
            }
            true
        }),
    );
    let manager = Proxy::new("org.bluez", "/org/bluez", CALL_TIMEOUT, conn.clone());
    manager
        .method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "RegisterAgent",
            (Path::from(AGENT_PATH), CAPABILITY),
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
        capability = CAPABILITY,
        "pairing agent registered"
    );
    Ok(())
}

/// How the agent answers one call.
enum Answer {
    Now(Message),
    /// Hold the call until staff type the passkey or confirm the number.
    AskStaff(DeviceAddress, Asked),
    /// BlueZ cancelled what it asked before.
    Cancelled,
}

/// The answer to one Agent1 call.
fn answer(msg: &Message, policy: &PairingPolicy, status: &BleStatus) -> Answer {
    Answer::Now(match reply(msg, policy, status) {
        Ok(reply) => reply,
        Err(other) => return other,
    })
}

fn reply(msg: &Message, policy: &PairingPolicy, status: &BleStatus) -> Result<Message, Answer> {
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let device = msg.read1::<Path>().ok().and_then(|p| address_of(&p));
    let reject = |why: &str| {
        let name = ErrorName::from("org.bluez.Error.Rejected");
        let text = CString::new(why).unwrap_or_default();
        msg.error(&name, &text)
    };
    let allowed = |address: DeviceAddress| {
        let name = status.name_of(address);
        policy.decide(Timestamp::now(), address, name.as_deref())
    };
    Ok(match member.as_str() {
        "Release" => msg.method_return(),
        "Cancel" => return Err(Answer::Cancelled),
        "RequestPasskey" => {
            let Some(address) = device else {
                return Ok(reject("unknown device"));
            };
            if let Decision::Pair(_) = allowed(address) {
                return Err(Answer::AskStaff(address, Asked::Passkey));
            }
            policy.log.record(
                Some(address),
                "RequestPasskey rejected: no pairing window open and not on the allow-list",
            );
            reject("no pairing window open")
        }
        "RequestConfirmation" => {
            // Numeric comparison: the number is the protection against someone
            // in the middle, so only staff who see the device may accept it,
            // never the gateway on its own (also inside a window).
            let (Some(address), Ok((_, number))) = (device, msg.read2::<Path, u32>()) else {
                return Ok(reject("unknown device"));
            };
            if let Decision::Pair(_) = allowed(address) {
                return Err(Answer::AskStaff(address, Asked::Confirm(number)));
            }
            policy.log.record(
                Some(address),
                "RequestConfirmation rejected: no pairing window open and not on the allow-list",
            );
            reject("no pairing window open")
        }
        "RequestAuthorization" | "AuthorizeService" => {
            let Some(address) = device else {
                return Ok(reject("unknown device"));
            };
            match allowed(address) {
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
        "RequestPinCode" | "DisplayPasskey" | "DisplayPinCode" => {
            // Legacy PIN codes and devices with keyboards are not sensors.
            if let Some(address) = device {
                policy.log.record(
                    Some(address),
                    format!("{member} rejected: not supported for sensors"),
                );
            }
            reject("not supported by this gateway")
        }
        _ => {
            let name = ErrorName::from("org.freedesktop.DBus.Error.UnknownMethod");
            let text = CString::new(format!("no method {member}")).unwrap_or_default();
            msg.error(&name, &text)
        }
    })
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

/// Makes the adapter pairable (bondable) for `timeout`, or not pairable.
///
/// What the virtual BLE lab showed (hw-tests/README.md): with no agent
/// registered BlueZ keeps the adapter not bondable, and the kernel answers a
/// device's SMP Security Request with "pairing not supported"; as soon as an
/// agent registers, BlueZ makes the adapter bondable for good, and the kernel
/// starts pairing with any connected device that asks, leaving only the
/// agent's answer (`RequestAuthorization`) between a stranger and a bond. So
/// the adapter is kept not pairable except while carehub itself may bond:
/// inside a staff-opened window or while it pairs an allow-listed device. A
/// stranger is then refused by the kernel before any agent is asked, also
/// while the agent is being registered again. `PairableTimeout` is set with
/// it, so that BlueZ closes the door by itself when the window ends even if
/// carehub was killed first.
pub async fn set_pairable(
    conn: &Arc<SyncConnection>,
    adapter: &str,
    timeout: Option<Duration>,
) -> Result<(), BleError> {
    let path = format!("/org/bluez/{adapter}");
    let proxy = Proxy::new("org.bluez", path, CALL_TIMEOUT, conn.clone());
    match timeout {
        Some(t) => {
            // Whole seconds, rounded up, at least one: 0 would mean "forever".
            let secs = u32::try_from(t.as_millis().div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1);
            proxy
                .set("org.bluez.Adapter1", "PairableTimeout", secs)
                .await?;
            proxy.set("org.bluez.Adapter1", "Pairable", true).await?;
        }
        None => proxy.set("org.bluez.Adapter1", "Pairable", false).await?,
    }
    Ok(())
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

/// Drops the link to the device, if there is one.
pub async fn disconnect(
    conn: &Arc<SyncConnection>,
    adapter: &str,
    address: DeviceAddress,
) -> Result<(), BleError> {
    let path = device_path(adapter, address);
    let device = Proxy::new("org.bluez", path, CALL_TIMEOUT, conn.clone());
    device
        .method_call::<(), _, _, _>("org.bluez.Device1", "Disconnect", ())
        .await?;
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
