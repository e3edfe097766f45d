use super::*;

fn catalog() -> Catalog {
    Catalog::shipped()
}

fn errors(text: &str) -> String {
    parse_jobs(text, "job.toml", &catalog()).unwrap_err().to_string()
}

#[test]
fn a_full_job_parses() {
    let text = r#"
[[job]]
name = "pretrain"
nodes = 4
hours = 300
spot = true
deadline_hours = 400
clouds = ["aws", "gcp"]
regions = ["us-east-1", "us-central1"]
accelerators = ["h100:8", { name = "H200", count = 8, speed = 1.3 }, { name = "Trainium2", count = 16, speed = 0.9 }]

[[job.data]]
name = "tokens"
size_gb = 2000
locations = ["aws:us-east-1", "azure:eastus"]

[[job]]
name = "eval"
hours = 2
accelerators = ["L4:1"]
"#;
    let jobs = parse_jobs(text, "job.toml", &catalog()).unwrap();
    assert_eq!(jobs.len(), 2);
    let job = &jobs[0];
    assert_eq!((job.nodes, job.hours, job.spot, job.deadline_hours), (4, 300.0, true, Some(400.0)));
    assert_eq!(
        job.accelerators,
        vec![
            Alternative { name: "H100".into(), count: 8, speed: 1.0 },
            Alternative { name: "H200".into(), count: 8, speed: 1.3 },
            Alternative { name: "Trainium2".into(), count: 16, speed: 0.9 },
        ]
    );
    assert_eq!(job.data[0].locations[1], ("azure".to_string(), "eastus".to_string()));
    assert!(job.allows("aws", "us-east-1") && !job.allows("azure", "eastus"));
    assert!(!job.allows("aws", "us-west-2"));
    assert_eq!((jobs[1].nodes, jobs[1].spot, jobs[1].deadline_hours), (1, false, None));
    assert!(jobs[1].allows("azure", "westus3"));
}

#[test]
fn an_unknown_accelerator_is_named_with_its_place_and_suggestions() {
    let e = errors("[[job]]\nname = \"a\"\nhours = 1\naccelerators = [\"H1000:8\"]\n");
    assert!(e.contains("job.toml:4:17: job `a`: unknown accelerator `H1000`"), "{e}");
    assert!(e.contains("fix: use an accelerator the catalog sells, e.g. H100"), "{e}");
}

