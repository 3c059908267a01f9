//! Stream names, subject builders and the subject-token sanitiser.

/// Raw payloads as received (`RawEnvelope`).
pub const RAW_STREAM: &str = "TELEMETRY_RAW";
/// Subjects of [`RAW_STREAM`].
pub const RAW_SUBJECTS: &str = "raw.>";
/// Decoded metric events, one `MetricBatch` per raw message and device.
pub const METRICS_STREAM: &str = "TELEMETRY_METRICS";
/// Subjects of [`METRICS_STREAM`].
pub const METRICS_SUBJECTS: &str = "metrics.>";
/// Dead letters: input that can never succeed, with its reason in headers.
pub const DLQ_STREAM: &str = "TELEMETRY_DLQ";
/// Subjects of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "dlq.>";
/// Alert transitions (`AlertEvent`), one message each: created and written
/// by the alerter, read by the query API.
pub const ALERTS_STREAM: &str = "TELEMETRY_ALERTS";
/// Subjects of [`ALERTS_STREAM`].
pub const ALERTS_SUBJECTS: &str = "alerts.>";

/// Longest token [`sanitize_token`] returns, in bytes.
pub const MAX_TOKEN_LEN: usize = 128;
/// Longest subject the subject builders return, in bytes. nats-server refuses
/// a control line over 4 KiB by closing the whole connection (which then
/// reconnects and fails again), so every subject stays far below it.
pub const MAX_SUBJECT_LEN: usize = 512;

/// Marks a token whose tail was replaced by a digest. A token that was not
/// cut never contains it: every `~` it holds is followed by two hex digits.
const DIGEST_MARK: &str = "~~";
/// `~~` plus 32 hex digits.
const DIGEST_TOKEN_LEN: usize = DIGEST_MARK.len() + 32;

/// Turns any string into one safe NATS subject token of at most
/// [`MAX_TOKEN_LEN`] bytes.
///
/// ASCII letters, digits, `-` and `_` pass through unchanged; every other
/// byte of the UTF-8 text (dots, wildcards `*` and `>`, spaces, `$`,
/// non-printables, non-ASCII, and `~` itself) becomes `~` followed by two
/// upper-case hex digits. The empty string becomes a lone `~`, which no
/// non-empty input can produce because every escape has two hex digits after
/// its `~`. When the escaped text is longer than [`MAX_TOKEN_LEN`], its head
/// is kept (never cutting an escape in two) and the rest is replaced by `~~`
/// and the first 128 bits of the SHA-256 of the whole input, in hex.
///
/// So the result is never empty, never a wildcard, never contains a dot and
/// never exceeds [`MAX_TOKEN_LEN`] bytes. Different inputs give different
/// tokens: inputs that fit are mapped injectively and never produce `~~`;
/// cut inputs always end in `~~` and a digest, and two of them share a token
/// only if their 128-bit digests collide. The original value always travels
/// in the message itself.
pub fn sanitize_token(input: &str) -> String {
    if input.is_empty() {
        return "~".to_owned();
    }
    let mut out = String::with_capacity(input.len().min(MAX_TOKEN_LEN));
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('~');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
        if out.len() > MAX_TOKEN_LEN {
            return cut_with_digest(out, MAX_TOKEN_LEN, input.as_bytes());
        }
    }
    out
}

/// Cuts an escaped token so that it and a digest token fit in `limit` bytes,
/// without splitting an escape, and appends `~~<digest of whole>`.
fn cut_with_digest(mut escaped: String, limit: usize, whole: &[u8]) -> String {
    let mut keep = limit - DIGEST_TOKEN_LEN;
    // An escape is `~XY`: if the cut falls inside one, cut before its `~`.
    let bytes = escaped.as_bytes();
    if let Some(tilde) = bytes[keep.saturating_sub(2)..keep].iter().position(|&b| b == b'~') {
        keep = keep - 2 + tilde;
    }
    escaped.truncate(keep);
    escaped.push_str(DIGEST_MARK);
    escaped.push_str(&crate::ids::digest_hex128(whole));
    escaped
}

/// `raw.http.<source>`.
pub fn raw_http_subject(source: &str) -> String {
    format!("raw.http.{}", sanitize_token(source))
}

/// `raw.influx.<bucket>`: a write to the producer's InfluxDB endpoints
/// (the v2 bucket, or the v1 database).
pub fn raw_influx_subject(bucket: &str) -> String {
    format!("raw.influx.{}", sanitize_token(bucket))
}

