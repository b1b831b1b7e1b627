"""A fake BlueZ for carehub's BLE tests: python-dbusmock's bluez5 template plus
what it lacks for a gateway: GATT services and characteristics, notifications
and indications, advertisements that only arrive while the adapter scans, and
spot-check devices that deliver stored measurements and then disconnect.

Loaded by tests/integration/ble_support.rs with
`python -m dbusmock --system --template fake_bluez.py` on a private bus.
Every helper is a method on org.bluez.Mock taking plain strings, so the Rust
harness drives it with dbus-send. Byte values travel as hex strings.
"""

# SPDX-License-Identifier: Apache-2.0

import dbus
from gi.repository import GLib

from dbusmock import mockobject
from dbusmock.templates.bluez5 import *  # noqa: F401,F403 (re-exports the bluez5 mock methods)
from dbusmock.templates import bluez5

GATT_SERVICE_IFACE = "org.bluez.GattService1"
GATT_CHRC_IFACE = "org.bluez.GattCharacteristic1"
MOCK_IFACE = "org.bluez.Mock"


def load(mock, parameters):
    bluez5.load(mock, parameters)


def _device_path(adapter, address):
    return "/org/bluez/" + adapter + "/dev_" + address.upper().replace(":", "_")


def _bytes(hexstr):
    return dbus.Array([dbus.Byte(b) for b in bytes.fromhex(hexstr)], signature="y")


def _set_device_props(device, props):
    device.props[bluez5.DEVICE_IFACE].update(props)
    device.EmitSignal(dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                      [bluez5.DEVICE_IFACE, props, []])


def _connect(device):
    # bluez5's Connect never sets ServicesResolved, and btleplug's connect()
    # waits for it: a connected device here has its services resolved at once.
    if device.props[bluez5.DEVICE_IFACE]["Connected"]:
        raise dbus.exceptions.DBusException("Already Connected", name="org.bluez.Error.AlreadyConnected")
    device.connected = True
    device.connect_count = getattr(device, "connect_count", 0) + 1
    _set_device_props(device, {"Connected": dbus.Boolean(True), "ServicesResolved": dbus.Boolean(True)})
    links = sum(1 for o in mockobject.objects.values()
                if bluez5.DEVICE_IFACE in o.props and o.props[bluez5.DEVICE_IFACE].get("Connected"))
    mockobject.objects["/"].most_links = max(getattr(mockobject.objects["/"], "most_links", 0), links)
    early = [c for c in _characteristics(device.path) if getattr(c, "early", None)]
    if early:
        # Real BlueZ re-enables a bonded device's subscriptions by itself on
        # reconnection ("Re-register subscribed notification client"), and a
        # spot-check device then indicates what it stored at once, before the
        # gateway has discovered or subscribed anything, and hangs up.
        def deliver():
            for chrc in early:
                values, chrc.early = chrc.early, []
                for v in values:
                    _emit_value(chrc, v)
            GLib.timeout_add(200, lambda: (_disconnect(device), False)[1])
            return False

        GLib.timeout_add(5, deliver)


def _pair(device):
    # bluez5's Pair replaces the device's UUIDs with a phone's classic profiles;
    # a sensor keeps advertising its own services.
    if device.props[bluez5.DEVICE_IFACE]["Paired"]:
        raise dbus.exceptions.DBusException("Already paired", name="org.bluez.Error.AlreadyExists")
    device.paired = True
    _set_device_props(device, {"Paired": dbus.Boolean(True), "Bonded": dbus.Boolean(True)})


def _disconnect(device):
    device.connected = False
    for chrc in _characteristics(device.path):
        if chrc.props[GATT_CHRC_IFACE]["Notifying"]:
            chrc.props[GATT_CHRC_IFACE]["Notifying"] = dbus.Boolean(False)
    _set_device_props(device, {"Connected": dbus.Boolean(False), "ServicesResolved": dbus.Boolean(False)})


def _disconnect_call(device):
    """Device1.Disconnect. With a slow disconnect set (SlowDisconnect), the
    call returns at once and the link goes down only later, as the radio's
    own disconnect takes its time after BlueZ has been asked."""
    delay = getattr(device, "slow_disconnect_ms", 0)
    if delay:
        GLib.timeout_add(delay, lambda: (_disconnect(device) if getattr(device, "connected", False) else None, False)[1])
        return
    _disconnect(device)


def _characteristics(device_path):
    return [o for p, o in mockobject.objects.items()
            if p.startswith(device_path + "/") and GATT_CHRC_IFACE in o.props]


def _adapter_discovering(device):
    adapter = mockobject.objects.get(str(device.props[bluez5.DEVICE_IFACE]["Adapter"]))
    return adapter is not None and bool(adapter.props[bluez5.ADAPTER_IFACE]["Discovering"])


