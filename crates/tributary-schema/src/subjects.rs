//! Stream names, subject builders and the subject-token sanitiser.

/// Raw payloads as received (`RawEnvelope`).
pub const RAW_STREAM: &str = "TELEMETRY_RAW";
/// Subjects of [`RAW_STREAM`].
pub const RAW_SUBJECTS: &str = "raw.>";
/// One event per metric (`MetricEvent`).
pub const METRICS_STREAM: &str = "TELEMETRY_METRICS";
/// Subjects of [`METRICS_STREAM`].
pub const METRICS_SUBJECTS: &str = "metrics.>";
/// Dead letters: input that can never succeed, with its reason in headers.
pub const DLQ_STREAM: &str = "TELEMETRY_DLQ";
/// Subjects of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "dlq.>";

/// Turns any string into one safe NATS subject token.
///
/// ASCII letters, digits, `-` and `_` pass through unchanged; every other
/// byte of the UTF-8 text (dots, wildcards `*` and `>`, spaces, `$`,
/// non-printables, non-ASCII, and `~` itself) becomes `~` followed by two
/// upper-case hex digits. The empty string becomes a lone `~`, which no
/// non-empty input can produce because every escape has two hex digits after
/// its `~`.
///
/// So the result is never empty, never a wildcard, never contains a dot, and
/// the mapping is injective: different inputs give different tokens. The
/// original value always travels in the message itself.
pub fn sanitize_token(input: &str) -> String {
    if input.is_empty() {
        return "~".to_owned();
    }
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('~');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
}

/// `raw.http.<source>`.
pub fn raw_http_subject(source: &str) -> String {
    format!("raw.http.{}", sanitize_token(source))
}

/// `raw.mqtt.<topic levels>`: each `/`-separated level of the MQTT topic
/// becomes one sanitised token, so NATS wildcards can select by topic level.
pub fn raw_mqtt_subject(topic: &str) -> String {
    let mut subject = String::from("raw.mqtt");
    for level in topic.split('/') {
        subject.push('.');
        subject.push_str(&sanitize_token(level));
    }
    subject
}

/// `metrics.<device>.<metric>`.
pub fn metric_subject(device_id: &str, metric: &str) -> String {
    format!("metrics.{}.{}", sanitize_token(device_id), sanitize_token(metric))
}

/// `dlq.<stage>.<reason>`.
pub fn dlq_subject(stage: &str, reason: &str) -> String {
    format!("dlq.{}.{}", sanitize_token(stage), sanitize_token(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            metric_subject("594d186e51b3bc4eb0abafd9", "APFluid"),
            "metrics.594d186e51b3bc4eb0abafd9.APFluid"
        );
        assert_eq!(dlq_subject("transformer", "not_json"), "dlq.transformer.not_json");
    }
}
