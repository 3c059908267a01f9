//! Just enough protobuf to write Sparkplug B payloads (`proto/sparkplug`):
//! a payload's time and sequence number, and metrics by name, alias and
//! datatype (NBIRTH) or by alias alone (NDATA). Written by hand so the
//! simulator stays free of the pipeline's crates; a test decodes the result
//! with the transformer's decoder.

/// Sparkplug B datatypes used here (Sparkplug 3.0, 6.4.16).
pub const INT32: u32 = 3;
pub const INT64: u32 = 4;
pub const DOUBLE: u32 = 10;

/// A metric's value, in the field its datatype takes.
#[derive(Debug, Clone, Copy)]
pub enum Number {
    /// `int_value` (field 10), two's complement in 32 bits.
    Int32(i32),
    /// `long_value` (field 11).
    Int64(i64),
    /// `double_value` (field 13).
    Double(f64),
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Payload field 1, `timestamp` (ms since the epoch).
pub fn payload_time(out: &mut Vec<u8>, ms: u64) {
    out.push(0x08);
    varint(out, ms);
}

/// Payload field 3, `seq`.
pub fn seq(out: &mut Vec<u8>, seq: u64) {
    out.push(0x18);
    varint(out, seq);
}

/// Metric field 2, `alias`: what an NDATA metric starts with.
pub fn alias(out: &mut Vec<u8>, alias: u64) {
    out.push(0x10);
    varint(out, alias);
}

fn value(out: &mut Vec<u8>, number: Number) {
    match number {
        Number::Int32(v) => {
            out.push(0x50);
            varint(out, u64::from(v as u32));
        }
        Number::Int64(v) => {
            out.push(0x58);
            varint(out, v as u64);
        }
        Number::Double(v) => {
            out.push(0x69);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Payload field 2, one metric of `fields` (already encoded).
fn metric(out: &mut Vec<u8>, fields: &[u8]) {
    out.push(0x12);
    varint(out, fields.len() as u64);
    out.extend_from_slice(fields);
}

/// A metric by alias only (`key` from [`alias`]), as NDATA sends it:
/// written in place, no buffer.
pub fn data_metric(out: &mut Vec<u8>, key: &[u8], number: Number) {
    let value_len = match number {
        Number::Int32(v) => 1 + varint_len(u64::from(v as u32)),
        Number::Int64(v) => 1 + varint_len(v as u64),
        Number::Double(_) => 9,
    };
    out.push(0x12);
    varint(out, (key.len() + value_len) as u64);
    out.extend_from_slice(key);
    value(out, number);
}

fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

/// A metric with its name, datatype and (unless `u64::MAX`) alias, as an
/// NBIRTH declares it.
pub fn birth_metric(out: &mut Vec<u8>, name: &str, alias_id: u64, datatype: u32, number: Number) {
    let mut fields = Vec::with_capacity(name.len() + 24);
    fields.push(0x0a);
    varint(&mut fields, name.len() as u64);
    fields.extend_from_slice(name.as_bytes());
    if alias_id != u64::MAX {
        alias(&mut fields, alias_id);
    }
    fields.push(0x20);
    varint(&mut fields, u64::from(datatype));
    value(&mut fields, number);
    metric(out, &fields);
}
