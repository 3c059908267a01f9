#![no_main]
// Any text as a subject token, MQTT topic, source, device or dead-letter
// reason: a subject NATS takes (no empty token, no wildcard, within the
// length limit), and two different inputs never share a token.
use tributary_schema::{
    MAX_SUBJECT_LEN, MAX_TOKEN_LEN, dlq_subject, metric_subject, raw_http_subject, raw_influx_subject,
    raw_mqtt_subject, raw_pull_subject, sanitize_token,
};

fn assert_subject(subject: &str) {
    assert!(subject.len() <= MAX_SUBJECT_LEN, "{subject}");
    for token in subject.split('.') {
        assert!(!token.is_empty(), "an empty token in {subject:?}");
        assert!(token != "*" && token != ">", "a wildcard in {subject:?}");
        assert!(
            token.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'),
            "{subject:?}"
        );
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let token = sanitize_token(text);
    assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN && !token.contains('.'));
    assert_subject(&token);
    for subject in [
        raw_http_subject(text),
        raw_influx_subject(text),
        raw_pull_subject(text),
        raw_mqtt_subject(text),
        metric_subject(text),
    ] {
        assert_subject(&subject);
    }
    // Two inputs, split at the first NUL: different texts, different tokens.
    if let Some((a, b)) = text.split_once('\0') {
        if a != b {
            assert_ne!(sanitize_token(a), sanitize_token(b), "{a:?} and {b:?}");
        }
        assert_subject(&dlq_subject(a, b));
    }
});
