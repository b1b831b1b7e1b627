#!/usr/bin/env python3
"""Makes the encrypted MiBeacon v5 and pvvx test vectors in src/decode/advert_tests.rs
with an implementation independent of carehub's (pycryptodome), following the nonce
layouts of xiaomi-ble (MiBeacon v4/v5) and ble_monitor (pvvx "custom encrypted"),
then checks the MiBeacon one by decoding it with xiaomi-ble.

Also the frames that carry their MAC (issue 22): a MiBeacon v5 frame with the MAC
field, and a BTHome v2 frame with the "MAC included" bit, made with bthome-ble's own
`bthome_v2_encryption.encrypt_payload` (the bthome.io worked example) and decoded
by bthome-ble's parser heard from another address.

Run in the peers venv plus xiaomi-ble:  pip install pycryptodomex xiaomi-ble bthome-ble
"""
import time

from Cryptodome.Cipher import AES

KEY = bytes.fromhex("b2d46f0a8ea1f8e1bd0cd0d9c3eb5a0e")
MAC = bytes.fromhex("A4C138123456")  # display order


def ccm(nonce: bytes, plain: bytes) -> tuple[bytes, bytes]:
    c = AES.new(KEY, AES.MODE_CCM, nonce=nonce, mac_len=4)
    c.update(b"\x11")
    return c.encrypt_and_digest(plain)


# MiBeacon v5: frame control 0x5848 (v5, auth mode 2, objects, encrypted), product id
# 0x055B (LYWSD03MMC), frame counter 0x2A, extended counter 1, object 0x100D with
# 23.0 °C and 45.4 %.
pid, cnt, ext = bytes.fromhex("5b05"), bytes([0x2A]), bytes.fromhex("010000")
ct, tag = ccm(MAC[::-1] + pid + cnt + ext, bytes.fromhex("0d1004e600c601"))
mibeacon = bytes.fromhex("4858") + pid + cnt + ct + ext + tag
print("mibeacon", mibeacon.hex())

# pvvx encrypted custom: counter 7; 21.34 °C, 45.67 %, battery 88 %, flags 0. The
# nonce ends with the AD header (length 14, type 0x16, UUID 0x181A) and the counter.
ct, tag = ccm(MAC[::-1] + bytes([14, 0x16, 0x1A, 0x18, 7]), bytes.fromhex("5608d7115800"))
print("pvvx", (bytes([7]) + ct + tag).hex())

# MiBeacon v5 with the MAC field: frame control 0x5858 (as above plus bit 4), the MAC
# least significant byte first after the frame counter, then the same encrypted
# object under the same nonce layout (counter 0x2B, extended counter 1).
cnt = bytes([0x2B])
ct, tag = ccm(MAC[::-1] + pid + cnt + ext, bytes.fromhex("0d1004e600c601"))
mibeacon_mac = bytes.fromhex("5858") + pid + cnt + MAC[::-1] + ct + ext + tag
print("mibeacon_mac", mibeacon_mac.hex())

try:
    import contextlib
    import io

    from bthome_ble import bthome_v2_encryption as bthome_example
except ImportError:
    print("bthome-ble not installed: BTHome MAC-included vector not made")
else:
    # bthome.io's worked example (key 231d39c1..., MAC 54:48:E6:8F:80:A5, counter
    # 00112233, 25.06 °C and 50.55 %) with device info 0x43: encrypted and MAC
    # included. The MAC goes in the clear between the device info and the ciphertext.
    bt_mac = bytes.fromhex("5448E68F80A5")
    with contextlib.redirect_stdout(io.StringIO()):
        p = bthome_example.encrypt_payload(
            data=bytes.fromhex("02CA0903BF13"), mac=bt_mac, uuid16=b"\xd2\xfc",
            sw_version=b"\x43", count_id=bytes.fromhex("00112233"),
            key=bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932"),
        )
    bthome_mac = p[2:3] + bt_mac[::-1] + p[3:]
    print("bthome_mac_included", bthome_mac.hex())
    from bthome_ble import BTHomeBluetoothDeviceData
    from habluetooth import BluetoothServiceInfoBleak

    info = BluetoothServiceInfoBleak(
        name="BTHome", address="C1:11:22:33:44:55", rssi=-60, manufacturer_data={},
        service_data={"0000fcd2-0000-1000-8000-00805f9b34fb": bthome_mac},
        service_uuids=[], source="local", device=None, advertisement=None,
        connectable=False, time=time.monotonic(), tx_power=None,
    )
    update = BTHomeBluetoothDeviceData(
        bindkey=bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    ).update(info)
    print("bthome-ble:", {k.key: v.native_value for k, v in update.entity_values.items()})

try:
    from habluetooth import BluetoothServiceInfoBleak
    from xiaomi_ble import XiaomiBluetoothDeviceData
except ImportError:
    print("xiaomi-ble not installed: MiBeacon vector not cross-checked")
else:
    info = BluetoothServiceInfoBleak(
        name="LYWSD03MMC", address="A4:C1:38:12:34:56", rssi=-60, manufacturer_data={},
        service_data={"0000fe95-0000-1000-8000-00805f9b34fb": mibeacon}, service_uuids=[],
        source="local", device=None, advertisement=None, connectable=False,
        time=time.monotonic(), tx_power=None,
    )
    update = XiaomiBluetoothDeviceData(bindkey=KEY).update(info)
    print("xiaomi-ble:", {k.key: v.native_value for k, v in update.entity_values.items()})
    info = BluetoothServiceInfoBleak(
        name="LYWSD03MMC", address="A4:C1:38:12:34:56", rssi=-60, manufacturer_data={},
        service_data={"0000fe95-0000-1000-8000-00805f9b34fb": mibeacon_mac}, service_uuids=[],
        source="local", device=None, advertisement=None, connectable=False,
        time=time.monotonic(), tx_power=None,
    )
    update = XiaomiBluetoothDeviceData(bindkey=KEY).update(info)
    print("xiaomi-ble (MAC field):", {k.key: v.native_value for k, v in update.entity_values.items()})
