//! The compute plane through the CLI: `skyweave plan` on the shipped catalog,
//! with estate quotas, private capacity and commitments, on infeasible jobs
//! and on bad input; `skyweave offerings`.
//!
//! Expected placements are worked out by hand from the shipped catalog. B200
//! is used because few rows sell it: 8 per node, on demand, at 64.44 USD per
//! node-hour in seven GCP zones (`a4-highgpu-8g`; the host row is 0.0) and
//! at 113.9328 on AWS (`p6-b200.48xlarge`, us-east-1, us-east-2, us-west-2).
//! Equal prices are ranked by cloud, region and zone, so GCP's cheapest is
//! asia-northeast1-b.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{TempDir, BIN};

/// A finished run of the CLI.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("not JSON ({error}):\n{}\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn skyweave<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = Command::new(BIN).args(args).output().expect("run skyweave");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn plan(dir: &TempDir, jobs: &str, estate: Option<&str>, extra: &[&str]) -> Run {
    let jobs_path = dir.write("jobs.toml", jobs);
    let mut args: Vec<String> = vec!["plan".into()];
    if let Some(estate) = estate {
        args.push("--estate".into());
        args.push(dir.write("estate.toml", estate).display().to_string());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(jobs_path.display().to_string());
    skyweave(args)
}

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

fn job<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["job"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {plan}"))
}

/// (cloud, region, zone, instance type, purchase, total) of a placement.
fn place(placement: &Value) -> (String, String, String, String, String, f64) {
    let text = |key: &str| placement[key].as_str().unwrap_or("-").to_string();
    (
        text("cloud"),
        text("region"),
        text("zone"),
        text("instance_type"),
        text("purchase"),
        number(&placement["total_usd"]),
    )
}

const ONE_B200: &str =
    "[[job]]\nname = \"b200-one\"\nnodes = 1\nhours = 10\naccelerators = [\"B200:8\"]\n";

#[test]
fn plan_of_one_job_prints_rank_one_and_failover_rows() {
    let dir = TempDir::new();
    let run = plan(&dir, ONE_B200, None, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    let rows: Vec<Vec<&str>> =
        run.stdout.lines().skip(1).take(6).map(|l| l.split_whitespace().collect()).collect();
    // job, rank, cloud, region, instance, (zone), nodes, $/h, cost, egress, total.
    assert_eq!(
        rows[0][..11],
        [
            "b200-one",
            "1",
            "gcp",
            "asia-northeast1",
            "a4-highgpu-8g",
            "(asia-northeast1-b)",
            "1",
            "64.44",
            "644.40",
            "0.00",
            "644.40"
        ],
        "{run}"
    );
    // Failover rows: ranks 2.. in the next cheapest zones, one row per zone.
    let failover: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[4])).collect();
    assert_eq!(
        failover,
        [
            ("2", "(asia-southeast1-b)"),
            ("3", "(europe-north1-b)"),
            ("4", "(us-east4-b)"),
            ("5", "(us-west2-c)"),
            ("6", "(us-west3-b)")
        ],
        "{run}"
    );
    assert!(run.stdout.contains("1 of 1 jobs placed"), "{run}");
    assert!(run.stdout.contains("solved by enumeration"), "{run}");

    let short = plan(&dir, ONE_B200, None, &["--failover", "1"]);
    assert_eq!(short.code, Some(0), "{short}");
    let ranks: Vec<&str> = short
        .stdout
        .lines()
        .filter(|l| l.contains("a4-highgpu-8g"))
        .map(|l| l.split_whitespace().find(|w| w.parse::<u32>().is_ok()).unwrap())
        .collect();
    assert_eq!(ranks, ["1", "2"], "{short}");
}

