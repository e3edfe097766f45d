//! `skyweave sync`, `copy`, `check SRC DST` and `ls`, driven through the
//! real CLI against moto's S3 server and local directories.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use skyweave_data::store::ObjectStore;

use crate::cases::stores::{fresh_prefix, md5_of, moto_store, parts_of, pattern};
use crate::support::{services, TempDir, BIN};

const MIB: usize = 1024 * 1024;

/// The skyweave binary with moto as its S3 endpoint and a state directory
/// of its own.
fn skyweave(state: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("AWS_ENDPOINT_URL", services::moto().endpoint())
        .env("AWS_ACCESS_KEY_ID", "AKIDTESTS3")
        .env("AWS_SECRET_ACCESS_KEY", "moto-accepts-any-secret")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env("SKYWEAVE_STATE_DIR", state);
    command
}

/// As `skyweave`, with Azurite and fake-gcs-server reachable through the
/// clouds' standard variables as well.
fn skyweave_everywhere(state: &Path) -> Command {
    let mut command = skyweave(state);
    let azurite = services::azurite().endpoint();
    command
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!(
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};\
                 BlobEndpoint={azurite}/devstoreaccount1;",
                skyweave_data::store::azure::DEVELOPMENT_KEY
            ),
        )
        .env("STORAGE_EMULATOR_HOST", services::fake_gcs().endpoint());
    command
}

fn run(command: &mut Command) -> (Output, Value) {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (output, json)
}

fn succeed(command: &mut Command) -> Value {
    let (output, json) = run(command);
    assert!(
        output.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        command,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    json
}

/// A dataset: two files larger than 5 MiB parts, small files, an empty
/// one, awkward names.
fn dataset(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("weights/model-00001.safetensors".to_string(), pattern(12 * MIB + 3, 1)),
        ("weights/model-00002.safetensors".to_string(), pattern(6 * MIB, 2)),
        ("empty".to_string(), Vec::new()),
        ("names/with space ü 日本.txt".to_string(), b"unicode".to_vec()),
    ];
    for i in 0..30 {
        files.push((format!("shards/{i:03}.bin"), pattern(64 * 1024, 100 + i)));
    }
    for (path, data) in &files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, data).unwrap();
    }
    files
}

#[tokio::test]
async fn sync_copies_verifies_skips_by_manifest_and_deletes() {
    let dir = TempDir::new();
    let source = dir.path().join("src");
    let files = dataset(&source);
    let store = moto_store("sync").await;
    let dest = store.describe();
    let state = dir.path().join("state");
    let sync = |extra: &[&str]| {
        let mut command = skyweave(&state);
        command.args(["sync", "--json", "--part-size-mib", "5", "--parallel", "4"]);
        command.args(extra).arg(&source).arg(&dest);
        command
    };

    // A dry run plans and copies nothing.
    let plan = succeed(&mut sync(&["--dry-run"]));
    assert_eq!(plan["plan"]["copy"]["files"], files.len());
    assert!(store.list().await.unwrap().is_empty());

    // The first run copies everything, verifying each file.
    let first = succeed(&mut sync(&["--verify-remote"]));
    assert_eq!(first["report"]["copied_files"], files.len(), "{first}");
    assert_eq!(first["report"]["verified_files"], files.len(), "{first}");
    assert!(first["report"]["failures"].as_array().unwrap().is_empty());
    for (path, data) in &files {
        let read = crate::cases::stores::read_all(store.as_ref(), path).await.unwrap();
        assert!(&read == data, "{path} reads back");
    }
    // The second skips everything: the manifest vouches for it.
    let second = succeed(&mut sync(&[]));
    assert_eq!(second["report"]["copied_files"], 0, "{second}");
    assert_eq!(second["report"]["skipped_files"], files.len());

    // check reads both sides: all match.
    let (output, report) = run(skyweave(&state).args(["check", "--json"]).arg(&source).arg(&dest));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(report["matched"], files.len());

    // A same-size change at the source (a new version) is copied again.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(source.join("shards/007.bin"), pattern(64 * 1024, 999)).unwrap();
    // A file gone from the source is deleted only with --delete.
    std::fs::remove_file(source.join("shards/008.bin")).unwrap();
    let third = succeed(&mut sync(&[]));
    assert_eq!(third["report"]["copied_files"], 1, "{third}");
    assert_eq!(third["report"]["deleted_files"], 0, "{third}");
    let reasons: Vec<&Value> = third["plan"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "copy")
        .map(|a| &a["reason"])
        .collect();
    assert_eq!(reasons, vec!["unverified"], "{third}");
    let fourth = succeed(&mut sync(&["--delete"]));
    assert_eq!(fourth["report"]["deleted_files"], 1, "{fourth}");
    assert!(store.head("shards/008.bin").await.unwrap().is_none());

    // ls lists the destination, never the manifest.
    let listing = succeed(skyweave(&state).args(["ls", "--json"]).arg(&dest));
    let paths: Vec<&str> =
        listing.as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), files.len() - 1);
    assert!(!paths.iter().any(|p| p.starts_with(".skyweave")));
}

