//! The manifest a sync writes beside the data at the destination
//! (`.skyweave/manifest.json` under the destination prefix).
//!
//! For every file it records the content hash (BLAKE3 of the bytes, computed
//! while they streamed through), the size, the destination object's version
//! when it was written, and the version of each source replica it was
//! known to match. A later run skips a file only when the destination still
//! holds that version and a source still holds a version recorded for it:
//! the content is then known without reading it. Anything else (no entry,
//! a changed version on either side) is copied again: a missing hash is
//! never taken for a match.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the manifest lives, relative to the destination prefix.
pub const MANIFEST_KEY: &str = ".skyweave/manifest.json";

/// Keys under this prefix are the data plane's own, never data.
pub const RESERVED_PREFIX: &str = ".skyweave/";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Path (relative key) -> entry, sorted so that the file diffs well.
    pub files: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    /// BLAKE3 of the content, hex.
    pub blake3: String,
    /// The destination object's version when it was written.
    pub dst_version: String,
    /// Source location (`s3://bucket/prefix/`) -> the version there known
    /// to hold this content.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("the manifest {at} is not valid: {message}; delete it to rebuild it (every file is then copied again)")]
pub struct ManifestError {
    pub at: String,
    pub message: String,
}

impl Manifest {
    pub fn new() -> Manifest {
        Manifest { version: 1, files: BTreeMap::new() }
    }

    pub fn parse(text: &[u8], at: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(text)
            .map_err(|e| ManifestError { at: at.to_string(), message: e.to_string() })?;
        if manifest.version != 1 {
            return Err(ManifestError {
                at: at.to_string(),
                message: format!("version {} is not one this skyweave reads (1)", manifest.version),
            });
        }
        Ok(manifest)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes")
    }

    /// Whether `path` is known to hold, at the destination version
    /// `dst_version`, the content that `source` holds at `src_version`.
    pub fn vouches(
        &self,
        path: &str,
        size: u64,
        dst_version: &str,
        source: &str,
        src_version: &str,
    ) -> bool {
        // A store that gave no version vouches for nothing.
        if dst_version.is_empty() || src_version.is_empty() {
            return false;
        }
        self.files.get(path).is_some_and(|e| {
            e.size == size
                && e.dst_version == dst_version
                && e.sources.get(source).is_some_and(|v| v == src_version)
        })
    }
}

/// Hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            size: 10,
            blake3: "ab".into(),
            dst_version: "\"d1\"".into(),
            sources: BTreeMap::from([("s3://a/".to_string(), "\"s1\"".to_string())]),
        }
    }

    #[test]
    fn a_manifest_vouches_only_for_recorded_versions_on_both_sides() {
        let mut manifest = Manifest::new();
        manifest.files.insert("x".into(), entry());
        assert!(manifest.vouches("x", 10, "\"d1\"", "s3://a/", "\"s1\""));
        assert!(!manifest.vouches("x", 11, "\"d1\"", "s3://a/", "\"s1\""), "size");
        assert!(!manifest.vouches("x", 10, "\"d2\"", "s3://a/", "\"s1\""), "destination changed");
        assert!(!manifest.vouches("x", 10, "\"d1\"", "s3://a/", "\"s2\""), "source changed");
        assert!(!manifest.vouches("x", 10, "\"d1\"", "az://b/", "\"s1\""), "another replica");
        assert!(!manifest.vouches("y", 10, "\"d1\"", "s3://a/", "\"s1\""), "no entry");
    }

    #[test]
    fn manifests_round_trip_and_bad_ones_say_how_to_recover() {
        let mut manifest = Manifest::new();
        manifest.files.insert("dir/ü b.bin".into(), entry());
        let again = Manifest::parse(&manifest.to_bytes(), "m").unwrap();
        assert_eq!(again, manifest);
        let error =
            Manifest::parse(b"{\"version\": 2, \"files\": {}}", "s3://b/.skyweave/manifest.json")
                .unwrap_err()
                .to_string();
        assert!(error.contains("version 2") && error.contains("delete it"), "{error}");
        assert!(Manifest::parse(b"not json", "m").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Whatever a destination holds at the manifest's key, reading it
        /// gives a manifest or an error, never a panic.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = Manifest::parse(&bytes, "m");
        }

        #[test]
        fn json_shaped_text_parses_or_fails_cleanly(text in "\\{(\"(version|files|size|blake3|dst_version|sources)\"|[0-9]+|:|,|\\{|\\}|\"[a-z]*\")*\\}") {
            let _ = Manifest::parse(text.as_bytes(), "m");
        }
    }
}