#[test]
fn plan_json_adds_up_and_ranks_failover_by_cost() {
    let jobs = r#"
[[job]]
name = "h100-data"
nodes = 2
hours = 50
spot = true
accelerators = ["H100:8", { name = "H200", count = 8, speed = 1.3 }]

[[job.data]]
name = "tokens"
size_gb = 2000
locations = ["aws:us-east-1", "azure:eastus"]
"#;
    let dir = TempDir::new();
    let run = plan(&dir, jobs, None, &["--json", "--failover", "8"]);
    assert_eq!(run.code, Some(0), "{run}");
    let result = run.json();
    let placement = &result["jobs"][0]["placement"];
    for key in ["cloud", "region", "instance_type"] {
        assert!(placement[key].as_str().is_some_and(|s| !s.is_empty()), "{key}: {placement}");
    }
    assert_eq!(placement["rank"], 1);
    assert_eq!(placement["nodes"], 2);
    let total = number(&placement["total_usd"]);
    let compute = number(&placement["compute_usd"]);
    let egress = number(&placement["egress_usd"]);
    assert!(close(total, compute + egress), "{placement}");
    // The one dataset is read from one replica; it moves for free only
    // into a replica's own region.
    let legs = placement["egress"].as_array().unwrap();
    assert_eq!(legs.len(), 1, "{placement}");
    assert!(close(number(&legs[0]["usd"]), egress), "{placement}");
    let here = format!("{}:{}", place(placement).0, place(placement).1);
    let replica = ["aws:us-east-1", "azure:eastus"].contains(&here.as_str());
    assert_eq!(egress == 0.0, replica, "{placement}");
    let speed = number(&placement["speed"]);
    assert!(close(number(&placement["wall_hours"]), 50.0 / speed), "{placement}");
    assert!(close(compute, number(&placement["usd_per_hour"]) * 50.0 / speed), "{placement}");
    assert!(close(number(&result["total_usd"]), total), "{result}");
    assert!(
        close(
            number(&result["total_usd"]),
            number(&result["compute_usd"]) + number(&result["egress_usd"])
        ),
        "{result}"
    );

    let failover = result["jobs"][0]["failover"].as_array().unwrap();
    assert_eq!(failover.len(), 8, "{result}");
    let mut previous_rank = 1;
    let mut previous_total = total;
    for next in failover {
        let rank = next["rank"].as_u64().unwrap();
        let next_total = number(&next["total_usd"]);
        assert!(rank > previous_rank, "ranks must increase: {failover:?}");
        assert!(next_total >= previous_total - 1e-9, "totals must not decrease: {failover:?}");
        assert!(
            close(next_total, number(&next["compute_usd"]) + number(&next["egress_usd"])),
            "{next}"
        );
        previous_rank = rank;
        previous_total = next_total;
    }
    // One failover row per zone.
    let zones: std::collections::BTreeSet<String> = failover
        .iter()
        .chain([placement])
        .map(|p| format!("{}/{}", p["cloud"], p["zone"]))
        .collect();
    assert_eq!(zones.len(), failover.len() + 1, "{failover:?}");
}

const RESERVED_B200: &str = r#"
[[offering]]
name = "reserved-b200"
kind = "reserved"
cloud = "aws"
region = "us-east-1"
zone = "use1-az6"
instance_type = "p6-b200.48xlarge"
accelerator = "B200"
accelerator_count = 8
price_per_hour = 40.0
nodes = NODES

[[quota]]
name = "gcp-b200"
cloud = "gcp"
accelerators = ["B200"]
purchase = "on_demand"
max_accelerators = 16

[[quota]]
name = "aws-b200"
cloud = "aws"
accelerators = ["b200"]
max_accelerators = 16
"#;

/// Four 2-node B200 jobs of 100, 200, 300 and 400 hours.
fn four_b200_jobs() -> String {
    [100, 200, 300, 400]
        .iter()
        .map(|h| {
            format!(
                "[[job]]\nname = \"j{h}\"\nnodes = 2\nhours = {h}\naccelerators = [\"B200:8\"]\n\n"
            )
        })
        .collect()
}

