#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/.

Seeds are the published and constructed vectors of the decode tests, each with the
selector bytes its target expects (see src/decode/fuzzing.rs), plus every
truncation of each. Re-run after adding vectors; commit the result.
"""
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))
h = bytes.fromhex

bthome = [
    "4002ca0903bf13", "40016104138a01", "440007 3a02".replace(" ", ""), "4402c40902 30f8".replace(" ", ""),
    "443a013a803c01033c0205530548656c6c6f54030102abf00100f100010204f2000106",
]
bthome_enc = ["41a47266c95f730011223378237214"]
ruuvi = [
    "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F",
    "057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F",
    "058001000000008001800180010000000000CBB8334C884F",
    "058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF",
]
atc = ["a4c13812345600ea2d570b8609", "56341238c1a45608d711860b570900"]
atc_enc = ["07c339bc87445b2f2b0295"]
mibeacon = [
    "5020aa0137dfaa33342d580d100404016602", "5020aa018ddfaa33342d580610026602",
    "5020aa0155ffeeddccbbaa0a100151", "5020aa018ddfaa33342d580410021201",
]
mibeacon_enc = ["48585b052af1a09786a9f85e010000de1cb8c2"]
# (name index, company, data): see NAMES and COMPANIES in fuzzing.rs.
govee = [
    (3, 0xEC88, "000418ee6400"), (3, 0xEC88, "00811f096400"), (0, 0x0001, "010103590e64"),
    (4, 0xEC88, "00c408231d6402"), (5, 0x8801, "ec000101ee07581641"),
    (1, 0x0A66, "03150010805908"), (2, 0xFB76, "00000010805908"),
]
gatt = [  # (index into gatt::CHARACTERISTICS, value)
    (0, "00 48"), (0, "19 2c01 1000 0004 0002"), (1, "06 6d0100ff ea070b17081e05 03"),
    (2, "00 6d0100ff"), (3, "1e 7800 5000 5d00 ea070b17081e05 4600 02 0f00"),
    (4, "04 7800 ff07 ff07 4600"), (5, "0f 6100 4600 ea070b17081e05 8000 200000 3400"),
    (6, "1f 6100 4600 6000 4700 6200 4500 2000 020000 3400"),
    (7, "0e b036 ea070b17081e05 01 e500 d606"), (8, "1b 0700 ea070b17081e05 1e00 5fb0 11 0100"),
    (9, "58"),
]
gatt = [(i, v.replace(" ", "")) for i, v in gatt]

corpus = {t: [] for t in ["dispatch", "gatt", "bthome", "ruuvi", "xiaomi", "govee_inkbird"]}
for v in bthome:
    corpus["bthome"].append(b"\x00" + h(v)); corpus["dispatch"].append(b"\x00\x00" + h(v))
for v in bthome_enc:
    corpus["bthome"].append(b"\x01" + h(v)); corpus["dispatch"].append(b"\x80\x00" + h(v))
for v in ruuvi:
    corpus["ruuvi"].append(h(v)); corpus["dispatch"].append(b"\x01\x00" + h(v))
for v in atc:
    corpus["xiaomi"].append(b"\x00" + h(v)); corpus["dispatch"].append(b"\x04\x00" + h(v))
for v in atc_enc:
    corpus["xiaomi"].append(b"\x01" + h(v)); corpus["dispatch"].append(b"\x84\x00" + h(v))
for v in mibeacon:
    corpus["xiaomi"].append(b"\x02" + h(v)); corpus["dispatch"].append(b"\x08\x00" + h(v))
for v in mibeacon_enc:
    corpus["xiaomi"].append(b"\x03" + h(v)); corpus["dispatch"].append(b"\x88\x00" + h(v))
companies = [0x0499, 0xEC88, 0x0001, 0x8801, 0x0A66]
for name, company, v in govee:
    corpus["govee_inkbird"].append(bytes([name]) + company.to_bytes(2, "little") + h(v))
    if company in companies:
        sel = 1 | (companies.index(company) << 2)
        corpus["dispatch"].append(bytes([sel, name]) + h(v))
for i, v in gatt:
    corpus["gatt"].append(bytes([i]) + h(v))
    corpus["dispatch"].append(bytes([2 | (i << 2), 0]) + h(v))

for target, seeds in corpus.items():
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    out = set()
    for s in seeds:
        for n in range(1, len(s) + 1):  # every truncation, the whole seed last
            out.add(s[:n])
    for s in out:
        with open(os.path.join(d, hashlib.sha1(s).hexdigest()), "wb") as f:
            f.write(s)
    print(target, len(out))
