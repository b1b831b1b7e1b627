"""Emulated residents' sensors for the virtual BLE lab, on Bumble.

One process holds a Bumble link layer (`LocalLink`) with one controller per
sensor and one more controller that the guest kernel drives through /dev/vhci:
that one becomes the gateway's hci0, so BlueZ and the kernel's SMP talk to the
sensors over a real HCI. Each sensor is a Bumble device with the GATT database,
advertising and security requirements of its kind.

The lab driver (lab.py) steers the sensors over a Unix socket, one command a
line, one answer line each ("ok ..." or "error ..."):

    notify hr <bpm>            heart-rate strap notifies a measurement
    store cuff <sys> <dia> <map>   the cuff stores a measurement (indicated on next connect)
    store thermo <tenths C>    the thermometer stores a temperature
    store scale <grams>        the scale stores a weight
    store glucose <seq> <mg/dL>    the meter stores a record (sent only when asked over RACP)
    glucose clear              the meter's memory is cleared (its next records are numbered from 1 again)
    glucose clear reset-clock  the same, and its clock goes back to 2000-01-01 00:00 (a battery change)
    glucose clock-set          its clock shows the site's time again
    glucose careless|careful   the meter sends every record it holds whatever it is
                               asked (as a faulty meter might), or only those asked for
    plx cont|spot <spo2> <pr>  the oximeter notifies (continuous) or indicates (spot-check)
    bthome <key> <centi C> <centi %RH>   a room sensor advertises a new value
    off <sensor> / on <sensor> power a sensor off (drops links, stops advertising) / on
    state <sensor>             connected, encrypted, bonded-with-gateway, subscribed, and
                               what the device showed (passkey or number) and its clock
    links                      how many sensors are connected now, and the most at once
    quit

Every event (connections, pairing, subscriptions, values sent) is logged with
a time, to the file given as the second argument.
"""

import asyncio
import logging
import os
import struct
import sys
import time

from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Device, DeviceConfiguration
from bumble.gatt import (
    GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
    Characteristic,
    CharacteristicValue,
    Service,
)
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink
from bumble.att import Attribute

log = logging.getLogger("sensors")

# The gateway's own controller (hci0 in the guest).
GATEWAY_ADDRESS = "F0:CA:FE:00:00:01"


class Link(LocalLink):
    """Bumble's LocalLink, sending LE data from the address the connection
    was made with. Bumble 0.0.236 sends it from the controller's current random
    address, but the kernel connects from the gateway's public address and then
    sets a fresh random address for scanning, so the sensor would drop every
    ATT and SMP packet from the gateway as coming from nobody it knows."""

    def send_acl_data(self, sender_controller, destination_address, transport, data):
        from bumble.core import PhysicalTransport

        connection = sender_controller.le_connections.get(destination_address)
        if transport != PhysicalTransport.LE or connection is None:
            return super().send_acl_data(sender_controller, destination_address, transport, data)
        destination = self.find_le_controller(destination_address)
        if destination is not None:
            source = connection.self_address
            asyncio.get_running_loop().call_soon(
                lambda: destination.on_link_acl_data(source, transport, data)
            )


class GatewayController(Controller):
    """The gateway's controller (hci0 in the guest), made to keep two rules of
    the Core specification that Bumble 0.0.236's controller breaks, and that
    Linux depends on (found by the lab's more_devices_than_slots,
    hw-tests/README.md, "What the lab found"):

    - it claims LL Privacy and Extended Advertising, so the kernel unmasks the
      LE Enhanced Connection Complete event, and then only that event may
      report a new connection (Vol 4, Part E, 7.7.65.10); Bumble sends the
      legacy LE Connection Complete. Linux 6.1 processes the legacy one (the
      link is up) but its connect command waits for the enhanced one until it
      times out (4 s), then "cancels" the connection it already has: it marks
      it HCI_CONN_CANCEL, and every later disconnect of that link is answered
      "Success" without an HCI Disconnect. The device stays connected.
    - LE Create Connection Cancel must end the pending connect and report it
      with a Connection Complete "Unknown Connection Identifier", or answer
      "Command Disallowed" when nothing is pending (7.8.13); Bumble answers
      "Success" and keeps the connect pending, so a cancelled connect to a
      device that turns up later still happens, behind the host's back."""

    LE_ENHANCED_CONNECTION_COMPLETE = 1 << 9  # LE event mask bit 9

    def send_hci_packet(self, packet):
        from bumble import hci

        if isinstance(packet, hci.HCI_LE_Connection_Complete_Event) and (
            self.le_event_mask & self.LE_ENHANCED_CONNECTION_COMPLETE
        ):
            packet = hci.HCI_LE_Enhanced_Connection_Complete_Event(
                status=packet.status,
                connection_handle=packet.connection_handle,
                role=packet.role,
                peer_address_type=packet.peer_address_type,
                peer_address=packet.peer_address,
                local_resolvable_private_address=Address.ANY_RANDOM,
                peer_resolvable_private_address=Address.ANY_RANDOM,
                connection_interval=packet.connection_interval,
                peripheral_latency=packet.peripheral_latency,
                supervision_timeout=packet.supervision_timeout,
                central_clock_accuracy=packet.central_clock_accuracy,
            )
        super().send_hci_packet(packet)

    def on_hci_le_create_connection_cancel_command(self, _command):
        from bumble import hci

        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        log.info("gateway: connect to %s cancelled", pending.peer_address)
        failed = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # After the Command Complete this returns (both are sent in order).
        asyncio.get_running_loop().call_soon(self.send_hci_packet, failed)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


