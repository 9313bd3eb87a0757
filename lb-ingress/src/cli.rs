//! Command line: `lb-ingress run` and `lb-ingress check`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use lb_k8s::SourceConfig;

use crate::proxy::ProxyOptions;
use crate::proxy::headers::TrustedProxies;
use crate::server::ServerConfig;
use crate::source::NamespacedName;
use crate::status::{PublishService, StatusConfig};

#[derive(Parser, Debug)]
#[command(
    name = "lb-ingress",
    version,
    about = "HTTP ingress proxy for Kubernetes Ingress objects"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LB_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the Ingresses of one IngressClass.
    Run(Box<RunArgs>),
    /// Read the cluster state once, print the routes it makes and every problem found,
    /// and exit: 0 without problems, 1 with (a gate before serving, like `nginx -t`).
    Check(Box<CheckArgs>),
}

/// Where the cluster state comes from (`run` and `check`).
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifests", "kubeconfig", "in_cluster"])))]
pub struct SourceArgs {
    /// Read cluster state from a directory of manifests (YAML or JSON), watched for changes.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Read cluster state from the API server with this kubeconfig.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Read cluster state from the API server with the in-cluster service account.
    #[arg(long)]
    pub in_cluster: bool,
}

impl SourceArgs {
    /// The source, a manifests directory polled every `interval`; from the API server,
    /// the namespaced kinds of `namespace` only, when given.
    pub fn source(&self, interval: Duration, namespace: Option<String>) -> SourceConfig {
        match &self.manifests {
            Some(dir) => SourceConfig::Manifests {
                dir: dir.clone(),
                interval,
            },
            None => SourceConfig::Kube {
                kubeconfig: self.kubeconfig.clone(),
                node: None,
                namespace,
            },
        }
    }
}

/// Which Ingresses are ours, the certificate for names without one and the Service for
/// requests no rule takes (`run` and `check`).
#[derive(clap::Args, Debug)]
pub struct ScopeArgs {
    /// Serve Ingresses with this spec.ingressClassName (and those without a class when
    /// the IngressClass of this name is marked default).
    #[arg(long, default_value = "lb")]
    pub ingress_class: String,
    /// Also serve the Ingresses of every IngressClass whose spec.controller is this.
    #[arg(long, default_value = crate::source::class::CONTROLLER)]
    pub controller_name: String,
    /// A kubernetes.io/tls Secret served to TLS clients whose name has no certificate of
    /// its own, and to the hosts of spec.tls entries without a secretName.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub default_ssl_certificate: Option<NamespacedName>,
    /// The Service (its first port) that takes the requests no Ingress rule or
    /// defaultBackend takes, such as a custom 404 page (without it: 404).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub default_backend_service: Option<NamespacedName>,
    /// Serve the Ingresses of this namespace only, and watch Services, EndpointSlices,
    /// Ingresses, Secrets and ConfigMaps there only (a Role in it gives all the access
    /// they need).
    #[arg(long, value_name = "NAMESPACE")]
    pub watch_namespace: Option<String>,
}