/// `raw.pull.<feed>`: a record of an upstream feed the producer pulls.
pub fn raw_pull_subject(feed: &str) -> String {
    format!("raw.pull.{}", sanitize_token(feed))
}

/// `raw.mqtt.<topic levels>`: each `/`-separated level of the MQTT topic
/// becomes one sanitised token, so NATS wildcards can select by topic level.
/// A topic whose subject would exceed [`MAX_SUBJECT_LEN`] keeps the levels
/// that fit and ends in one `~~<digest of the whole topic>` token.
pub fn raw_mqtt_subject(topic: &str) -> String {
    const PREFIX: &str = "raw.mqtt";
    let mut subject = String::from(PREFIX);
    for level in topic.split('/') {
        let token = sanitize_token(level);
        if subject.len() + 1 + token.len() > MAX_SUBJECT_LEN - (1 + DIGEST_TOKEN_LEN) {
            return cut_subject(subject, topic);
        }
        subject.push('.');
        subject.push_str(&token);
    }
    subject
}

/// Ends an over-long subject with one digest token standing for the whole
/// topic (the subject's head stays selectable by wildcards).
fn cut_subject(mut head: String, topic: &str) -> String {
    head.push('.');
    head.push_str(DIGEST_MARK);
    head.push_str(&crate::ids::digest_hex128(topic.as_bytes()));
    head
}

/// `metrics.<device>`: every `MetricBatch` of one device, as published.
/// [`METRICS_STREAM`] stores it as `metrics.<device>.<partition>`
/// ([`METRICS_PARTITION_TRANSFORM`]).
pub fn metric_subject(device_id: &str) -> String {
    format!("metrics.{}", sanitize_token(device_id))
}

/// How many partitions [`METRICS_STREAM`] splits devices into: a reader
/// that keeps per-device state (the alerter) gives each replica some of
/// them. Fixed: changing it moves devices between partitions.
pub const METRICS_PARTITIONS: u32 = 16;

/// The metrics stream's subject transform, source and destination: a
/// message published on `metrics.<device>` is stored on
/// `metrics.<device>.<partition>`, the partition nats-server's
/// `partition()` mapping function computes from the device token
/// ([`metric_partition`] computes the same).
pub const METRICS_PARTITION_TRANSFORM: (&str, &str) = ("metrics.*", "metrics.{{wildcard(1)}}.{{partition(16,1)}}");

/// `metrics.<device>.<partition>`: the subject [`METRICS_STREAM`] stores a
/// device's batches on (for reading them back by subject).
pub fn metric_stored_subject(device_id: &str) -> String {
    let token = sanitize_token(device_id);
    let partition = token_partition(&token);
    format!("metrics.{token}.{partition}")
}

/// The subjects of one partition of the metrics stream, as stored.
pub fn metric_partition_subjects(partition: u32) -> String {
    format!("metrics.*.{partition}")
}

/// The partition nats-server stores a device's batches in: FNV-1a (32 bit)
/// of its subject token, modulo [`METRICS_PARTITIONS`] (nats-server's
/// `getHashPartition`).
pub fn metric_partition(device_id: &str) -> u32 {
    token_partition(&sanitize_token(device_id))
}

/// [`metric_partition`] of a device's subject token (already sanitised).
pub fn token_partition(token: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in token.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % METRICS_PARTITIONS
}

/// `alerts.<rule>.<device>`: every transition of one rule for one device
/// (all its metrics). A rule's name is a subject token as written (the
/// alerter's rules file refuses any other); the device goes through
/// [`sanitize_token`].
pub fn alert_subject(rule: &str, device: &str) -> String {
    format!("alerts.{}.{}", sanitize_token(rule), sanitize_token(device))
}