def uuid16(short):
    from bumble.core import UUID

    return UUID.from_16_bits(short)


def adv_data(name, services):
    """Flags, the complete list of 16-bit services, the complete name."""
    fields = [
        (AdvertisingData.FLAGS, bytes([0x06])),
        (
            AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            b"".join(struct.pack("<H", s) for s in services),
        ),
        (AdvertisingData.COMPLETE_LOCAL_NAME, name.encode()),
    ]
    return b"".join(bytes([len(v) + 1, int(t)]) + v for t, v in fields)


def sfloat(value, exponent=0):
    """IEEE 11073 SFLOAT: a 12-bit mantissa and a 4-bit exponent."""
    return struct.pack("<H", ((exponent & 0x0F) << 12) | (value & 0x0FFF))


def float32(mantissa, exponent):
    """IEEE 11073 FLOAT: a 24-bit mantissa and an 8-bit exponent."""
    return struct.pack("<I", ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF))


# Every sensor connected to the gateway now, and the most at once (for the
# scenario with more devices than the gateway's max_connections).
LINKS = {"now": set(), "most": 0}


def require(characteristic, device, permission):
    """Makes writing the characteristic's CCCD need `permission`
    (encryption or authentication), as a real health device does."""
    for a in device.gatt_server.attributes:
        if (
            a.type == GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR
            and a.handle > characteristic.handle
            and a.handle <= characteristic.end_group_handle
        ):
            a.permissions |= permission


class Sensor:
    """One emulated device on the link: a controller, a host and a Bumble device."""

    def __init__(self, link, key, name, address, services):
        self.key = key
        self.name = name
        self.address = address
        self.services = services
        controller = Controller(key, link=link)
        config = DeviceConfiguration(name=name, address=Address(address))
        # Keys kept on the results share survive a reboot of the VM, as a real
        # device keeps its bonds in flash (bond_survives_reboot).
        keys = os.environ.get("LAB_SENSOR_KEYS")
        if keys:
            config.keystore = f"JsonKeyStore:{keys}/{key}.json"
        self.device = Device(
            config=config, host=Host(controller, AsyncPipeSink(controller))
        )
        self.powered = False
        self.subscribed = False
        self.subscriptions = 0
        self.device.on("connection", self.on_connection)

    def pairing(self, sc=True, mitm=False, bonding=True, io=None):
        delegate = PairingDelegate(
            io_capability=io or PairingDelegate.NO_OUTPUT_NO_INPUT
        )
        self.device.pairing_config_factory = lambda _c: PairingConfig(
            sc=sc, mitm=mitm, bonding=bonding, delegate=delegate
        )

    def on_connection(self, connection):
        log.info("%s: connected by %s", self.key, connection.peer_address)
        LINKS["now"].add(self.key)
        LINKS["most"] = max(LINKS["most"], len(LINKS["now"]))
        connection.on("disconnection", self.on_disconnection)
        connection.on(
            "connection_encryption_change",
            lambda *a: log.info(
                "%s: encryption %s", self.key, "on" if connection.is_encrypted else "off"
            ),
        )
        connection.on(
            "pairing", lambda keys: log.info("%s: paired, keys %s", self.key, keys)
        )
        connection.on(
            "pairing_failure",
            lambda reason: log.info("%s: pairing failed (%s)", self.key, reason),
        )
        self.connected(connection)

    def connected(self, connection):
        pass

    def on_disconnection(self, reason):
        log.info("%s: disconnected (%s)", self.key, reason)
        if not self.device.connections:
            LINKS["now"].discard(self.key)
        # A subscription lives as long as its link (no bond keeps it here).
        self.subscribed = False
        asyncio.get_running_loop().create_task(self.advertise())

    def advertising(self):
        """Whether the sensor advertises whenever it is free (on and not
        connected). Spot-check devices override it."""
        return True

    async def power_on(self):
        if not self.device.powered_on:
            await self.device.power_on()
        self.powered = True
        await self.advertise()
        log.info("%s: on (%s)", self.key, self.address)

    def advertising_data(self):
        return adv_data(self.name, self.services)

    async def advertise(self):
        """Advertises when on, free, and it has something to say; again after
        every disconnection for as long as that holds. One start at a time:
        two commands close together (two stored records) raced in Bumble."""
        if not hasattr(self, "_adv_lock"):
            self._adv_lock = asyncio.Lock()
        async with self._adv_lock:
            if not (self.powered and self.advertising()) or self.device.connections:
                return
            if self.device.is_advertising:
                return
            await self.device.start_advertising(
                advertising_data=self.advertising_data(), auto_restart=False
            )
            log.info("%s: advertising", self.key)

    async def power_off(self):
        self.powered = False
        if self.device.is_advertising:
            await self.device.stop_advertising()
        for c in list(self.device.connections.values()):
            try:
                await c.disconnect()
            except Exception as e:  # the link may already be gone
                log.info("%s: disconnect: %s", self.key, e)
        log.info("%s: off", self.key)

    async def state(self):
        conns = list(self.device.connections.values())
        bonded = False
        if self.device.keystore is not None:
            bonded = bool(await self.device.keystore.get_all())
        return (
            f"connected={int(bool(conns))} "
            f"encrypted={int(any(c.is_encrypted for c in conns))} "
            f"bonded={int(bonded)} subscribed={int(self.subscribed)} "
            f"subscriptions={self.subscriptions} "
            f"shown={getattr(self, 'shown', None)} "
            f"clock_writes={getattr(self, 'clock_writes', 0)} "
            f"clock={getattr(self, 'clock', b'').hex()} "
            f"clock_set_at={getattr(self, 'clock_set_at', 0):.0f}"
        )


