//! Where a backend is chosen: power of two choices over outstanding requests, among the
//! ready endpoints of a Service port that are not ejected.
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
    /// Idle keep-alive connections to this address (closed when the endpoint is
    /// forgotten).
    pub conns: ConnPool,
}

impl Endpoint {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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
}

impl Pool {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Pool {
        Pool { endpoints }
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
    pub fn pick(&self, registry: &EndpointRegistry, tried: &[SocketAddr]) -> Option<InFlight> {
        // The clock is read only if some endpoint has been ejected at some point.
        let now = std::cell::OnceCell::new();
        let usable = |e: &Arc<Endpoint>, allow_ejected: bool| {
            let until = e.ejected_until_ms.load(Ordering::Relaxed);
            !tried.contains(&e.addr)
                && (allow_ejected || until == 0 || until <= *now.get_or_init(|| registry.now_ms()))
        };
        let chosen = self
            .choose(|e| usable(e, false))
            .or_else(|| self.choose(|e| usable(e, true)))?;
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
    pub fn pick_hashed(
        &self,
        registry: &EndpointRegistry,
        key: u64,
        tried: &[SocketAddr],
    ) -> Option<InFlight> {
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

    fn choose(&self, usable: impl Fn(&Arc<Endpoint>) -> bool) -> Option<&Arc<Endpoint>> {
        match self.endpoints.as_slice() {
            [] => return None,
            [only] => return Some(only).filter(|e| usable(e)),
            _ => {}
        }
        // Fast path: two distinct random picks, both usable.
        let (first, second) = two_distinct(self.endpoints.len());
        let (a, b) = (&self.endpoints[first], &self.endpoints[second]);
        if usable(a) && usable(b) {
            return Some(less_loaded(a, b));
        }
        // Some are excluded: choose among the usable ones.
        let candidates: Vec<&Arc<Endpoint>> = self.endpoints.iter().filter(|e| usable(e)).collect();
        match candidates.as_slice() {
            [] => None,
            [only] => Some(only),
            _ => {
                let (first, second) = two_distinct(candidates.len());
                Some(less_loaded(candidates[first], candidates[second]))
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

/// Two distinct indices below `len` (which is at least 2), uniformly.
fn two_distinct(len: usize) -> (usize, usize) {
    let first = fastrand::usize(..len);
    let second = (first + 1 + fastrand::usize(..len - 1)) % len;
    (first, second)
}

fn less_loaded<'a>(a: &'a Arc<Endpoint>, b: &'a Arc<Endpoint>) -> &'a Arc<Endpoint> {
    if b.in_flight() < a.in_flight() { b } else { a }
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
        let busy = p.pick(&reg, &[]).unwrap();
        // With two endpoints both are always the two choices: the idle one wins.
        for _ in 0..20 {
            let next = p.pick(&reg, &[]).unwrap();
            assert_ne!(next.endpoint().addr, busy.endpoint().addr);
        }
    }

    #[test]
    fn in_flight_is_released_on_drop_and_state_is_shared() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 1);
        let g = p.pick(&reg, &[]).unwrap();
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
            let g = p.pick(&reg, &[]).unwrap();
            assert_ne!(g.endpoint().addr, p.endpoints()[0].addr);
        }
        let tried = [p.endpoints()[1].addr, p.endpoints()[2].addr];
        let g = p.pick(&reg, &tried).unwrap();
        assert_eq!(g.endpoint().addr, p.endpoints()[0].addr);
        let all: Vec<_> = p.endpoints().iter().map(|e| e.addr).collect();
        assert!(p.pick(&reg, &all).is_none());
    }

    #[test]
    fn hashed_keys_stay_put_and_move_only_off_a_leaving_endpoint() {
        let reg = EndpointRegistry::new(Duration::from_secs(10));
        let p = pool(&reg, 4);
        let on = |p: &Pool, key: u64| p.pick_hashed(&reg, key, &[]).unwrap().endpoint().addr;
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
        let second = p.pick_hashed(&reg, key, &[first]).unwrap().endpoint().addr;
        assert_ne!(second, first);
        let ejected = p.endpoints().iter().find(|e| e.addr == first).unwrap();
        reg.eject(ejected);
        assert_eq!(on(&p, key), second);
        let all: Vec<_> = p.endpoints().iter().map(|e| e.addr).collect();
        assert!(p.pick_hashed(&reg, key, &all).is_none());
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