/// `dlq.<stage>.<reason>`.
pub fn dlq_subject(stage: &str, reason: &str) -> String {
    format!("dlq.{}.{}", sanitize_token(stage), sanitize_token(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_nats_servers_fnv1a_and_the_transform_agrees() {
        // FNV-1a 32 of "a" and of "foobar" (the algorithm's published test vectors).
        assert_eq!(token_partition("a"), 0xe40c_292c % METRICS_PARTITIONS);
        assert_eq!(token_partition("foobar"), 0xbf9c_f968 % METRICS_PARTITIONS);
        assert_eq!(metric_partition("plant.7/pump"), token_partition("plant~2E7~2Fpump"));
        let wanted = format!("{{{{partition({METRICS_PARTITIONS},1)}}}}");
        assert!(METRICS_PARTITION_TRANSFORM.1.contains(&wanted), "{wanted}");
        assert_eq!(metric_partition_subjects(3), "metrics.*.3");
        assert_eq!(
            metric_stored_subject("plant.7/pump"),
            format!("metrics.plant~2E7~2Fpump.{}", metric_partition("plant.7/pump"))
        );
        let mut seen = [false; METRICS_PARTITIONS as usize];
        for n in 0..1000 {
            seen[metric_partition(&format!("device-{n}")) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "1,000 devices fall in every partition");
    }
    use std::collections::HashMap;

    fn check(input: &str, expected: &str) {
        assert_eq!(sanitize_token(input), expected, "input {input:?}");
    }

    #[test]
    fn sanitises_tokens() {
        check("APFluid", "APFluid");
        check("594d186e51b3bc4eb0abafd9", "594d186e51b3bc4eb0abafd9");
        check("a-b_c", "a-b_c");
        check("", "~");
        check("a.b", "a~2Eb");
        check("*", "~2A");
        check(">", "~3E");
        check("a b", "a~20b");
        check("~", "~7E");
        check("\t", "~09");
        check("\u{7f}", "~7F");
        check("$SYS", "~24SYS");
        check("é", "~C3~A9");
    }

    #[test]
    fn tokens_are_never_empty_wildcards_or_dotted() {
        for input in ["", ".", "..", "*", ">", " ", "a.*.>", "\0", "\r\n"] {
            let token = sanitize_token(input);
            assert!(!token.is_empty(), "{input:?}");
            assert!(token != "*" && token != ">", "{input:?}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~'),
                "{input:?} -> {token:?}"
            );
        }
    }

    #[test]
    fn different_inputs_never_share_a_token() {
        // Inputs chosen to collide under naive schemes: escapes that look like
        // other escapes, the escape char itself, empty vs. tilde.
        let inputs = [
            "", "~", "~7E", "~~", ".", "~2E", "a.b", "a~2Eb", "a_b", "a-b", "a b", "a/b", "a%2Eb", "*", ">", "~2A",
            "~3E", "A", "a", "é", "~C3~A9", "\u{0}", "~00",
        ];
        let mut seen: HashMap<String, &str> = HashMap::new();
        for input in inputs {
            if let Some(previous) = seen.insert(sanitize_token(input), input) {
                panic!("{previous:?} and {input:?} map to the same token");
            }
        }
        // And exhaustively over every string of up to two bytes drawn from an
        // alphabet of specials and their escape spellings.
        let alphabet = ["", "~", "7", "E", ".", "2", "a", "*", " "];
        let mut seen: HashMap<String, String> = HashMap::new();
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let input = format!("{a}{b}{c}");
                    if let Some(previous) = seen.insert(sanitize_token(&input), input.clone()) {
                        assert_eq!(previous, input, "collision");
                    }
                }
            }
        }
    }

    #[test]
    fn builds_subjects() {
        assert_eq!(raw_http_subject("plant 1"), "raw.http.plant~201");
        assert_eq!(raw_mqtt_subject("site/a.b/+/#"), "raw.mqtt.site.a~2Eb.~2B.~23");
        assert_eq!(raw_mqtt_subject("/leading"), "raw.mqtt.~.leading");
        assert_eq!(
            metric_subject("594d186e51b3bc4eb0abafd9"),
            "metrics.594d186e51b3bc4eb0abafd9"
        );
        assert_eq!(metric_subject("plant.7/pump"), "metrics.plant~2E7~2Fpump");
        assert_eq!(dlq_subject("transformer", "not_json"), "dlq.transformer.not_json");
        assert_eq!(alert_subject("boiler-hot", "boiler-1"), "alerts.boiler-hot.boiler-1");
        assert_eq!(
            alert_subject("boiler-hot", "plant.7/boiler"),
            "alerts.boiler-hot.plant~2E7~2Fboiler"
        );
        assert_eq!(alert_subject("boiler-hot", ""), "alerts.boiler-hot.~");
        assert_eq!(alert_subject("boiler-hot", "*"), "alerts.boiler-hot.~2A");
    }

    /// A token of exactly `n` bytes that needs no escaping.
    fn plain(n: usize) -> String {
        "a".repeat(n)
    }

    #[test]
    fn long_tokens_are_cut_and_end_in_a_digest() {
        // Up to the bound nothing changes.
        check(&plain(MAX_TOKEN_LEN), &plain(MAX_TOKEN_LEN));
        let cut = sanitize_token(&plain(MAX_TOKEN_LEN + 1));
        assert_eq!(cut.len(), MAX_TOKEN_LEN);
        assert!(cut.starts_with(&plain(MAX_TOKEN_LEN - DIGEST_TOKEN_LEN)), "{cut}");
        assert_eq!(cut.matches(DIGEST_MARK).count(), 1, "{cut}");
        // Inputs that differ only past the cut still differ.
        assert_ne!(
            sanitize_token(&format!("{}x", plain(500))),
            sanitize_token(&format!("{}y", plain(500)))
        );
        // The cases that once broke the pipeline: 4,000 characters, 1,400
        // dots, 340 emoji, and a 60,000-character topic level.
        for input in [plain(4_000), ".".repeat(1_400), "\u{1F600}".repeat(340), plain(60_000)] {
            let token = sanitize_token(&input);
            assert!(token.len() <= MAX_TOKEN_LEN, "{} bytes", token.len());
            assert!(token.contains(DIGEST_MARK));
            assert!(!token.contains('.'));
            assert_well_formed(&token);
        }
    }

    /// Every `~` of the token is a whole escape or the digest mark.
    fn assert_well_formed(token: &str) {
        let (head, digest) = token.split_once(DIGEST_MARK).unwrap_or((token, ""));
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        let bytes = head.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'~' && head != "~" {
                assert!(
                    i + 2 < bytes.len() && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit(),
                    "a split escape at {i}: {token}"
                );
            }
        }
    }

    #[test]
    fn a_cut_never_splits_an_escape() {
        // Shift an escape across the cut position one byte at a time.
        for pad in 0..6 {
            let input = format!(
                "{}{}",
                plain(MAX_TOKEN_LEN - DIGEST_TOKEN_LEN - 3 + pad),
                ".".repeat(40)
            );
            let token = sanitize_token(&input);
            assert!(token.len() <= MAX_TOKEN_LEN);
            assert_well_formed(&token);
        }
    }

    #[test]
    fn cut_tokens_never_meet_uncut_ones() {
        // Every uncut token is free of `~~`; every cut one has it.
        let mut seen: HashMap<String, String> = HashMap::new();
        let pieces = ["", "~", "~~", ".", "a", "~7E"];
        for n in [
            MAX_TOKEN_LEN - 3,
            MAX_TOKEN_LEN - 2,
            MAX_TOKEN_LEN - 1,
            MAX_TOKEN_LEN,
            MAX_TOKEN_LEN + 1,
        ] {
            for a in pieces {
                for b in pieces {
                    let input = format!("{a}{}{b}", plain(n.saturating_sub(a.len() + b.len())));
                    let token = sanitize_token(&input);
                    assert!(token.len() <= MAX_TOKEN_LEN);
                    assert_eq!(
                        token.contains(DIGEST_MARK),
                        escaped_len(&input) > MAX_TOKEN_LEN,
                        "{input}"
                    );
                    assert_well_formed(&token);
                    if let Some(previous) = seen.insert(token, input.clone()) {
                        assert_eq!(previous, input, "collision");
                    }
                }
            }
        }
    }

    fn escaped_len(input: &str) -> usize {
        input
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    1
                } else {
                    3
                }
            })
            .sum()
    }

    #[test]
    fn subjects_are_bounded() {
        // A topic of 60,000 characters in one level, and one of 30,000 levels.
        for topic in [
            plain(60_000),
            "a/".repeat(30_000),
            format!("site/{}", ".".repeat(5_000)),
        ] {
            let subject = raw_mqtt_subject(&topic);
            assert!(subject.len() <= MAX_SUBJECT_LEN, "{} bytes", subject.len());
            assert!(subject.starts_with("raw.mqtt."));
            assert!(
                subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"),
                "{subject}"
            );
        }
        // The head of a cut subject keeps its levels, and distinct long topics stay distinct.
        let long = format!("plant/7/{}", "x/".repeat(400));
        assert!(raw_mqtt_subject(&long).starts_with("raw.mqtt.plant.7.x.x."));
        assert_ne!(
            raw_mqtt_subject(&format!("{long}a")),
            raw_mqtt_subject(&format!("{long}b"))
        );
        // Short topics are untouched.
        assert_eq!(raw_mqtt_subject("a/b"), "raw.mqtt.a.b");
        for device in [plain(4_000), ".".repeat(1_400), "\u{1F600}".repeat(340)] {
            assert!(metric_subject(&device).len() <= "metrics.".len() + MAX_TOKEN_LEN);
        }
    }
}
