//! `skyweave check`: validate an estate file and summarize it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use skyweave_core::estate::{
    Deployment, Estate, GoogleCredentials, Model, ProviderSpec, SecretSource, VertexMode,
};
use skyweave_core::routing::Strategy;

pub fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let loaded = match super::load_estate(config)? {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    print!("{}", summary(&config.display().to_string(), &loaded.estate));
    if !loaded.warnings.is_empty() {
        println!("\nwarnings:");
        for warning in &loaded.warnings {
            println!("  {warning}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The human summary printed by `check`. Names secrets' sources and whether
/// they are set, never their values.
pub fn summary(file: &str, estate: &Estate) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{file}: valid — {} deployment(s), {} model(s), listening on {}",
        estate.deployments.len(),
        estate.models.len(),
        estate.server.listen
    );
    let _ = writeln!(out, "\nclouds and regions:");
    for (cloud, regions) in estate.clouds() {
        let regions: Vec<String> =
            regions.iter().map(|(region, names)| format!("{region} ({})", names.len())).collect();
        let _ = writeln!(out, "  {cloud:<8} {}", regions.join(", "));
    }
    let _ = writeln!(out, "\nmodels:");
    for model in &estate.models {
        let _ = writeln!(
            out,
            "  {}  (strategy {}, up to {} attempts, deadline {} s)",
            model.name,
            model.strategy.as_str(),
            model.max_attempts,
            model.deadline.as_secs()
        );
        if let Some(clouds) = &model.allowed_clouds {
            let _ = writeln!(out, "    contract: only on {}", clouds.join(", "));
        }
        for id in &model.deployments {
            let deployment = estate.deployment(*id);
            let _ = writeln!(out, "    - {}", describe(deployment));
        }
        let _ = writeln!(out, "    failover: {}", failover_order(estate, model));
    }
    compute_summary(&mut out, estate);
    if !estate.tenants.is_empty() {
        let _ = writeln!(out, "\ntenants:");
        for t in &estate.tenants {
            let list = |v: &Option<Vec<String>>| v.as_ref().map_or("any".into(), |v| v.join(", "));
            let limit = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
            let budget = t.budget.map_or("none".into(), |b| {
                format!("{:.0} USD/month ({})", b.monthly_usd, if b.hard { "hard" } else { "soft" })
            });
            let _ = writeln!(
                out,
                "  {}: models {}; clouds {}; regions {}; rpm {}, tpm {}, concurrency {}; budget {}",
                t.name,
                list(&t.models),
                list(&t.clouds),
                list(&t.regions),
                limit(t.rpm),
                limit(t.tpm),
                limit(t.max_concurrency),
                budget
            );
        }
    }
    out
}

/// The estate's compute sections, for the planner.
fn compute_summary(out: &mut String, estate: &Estate) {
    if !estate.offerings.is_empty() {
        let _ = writeln!(
            out,
            "
private offerings:"
        );
        for o in &estate.offerings {
            let _ = writeln!(
                out,
                "  {}  ({}) {} {} {}: {} nodes of {} x{} at {:.2} USD/node-hour",
                o.name,
                o.kind.as_str(),
                o.cloud,
                o.region,
                o.zone.as_deref().unwrap_or("-"),
                o.nodes,
                o.accelerator,
                o.accelerator_count,
                o.price_per_hour
            );
        }
    }
    if !estate.quotas.is_empty() {
        let _ = writeln!(
            out,
            "
quotas:"
        );
        for q in &estate.quotas {
            let _ = writeln!(out, "  {}: at most {} accelerators", q.name, q.max_accelerators);
        }
    }
    if !estate.commitments.is_empty() {
        let _ = writeln!(
            out,
            "
commitments:"
        );
        for c in &estate.commitments {
            let _ = writeln!(
                out,
                "  {}: {:.0} USD from {} to {}, {:.0} USD spent, {:.0} USD remaining, \
                 current discount {:.1}%",
                c.cloud,
                c.total_usd,
                c.start,
                c.end,
                c.spent_usd,
                c.remaining_usd(),
                c.current_discount() * 100.0
            );
        }
    }
}

fn describe(deployment: &Deployment) -> String {
    let mut text = format!(
        "{}  [{}] {}/{}",
        deployment.name,
        deployment.provider.kind(),
        deployment.cloud,
        deployment.region
    );
    if deployment.provider.kind() == "sim" {
        text.push_str(" (simulated)");
    }
    if let Some(endpoint) = deployment.provider.endpoint() {
        let _ = write!(text, "  {endpoint}");
    }
    let price = deployment.price;
    if price.input_per_mtok > 0.0 || price.output_per_mtok > 0.0 {
        let _ = write!(
            text,
            "  ${:.2}/${:.2} per Mtok in/out",
            price.input_per_mtok, price.output_per_mtok
        );
    }
    let limits = deployment.limits;
    for (name, value) in [
        ("rpm", limits.requests_per_minute),
        ("tpm", limits.tokens_per_minute),
        ("concurrency", limits.max_concurrency),
    ] {
        if let Some(value) = value {
            let _ = write!(text, "  {name} {value}");
        }
    }
    if deployment.priority > 0 {
        let _ = write!(text, "  priority {}", deployment.priority);
    }
    if let ProviderSpec::Bedrock { profile, .. } = &deployment.provider {
        let environment = std::env::var("AWS_ACCESS_KEY_ID").is_ok_and(|v| !v.is_empty());
        let source = if environment {
            "environment (AWS_ACCESS_KEY_ID set)".to_string()
        } else {
            format!(
                "profile `{}` or the other standard sources",
                profile.as_deref().unwrap_or("default")
            )
        };
        let _ = write!(text, "  aws credentials: {source}");
    }
    if let ProviderSpec::Vertex { mode, credentials, model, .. } = &deployment.provider {
        let mode = match mode {
            VertexMode::Gemini => "gemini",
            VertexMode::OpenAiCompatible => "openai-compatible",
        };
        let source = match credentials {
            GoogleCredentials::Default => {
                "GOOGLE_APPLICATION_CREDENTIALS, else the metadata server".to_string()
            }
            GoogleCredentials::ServiceAccountFile(path) => format!(
                "service-account key {} ({})",
                path.display(),
                if path.is_file() { "readable" } else { "MISSING" }
            ),
            GoogleCredentials::MetadataServer => "the metadata server".to_string(),
            GoogleCredentials::TokenCommand(_) => "a token command".to_string(),
        };
        let _ = write!(text, "  {mode} model {model}  google credentials: {source}");
    }
    if let Some(credential) = deployment.provider.credential() {
        let state = match &credential.source {
            SecretSource::Env(name) => {
                if std::env::var(name).is_ok_and(|v| !v.trim().is_empty()) {
                    "set"
                } else {
                    "NOT SET"
                }
            }
            SecretSource::File(path) => {
                if path.is_file() {
                    "readable"
                } else {
                    "MISSING"
                }
            }
        };
        let _ = write!(text, "  auth: {} ({state})", credential.source);
    }
    text
}

/// The order in which the model's deployments would be tried from the
/// default caller region with no latency observed yet: priority first, then
/// the strategy's static preference; after a failure the gateway prefers a
/// deployment on another cloud.
fn failover_order(estate: &Estate, model: &Model) -> String {
    let caller = estate.server.default_caller_region.as_deref();
    let mut order: Vec<&Deployment> =
        model.deployments.iter().map(|id| estate.deployment(*id)).collect();
    let rtt =
        |d: &Deployment| caller.and_then(|c| estate.proximity.rtt_ms(c, &d.region)).unwrap_or(50.0);
    let key = |d: &Deployment| -> f64 {
        match model.strategy {
            Strategy::Priority => 0.0,
            Strategy::Weighted => -d.weight,
            Strategy::Latency => rtt(d) / d.weight,
            Strategy::Cost => d.price.blended_per_mtok(),
            Strategy::Balanced => {
                (rtt(d) + 100.0) * d.price.blended_per_mtok().max(1e-9).sqrt() / d.weight
            }
        }
    };
    order.sort_by(|a, b| a.priority.cmp(&b.priority).then(key(a).total_cmp(&key(b))));
    if order.len() == 1 {
        return format!(
            "{} only — no failover target; add a deployment on another cloud",
            order[0].name
        );
    }
    // Cloud-diverse order: after each failure prefer a cloud not yet tried.
    let mut remaining = order;
    let mut chain: Vec<&Deployment> = Vec::new();
    let mut failed_clouds: Vec<&str> = Vec::new();
    while !remaining.is_empty() {
        let tier = remaining[0].priority;
        let index = remaining
            .iter()
            .position(|d| d.priority == tier && !failed_clouds.contains(&d.cloud.as_str()))
            .unwrap_or(0);
        let next = remaining.remove(index);
        failed_clouds.push(&next.cloud);
        chain.push(next);
    }
    let names: Vec<String> = chain.iter().map(|d| format!("{} ({})", d.name, d.cloud)).collect();
    names.join(" -> ")
}
