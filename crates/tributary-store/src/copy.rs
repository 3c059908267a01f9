//! PostgreSQL's binary COPY format for a batch of [`Row`]s: the cheapest way
//! to get rows into the server (no text parsing, no per-row statements).
//!
//! Layout: a 19-byte header (`PGCOPY\n\xff\r\n\0`, flags, extension length),
//! then per row the field count (i16) and each field as its length (i32,
//! -1 for NULL) and bytes, then the trailer -1 (i16).

use crate::{Row, RowValue};

/// Fields per row, in the order of [`crate::sql::WRITE_COLUMNS`].
pub const FIELD_COUNT: i16 = 13;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Encodes rows as one complete binary COPY stream.
pub fn encode<'a>(rows: impl IntoIterator<Item = &'a Row, IntoIter: ExactSizeIterator>) -> Vec<u8> {
    let rows = rows.into_iter();
    let mut buf = Vec::with_capacity(32 + rows.len() * 160);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for row in rows {
        buf.extend_from_slice(&FIELD_COUNT.to_be_bytes());
        text(&mut buf, Some(&row.device_id));
        text(&mut buf, Some(&row.metric));
        timestamp(&mut buf, row.time_us);
        let (num, txt, boolean) = match &row.value {
            RowValue::Number(n) => (Some(*n), None, None),
            RowValue::Text(t) => (None, Some(t.as_str()), None),
            RowValue::Bool(b) => (None, None, Some(*b)),
        };
        float(&mut buf, num);
        text(&mut buf, txt);
        match boolean {
            Some(b) => field(&mut buf, &[u8::from(b)]),
            None => null(&mut buf),
        }
        text(&mut buf, row.unit.as_deref());
        float(&mut buf, row.latitude);
        float(&mut buf, row.longitude);
        match &row.attributes_json {
            // jsonb's binary form: a version byte (1), then the JSON text.
            Some(json) => {
                buf.extend_from_slice(&(json.len() as i32 + 1).to_be_bytes());
                buf.push(1);
                buf.extend_from_slice(json.as_bytes());
            }
            None => null(&mut buf),
        }
        text(&mut buf, Some(&row.source));
        text(&mut buf, Some(&row.raw_msg_id));
        timestamp(&mut buf, row.ingested_at_us);
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn null(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(-1i32).to_be_bytes());
}

fn text(buf: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(s) => field(buf, s.as_bytes()),
        None => null(buf),
    }
}

fn float(buf: &mut Vec<u8>, value: Option<f64>) {
    match value {
        Some(v) => field(buf, &v.to_be_bytes()),
        None => null(buf),
    }
}

fn timestamp(buf: &mut Vec<u8>, unix_us: i64) {
    field(buf, &(unix_us - PG_EPOCH_OFFSET_US).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_batch_is_header_and_trailer() {
        let bytes = encode(&[]);
        assert_eq!(&bytes[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(bytes.len(), 19 + 2);
        assert_eq!(&bytes[19..], &[0xff, 0xff]);
    }

    #[test]
    fn encodes_a_row_field_by_field() {
        let row = Row {
            device_id: "d".into(),
            metric: "m".into(),
            time_us: PG_EPOCH_OFFSET_US + 1,
            value: RowValue::Bool(true),
            unit: None,
            latitude: Some(1.5),
            longitude: None,
            attributes_json: Some("{}".into()),
            source: "s".into(),
            raw_msg_id: "r".into(),
            ingested_at_us: PG_EPOCH_OFFSET_US,
        };
        let bytes = encode(std::slice::from_ref(&row));
        let mut expected = Vec::new();
        expected.extend_from_slice(&13i16.to_be_bytes());
        for part in [
            &[0, 0, 0, 1, b'd'][..],
            &[0, 0, 0, 1, b'm'],
            &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1], // one µs after 2000-01-01
            &[0xff; 4],                            // value_num NULL
            &[0xff; 4],                            // value_text NULL
            &[0, 0, 0, 1, 1],                      // value_bool true
            &[0xff; 4],                            // unit NULL
        ] {
            expected.extend_from_slice(part);
        }
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&1.5f64.to_be_bytes());
        expected.extend_from_slice(&[0xff; 4]); // longitude NULL
        expected.extend_from_slice(&[0, 0, 0, 3, 1, b'{', b'}']);
        expected.extend_from_slice(&[0, 0, 0, 1, b's', 0, 0, 0, 1, b'r']);
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[19..bytes.len() - 2], &expected[..]);
    }
}