#[tokio::test]
async fn check_finds_same_size_corruption_even_in_objects_uploaded_in_parts() {
    let dir = TempDir::new();
    let source = dir.path().join("src");
    let files = dataset(&source);
    let store = moto_store("corrupt").await;
    let dest = store.describe();
    let state = dir.path().join("state");
    succeed(
        skyweave(&state).args(["sync", "--json", "--part-size-mib", "5"]).arg(&source).arg(&dest),
    );

    // Another tool rewrites a large object in parts (its ETag is then no
    // MD5 of the content) with one byte changed, and a small one in place.
    let (path, data) = &files[0];
    let mut bad = data.clone();
    bad[7 * MIB] ^= 1;
    let upload = store.start_upload(path, bad.len() as u64, 5 * MIB as u64).await.unwrap();
    let mut parts = Vec::new();
    for part in parts_of(&bad, 5 * MIB) {
        parts.push(store.put_part(path, &upload, part).await.unwrap());
    }
    store.finish_upload(path, &upload, &parts, bad.len() as u64).await.unwrap();
    let (small, small_data) = &files[5];
    let mut flipped = small_data.clone();
    flipped[0] ^= 0xff;
    store.put(small, Bytes::from(flipped.clone()), md5_of(&flipped)).await.unwrap();

    let (output, report) = run(skyweave(&state).args(["check", "--json"]).arg(&source).arg(&dest));
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let differing: Vec<&str> =
        report["differences"].as_array().unwrap().iter().map(|d| d[0].as_str().unwrap()).collect();
    let mut expected = vec![small.as_str(), path.as_str()];
    expected.sort();
    assert_eq!(differing, expected, "{report}");
    for difference in report["differences"].as_array().unwrap() {
        assert!(difference[1]["content_differs"].is_object(), "{report}");
    }

    // The next sync sees the destination's versions changed and repairs
    // both.
    let repaired = succeed(
        skyweave(&state).args(["sync", "--json", "--part-size-mib", "5"]).arg(&source).arg(&dest),
    );
    assert_eq!(repaired["report"]["copied_files"], 2, "{repaired}");
    let (output, _) = run(skyweave(&state).args(["check", "--json"]).arg(&source).arg(&dest));
    assert!(output.status.success());
}

