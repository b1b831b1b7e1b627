//! Watches the system bus for the two events btleplug does not report: bluetoothd
//! restarting (`org.bluez` changes owner) and the adapter object disappearing.
//!
//! Both end the current BLE round: after either, every object btleplug holds
//! refers to a BlueZ state that no longer exists, and discovery is off in the new
//! one. The watch uses its own D-Bus connection (the `dbus` crate btleplug already
//! links) and subscribes before the round looks at BlueZ, so no change is missed.
//! The same connection carries the pairing agent and the `Pair` calls, so that
//! they too belong to exactly one round and one BlueZ.

use std::sync::Arc;

use dbus::message::MatchRule;
use dbus::nonblock::{MsgMatch, SyncConnection};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::BleError;

/// Something that ends a BLE round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BluezChange {
    /// `org.bluez` has a new owner, or none: bluetoothd stopped or restarted.
    OwnerChanged,
    /// The adapter object was removed (unplugged, driver reset).
    AdapterRemoved,
}

/// A subscription to `NameOwnerChanged` for `org.bluez` and to `InterfacesRemoved`
/// for the adapter's path. The connection task stops when this is dropped.
pub struct BluezWatch {
    adapter_path: String,
    /// Who owned `org.bluez` when the watch started: a change *to* this owner
    /// happened before the round began and is not news.
    owner_at_start: Option<String>,
    owner: BoxStream<'static, (dbus::Message, (String, String, String))>,
    removed: BoxStream<'static, (dbus::Message, (dbus::Path<'static>, Vec<String>))>,
    _matches: [MsgMatch; 2],
    conn: Arc<SyncConnection>,
    connection_task: tokio::task::JoinHandle<()>,
}

impl BluezWatch {
    pub async fn start(adapter: &str) -> Result<BluezWatch, BleError> {
        let (resource, conn) = dbus_tokio::connection::new_system_sync()?;
        let connection_task = tokio::spawn(async move {
            let lost = resource.await;
            tracing::debug!(error = %lost, "d-bus watch connection ended");
        });
        let owner_rule = MatchRule::new_signal("org.freedesktop.DBus", "NameOwnerChanged")
            .with_sender("org.freedesktop.DBus");
        let (owner_match, owner) = conn
            .add_match(owner_rule)
            .await?
            .stream::<(String, String, String)>();
        let removed_rule =
            MatchRule::new_signal("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved");
        let (removed_match, removed) = conn
            .add_match(removed_rule)
            .await?
            .stream::<(dbus::Path<'static>, Vec<String>)>();
        let bus = dbus::nonblock::Proxy::new(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            std::time::Duration::from_secs(5),
            conn.clone(),
        );
        let owner_at_start = bus
            .method_call::<(String,), _, _, _>(
                "org.freedesktop.DBus",
                "GetNameOwner",
                ("org.bluez",),
            )
            .await
            .ok()
            .map(|(o,)| o);
        Ok(BluezWatch {
            adapter_path: format!("/org/bluez/{adapter}"),
            owner_at_start,
            owner: owner.boxed(),
            removed: removed.boxed(),
            _matches: [owner_match, removed_match],
            conn,
            connection_task,
        })
    }

    /// The watch's D-Bus connection, for the agent and pairing calls.
    pub fn connection(&self) -> Arc<SyncConnection> {
        self.conn.clone()
    }

    /// Waits for the next change that ends the round. Pending forever if the
    /// watch connection itself is lost (the round's periodic check still runs).
    pub async fn changed(&mut self) -> BluezChange {
        loop {
            tokio::select! {
                Some((_, (name, _, new_owner))) = self.owner.next() => {
                    if name == "org.bluez" && self.owner_at_start.as_deref() != Some(new_owner.as_str()) {
                        return BluezChange::OwnerChanged;
                    }
                }
                Some((_, (path, interfaces))) = self.removed.next() => {
                    if *path == *self.adapter_path
                        && interfaces.iter().any(|i| i == "org.bluez.Adapter1")
                    {
                        return BluezChange::AdapterRemoved;
                    }
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for BluezWatch {
    fn drop(&mut self) {
        self.connection_task.abort();
    }
}
