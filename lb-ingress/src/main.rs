use clap::Parser as _;
use lb_ingress::cli::{Cli, Command, LogFormat};

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

async fn run(config: lb_ingress::ServerConfig) -> anyhow::Result<()> {
    let handle = lb_ingress::Server::start(config).await?;
    handle.run_until_signal().await
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => {
            let mut config = args.server_config();
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