/// Every job needs 16 B200. The quotas leave room for one job on GCP
/// (128.88 USD/h for two nodes) and one on AWS (227.8656 USD/h); the
/// reservation (80 USD/h for two nodes) holds `nodes / 2` jobs. The cheapest
/// assignment puts the longest jobs on the cheapest capacity; with room for
/// three, the longest job is the one left out (leaving out any other costs
/// more).
#[test]
fn batch_competes_for_quotas_and_private_capacity() {
    let dir = TempDir::new();
    let run =
        plan(&dir, &four_b200_jobs(), Some(&RESERVED_B200.replace("NODES", "2")), &["--json"]);
    assert_eq!(run.code, Some(3), "{run}");
    let result = run.json();
    assert_eq!(result["solver"]["method"], "milp (HiGHS)", "{result}");
    let aws = ("aws", "us-east-1", "use1-az6", "p6-b200.48xlarge");
    let gcp = ("gcp", "asia-northeast1", "asia-northeast1-b", "a4-highgpu-8g");
    let expected = [
        ("j300", aws, "private", 300.0 * 80.0),
        ("j200", gcp, "on_demand", 200.0 * 128.88),
        ("j100", aws, "on_demand", 100.0 * 227.8656),
    ];
    for (name, (cloud, region, zone, instance), purchase, usd) in expected {
        let got = place(&job(&result, name)["placement"]);
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2.as_str(), got.3.as_str(), got.4.as_str()),
            (cloud, region, zone, instance, purchase),
            "{name}: {result}"
        );
        assert!(close(got.5, usd), "{name}: {} != {usd}", got.5);
    }
    assert_eq!(job(&result, "j300")["placement"]["private_offering"], "reserved-b200");
    let left_out = job(&result, "j400");
    assert!(left_out["placement"].is_null(), "{left_out}");
    assert_eq!(left_out["unplaced"]["binding"], serde_json::json!(["capacity", "quota"]));
    let reasons = left_out["unplaced"]["reasons"].to_string();
    for quoted in ["aws-b200", "gcp-b200", "reserved-b200"] {
        assert!(reasons.contains(quoted), "{reasons}");
    }
    assert_eq!((result["placed"].as_u64(), result["unplaced"].as_u64()), (Some(3), Some(1)));
    assert!(close(number(&result["total_usd"]), 24000.0 + 25776.0 + 22786.56), "{result}");

    // Twice the reserved nodes: the two longest jobs share the reservation.
    let run =
        plan(&dir, &four_b200_jobs(), Some(&RESERVED_B200.replace("NODES", "4")), &["--json"]);
    assert_eq!(run.code, Some(0), "{run}");
    let result = run.json();
    for (name, purchase) in
        [("j400", "private"), ("j300", "private"), ("j200", "on_demand"), ("j100", "on_demand")]
    {
        assert_eq!(job(&result, name)["placement"]["purchase"], purchase, "{name}: {result}");
    }
    assert_eq!(job(&result, "j200")["placement"]["cloud"], "gcp");
    assert_eq!(job(&result, "j100")["placement"]["cloud"], "aws");
    assert!(close(number(&result["total_usd"]), 80.0 * 700.0 + 25776.0 + 22786.56), "{result}");

    // The table names the job left out and the constraints that bind.
    let run = plan(&dir, &four_b200_jobs(), Some(&RESERVED_B200.replace("NODES", "2")), &[]);
    assert_eq!(run.code, Some(3), "{run}");
    assert!(run.stdout.contains("not placed (binding: capacity, quota)"), "{run}");
    assert!(run.stdout.contains("3 of 4 jobs placed"), "{run}");
}

