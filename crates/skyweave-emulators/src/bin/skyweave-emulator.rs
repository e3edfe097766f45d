//! `skyweave-emulator`: serve one OpenAI or Azure OpenAI emulator, for
//! benchmarks and manual testing.
//!
//! Prints `listening on http://ADDR` once bound; exits on SIGINT or SIGTERM.
//! The default behaviour can be changed at run time with
//! `PUT /_emulator/behaviour`; counters are at `GET /_emulator/stats`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use skyweave_emulators::{spawn, Behaviour, Dialect, EmulatorConfig};

#[derive(Debug, Parser)]
#[command(name = "skyweave-emulator", version, about = "OpenAI / Azure OpenAI protocol emulator")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Wire protocol: openai or azure.
    #[arg(long, default_value = "openai")]
    dialect: Dialect,
    /// Name used in replies ("Hello from NAME") and the x-emulator-name header.
    #[arg(long)]
    name: Option<String>,
    /// Require this API key.
    #[arg(long)]
    api_key: Option<String>,
    /// Milliseconds before the first chunk (or the whole non-streaming reply).
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Milliseconds between streamed content chunks.
    #[arg(long, default_value_t = 0)]
    inter_chunk_ms: u64,
    /// Content pieces per reply.
    #[arg(long, default_value_t = 4)]
    chunks: u32,
    /// Keep every request in memory (served at GET /_emulator/recorded).
    #[arg(long)]
    record: bool,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skyweave-emulator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skyweave-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let name =
        args.name.clone().unwrap_or_else(|| format!("{}-{}", args.dialect, args.listen.port()));
    let config = EmulatorConfig {
        name,
        dialect: args.dialect,
        api_key: args.api_key.clone(),
        bind: args.listen,
        record: args.record,
    };
    let emulator = spawn(config).await?;
    emulator.control.set_behaviour(Behaviour::Ok {
        ttft_ms: args.ttft_ms,
        inter_chunk_ms: args.inter_chunk_ms,
        chunks: args.chunks,
    });
    println!("listening on {}", emulator.base_url());
    shutdown_signal().await?;
    drop(emulator);
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn shutdown_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
