//! A retry budget (Finagle's and linkerd's idea): retries may add at most a fixed ratio
//! of the request rate, plus a small reserve, so that retries cannot turn an overloaded
//! upstream into a dead one.
use std::sync::atomic::{AtomicI64, Ordering};

/// Tokens in thousandths: each request deposits `ratio` of a retry, each retry
/// withdraws one; the balance is capped, and starts at the reserve.
#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    deposit: i64,
    cap: i64,
}

impl RetryBudget {
    /// `ratio`: retries per request allowed in the long run (0.2 = 20%); `reserve`:
    /// retries allowed before any request has deposited.
    pub fn new(ratio: f64, reserve: u32) -> Self {
        let cap = i64::from(reserve.max(1)) * 1000;
        RetryBudget {
            balance: AtomicI64::new(cap),
            deposit: (ratio.clamp(0.0, 1.0) * 1000.0) as i64,
            cap,
        }
    }

    pub fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < self.cap).then(|| (b + self.deposit).min(self.cap))
            });
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_then_ratio() {
        let b = RetryBudget::new(0.2, 2);
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
        for _ in 0..4 {
            b.deposit();
        }
        assert!(!b.withdraw(), "4 requests at 20% are 0.8 retries");
        b.deposit();
        assert!(b.withdraw());
        for _ in 0..100 {
            b.deposit();
        }
        assert!(
            b.withdraw() && b.withdraw() && !b.withdraw(),
            "capped at the reserve"
        );
    }
}
