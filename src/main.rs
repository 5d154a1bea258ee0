//! The `sluice` command: parses the command line, builds the runtime and the pooler, and hands
//! signals to it.

use clap::{Parser, Subcommand};
use sluice::app::Sluice;
use sluice::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A Postgres connection pooler and read/write router")]
struct Cli {
    /// Configuration file (same as `sluice run -c FILE`).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pooler.
    Run,
    /// Validate a configuration file.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Ask a running sluice (the one the configuration file describes) what pool sizes its
    /// live statistics call for: SHOW ADVICE on its admin console.
    Advise,
    /// Start a local primary and replica from the system's Postgres binaries with sluice in
    /// front on 127.0.0.1:6432.
    Demo {
        /// Port for sluice.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Raises the open-files soft limit to the hard limit: every client and server connection is a
/// file descriptor, and max_client_conn is usually far above the default soft limit of 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().thread_name("sluice").build()
}

/// `sluice advise -c FILE`.
fn advise(file: Option<PathBuf>) -> ExitCode {
    let Some(file) = file else {
        eprintln!("sluice advise: needs -c FILE (the running sluice's configuration)");
        return ExitCode::FAILURE;
    };
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let answer = runtime(1).map_err(|e| e.to_string()).and_then(|rt| rt.block_on(sluice::admin::remote::advise(&config)));
    match answer {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice advise: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
        Some(Command::Advise) => advise(cli.config),
        Some(Command::Demo { port }) => match sluice::demo::run(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice demo: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Run) | None => {
            let Some(path) = cli.config else {
                eprintln!("sluice: no configuration; use `sluice run -c sluice.toml`");
                return ExitCode::from(2);
            };
            match run(path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(path: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(&path)?;
    raise_fd_limit();
    let rt = runtime(config.server.workers)?;
    rt.block_on(async move {
        let sluice = Sluice::start(config).await?;
        for a in sluice.local_addrs() {
            tracing::info!(addr = %a, "listening");
        }
        let source = path.clone();
        let _ = sluice.shared().reload_source.set(Box::new(move || Config::load(&source).map_err(|e| e.to_string())));
        serve_until_signal(&sluice, || Config::load(&path).map_err(Into::into)).await?;
        Ok(())
    })
}

/// Serves until SIGTERM or SHUTDOWN on the admin console (graceful) or SIGINT (fast); SIGHUP
/// reloads with `reload`.
pub async fn serve_until_signal(
    sluice: &Sluice,
    reload: impl Fn() -> Result<Config, Box<dyn std::error::Error>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                let grace = sluice.shared().config.load().server.shutdown_timeout.0;
                tracing::info!(?grace, "SIGTERM: finishing running transactions, then stopping");
                sluice.shutdown(grace).await;
                return Ok(());
            }
            _ = sluice.shared().shutdown.cancelled() => {
                let grace = sluice.shared().config.load().server.shutdown_timeout.0;
                tracing::info!(?grace, "SHUTDOWN: finishing running transactions, then stopping");
                sluice.shutdown(grace).await;
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                sluice.shutdown(Duration::ZERO).await;
                return Ok(());
            }
            _ = hup.recv() => {
                match reload().and_then(|c| sluice.reload(c).map_err(Into::into)) {
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %e, "reload refused; keeping the running configuration"),
                }
            }
        }
    }
}
