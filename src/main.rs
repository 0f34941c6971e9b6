//! The `pix-auth-proxy` binary: parse flags, set up logging, run. Everything else lives in
//! the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pix_auth_proxy::cli::{
    CLIENT_SECRET_ENV, Cli, Command, DemoArgs, PKCS12_PASSWORD_ENV, RunArgs,
};
use pix_auth_proxy::config::{Config, SecretEnv};
use pix_auth_proxy::demo::{Demo, DemoOptions};
use pix_auth_proxy::server::slice;
use pix_auth_proxy::sidecar::Sidecar;
use pix_auth_proxy::telemetry::LogFormat;
use secrecy::SecretString;

/// Exit code for bad flags or files, as clap uses for usage errors.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Installing the provider process-wide makes any rustls user in the tree agree with ours.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Some(Command::Run(args)) => run(*args),
        Some(Command::Demo(args)) => demo(args),
        Some(Command::Check(args)) => check(*args),
        Some(Command::Providers) => {
            print!("{}", pix_auth_proxy::provider::markdown_table());
            println!();
            print!("{}", pix_auth_proxy::provider::sources());
            ExitCode::SUCCESS
        }
        None => run(cli.run),
    }
}

fn init_logs(format: LogFormat, flag: Option<&str>) -> Result<(), ExitCode> {
    let filter = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "info".into());
    pix_auth_proxy::telemetry::init(format, &filter).map_err(|e| bad_input(&e))
}

/// The runtime: single-threaded when one worker is all this process may use (a sidecar
/// with a 1-CPU limit), which saves the work-stealing scheduler's cost on every wake-up.
/// With `slice`, every thread that runs it asks the kernel for that scheduler slice.
fn runtime(workers: usize, slice: Option<Duration>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    if let Some(slice) = slice {
        // A multi-threaded runtime's threads ask as they start; the main thread, which runs a
        // single-threaded one, asks in `run` and says what came of it.
        builder.on_thread_start(move || {
            let _ = slice::request_slice(slice);
        });
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Say once what asking for the scheduler slice did; a refusal is not fatal.
fn log_slice(slice: Duration, outcome: std::io::Result<slice::SliceOutcome>) {
    let slice_us = slice.as_micros();
    match outcome {
        Ok(slice::SliceOutcome::Granted) => {
            tracing::info!(event = "sched_slice", slice_us, "scheduler slice set");
        }
        Ok(slice::SliceOutcome::Unsupported) => tracing::warn!(
            event = "sched_slice_unsupported",
            slice_us,
            "this kernel has no custom scheduler slices (Linux 6.12+); --sched-slice has no effect"
        ),
        Ok(slice::SliceOutcome::OtherPolicy(policy)) => tracing::info!(
            event = "sched_slice_skipped",
            policy,
            "the process runs under a scheduling policy other than the fair one; --sched-slice left it alone"
        ),
        Err(e) => tracing::warn!(
            event = "sched_slice_refused",
            slice_us,
            error = %e,
            "the kernel refused the scheduler slice (--sched-slice); running with its default"
        ),
    }
}

fn secrets_from_env() -> SecretEnv {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
    };
    SecretEnv {
        client_secret: env(CLIENT_SECRET_ENV),
        pkcs12_password: env(PKCS12_PASSWORD_ENV),
    }
}

fn check(args: RunArgs) -> ExitCode {
    let config = match Config::from_args(&args, secrets_from_env()) {
        Ok(c) => c,
        Err(e) => return bad_input(&e),
    };
    // The report is the output; logs only for problems.
    if let Err(code) = init_logs(
        config.log_format,
        Some(config.log_level.as_deref().unwrap_or("warn")),
    ) {
        return code;
    }
    let runtime = match runtime(1, None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let report = runtime.block_on(pix_auth_proxy::check::run(&config));
    print!("{}", report.render());
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(args: RunArgs) -> ExitCode {
    let config = match Config::from_args(&args, secrets_from_env()) {
        Ok(c) => c,
        Err(e) => return bad_input(&e),
    };
    if let Err(code) = init_logs(config.log_format, config.log_level.as_deref()) {
        return code;
    }
    for w in &config.warnings {
        tracing::warn!(event = "config_warning", "{w}");
    }
    let listen = config.listen;
    let admin_listen = config.admin_listen;
    let webhook_listen = config.webhook.as_ref().map(|w| w.listen);
    let runtime = match runtime(args.worker_threads, config.sched_slice) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // Clients (the shared cache's included) are built inside the runtime's context.
    let _context = runtime.enter();
    let sched_slice = config.sched_slice;
    let mut sidecar = match Sidecar::new(config) {
        Ok(s) => s,
        Err(e) => return bad_input(&e),
    };
    // After the last check of the files: a refusal there stays the one line on stderr.
    if let Some(slice) = sched_slice {
        log_slice(slice, slice::request_slice(slice));
    }
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return bad_input(&format!("--listen {listen}: {e}")),
        };
        let admin = match admin_listen {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => return bad_input(&format!("--admin-listen {addr}: {e}")),
            },
            None => None,
        };
        if let Some(addr) = webhook_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => sidecar.set_webhook_listener(l),
                Err(e) => return bad_input(&format!("--webhook-listen {addr}: {e}")),
            }
        }
        let trigger = sidecar.reload_trigger();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!(event = "sighup", "SIGHUP: reloading the identity files");
                trigger.notify_one();
            }
        });
        sidecar.run(listener, admin, shutdown_signal()).await;
        tracing::info!(event = "stopped", "pix-auth-proxy stopped");
        ExitCode::SUCCESS
    })
}

fn demo(args: DemoArgs) -> ExitCode {
    if let Err(code) = init_logs(args.log.log_format, args.log.log_level.as_deref()) {
        return code;
    }
    let runtime = match runtime(0, None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => return bad_input(&format!("--listen {}: {e}", args.listen)),
        };
        let admin = match tokio::net::TcpListener::bind(args.admin_listen).await {
            Ok(l) => l,
            Err(e) => return bad_input(&format!("--admin-listen {}: {e}", args.admin_listen)),
        };
        let opts = DemoOptions {
            token_ttl: args.demo_token_ttl.max(Duration::from_secs(2)),
            write_certs: args.write_certs,
        };
        let demo = match Demo::start(listener, Some(admin), opts).await {
            Ok(d) => d,
            Err(e) => return bad_input(&e),
        };
        println!("{}", demo.banner());
        demo.run(shutdown_signal()).await;
        tracing::info!(event = "stopped", "demo stopped");
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