#[test]
fn commitment_discount_moves_a_job_to_the_committed_cloud() {
    let estate = r#"
[[commitment]]
cloud = "aws"
total_usd = 1000000
period = { start = "2000-01-01", end = "2099-12-31" }
discount_tiers = [{ above_usd = 0, discount = 0.5 }]
"#;
    let dir = TempDir::new();
    let run = plan(&dir, ONE_B200, Some(estate), &["--json"]);
    assert_eq!(run.code, Some(0), "{run}");
    let result = run.json();
    let placement = &result["jobs"][0]["placement"];
    // 113.9328 * 0.5 = 56.9664 per node-hour beats GCP's 64.44.
    assert_eq!(place(placement).0, "aws", "{placement}");
    assert_eq!(placement["zone"], "use1-az6", "{placement}");
    assert!(close(number(&placement["list_compute_usd"]), 1139.328), "{placement}");
    assert!(close(number(&placement["compute_usd"]), 569.664), "{placement}");
    assert!(close(number(&result["commitments"][0]["planned_usd"]), 569.664), "{result}");

    // Outside its period the commitment gives nothing, and the user is told.
    let expired = estate.replace("2000-01-01", "2020-01-01").replace("2099-12-31", "2020-12-31");
    let run = plan(&dir, ONE_B200, Some(&expired), &["--json"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stderr.contains("warning: [[commitment]] `aws` runs 2020-01-01 to 2020-12-31"),
        "{run}"
    );
    assert_eq!(place(&run.json()["jobs"][0]["placement"]).0, "gcp");
}

#[test]
fn estate_entries_that_match_nothing_are_warned_about() {
    let estate = r#"
[[quota]]
name = "typo"
cloud = "AWS"
accelerators = ["B2000"]
max_accelerators = 8
"#;
    let dir = TempDir::new();
    let run = plan(&dir, ONE_B200, Some(estate), &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stderr.contains("warning: [[quota]] `typo`: no offering is in cloud `AWS`"),
        "{run}"
    );
    assert!(run.stderr.contains("no offering has the accelerator `B2000`"), "{run}");
}

#[test]
fn infeasible_jobs_exit_3_and_name_the_binding_constraint() {
    let jobs = r#"
[[job]]
name = "b200-in-eastus"
hours = 10
regions = ["eastus"]
accelerators = ["B200:8"]

[[job]]
name = "rushed"
hours = 100
deadline_hours = 50
accelerators = ["A100-80GB:8", { name = "H100", count = 8, speed = 1.5 }]

[[job]]
name = "fine"
hours = 10
accelerators = ["B200:8"]
"#;
    let dir = TempDir::new();
    let run = plan(&dir, jobs, None, &[]);
    assert_eq!(run.code, Some(3), "{run}");
    assert!(run.stdout.contains("not placed (binding: residency)"), "{run}");
    assert!(run.stdout.contains("not placed (binding: deadline)"), "{run}");
    assert!(run.stdout.contains("on H100:8 the job takes 66.7 h"), "{run}");
    assert!(run.stdout.contains("1 of 3 jobs placed"), "{run}");

    let result = plan(&dir, jobs, None, &["--json"]).json();
    let binding = |name: &str| job(&result, name)["unplaced"]["binding"].clone();
    assert_eq!(binding("b200-in-eastus"), serde_json::json!(["residency"]));
    assert_eq!(binding("rushed"), serde_json::json!(["deadline"]));
    assert!(job(&result, "fine")["unplaced"].is_null(), "{result}");
    assert_eq!((result["placed"].as_u64(), result["unplaced"].as_u64()), (Some(1), Some(2)));

    // One infeasible job alone takes the enumeration path: same verdict.
    let alone =
        "[[job]]\nname = \"late\"\nhours = 100\ndeadline_hours = 99\naccelerators = [\"B200:8\"]\n";
    let run = plan(&dir, alone, None, &[]);
    assert_eq!(run.code, Some(3), "{run}");
    assert!(run.stdout.contains("not placed (binding: deadline)"), "{run}");
}

/// A bad input file; `expected` follows `path:` in the report on stderr.
fn check_bad(run: Run, path: &Path, expected: &str) {
    assert_eq!(run.code, Some(2), "{run}");
    let expected = format!("{}:{expected}", path.display());
    assert!(run.stderr.contains(&expected), "expected {expected:?} in:\n{run}");
    assert!(run.stderr.contains("fix: "), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
}

#[test]
fn bad_job_and_estate_files_are_reported_with_file_line_column() {
    let dir = TempDir::new();
    let one = dir.write("one.toml", ONE_B200);
    let bad_job = |name: &str, text: &str, expected: &str| {
        let path = dir.write(name, text);
        check_bad(skyweave([Path::new("plan"), &path]), &path, expected);
    };
    bad_job(
        "unknown.toml",
        "[[job]]\nname = \"x\"\nhours = 10\naccelerators = [\"H100:8\", \"Z100:8\"]\n",
        "4:27: job `x`: unknown accelerator `Z100`",
    );
    bad_job(
        "table.toml",
        "[job]\nname = \"x\"\nhours = 10\naccelerators = [\"H100:8\"]\n",
        "1:1: invalid type: map, expected a sequence",
    );
    bad_job(
        "count.toml",
        "[[job]]\nname = \"x\"\nhours = 10\naccelerators = [\"B200:3\"]\n",
        "4:17: job `x`: no instance has 3 B200 per node",
    );

    let path = dir.write(
        "estate.toml",
        "[[quota]]\ncloud = \"aws\"\npurchase = \"reserved\"\nmax_accelerators = 8\n",
    );
    let run = skyweave([Path::new("plan"), Path::new("--estate"), &path, &one]);
    check_bad(
        run,
        &path,
        "3:12: [[quota]] `aws/all regions/all accelerators`: unknown purchase `reserved`",
    );
}

/// The shipped AWS catalog's header and its five `p6-b200.48xlarge` rows
/// (lines 2 to 6), with `from` replaced by `to` on `line`.
fn aws_b200_catalog(edit: Option<(usize, &str, &str)>) -> String {
    let shipped = std::fs::read_to_string(format!(
        "{}/../skyweave-compute/catalog/aws.csv",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut lines = vec![shipped.lines().next().unwrap().to_string()];
    lines.extend(shipped.lines().filter(|l| l.starts_with("p6-b200.48xlarge,")).map(String::from));
    assert_eq!(lines.len(), 6, "the shipped catalog changed");
    if let Some((line, from, to)) = edit {
        assert!(lines[line - 1].contains(from), "line {line} lacks {from}");
        lines[line - 1] = lines[line - 1].replace(from, to);
    }
    lines.join("\n") + "\n"
}

#[test]
fn bad_catalog_rows_are_reported_with_their_line() {
    let dir = TempDir::new();
    let one = dir.write("one.toml", ONE_B200);
    let plan_with = |catalog: &Path| {
        skyweave([Path::new("plan"), Path::new("--json"), Path::new("--catalog"), catalog, &one])
    };

    // The unedited rows load and are the only offerings.
    let good = dir.write("aws.csv", &aws_b200_catalog(None));
    let run = plan_with(&good);
    assert_eq!(run.code, Some(0), "{run}");
    let placement = &run.json()["jobs"][0]["placement"];
    assert_eq!(place(placement).0, "aws", "{placement}");
    assert_eq!(place(placement).3, "p6-b200.48xlarge", "{placement}");

    let negative = dir.write("aws.csv", &aws_b200_catalog(Some((4, ",113.9328,", ",-113.9328,"))));
    check_bad(plan_with(&negative), &negative, "4:");
    assert!(plan_with(&negative).stderr.contains("Price -113.9328 is not a price"));

    let word = dir.write("aws.csv", &aws_b200_catalog(Some((5, ",46.578100,", ",cheap,"))));
    check_bad(plan_with(&word), &word, "5:");
    assert!(plan_with(&word).stderr.contains("SpotPrice `cheap` is not a number"));

    // `offerings` reads catalogs the same way.
    let run = skyweave([Path::new("offerings"), Path::new("--catalog"), &word]);
    check_bad(run, &word, "5:");
}

/// The column points at the bad field itself, past the quoted `GpuInfo`
/// field (with its commas) that precedes it on every AWS row.
#[test]
fn bad_catalog_rows_are_reported_with_their_column() {
    let dir = TempDir::new();
    let one = dir.write("one.toml", ONE_B200);
    for (line, from, to, what) in [
        (4, ",113.9328,", ",-113.9328,", "Price -113.9328 is not a price"),
        (5, ",46.578100,", ",cheap,", "SpotPrice `cheap` is not a number"),
    ] {
        let text = aws_b200_catalog(Some((line, from, to)));
        let row = text.lines().nth(line - 1).unwrap();
        let column = row.find(&to[1..]).unwrap() + 1;
        let path = dir.write("aws.csv", &text);
        let run = skyweave([Path::new("plan"), Path::new("--catalog"), &path, &one]);
        check_bad(run, &path, &format!("{line}:{column}: {what}"));
    }
}

#[test]
fn offerings_are_sorted_by_price_per_accelerator_hour() {
    let rows = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["offerings", "--accelerator", "h100", "--count", "8", "--json"];
        args.extend(extra);
        let run = skyweave(args);
        assert_eq!(run.code, Some(0), "{run}");
        run.json().as_array().expect("an array").clone()
    };
    let all = rows(&[]);
    let first = rows(&["--limit", "5"]);
    assert_eq!(first.len(), 5);
    assert!(all.len() > 5, "{}", all.len());
    assert_eq!(first[..], all[..5]);
    let clouds: std::collections::BTreeSet<&str> =
        all.iter().map(|r| r["cloud"].as_str().unwrap()).collect();
    assert_eq!(clouds.into_iter().collect::<Vec<_>>(), ["aws", "azure", "gcp"]);
    let mut previous = 0.0;
    for row in &all {
        assert_eq!(
            (row["accelerator"].as_str(), row["accelerators_per_node"].as_u64()),
            (Some("H100"), Some(8))
        );
        let per_accelerator = number(&row["usd_per_accelerator_hour"]);
        assert!(close(per_accelerator, number(&row["usd_per_hour"]) / 8.0), "{row}");
        assert!(per_accelerator >= previous, "not sorted at {row}");
        previous = per_accelerator;
    }

    // Spot: sorted by the spot price; every row has one.
    let spot = rows(&["--spot"]);
    let prices: Vec<f64> =
        spot.iter().map(|r| number(&r["spot_usd_per_accelerator_hour"])).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
}

#[test]
fn offerings_of_an_unknown_accelerator_exit_2() {
    let run = skyweave(["offerings", "--accelerator", "nope"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("no offering has the accelerator `nope`"), "{run}");
    assert!(run.stderr.contains("B200"), "the fix lists the known accelerators: {run}");
    assert!(run.stdout.is_empty(), "{run}");
}
