#!/usr/bin/env python3
"""carehub reference cloud consumer with end-to-end receipts (docs/mqtt.md).

Subscribes to every gateway's readings topic, stores each reading once in its
own SQLite database (keyed by the reading id: a repeat only counts another
delivery), commits, and only then publishes a receipt naming the ids on
carehub/v1/{site}/{gateway}/receipts. A gateway with uplink.receipts = true
keeps each reading until its receipt arrives and sends it again when none
comes in time, so a consumer that dies between storing and receipting loses
nothing: it gets the readings again and receipts them then.

Reads carehub's JSON batches (schema carehub.readings/1) and FHIR transaction
bundles, plain or raw DEFLATE (MQTT 5 content type ending in ";deflate").

    receipt_consumer.py --host H --port P --ca CA --cert C --key K --db FILE

Needs paho-mqtt 2 (pip install "paho-mqtt>=2,<3"). Prints "ready" once its
subscription is granted. --die-before-receipt is for tests: after storing the
first message it kills itself with SIGKILL before sending that receipt.
"""

import argparse
import json
import os
import signal
import sqlite3
import ssl
import sys
import time
import zlib

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

RECEIPT_SCHEMA = "carehub.receipt/1"
READINGS_SCHEMA = "carehub.readings/1"
UUID_URI = "urn:ietf:rfc:3986"


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        """CREATE TABLE IF NOT EXISTS readings (
               id TEXT PRIMARY KEY,
               gateway TEXT NOT NULL,
               body TEXT NOT NULL,
               deliveries INTEGER NOT NULL DEFAULT 1,
               stored_at REAL NOT NULL)"""
    )
    return db


def readings_of(doc):
    """(id, body) of each reading in a JSON batch or a FHIR bundle."""
    if doc.get("schema") == READINGS_SCHEMA:
        return [(r["id"], r) for r in doc.get("readings", [])]
    if doc.get("resourceType") == "Bundle":
        out = []
        for entry in doc.get("entry", []):
            res = entry.get("resource", {})
            if res.get("resourceType") != "Observation":
                continue
            for ident in res.get("identifier", []):
                if ident.get("system") == UUID_URI:
                    out.append((ident["value"].removeprefix("urn:uuid:"), res))
        return out
    raise ValueError("neither a carehub readings batch nor a FHIR bundle")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=8883)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--client-id", default="carehub-consumer")
    ap.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    ap.add_argument("--topic", default="carehub/v1/+/+/readings")
    ap.add_argument("--die-before-receipt", action="store_true")
    args = ap.parse_args()

    db = open_db(args.db)
    v5 = args.protocol == "5"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key,
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def on_connect(c, _userdata, _flags, reason_code, _props):
        if reason_code.is_failure:
            print(f"connect refused: {reason_code}", file=sys.stderr, flush=True)
            return
        c.subscribe(args.topic, qos=1)

    def on_subscribe(_c, _userdata, _mid, reason_codes, _props):
        if all(not rc.is_failure for rc in reason_codes):
            print("ready", flush=True)
        else:
            print(f"subscription refused: {reason_codes}", file=sys.stderr, flush=True)

    def on_message(c, _userdata, msg):
        body = msg.payload
        ct = getattr(msg.properties, "ContentType", None) if msg.properties else None
        try:
            if ct and ct.endswith(";deflate"):
                body = zlib.decompress(body, -15)  # raw DEFLATE
            readings = readings_of(json.loads(body))
        except (ValueError, KeyError, zlib.error) as e:
            print(f"{msg.topic}: not readable, no receipt: {e}", file=sys.stderr, flush=True)
            return
        levels = msg.topic.split("/")  # carehub/v1/{site}/{gateway}/readings
        gateway = levels[3]
        now = time.time()
        # One transaction: stored (or counted again) before any receipt.
        db.execute("BEGIN IMMEDIATE")
        for rid, r in readings:
            db.execute(
                """INSERT INTO readings (id, gateway, body, stored_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET deliveries = deliveries + 1""",
                (rid, gateway, json.dumps(r, sort_keys=True), now),
            )
        db.execute("COMMIT")
        if args.die_before_receipt:
            os.kill(os.getpid(), signal.SIGKILL)
        receipt = json.dumps({"schema": RECEIPT_SCHEMA, "ids": [rid for rid, _ in readings]})
        topic = "/".join(levels[:4] + ["receipts"])
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
        c.publish(topic, receipt, qos=1, properties=props)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    client.connect(args.host, args.port, keepalive=30)
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.loop_forever(retry_first_connection=True)


if __name__ == "__main__":
    main()