#[tokio::test]
async fn an_interrupted_large_copy_resumes_without_sending_parts_again() {
    let dir = TempDir::new();
    let source = dir.path().join("src");
    std::fs::create_dir_all(&source).unwrap();
    let data = pattern(160 * MIB, 7);
    std::fs::write(source.join("checkpoint.bin"), &data).unwrap();
    let store = moto_store("resume").await;
    let dest = store.describe();
    let state = dir.path().join("state");

    // One part at a time, killed once the state file records three parts
    // (and killed whatever happens, should an assertion fail first).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        skyweave(&state)
            .args(["copy", "--json", "--part-size-mib", "5", "--parallel", "1"])
            .arg(&source)
            .arg(&dest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let sent = loop {
        let sent = std::fs::read_dir(&state)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|s| s["sent"].as_object().map_or(0, |m| m.len()))
            .max()
            .unwrap_or(0);
        if sent >= 3 {
            break sent;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the copy ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "no parts were recorded");
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(child);
    assert!(store.head("checkpoint.bin").await.unwrap().is_none(), "the object is not there yet");

    let resumed = succeed(
        skyweave(&state).args(["copy", "--json", "--part-size-mib", "5"]).arg(&source).arg(&dest),
    );
    let resumed_bytes = resumed["report"]["resumed_bytes"].as_u64().unwrap();
    assert!(
        resumed_bytes >= (sent * 5 * MIB) as u64,
        "{sent} parts recorded, {resumed_bytes} bytes resumed"
    );
    assert!(
        crate::cases::stores::read_all(store.as_ref(), "checkpoint.bin").await.unwrap() == data
    );
    // The finished upload's state is gone.
    let left = std::fs::read_dir(&state).unwrap().flatten().count();
    assert_eq!(left, 0, "no upload state left behind");
}

#[tokio::test]
async fn each_file_is_read_from_the_cheapest_replica() {
    let dir = TempDir::new();
    let state = dir.path().join("state");
    let moto = services::moto().endpoint();
    let (eu, us, dest) = (fresh_prefix("eu"), fresh_prefix("us"), fresh_prefix("dest"));
    moto_store("bucket").await; // creates the bucket
    let estate = format!(
        "[[store]]\nname = \"weights-eu\"\nurl = \"s3://skyweave-tests/{eu}\"\nregion = \"eu-west-1\"\nendpoint = \"{moto}\"\n\n\
         [[store]]\nname = \"weights-us\"\nurl = \"s3://skyweave-tests/{us}\"\nregion = \"us-east-1\"\nendpoint = \"{moto}\"\n\n\
         [[store]]\nname = \"training-us\"\nurl = \"s3://skyweave-tests/{dest}\"\nregion = \"us-east-1\"\nendpoint = \"{moto}\"\n"
    );
    let config = dir.write("estate.toml", &estate);
    // Both replicas hold `shared`; only Europe holds `eu-only`.
    let local = dir.path().join("seed");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("shared"), pattern(100_000, 1)).unwrap();
    succeed(
        skyweave(&state).arg("copy").arg("--config").arg(&config).arg(&local).arg("weights-us:"),
    );
    std::fs::write(local.join("eu-only"), pattern(50_000, 2)).unwrap();
    succeed(
        skyweave(&state).arg("copy").arg("--config").arg(&config).arg(&local).arg("weights-eu:"),
    );

    let plan = succeed(
        skyweave(&state).args(["sync", "--json", "--dry-run", "--config"]).arg(&config).args([
            "weights-eu:",
            "training-us:",
            "--from",
            "weights-us:",
        ]),
    );
    let from: Vec<(String, u64)> = plan["plan"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["path"].as_str().unwrap().to_string(), a["from"].as_u64().unwrap()))
        .collect();
    // Sources in order: weights-eu (0), weights-us (1).
    assert_eq!(from, vec![("eu-only".to_string(), 0), ("shared".to_string(), 1)], "{plan}");
    let replicas = plan["plan"]["replicas"].as_array().unwrap();
    assert_eq!(replicas[0]["usd_per_gb"], 0.02, "AWS between regions");
    assert_eq!(replicas[1]["usd_per_gb"], 0.0, "the same region");
    let egress = plan["plan"]["egress_usd"].as_f64().unwrap();
    assert!((egress - 50_000.0 / 1e9 * 0.02).abs() < 1e-12, "{egress}");

    let done = succeed(skyweave(&state).args(["sync", "--json", "--config"]).arg(&config).args([
        "weights-eu:",
        "training-us:",
        "--from",
        "weights-us:",
    ]));
    assert_eq!(done["report"]["copied_files"], 2, "{done}");
}

