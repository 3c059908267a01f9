//! Bearer tokens for the HTTP APIs (`--auth-tokens`, a TOML file that the
//! producer and the query API can share):
//!
//! ```toml
//! [[tokens]]
//! name = "plant-7"                 # for logs and metrics, never the secret
//! sha256 = "9f86d081884c7d65…"     # hex SHA-256 of the token: printf %s "$TOKEN" | sha256sum
//! scope = "write"                  # optional: "write" (the default) ingests, "read" queries
//! sources = ["plant-7-*", "telegraf"]   # write tokens: HTTP sources / InfluxDB buckets it may write; `*` is a wildcard
//! rate_limit = 200                 # optional: requests per second (per replica)
//! burst = 400                      # optional: requests at once above the rate (default: the rate)
//! ```
//!
//! A write token is taken by the producer only, a read token by the query
//! API only: a dashboard's token cannot forge data, an ingest token cannot
//! read the fleet's. A request carries its token as `Authorization: Bearer
//! <token>` (or `Token <token>`, as InfluxDB clients and Telegraf send it;
//! the query API also takes the `tributary_token` cookie its dashboard
//! sets). Only hashes are configured; a presented token is hashed and
//! compared with every configured hash in constant time. No token or an
//! unknown one: `401`; a token of the other scope or not allowed for the
//! source: `403`; over its rate: `429` with `Retry-After`.

use std::sync::Mutex;
use std::time::Instant;

use crate::ApiError;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const CHALLENGE: &str = "Bearer realm=\"tributary\"";

/// The cookie the query API's dashboard keeps its token in.
pub const TOKEN_COOKIE: &str = "tributary_token";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Ingest through the producer, into the token's sources.
    Write,
    /// Read through the query API.
    Read,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Read => "read",
        }
    }
}

/// The configured tokens.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<Token>,
}

#[derive(Debug)]
struct Token {
    name: String,
    hash: [u8; 32],
    scope: Scope,
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
    #[serde(default = "write")]
    scope: Scope,
    #[serde(default)]
    sources: Vec<String>,
    rate_limit: Option<f64>,
    burst: Option<f64>,
}

fn write() -> Scope {
    Scope::Write
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
            match raw.scope {
                Scope::Write if raw.sources.is_empty() || raw.sources.iter().any(String::is_empty) => {
                    problem("`sources` must list at least one source (\"*\" for all), none empty".to_owned());
                }
                Scope::Read if !raw.sources.is_empty() => {
                    problem("`sources` is for write tokens: a read token reads every device".to_owned());
                }
                _ => {}
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
                scope: raw.scope,
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

    /// Reads the `--auth-tokens` file of a service that takes `scope`
    /// tokens: a file with none of them would lock everyone out, so it is
    /// refused too.
    ///
    /// # Errors
    ///
    /// Every problem with the file, each naming the flag and the path.
    pub fn load(path: &std::path::Path, scope: Scope) -> Result<Self, Vec<String>> {
        crate::config::read_config_file("--auth-tokens", path, |text| {
            let tokens = Self::from_toml(text)?;
            if tokens.count(scope) == 0 {
                return Err(vec![format!(
                    "the file lists no {} tokens (scope = \"{}\"), so every request would be refused",
                    scope.as_str(),
                    scope.as_str()
                )]);
            }
            Ok(tokens)
        })
    }

    /// How many tokens have `scope`: a service given a file with none of
    /// its own scope would refuse everyone.
    pub fn count(&self, scope: Scope) -> usize {
        self.tokens.iter().filter(|t| t.scope == scope).count()
    }

    /// Whether this request may write to `source`; the token's name when it may.
    ///
    /// # Errors
    ///
    /// `401`, `403` or `429` as the module says.
    pub fn authorize_write(&self, headers: &HeaderMap, source: &str) -> Result<&str, ApiError> {
        let token = self.authenticate(headers, Scope::Write)?;
        if !token
            .sources
            .iter()
            .any(|glob| tributary_schema::glob_matches(glob, source))
        {
            metrics::counter!("tributary_auth_refused_total", "reason" => "forbidden_source").increment(1);
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                "forbidden_source",
                format!("token {:?} may not write to source {source:?}", token.name),
            ));
        }
        token.admit()
    }

    /// Whether this request may read; the token's name when it may.
    ///
    /// # Errors
    ///
    /// `401`, `403` or `429` as the module says.
    pub fn authorize_read(&self, headers: &HeaderMap) -> Result<&str, ApiError> {
        self.authenticate(headers, Scope::Read)?.admit()
    }

    /// The configured token this request presents, if it has `scope`.
    fn authenticate(&self, headers: &HeaderMap, scope: Scope) -> Result<&Token, ApiError> {
        let Some(presented) = presented(headers, scope) else {
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
        if token.scope != scope {
            metrics::counter!("tributary_auth_refused_total", "reason" => "forbidden_scope").increment(1);
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                "forbidden_scope",
                format!(
                    "token {:?} is a {} token; this endpoint needs a {} token",
                    token.name,
                    token.scope.as_str(),
                    scope.as_str()
                ),
            ));
        }
        Ok(token)
    }
}