class Panel(PairingDelegate):
    """The device's own display and buttons during pairing: it shows a
    passkey or a number (kept in `sensor.shown` for the lab to read, as a
    nurse reads the screen), and its user presses "yes" to a number."""

    def __init__(self, sensor, io):
        super().__init__(io_capability=io)
        self.sensor = sensor

    async def display_number(self, number, digits):
        self.sensor.shown = number
        log.info("%s: shows passkey %06d", self.sensor.key, number)

    async def compare_numbers(self, number, digits):
        self.sensor.shown = number
        log.info("%s: shows number %06d, its user presses yes", self.sensor.key, number)
        return True


class HeartRateStrap(Sensor):
    """0x180D with notifications and 0x180F; no security."""

    def __init__(self, link, key, name, address):
        super().__init__(link, key, name, address, [0x180D, 0x180F])
        self.measurement = Characteristic(
            uuid16(0x2A37),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            bytes([0, 0]),
        )
        self.measurement.on("subscription", self.on_subscription)
        battery = Characteristic(
            uuid16(0x2A19),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            bytes([90]),
        )
        self.device.add_services(
            [
                Service(uuid16(0x180D), [self.measurement]),
                Service(uuid16(0x180F), [battery]),
            ]
        )
        self.pairing(sc=True, mitm=False, bonding=False)

    def on_subscription(self, _conn, notify, _indicate):
        self.subscribed = notify
        self.subscriptions += int(notify)
        log.info("%s: notifications %s", self.key, "on" if notify else "off")

    async def notify(self, bpm):
        await self.device.notify_subscribers(self.measurement, bytes([0x00, bpm]))
        log.info("%s: notified %d bpm", self.key, bpm)


