#!/usr/bin/env python3
"""Writes senml_cbor_vectors.txt: SenML CBOR packs (RFC 8428, section 6)
encoded by an implementation independent of ours (Python's cbor2), each
with the JSON pack it encodes. Run once; the output is committed.

    pip install cbor2 && python3 senml_cbor_vectors.py > senml_cbor_vectors.txt
"""
import json

import cbor2

# RFC 8428, table 6: CBOR labels.
LABELS = {"bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6,
          "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8}

PACKS = [
    # RFC 8428, 5.1.2
    [{"bn": "urn:dev:ow:10e2073a01080063:", "n": "voltage", "u": "V", "v": 120.1},
     {"n": "current", "u": "A", "v": 1.2}],
    # RFC 8428, 5.1.3
    [{"bn": "urn:dev:ow:10e2073a0108006:", "bt": 1.276020076001e+09, "bu": "A", "bver": 5,
      "n": "voltage", "u": "V", "v": 120.1},
     {"n": "current", "t": -5, "v": 1.2},
     {"n": "current", "t": -4, "v": 1.3},
     {"n": "current", "v": 1.7}],
    # RFC 8428, 5.1.6, vd as bytes (CBOR's form of data values)
    [{"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "u": "Cel", "v": 23.1},
     {"n": "label", "vs": "Machine Room"},
     {"n": "open", "vb": False},
     {"n": "nfc-reader", "vd": b"hi \n"}],
]


def to_cbor(pack):
    return cbor2.dumps([{LABELS[k]: v for k, v in record.items()} for record in pack])


def to_json(pack):
    import base64
    def plain(v):
        return base64.urlsafe_b64encode(v).decode().rstrip("=") if isinstance(v, bytes) else v
    return json.dumps([{k: plain(v) for k, v in r.items()} for r in pack], separators=(",", ":"))


for pack in PACKS:
    print(to_cbor(pack).hex(), to_json(pack))