impl ScopeArgs {
    /// The scope; an error when a flag names an object outside `--watch-namespace`,
    /// which would never be seen.
    pub fn scope(&self) -> anyhow::Result<crate::source::Scope> {
        if let Some(ns) = &self.watch_namespace {
            for (flag, named) in [
                ("--default-ssl-certificate", &self.default_ssl_certificate),
                ("--default-backend-service", &self.default_backend_service),
            ] {
                if let Some(n) = named.as_ref().filter(|n| n.namespace != *ns) {
                    anyhow::bail!(
                        "{flag} {n} is outside --watch-namespace {ns}, which is all that is \
                         watched: name an object in {ns}, or drop --watch-namespace"
                    );
                }
            }
        }
        Ok(crate::source::Scope {
            class: crate::source::class::ClassId {
                name: self.ingress_class.clone(),
                controller: self.controller_name.clone(),
            },
            default_certificate: self.default_ssl_certificate.clone(),
            default_backend: self.default_backend_service.clone(),
            namespace: self.watch_namespace.clone(),
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// How long to wait for the cluster state, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Plain HTTP listener (HTTP/1.1 and HTTP/2 with prior knowledge).
    #[arg(long, default_value = "0.0.0.0:80")]
    pub listen: SocketAddr,
    /// HTTPS listener (certificates of the Ingresses' spec.tls Secrets, by SNI).
    #[arg(long)]
    pub listen_tls: Option<SocketAddr>,
    /// Prometheus metrics (only /metrics is served here). Port 0 picks a free port.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Trust X-Forwarded-* and Forwarded from these networks (repeatable, CIDR).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Answer plain-HTTP requests for hosts that have a certificate with 308 to HTTPS.
    #[arg(long)]
    pub redirect_https: bool,
    /// Time a client has to send a request head, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Close client connections idle for this long, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Close an ssl-passthrough connection when neither side has sent anything for this
    /// long, in milliseconds (nginx's stream `proxy_timeout` default, 10 minutes).
    #[arg(long, default_value_t = 600_000)]
    pub passthrough_idle_timeout_ms: u64,
    /// Upstream connect timeout, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub connect_timeout_ms: u64,
    /// Close upstream connections unused this long, in milliseconds.
    #[arg(long, default_value_t = 90_000)]
    pub upstream_idle_timeout_ms: u64,
    /// Time an upstream has to send its response head once the request has gone, in
    /// milliseconds (then 504).
    #[arg(long, default_value_t = 60_000)]
    pub upstream_timeout_ms: u64,
    /// Longest stretch without progress while a request body goes upstream, in
    /// milliseconds: the upstream not taking it gets 504, a client not sending it 408.
    #[arg(long, default_value_t = 60_000)]
    pub upstream_send_timeout_ms: u64,
    /// Request head size limit in bytes (then 431).
    #[arg(long, default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Request body size limit in bytes (then 413).
    #[arg(long, default_value_t = 1 << 30)]
    pub max_body_bytes: u64,
    /// Client connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_connections: usize,
    /// How long an endpoint that failed to connect gets no requests, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub eject_ms: u64,
    /// Retries per request at most (connect failures, or idempotent requests whose body
    /// was not sent).
    #[arg(long, default_value_t = 2)]
    pub max_retries: u32,
    /// Do not write one access-log line per request.
    #[arg(long)]
    pub no_access_log: bool,
    /// How often the manifests directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub manifests_interval_ms: u64,
    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_s: u64,
    /// Write these addresses (IPs or host names, comma-separated or repeated) into
    /// status.loadBalancer of the Ingresses served; wins over --publish-service.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub publish_status_address: Vec<String>,
    /// Write the load-balancer addresses (else the externalIPs) of this Service, the
    /// ingress's own, into status.loadBalancer of the Ingresses served.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub publish_service: Option<PublishService>,
    /// When the last replica stops (no other pod with its labels running), clear the
    /// address it wrote into the Ingress status.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub update_status_on_shutdown: bool,
    /// This replica's pod, to tell whether it is the last (the Deployment sets it from
    /// the downward API).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
    /// This replica's namespace.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,
}

impl RunArgs {
    /// The server's configuration; an error for flags that contradict each other.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let interval = Duration::from_millis(self.manifests_interval_ms);
        let namespace = self.scope.watch_namespace.clone();
        if let (Some(ns), Some(service)) = (&namespace, &self.publish_service)
            && service.namespace != *ns
        {
            anyhow::bail!(
                "--publish-service {service} is outside --watch-namespace {ns}, which is all \
                 that is watched: name a Service in {ns}, or use --publish-status-address"
            );
        }
        let mut config = ServerConfig::new(self.source.source(interval, namespace), self.listen);
        config.listen_tls = self.listen_tls;
        config.metrics_addr = self.metrics_addr;
        config.scope = self.scope.scope()?;
        config.shutdown_grace = Duration::from_secs(self.shutdown_grace_s);
        config.status = StatusConfig {
            addresses: self
                .publish_status_address
                .iter()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
            service: self.publish_service.clone(),
            clear_on_shutdown: self.update_status_on_shutdown,
            pod: (self.pod_namespace.clone())
                .zip(self.pod_name.clone())
                .map(|(namespace, name)| NamespacedName { namespace, name }),
            ..StatusConfig::default()
        };
        config.options = ProxyOptions {
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            passthrough_idle_timeout: Duration::from_millis(self.passthrough_idle_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            upstream_idle_timeout: Duration::from_millis(self.upstream_idle_timeout_ms),
            response_timeout: Duration::from_millis(self.upstream_timeout_ms),
            send_timeout: Duration::from_millis(self.upstream_send_timeout_ms),
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections.max(1),
            trusted_proxies: TrustedProxies(self.trusted_proxies.clone()),
            redirect_https: self.redirect_https,
            https_port: None,
            eject_for: Duration::from_millis(self.eject_ms),
            max_retries: self.max_retries,
            retry_ratio: 0.2,
            access_log: !self.no_access_log,
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["lb-ingress", "run", "--manifests", "/m"];
        argv.extend_from_slice(args);
        match Cli::parse_from(argv).command {
            Command::Run(run) => *run,
            Command::Check(_) => unreachable!("parsed run"),
        }
    }

    #[test]
    fn flags_naming_objects_outside_the_watched_namespace_are_refused() {
        let ok = run_args(&[
            "--watch-namespace",
            "web",
            "--default-ssl-certificate",
            "web/cert",
            "--default-backend-service",
            "web/errors",
            "--publish-service",
            "web/ingress",
        ]);
        let config = ok.server_config().unwrap();
        assert_eq!(config.scope.namespace.as_deref(), Some("web"));
        for (flag, value) in [
            ("--default-ssl-certificate", "other/cert"),
            ("--default-backend-service", "other/errors"),
            ("--publish-service", "other/ingress"),
        ] {
            let args = run_args(&["--watch-namespace", "web", flag, value]);
            let e = args.server_config().unwrap_err().to_string();
            assert!(
                e.contains(flag) && e.contains("outside --watch-namespace web"),
                "{e}"
            );
        }
        // Without --watch-namespace, anything goes.
        let any = run_args(&["--default-backend-service", "other/errors"]);
        assert!(any.server_config().unwrap().scope.namespace.is_none());
    }
}
