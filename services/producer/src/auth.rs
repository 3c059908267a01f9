//! Bearer tokens for HTTP ingest (`--auth-tokens`, a TOML file):
//!
//! ```toml
//! [[tokens]]
//! name = "plant-7"                 # for logs and metrics, never the secret
//! sha256 = "9f86d081884c7d65…"     # hex SHA-256 of the token: printf %s "$TOKEN" | sha256sum
//! sources = ["plant-7-*", "telegraf"]   # HTTP sources / InfluxDB buckets it may write; `*` is a wildcard
//! rate_limit = 200                 # optional: requests per second (per producer replica)
//! burst = 400                      # optional: requests at once above the rate (default: the rate)
//! ```
//!
//! A request carries its token as `Authorization: Bearer <token>` (or
//! `Token <token>`, as InfluxDB clients and Telegraf send it). Only hashes
//! are configured; a presented token is hashed and compared with every
//! configured hash in constant time. No token or an unknown one: `401`;
//! a token not allowed for the source: `403`; over its rate: `429` with
//! `Retry-After`.

use std::sync::Mutex;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tributary_runtime::ApiError;

const CHALLENGE: &str = "Bearer realm=\"tributary\"";

/// The configured tokens.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<Token>,
}

#[derive(Debug)]
struct Token {
    name: String,
    hash: [u8; 32],
    sources: Vec<String>,
    limit: Option<RateLimit>,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    burst: f64,
    /// (requests available, when last refilled)
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// Takes one request's worth, or says in how many seconds one is there.
    fn take(&self, now: Instant) -> Result<(), u32> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (available, last) = *state;
        let available =
            (available + now.saturating_duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
        if available >= 1.0 {
            *state = (available - 1.0, now);
            Ok(())
        } else {
            *state = (available, now);
            Err(((1.0 - available) / self.per_second).ceil().max(1.0) as u32)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    sources: Vec<String>,
    rate_limit: Option<f64>,
    burst: Option<f64>,
}

impl Tokens {
    /// Parses a token file, reporting every problem in it at once.
    ///
    /// # Errors
    ///
    /// Each problem, naming the token (by number and name) it is in.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        let file: File = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let mut problems = Vec::new();
        if file.tokens.is_empty() {
            problems.push("the file lists no [[tokens]]".to_owned());
        }
        let mut tokens: Vec<Token> = Vec::new();
        for (index, raw) in file.tokens.into_iter().enumerate() {
            let label = format!("token {} ({:?})", index + 1, raw.name);
            let mut problem = |what: String| problems.push(format!("{label}: {what}"));
            if raw.name.trim().is_empty() {
                problem("`name` is empty".to_owned());
            }
            let hash = parse_hash(&raw.sha256);
            if hash.is_none() {
                problem("`sha256` must be 64 hex digits: the SHA-256 of the token, not the token".to_owned());
            }
            if raw.sources.is_empty() || raw.sources.iter().any(String::is_empty) {
                problem("`sources` must list at least one source (\"*\" for all), none empty".to_owned());
            }
            let rate_ok = |r: Option<f64>| r.is_none_or(|r| r.is_finite() && r > 0.0);
            if !rate_ok(raw.rate_limit) || !rate_ok(raw.burst) {
                problem("`rate_limit` and `burst` must be more than 0".to_owned());
            }
            if raw.burst.is_some() && raw.rate_limit.is_none() {
                problem("`burst` needs a `rate_limit`".to_owned());
            }
            if tokens.iter().any(|t| t.name == raw.name) {
                problem("another token has this name".to_owned());
            }
            if hash.is_some_and(|h| tokens.iter().any(|t| t.hash == h)) {
                problem("another token has this hash".to_owned());
            }
            let limit = raw.rate_limit.map(|per_second| {
                let burst = raw.burst.unwrap_or(per_second).max(1.0);
                RateLimit {
                    per_second,
                    burst,
                    state: Mutex::new((burst, Instant::now())),
                }
            });
            tokens.push(Token {
                name: raw.name,
                hash: hash.unwrap_or_default(),
                sources: raw.sources,
                limit,
            });
        }
        if problems.is_empty() {
            Ok(Self { tokens })
        } else {
            Err(problems)
        }
    }

    /// Whether this request may write to `source`; the token's name when it may.
    ///
    /// # Errors
    ///
    /// `401`, `403` or `429` as the module says.
    pub fn authorize(&self, headers: &HeaderMap, source: &str) -> Result<&str, ApiError> {
        let Some(presented) = presented(headers) else {
            return Err(ApiError::unauthorized(
                CHALLENGE,
                "this endpoint needs a token: send `Authorization: Bearer <token>`",
            ));
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every configured hash is compared, all the way: the time taken
        // says nothing about which one, or how much of one, matched.
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&token.hash, &digest) {
                found = Some(token);
            }
        }
        let Some(token) = found else {
            metrics::counter!("tributary_auth_refused_total", "reason" => "unknown_token").increment(1);
            return Err(ApiError::unauthorized(CHALLENGE, "the token is not valid"));
        };
        if !token
            .sources
            .iter()
            .any(|glob| tributary_formats::glob_matches(glob, source))
        {
            metrics::counter!("tributary_auth_refused_total", "reason" => "forbidden_source").increment(1);
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                "forbidden_source",
                format!("token {:?} may not write to source {source:?}", token.name),
            ));
        }
        if let Some(limit) = &token.limit
            && let Err(retry_after) = limit.take(Instant::now())
        {
            metrics::counter!("tributary_auth_refused_total", "reason" => "rate_limited").increment(1);
            return Err(ApiError::rate_limited(
                retry_after,
                format!(
                    "token {:?} is over its rate of {} requests per second",
                    token.name, limit.per_second
                ),
            ));
        }
        Ok(&token.name)
    }
}