class BloodPressureCuff(Sensor):
    """0x1810: the measurement is indicated, and its CCCD may only be written
    on an encrypted link, so the gateway must pair (LE Secure Connections, Just
    Works: the cuff has no display or keys) and bond. Measurements taken while
    away are stored, indicated once subscribed, and then the cuff disconnects,
    as a spot-check cuff does."""

    def __init__(self, link, key, name, address):
        super().__init__(link, key, name, address, [0x1810])
        self.stored = []
        self.measurement = Characteristic(
            uuid16(0x2A35),
            Characteristic.Properties.INDICATE,
            Characteristic.READABLE,
            bytes([0]),
        )
        self.measurement.on("subscription", self.on_subscription)
        feature = Characteristic(
            uuid16(0x2A49), Characteristic.Properties.READ, Characteristic.READABLE, b"\x00\x00"
        )
        self.device.add_services([Service(uuid16(0x1810), [self.measurement, feature])])
        # Bumble adds the CCCD itself; make writing it need encryption.
        for a in self.device.gatt_server.attributes:
            if (
                a.type == GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR
                and a.handle > self.measurement.handle
                and a.handle <= self.measurement.end_group_handle
            ):
                a.permissions |= Attribute.WRITE_REQUIRES_ENCRYPTION
        self.pairing(sc=True, mitm=False, bonding=True)

    def connected(self, connection):
        # Like a real spot-check cuff in pairing mode: once bonded it hangs up,
        # and comes back (advertising) with what it has stored.
        connection.on(
            "pairing",
            lambda _keys: asyncio.get_running_loop().create_task(self.hang_up(connection)),
        )

    async def hang_up(self, connection):
        await asyncio.sleep(1.0)
        if connection.handle in self.device.connections:
            log.info("%s: bonded, hanging up", self.key)
            try:
                await connection.disconnect()
            except Exception as e:
                log.info("%s: disconnect: %s", self.key, e)

    def on_subscription(self, conn, _notify, indicate):
        self.subscribed = indicate
        self.subscriptions += int(indicate)
        log.info("%s: indications %s", self.key, "on" if indicate else "off")
        if indicate:
            asyncio.get_running_loop().create_task(self.upload(conn))

    async def upload(self, conn):
        while self.stored:
            value = self.stored[0]
            await self.device.indicate_subscriber(conn, self.measurement, value)
            log.info("%s: indicated %s (confirmed)", self.key, value.hex())
            self.stored.pop(0)
        await asyncio.sleep(0.5)
        log.info("%s: done, disconnecting", self.key)
        try:
            await conn.disconnect()
        except Exception as e:
            log.info("%s: disconnect: %s", self.key, e)

    def advertising(self):
        # A spot-check cuff advertises after a measurement, until it has
        # handed over what it stored.
        return bool(self.stored)

    async def store(self, systolic, diastolic, mean):
        # Flags 0x00: mmHg, no time stamp, no pulse.
        value = bytes([0]) + sfloat(systolic) + sfloat(diastolic) + sfloat(mean)
        self.stored.append(value)
        log.info("%s: stored %s", self.key, value.hex())
        await self.advertise()


# A device left connected with nothing to do hangs up after this long.
IDLE_HANG_UP = 45.0  # longer than SMP's 30 s, so a pairing waiting for staff is not cut


def hang_up_when(sensor, connection):
    """As battery devices do: hang up a second after bonding, or after a
    failed pairing, and when connected for IDLE_HANG_UP seconds with nobody
    subscribed. Added when the gateway's disconnects did not reach the
    devices (that was Bumble's controller breaking the specification, fixed
    by GatewayController); kept because real battery devices do it."""
    loop = asyncio.get_running_loop()

    async def hang_up(why, delay):
        await asyncio.sleep(delay)
        if connection.handle in sensor.device.connections and not (
            why == "idle" and sensor.subscribed
        ):
            log.info("%s: %s, hanging up", sensor.key, why)
            try:
                await connection.disconnect()
            except Exception as e:
                log.info("%s: disconnect: %s", sensor.key, e)

    connection.on("pairing", lambda _keys: loop.create_task(hang_up("bonded", 1.0)))
    connection.on("pairing_failure", lambda _r: loop.create_task(hang_up("pairing failed", 1.0)))
    loop.create_task(hang_up("idle", IDLE_HANG_UP))