def _emit_value(chrc, hexstr):
    value = _bytes(hexstr)
    chrc.props[GATT_CHRC_IFACE]["Value"] = value
    chrc.EmitSignal(dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                    [GATT_CHRC_IFACE, {"Value": value}, []])


def _start_notify(chrc):
    chrc.props[GATT_CHRC_IFACE]["Notifying"] = dbus.Boolean(True)
    chrc.EmitSignal(dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                    [GATT_CHRC_IFACE, {"Notifying": dbus.Boolean(True)}, []])
    stored = getattr(chrc, "stored", [])
    if stored:
        # A spot-check device: it sends what it stored once the gateway
        # subscribes, then ends the connection itself.
        chrc.stored = []

        def deliver():
            for v in stored:
                _emit_value(chrc, v)
            if chrc.disconnect_after:
                device = mockobject.objects[chrc.device_path]
                if device.props[bluez5.DEVICE_IFACE]["Connected"]:
                    _disconnect(device)
            return False

        GLib.timeout_add(20, deliver)


def _stop_notify(chrc):
    chrc.props[GATT_CHRC_IFACE]["Notifying"] = dbus.Boolean(False)


def _read_value(chrc, _options):
    return chrc.props[GATT_CHRC_IFACE]["Value"]


def _write_value(chrc, value, _options):
    """Remembers what the gateway wrote (a RACP request, the current time)."""
    if not hasattr(chrc, "written"):
        chrc.written = []
    chrc.written.append(bytes(value).hex())


def _set_discovering(adapter, on):
    adapter.props[bluez5.ADAPTER_IFACE]["Discovering"] = dbus.Boolean(on)
    adapter.EmitSignal(dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                       [bluez5.ADAPTER_IFACE, {"Discovering": dbus.Boolean(on)}, []])


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="s")
def AddGatewayAdapter(self, name):
    """bluez5's adapter, with discovery that does not depend on a filter having
    been set (bluez5's StartDiscovery raises KeyError without one)."""
    path = bluez5.AddAdapter(self, name, "carehub-test")
    adapter = mockobject.objects[path]
    adapter.AddMethods(bluez5.ADAPTER_IFACE, [
        ("StartDiscovery", "", "", lambda a: _set_discovering(a, True)),
        ("StopDiscovery", "", "", lambda a: _set_discovering(a, False)),
    ])
    return path


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="")
def StopScanning(self, name):
    """The radio stops scanning on its own (btleplug #332, BlueZ #1554)."""
    _set_discovering(mockobject.objects["/org/bluez/" + name], False)


@dbus.service.method(MOCK_IFACE, in_signature="sssas", out_signature="s")
def AddSensor(self, adapter, address, name, uuids):
    """A BLE peripheral whose Connect resolves services, advertising `uuids`."""
    path = bluez5.AddDevice(self, adapter, address, name)
    device = mockobject.objects[path]
    device.path = path
    device.props[bluez5.DEVICE_IFACE]["UUIDs"] = dbus.Array(uuids, signature="s")
    device.props[bluez5.DEVICE_IFACE]["RSSI"] = dbus.Int16(-60)
    device.AddMethods(bluez5.DEVICE_IFACE, [
        ("Connect", "", "", _connect),
        ("Disconnect", "", "", _disconnect_call),
        ("Pair", "", "", _pair),
    ])
    return path


@dbus.service.method(MOCK_IFACE, in_signature="ssnss", out_signature="b")
def Advertise(self, adapter, address, rssi, service_data, manufacturer_data):
    """One advertisement. `service_data` is "uuid=hex;uuid=hex", `manufacturer_data`
    "company=hex" (company in decimal). Returns false (and changes nothing) when
    the adapter is not scanning: a radio that does not scan hears nothing."""
    device = mockobject.objects[_device_path(adapter, address)]
    if not _adapter_discovering(device):
        return False
    props = {"RSSI": dbus.Int16(rssi)}
    if service_data:
        sd = {}
        for item in service_data.split(";"):
            uuid, hexstr = item.split("=")
            sd[dbus.String(uuid)] = dbus.Array(_bytes(hexstr), signature="y", variant_level=1)
        props["ServiceData"] = dbus.Dictionary(sd, signature="sv")
    if manufacturer_data:
        md = {}
        for item in manufacturer_data.split(";"):
            company, hexstr = item.split("=")
            md[dbus.UInt16(int(company))] = dbus.Array(_bytes(hexstr), signature="y", variant_level=1)
        props["ManufacturerData"] = dbus.Dictionary(md, signature="qv")
    _set_device_props(device, props)
    return True


