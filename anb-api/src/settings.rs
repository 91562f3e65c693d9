//! Settings the API reads beside the shared [`anb_core::config::Settings`]:
//! rate limits, trusted proxies, and the upload limits it shares with the
//! worker ([`UploadLimits`], parsed by `anb-core`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ANB_RATE_LIMIT_LOGIN_PER_IP` | `60/min` | login attempts per client IP |
//! | `ANB_LOGIN_BACKOFF` | `5` | failed logins in a row per account and client IP before each further attempt waits 1 s, 2 s, 4 s… (at most 15 min), or `off` |
//! | `ANB_PASSWORD_HASH_QUEUE` | `16` | logins and sign-ups that may wait for a password-hashing slot (one per CPU), all clients together; beyond that they are answered 503 `overloaded` with `Retry-After` at once |
//! | `ANB_PASSWORD_HASH_QUEUE_PER_CLIENT` | `2` | logins and sign-ups one client IP may have waiting for or using a hashing slot; beyond that they are answered 429 `too_many_in_progress` with `Retry-After` at once, without hashing; `0` or `off`: no bound. Free slots go to the waiting clients in turn, not first come first served |
//! | `ANB_RATE_LIMIT_SIGNUP_PER_IP` | `30/min` | sign-ups per client IP |
//! | `ANB_RATE_LIMIT_VOTE_PER_USER` | `60/min` | votes per user |
//! | `ANB_RATE_LIMIT_VOTE_PER_IP` | `600/min` | votes per client IP (many people may share one) |
//! | `ANB_TRUSTED_PROXIES` | none | comma-separated IPs or CIDRs (e.g. the load balancer's subnets) whose `X-Forwarded-For` is believed |
//! | `ANB_CORS_ORIGINS` | none | comma-separated origins (e.g. `https://app.example.com`) of front-ends on other origins that browsers may let call the API |
//! | `ANB_UPLOAD_MAX_BYTES` | `104857600` | largest accepted upload (100 MB) |
//! | `ANB_UPLOAD_MIN_SECONDS` / `ANB_UPLOAD_MAX_SECONDS` | `20` / `60` | accepted duration |
//! | `ANB_UPLOAD_MIN_SHORT_SIDE` | `1080` | smallest accepted shorter side of the frame, in pixels |
//! | `ANB_UPLOAD_RATE_PER_USER` | `20/h` | uploads per player (a rate, as above) |
//! | `ANB_UPLOAD_QUOTA_BYTES` | `2147483648` | bytes of originals a player may keep (live videos and uploads in progress; 2 GiB), or `off` |
//! | `ANB_UPLOAD_QUOTA_VIDEOS` | `50` | videos a player may keep (live, or in progress), or `off` |
//! | `ANB_UPLOAD_IDEMPOTENCY_TTL` | `86400` | seconds an upload's answer is kept for retries under its `Idempotency-Key` |
//! | `ANB_UPLOAD_PRESIGN_TTL` | `900` | seconds a direct upload's `PUT` URL is valid (15 min); the upload can be completed for as long again |
//! | `ANB_UPLOAD_SWEEP_INTERVAL` | `3600` | seconds between passes of the clean-up of uploads that never became videos; `0` turns it off |
//! | `ANB_UPLOAD_SWEEP_GRACE` | `3600` | seconds an upload may stay in progress, or an original without a video row, before the clean-up removes it |
//! | `ANB_RANKINGS_CACHE_MS` | `500` | milliseconds a rankings page is served from memory after it was read (0–1000; `0` reads every request from the database): a vote shows within this plus one query |
//!
//! A rate is `<count>/s`, `<count>/min` or `<count>/h` (a burst of `count`
//! is allowed, refilled at that rate), or `off`. The defaults are far above
//! what a person does by hand; load tests raise them or turn them off.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use anb_core::config::ConfigError;
pub use anb_core::config::UploadLimits;
use ipnet::IpNet;

