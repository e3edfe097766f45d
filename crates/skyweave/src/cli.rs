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
    /// Validate an estate file and print a summary of it; or, given two
    /// locations, verify that the second holds what the first holds (both
    /// read in full and hashed).
    Check(CheckArgs),
    /// Make DST match the sources: copy what is missing or changed (and with
    /// --delete remove what the sources lack), verified end to end.
    Sync(TransferArgs),
    /// Like sync, never deleting.
    Copy(TransferArgs),
    /// List a location's files.
    Ls {
        /// s3://bucket/prefix, az://container/prefix, gs://bucket/prefix, NAME:path or a directory.
        location: String,
        /// The estate file, for named [[store]] locations.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
pub struct CheckArgs {
    /// The estate file (TOML) to validate; with locations, where named
    /// [[store]]s are declared.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// SOURCE DESTINATION: verify the destination against the source.
    #[arg(num_args = 0..=2)]
    pub locations: Vec<String>,
    /// Files hashed at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Sources, then the destination (the last). More sources are replicas
    /// of the same data: each file is read from the one it is cheapest to
    /// move from.
    #[arg(required = true, num_args = 1..)]
    pub locations: Vec<String>,
    /// Another replica of the source (repeatable).
    #[arg(long = "from")]
    pub from: Vec<String>,
    /// Remove destination files that no source has (sync only).
    #[arg(long)]
    pub delete: bool,
    /// Print the plan (files, bytes, egress cost) and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Re-read every copied file from the destination and compare hashes.
    #[arg(long)]
    pub verify_remote: bool,
    /// Buffers (parts) in flight, and files copied at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Part size in MiB: multipart uploads use it, smaller files go in one
    /// request. Memory use is about part size x parallel.
    #[arg(long, default_value_t = 16)]
    pub part_size_mib: u64,
    /// Where unfinished uploads are remembered (default
    /// $XDG_STATE_HOME/skyweave/uploads or ~/.local/state/skyweave/uploads;
    /// SKYWEAVE_STATE_DIR overrides).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The estate file, for named [[store]] locations.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print the plan and the report as JSON.
    #[arg(long)]
    pub json: bool,
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