class SpotCheck(Sensor):
    """A device that measures on demand: its measurement is indicated, and
    the CCCD needs an encrypted (or authenticated) link, so the gateway must
    pair and bond. It advertises while it holds something, indicates it once
    subscribed, then hangs up. After bonding it hangs up too, as devices in
    pairing mode do."""

    def __init__(self, link, key, name, address, service, uuid, io, mitm, extra=()):
        super().__init__(link, key, name, address, [service])
        self.stored = []
        self.shown = None
        self.measurement = Characteristic(
            uuid16(uuid), Characteristic.Properties.INDICATE, Characteristic.READABLE, bytes([0])
        )
        self.measurement.on("subscription", self.on_subscription)
        self.device.add_services([Service(uuid16(service), [self.measurement]), *extra])
        require(
            self.measurement,
            self.device,
            Attribute.WRITE_REQUIRES_AUTHENTICATION if mitm else Attribute.WRITE_REQUIRES_ENCRYPTION,
        )
        self.device.pairing_config_factory = lambda _c: PairingConfig(
            sc=True, mitm=mitm, bonding=True, delegate=Panel(self, io)
        )

    def connected(self, connection):
        hang_up_when(self, connection)

    def on_subscription(self, conn, _notify, indicate):
        self.subscribed = indicate
        self.subscriptions += int(indicate)
        log.info("%s: indications %s", self.key, "on" if indicate else "off")
        if indicate:
            asyncio.get_running_loop().create_task(self.upload(conn))

    async def upload(self, conn):
        # A moment for the gateway to finish its other writes (the clock).
        await asyncio.sleep(1.0)
        while self.stored:
            value = self.stored[0]
            await self.device.indicate_subscriber(conn, self.measurement, value)
            log.info("%s: indicated %s (confirmed)", self.key, value.hex())
            self.stored.pop(0)
        await asyncio.sleep(0.5)
        await self.linger()
        log.info("%s: done, disconnecting", self.key)
        try:
            await conn.disconnect()
        except Exception as e:
            log.info("%s: disconnect: %s", self.key, e)

    async def linger(self):
        """What the device waits for before it hangs up, once it has handed
        over what it stored: nothing."""

    def advertising(self):
        return bool(self.stored)

    async def store(self, value):
        self.stored.append(value)
        log.info("%s: stored %s", self.key, value.hex())
        await self.advertise()


class Thermometer(SpotCheck):
    """0x1809 with a display and no keys: pairing is authenticated by passkey
    entry (the thermometer shows the passkey, the gateway's user types it).
    It offers the Current Time Service (0x1805) with a writable Current Time,
    and its clock has drifted: it keeps what the gateway writes."""

    def __init__(self, link, key, name, address):
        self.clock = bytes([0xE9, 0x07, 1, 1, 0, 0, 0, 3, 0, 0])  # 2025-01-01 00:00
        self.clock_writes = 0
        self.clock_set_at = 0.0
        self.clock_set_this_link = False
        self.current_time = Characteristic(
            uuid16(0x2A2B),
            Characteristic.Properties.READ
            | Characteristic.Properties.WRITE
            | Characteristic.Properties.NOTIFY,
            Characteristic.READABLE | Characteristic.WRITEABLE,
            CharacteristicValue(read=lambda _c: self.clock, write=self.set_clock),
        )
        super().__init__(
            link, key, name, address, 0x1809, 0x2A1C,
            PairingDelegate.DISPLAY_OUTPUT_ONLY, True,
            extra=[Service(uuid16(0x1805), [self.current_time])],
        )

    async def linger(self):
        # Like devices with a Current Time Service, it stays a while for the
        # gateway to set its clock (up to 10 s) before it hangs up.
        writes = self.clock_writes
        for _ in range(50):
            if self.clock_writes > writes or self.clock_set_this_link:
                return
            await asyncio.sleep(0.2)

    def connected(self, connection):
        self.clock_set_this_link = False
        super().connected(connection)

    def set_clock(self, _connection, value):
        self.clock_set_this_link = True
        self.clock = bytes(value)
        self.clock_writes += 1
        self.clock_set_at = time.time()
        log.info("%s: clock set to %s", self.key, self.clock.hex())


class Scale(SpotCheck):
    """0x181D with a display and a yes/no button: pairing is numeric
    comparison (both sides show a number; both users must say yes)."""

    def __init__(self, link, key, name, address):
        super().__init__(
            link, key, name, address, 0x181D, 0x2A9D,
            PairingDelegate.DISPLAY_OUTPUT_AND_YES_NO_INPUT, True,
        )


# How long the glucose meter waits for another RACP question after answering
# one before it hangs up (seconds; the guest runs under software emulation).
GLUCOSE_FOLLOW_UP = 4.0