impl Token {
    /// Takes one request from the token's rate limit, if it has one.
    fn admit(&self) -> Result<&str, ApiError> {
        if let Some(limit) = &self.limit
            && let Err(retry_after) = limit.take(Instant::now())
        {
            metrics::counter!("tributary_auth_refused_total", "reason" => "rate_limited").increment(1);
            return Err(ApiError::rate_limited(
                retry_after,
                format!(
                    "token {:?} is over its rate of {} requests per second",
                    self.name, limit.per_second
                ),
            ));
        }
        Ok(&self.name)
    }
}

/// The token of `Authorization: Bearer <token>` or `Token <token>`, else
/// (for reads) of the `tributary_token` cookie. A cookie goes to every port
/// of its host, so writes never take one: a page cannot ingest with it.
fn presented(headers: &HeaderMap, scope: Scope) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        return ((scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")) && !token.is_empty())
            .then_some(token);
    }
    if scope != Scope::Read {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
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
            tokens.authorize_write(&headers("Bearer s3cret"), "plant-7").ok(),
            Some("plant")
        );
        assert_eq!(
            tokens.authorize_write(&headers("token s3cret"), "telegraf").ok(),
            Some("plant")
        );
        let status = |h: &HeaderMap, source| {
            tokens
                .authorize_write(h, source)
                .err()
                .map(|e| (e.status.as_u16(), e.code))
        };
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
        let error = tokens.authorize_write(&HeaderMap::new(), "x").unwrap_err();
        assert_eq!(error.authenticate, Some(CHALLENGE));
    }

    #[test]
    fn read_and_write_tokens_each_open_only_their_own_door() {
        let tokens = Tokens::from_toml(&format!(
            "[[tokens]]\nname = \"ingest\"\nsha256 = \"{}\"\nsources = [\"*\"]\n\n\
             [[tokens]]\nname = \"grafana\"\nsha256 = \"{}\"\nscope = \"read\"\n",
            sha("w"),
            sha("r")
        ))
        .expect("valid");
        assert_eq!((tokens.count(Scope::Write), tokens.count(Scope::Read)), (1, 1));
        assert_eq!(tokens.authorize_read(&headers("Bearer r")).ok(), Some("grafana"));
        let refused = |result: Result<&str, ApiError>| result.err().map(|e| (e.status.as_u16(), e.code));
        assert_eq!(
            refused(tokens.authorize_read(&headers("Bearer w"))),
            Some((403, "forbidden_scope"))
        );
        assert_eq!(
            refused(tokens.authorize_write(&headers("Bearer r"), "any")),
            Some((403, "forbidden_scope"))
        );
        // The dashboard's cookie reads, among other cookies; it never writes.
        let cookie = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, value.parse().expect("a header value"));
            headers
        };
        assert_eq!(
            tokens.authorize_read(&cookie("theme=dark; tributary_token=r")).ok(),
            Some("grafana")
        );
        assert_eq!(
            refused(tokens.authorize_read(&cookie("tributary_token="))),
            Some((401, "unauthorized"))
        );
        assert_eq!(
            refused(tokens.authorize_write(&cookie("tributary_token=w"), "any")),
            Some((401, "unauthorized"))
        );
    }

    #[test]
    fn a_rate_limited_token_gets_its_burst_then_waits() {
        let tokens = tokens();
        let slow = headers("Bearer slow-one");
        for _ in 0..3 {
            assert!(tokens.authorize_write(&slow, "any").is_ok());
        }
        let error = tokens.authorize_write(&slow, "any").unwrap_err();
        assert_eq!(
            (error.status.as_u16(), error.code, error.retry_after),
            (429, "rate_limited", Some(1))
        );
        // Other tokens are not limited by it.
        assert!(tokens.authorize_write(&headers("Bearer s3cret"), "plant-1").is_ok());

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
        let problems = Tokens::from_toml(&format!(
            "[[tokens]]\nname = \"r\"\nsha256 = \"{}\"\nscope = \"read\"\nsources = [\"*\"]\n",
            sha("r")
        ))
        .unwrap_err();
        assert!(problems[0].contains("`sources` is for write tokens"), "{problems:#?}");
        let problems = Tokens::from_toml(&format!(
            "[[tokens]]\nname = \"x\"\nsha256 = \"{}\"\nscope = \"admin\"\n",
            sha("x")
        ))
        .unwrap_err();
        assert!(problems[0].contains("unknown variant `admin`"), "{problems:#?}");
        assert!(Tokens::from_toml("").unwrap_err()[0].contains("no [[tokens]]"));
        assert!(Tokens::from_toml("[[tokens]]\nname = \"a\"\nsha = \"x\"\n").is_err());
    }
}
