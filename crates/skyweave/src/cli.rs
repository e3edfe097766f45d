//! Command-line flags only; what they mean is decided in `commands/`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "skyweave", version, about = "One control plane for AI across clouds")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the OpenAI-compatible gateway for an estate file.
    Serve {
        /// The estate file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Listen here instead of the estate's `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate an estate file and print a summary of it.
    Check {
        /// The estate file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve a local demo estate of three simulated clouds and show routing and failover.
    Demo {
        /// Listen here instead of 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Exit after the guided tour instead of serving until Ctrl-C.
        #[arg(long)]
        tour_only: bool,
    },
}