/// A token-bucket rate: `count` requests per `period`, in bursts of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/min`, `N/h`; `off` gives `None`.
    pub fn parse(var: &'static str, raw: &str) -> Result<Option<Self>, ConfigError> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let invalid = |reason: &str| ConfigError::Invalid {
            var,
            reason: format!("{raw:?}: {reason} (expected e.g. 60/min, 5/s, 1000/h or off)"),
        };
        let (count, unit) = raw.split_once('/').ok_or_else(|| invalid("no '/'"))?;
        let count: NonZeroU32 = count
            .trim()
            .parse()
            .map_err(|_| invalid("the count must be a positive integer below 2^32"))?;
        let period = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "min" | "m" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(invalid("unknown unit")),
        };
        // The limiter refills one request per `period / count`: it must be
        // at least a nanosecond.
        if (period / count.get()).is_zero() {
            return Err(invalid("more than one request per nanosecond"));
        }
        Ok(Some(Self { count, period }))
    }

    pub fn per_minute(count: u32) -> Self {
        Self {
            count: NonZeroU32::new(count).expect("non-zero rate"),
            period: Duration::from_secs(60),
        }
    }
}

/// When failed logins start to back off (see
/// [`LoginFailures`](crate::rate_limit::LoginFailures)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginBackoff {
    /// Failures in a row (per account and client IP) before the first wait.
    pub free_failures: u32,
}

/// Rate limits of the fraud-sensitive operations; `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub login_per_ip: Option<Rate>,
    /// Back-off after failed logins per account and client IP.
    pub login_backoff: Option<LoginBackoff>,
    pub signup_per_ip: Option<Rate>,
    pub vote_per_user: Option<Rate>,
    pub vote_per_ip: Option<Rate>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login_per_ip: Some(Rate::per_minute(60)),
            login_backoff: Some(LoginBackoff { free_failures: 5 }),
            signup_per_ip: Some(Rate::per_minute(30)),
            vote_per_user: Some(Rate::per_minute(60)),
            vote_per_ip: Some(Rate::per_minute(600)),
        }
    }
}

impl RateLimits {
    /// No limits at all (benchmarks and most tests).
    pub fn unlimited() -> Self {
        Self {
            login_per_ip: None,
            login_backoff: None,
            signup_per_ip: None,
            vote_per_user: None,
            vote_per_ip: None,
        }
    }
}

/// The per-player rules of uploads beyond the file's own limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadPolicy {
    /// Uploads per player; `None` is unlimited.
    pub rate_per_user: Option<Rate>,
    /// What a player may keep stored.
    pub quota: anb_core::db::UploadQuota,
    /// How long an upload's answer is kept for retries under its key.
    pub idempotency_ttl: Duration,
    /// How long a direct upload's presigned `PUT` is valid; the upload may
    /// be completed for as long again after that (a `PUT` begun just before
    /// the expiry has time to finish).
    pub presign_ttl: Duration,
    /// Time between clean-up passes; `None` runs none.
    pub sweep_interval: Option<Duration>,
    /// How old an upload in progress, or an original nothing names, must be
    /// before the clean-up removes it (longer than any upload takes).
    pub sweep_grace: Duration,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        Self {
            rate_per_user: Some(Rate {
                count: NonZeroU32::new(20).expect("non-zero"),
                period: Duration::from_secs(3600),
            }),
            quota: anb_core::db::UploadQuota {
                max_bytes: Some(2 * 1024 * 1024 * 1024),
                max_videos: Some(50),
            },
            idempotency_ttl: Duration::from_secs(24 * 3600),
            presign_ttl: Duration::from_secs(15 * 60),
            sweep_interval: Some(Duration::from_secs(3600)),
            sweep_grace: Duration::from_secs(3600),
        }
    }
}

