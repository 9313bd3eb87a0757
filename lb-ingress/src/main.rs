use clap::Parser as _;
use lb_ingress::cli::{CheckArgs, CheckFormat, Cli, Command, LogFormat};

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Threads that serve connections: `TOKIO_WORKER_THREADS` when set (the worker count
/// tokio itself would use), else one per CPU.
fn serving_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// `lb-ingress check`: the report on stdout; true when it found no problem.
async fn check(args: CheckArgs) -> anyhow::Result<bool> {
    let timeout = std::time::Duration::from_secs(args.timeout_s);
    let scope = args.scope.scope()?;
    let source = (args.source)
        .source(
            std::time::Duration::from_millis(200),
            scope.namespace.clone(),
        )
        .into_source();
    let report = lb_ingress::check::check(source, &scope, timeout).await?;
    match args.format {
        CheckFormat::Text => print!("{}", report.text()),
        CheckFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(report.problems.is_empty())
}

async fn run(config: lb_ingress::ServerConfig) -> anyhow::Result<()> {
    let handle = lb_ingress::Server::start(config).await?;
    handle.run_until_signal().await
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => args.server_config().and_then(|mut config| {
            // Connections are served on threads of their own, a single-threaded runtime
            // each (see `ServerConfig::serving_threads`); this runtime runs the rest:
            // the configuration source, the metrics listener, shutdown.
            config.serving_threads = serving_threads();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run(config)))
        }),
        Command::Check(args) => {
            // Multi-threaded: the manifests source reads files with block_in_place.
            let checked = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(check(*args)));
            // 1: problems found; 2: nothing could be checked.
            return match checked {
                Ok(true) => std::process::ExitCode::SUCCESS,
                Ok(false) => std::process::ExitCode::from(1),
                Err(e) => {
                    eprintln!("lb-ingress check: {e:#}");
                    std::process::ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-ingress: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
