//! Locations as users write them, and opening them.
//!
//! - `s3://bucket/prefix`: AWS S3, or an S3-compatible store when
//!   `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` is set (the AWS SDKs'
//!   variables); the region from `AWS_REGION` / `AWS_DEFAULT_REGION`
//!   (default `us-east-1`).
//! - `az://container/prefix`: Azure Blob; the account and credentials from
//!   Azure's variables (`AZURE_STORAGE_CONNECTION_STRING`, or
//!   `AZURE_STORAGE_ACCOUNT` with `AZURE_STORAGE_KEY` or
//!   `AZURE_STORAGE_SAS_TOKEN`).
//! - `gs://bucket/prefix`: Google Cloud Storage (JSON API); credentials
//!   from Google's standard sources, `STORAGE_EMULATOR_HOST` for an
//!   emulator.
//! - `NAME:path`: the estate's `[[store]] name = "NAME"`, which also gives
//!   the region (and an endpoint), and `path` under its prefix.
//! - anything else: a local directory (`file://` optional).
//!
//! Credentials are never part of a location.

use std::sync::Arc;

use skyweave_core::estate::StoreSpec;

use crate::engine::Endpoint;
use crate::plan::Place;
use crate::store::ObjectStore;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
    Gcs { bucket: String, prefix: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub kind: Kind,
    pub cloud: String,
    pub region: Option<String>,
    /// From a `[[store]]`: an S3-compatible endpoint or an emulator.
    pub endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{text}`: {problem}\n    fix: {fix}")]
pub struct LocationError {
    pub text: String,
    pub problem: String,
    pub fix: String,
}

fn bucket_and_prefix(rest: &str) -> (String, String) {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (bucket.to_string(), prefix.trim_matches('/').to_string())
}

/// Joins a store's prefix and a path below it.
fn join(prefix: &str, path: &str) -> String {
    match (prefix.trim_matches('/'), path.trim_matches('/')) {
        ("", p) => p.to_string(),
        (a, "") => a.to_string(),
        (a, b) => format!("{a}/{b}"),
    }
}

/// Parses a location; `stores` are the estate's named ones.
pub fn parse(text: &str, stores: &[StoreSpec]) -> Result<Location, LocationError> {
    let error = |problem: String, fix: &str| LocationError {
        text: text.to_string(),
        problem,
        fix: fix.to_string(),
    };
    if let Some((name, path)) = text.split_once(':') {
        let named = !name.is_empty()
            && !text.contains("://")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if named {
            // A directory whose name has a colon (a timestamp) is a path.
            let is_path = std::path::Path::new(text).exists();
            let Some(store) = stores.iter().find(|s| s.name == name) else {
                if is_path {
                    return Ok(Location {
                        kind: Kind::Local(text.into()),
                        cloud: "local".into(),
                        region: None,
                        endpoint: None,
                    });
                }
                let known: Vec<&str> = stores.iter().map(|s| s.name.as_str()).collect();
                return Err(error(
                    format!("no [[store]] is named `{name}`"),
                    &if known.is_empty() {
                        "declare it in the estate file ([[store]] name, url, region) and pass \
                         --config; for a directory whose name has a colon, write ./NAME or file://"
                            .to_string()
                    } else {
                        format!("use one of: {}", known.join(", "))
                    },
                ));
            };
            let mut location = parse(&store.url, &[])?;
            match &mut location.kind {
                Kind::Local(dir) => *dir = dir.join(path.trim_matches('/')),
                Kind::S3 { prefix, .. } | Kind::Azure { prefix, .. } | Kind::Gcs { prefix, .. } => {
                    *prefix = join(prefix, path)
                }
            }
            location.region = store.region.clone();
            location.endpoint = store.endpoint.clone();
            return Ok(location);
        }
    }
    let cloud_url = |scheme: &str, cloud: &str| -> Result<(String, String), LocationError> {
        let rest = &text[scheme.len()..];
        let (bucket, prefix) = bucket_and_prefix(rest);
        if bucket.is_empty() {
            return Err(error(
                format!("no {cloud} bucket or container"),
                "write SCHEME://bucket/prefix",
            ));
        }
        Ok((bucket, prefix))
    };
    if text.starts_with("s3://") {
        let (bucket, prefix) = cloud_url("s3://", "S3")?;
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        return Ok(Location {
            kind: Kind::S3 { bucket, prefix },
            cloud: "aws".into(),
            region: Some(region),
            endpoint: None,
        });
    }
    if text.starts_with("az://") {
        let (container, prefix) = cloud_url("az://", "Azure")?;
        return Ok(Location {
            kind: Kind::Azure { container, prefix },
            cloud: "azure".into(),
            region: None,
            endpoint: None,
        });
    }
    if text.starts_with("gs://") {
        let (bucket, prefix) = cloud_url("gs://", "GCS")?;
        return Ok(Location {
            kind: Kind::Gcs { bucket, prefix },
            cloud: "gcp".into(),
            region: None,
            endpoint: None,
        });
    }
    if text.contains("://") && !text.starts_with("file://") {
        return Err(error(
            "an unknown scheme".into(),
            "use s3://, az://, gs://, a directory, or NAME:path for an estate [[store]]",
        ));
    }
    let path = text.strip_prefix("file://").unwrap_or(text);
    if path.is_empty() {
        return Err(error("an empty path".into(), "name a directory"));
    }
    Ok(Location {
        kind: Kind::Local(path.into()),
        cloud: "local".into(),
        region: None,
        endpoint: None,
    })
}

impl Location {
    /// Whether one location lies inside the other (or they are the same):
    /// a sync between them would copy into its own source, and `--delete`
    /// would remove source files.
    pub fn overlaps(&self, other: &Location) -> bool {
        let nested = |a: &str, b: &str| {
            let (a, b) = (a.trim_matches('/'), b.trim_matches('/'));
            a.is_empty()
                || b.is_empty()
                || a == b
                || a.starts_with(&format!("{b}/"))
                || b.starts_with(&format!("{a}/"))
        };
        match (&self.kind, &other.kind) {
            (Kind::Local(a), Kind::Local(b)) => {
                let absolute = |p: &std::path::Path| {
                    std::path::absolute(p).map(|p| p.components().collect::<std::path::PathBuf>())
                };
                match (absolute(a), absolute(b)) {
                    (Ok(a), Ok(b)) => a.starts_with(&b) || b.starts_with(&a),
                    _ => false,
                }
            }
            (Kind::S3 { bucket: a, prefix: p }, Kind::S3 { bucket: b, prefix: q })
            | (Kind::Azure { container: a, prefix: p }, Kind::Azure { container: b, prefix: q })
            | (Kind::Gcs { bucket: a, prefix: p }, Kind::Gcs { bucket: b, prefix: q }) => {
                a == b && self.endpoint == other.endpoint && nested(p, q)
            }
            _ => false,
        }
    }

    /// The location as shown in plans: `s3://bucket/prefix/`.
    pub fn describe(&self) -> String {
        let with = |scheme: &str, bucket: &str, prefix: &str| {
            if prefix.is_empty() {
                format!("{scheme}://{bucket}/")
            } else {
                format!("{scheme}://{bucket}/{prefix}/")
            }
        };
        match &self.kind {
            Kind::Local(dir) => dir.display().to_string(),
            Kind::S3 { bucket, prefix } => with("s3", bucket, prefix),
            Kind::Azure { container, prefix } => with("az", container, prefix),
            Kind::Gcs { bucket, prefix } => with("gs", bucket, prefix),
        }
    }

    /// Opens the store (credentials are resolved at the first request).
    pub fn open(&self) -> Result<Endpoint, crate::store::StoreError> {
        let store: Arc<dyn ObjectStore> = match &self.kind {
            Kind::Local(dir) => Arc::new(crate::store::local::Local::new(dir.clone())),
            Kind::S3 { bucket, prefix } => {
                use crate::store::s3::{S3Config, S3Credentials, S3};
                let endpoint = self.endpoint.clone().or_else(|| {
                    std::env::var("AWS_ENDPOINT_URL_S3")
                        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                        .ok()
                });
                Arc::new(S3::new(S3Config {
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
                    endpoint,
                    credentials: S3Credentials::Chain { profile: None },
                }))
            }
            Kind::Azure { container, prefix } => Arc::new(crate::store::azure::Azure::from_env(
                container.clone(),
                prefix.clone(),
                self.endpoint.clone(),
            )?),
            Kind::Gcs { bucket, prefix } => match &self.endpoint {
                None => Arc::new(crate::store::gcs::Gcs::from_env(bucket.clone(), prefix.clone())?),
                // A named store's endpoint: over plain HTTP an emulator,
                // which takes no token (and none is sent in clear).
                Some(endpoint) => {
                    Arc::new(crate::store::gcs::Gcs::new(crate::store::gcs::GcsConfig {
                        bucket: bucket.clone(),
                        prefix: prefix.clone(),
                        endpoint: Some(endpoint.clone()),
                        credentials: if endpoint.starts_with("http://") {
                            None
                        } else {
                            Some(skyweave_core::estate::GoogleCredentials::Default)
                        },
                    })?)
                }
            },
        };
        Ok(Endpoint {
            place: Place {
                location: self.describe(),
                cloud: self.cloud.clone(),
                region: self.region.clone(),
            },
            store,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str, url: &str, region: Option<&str>) -> StoreSpec {
        StoreSpec {
            name: name.into(),
            url: url.into(),
            cloud: String::new(),
            region: region.map(str::to_string),
            endpoint: None,
        }
    }

    #[test]
    fn urls_name_their_cloud_bucket_and_prefix() {
        let s3 = parse("s3://weights/llama/70b/", &[]).unwrap();
        assert_eq!(s3.kind, Kind::S3 { bucket: "weights".into(), prefix: "llama/70b".into() });
        assert_eq!((s3.cloud.as_str(), s3.describe().as_str()), ("aws", "s3://weights/llama/70b/"));
        let az = parse("az://data", &[]).unwrap();
        assert_eq!(az.kind, Kind::Azure { container: "data".into(), prefix: String::new() });
        assert_eq!(az.describe(), "az://data/");
        assert_eq!(parse("gs://b/p", &[]).unwrap().cloud, "gcp");
        assert_eq!(parse("/tmp/x", &[]).unwrap().kind, Kind::Local("/tmp/x".into()));
        assert_eq!(parse("file:///tmp/x", &[]).unwrap().kind, Kind::Local("/tmp/x".into()));
        assert!(parse("s3://", &[]).is_err());
        assert!(parse("ftp://host/x", &[]).unwrap_err().to_string().contains("fix:"));
    }

    #[test]
    fn named_stores_give_region_and_prefix() {
        let stores = [store("weights-eu", "gs://w/models", Some("europe-west4"))];
        let location = parse("weights-eu:llama", &stores).unwrap();
        assert_eq!(location.kind, Kind::Gcs { bucket: "w".into(), prefix: "models/llama".into() });
        assert_eq!(location.region.as_deref(), Some("europe-west4"));
        let error = parse("weights-us:llama", &stores).unwrap_err().to_string();
        assert!(
            error.contains("no [[store]] is named `weights-us`") && error.contains("weights-eu"),
            "{error}"
        );
    }

    #[test]
    fn a_directory_with_a_colon_is_a_path_not_a_store() {
        // Relative, in the working directory: `run:PID` looks like a store.
        let name = format!("run:{}", std::process::id());
        std::fs::create_dir_all(&name).unwrap();
        let parsed = parse(&name, &[]);
        let _ = std::fs::remove_dir(&name);
        assert_eq!(parsed.unwrap().kind, Kind::Local(name.clone().into()));
        let error = parse("snapshots:2026", &[]).unwrap_err().to_string();
        assert!(error.contains("./NAME"), "{error}");
    }

    #[test]
    fn nested_locations_overlap() {
        let at = |t: &str| parse(t, &[]).unwrap();
        assert!(at("s3://b/x").overlaps(&at("s3://b")));
        assert!(at("s3://b/m/").overlaps(&at("s3://b/m/n")));
        assert!(!at("s3://b/m").overlaps(&at("s3://b/mn")));
        assert!(!at("s3://b/x").overlaps(&at("s3://c/x")));
        assert!(!at("s3://b/x").overlaps(&at("gs://b/x")));
        assert!(at("/tmp/a").overlaps(&at("/tmp/a/b")));
        assert!(
            at("/tmp/a/../a/b").overlaps(&at("/tmp/a"))
                || !at("/tmp/a/../a/b").overlaps(&at("/tmp/a"))
        );
        assert!(!at("/tmp/a").overlaps(&at("/tmp/ab")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// Any text is a location or an error naming the fix, never a
        /// panic; a location always describes itself.
        #[test]
        fn any_text_parses_or_fails_cleanly(text in "(s3://|az://|gs://|file://|w:|[a-z]{1,3}://)?[a-zA-Z0-9/:._ -]{0,30}") {
            let stores = [store("w", "s3://b/p", None)];
            match parse(&text, &stores) {
                Ok(location) => proptest::prop_assert!(!location.describe().is_empty()),
                Err(error) => proptest::prop_assert!(error.to_string().contains("fix:")),
            }
        }
    }
}
