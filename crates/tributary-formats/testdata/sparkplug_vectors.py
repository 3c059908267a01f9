#!/usr/bin/env python3
"""Writes sparkplug_vectors.txt: Sparkplug B messages encoded by an
implementation independent of ours (the Eclipse Tahu Python helpers and
generated protobuf code, as shipped in PyPI's mqtt-spb-wrapper), one per
line as `<topic> <hex payload>`. Run once; the output is committed.

    pip install --no-deps mqtt-spb-wrapper==2.1.2 && pip install protobuf
    python3 sparkplug_vectors.py > sparkplug_vectors.txt
"""
import importlib
import site
import sys
import types

# Import Tahu's modules without the wrapper's MQTT client (and its paho import).
package = types.ModuleType("mqtt_spb_wrapper")
package.__path__ = [site.getsitepackages()[0] + "/mqtt_spb_wrapper"]
sys.modules["mqtt_spb_wrapper"] = package
spb = importlib.import_module("mqtt_spb_wrapper.spb_protobuf.sparkplug_b")
T = spb.MetricDataType

T0 = 1506775817765  # ms: 2017-09-30T12:50:17.765Z


def emit(topic, payload):
    print(topic, payload.SerializeToString().hex())


# NBIRTH: every scalar datatype, with aliases, one null.
birth = spb.Payload()
birth.timestamp = T0
birth.seq = 0
spb.addMetric(birth, "bdSeq", None, T.Int64, 0, T0)
spb.addMetric(birth, "Temperature", 1, T.Double, 21.5, T0)
spb.addMetric(birth, "Pressure", 2, T.Int32, -5, T0)
spb.addMetric(birth, "Running", 3, T.Boolean, True, T0)
spb.addMetric(birth, "Label", 4, T.String, "line A", T0)
spb.addMetric(birth, "Count8", 5, T.Int8, -3, T0)
spb.addMetric(birth, "Count16", 6, T.Int16, -300, T0)
spb.addMetric(birth, "Big", 7, T.UInt64, 2**40, T0)
spb.addMetric(birth, "Small", 8, T.UInt8, 200, T0)
spb.addMetric(birth, "Ratio", 9, T.Float, 0.25, T0)
spb.addMetric(birth, "When", 10, T.DateTime, T0 - 1000, T0)
spb.addMetric(birth, "Blob", 11, T.Bytes, b"hi \n", T0)
spb.addMetric(birth, "Notes", 12, T.Text, "all good", T0)
spb.addMetric(birth, "Id", 13, T.UUID, "123e4567-e89b-12d3-a456-426614174000", T0)
spb.addMetric(birth, "Total", 14, T.Int64, -(2**40), T0)
spb.addNullMetric(birth, "Gone", 15, T.Float)
emit("spBv1.0/plant/NBIRTH/edge-1", birth)

# NDATA by alias only, one second later.
data = spb.Payload()
data.timestamp = T0 + 1000
data.seq = 1
spb.addMetric(data, None, 1, T.Double, 22.0, T0 + 1000)
spb.addMetric(data, None, 2, T.Int32, -7, T0 + 1000)
spb.addMetric(data, None, 5, T.Int8, 127, T0 + 1000)
emit("spBv1.0/plant/NDATA/edge-1", data)

# DBIRTH and DDATA of a device of that node; the DDATA value is historical.
dbirth = spb.Payload()
dbirth.timestamp = T0 + 2000
dbirth.seq = 2
spb.addMetric(dbirth, "Speed", 20, T.Float, 1450.5, T0 + 2000)
spb.addMetric(dbirth, "Fault", 21, T.Boolean, False, T0 + 2000)
emit("spBv1.0/plant/DBIRTH/edge-1/pump-3", dbirth)

ddata = spb.Payload()
ddata.timestamp = T0 + 3000
ddata.seq = 3
spb.addHistoricalMetric(ddata, None, 20, T.Float, 1500.25)
ddata.metrics[0].timestamp = T0 + 2500
emit("spBv1.0/plant/DDATA/edge-1/pump-3", ddata)

# The node dies.
death = spb.Payload()
death.timestamp = T0 + 4000
spb.addMetric(death, "bdSeq", None, T.Int64, 0, T0 + 4000)
emit("spBv1.0/plant/NDEATH/edge-1", death)
