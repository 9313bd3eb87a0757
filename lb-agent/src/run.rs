//! `lb-agent run`: load and attach the programs, then keep the maps equal to the
//! cluster's Services until SIGTERM/SIGINT. Maps and links stay pinned when the agent
//! exits (or is killed), so traffic keeps flowing; a new agent picks them up.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::StatusCode;
use lb_k8s::{KindSet, SourceConfig};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::cli::RunArgs;
use crate::maps::kernel::KernelMaps;
use crate::metrics::{AgentMetrics, DataplaneCollector, KindLabel, MapLabel};
use crate::model::ModelOptions;
use crate::plan::Limits;
use crate::reconcile::{KINDS, Reconciler};

type Shared = Arc<Mutex<Reconciler<KernelMaps>>>;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::preflight::check_root()?;
    if !lb_common::maglev::is_prime(args.maglev_size) {
        anyhow::bail!(
            "--maglev-size {} is not prime: pick a prime such as 251, 1021 or 16381",
            args.maglev_size
        );
    }
    let dataplane = crate::dataplane::start(&args).context("loading the data plane")?;
    let writer = KernelMaps::open_pinned(&args.bpffs)?;
    let limits = Limits {
        max_services: args.max_services,
        max_backends: args.max_backends,
        maglev_size: args.maglev_size,
    };
    let opts = ModelOptions {
        service_proxy_name: args.service_proxy_name.clone(),
    };
    let mut reconciler = Reconciler::new(&args.node_name, opts, limits, writer)?;
    reconciler.set_netns_cookie(crate::preflight::netns_cookie().unwrap_or(0));
    reconciler.set_retire_grace(Duration::from_secs(args.removed_endpoint_grace_s));
    let shared: Shared = Arc::new(Mutex::new(reconciler));

    // Metrics on their own address: only /metrics there.
    let mut registry = Registry::default();
    let metrics = AgentMetrics::new(&mut registry, &args.node_name);
    registry.register_collector(Box::new(DataplaneCollector {
        reconciler: Arc::clone(&shared),
        conntrack_capacity: u64::from(args.conntrack_size),
    }));
    let registry = Arc::new(registry);
    let (metrics_addr, _m) = crate::http::serve(args.metrics_addr, move |path| {
        if path != "/metrics" {
            return (
                StatusCode::NOT_FOUND,
                "text/plain",
                "only /metrics is served here\n".into(),
            );
        }
        let mut body = String::new();
        match prometheus_client::encoding::text::encode(&mut body, &registry) {
            Ok(()) => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        }
    })
    .await?;
    let health_shared = Arc::clone(&shared);
    let (health_addr, _h) = crate::http::serve(args.health_addr, move |path| match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let synced = health_shared.lock().is_ok_and(|r| r.is_synced());
            if synced {
                (StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for the first sync\n".into(),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
    .await?;
    info!(%metrics_addr, %health_addr, node = %args.node_name, "agent serving");

    // Pod interfaces present now are attached before the first sync (so "ready" means
    // pods are served); ones appearing later are attached as they come.
    let mut dataplane = dataplane;
    let mut attached = BTreeSet::new();
    attach_new_pod_ifaces(&mut dataplane, &args.pod_iface_prefix, &mut attached);
    let pods = tokio::spawn(watch_pod_ifaces(
        dataplane,
        args.pod_iface_prefix.clone(),
        attached,
    ));

    let source = match (&args.manifests, &args.kubeconfig) {
        (Some(dir), _) => SourceConfig::Manifests {
            dir: dir.clone(),
            interval: Duration::from_millis(args.manifests_interval_ms),
        },
        (None, kc) => SourceConfig::Kube {
            kubeconfig: kc.clone(),
            node: Some(args.node_name.clone()),
            namespace: None,
        },
    }
    .into_source();
    let (tx, mut rx) = mpsc::channel(1024);
    let mut source_task = tokio::spawn(source.run(KindSet::of(&KINDS), tx));
    let mut health_checks = crate::healthcheck::HealthCheckServers::default();

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut expire = tokio::time::interval(Duration::from_secs(1));
    expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = expire.tick() => {
                let mut r = shared.lock().map_err(|_| anyhow::anyhow!("reconciler lock poisoned"))?;
                let outcome = r.expire_retired();
                metrics.map_write_errors.inc_by(outcome.map_errors as u64);
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let received = Instant::now();
                let (outcome, hcs) = {
                    let mut r = shared.lock().map_err(|_| anyhow::anyhow!("reconciler lock poisoned"))?;
                    let o = r.handle(ev);
                    (o, r.health_checks().clone())
                };
                let elapsed = received.elapsed().as_secs_f64();
                metrics.events.inc();
                if outcome.first_sync {
                    metrics.sync_duration.observe(elapsed);
                    metrics.synced.set(1);
                    info!(elapsed_ms = elapsed * 1000.0, "first sync programmed; ready");
                } else if outcome.ops_applied > 0 {
                    metrics.programming_duration.observe(elapsed);
                }
                for (kind, _, _) in &outcome.problems {
                    metrics.objects_skipped.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
                }
                for map in &outcome.map_full {
                    metrics.map_capacity_errors.get_or_create(&MapLabel { map: (*map).to_owned() }).inc();
                }
                metrics.map_write_errors.inc_by(outcome.map_errors as u64);
                health_checks.update(&hcs).await;
            }
            done = &mut source_task => {
                match done {
                    Ok(Ok(())) => warn!("source ended"),
                    Ok(Err(e)) => error!(error = %format!("{e:#}"), "source failed"),
                    Err(e) => error!(error = %e, "source task panicked"),
                }
                pods.abort();
                anyhow::bail!("the cluster state source stopped; the maps keep serving their last state");
            }
            _ = tokio::signal::ctrl_c() => { info!("interrupted; leaving maps and programs in place"); break; }
            _ = sigterm.recv() => { info!("terminated; leaving maps and programs in place"); break; }
        }
    }
    pods.abort();
    Ok(())
}

/// Attaches the pod programs to interfaces with `prefix` that appeared since the last call.
fn attach_new_pod_ifaces(
    dataplane: &mut crate::dataplane::Dataplane,
    prefix: &str,
    attached: &mut BTreeSet<String>,
) {
    // /proc/self/net/dev lists the interfaces of this process's network namespace;
    // /sys/class/net would show the namespace of whoever mounted sysfs, which is not ours
    // when the agent only entered the node's network namespace.
    let present: BTreeSet<String> = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    for iface in present.difference(attached).cloned().collect::<Vec<_>>() {
        match dataplane.attach_pod(&iface) {
            Ok(()) => {
                info!(%iface, "pod interface attached");
                attached.insert(iface);
            }
            Err(e) => {
                warn!(%iface, error = %format!("{e:#}"), "cannot attach pod interface; will retry");
            }
        }
    }
    attached.retain(|i| present.contains(i));
}

/// Keeps attaching pod interfaces as they appear.
async fn watch_pod_ifaces(
    mut dataplane: crate::dataplane::Dataplane,
    prefix: String,
    mut attached: BTreeSet<String>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        attach_new_pod_ifaces(&mut dataplane, &prefix, &mut attached);
    }
}
