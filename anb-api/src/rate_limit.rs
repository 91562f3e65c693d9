//! Fraud control: keyed token-bucket limits (governor), the back-off after
//! failed logins, and the client IP they are keyed on.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use poem::{Endpoint, Middleware, Request};

use crate::error::ApiError;
use crate::settings::{LoginBackoff, Rate, RateLimits};

/// One keyed limit; a disabled one lets everything through.
#[derive(Debug)]
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// Forget idle keys every this many checks, so memory stays bounded by
    /// the recently active clients.
    const SWEEP_EVERY: u64 = 4096;

    pub fn new(rate: Option<Rate>) -> Self {
        let limiter = rate.map(|rate| {
            // `Rate::parse` refuses rates above one per nanosecond; one built
            // by hand that is faster still is clamped, not a panic.
            let quota = Quota::with_period(rate.period / rate.count.get())
                .unwrap_or_else(|| Quota::with_period(Duration::from_nanos(1)).expect("non-zero"))
                .allow_burst(rate.count);
            RateLimiter::keyed(quota)
        });
        Self {
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token for `key`, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % Self::SWEEP_EVERY == Self::SWEEP_EVERY - 1
        {
            limiter.retain_recent();
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests {
                retry_after_secs: whole_seconds(wait),
            }
        })
    }
}

/// Consecutive failed logins per (account, client IP), with exponential
/// back-off once a few have failed: the account's owner, logging in from
/// their own address, is never locked out by someone failing elsewhere, and
/// a guesser at one address slows down to a handful of tries an hour.
///
/// After `free_failures` failures in a row, each further attempt from that
/// address for that account must wait 1 s, then 2 s, 4 s… (at most
/// [`LoginFailures::MAX_WAIT`]) after the last failure. A success forgets the
/// failures; so does an hour without any.
#[derive(Debug)]
pub struct LoginFailures {
    backoff: Option<LoginBackoff>,
    records: Mutex<HashMap<(String, IpAddr), FailureRecord>>,
}

#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    failures: u32,
    last: Instant,
}

impl LoginFailures {
    /// The longest wait the back-off imposes.
    pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
    /// Failures older than this are forgotten.
    pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
    /// Past this many records, expired ones are swept before adding another.
    const SWEEP_ABOVE: usize = 100_000;

