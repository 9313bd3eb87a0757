//! The control loop: source events into a [`Store`], the store into a configuration,
//! the configuration swapped in.
//!
//! Swap order: certificates first, then routes and endpoints (one `ArcSwap` for both,
//! so a route never points at another generation's endpoints). Certificates go first so
//! that a host whose route appears in this change already has its certificate when
//! the first request for it is routed; a host removed in this change may keep its
//! certificate for the instant between the two swaps, which serves nothing new.
//! Requests in flight keep the configuration they loaded (an `Arc`), so a swap never
//! fails them; the old configuration is freed when the last of them finishes.
//!
//! ExternalName Services' host names are resolved here, beside the build (see
//! [`super::names`]): an answer that changes what a name stands for builds again.
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use lb_k8s::{KindSet, Source, Store};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::names::{self, Names};
use super::{Config, KINDS, build};
use crate::metrics::{Metrics, ResultLabel};
use crate::proxy::balance::EndpointRegistry;
use crate::proxy::ratelimit::LimitRegistry;
use crate::tls::CertResolver;

/// What the loop writes to.
pub struct Sinks {
    pub config: Arc<ArcSwap<Config>>,
    pub certs: Arc<CertResolver>,
    pub registry: Arc<EndpointRegistry>,
    /// Rate limiters, kept across swaps like endpoint state.
    pub limits: Arc<LimitRegistry>,
    pub metrics: Arc<Metrics>,
    /// The generation now serving (0: not synced yet).
    pub generation: watch::Sender<u64>,
}

/// Runs until the source ends (an error) or `sinks.generation` has no receiver.
pub async fn run(source: Box<dyn Source>, scope: super::Scope, sinks: Sinks) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel(64);
    let mut source_task = tokio::spawn(source.run(KindSet::of(&KINDS), tx));
    let mut store = Store::new();
    let mut generation = 0u64;
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut names = Names::default();
    let (answers_tx, mut answers) = mpsc::channel::<(String, Result<Vec<IpAddr>, String>)>(64);
    let ask = |asked: Vec<String>| {
        for name in asked {
            let tx = answers_tx.clone();
            tokio::spawn(async move {
                let answer = names::resolve(&name).await;
                // The loop may have ended meanwhile.
                let _ = tx.send((name, answer)).await;
            });
        }
    };
    let mut refresh =
        tokio::time::interval_at(tokio::time::Instant::now() + names::REFRESH, names::REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut errors = Vec::new();
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else {
                    break;
                };
                errors = store.apply(event).errors;
                // Coalesce a burst of events into one rebuild.
                while let Ok(event) = rx.try_recv() {
                    errors.extend(store.apply(event).errors);
                }
            }
            done = &mut source_task => {
                return match done {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.into()),
                };
            }
            Some((name, answer)) = answers.recv() => {
                if let Err(e) = &answer {
                    warn!(host = %name, error = %e, "cannot resolve an ExternalName Service's host");
                }
                if !names.answer(name, answer) {
                    continue;
                }
            }
            _ = refresh.tick() => {
                ask(names.refresh());
                continue;
            }
        }
        if !store.is_synced(&KINDS) {
            continue;
        }
        let built = build(&store, &scope, &sinks.registry, &sinks.limits, &names);
        ask(names.want(built.hosts));
        let mut problems: BTreeSet<String> = built.problems.into_iter().collect();
        problems.extend(errors.iter().map(ToString::to_string));
        for p in problems.difference(&reported) {
            warn!(problem = %p, "configuration problem (the rest still applies)");
        }
        let result = if problems.is_empty() {
            "success"
        } else {
            "error"
        };
        sinks.metrics.config_problems.set(problems.len() as i64);
        reported = problems;
        generation += 1;
        let routes = built.config.routes.len();
        let certs = built.certs.len();
        // Swap order: certificates, then routes (see the module documentation).
        sinks.certs.swap(built.certs);
        sinks.config.store(Arc::new(Config {
            routes: built.config.routes,
            generation,
        }));
        sinks.registry.prune();
        sinks.limits.prune();
        sinks
            .metrics
            .config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        if generation == 1 {
            info!(routes, certs, "first configuration is serving");
        } else {
            tracing::debug!(generation, routes, certs, "configuration swapped");
        }
        if sinks.generation.send(generation).is_err() {
            break;
        }
    }
    source_task.abort();
    Ok(())
}