/// The token of `Authorization: Bearer <token>` or `Token <token>`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    ((scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")) && !token.is_empty())
        .then_some(token)
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("a header value"));
        headers
    }

    fn tokens() -> Tokens {
        Tokens::from_toml(&format!(
            "[[tokens]]\nname = \"plant\"\nsha256 = \"{}\"\nsources = [\"plant-*\", \"telegraf\"]\n\n\
             [[tokens]]\nname = \"slow\"\nsha256 = \"{}\"\nsources = [\"*\"]\nrate_limit = 2\nburst = 3\n",
            sha("s3cret"),
            sha("slow-one").to_uppercase()
        ))
        .expect("valid")
    }

    #[test]
    fn a_token_is_checked_against_its_sources() {
        let tokens = tokens();
        assert_eq!(
            tokens.authorize(&headers("Bearer s3cret"), "plant-7").ok(),
            Some("plant")
        );
        assert_eq!(
            tokens.authorize(&headers("token s3cret"), "telegraf").ok(),
            Some("plant")
        );
        let status = |h: &HeaderMap, source| tokens.authorize(h, source).err().map(|e| (e.status.as_u16(), e.code));
        assert_eq!(
            status(&headers("Bearer s3cret"), "other"),
            Some((403, "forbidden_source"))
        );
        assert_eq!(status(&headers("Bearer wrong"), "plant-7"), Some((401, "unauthorized")));
        assert_eq!(
            status(&headers("Basic czNjcmV0"), "plant-7"),
            Some((401, "unauthorized"))
        );
        assert_eq!(status(&headers("Bearer "), "plant-7"), Some((401, "unauthorized")));
        assert_eq!(status(&HeaderMap::new(), "plant-7"), Some((401, "unauthorized")));
        let error = tokens.authorize(&HeaderMap::new(), "x").unwrap_err();
        assert_eq!(error.authenticate, Some(CHALLENGE));
    }

    #[test]
    fn a_rate_limited_token_gets_its_burst_then_waits() {
        let tokens = tokens();
        let slow = headers("Bearer slow-one");
        for _ in 0..3 {
            assert!(tokens.authorize(&slow, "any").is_ok());
        }
        let error = tokens.authorize(&slow, "any").unwrap_err();
        assert_eq!(
            (error.status.as_u16(), error.code, error.retry_after),
            (429, "rate_limited", Some(1))
        );
        // Other tokens are not limited by it.
        assert!(tokens.authorize(&headers("Bearer s3cret"), "plant-1").is_ok());

        let limit = RateLimit {
            per_second: 0.25,
            burst: 1.0,
            state: Mutex::new((1.0, Instant::now())),
        };
        let start = Instant::now();
        assert_eq!(limit.take(start), Ok(()));
        assert_eq!(limit.take(start), Err(4), "one request every 4 s");
        assert_eq!(limit.take(start + std::time::Duration::from_secs(2)), Err(2));
        assert_eq!(limit.take(start + std::time::Duration::from_secs(4)), Ok(()));
    }

    #[test]
    fn every_problem_in_the_file_is_reported() {
        let problems = Tokens::from_toml(&format!(
            "[[tokens]]\nname = \"\"\nsha256 = \"s3cret\"\nsources = []\nrate_limit = 0\n\n\
             [[tokens]]\nname = \"a\"\nsha256 = \"{0}\"\nsources = [\"*\"]\nburst = 5\n\n\
             [[tokens]]\nname = \"a\"\nsha256 = \"{0}\"\nsources = [\"*\"]\n",
            sha("x")
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems[1].contains("not the token"), "{problems:#?}");
        assert!(Tokens::from_toml("").unwrap_err()[0].contains("no [[tokens]]"));
        assert!(Tokens::from_toml("[[tokens]]\nname = \"a\"\nsha = \"x\"\n").is_err());
    }
}
