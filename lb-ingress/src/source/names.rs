//! Host names of ExternalName Services, resolved beside the configuration build.
//!
//! The build is synchronous and only reads [`Names`]: a name already answered gets its
//! addresses, a name not answered yet gets none (its routes answer 503 for that moment)
//! and is asked for. The control loop ([`super::watch`]) resolves the names asked for in
//! the background with the system resolver (`/etc/hosts`, then DNS, as nsswitch.conf
//! says; in a cluster, the pod's resolv.conf), builds again when an answer changes what
//! a name stands for, and asks again every [`REFRESH`] (ingress-nginx resolves with
//! nginx's `resolver ... valid=30s`). A name that stops resolving keeps the addresses it
//! last had, and the failure is reported; a name never resolved has none.
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

/// How often every name in use is resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one resolution may take before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What the names in use stand for.
#[derive(Debug, Default)]
pub struct Names {
    /// The names the last build used.
    wanted: BTreeSet<String>,
    answers: HashMap<String, Answer>,
    /// Asked for, no answer yet.
    pending: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Answer {
    /// Sorted, without duplicates; the last good answer's when `error` is set.
    addrs: Vec<IpAddr>,
    /// Why the last resolution failed.
    error: Option<String>,
}

impl Names {
    /// What `host` stands for: None while it has never been answered, else its
    /// addresses and, when the last resolution failed, why.
    pub fn get(&self, host: &str) -> Option<(&[IpAddr], Option<&str>)> {
        let a = self.answers.get(host)?;
        Some((&a.addrs, a.error.as_deref()))
    }

    /// The names a build used: answers for other names are forgotten, and the names
    /// to resolve now (used, never answered, not asked for yet) are returned.
    pub fn want(&mut self, used: BTreeSet<String>) -> Vec<String> {
        self.answers.retain(|name, _| used.contains(name));
        self.wanted = used;
        let ask: Vec<String> = (self.wanted.iter())
            .filter(|n| !self.answers.contains_key(*n) && !self.pending.contains(*n))
            .cloned()
            .collect();
        self.pending.extend(ask.iter().cloned());
        ask
    }

    /// Every name in use not already being resolved: what to ask for again.
    pub fn refresh(&mut self) -> Vec<String> {
        let ask: Vec<String> = (self.wanted.iter())
            .filter(|n| !self.pending.contains(*n))
            .cloned()
            .collect();
        self.pending.extend(ask.iter().cloned());
        ask
    }

    /// Takes the answer for `name`; true when it changes what the name stands for (or
    /// why it fails), so that the configuration must be built again.
    pub fn answer(&mut self, name: String, result: Result<Vec<IpAddr>, String>) -> bool {
        self.pending.remove(&name);
        if !self.wanted.contains(&name) {
            return false;
        }
        let last = self.answers.get(&name);
        let new = match result {
            Ok(mut addrs) if !addrs.is_empty() => {
                addrs.sort_unstable();
                addrs.dedup();
                Answer { addrs, error: None }
            }
            Ok(_) => Answer {
                addrs: last.map(|a| a.addrs.clone()).unwrap_or_default(),
                error: Some("no address".into()),
            },
            Err(e) => Answer {
                addrs: last.map(|a| a.addrs.clone()).unwrap_or_default(),
                error: Some(e),
            },
        };
        if last == Some(&new) {
            return false;
        }
        self.answers.insert(name, new);
        true
    }
}

/// Resolves `name` with the system resolver (tokio's `lookup_host`: getaddrinfo on the
/// blocking pool), within [`TIMEOUT`].
pub async fn resolve(name: &str) -> Result<Vec<IpAddr>, String> {
    match tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(addrs)) => Ok(addrs.map(|a| a.ip()).collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn used(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn names_are_asked_for_once_answered_refreshed_and_forgotten() {
        let mut n = Names::default();
        assert_eq!(
            n.want(used(&["a.example", "b.example"])),
            ["a.example", "b.example"]
        );
        assert_eq!(n.get("a.example"), None, "not answered yet");
        // Asked for already: not again, by a build or by a refresh.
        assert!(n.want(used(&["a.example", "b.example"])).is_empty());
        assert!(n.refresh().is_empty());

        let a = vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")];
        assert!(n.answer("a.example".into(), Ok(a)));
        assert_eq!(
            n.get("a.example"),
            Some((&[ip("10.0.0.1"), ip("10.0.0.2")][..], None)),
            "sorted, without duplicates"
        );
        assert!(n.answer("b.example".into(), Err("no such host".into())));
        assert_eq!(n.get("b.example"), Some((&[][..], Some("no such host"))));

        // The same answer again changes nothing; a failure keeps the last addresses.
        assert_eq!(n.refresh(), ["a.example", "b.example"]);
        assert!(!n.answer("a.example".into(), Ok(vec![ip("10.0.0.1"), ip("10.0.0.2")])));
        assert!(!n.answer("b.example".into(), Err("no such host".into())));
        n.refresh();
        assert!(n.answer("a.example".into(), Err("timed out".into())));
        assert_eq!(
            n.get("a.example"),
            Some((&[ip("10.0.0.1"), ip("10.0.0.2")][..], Some("timed out")))
        );
        n.refresh();
        assert!(
            n.answer("a.example".into(), Ok(vec![])),
            "no address is a failure"
        );
        assert_eq!(n.get("a.example").unwrap().1, Some("no address"));

        // A name no longer used is forgotten, and a late answer for it is dropped.
        assert!(n.want(used(&["a.example"])).is_empty());
        assert_eq!(n.get("b.example"), None);
        n.refresh();
        assert!(!n.answer("b.example".into(), Ok(vec![ip("10.0.0.9")])));
        assert_eq!(n.get("b.example"), None);
    }

    #[tokio::test]
    async fn localhost_resolves_from_the_hosts_file() {
        let addrs = resolve("localhost").await.expect("localhost resolves");
        assert!(addrs.iter().all(IpAddr::is_loopback), "{addrs:?}");
        assert!(!addrs.is_empty());
    }
}
