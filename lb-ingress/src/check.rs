//! `lb-ingress check`: read the cluster state once (a manifests directory or the API
//! server), build the configuration exactly as `run` would, and print the routes it
//! makes and every problem found, then exit: 0 when there is none, 1 otherwise (as
//! `nginx -t` gates a configuration before it is served).
use std::fmt::Write as _;
use std::time::Duration;

use lb_k8s::{KindSet, Source, Store};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::proxy::balance::EndpointRegistry;
use crate::proxy::ratelimit::LimitRegistry;
use crate::routes::PathKind;
use crate::source::names::{self, Names};
use crate::source::{DEFAULT_BACKEND, KINDS, Scope, build};

/// What a check found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The IngressClass name and controller checked for.
    pub class: String,
    pub controller: String,
    pub routes: Vec<Route>,
    /// Host names with a certificate (by SNI).
    pub tls_hosts: usize,
    /// Every problem, each naming its object and the reason.
    pub problems: Vec<String>,
}

/// One routing rule as the proxy would serve it.
#[derive(Debug, Serialize)]
pub struct Route {
    /// As written (empty: any host).
    pub host: String,
    /// As written, or `defaultBackend`.
    pub path: String,
    /// `Exact`, `Prefix`, `Regex`, or empty for the default backend.
    pub path_type: String,
    /// `namespace/name` of the Ingress that won the rule.
    pub ingress: String,
    /// `namespace/name:port` of the Service.
    pub service: String,
    /// The ready endpoints requests go to (none: 503).
    pub endpoints: Vec<String>,
    /// A canary's Service for this rule, if any.
    pub canary: Option<String>,
}

/// Reads `source` until every kind the ingress needs has been listed (within
/// `timeout`), then builds the configuration for `scope`. ExternalName Services' host
/// names are resolved once, as the server would.
pub async fn check(
    source: Box<dyn Source>,
    scope: &Scope,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(source.run(KindSet::of(&KINDS), tx));
    let mut store = Store::new();
    let mut problems: Vec<String> = Vec::new();
    let listed = tokio::time::timeout(timeout, async {
        while !store.is_synced(&KINDS) {
            let Some(event) = rx.recv().await else {
                return false;
            };
            problems.extend(store.apply(event).errors.iter().map(ToString::to_string));
        }
        true
    })
    .await;
    task.abort();
    match listed {
        Ok(true) => {}
        Ok(false) => match task.await {
            Ok(Err(e)) => return Err(e.context("reading the cluster state")),
            _ => anyhow::bail!("the source ended before listing everything"),
        },
        Err(_) => anyhow::bail!(
            "the cluster state was not listed within {} s (is the API server reachable, \
             and may this account list Ingresses, IngressClasses, Services, \
             EndpointSlices and Secrets?)",
            timeout.as_secs()
        ),
    }

    let registry = EndpointRegistry::new(Duration::ZERO);
    let limits = LimitRegistry::default();
    let mut names = Names::default();
    let mut built = build(&store, scope, &registry, &limits, &names);
    let asked = names.want(built.hosts.clone());
    if !asked.is_empty() {
        for name in asked {
            let answer = names::resolve(&name).await;
            names.answer(name, answer);
        }
        built = build(&store, scope, &registry, &limits, &names);
    }
    problems.extend(built.problems);
    problems.sort();
    problems.dedup();

    let mut routes: Vec<Route> = (built.config.routes.rules())
        .map(|(path, t)| Route {
            host: t.host.clone(),
            path: t.path.clone(),
            path_type: match path.map(crate::routes::PathRule::kind) {
                None => String::new(),
                Some(PathKind::Exact) => "Exact".into(),
                Some(PathKind::Prefix) => "Prefix".into(),
                Some(PathKind::Regex) => "Regex".into(),
            },
            ingress: t.ingress.clone(),
            service: t.service.clone(),
            endpoints: (t.pool.endpoints().iter())
                .map(|e| e.addr.to_string())
                .collect(),
            canary: t.canary.as_ref().map(|c| c.target.service.clone()),
        })
        .collect();
    // Hosts in order, the default backend last; a host's paths as written.
    routes.sort_by(|a, b| {
        let key = |r: &Route| (r.path == DEFAULT_BACKEND, r.host.is_empty());
        (key(a), &a.host, &a.path).cmp(&(key(b), &b.host, &b.path))
    });
    Ok(Report {
        class: scope.class.name.clone(),
        controller: scope.class.controller.clone(),
        routes,
        tls_hosts: built.certs.len(),
        problems,
    })
}

impl Report {
    /// The report as a table, then the problems.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "IngressClass {} (and classes of controller {}): {} route(s), {} TLS host(s)",
            self.class,
            self.controller,
            self.routes.len(),
            self.tls_hosts
        );
        let rows: Vec<[String; 5]> = (self.routes.iter())
            .map(|r| {
                let host = if r.host.is_empty() { "*" } else { &r.host };
                let path = if r.path_type.is_empty() {
                    r.path.clone()
                } else {
                    format!("{} ({})", r.path, r.path_type)
                };
                let service = match &r.canary {
                    Some(c) => format!("{} (canary {c})", r.service),
                    None => r.service.clone(),
                };
                let endpoints = if r.endpoints.is_empty() {
                    "none: 503".to_owned()
                } else {
                    r.endpoints.join(",")
                };
                [host.to_owned(), path, service, endpoints, r.ingress.clone()]
            })
            .collect();
        let header = ["HOST", "PATH", "SERVICE", "ENDPOINTS", "INGRESS"].map(str::to_owned);
        let mut widths = [0usize; 5];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if self.problems.is_empty() {
            let _ = writeln!(out, "no problems");
        } else {
            let _ = writeln!(out, "{} problem(s):", self.problems.len());
            for p in &self.problems {
                let _ = writeln!(out, "  {p}");
            }
        }
        out
    }
}