class GlucoseMeter(Sensor):
    """0x1808 with the Record Access Control Point: it stores records with
    sequence numbers and sends nothing until the gateway asks over RACP
    ("report stored records": all, from a sequence number on, or its last
    record); then it notifies those records, indicates the RACP answer and
    hangs up unless asked again within GLUCOSE_FOLLOW_UP seconds. Its CCCDs
    need an encrypted link (Just Works, bonded). It advertises while it holds
    records it has not been asked for."""

    def __init__(self, link, key, name, address):
        super().__init__(link, key, name, address, [0x1808])
        self.records = []  # (sequence, mg/dL, local time taken)
        # Set when its clock went back to 2000-01-01 00:00 (a battery
        # change): the moment it did, by the host's clock.
        self.clock_reset_at = None
        # How many records were ever stored (a record stored during a
        # transfer, after the meter chose what to send, keeps it advertising).
        self.stores = 0
        # New out of the box it advertises (pairing mode) until first asked.
        self.fresh = True
        self.sent = []
        self.requests = []
        # A faulty meter sends every record whatever the request says.
        self.careless = False
        notify = Characteristic.Properties.NOTIFY
        self.measurement = Characteristic(uuid16(0x2A18), notify, Characteristic.READABLE, b"\x00")
        self.context = Characteristic(uuid16(0x2A34), notify, Characteristic.READABLE, b"\x00")
        feature = Characteristic(
            uuid16(0x2A51), Characteristic.Properties.READ, Characteristic.READABLE, b"\x00\x00"
        )
        self.racp = Characteristic(
            uuid16(0x2A52),
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self.on_racp),
        )
        self.measurement.on("subscription", self.on_subscription)
        self.device.add_services(
            [Service(uuid16(0x1808), [self.measurement, self.context, feature, self.racp])]
        )
        for c in (self.measurement, self.context, self.racp):
            require(c, self.device, Attribute.WRITE_REQUIRES_ENCRYPTION)
        self.pairing(sc=True, mitm=False, bonding=True)

    def connected(self, connection):
        hang_up_when(self, connection)

    def on_subscription(self, _conn, notify, _indicate):
        self.subscribed = notify
        self.subscriptions += int(notify)
        log.info("%s: notifications %s", self.key, "on" if notify else "off")

    def on_racp(self, connection, value):
        value = bytes(value)
        self.requests.append(value.hex())
        log.info("%s: RACP request %s", self.key, value.hex())
        asyncio.get_running_loop().create_task(self.report(connection, value))

    async def report(self, conn, request):
        asked = len(self.requests)
        await asyncio.sleep(0.2)  # the write response goes first
        # A record stored from here on was not chosen: the meter keeps
        # advertising for it after this transfer.
        stores = self.stores
        if request[:2] == b"\x01\x01" or (self.careless and request[:1] == b"\x01"):
            chosen = list(self.records)
        elif request[:2] == b"\x01\x06":
            # Operator "last record": the one stored last (the highest number
            # of its current numbering).
            chosen = self.records[-1:]
        elif request[:3] == b"\x01\x03\x01" and len(request) >= 5:
            first = struct.unpack("<H", request[3:5])[0]
            chosen = [r for r in self.records if r[0] >= first]
        else:
            log.info("%s: RACP request not supported", self.key)
            await self.device.indicate_subscriber(conn, self.racp, bytes([6, 0, request[0], 2]))
            return
        for seq, mgdl, t in chosen:
            # Flags 0x02: concentration (kg/L) and type-location follow; the
            # base time is the meter's clock (the site's local time) when the
            # record was taken; capillary whole blood, finger.
            value = (
                bytes([0x02])
                + struct.pack("<HHBBBBB", seq, t.year, t.month, t.day, t.hour, t.minute, t.second)
                + sfloat(mgdl, -5) + bytes([0x11])
            )
            await self.device.notify_subscriber(conn, self.measurement, value)
            self.sent.append(seq)
            log.info("%s: sent record %d (%d mg/dL)", self.key, seq, mgdl)
        code = 1 if chosen else 6  # success, or no records found
        await self.device.indicate_subscriber(conn, self.racp, bytes([6, 0, 1, code]))
        log.info("%s: RACP answered %d", self.key, code)
        if self.stores == stores:
            self.fresh = False
        # The gateway may ask again (its last record after "no records
        # found", then all of them): hang up only when it has not.
        await asyncio.sleep(GLUCOSE_FOLLOW_UP)
        if len(self.requests) != asked:
            return
        try:
            await conn.disconnect()
        except Exception as e:
            log.info("%s: disconnect: %s", self.key, e)

    def advertising(self):
        return self.fresh

    async def store(self, seq, mgdl):
        from datetime import datetime
        from zoneinfo import ZoneInfo

        now = datetime.now(ZoneInfo("Europe/London"))
        if self.clock_reset_at is not None:
            # Its clock counts on from 2000-01-01 00:00 since it was reset.
            now = datetime(2000, 1, 1) + (datetime.now() - self.clock_reset_at)
        self.records.append((seq, mgdl, now))
        self.stores += 1
        self.fresh = True
        log.info("%s: stored record %d (%d mg/dL)", self.key, seq, mgdl)
        await self.advertise()

    async def state(self):
        return (
            await super().state()
            + f" requests={','.join(self.requests) or '-'}"
            + f" sent={','.join(map(str, self.sent)) or '-'}"
        )