    pub fn new(backoff: Option<LoginBackoff>) -> Self {
        Self {
            backoff,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<(String, IpAddr), FailureRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long `record` still has to wait, if at all.
    fn wait(backoff: LoginBackoff, record: FailureRecord, now: Instant) -> Option<Duration> {
        let over = record.failures.checked_sub(backoff.free_failures)?;
        let wait = Duration::from_secs(1u64 << over.min(20)).min(Self::MAX_WAIT);
        let until = record.last + wait;
        (until > now).then(|| until - now)
    }

    /// Refuses an attempt for `account` from `ip` while its back-off runs.
    /// Checked before the password is, so a correct guess during the wait
    /// is refused like any other attempt.
    pub fn check(&self, account: &str, ip: IpAddr) -> Result<(), ApiError> {
        let Some(backoff) = self.backoff else {
            return Ok(());
        };
        let now = Instant::now();
        let key = (account.to_owned(), ip);
        let record = self.records().get(&key).copied();
        match record.and_then(|record| Self::wait(backoff, record, now)) {
            Some(wait) => Err(ApiError::TooManyRequests {
                retry_after_secs: whole_seconds(wait),
            }),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt.
    pub fn failed(&self, account: &str, ip: IpAddr) {
        if self.backoff.is_none() {
            return;
        }
        let now = Instant::now();
        let mut records = self.records();
        if records.len() >= Self::SWEEP_ABOVE {
            records.retain(|_, record| now - record.last < Self::FORGET_AFTER);
        }
        let record = records
            .entry((account.to_owned(), ip))
            .or_insert(FailureRecord {
                failures: 0,
                last: now,
            });
        if now - record.last >= Self::FORGET_AFTER {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
    }

    /// Forgets the failures of `account` from `ip` after a success.
    pub fn succeeded(&self, account: &str, ip: IpAddr) {
        if self.backoff.is_some() {
            self.records().remove(&(account.to_owned(), ip));
        }
    }
}

/// Whole seconds, rounded up, at least one.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Every limit the API enforces.
#[derive(Debug)]
pub struct RateLimiters {
    pub login_per_ip: KeyedLimit<IpAddr>,
    pub login_failures: LoginFailures,
    pub signup_per_ip: KeyedLimit<IpAddr>,
    pub vote_per_user: KeyedLimit<String>,
    pub vote_per_ip: KeyedLimit<IpAddr>,
    /// Uploads per player ([`UploadPolicy`](crate::settings::UploadPolicy)).
    pub upload_per_user: KeyedLimit<String>,
}

impl RateLimiters {
    pub fn new(limits: &RateLimits, upload_per_user: Option<crate::settings::Rate>) -> Self {
        Self {
            upload_per_user: KeyedLimit::new(upload_per_user),
            login_per_ip: KeyedLimit::new(limits.login_per_ip),
            login_failures: LoginFailures::new(limits.login_backoff),
            signup_per_ip: KeyedLimit::new(limits.signup_per_ip),
            vote_per_user: KeyedLimit::new(limits.vote_per_user),
            vote_per_ip: KeyedLimit::new(limits.vote_per_ip),
        }
    }
}

/// The address of the client that made the request, as far as we can trust
/// it. Put in each request's extensions by [`ClientIpMiddleware`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// A trusted proxy forwarded a request without saying, in a form we can
/// read, whom it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("X-Forwarded-For names no client address: {0:?}")]
pub struct UnreadableForwardedFor(pub String);

/// Finds the client's address: the TCP peer, unless the peer is a trusted
/// proxy, in which case the right-most `X-Forwarded-For` entry that is not
/// itself a trusted proxy (entries further left are client-controlled).
///
/// Each trusted proxy appends the address it received the request from, so
/// reading from the right, past the trusted hops, the first entry is the
/// address the outermost trusted proxy saw: the client. What the client
/// wrote itself lies further left and is never looked at, so `X-Forwarded-For:
/// x` from a client behind the load balancer (which makes it `x, <client>`)
/// still gives `<client>`. Only when an unreadable entry is where the client
/// should be — the trusted chain itself handed on something that is not an
/// address — is there no honest answer: falling back to the proxy's own
/// address would put that client in the bucket of everyone behind the proxy
/// (and out of their own), so the request is refused instead.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Result<Option<IpAddr>, UnreadableForwardedFor> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let Some(peer) = peer else {
        return Ok(None);
    };
    if !is_trusted(&peer) {
        return Ok(Some(peer));
    }
    let Some(header) = forwarded_for else {
        return Ok(Some(peer));
    };
    let mut innermost_trusted = None;
    for item in header.rsplit(',').map(str::trim) {
        match parse_hop(item) {
            Some(ip) if is_trusted(&ip) => innermost_trusted = Some(ip),
            Some(ip) => return Ok(Some(ip)),
            None => return Err(UnreadableForwardedFor(header.to_owned())),
        }
    }
    // Every hop is a trusted proxy: the request came from inside.
    Ok(Some(innermost_trusted.unwrap_or(peer)))
}

/// One `X-Forwarded-For` entry: an IP address, possibly with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(item: &str) -> Option<IpAddr> {
    item.parse::<IpAddr>()
        .ok()
        .or_else(|| item.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// Records [`ClientIp`] on every request.
#[derive(Debug, Clone)]
pub struct ClientIpMiddleware {
    pub trusted_proxies: Vec<IpNet>,
}

impl<E: Endpoint> Middleware<E> for ClientIpMiddleware {
    type Output = ClientIpEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ClientIpEndpoint {
            inner,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

#[derive(Debug)]
pub struct ClientIpEndpoint<E> {
    inner: E,
    trusted_proxies: Vec<IpNet>,
}

impl<E: Endpoint> Endpoint for ClientIpEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let peer = req.remote_addr().as_socket_addr().map(|addr| addr.ip());
        // Several header lines are one list, in order (RFC 9110 §5.3); a
        // line that is not text is an unreadable entry, not an absent one.
        let lines: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{FFFD}"))
            .collect();
        let forwarded = (!lines.is_empty()).then(|| lines.join(","));
        let ip = client_ip(peer, forwarded.as_deref(), &self.trusted_proxies).map_err(|e| {
            tracing::warn!(error = %e, ?peer, "request refused: no readable client address");
            ApiError::bad_request(
                crate::error::ErrorCode::InvalidForwardedFor,
                "La cabecera X-Forwarded-For no indica la dirección del cliente.",
            )
        })?;
        req.extensions_mut()
            .insert(ClientIp(ip.unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        self.inner.call(req).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/16".parse().unwrap()];
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), Some("1.2.3.4"), &trusted),
            Ok(Some(ip("203.0.113.9")))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some("1.2.3.4"), &[]),
            Ok(Some(ip("10.0.0.2")))
        );
        // An untrusted peer's garbage is not even read.
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), Some("x"), &trusted),
            Ok(Some(ip("203.0.113.9")))
        );
    }

    #[test]
    fn trusted_proxy_yields_the_rightmost_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/16".parse().unwrap()];
        // The client forged the first entry; the proxy appended the real one.
        assert_eq!(
            client_ip(
                Some(ip("10.0.1.5")),
                Some("6.6.6.6, 198.51.100.7, 10.0.3.3"),
                &trusted
            ),
            Ok(Some(ip("198.51.100.7")))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.1.5")), None, &trusted),
            Ok(Some(ip("10.0.1.5")))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.1.5")), Some("10.0.7.7, 10.0.3.3"), &trusted),
            Ok(Some(ip("10.0.7.7")))
        );
    }

    #[test]
    fn garbage_the_client_wrote_does_not_make_the_proxy_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/16".parse().unwrap()];
        let proxy = Some(ip("10.0.1.5"));
        // The client sent `X-Forwarded-For: x`; the proxy appended its address.
        for header in [
            "x, 198.51.100.7",
            "x,198.51.100.7, 10.0.3.3",
            "unknown, 198.51.100.7:4711",
        ] {
            assert_eq!(
                client_ip(proxy, Some(header), &trusted),
                Ok(Some(ip("198.51.100.7"))),
                "{header}"
            );
        }
        // Where the client's address should be there is none: refused, never
        // the proxy's own address.
        for header in ["x", "", "198.51.100.7, x", "x, 10.0.3.3"] {
            assert!(
                client_ip(proxy, Some(header), &trusted).is_err(),
                "{header}"
            );
        }
    }

    #[test]
    fn limit_allows_a_burst_then_asks_to_retry_later() {
        let limit = KeyedLimit::new(Some(Rate {
            count: std::num::NonZeroU32::new(3).unwrap(),
            period: Duration::from_secs(60),
        }));
        for _ in 0..3 {
            limit.check(&"alice".to_owned()).unwrap();
        }
        match limit.check(&"alice".to_owned()) {
            Err(ApiError::TooManyRequests { retry_after_secs }) => {
                assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("expected 429, got {other:?}"),
        }
        limit.check(&"bob".to_owned()).unwrap();
        // Faster than the clock can count is clamped, not a panic.
        let fast = KeyedLimit::new(Some(Rate {
            count: std::num::NonZeroU32::new(2_000_000_000).unwrap(),
            period: Duration::from_secs(1),
        }));
        fast.check(&"alice".to_owned()).unwrap();
        let off = KeyedLimit::<String>::new(None);
        for _ in 0..1000 {
            off.check(&"alice".to_owned()).unwrap();
        }
    }

    #[test]
    fn login_backoff_grows_per_account_and_address_and_success_clears_it() {
        let failures = LoginFailures::new(Some(LoginBackoff { free_failures: 2 }));
        let (home, attacker) = (ip("198.51.100.7"), ip("203.0.113.9"));
        for _ in 0..2 {
            failures.check("ana@example.com", attacker).unwrap();
            failures.failed("ana@example.com", attacker);
        }
        // Two in a row from there: that address waits…
        assert!(matches!(
            failures.check("ana@example.com", attacker),
            Err(ApiError::TooManyRequests {
                retry_after_secs: 1
            })
        ));
        // …but the owner at home, and other accounts, do not.
        failures.check("ana@example.com", home).unwrap();
        failures.check("bob@example.com", attacker).unwrap();
        // The wait doubles with each further failure.
        failures.failed("ana@example.com", attacker);
        assert!(matches!(
            failures.check("ana@example.com", attacker),
            Err(ApiError::TooManyRequests {
                retry_after_secs: 2
            })
        ));
        failures.succeeded("ana@example.com", attacker);
        failures.check("ana@example.com", attacker).unwrap();
    }

    #[test]
    fn login_backoff_is_capped() {
        let backoff = LoginBackoff { free_failures: 0 };
        let now = Instant::now();
        let record = FailureRecord {
            failures: u32::MAX,
            last: now,
        };
        assert_eq!(
            LoginFailures::wait(backoff, record, now),
            Some(LoginFailures::MAX_WAIT)
        );
    }
}
