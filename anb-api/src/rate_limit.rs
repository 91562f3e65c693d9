//! Fraud control: keyed token-bucket limits (governor) and the client IP
//! they are keyed on.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use poem::{Endpoint, Middleware, Request};

use crate::error::ApiError;
use crate::settings::{Rate, RateLimits};

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
            let quota = Quota::with_period(rate.period / rate.count.get())
                .expect("a non-zero period")
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
                // Whole seconds, rounded up, at least one.
                retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            }
        })
    }
}

/// Every limit the API enforces.
#[derive(Debug)]
pub struct RateLimiters {
    pub login_per_ip: KeyedLimit<IpAddr>,
    pub login_per_account: KeyedLimit<String>,
    pub signup_per_ip: KeyedLimit<IpAddr>,
    pub vote_per_user: KeyedLimit<String>,
    pub vote_per_ip: KeyedLimit<IpAddr>,
}

impl RateLimiters {
    pub fn new(limits: &RateLimits) -> Self {
        Self {
            login_per_ip: KeyedLimit::new(limits.login_per_ip),
            login_per_account: KeyedLimit::new(limits.login_per_account),
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

/// Finds the client's address: the TCP peer, unless the peer is a trusted
/// proxy, in which case the right-most `X-Forwarded-For` entry that is not
/// itself a trusted proxy (entries further left are client-controlled).
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer?;
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    let mut hops: Vec<IpAddr> = Vec::new();
    for item in header.split(',') {
        match item.trim().parse::<IpAddr>() {
            Ok(ip) => hops.push(ip),
            // A garbled header from a trusted proxy chain: use what is
            // certain, the proxy itself, rather than a forged value.
            Err(_) => return Some(peer),
        }
    }
    Some(
        hops.iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer),
    )
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
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip =
            client_ip(peer, forwarded, &self.trusted_proxies).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        req.extensions_mut().insert(ClientIp(ip));
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
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some("1.2.3.4"), &[]),
            Some(ip("10.0.0.2"))
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
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.1.5")), None, &trusted),
            Some(ip("10.0.1.5"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.1.5")), Some("not-an-ip"), &trusted),
            Some(ip("10.0.1.5"))
        );
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
        let off = KeyedLimit::<String>::new(None);
        for _ in 0..1000 {
            off.check(&"alice".to_owned()).unwrap();
        }
    }
}
