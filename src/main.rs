//! The `sftpgate` command line: `serve` runs the gateway.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sftpgate::cli::{Client, ClientArgs, OriginalCmd, RequestCmd, UpgradedCmd};
use sftpgate::config::{Config, Settings};

#[derive(Parser)]
#[command(
    name = "sftpgate",
    version,
    about = "An SSH/SFTP gateway that gives each upgrade request exactly one file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start: the size of the `serve` variant (all its settings) costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the SSH server and the operator HTTP API.
    Serve {
        /// TOML file with the same settings as the flags (flags win).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Check a config file: unknown keys and bad values are named; prints the settings.
    CheckConfig { file: PathBuf },
    /// Manage requests through the operator API.
    Request {
        #[command(subcommand)]
        cmd: RequestCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upload an upgraded dump through the operator API.
    Upgraded {
        #[command(subcommand)]
        cmd: UpgradedCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download a customer's upload through the operator API.
    Original {
        #[command(subcommand)]
        cmd: OriginalCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SFTPGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        fmt.init();
    }
}

/// glibc's allocator returns freed memory at the top of its heap to the kernel as soon as
/// 128 KiB are free, and serves blocks of 128 KiB and more from fresh mappings. russh
/// allocates a zeroed buffer per received packet (up to 64 KiB) and replies need up to
/// 512 KiB, so a transfer kept faulting the same memory back in: 20,000-100,000 page
/// faults and about 12% more CPU per uploaded GiB (measured). Keeping up to 4 MiB
/// free per heap and mapping only blocks of 1 MiB and more ends that; peak memory was
/// unchanged within a few MiB.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists that could be allocating.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let result = match Cli::parse().command {
        Command::Serve { config, settings } => resolve(config, settings).and_then(|cfg| {
            // SSH connections run on their own runtimes, each with its own blocking pool
            // (ssh/shards.rs). This one's pool does the HTTP API's file and store work, an
            // upload or download holding a thread while it streams: tokio's default cap of
            // 512 could leave busy ones waiting, so the cap follows the connection limit.
            let threads = cfg.max_connections.saturating_mul(2).saturating_add(64);
            runtime(threads)?.block_on(serve(cfg))
        }),
        Command::CheckConfig { file } => check_config(&file),
        Command::Request { cmd, client } => {
            on_runtime(async { Client::new(&client)?.request(cmd).await })
        }
        Command::Upgraded {
            cmd: UpgradedCmd::Put { id, file },
            client,
        } => on_runtime(async { Client::new(&client)?.upgraded_put(id, &file).await }),
        Command::Original {
            cmd: OriginalCmd::Get { id, file },
            client,
        } => on_runtime(async { Client::new(&client)?.original_get(id, &file).await }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime(max_blocking_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(max_blocking_threads)
        .build()
        .context("cannot start the runtime")
}

/// Runs an operator command (an HTTP client) on a runtime of tokio's default size.
fn on_runtime(
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    runtime(512)?.block_on(command)
}

fn resolve(config: Option<PathBuf>, settings: Settings) -> anyhow::Result<Config> {
    let base = match &config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let cfg = settings.over(base).resolve();
    cfg.validate()?;
    Ok(cfg)
}

/// Raises the soft limit on open files to the hard one: every connection holds its socket
/// and a second handle on it (the hang-up probe), every session its open files, and the
/// common soft limit of 1024 would refuse connections long before `--max-connections`.
fn raise_open_files_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited, which Linux does not allow for open files.
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum) {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        if current < maximum {
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(error = %e, "cannot raise the open files limit");
            }
        }
    }
    // Two descriptors per connection and a few open files per session, plus the listeners.
    let needed = max_connections.saturating_mul(4).saturating_add(64) as u64;
    if let Some(now) = getrlimit(Resource::Nofile).current.filter(|&n| n < needed) {
        tracing::warn!(
            limit = now,
            needed,
            "the open files limit is low for --max-connections; connections may be refused"
        );
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    init_logging(cfg.log_json);
    raise_open_files_limit(cfg.max_connections);
    let running = sftpgate::server::start(cfg).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{{\"ssh\":\"{}\",\"admin\":\"{}\"}}",
            running.ssh, running.admin
        )?;
        out.flush()?;
    }
    let sig = sftpgate::shutdown::signal_received()
        .await
        .context("cannot wait for signals")?;
    tracing::info!(signal = sig, "shutting down");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Settings::from_file(file)?.resolve();
    cfg.validate()?;
    println!("{}: ok\n{cfg:#?}", file.display());
    Ok(())
}