impl UploadPolicy {
    /// No rate, no quota (most tests and benchmarks); the rest as default.
    pub fn unlimited() -> Self {
        Self {
            rate_per_user: None,
            quota: anb_core::db::UploadQuota::default(),
            ..Self::default()
        }
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let number = |var: &'static str, raw: &str| {
            raw.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                var,
                reason: format!("{raw:?} is not a whole number (0 or more)"),
            })
        };
        let limit = |var: &'static str, default: Option<u64>| match get(var) {
            None => Ok(default),
            Some(raw) if raw.trim().eq_ignore_ascii_case("off") => Ok(None),
            Some(raw) => number(var, &raw).map(Some),
        };
        let seconds = |var: &'static str, default: Duration| match get(var) {
            None => Ok(default),
            Some(raw) => number(var, &raw).map(Duration::from_secs),
        };
        let max_videos = match limit(
            "ANB_UPLOAD_QUOTA_VIDEOS",
            defaults.quota.max_videos.map(u64::from),
        )? {
            None => None,
            Some(count) => Some(u32::try_from(count).map_err(|_| ConfigError::Invalid {
                var: "ANB_UPLOAD_QUOTA_VIDEOS",
                reason: format!("{count} is above {}", u32::MAX),
            })?),
        };
        let sweep_interval = seconds(
            "ANB_UPLOAD_SWEEP_INTERVAL",
            defaults.sweep_interval.unwrap_or_default(),
        )?;
        Ok(Self {
            rate_per_user: match get("ANB_UPLOAD_RATE_PER_USER") {
                None => defaults.rate_per_user,
                Some(raw) => Rate::parse("ANB_UPLOAD_RATE_PER_USER", &raw)?,
            },
            quota: anb_core::db::UploadQuota {
                max_bytes: limit("ANB_UPLOAD_QUOTA_BYTES", defaults.quota.max_bytes)?,
                max_videos,
            },
            idempotency_ttl: seconds("ANB_UPLOAD_IDEMPOTENCY_TTL", defaults.idempotency_ttl)?,
            presign_ttl: match seconds("ANB_UPLOAD_PRESIGN_TTL", defaults.presign_ttl)? {
                ttl if ttl.is_zero() || ttl > anb_core::storage::MAX_URL_TTL => {
                    return Err(ConfigError::Invalid {
                        var: "ANB_UPLOAD_PRESIGN_TTL",
                        reason: format!(
                            "{} s is not within 1–{} s",
                            ttl.as_secs(),
                            anb_core::storage::MAX_URL_TTL.as_secs()
                        ),
                    });
                }
                ttl => ttl,
            },
            sweep_interval: (!sweep_interval.is_zero()).then_some(sweep_interval),
            sweep_grace: seconds("ANB_UPLOAD_SWEEP_GRACE", defaults.sweep_grace)?,
        })
    }
}

/// How many logins and sign-ups may wait for a password-hashing slot.
pub const DEFAULT_PASSWORD_HASH_QUEUE: usize = 16;

/// How many logins and sign-ups one client may have waiting for or using a
/// password-hashing slot.
pub const DEFAULT_PASSWORD_HASH_QUEUE_PER_CLIENT: NonZeroUsize = NonZeroUsize::new(2).unwrap();

/// The API's own settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub rate_limits: RateLimits,
    /// Password hashes that may wait for a slot before further ones are shed.
    pub password_hash_queue: usize,
    /// Password hashes one client may have waiting or running before its
    /// further ones are refused; `None`: no bound.
    pub password_hash_queue_per_client: Option<NonZeroUsize>,
    /// Peers whose `X-Forwarded-For` header is trusted.
    pub trusted_proxies: Vec<IpNet>,
    pub upload: UploadLimits,
    /// Per-player upload rate and quota, retries, clean-up.
    pub uploads: UploadPolicy,
    /// Origins allowed to call the API from a browser (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// How long a rankings page is served from memory after it was read.
    pub rankings_cache: Duration,
}

