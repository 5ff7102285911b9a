//! Per-shard write quotas as token buckets (the original allows 1 MB/s and
//! 1000 records/s per shard). Time is an input.

/// A token bucket refilled continuously at `rate` per second, holding at
/// most one second's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    pub fn new(rate: u64, now_ms: i64) -> Self {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes `n` tokens if they are all there.
    pub fn try_take(&mut self, n: u64, now_ms: i64) -> bool {
        self.refill(now_ms);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Both limits of one shard; a zero rate disables that limit.
#[derive(Debug, Clone)]
pub struct ShardQuota {
    bytes: Option<TokenBucket>,
    records: Option<TokenBucket>,
}

impl ShardQuota {
    pub fn new(bytes_per_s: u64, records_per_s: u64, now_ms: i64) -> Self {
        ShardQuota {
            bytes: (bytes_per_s > 0).then(|| TokenBucket::new(bytes_per_s, now_ms)),
            records: (records_per_s > 0).then(|| TokenBucket::new(records_per_s, now_ms)),
        }
    }

    /// Admits one record of `size` bytes, or refuses it without charging.
    pub fn admit(&mut self, size: u64, now_ms: i64) -> bool {
        let bytes_ok = self.bytes.as_mut().is_none_or(|b| {
            b.refill(now_ms);
            b.tokens >= size as f64
        });
        let records_ok = self.records.as_mut().is_none_or(|r| {
            r.refill(now_ms);
            r.tokens >= 1.0
        });
        if bytes_ok && records_ok {
            if let Some(b) = &mut self.bytes {
                b.try_take(size, now_ms);
            }
            if let Some(r) = &mut self.records {
                r.try_take(1, now_ms);
            }
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_refuse_past_the_rate_and_refill_over_time() {
        let mut q = ShardQuota::new(1000, 3, 0);
        assert!(q.admit(100, 0) && q.admit(100, 0) && q.admit(100, 0));
        assert!(
            !q.admit(1, 0),
            "the fourth record in the same second is refused"
        );
        assert!(q.admit(1, 400), "a third of a second refills one record");
        let mut bytes = ShardQuota::new(1000, 0, 0);
        assert!(bytes.admit(900, 0));
        assert!(!bytes.admit(200, 0));
        assert!(bytes.admit(200, 200));
        let mut off = ShardQuota::new(0, 0, 0);
        assert!((0..10_000).all(|_| off.admit(1 << 20, 0)));
    }
}
