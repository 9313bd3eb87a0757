//! Per-client request rate limits (the `limit-rps` / `limit-rpm` annotations), by GCRA
//! (the generic cell rate algorithm, a token bucket kept as one timestamp per client):
//! a client may send `burst` requests at once and then one per `interval`.
//!
//! State lives in a [`LimitRegistry`] that outlives configuration swaps, so a reload does
//! not hand every client a fresh burst; a limiter is shared by the rules of one Ingress
//! and replaced only when its rate or burst changes. Memory is bounded: each limiter
//! tracks at most [`MAX_CLIENTS`] addresses; when full, clients whose bucket has refilled
//! are forgotten first, and a client that still finds no room is let through uncounted
//! (and logged once per limiter) rather than refused.
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::shared::SharedMap;

/// Addresses one limiter remembers, at most (about 40 bytes each).
pub const MAX_CLIENTS: usize = 1 << 16;
const SHARDS: usize = 16;

/// A rate: `burst` requests at once, then one per `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub interval: Duration,
    pub burst: u32,
}

impl Rate {
    /// `n` requests per `per`, with a burst of `n * multiplier` (ingress-nginx's
    /// `limit-burst-multiplier`, default 5).
    pub fn per(n: u32, per: Duration, multiplier: u32) -> Rate {
        Rate {
            interval: per / n.max(1),
            burst: n.saturating_mul(multiplier).max(1),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Per client: the theoretical arrival time of its next request, in nanoseconds
    /// since the limiter's epoch.
    clients: HashMap<IpAddr, u64>,
    /// A full shard is swept for refilled buckets no sooner than this (nanoseconds since
    /// the epoch), so that a flood of new addresses costs one sweep per refill time, not
    /// one per request.
    next_sweep: u64,
}

/// One Ingress's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    shards: [Mutex<Shard>; SHARDS],
    overflow_logged: AtomicBool,
}

impl RateLimiter {
    fn new(rate: Rate) -> RateLimiter {
        RateLimiter {
            rate,
            epoch: Instant::now(),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: Default::default(),
            overflow_logged: AtomicBool::new(false),
        }
    }

    /// Counts a request from `client` at `now`: `Err(wait)` when it is over the rate
    /// (`wait`: until one more would be allowed).
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let client = bucket_of(client);
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let interval = self.rate.interval.as_nanos() as u64;
        // A full bucket: `burst` requests may arrive at once.
        let tolerance = interval.saturating_mul(u64::from(self.rate.burst - 1));
        let index = (self.hasher.hash_one(client) as usize) % SHARDS;
        let mut shard = self.shards[index].lock().expect("rate limiter poisoned");
        let Shard {
            clients,
            next_sweep,
        } = &mut *shard;
        let tat = match clients.get(&client) {
            Some(&tat) => tat.max(now_ns),
            None => {
                if clients.len() >= MAX_CLIENTS / SHARDS && now_ns >= *next_sweep {
                    // Forget the clients whose bucket is full again.
                    clients.retain(|_, tat| *tat > now_ns);
                    *next_sweep = now_ns + interval.saturating_add(tolerance);
                }
                if clients.len() >= MAX_CLIENTS / SHARDS {
                    if !self.overflow_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            max = MAX_CLIENTS,
                            "rate limiter full: requests of new clients pass uncounted"
                        );
                    }
                    return Ok(());
                }
                now_ns
            }
        };
        if tat - now_ns > tolerance {
            return Err(Duration::from_nanos(tat - now_ns - tolerance));
        }
        clients.insert(client, tat + interval);
        Ok(())
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("rate limiter poisoned").clients.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bucket a client address counts in: an IPv4 address (also as IPv4-mapped IPv6)
/// by itself, an IPv6 address by its /64, which is what one subscriber gets: otherwise
/// one host could take a fresh bucket per address.
fn bucket_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Limiters by Ingress and rate, kept across configuration swaps while some
/// configuration uses them.
#[derive(Debug, Default)]
pub struct LimitRegistry {
    limiters: SharedMap<(String, Rate), RateLimiter>,
    concurrency: SharedMap<(String, u32), ConcurrencyLimiter>,
}

impl LimitRegistry {
    /// The limiter of `ingress` (`namespace/name`) at `rate`, created on first use.
    pub fn limiter(&self, ingress: &str, rate: Rate) -> Arc<RateLimiter> {
        self.limiters
            .get_or_insert_with((ingress.to_owned(), rate), || RateLimiter::new(rate))
    }

    /// The concurrency limiter of `ingress` at `max` requests per client, created on
    /// first use (kept across swaps, so that requests in flight still count).
    pub fn concurrency(&self, ingress: &str, max: u32) -> Arc<ConcurrencyLimiter> {
        self.concurrency
            .get_or_insert_with((ingress.to_owned(), max), || ConcurrencyLimiter {
                max,
                hasher: std::collections::hash_map::RandomState::new(),
                shards: Default::default(),
            })
    }