impl ApiSettings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads the settings through `lookup`; unset or empty means the default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let rate = |var: &'static str, default: Option<Rate>| match get(var) {
            Some(raw) => Rate::parse(var, &raw),
            None => Ok(default),
        };
        let defaults = RateLimits::default();
        let rate_limits = RateLimits {
            login_per_ip: rate("ANB_RATE_LIMIT_LOGIN_PER_IP", defaults.login_per_ip)?,
            login_backoff: match get("ANB_LOGIN_BACKOFF") {
                None => defaults.login_backoff,
                Some(raw) => parse_backoff("ANB_LOGIN_BACKOFF", &raw)?,
            },
            signup_per_ip: rate("ANB_RATE_LIMIT_SIGNUP_PER_IP", defaults.signup_per_ip)?,
            vote_per_user: rate("ANB_RATE_LIMIT_VOTE_PER_USER", defaults.vote_per_user)?,
            vote_per_ip: rate("ANB_RATE_LIMIT_VOTE_PER_IP", defaults.vote_per_ip)?,
        };
        let trusted_proxies = match get("ANB_TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(raw) => parse_networks("ANB_TRUSTED_PROXIES", &raw)?,
        };
        let password_hash_queue = match get("ANB_PASSWORD_HASH_QUEUE") {
            None => DEFAULT_PASSWORD_HASH_QUEUE,
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError::Invalid {
                var: "ANB_PASSWORD_HASH_QUEUE",
                reason: format!("{raw:?} is not a whole number (0 or more)"),
            })?,
        };
        let password_hash_queue_per_client = match get("ANB_PASSWORD_HASH_QUEUE_PER_CLIENT") {
            None => Some(DEFAULT_PASSWORD_HASH_QUEUE_PER_CLIENT),
            Some(raw) if raw.trim().eq_ignore_ascii_case("off") => None,
            Some(raw) => {
                NonZeroUsize::new(raw.trim().parse().map_err(|_| ConfigError::Invalid {
                    var: "ANB_PASSWORD_HASH_QUEUE_PER_CLIENT",
                    reason: format!("{raw:?} is not a whole number (0 or more) or off"),
                })?)
            }
        };
        // The worker reads the same variables through the same type.
        let upload = UploadLimits::from_lookup(&lookup)?;
        let cors_origins = match get("ANB_CORS_ORIGINS") {
            None => Vec::new(),
            Some(raw) => crate::headers::parse_origins("ANB_CORS_ORIGINS", &raw)?,
        };
        let rankings_cache = match get("ANB_RANKINGS_CACHE_MS") {
            None => anb_core::rankings::DEFAULT_CACHE_AGE,
            Some(raw) => parse_rankings_cache("ANB_RANKINGS_CACHE_MS", &raw)?,
        };
        let uploads = UploadPolicy::from_lookup(get)?;
        Ok(Self {
            rate_limits,
            password_hash_queue,
            password_hash_queue_per_client,
            trusted_proxies,
            upload,
            uploads,
            cors_origins,
            rankings_cache,
        })
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            rate_limits: RateLimits::default(),
            password_hash_queue: DEFAULT_PASSWORD_HASH_QUEUE,
            password_hash_queue_per_client: Some(DEFAULT_PASSWORD_HASH_QUEUE_PER_CLIENT),
            trusted_proxies: Vec::new(),
            upload: UploadLimits::default(),
            uploads: UploadPolicy::default(),
            cors_origins: Vec::new(),
            rankings_cache: anb_core::rankings::DEFAULT_CACHE_AGE,
        }
    }
}

/// Parses milliseconds from 0 to the freshness rule's one second.
fn parse_rankings_cache(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let most = anb_core::rankings::MAX_CACHE_AGE.as_millis();
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|&ms| u128::from(ms) <= most)
        .map(Duration::from_millis)
        .ok_or_else(|| ConfigError::Invalid {
            var,
            reason: format!(
                "{raw:?}: expected milliseconds from 0 to {most} (a vote must show within one second)"
            ),
        })
}

/// Parses `N` (failures before the back-off starts) or `off`.
fn parse_backoff(var: &'static str, raw: &str) -> Result<Option<LoginBackoff>, ConfigError> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let free_failures = raw.parse().map_err(|_| ConfigError::Invalid {
        var,
        reason: format!("{raw:?}: expected a number of failures (e.g. 5) or off"),
    })?;
    Ok(Some(LoginBackoff { free_failures }))
}

