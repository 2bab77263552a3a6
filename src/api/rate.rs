//! Per-token rate limits on the `/v1` API: a token bucket for each caller
//! (the admin, the merchant, each partner), `api.rate_burst` requests at
//! once and `api.rate_limit` a second after that; past it, 429 with
//! `Retry-After`. Only proven callers have a bucket (a request without a
//! valid token is refused first), so the map is bounded by the partners.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::auth::Caller;

pub struct RateLimits {
    per_second: f64,
    burst: f64,
    buckets: DashMap<Caller, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    pub fn new(per_second: f64, burst: u32) -> RateLimits {
        RateLimits {
            per_second,
            burst: f64::from(burst),
            buckets: DashMap::new(),
        }
    }

    /// Takes one request from the caller's bucket; when it is empty,
    /// answers how long until it holds one again.
    pub fn take(&self, caller: &Caller, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.buckets.entry(caller.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let earned = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.min(86_400.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PartnerId;

    #[test]
    fn a_burst_then_the_rate_each_caller_apart() {
        let limits = RateLimits::new(2.0, 3);
        let acme = Caller::Partner(PartnerId::parse("acme").unwrap());
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limits.take(&acme, start), Ok(()));
        }
        let wait = limits.take(&acme, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(limits.take(&Caller::Admin, start), Ok(()), "its own bucket");
        let later = start + Duration::from_millis(500);
        assert_eq!(limits.take(&acme, later), Ok(()), "refilled at the rate");
        assert!(limits.take(&acme, later).is_err());
    }
}