class PulseOximeter(Sensor):
    """0x1822: PLX continuous measurement (notify) and spot-check measurement
    (indicate), with PLX features; no security. Always advertises when free."""

    def __init__(self, link, key, name, address):
        super().__init__(link, key, name, address, [0x1822])
        self.continuous = Characteristic(
            uuid16(0x2A5F), Characteristic.Properties.NOTIFY, Characteristic.READABLE, b"\x00"
        )
        self.spot = Characteristic(
            uuid16(0x2A5E), Characteristic.Properties.INDICATE, Characteristic.READABLE, b"\x00"
        )
        features = Characteristic(
            uuid16(0x2A60), Characteristic.Properties.READ, Characteristic.READABLE, b"\x00\x00"
        )
        self.continuous.on("subscription", self.on_subscription)
        self.device.add_services([Service(uuid16(0x1822), [self.spot, self.continuous, features])])
        self.pairing(sc=True, mitm=False, bonding=False)

    def on_subscription(self, _conn, notify, _indicate):
        self.subscribed = notify
        self.subscriptions += int(notify)
        log.info("%s: continuous notifications %s", self.key, "on" if notify else "off")

    async def send(self, kind, spo2, pr):
        value = bytes([0x00]) + sfloat(spo2) + sfloat(pr)
        if kind == "cont":
            await self.device.notify_subscribers(self.continuous, value)
        else:
            await self.device.indicate_subscribers(self.spot, value)
        log.info("%s: %s SpO2 %d %% PR %d /min", self.key, kind, spo2, pr)