/// Parses a comma-separated list of IP addresses and CIDR networks.
fn parse_networks(var: &'static str, raw: &str) -> Result<Vec<IpNet>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    var,
                    reason: format!("{item:?} is neither an IP address nor a CIDR network"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<ApiSettings, ConfigError> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ApiSettings::from_lookup(|var| map.get(var).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.rate_limits, RateLimits::default());
        assert_eq!(s.upload, UploadLimits::default());
        assert_eq!(s.uploads, UploadPolicy::default());
        assert!(s.trusted_proxies.is_empty());
        assert_eq!(s.password_hash_queue, DEFAULT_PASSWORD_HASH_QUEUE);
        assert_eq!(
            s.password_hash_queue_per_client,
            Some(DEFAULT_PASSWORD_HASH_QUEUE_PER_CLIENT)
        );
    }

    #[test]
    fn the_per_client_hashing_bound_parses_and_turns_off() {
        let per_client = |raw| {
            settings(&[("ANB_PASSWORD_HASH_QUEUE_PER_CLIENT", raw)])
                .unwrap()
                .password_hash_queue_per_client
        };
        assert_eq!(per_client("5"), NonZeroUsize::new(5));
        assert_eq!(per_client("0"), None);
        assert_eq!(per_client("off"), None);
    }

    #[test]
    fn upload_policy_parses() {
        let s = settings(&[
            ("ANB_UPLOAD_RATE_PER_USER", "3/min"),
            ("ANB_UPLOAD_QUOTA_BYTES", "off"),
            ("ANB_UPLOAD_QUOTA_VIDEOS", "7"),
            ("ANB_UPLOAD_IDEMPOTENCY_TTL", "60"),
            ("ANB_UPLOAD_SWEEP_INTERVAL", "0"),
            ("ANB_UPLOAD_SWEEP_GRACE", "120"),
        ])
        .unwrap();
        assert_eq!(
            s.uploads.rate_per_user,
            Some(Rate {
                count: NonZeroU32::new(3).unwrap(),
                period: Duration::from_secs(60),
            })
        );
        assert_eq!(s.uploads.quota.max_bytes, None);
        assert_eq!(s.uploads.quota.max_videos, Some(7));
        assert_eq!(s.uploads.idempotency_ttl, Duration::from_secs(60));
        assert_eq!(s.uploads.sweep_interval, None);
        assert_eq!(s.uploads.sweep_grace, Duration::from_secs(120));
    }

    #[test]
    fn rates_proxies_and_limits_parse() {
        let s = settings(&[
            ("ANB_RATE_LIMIT_VOTE_PER_USER", "5/s"),
            ("ANB_RATE_LIMIT_LOGIN_PER_IP", "off"),
            ("ANB_TRUSTED_PROXIES", "10.0.0.0/16, 192.168.1.7"),
            ("ANB_UPLOAD_MAX_BYTES", "1000"),
        ])
        .unwrap();
        assert_eq!(
            s.rate_limits.vote_per_user,
            Some(Rate {
                count: NonZeroU32::new(5).unwrap(),
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(s.rate_limits.login_per_ip, None);
        assert_eq!(s.trusted_proxies.len(), 2);
        assert!(s.trusted_proxies[1].contains(&"192.168.1.7".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(s.upload.max_bytes, 1000);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("ANB_RATE_LIMIT_VOTE_PER_IP", "fast"),
            ("ANB_RATE_LIMIT_VOTE_PER_IP", "0/s"),
            ("ANB_TRUSTED_PROXIES", "alb.internal"),
            ("ANB_UPLOAD_MAX_BYTES", "-1"),
            ("ANB_RATE_LIMIT_VOTE_PER_IP", "2000000000/s"),
            ("ANB_RATE_LIMIT_LOGIN_PER_IP", "99999999999/min"),
            ("ANB_LOGIN_BACKOFF", "-3"),
            ("ANB_PASSWORD_HASH_QUEUE", "many"),
            ("ANB_PASSWORD_HASH_QUEUE_PER_CLIENT", "-2"),
            ("ANB_UPLOAD_RATE_PER_USER", "lots"),
            ("ANB_UPLOAD_QUOTA_BYTES", "2GB"),
            ("ANB_UPLOAD_QUOTA_VIDEOS", "99999999999"),
            ("ANB_UPLOAD_SWEEP_GRACE", "-1"),
            ("ANB_RANKINGS_CACHE_MS", "1500"),
            ("ANB_RANKINGS_CACHE_MS", "soon"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err();
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }
}
