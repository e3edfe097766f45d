//! `[[store]]`: named object-store locations for the data plane, with the
//! cloud and region they live in (which URLs alone do not say), so that
//! `skyweave sync` can price egress and choose the cheapest replica.

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use crate::estate::StoreSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    name: Spanned<String>,
    /// `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`
    /// or a local directory.
    url: Spanned<String>,
    region: Option<Spanned<String>>,
    /// An S3-compatible endpoint or an emulator's address.
    endpoint: Option<Spanned<String>>,
}

pub(super) fn validate_stores(
    raw: Vec<Spanned<RawStore>>,
    check: &mut Checker<'_>,
) -> Vec<StoreSpec> {
    let mut stores: Vec<StoreSpec> = Vec::new();
    for raw in raw {
        let raw = raw.into_inner();
        let name = raw.name.get_ref().trim().to_string();
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            check.fail(
                raw.name.span(),
                format!("[[store]] name `{name}` is not a plain name"),
                "use letters, digits, `-` and `_` (it is written `NAME:path` on the command line)",
            );
            continue;
        }
        if stores.iter().any(|s| s.name == name) {
            check.fail(
                raw.name.span(),
                format!("[[store]] `{name}` is declared twice"),
                "give every [[store]] its own name",
            );
            continue;
        }
        let url = raw.url.get_ref().trim().to_string();
        let cloud = if url.starts_with("s3://") {
            "aws"
        } else if url.starts_with("az://") {
            "azure"
        } else if url.starts_with("gs://") {
            "gcp"
        } else if url.contains("://") && !url.starts_with("file://") {
            check.fail(
                raw.url.span(),
                format!("[[store]] `{name}`: `{url}` is not a location skyweave reads"),
                "use s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or a directory",
            );
            continue;
        } else {
            "local"
        };
        let region = raw.region.map(|r| r.into_inner().trim().to_string());
        if cloud != "local" && region.is_none() {
            check.warn(
                raw.url.span(),
                format!("[[store]] `{name}` has no region; egress from it is priced as between two regions of one continent"),
                "add `region = \"...\"`, where the bucket or container is",
            );
        }
        stores.push(StoreSpec {
            name,
            url,
            cloud: cloud.to_string(),
            region,
            endpoint: raw.endpoint.map(|e| e.into_inner()),
        });
    }
    stores
}