#[test]
fn a_count_nobody_sells_lists_the_counts_sold() {
    let e = errors("[[job]]\nname = \"a\"\nhours = 1\naccelerators = [\"H100:3\"]\n");
    assert!(e.contains("job.toml:4:17: job `a`: no instance has 3 H100 per node"), "{e}");
    assert!(e.contains("H100 is sold 1, 2, 4, 8 per node"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[[job]]
name = "a"
nodes = 0
hours = -1
deadline_hours = 0
clouds = ["oracle"]
regions = ["moon-1"]
accelerators = ["H100", { name = "A100", count = 8, speed = 0 }]

[[job.data]]
size_gb = -5
locations = ["us-east-1"]

[[job]]
name = "a"
hours = 1
accelerators = []
"#;
    let e = errors(text);
    for expected in [
        "job.toml:4:9: job `a`: nodes = 0 is out of range",
        "job.toml:5:9: job `a`: hours = -1.0 is not a duration",
        "job.toml:6:18: job `a`: deadline_hours = 0.0 is not a duration",
        "job.toml:7:11: job `a`: the catalog has no cloud `oracle`",
        "job.toml:8:12: job `a`: unknown region `moon-1`",
        "job.toml:9:17: job `a`: accelerator `H100` has no count",
        "job `a`: speed 0.0 for A100 is not a speed",
        "job `a`: data[0]: size_gb -5.0 is not a size",
        "job `a`: data location `us-east-1` is not CLOUD:REGION",
        "job.toml:16:8: job name `a` is used twice",
        "job.toml:18:16: job `a`: accelerators is empty",
    ] {
        assert!(e.contains(expected), "missing `{expected}` in:\n{e}");
    }
    assert!(e.starts_with("job.toml has 11 problems:"), "{e}");
}

#[test]
fn data_locations_and_numbers_are_checked() {
    let text = r#"
[[job]]
name = "a"
hours = 1e300
accelerators = ["H100:4294967304", { name = "A100", count = 8, speed = 1e-300 }]

[[job.data]]
size_gb = 10
locations = ["AWS:us-east-1", "aws:us-east-9", "gcp:us-central1"]
"#;
    let e = errors(text);
    for expected in [
        "job.toml:4:9: job `a`: hours = 1e300 is not a duration",
        "job.toml:5:17: job `a`: no instance has 4294967304 H100 per node",
        "job `a`: speed 1e-300 for A100 is not a speed",
        "job.toml:9:14: job `a`: data location `AWS:us-east-1`: unknown cloud `AWS`",
        "in lower case: aws, azure, gcp",
        "job.toml:9:31: job `a`: data location `aws:us-east-9`: unknown region `us-east-9`",
    ] {
        assert!(e.contains(expected), "missing `{expected}` in:\n{e}");
    }
    assert!(!e.contains("`gcp:us-central1`"), "{e}");
}

#[test]
fn a_single_job_table_asks_for_an_array_of_tables() {
    let e = errors("[job]\nname = \"a\"\nhours = 1\naccelerators = [\"H100:8\"]\n");
    assert!(e.contains("job.toml:1:1:"), "{e}");
    assert!(e.contains("write each job as [[job]]"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let e = errors("[[job]]\nname = \"a\"\nhours = 1\ngpus = 8\naccelerators = [\"H100:8\"]\n");
    assert!(e.contains("job.toml:4:1: unknown field `gpus`"), "{e}");
}

#[test]
fn an_empty_file_has_no_job() {
    assert!(errors("").contains("the file has no [[job]]"));
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"H100:8\"".to_string()),
            Just("[\"H100:8\", { name = \"H200\", count = 8, speed = 1.3 }]".to_string()),
            Just("[\"aws:us-east-1\"]".to_string()),
            Just("-1".to_string()),
            Just("0".to_string()),
            Just("1e400".to_string()),
            Just("nan".to_string()),
            Just("true".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            "[0-9]{1,4}",
            "\"\\PC{0,8}\"",
        ]
    }

    fn job_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "name",
            "nodes",
            "hours",
            "spot",
            "deadline_hours",
            "clouds",
            "regions",
            "accelerators",
            "data",
            "size_gb",
            "locations",
        ]);
        let line = (key, value()).prop_map(|(k, v)| format!("{k} = {v}"));
        let section = prop::sample::select(vec!["[[job]]", "[[job.data]]", "[job]", ""]);
        prop::collection::vec((section, prop::collection::vec(line, 0..6)), 0..4).prop_map(
            |parts| {
                parts
                    .into_iter()
                    .map(|(section, lines)| format!("{section}\n{}\n", lines.join("\n")))
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn any_job_file_parses_or_fails_with_located_errors(text in job_text()) {
            static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
            let catalog = CATALOG.get_or_init(Catalog::shipped);
            match parse_jobs(&text, "job.toml", catalog) {
                Ok(jobs) => {
                    for job in jobs {
                        prop_assert!(job.nodes >= 1 && job.hours > 0.0 && job.hours.is_finite());
                        prop_assert!(!job.accelerators.is_empty());
                        prop_assert!(job.accelerators.iter().all(|a| a.speed > 0.0));
                    }
                }
                Err(errors) => {
                    prop_assert!(!errors.0.is_empty());
                    for error in &errors.0 {
                        prop_assert!(error.line >= 1 && error.column >= 1 && !error.fix.is_empty());
                    }
                }
            }
        }
    }
}
