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
    /// Place training and batch jobs on the accelerator offerings of every cloud.
    Plan(PlanArgs),
    /// List accelerator offerings across clouds, cheapest per accelerator-hour first.
    Offerings(OfferingsArgs),
    /// Create, list and revoke tenants' API keys.
    Keys(KeysArgs),
    /// Spend and tokens per cloud, tenant, model or deployment, from the ledger.
    Usage(UsageArgs),
    /// Each cloud commitment's spend against its plan, projection and discount tier.
    Commitments {
        /// The estate file (TOML): its [[commitment]] tables and `server.database`.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// The estate file (TOML): its `server.database`.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Group by cloud, tenant, model or deployment.
    #[arg(long, default_value = "cloud", value_parser = ["cloud", "tenant", "model", "deployment"])]
    pub by: String,
    /// First day (YYYY-MM-DD, UTC, inclusive). Default: the first of this month.
    #[arg(long)]
    pub since: Option<String>,
    /// Last day (YYYY-MM-DD, UTC, inclusive). Default: today.
    #[arg(long)]
    pub until: Option<String>,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// The estate file (TOML): its tenants and `server.database`.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant; the key is printed once and stored hashed.
    Create {
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// A label for lists.
        #[arg(long, default_value = "")]
        name: String,
        /// Only these models (comma-separated; within the tenant's).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Only these clouds (comma-separated; within the tenant's).
        #[arg(long, value_delimiter = ',')]
        clouds: Option<Vec<String>>,
        /// Only these regions (comma-separated; within the tenant's).
        #[arg(long, value_delimiter = ',')]
        regions: Option<Vec<String>>,
        /// The key stops working after this many seconds.
        #[arg(long)]
        expires_in_secs: Option<u64>,
        /// The key's own requests per minute (its tenant's limit applies too).
        #[arg(long)]
        rpm: Option<u32>,
        /// The key's own tokens per minute (its tenant's limit applies too).
        #[arg(long)]
        tpm: Option<u32>,
        /// The key's own monthly budget in USD (hard; its tenant's applies too).
        #[arg(long)]
        budget_usd: Option<f64>,
    },
    /// List keys (ids and rights, never secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; it stops working on the next request.
    Revoke {
        /// The key's id (the 12 characters after `sk-sw-`).
        id: String,
    },
}

/// Where offerings come from: catalog files (default: the shipped catalog)
/// and the estate's private offerings, quotas and commitments.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// A SkyPilot catalog v8 CSV (`aws.csv`, or `.../aws/vms.csv`); repeat for
    /// several clouds. Default: the catalog shipped with skyweave.
    #[arg(long = "catalog", value_name = "PATH")]
    pub catalogs: Vec<PathBuf>,
    /// An estate file whose [[offering]], [[quota]] and [[commitment]] apply.
    #[arg(long)]
    pub estate: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The job file (TOML, one or more [[job]] tables).
    pub jobs: PathBuf,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Failover places listed per job.
    #[arg(long, default_value_t = 5)]
    pub failover: usize,
}

#[derive(Debug, clap::Args)]
pub struct OfferingsArgs {
    /// Accelerator name, e.g. H100 (case-insensitive).
    #[arg(long)]
    pub accelerator: Option<String>,
    /// Accelerators per node.
    #[arg(long)]
    pub count: Option<u32>,
    /// Only this cloud.
    #[arg(long)]
    pub cloud: Option<String>,
    /// Only this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Sort by spot price (offerings without one are left out).
    #[arg(long)]
    pub spot: bool,
    /// Print at most this many rows.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
