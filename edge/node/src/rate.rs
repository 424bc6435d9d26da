//! What one client may cost: request rates per client address, per visitor and per API key (GCRA through
//! `governor`), answered with 429 and `Retry-After` past them.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;

/// A sustained rate and the burst allowed above it; `per_second: 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    fn quota(self) -> Option<Quota> {
        let per_second = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(self.per_second)).unwrap_or(per_second);
        Some(Quota::per_second(per_second).allow_burst(burst))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Every request to `/v1/recommend`, `/v1/events` and `/v1/session` that does not carry a valid API key, per
    /// client address (IPv6 per /64: one subscriber's block).
    pub per_address: Rate,
    /// Requests with a visitor token, per visitor.
    pub per_visitor: Rate,
    /// Requests with an API key, per key (instead of the per-address limit).
    pub per_api_key: Rate,
    /// Peers (a CDN, a load balancer) whose `X-Forwarded-For` names the client: the last address in it that is
    /// not itself a trusted proxy. From any other peer the header is ignored.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_address: Rate::new(50, 100),
            per_visitor: Rate::new(10, 30),
            per_api_key: Rate::new(2_000, 4_000),
            trusted_proxies: Vec::new(),
        }
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Who was over their limit, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: &'static str,
    pub retry_after: Duration,
}

pub struct ClientLimits {
    per_address: Option<Keyed<IpAddr>>,
    per_visitor: Option<Keyed<String>>,
    per_api_key: Option<Keyed<String>>,
    trusted_proxies: Vec<IpAddr>,
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits").finish_non_exhaustive()
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<Keyed<K>>,
    key: &K,
    limit: &'static str,
) -> Result<(), Limited> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| Limited {
        limit,
        retry_after: not_until.wait_time_from(limiter.clock().now()),
    })
}

impl ClientLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            per_address: config.per_address.quota().map(RateLimiter::keyed),
            per_visitor: config.per_visitor.quota().map(RateLimiter::keyed),
            per_api_key: config.per_api_key.quota().map(RateLimiter::keyed),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest hop of
    /// `X-Forwarded-For` (every such header, in order) that is not itself a trusted proxy. A hop that does not read
    /// as an address ends the walk at the proxy that wrote it: what lies beyond it came from the client.
    pub fn client_address<'a>(
        &self,
        peer: Option<SocketAddr>,
        forwarded_for: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    ) -> Option<IpAddr> {
        let mut nearest = peer?.ip().to_canonical();
        if !self.trusted(nearest) {
            return Some(nearest);
        }
        let hops = forwarded_for.rev().flat_map(|v| {
            v.to_str()
                .unwrap_or("unreadable")
                .rsplit(',')
                .map(str::trim)
        });
        for hop in hops {
            match parse_hop(hop) {
                Some(address) if self.trusted(address) => nearest = address,
                Some(address) => return Some(address),
                None => return Some(nearest),
            }
        }
        Some(nearest)
    }

    fn trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|p| p.to_canonical() == address)
    }

    pub fn check_address(&self, address: Option<IpAddr>) -> Result<(), Limited> {
        match address {
            Some(address) => check(&self.per_address, &bucket(address), "per_address"),
            None => Ok(()),
        }
    }

    pub fn check_caller(&self, caller: &Caller) -> Result<(), Limited> {
        match caller {
            Caller::Visitor { subject, .. } => check(&self.per_visitor, subject, "per_visitor"),
            Caller::Service { key_id, .. } => check(&self.per_api_key, key_id, "per_api_key"),
            Caller::Nobody | Caller::Unchecked => Ok(()),
        }
    }

    /// Forgets clients whose limits have fully refilled, so the tables hold only recent clients.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.per_address {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in [&self.per_visitor, &self.per_api_key].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Clients with a live entry in any table (for the metrics).
    pub fn tracked(&self) -> usize {
        self.per_address.as_ref().map_or(0, |l| l.len())
            + self.per_visitor.as_ref().map_or(0, |l| l.len())
            + self.per_api_key.as_ref().map_or(0, |l| l.len())
    }
}

/// One `X-Forwarded-For` hop: an address, possibly with a port (`192.0.2.1:443`, `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let bare = match hop.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None if hop.matches(':').count() == 1 => hop.split(':').next()?,
        None => hop,
    };
    bare.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// The key an address is limited under: itself for IPv4, its /64 for IPv6 (a subscriber has a whole /64).
fn bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: Rate) -> ClientLimits {
        ClientLimits::new(&RateLimitConfig {
            per_address,
            trusted_proxies: vec!["10.0.0.1".parse().expect("ip")],
            ..RateLimitConfig::default()
        })
    }

    #[test]
    fn a_burst_is_limited_per_address_and_others_are_not() {
        let limits = limits(Rate::new(1, 3));
        let a = Some("192.0.2.1".parse().expect("ip"));
        let b = Some("192.0.2.2".parse().expect("ip"));
        for _ in 0..3 {
            assert!(limits.check_address(a).is_ok());
        }
        let refused = limits.check_address(a).expect_err("over the burst");
        assert_eq!(refused.limit, "per_address");
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1)
        );
        assert!(limits.check_address(b).is_ok(), "another client is served");
        // Two addresses of one IPv6 /64 share a limit.
        let v6 = |s: &str| Some(s.parse().expect("ip"));
        for _ in 0..3 {
            assert!(limits.check_address(v6("2001:db8::1")).is_ok());
        }
        assert!(limits.check_address(v6("2001:db8::ffff")).is_err());
        assert!(limits.check_address(v6("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn no_limit_when_the_rate_is_zero() {
        let limits = limits(Rate::new(0, 0));
        let a = Some("192.0.2.1".parse().expect("ip"));
        for _ in 0..1000 {
            assert!(limits.check_address(a).is_ok());
        }
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let limits = limits(Rate::new(1, 1));
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let proxy = Some("10.0.0.1:443".parse().expect("addr"));
        let client = |peer, headers: &[&'static str]| {
            let values: Vec<HeaderValue> = headers
                .iter()
                .map(|h| HeaderValue::from_static(h))
                .collect();
            limits.client_address(peer, values.iter())
        };
        assert_eq!(
            client(proxy, &["203.0.113.9, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        let direct = Some("192.0.2.5:443".parse().expect("addr"));
        assert_eq!(
            client(direct, &["198.51.100.7"]),
            ip("192.0.2.5"),
            "a spoofed header is ignored"
        );
        // A proxy that adds a header line of its own: the client's own line is further away.
        assert_eq!(
            client(proxy, &["6.6.6.6", "198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Ports are stripped; a hop that is not an address stops the walk at the proxy that wrote it.
        assert_eq!(
            client(proxy, &["6.6.6.6, 198.51.100.7:5555"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(proxy, &["6.6.6.6, [2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        assert_eq!(client(proxy, &["6.6.6.6, unknown"]), ip("10.0.0.1"));
        assert_eq!(client(proxy, &[]), ip("10.0.0.1"));
        // The proxy as an IPv4-mapped IPv6 peer (a dual-stack listener) is still the proxy.
        let mapped = Some("[::ffff:10.0.0.1]:443".parse().expect("addr"));
        assert_eq!(client(mapped, &["198.51.100.7"]), ip("198.51.100.7"));
    }
}