    /// Forgets limiters no configuration uses any more.
    pub fn prune(&self) {
        self.limiters.prune();
        self.concurrency.prune();
    }
}

/// Requests in flight per client (`limit-connections`): at most `max` at once. Only
/// clients with requests in flight are remembered, so memory follows the load.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    max: u32,
    hasher: std::collections::hash_map::RandomState,
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl ConcurrencyLimiter {
    /// A place for one more request of `client`, held until the slot is dropped; None
    /// when it has `max` in flight already.
    pub fn acquire(self: &Arc<Self>, client: IpAddr) -> Option<ConcurrencySlot> {
        let client = bucket_of(client);
        let mut shard = self.shard(client);
        let n = shard.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConcurrencySlot {
            limiter: Arc::clone(self),
            client,
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    fn shard(&self, client: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let index = (self.hasher.hash_one(client) as usize) % SHARDS;
        self.shards[index]
            .lock()
            .expect("concurrency limiter poisoned")
    }
}

/// One request's place in a [`ConcurrencyLimiter`].
#[derive(Debug)]
pub struct ConcurrencySlot {
    limiter: Arc<ConcurrencyLimiter>,
    client: IpAddr,
}

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        let mut shard = self.limiter.shard(self.client);
        if let Some(n) = shard.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let l = RateLimiter::new(Rate::per(10, Duration::from_secs(1), 2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = l.epoch + Duration::from_secs(1);
        for i in 0..20 {
            assert!(l.check(ip, t0).is_ok(), "request {i} of the burst");
        }
        let wait = l.check(ip, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another client is not affected.
        assert!(l.check("192.0.2.2".parse().unwrap(), t0).is_ok());
        // One more per 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check(ip, t1).is_ok());
        assert!(l.check(ip, t1).is_err());
        // Idle long enough, the whole burst is back.
        let t2 = t1 + Duration::from_secs(3);
        for _ in 0..20 {
            assert!(l.check(ip, t2).is_ok());
        }
        assert!(l.check(ip, t2).is_err());
    }

    #[test]
    fn concurrency_slots_are_given_back() {
        let registry = LimitRegistry::default();
        let l = registry.concurrency("default/a", 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (first, second) = (l.acquire(ip).unwrap(), l.acquire(ip).unwrap());
        assert!(l.acquire(ip).is_none());
        assert!(l.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        let third = l.acquire(ip).unwrap();
        drop((second, third));
        assert!(
            l.shards.iter().all(|s| s.lock().unwrap().is_empty()),
            "nothing kept"
        );
        assert!(Arc::ptr_eq(&l, &registry.concurrency("default/a", 2)));
    }

    #[test]
    fn an_ipv6_subscriber_is_one_client() {
        let l = RateLimiter::new(Rate::per(1, Duration::from_secs(1), 2));
        let t0 = l.epoch;
        assert!(l.check("2001:db8:1:2::1".parse().unwrap(), t0).is_ok());
        assert!(l.check("2001:db8:1:2:ffff::9".parse().unwrap(), t0).is_ok());
        assert!(l.check("2001:db8:1:2::77".parse().unwrap(), t0).is_err());
        assert!(l.check("2001:db8:1:3::1".parse().unwrap(), t0).is_ok());
        // An IPv4-mapped address is its IPv4 address.
        assert!(l.check("192.0.2.1".parse().unwrap(), t0).is_ok());
        assert!(l.check("::ffff:192.0.2.1".parse().unwrap(), t0).is_ok());
        assert!(l.check("192.0.2.1".parse().unwrap(), t0).is_err());
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_are_forgotten_first() {
        let l = RateLimiter::new(Rate::per(1, Duration::from_secs(1), 1));
        let t0 = l.epoch;
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..(MAX_CLIENTS as u32 * 2) {
            let _ = l.check(ip(i), t0);
        }
        assert!(l.len() <= MAX_CLIENTS);
        // A second later every bucket has refilled: new clients find room again, and are
        // counted (a second request at once is refused).
        let t1 = t0 + Duration::from_secs(2);
        let newcomer = ip(10_000_000);
        assert!(l.check(newcomer, t1).is_ok());
        assert!(l.check(newcomer, t1).is_err());
        assert!(l.len() < MAX_CLIENTS);
    }

    #[test]
    fn limiters_survive_while_used_and_change_with_their_rate() {
        let r = LimitRegistry::default();
        let rate = Rate::per(5, Duration::from_secs(1), 5);
        let a = r.limiter("default/a", rate);
        assert!(Arc::ptr_eq(&a, &r.limiter("default/a", rate)));
        assert!(!Arc::ptr_eq(&a, &r.limiter("default/b", rate)));
        let faster = Rate::per(50, Duration::from_secs(1), 5);
        assert!(!Arc::ptr_eq(&a, &r.limiter("default/a", faster)));
        drop(a);
        r.prune();
        assert_eq!(r.limiters.len(), 0);
    }
}
