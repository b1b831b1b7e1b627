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
    off <sensor> / on <sensor> power a sensor off (drops links, stops advertising) / on
    state <sensor>             connected, encrypted, bonded-with-gateway, subscribed
    quit

Every event (connections, pairing, subscriptions, values sent) is logged with
a time, to the file given as the second argument.
"""

import asyncio
import logging
import os
import struct
import sys

from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Device, DeviceConfiguration
from bumble.gatt import (
    GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
    Characteristic,
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


def sfloat(value):
    """IEEE 11073 SFLOAT for a whole number (exponent 0)."""
    return struct.pack("<H", value & 0x0FFF)


class Sensor:
    """One emulated device on the link: a controller, a host and a Bumble device."""

    def __init__(self, link, key, name, address, services):
        self.key = key
        self.name = name
        self.address = address
        self.services = services
        controller = Controller(key, link=link)
        config = DeviceConfiguration(name=name, address=Address(address))
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

    async def advertise(self):
        """Advertises when on, free, and it has something to say; again after
        every disconnection for as long as that holds."""
        if not (self.powered and self.advertising()) or self.device.connections:
            return
        if self.device.is_advertising:
            return
        await self.device.start_advertising(
            advertising_data=adv_data(self.name, self.services), auto_restart=False
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
            f"subscriptions={self.subscriptions}"
        )


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


SENSORS = {
    "hr": (HeartRateStrap, "HR strap", "C0:FF:EE:00:00:02"),
    "cuff": (BloodPressureCuff, "BP cuff", "C0:FF:EE:00:00:03"),
    "stranger": (Stranger, "Stranger HR", "DE:AD:BE:EF:00:09"),
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
    Controller(
        "gateway",
        host_source=transport.source,
        host_sink=transport.sink,
        link=link,
        public_address=GATEWAY_ADDRESS,
    )
    for s in sensors.values():
        await s.device.power_on()
    await serve(sensors, control)
    log.info("ready")
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