@dbus.service.method(MOCK_IFACE, in_signature="sss", out_signature="s")
def AddGattService(self, adapter, address, uuid):
    device_path = _device_path(adapter, address)
    device = mockobject.objects[device_path]
    device.service_count = getattr(device, "service_count", 0) + 1
    path = "%s/service%04x" % (device_path, device.service_count * 0x10)
    # At least one method: without it dbusmock's introspection puts the
    # interface after the child nodes and bluez-async rejects the XML.
    self.AddObject(path, GATT_SERVICE_IFACE,
                   {"UUID": dbus.String(uuid), "Primary": dbus.Boolean(True),
                    "Device": dbus.ObjectPath(device_path),
                    "Includes": dbus.Array([], signature="o")},
                   [("Ping", "", "", "")])
    mockobject.objects["/"].EmitSignal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded", "oa{sa{sv}}",
                                       [dbus.ObjectPath(path),
                                        {GATT_SERVICE_IFACE: mockobject.objects[path].props[GATT_SERVICE_IFACE]}])
    return path


@dbus.service.method(MOCK_IFACE, in_signature="ssass", out_signature="s")
def AddGattCharacteristic(self, service_path, uuid, flags, value):
    service = mockobject.objects[service_path]
    service.chrc_count = getattr(service, "chrc_count", 0) + 1
    path = "%s/char%04x" % (service_path, service.chrc_count)
    self.AddObject(path, GATT_CHRC_IFACE,
                   {"UUID": dbus.String(uuid), "Service": dbus.ObjectPath(service_path),
                    "Value": _bytes(value), "Notifying": dbus.Boolean(False),
                    "Flags": dbus.Array(flags, signature="s")},
                   [("ReadValue", "a{sv}", "ay", _read_value),
                    ("WriteValue", "aya{sv}", "", _write_value),
                    ("StartNotify", "", "", _start_notify),
                    ("StopNotify", "", "", _stop_notify)])
    chrc = mockobject.objects[path]
    chrc.device_path = str(service.props[GATT_SERVICE_IFACE]["Device"])
    chrc.stored = []
    chrc.disconnect_after = False
    mockobject.objects["/"].EmitSignal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded", "oa{sa{sv}}",
                                       [dbus.ObjectPath(path), {GATT_CHRC_IFACE: chrc.props[GATT_CHRC_IFACE]}])
    return path


@dbus.service.method(MOCK_IFACE, in_signature="sasb", out_signature="")
def StoreValues(self, chrc_path, values, disconnect_after):
    """Values the characteristic sends as soon as it is subscribed; then, if
    `disconnect_after`, the device disconnects (a spot-check device)."""
    chrc = mockobject.objects[chrc_path]
    chrc.stored = [str(v) for v in values]
    chrc.disconnect_after = bool(disconnect_after)


@dbus.service.method(MOCK_IFACE, in_signature="sas", out_signature="")
def IndicateOnReconnect(self, chrc_path, values):
    """Values the characteristic sends the moment the device is next
    connected, before anyone subscribes (a bonded device whose subscription
    BlueZ restores); then the device hangs up."""
    mockobject.objects[chrc_path].early = [str(v) for v in values]


@dbus.service.method(MOCK_IFACE, in_signature="ss", out_signature="b")
def Notify(self, chrc_path, value):
    """A notification, sent only if the gateway subscribed (as a real device)."""
    chrc = mockobject.objects[chrc_path]
    if not chrc.props[GATT_CHRC_IFACE]["Notifying"]:
        return False
    _emit_value(chrc, value)
    return True


@dbus.service.method(MOCK_IFACE, in_signature="ss", out_signature="")
def DropLink(self, adapter, address):
    """The device walks out of range: the link drops, subscriptions end."""
    device = mockobject.objects[_device_path(adapter, address)]
    if device.props[bluez5.DEVICE_IFACE]["Connected"]:
        _disconnect(device)


@dbus.service.method(MOCK_IFACE, in_signature="ssu", out_signature="b")
def NotifyBurst(self, chrc_path, value, count):
    """`count` notifications of the same value at once (for benchmarks)."""
    chrc = mockobject.objects[chrc_path]
    if not chrc.props[GATT_CHRC_IFACE]["Notifying"]:
        return False
    for _ in range(count):
        _emit_value(chrc, value)
    return True


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="as")
def Written(self, chrc_path):
    """What the gateway wrote to a characteristic, oldest first, in hex."""
    return dbus.Array(getattr(mockobject.objects[chrc_path], "written", []), signature="s")


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="u")
def ConnectCount(self, device_path):
    return dbus.UInt32(getattr(mockobject.objects[device_path], "connect_count", 0))


@dbus.service.method(MOCK_IFACE, in_signature="su", out_signature="")
def SlowDisconnect(self, device_path, delay_ms):
    """The device's link goes down `delay_ms` after Disconnect returns."""
    mockobject.objects[device_path].slow_disconnect_ms = int(delay_ms)


@dbus.service.method(MOCK_IFACE, in_signature="", out_signature="u")
def MostLinks(self):
    """The most devices connected at once so far."""
    return dbus.UInt32(getattr(mockobject.objects["/"], "most_links", 0))
