//! The alerter's names: its stream and subjects (from `tributary-schema`,
//! since the query API reads them too), and the keys of its state bucket,
//! which only the alerter uses.

use tributary_schema::sanitize_token;
pub use tributary_schema::{ALERTS_STREAM, ALERTS_SUBJECTS, alert_subject};

/// The key-value bucket holding each device's rule state.
pub const STATE_BUCKET: &str = "TRIBUTARY_ALERTER_STATE";

/// The state bucket's key for a device: its subject token with each `~`
/// written `=`. Key-value keys allow letters, digits and `-/_=.` only; the
/// token never holds `=` or `.`, so the mapping stays injective, and a key
/// with a `.` is never a device's (the state's parts use them).
pub fn state_key(device: &str) -> String {
    sanitize_token(device).replace('~', "=")
}

/// The metrics stream's partition of the device a state key belongs to.
pub fn key_partition(key: &str) -> u32 {
    tributary_schema::token_partition(&key.replace('=', "~"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_keys() {
        let check = |device: &str, subject: &str, key: &str| {
            assert_eq!(alert_subject("boiler-hot", device), subject, "{device:?}");
            assert_eq!(state_key(device), key, "{device:?}");
        };
        check("boiler-1", "alerts.boiler-hot.boiler-1", "boiler-1");
        check(
            "plant.7/boiler",
            "alerts.boiler-hot.plant~2E7~2Fboiler",
            "plant=2E7=2Fboiler",
        );
        check("", "alerts.boiler-hot.~", "=");
        check("a=b", "alerts.boiler-hot.a~3Db", "a=3Db");
        check("*", "alerts.boiler-hot.~2A", "=2A");
        for device in ["boiler-1", "plant.7/boiler", "", "a=b", "*"] {
            assert_eq!(
                key_partition(&state_key(device)),
                tributary_schema::metric_partition(device)
            );
        }
    }

    #[test]
    fn every_key_is_a_valid_key_and_distinct() {
        let devices: Vec<String> = (0u8..=127)
            .map(|b| format!("d{}", char::from(b)))
            .chain(["", "~", "=", "~3D", "=3D"].map(str::to_owned))
            .chain([
                format!("long-{}", "x".repeat(300)),
                format!("long-{}y", "x".repeat(300)),
            ])
            .collect();
        let mut keys: Vec<String> = devices.iter().map(|d| state_key(d)).collect();
        for key in &keys {
            assert!(!key.is_empty() && key.len() <= 128, "{key}");
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=')),
                "{key}"
            );
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), devices.len());
    }
}