class RoomSensor(Sensor):
    """A BTHome v2 room sensor: advertising only (not connectable), a packet
    id, temperature and humidity; encrypted (AES-CCM, bthome.io) when given a
    bind key."""

    def __init__(self, link, key, name, address, bind_key=None):
        super().__init__(link, key, name, address, [])
        self.bind_key = bind_key
        self.packet = 0
        self.counter = 0
        self.payload = None

    def advertising(self):
        return self.payload is not None

    def advertising_data(self):
        fields = [
            (AdvertisingData.FLAGS, bytes([0x06])),
            (AdvertisingData.SERVICE_DATA_16_BIT_UUID, struct.pack("<H", 0xFCD2) + self.payload),
            (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
        ]
        return b"".join(bytes([len(v) + 1, int(t)]) + v for t, v in fields)

    async def advertise(self):
        if not (self.powered and self.advertising()):
            return
        if self.device.is_advertising:
            await self.device.stop_advertising()
        from bumble.device import AdvertisingType

        await self.device.start_advertising(
            advertising_type=AdvertisingType.UNDIRECTED,
            advertising_data=self.advertising_data(),
            auto_restart=False,
        )
        log.info("%s: advertising %s", self.key, self.payload.hex())

    async def send(self, centi_c, centi_rh):
        self.packet = (self.packet + 1) % 256
        objects = bytes([0x00, self.packet]) + bytes([0x02]) + struct.pack("<h", centi_c)
        objects += bytes([0x03]) + struct.pack("<H", centi_rh)
        if self.bind_key is None:
            self.payload = bytes([0x40]) + objects
        else:
            from cryptography.hazmat.primitives.ciphers.aead import AESCCM

            self.counter += 1
            info = 0x41
            counter = struct.pack("<I", self.counter)
            mac = bytes.fromhex(self.address.replace(":", ""))
            nonce = mac + struct.pack("<H", 0xFCD2) + bytes([info]) + counter
            sealed = AESCCM(bytes.fromhex(self.bind_key), tag_length=4).encrypt(nonce, objects, None)
            self.payload = bytes([info]) + sealed[:-4] + counter + sealed[-4:]
        log.info("%s: %d centi-C, %d centi-%%RH", self.key, centi_c, centi_rh)
        await self.advertise()


class Stranger(Sensor):
    """Someone's health device that nobody here registered: it advertises heart
    rate, and whenever it is connected it asks to bond (SMP Security Request)."""

    def __init__(self, link, key, name, address):
        super().__init__(link, key, name, address, [0x180D])
        hr = Characteristic(
            uuid16(0x2A37), Characteristic.Properties.NOTIFY, Characteristic.READABLE, b"\x00\x00"
        )
        self.device.add_services([Service(uuid16(0x180D), [hr])])
        self.pairing(sc=True, mitm=False, bonding=True)

    def connected(self, connection):
        log.info("%s: sending SMP Security Request (bonding)", self.key)
        self.device.request_pairing(connection)


# The bind key printed on the encrypted room sensor's box (made up for the lab).
BTHOME_KEY = "5c1a7e0d9b3f42a68e21c4d07f9ab316"

SENSORS = {
    "hr": (HeartRateStrap, "HR strap", "C0:FF:EE:00:00:02"),
    "cuff": (BloodPressureCuff, "BP cuff", "C0:FF:EE:00:00:03"),
    "stranger": (Stranger, "Stranger HR", "DE:AD:BE:EF:00:09"),
    "thermo": (Thermometer, "Thermometer", "C0:FF:EE:00:00:05"),
    "scale": (Scale, "Scale", "C0:FF:EE:00:00:06"),
    "plx": (PulseOximeter, "Oximeter", "C0:FF:EE:00:00:07"),
    "glucose": (GlucoseMeter, "Glucose meter", "C0:FF:EE:00:00:08"),
    "room": (RoomSensor, "Room sensor", "C0:FF:EE:00:00:11"),
    "room_enc": (lambda *a: RoomSensor(*a, bind_key=BTHOME_KEY), "Room sensor E", "C0:FF:EE:00:00:12"),
}


async def serve(sensors, path):
    async def client(reader, writer):
        while line := await reader.readline():
            words = line.decode().split()
            try:
                answer = await command(sensors, words)
            except Exception as e:  # a bad command is answered, never fatal
                log.exception("command %s", words)
                answer = f"error {e}"
            writer.write((answer + "\n").encode())
            await writer.drain()
            if words[:1] == ["quit"]:
                os._exit(0)
        writer.close()

    return await asyncio.start_unix_server(client, path)


async def command(sensors, words):
    match words:
        case ["notify", "hr", bpm]:
            await sensors["hr"].notify(int(bpm))
        case ["store", "cuff", s, d, m]:
            await sensors["cuff"].store(int(s), int(d), int(m))
        case ["store", "thermo", tenths]:
            # Flags 0x00: Celsius, no time stamp, no type.
            await sensors["thermo"].store(bytes([0x00]) + float32(int(tenths), -1))
        case ["store", "scale", grams]:
            # Flags 0x00: SI, resolution 5 g.
            await sensors["scale"].store(bytes([0x00]) + struct.pack("<H", int(grams) // 5))
        case ["store", "glucose", seq, mgdl]:
            await sensors["glucose"].store(int(seq), int(mgdl))
        case ["glucose", "clear"]:
            # Its memory cleared (or a reset): every record gone; what it
            # stores next is numbered from whatever `store` says (1 again),
            # with later base times.
            sensors["glucose"].records.clear()
            log.info("glucose: memory cleared")
        case ["glucose", "clear", "reset-clock"]:
            # A battery change on a meter that loses its memory and its
            # clock: the clock starts again at 2000-01-01 00:00 and the user
            # never sets it (H35's residual).
            from datetime import datetime

            sensors["glucose"].records.clear()
            sensors["glucose"].clock_reset_at = datetime.now()
            log.info("glucose: memory cleared, clock back to 2000-01-01 00:00")
        case ["glucose", "clock-set"]:
            sensors["glucose"].clock_reset_at = None
            log.info("glucose: clock shows the site's time")
        case ["glucose", mode] if mode in ("careless", "careful"):
            sensors["glucose"].careless = mode == "careless"
            log.info("glucose: %s", mode)
        case ["plx", kind, spo2, pr] if kind in ("cont", "spot"):
            await sensors["plx"].send(kind, int(spo2), int(pr))
        case ["bthome", key, c, rh]:
            await sensors[key].send(int(c), int(rh))
        case ["links"]:
            return f"ok now={len(LINKS['now'])} most={LINKS['most']}"
        case ["links", "reset"]:
            LINKS["most"] = len(LINKS["now"])
        case ["off", key]:
            await sensors[key].power_off()
        case ["on", key]:
            await sensors[key].power_on()
        case ["state", key]:
            return "ok " + await sensors[key].state()
        case ["quit"]:
            pass
        case _:
            return f"error unknown command {' '.join(words)}"
    return "ok"


async def main(control, logfile):
    logging.basicConfig(
        filename=logfile,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    link = Link()
    sensors = {}
    for key, (cls, name, address) in SENSORS.items():
        sensors[key] = cls(link, key, name, address)
    # The gateway's controller last, so that it attaches to a link where the
    # sensors already are.
    transport = await open_transport("vhci")
    GatewayController(
        "gateway",
        host_source=transport.source,
        host_sink=transport.sink,
        link=link,
        public_address=GATEWAY_ADDRESS,
    )
    # The first three at once (as before); the others when first switched on
    # (`on <key>`): each controller's reset costs seconds under emulation.
    for key in ("hr", "cuff", "stranger"):
        await sensors[key].device.power_on()
    await serve(sensors, control)
    log.info("ready")
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
