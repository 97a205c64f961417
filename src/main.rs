//! The `sftpgate` command line: `serve` runs the gateway.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sftpgate::cli::{Client, ClientArgs, OriginalCmd, RequestCmd, UpgradedCmd};
use sftpgate::config::Settings;

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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, settings } => serve(config, settings).await,
        Command::CheckConfig { file } => check_config(&file),
        Command::Request { cmd, client } => {
            async { Client::new(&client)?.request(cmd).await }.await
        }
        Command::Upgraded {
            cmd: UpgradedCmd::Put { id, file },
            client,
        } => async { Client::new(&client)?.upgraded_put(id, &file).await }.await,
        Command::Original {
            cmd: OriginalCmd::Get { id, file },
            client,
        } => async { Client::new(&client)?.original_get(id, &file).await }.await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>, settings: Settings) -> anyhow::Result<()> {
    let base = match &config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let cfg = settings.over(base).resolve();
    init_logging(cfg.log_json);
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
    println!("{}: ok\n{cfg:#?}", file.display());
    Ok(())
}

// Downloads and uploads allocate and free buffers of a few hundred KiB at a high rate; the
// system allocator returned them to the kernel and faulted them back in (tens of thousands
// of page faults per GiB, measured), mimalloc keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
