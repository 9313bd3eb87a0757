//! Where a backend is chosen, among the ready endpoints of a Service port that are not
//! ejected: by default power of two choices over outstanding requests; per Ingress
//! (`load-balance`), round robin or power of two choices over peak EWMA latency times
//! outstanding requests ([`Balance`]).
//!
//! Endpoint state (requests in flight, ejection) lives in an [`EndpointRegistry`] keyed
//! by address and outlives configuration swaps: a reload that keeps an endpoint keeps
//! its counters, so balancing and passive health are not reset by unrelated changes.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::shared::SharedMap;
use super::upstream::{ConnPool, UpstreamProtocol};

/// One upstream address (a pod IP and port).
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port`, as put in the upstream request URI.
    pub authority: String,
    /// What a session-affinity cookie names this endpoint by ([`affinity_key`]).
    pub affinity: u64,
    in_flight: AtomicUsize,
    /// Milliseconds since the registry's epoch until which the endpoint is ejected; 0
    /// when it is not.
    ejected_until_ms: AtomicU64,
    /// Peak EWMA of the response latency, for [`Balance::Ewma`] routes only.
    latency: PeakEwma,
    /// Idle keep-alive connections to this address (closed when the endpoint is
    /// forgotten).
    pub conns: ConnPool,
}

impl Endpoint {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A response (or a timeout) from this endpoint took `rtt`: for [`Balance::Ewma`].
    pub fn observe_latency(&self, registry: &EndpointRegistry, rtt: Duration) {
        self.latency.observe(registry.now_ms(), rtt);
    }

    /// What [`Balance::Ewma`] minimizes: the latency estimate times the requests in
    /// flight plus one (Finagle's and linkerd's peak EWMA cost). An endpoint not yet
    /// measured costs 0, so that it is measured soon (as ingress-nginx's `ewma`).
    fn ewma_cost(&self) -> f64 {
        self.latency.estimate_ns() * (in_flight_f64(self) + 1.0)
    }
}

/// How a route picks among its endpoints: the `load-balance` annotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Power of two choices over requests in flight (no annotation).
    #[default]
    LeastRequest,
    /// `round_robin`: each endpoint in turn (ingress-nginx's default).
    RoundRobin,
    /// `ewma`: power of two choices over peak EWMA latency x (requests in flight + 1).
    Ewma,
}

/// Decay time of [`PeakEwma`]: a sample's weight falls by e every 10 s (ingress-nginx's
/// `DECAY_TIME` in balancer/ewma.lua).
const EWMA_DECAY_MS: f64 = 10_000.0;

/// A latency estimate that jumps to a higher sample at once and decays towards lower
/// ones by the time since the last sample (peak EWMA: a slowing endpoint is avoided at
/// once, a recovering one is trusted gradually). Threads update it without a lock: two
/// samples at the same instant may leave one of them out, which only weakens the
/// estimate's memory, never makes it wrong.
#[derive(Debug, Default)]
struct PeakEwma {
    /// f64 nanoseconds, as bits; 0 until the first sample.
    ns: AtomicU64,
    /// The last sample's time (ms since the registry's epoch).
    at_ms: AtomicU64,
}

impl PeakEwma {
    fn observe(&self, now_ms: u64, rtt: Duration) {
        let sample = rtt.as_secs_f64() * 1e9;
        let old = f64::from_bits(self.ns.load(Ordering::Relaxed));
        let new = if sample > old {
            sample
        } else {
            let elapsed = now_ms.saturating_sub(self.at_ms.load(Ordering::Relaxed));
            let keep = (-Duration::from_millis(elapsed).as_secs_f64() * 1e3 / EWMA_DECAY_MS).exp();
            old * keep + sample * (1.0 - keep)
        };
        self.ns.store(new.to_bits(), Ordering::Relaxed);
        self.at_ms.store(now_ms, Ordering::Relaxed);
    }

    fn estimate_ns(&self) -> f64 {
        f64::from_bits(self.ns.load(Ordering::Relaxed))
    }
}

/// Holds one request's place in an endpoint's outstanding count, until dropped (at the
/// end of the response body, so long downloads count as load).
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ready endpoints of one Service port.
#[derive(Debug, Default)]
pub struct Pool {
    endpoints: Vec<Arc<Endpoint>>,
    /// The next turn for [`Balance::RoundRobin`].
    turn: AtomicUsize,
}

impl Pool {
    /// A pool of `endpoints`, kept in address order: the same order in every replica,
    /// which `upstream-hash-by-subset`'s sets are cut from.
    pub fn new(mut endpoints: Vec<Arc<Endpoint>>) -> Pool {
        endpoints.sort_by_key(|e| e.addr);
        Pool {
            endpoints,
            turn: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Picks an endpoint not in `tried`: the less loaded of two chosen at random among
    /// those not ejected. When every remaining endpoint is ejected, ejection is ignored
    /// (Envoy's panic threshold at 100%): better to try a suspect endpoint than to fail
    /// for sure.
    pub fn pick(
        &self,
        registry: &EndpointRegistry,
        tried: &[SocketAddr],
        how: Balance,
    ) -> Option<InFlight> {
        // The clock is read only if some endpoint has been ejected at some point.
        let now = std::cell::OnceCell::new();
        let usable = |e: &Arc<Endpoint>, allow_ejected: bool| {
            let until = e.ejected_until_ms.load(Ordering::Relaxed);
            !tried.contains(&e.addr)
                && (allow_ejected || until == 0 || until <= *now.get_or_init(|| registry.now_ms()))
        };
        let choose = |allow_ejected: bool| {
            let usable = |e: &Arc<Endpoint>| usable(e, allow_ejected);
            match how {
                Balance::LeastRequest => self.choose(usable, in_flight_f64),
                Balance::Ewma => self.choose(usable, Endpoint::ewma_cost),
                Balance::RoundRobin => self.next_in_turn(usable),
            }
        };
        let chosen = choose(false).or_else(|| choose(true))?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(chosen)))
    }

    /// The endpoint a session-affinity cookie names (by [`affinity_key`]), if it is
    /// still in the pool, not in `tried` and not ejected.
    pub fn pick_sticky(
        &self,
        registry: &EndpointRegistry,
        key: u64,
        tried: &[SocketAddr],
    ) -> Option<InFlight> {
        let chosen = self.endpoints.iter().find(|e| e.affinity == key)?;
        if tried.contains(&chosen.addr) || registry.is_ejected(chosen) {
            return None;
        }
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(chosen)))
    }

    /// The endpoint a request key (`upstream-hash-by`) maps to: rendezvous hashing, the
    /// endpoint with the highest `mix(key, endpoint)` among those not in `tried` and not
    /// ejected (all of them when every one is ejected). The same key goes to the same
    /// endpoint in every replica; when an endpoint leaves, only its keys move, each to
    /// its next choice, which is also where a retry goes.
    ///
    /// With `subset` (`upstream-hash-by-subset-size`), the key picks a set of that many
    /// endpoints instead, and a request goes to one of the set at random (ingress-nginx's
    /// `chashsubset`): the endpoints in address order are cut into consecutive sets, the
    /// last filled up from the first endpoints; the key's set is the one it ranks first
    /// by rendezvous hashing over set numbers, and when none of that set is usable, the
    /// next one it ranks.
    pub fn pick_hashed(
        &self,
        registry: &EndpointRegistry,
        key: u64,
        tried: &[SocketAddr],
        subset: Option<u32>,
    ) -> Option<InFlight> {
        if let Some(size) = subset {
            return self.pick_in_subset(registry, key, tried, size as usize);
        }
        let best = |allow_ejected: bool| {
            self.endpoints
                .iter()
                .filter(|e| !tried.contains(&e.addr))
                .filter(|e| allow_ejected || !registry.is_ejected(e))
                .max_by_key(|e| (mix(key ^ e.affinity), e.addr))
        };
        let chosen = best(false).or_else(|| best(true))?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(chosen)))
    }

    /// [`Pool::pick_hashed`] with sets of `size` endpoints.
    fn pick_in_subset(
        &self,
        registry: &EndpointRegistry,
        key: u64,
        tried: &[SocketAddr],
        size: usize,
    ) -> Option<InFlight> {
        let n = self.endpoints.len();
        let size = size.max(1);
        let mut sets: Vec<usize> = (0..n.div_ceil(size)).collect();
        sets.sort_by_key(|&set| std::cmp::Reverse(mix(key ^ mix(set as u64 + 1))));
        let chosen = [false, true].into_iter().find_map(|allow_ejected| {
            sets.iter().find_map(|&set| {
                let members: Vec<&Arc<Endpoint>> = (0..size)
                    .map(|k| &self.endpoints[(set * size + k) % n])
                    .filter(|e| !tried.contains(&e.addr))
                    .filter(|e| allow_ejected || !registry.is_ejected(e))
                    .collect();
                (!members.is_empty()).then(|| members[fastrand::usize(..members.len())])
            })
        })?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(chosen)))
    }

    /// The next usable endpoint from this pool's turn on (one turn taken per pick).
    fn next_in_turn(&self, usable: impl Fn(&Arc<Endpoint>) -> bool) -> Option<&Arc<Endpoint>> {
        let len = self.endpoints.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| &self.endpoints[(start + k) % len])
            .find(|e| usable(e))
    }

    /// Power of two choices: the lower `cost` of two usable endpoints chosen at random.
    fn choose(
        &self,
        usable: impl Fn(&Arc<Endpoint>) -> bool,
        cost: impl Fn(&Endpoint) -> f64,
    ) -> Option<&Arc<Endpoint>> {
        match self.endpoints.as_slice() {
            [] => return None,
            [only] => return Some(only).filter(|e| usable(e)),
            _ => {}
        }
        // Fast path: two distinct random picks, both usable.
        let (first, second) = two_distinct(self.endpoints.len());
        let (a, b) = (&self.endpoints[first], &self.endpoints[second]);
        if usable(a) && usable(b) {
            return Some(cheaper(a, b, &cost));
        }
        // Some are excluded: choose among the usable ones.
        let candidates: Vec<&Arc<Endpoint>> = self.endpoints.iter().filter(|e| usable(e)).collect();
        match candidates.as_slice() {
            [] => None,
            [only] => Some(only),
            _ => {
                let (first, second) = two_distinct(candidates.len());
                Some(cheaper(candidates[first], candidates[second], &cost))
            }
        }
    }
}

/// The name of `addr` in session-affinity cookies: FNV-1a (64 bits) of `ip:port`, the
/// same in every replica and across restarts, and not the pod's address in clear.
pub fn affinity_key(addr: SocketAddr) -> u64 {
    addr.to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Requests in flight, as a cost (clamped at u32::MAX, which no count reaches).
fn in_flight_f64(e: &Endpoint) -> f64 {
    f64::from(u32::try_from(e.in_flight()).unwrap_or(u32::MAX))
}

/// `b` if it costs less than `a`, else `a`.
fn cheaper<'a>(
    a: &'a Arc<Endpoint>,
    b: &'a Arc<Endpoint>,
    cost: &impl Fn(&Endpoint) -> f64,
) -> &'a Arc<Endpoint> {
    if cost(b) < cost(a) { b } else { a }
}

/// Two distinct indices below `len` (which is at least 2), uniformly.
fn two_distinct(len: usize) -> (usize, usize) {
    let first = fastrand::usize(..len);
    let second = (first + 1 + fastrand::usize(..len - 1)) % len;
    (first, second)
}

/// An endpoint's address, the protocol it is spoken to in, and the TLS verification
/// (`proxy-ssl-verify`, by its id) its connections were made under.
type EndpointKey = (SocketAddr, UpstreamProtocol, Option<u64>);

/// Shared endpoint state, and passive health: an endpoint that fails to connect is
/// ejected for `eject_for` (outlier detection on connect failures, as Envoy's
/// `consecutive_local_origin_failure` with a threshold of one: a refused or timed-out
/// connect is a strong signal, and a pod that is going away refuses connections).
#[derive(Debug)]
pub struct EndpointRegistry {
    epoch: Instant,
    eject_for: Duration,
    /// By address and protocol: connections to one address in two protocols (two
    /// Ingresses disagreeing on a port's `backend-protocol`) never share a pool.
    states: SharedMap<EndpointKey, Endpoint>,
}

impl EndpointRegistry {
    pub fn new(eject_for: Duration) -> Self {
        EndpointRegistry {
            epoch: Instant::now(),
            eject_for,
            states: SharedMap::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "not ejected" (0) is always in the past.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The shared state for `addr` spoken to in `protocol` (TLS verified as `verified`
    /// identifies, if at all), created on first use.
    pub fn endpoint(
        &self,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        verified: Option<u64>,
    ) -> Arc<Endpoint> {
        self.states
            .get_or_insert_with((addr, protocol, verified), || Endpoint {
                addr,
                authority: addr.to_string(),
                affinity: affinity_key(addr),
                in_flight: AtomicUsize::new(0),
                ejected_until_ms: AtomicU64::new(0),
                latency: PeakEwma::default(),
                conns: ConnPool::default(),
            })
    }

    /// Forgets endpoints that no configuration refers to any more.
    pub fn prune(&self) {
        self.states.prune();
    }

    /// Calls `f` on every endpoint some configuration still refers to.
    pub fn for_each(&self, mut f: impl FnMut(&Endpoint)) {
        for e in &self.states.live() {
            f(e);
        }
    }

    pub fn eject(&self, endpoint: &Endpoint) {
        let until = self.now_ms() + self.eject_for.as_millis() as u64;
        endpoint.ejected_until_ms.store(until, Ordering::Relaxed);
    }

    pub fn is_ejected(&self, endpoint: &Endpoint) -> bool {
        endpoint.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Endpoints currently ejected (for the `ejected_endpoints` gauge).
    pub fn ejected(&self) -> usize {
        self.states
            .live()
            .iter()
            .filter(|e| self.is_ejected(e))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn pool(reg: &EndpointRegistry, n: u16) -> Pool {
        Pool::new(
            (0..n)
                .map(|i| {
                    reg.endpoint(
                        SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                        UpstreamProtocol::Http1,
                        None,
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 2);
        let busy = p.pick(&reg, &[], Balance::LeastRequest).unwrap();
        // With two endpoints both are always the two choices: the idle one wins.
        for _ in 0..20 {
            let next = p.pick(&reg, &[], Balance::LeastRequest).unwrap();
            assert_ne!(next.endpoint().addr, busy.endpoint().addr);
        }
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_skips_tried_and_ejected() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 3);
        let addr = |k: usize| p.endpoints()[k].addr;
        let order: Vec<SocketAddr> = (0..6)
            .map(|_| {
                // Held while the next is picked: load does not matter to round robin.
                let g = p.pick(&reg, &[], Balance::RoundRobin).unwrap();
                g.endpoint().addr
            })
            .collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2].map(addr));
        // Turn 6 is endpoint 0: tried, so 1; then turn 7 is 1 again, ejected, so 2.
        let g = p.pick(&reg, &[addr(0)], Balance::RoundRobin).unwrap();
        assert_eq!(g.endpoint().addr, addr(1));
        reg.eject(&p.endpoints()[1]);
        let g = p.pick(&reg, &[], Balance::RoundRobin).unwrap();
        assert_eq!(g.endpoint().addr, addr(2));
    }

    #[test]
    fn ewma_prefers_the_faster_endpoint_until_its_queue_outweighs_it() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 2);
        let (fast, slow) = (&p.endpoints()[0], &p.endpoints()[1]);
        fast.observe_latency(&reg, Duration::from_millis(2));
        slow.observe_latency(&reg, Duration::from_millis(49));
        // Two endpoints: both are always the two choices. 2 ms x (n + 1) stays below
        // 49 ms x 1 up to 23 requests in flight on the fast one.
        let held: Vec<InFlight> = (0..24)
            .map(|_| p.pick(&reg, &[], Balance::Ewma).unwrap())
            .collect();
        assert!(held.iter().all(|g| g.endpoint().addr == fast.addr));
        let next = p.pick(&reg, &[], Balance::Ewma).unwrap();
        assert_eq!(next.endpoint().addr, slow.addr, "2 ms x 25 > 49 ms x 1");
        // Least-request balancing would have alternated from the start.
        drop((held, next));
        let a = p.pick(&reg, &[], Balance::LeastRequest).unwrap();
        let b = p.pick(&reg, &[], Balance::LeastRequest).unwrap();
        assert_ne!(a.endpoint().addr, b.endpoint().addr);
    }

    #[test]
    fn peak_ewma_jumps_up_at_once_and_decays_down_with_time() {
        let e = PeakEwma::default();
        let ms = |n: u64| Duration::from_millis(n);
        e.observe(1_000, ms(10));
        assert!(
            (e.estimate_ns() - 10e6).abs() < 1.0,
            "first sample taken as is"
        );
        e.observe(1_000, ms(100));
        assert!(
            (e.estimate_ns() - 100e6).abs() < 1.0,
            "a higher sample at once"
        );
        // A lower sample at the same instant counts for nothing; after one decay time
        // (10 s) the old estimate keeps 1/e of its weight.
        e.observe(1_000, ms(10));
        assert!((e.estimate_ns() - 100e6).abs() < 1.0);
        e.observe(11_000, ms(10));
        let expected = 100e6 / std::f64::consts::E + 10e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!(
            (e.estimate_ns() - expected).abs() < 1e3,
            "{}",
            e.estimate_ns()
        );
    }

    #[test]
    fn in_flight_is_released_on_drop_and_state_is_shared() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 1);
        let g = p.pick(&reg, &[], Balance::LeastRequest).unwrap();
        let same = reg.endpoint(g.endpoint().addr, UpstreamProtocol::Http1, None);
        assert_eq!(same.in_flight(), 1);
        drop(g);
        assert_eq!(same.in_flight(), 0);
    }

    #[test]
    fn ejected_endpoints_are_avoided_unless_all_are_ejected() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 3);
        reg.eject(&p.endpoints()[0]);
        assert_eq!(reg.ejected(), 1);
        for _ in 0..50 {
            let g = p.pick(&reg, &[], Balance::LeastRequest).unwrap();
            assert_ne!(g.endpoint().addr, p.endpoints()[0].addr);
        }
        let tried = [p.endpoints()[1].addr, p.endpoints()[2].addr];
        let g = p.pick(&reg, &tried, Balance::LeastRequest).unwrap();
        assert_eq!(g.endpoint().addr, p.endpoints()[0].addr);
        let all: Vec<_> = p.endpoints().iter().map(|e| e.addr).collect();
        assert!(p.pick(&reg, &all, Balance::LeastRequest).is_none());
    }

    #[test]
    fn hashed_keys_stay_put_and_move_only_off_a_leaving_endpoint() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 4);
        let on = |p: &Pool, key: u64| p.pick_hashed(&reg, key, &[], None).unwrap().endpoint().addr;
        let keys: Vec<u64> = (0..400u64).map(|k| mix(k + 1)).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|&k| on(&p, k)).collect();
        assert!(
            keys.iter().zip(&before).all(|(&k, a)| on(&p, k) == *a),
            "stable"
        );
        // Spread: every endpoint gets a fair share of 400 keys (100 expected).
        for e in p.endpoints() {
            let n = before.iter().filter(|a| **a == e.addr).count();
            assert!((50..=150).contains(&n), "{} has {n}", e.addr);
        }
        // Endpoint 0 leaves: its keys move, nobody else's do.
        let gone = p.endpoints()[0].addr;
        let rest = Pool::new(p.endpoints()[1..].to_vec());
        for (&k, a) in keys.iter().zip(&before) {
            let now = on(&rest, k);
            if *a == gone {
                assert_ne!(now, gone);
            } else {
                assert_eq!(now, *a);
            }
        }
        // A retry (its first choice tried) and an ejected first choice go to the same
        // next choice.
        let key = keys[0];
        let first = on(&p, key);
        let second = p
            .pick_hashed(&reg, key, &[first], None)
            .unwrap()
            .endpoint()
            .addr;
        assert_ne!(second, first);
        let ejected = p.endpoints().iter().find(|e| e.addr == first).unwrap();
        reg.eject(ejected);
        assert_eq!(on(&p, key), second);
        let all: Vec<_> = p.endpoints().iter().map(|e| e.addr).collect();
        assert!(p.pick_hashed(&reg, key, &all, None).is_none());
    }

    #[test]
    fn hashed_subsets_keep_a_key_on_its_set_and_spread_within_it() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 5);
        let addrs: Vec<SocketAddr> = p.endpoints().iter().map(|e| e.addr).collect();
        // Sets of 2 from 5 in address order: {0, 1}, {2, 3}, {4, 0}.
        let sets = [[0, 1], [2, 3], [4, 0]].map(|s| s.map(|i| addrs[i]));
        let on = |key: u64, tried: &[SocketAddr]| {
            p.pick_hashed(&reg, key, tried, Some(2))
                .unwrap()
                .endpoint()
                .addr
        };
        let mut sets_used = BTreeSet::new();
        for key in (0..60u64).map(|k| mix(k + 7)) {
            let seen: BTreeSet<SocketAddr> = (0..40).map(|_| on(key, &[])).collect();
            let set = sets
                .iter()
                .position(|s| s.iter().copied().collect::<BTreeSet<_>>() == seen);
            let set = set.unwrap_or_else(|| panic!("key {key:x} went to {seen:?}"));
            sets_used.insert(set);
            // Its set tried: the next set it ranks.
            let next = on(key, &sets[set]);
            assert!(!sets[set].contains(&next));
        }
        assert_eq!(sets_used.len(), 3, "60 keys over 3 sets");
        // A set larger than the pool is the whole pool.
        let all: BTreeSet<SocketAddr> = (0..200)
            .map(|_| {
                p.pick_hashed(&reg, 1, &[], Some(9))
                    .unwrap()
                    .endpoint()
                    .addr
            })
            .collect();
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn ejection_expires() {
        let reg = EndpointRegistry::new(Duration::from_millis(1));
        let p = pool(&reg, 1);
        reg.eject(&p.endpoints()[0]);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(reg.ejected(), 0);
    }
}
