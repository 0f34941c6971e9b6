//! The `pix-auth-proxy` binary: parse flags, set up logging, run. Everything else lives in
//! the library.

use std::process::ExitCode;

use clap::Parser;
use pix_auth_proxy::cli::{CLIENT_SECRET_ENV, Cli, Command};
use pix_auth_proxy::config::Config;
use pix_auth_proxy::sidecar::Sidecar;
use secrecy::SecretString;

/// Exit code for bad flags or files, as clap uses for usage errors.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    let env_secret = std::env::var(CLIENT_SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .map(SecretString::from);
    let config = match Config::from_args(&args, env_secret) {
        Ok(c) => c,
        Err(e) => return bad_input(&e),
    };
    let filter = config
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "info".into());
    if let Err(e) = pix_auth_proxy::telemetry::init(config.log_format, &filter) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    for w in &config.warnings {
        tracing::warn!(event = "insecure_file_mode", "{w}");
    }
    // Installing the provider process-wide makes any rustls user in the tree agree with ours.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sidecar = match Sidecar::new(config.clone()) {
        Ok(s) => s,
        Err(e) => return bad_input(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: --listen {}: {e}", config.listen);
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        sidecar.run(listener, shutdown_signal()).await;
        tracing::info!(event = "stopped", "pix-auth-proxy stopped");
        ExitCode::SUCCESS
    })
}

fn bad_input(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_BAD_INPUT)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be killed; never return early.
        std::future::pending::<()>().await;
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(event = "shutdown_signal", signal = name, "shutting down");
    // A second signal exits at once.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!(
            event = "forced_exit",
            "second signal: exiting without draining"
        );
        std::process::exit(1);
    });
}