#[tokio::test]
async fn data_moves_from_disk_through_s3_and_azure_to_gcs_intact() {
    let dir = TempDir::new();
    let source = dir.path().join("src");
    let files = dataset(&source);
    let state = dir.path().join("state");
    // Each hop to a bucket or container that does not exist yet: the sync
    // creates it.
    let (bucket, container, gcs_bucket) =
        (fresh_prefix("hops"), fresh_prefix("hops"), fresh_prefix("hops"));
    let hops = [
        source.display().to_string(),
        format!("s3://{bucket}/hop"),
        format!("az://{container}/hop"),
        format!("gs://{gcs_bucket}/hop"),
    ];
    for pair in hops.windows(2) {
        // 5 MiB parts, 2 in flight: the 12 MiB file is larger than the part
        // size times the parallelism on every backend.
        let done = succeed(
            skyweave_everywhere(&state)
                .args([
                    "sync",
                    "--json",
                    "--verify-remote",
                    "--part-size-mib",
                    "5",
                    "--parallel",
                    "2",
                ])
                .args([&pair[0], &pair[1]]),
        );
        assert_eq!(
            done["report"]["copied_files"],
            files.len(),
            "{} -> {}: {done}",
            pair[0],
            pair[1]
        );
        assert_eq!(done["report"]["verified_files"], files.len());
    }
    // The last hop holds what the disk holds, byte for byte.
    let (output, report) =
        run(skyweave_everywhere(&state).args(["check", "--json"]).args([&hops[0], &hops[3]]));
    assert!(output.status.success(), "{report}");
    assert_eq!(report["matched"], files.len());

    // A same-size corruption at each hop is found by `check`.
    use skyweave_data::store::{azure, gcs, s3};
    let stores: Vec<Box<dyn ObjectStore>> = vec![
        Box::new(s3::S3::new(s3::S3Config {
            bucket: bucket.clone(),
            prefix: "hop".into(),
            region: "us-east-1".into(),
            endpoint: Some(services::moto().endpoint()),
            credentials: s3::S3Credentials::Static(aws_credential_types::Credentials::new(
                "AKIDTESTS3",
                "moto-accepts-any-secret",
                None,
                None,
                "tests",
            )),
        })),
        Box::new({
            let mut config = azure::AzureConfig::from_connection_string(
                "UseDevelopmentStorage=true",
                container.clone(),
                "hop",
            )
            .unwrap();
            config.endpoint =
                Some(format!("{}/{}", services::azurite().endpoint(), azure::DEVELOPMENT_ACCOUNT));
            azure::Azure::new(config).unwrap()
        }),
        Box::new(
            gcs::Gcs::new(gcs::GcsConfig {
                bucket: gcs_bucket.clone(),
                prefix: "hop".into(),
                endpoint: Some(services::fake_gcs().endpoint()),
                credentials: None,
            })
            .unwrap(),
        ),
    ];
    let (path, data) = &files[10];
    let mut bad = data.clone();
    bad[100] ^= 0x40;
    for (store, hop) in stores.iter().zip(&hops[1..]) {
        store.put(path, Bytes::from(bad.clone()), md5_of(&bad)).await.unwrap();
        let (output, report) =
            run(skyweave_everywhere(&state).args(["check", "--json"]).args([&hops[0], hop]));
        assert_eq!(output.status.code(), Some(1), "{hop}: {report}");
        assert_eq!(report["differences"][0][0], path.as_str(), "{hop}: {report}");
        assert!(report["differences"][0][1]["content_differs"].is_object(), "{hop}: {report}");
    }
}

#[test]
fn bad_locations_and_flags_are_clear_errors() {
    let dir = TempDir::new();
    let state = dir.path().join("state");
    let (output, _) = run(skyweave(&state).args(["sync", "ftp://host/x", "/tmp/y"]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ftp://host/x") && stderr.contains("fix:"), "{stderr}");
    let (output, _) = run(skyweave(&state).args(["sync", "nowhere:x", "/tmp/y"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no [[store]] is named `nowhere`"), "{stderr}");
    let (output, _) = run(skyweave(&state).args(["copy", "--delete", "/tmp/a", "/tmp/b"]));
    assert_eq!(output.status.code(), Some(2));
    let (output, _) = run(skyweave(&state).args(["check"]));
    assert_eq!(output.status.code(), Some(2));
    // A missing source directory is no empty source (with --delete it would
    // empty the destination); nested locations are refused.
    let (output, _) = run(skyweave(&state)
        .args(["sync", "--delete"])
        .arg(dir.path().join("mdoels"))
        .arg(dir.path().join("out")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() == Some(2) && stderr.contains("does not exist"), "{stderr}");
    std::fs::create_dir_all(dir.path().join("data/sub")).unwrap();
    let (output, _) = run(skyweave(&state)
        .args(["sync", "--delete"])
        .arg(dir.path().join("data"))
        .arg(dir.path().join("data/sub")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() == Some(2) && stderr.contains("overlap"), "{stderr}");
    let (output, _) = run(skyweave(&state).args(["sync", "s3://b/x", "s3://b"]));
    assert!(String::from_utf8_lossy(&output.stderr).contains("overlap"));
    let (output, _) = run(skyweave(&state).args(["copy", "--part-size-mib", "1", "/tmp", "/x"]));
    assert!(String::from_utf8_lossy(&output.stderr).contains("5..=5120"));
}
