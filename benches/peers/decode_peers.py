#!/usr/bin/env python3
"""Times the Python decoders users run today on the payloads of benches/decode.rs.

Peers: bthome-ble (PyPI; what Home Assistant uses for BTHome) and TheengsDecoder
(PyPI; C++ core with a Python binding). Prints one line per (peer, payload):
median ns per advertisement over 7 runs. Run through benches/peers/run.sh, which
sets up the venv and also runs the criterion benchmark.
"""
import json
import statistics
import sys
import time

from Cryptodome.Cipher import AES
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak
from TheengsDecoder import decodeBLE

MAC = "54:48:E6:8F:80:A5"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
# Battery 100 %, 25.06 °C, 50.55 %; plain frames add packet id 0x00 (cycled 0..255)
# so that they match the pvvx layout TheengsDecoder knows (name "ATC...").
PLAIN = bytes.fromhex("40016402ca0903bf13")
PLAIN_WITH_ID = [bytes.fromhex(f"4000{pid:02x}016402ca0903bf13") for pid in range(256)]
RUUVI = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
N = 4096
RUNS = 7


def encrypt_bthome(plain: bytes, counter: int) -> bytes:
    """BTHome v2 encryption (bthome.io/encryption), as a sensor does it."""
    info = plain[0] | 1
    c = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(MAC.replace(":", "")) + b"\xd2\xfc" + bytes([info]) + c
    cipher = AES.new(KEY, AES.MODE_CCM, nonce=nonce, mac_len=4)
    ct, tag = cipher.encrypt_and_digest(plain[1:])
    return bytes([info]) + ct + c + tag


def service_info(data: bytes) -> BluetoothServiceInfoBleak:
    # What Home Assistant hands bthome-ble for each advertisement.
    return BluetoothServiceInfoBleak(
        name="ATC_8F80A5", address=MAC, rssi=-60, manufacturer_data={},
        service_data={BTHOME_UUID: data}, service_uuids=[BTHOME_UUID], source="local",
        device=None, advertisement=None, connectable=False, time=time.monotonic(),
        tx_power=None,
    )


def median_ns(fn, inputs) -> float:
    runs = []
    for _ in range(RUNS):
        start = time.perf_counter_ns()
        fn(inputs)
        runs.append((time.perf_counter_ns() - start) / len(inputs))
    return statistics.median(runs)


def bthome_plain(infos):
    d = BTHomeBluetoothDeviceData()
    for si in infos:
        r = d.update(si)
    assert r.entity_values, "bthome-ble decoded nothing"


def bthome_encrypted(infos):
    # A fresh device per run, so that rising counters are accepted again.
    d = BTHomeBluetoothDeviceData(bindkey=KEY)
    for si in infos:
        r = d.update(si)
    assert r.entity_values, "bthome-ble decoded nothing"


def theengs(messages):
    for m in messages:
        r = decodeBLE(m)
    assert r and "tempc" in r, r


def main() -> None:
    plain_infos = [service_info(PLAIN_WITH_ID[i % 256]) for i in range(N)]
    enc_infos = [service_info(encrypt_bthome(PLAIN, c)) for c in range(1, N + 1)]
    theengs_bthome = [
        json.dumps({"id": MAC, "name": "ATC_8F80A5", "servicedata": PLAIN_WITH_ID[i % 256].hex(), "servicedatauuid": "0xfcd2"})
        for i in range(N)
    ]
    theengs_ruuvi = [json.dumps({"id": MAC, "manufacturerdata": "9904" + RUUVI.hex()})] * N
    results = [
        ("bthome-ble", "bthome_v2_plain", median_ns(bthome_plain, plain_infos)),
        ("bthome-ble", "bthome_v2_encrypted", median_ns(bthome_encrypted, enc_infos)),
        ("TheengsDecoder", "bthome_v2_plain", median_ns(theengs, theengs_bthome)),
        ("TheengsDecoder", "ruuvi_v5", median_ns(theengs, theengs_ruuvi)),
    ]
    for peer, payload, ns in results:
        print(f"{peer}\t{payload}\t{ns:.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
