//! What a sync will do, decided without IO from the listings and the
//! destination's manifest: which files to copy (and from which replica),
//! which to skip, which to delete, and what the transfer costs in egress.
//!
//! A file is skipped only when the manifest vouches for it (see
//! [`crate::manifest`]); otherwise it is copied. With several replicas of the
//! source, each file is read from the replica whose egress to the
//! destination is cheapest; among equal prices the nearer one (same region,
//! then same cloud and continent, then same cloud), then the one named
//! first.

use serde::Serialize;
use skyweave_core::egress::{EgressPrices, Scope};

use crate::manifest::{Manifest, RESERVED_PREFIX};
use crate::store::ObjectMeta;

/// Where a listing came from: its location and where that location is.
#[derive(Debug, Clone)]
pub struct Place {
    /// `s3://bucket/prefix/`, a directory, ...
    pub location: String,
    /// `aws`, `azure`, `gcp`, or `local`.
    pub cloud: String,
    /// `None` when not known (a bucket named by URL only).
    pub region: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The destination has no such file.
    Missing,
    /// The destination's file has another size.
    SizeDiffers,
    /// Same size, but the manifest does not vouch that the content matches
    /// (no entry, or either side changed since it was written).
    Unverified,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Copy { path: String, size: u64, from: usize, reason: Reason, usd: f64 },
    Skip { path: String, size: u64 },
    Delete { path: String, size: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub copy: Totals,
    pub skip: Totals,
    pub delete: Totals,
    /// Estimated egress cost of the copies, USD.
    pub egress_usd: f64,
    /// Per replica, in `--from` order: what is read from it and its price.
    pub replicas: Vec<ReplicaUse>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaUse {
    pub location: String,
    pub files: u64,
    pub bytes: u64,
    pub usd_per_gb: f64,
    pub scope: &'static str,
    pub usd: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error(
        "the replicas disagree on `{path}`: {first} holds {first_size} bytes, {second} holds \
         {second_size}; sync the replicas first, or name only the right one with --from"
    )]
    ReplicasDisagree {
        path: String,
        first: String,
        first_size: u64,
        second: String,
        second_size: u64,
    },
}

/// What moving one GB from `from` to `to` costs, and how far it goes.
/// An unknown region is priced as another region of the same cloud on the
/// same continent (or as internet egress between clouds).
pub fn egress(prices: &EgressPrices, from: &Place, to: &Place) -> (f64, Scope) {
    match (&from.region, &to.region) {
        (Some(a), Some(b)) => prices.usd_per_gb(&from.cloud, a, &to.cloud, b),
        _ if from.cloud != to.cloud => prices.usd_per_gb(&from.cloud, "", &to.cloud, ""),
        _ => {
            // Two regions of one continent, whatever they are.
            prices.usd_per_gb(&from.cloud, "us-east-1", &to.cloud, "us-west-2")
        }
    }
}

fn nearness(scope: Scope) -> u8 {
    match scope {
        Scope::SameRegion => 0,
        Scope::SameCloudSameContinent => 1,
        Scope::SameCloudOtherContinent => 2,
        Scope::OtherCloud => 3,
    }
}

/// Plans a sync from `replicas` (each with its listing) to `target`.
/// `delete`: remove destination files that no replica has.
pub fn plan(
    replicas: &[(Place, Vec<ObjectMeta>)],
    target: &(Place, Vec<ObjectMeta>),
    manifest: &Manifest,
    delete: bool,
    prices: &EgressPrices,
) -> Result<Plan, PlanError> {
    use std::collections::BTreeMap;
    let data = |meta: &&ObjectMeta| !meta.key.starts_with(RESERVED_PREFIX);
    // Path -> (replica index, listing) for every replica holding it.
    let mut sources: BTreeMap<&str, Vec<(usize, &ObjectMeta)>> = BTreeMap::new();
    for (index, (_, objects)) in replicas.iter().enumerate() {
        for meta in objects.iter().filter(data) {
            sources.entry(meta.key.as_str()).or_default().push((index, meta));
        }
    }
    let existing: BTreeMap<&str, &ObjectMeta> =
        target.1.iter().filter(data).map(|m| (m.key.as_str(), m)).collect();
    let prices_per_replica: Vec<(f64, Scope)> =
        replicas.iter().map(|(place, _)| egress(prices, place, &target.0)).collect();

    let mut actions = Vec::new();
    let (mut copy, mut skip, mut remove) =
        (Totals::default(), Totals::default(), Totals::default());
    let mut uses: Vec<ReplicaUse> = replicas
        .iter()
        .zip(&prices_per_replica)
        .map(|((place, _), (usd_per_gb, scope))| ReplicaUse {
            location: place.location.clone(),
            files: 0,
            bytes: 0,
            usd_per_gb: *usd_per_gb,
            scope: if place.cloud == "local" { "from local disk" } else { scope.describe() },
            usd: 0.0,
        })
        .collect();
    for (path, holders) in &sources {
        let (first_index, first) = holders[0];
        if let Some((index, other)) = holders.iter().find(|(_, m)| m.size != first.size) {
            return Err(PlanError::ReplicasDisagree {
                path: path.to_string(),
                first: replicas[first_index].0.location.clone(),
                first_size: first.size,
                second: replicas[*index].0.location.clone(),
                second_size: other.size,
            });
        }
        let size = first.size;
        let reason = match existing.get(path) {
            None => Reason::Missing,
            Some(dst) if dst.size != size => Reason::SizeDiffers,
            Some(dst) => {
                let vouched = holders.iter().any(|(i, src)| {
                    manifest.vouches(
                        path,
                        size,
                        &dst.version,
                        &replicas[*i].0.location,
                        &src.version,
                    )
                });
                if vouched {
                    skip.files += 1;
                    skip.bytes += size;
                    actions.push(Action::Skip { path: path.to_string(), size });
                    continue;
                }
                Reason::Unverified
            }
        };
        // Cheapest, then nearest, then first named.
        let (from, _) = holders
            .iter()
            .min_by(|(a, _), (b, _)| {
                let (pa, sa) = prices_per_replica[*a];
                let (pb, sb) = prices_per_replica[*b];
                pa.total_cmp(&pb).then(nearness(sa).cmp(&nearness(sb))).then(a.cmp(b))
            })
            .copied()
            .expect("a path has at least one holder");
        let usd = size as f64 / 1e9 * prices_per_replica[from].0;
        copy.files += 1;
        copy.bytes += size;
        uses[from].files += 1;
        uses[from].bytes += size;
        uses[from].usd += usd;
        actions.push(Action::Copy { path: path.to_string(), size, from, reason, usd });
    }
    if delete {
        for (path, meta) in &existing {
            if !sources.contains_key(path) {
                remove.files += 1;
                remove.bytes += meta.size;
                actions.push(Action::Delete { path: path.to_string(), size: meta.size });
            }
        }
    }
    let egress_usd = uses.iter().map(|u| u.usd).sum();
    Ok(Plan { actions, copy, skip, delete: remove, egress_usd, replicas: uses })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::Entry;

    fn place(location: &str, cloud: &str, region: Option<&str>) -> Place {
        Place { location: location.into(), cloud: cloud.into(), region: region.map(str::to_string) }
    }

    fn meta(key: &str, size: u64, version: &str) -> ObjectMeta {
        ObjectMeta { key: key.into(), size, version: version.into() }
    }

    #[test]
    fn copies_what_is_missing_changed_or_unvouched_and_skips_what_the_manifest_vouches_for() {
        let source = place("s3://src/", "aws", Some("us-east-1"));
        let dest = place("az://dst/", "azure", Some("eastus"));
        let replicas = vec![(
            source.clone(),
            vec![
                meta("new", 5, "a"),
                meta("same", 7, "b"),
                meta("resized", 9, "c"),
                meta("unsure", 3, "d"),
            ],
        )];
        let target = (
            dest,
            vec![
                meta("same", 7, "D1"),
                meta("resized", 8, "D2"),
                meta("unsure", 3, "D3"),
                meta("extra", 1, "D4"),
                meta(".skyweave/manifest.json", 100, "M"),
            ],
        );
        let mut manifest = Manifest::new();
        manifest.files.insert(
            "same".into(),
            Entry {
                size: 7,
                blake3: "h".into(),
                dst_version: "D1".into(),
                sources: BTreeMap::from([("s3://src/".into(), "b".into())]),
            },
        );
        let prices = EgressPrices::shipped();
        let plan = plan(&replicas, &target, &manifest, true, &prices).unwrap();
        let reasons: Vec<(String, Option<Reason>)> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::Copy { path, reason, .. } => (path.clone(), Some(*reason)),
                Action::Skip { path, .. } => (path.clone(), None),
                Action::Delete { path, .. } => (format!("delete {path}"), None),
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("new".into(), Some(Reason::Missing)),
                ("resized".into(), Some(Reason::SizeDiffers)),
                ("same".into(), None),
                ("unsure".into(), Some(Reason::Unverified)),
                ("delete extra".into(), None),
            ]
        );
        assert_eq!((plan.copy.files, plan.copy.bytes), (3, 17));
        assert_eq!((plan.skip.files, plan.delete.files), (1, 1));
        // AWS to another cloud: internet egress, 0.09 USD per GB.
        assert!((plan.egress_usd - 17.0 / 1e9 * 0.09).abs() < 1e-15, "{}", plan.egress_usd);
        // Without --delete, nothing is removed; the manifest is never data.
        let kept = super::plan(&replicas, &target, &manifest, false, &prices).unwrap();
        assert_eq!(kept.delete.files, 0);
        assert!(!kept
            .actions
            .iter()
            .any(|a| matches!(a, Action::Copy { path, .. } if path.starts_with(".skyweave"))));
    }

    #[test]
    fn each_file_is_read_from_its_cheapest_replica() {
        let dest = place("gs://dst/", "gcp", Some("us-central1"));
        let aws = place("s3://w/", "aws", Some("us-east-1"));
        let gcp_eu = place("gs://w-eu/", "gcp", Some("europe-west4"));
        let gcp_us = place("gs://w-us/", "gcp", Some("us-central1"));
        let prices = EgressPrices::shipped();
        let replicas = vec![
            (aws, vec![meta("a", 1_000_000_000, "1"), meta("b", 10, "1"), meta("c", 10, "1")]),
            (gcp_eu, vec![meta("a", 1_000_000_000, "2"), meta("b", 10, "2")]),
            (gcp_us, vec![meta("b", 10, "3")]),
        ];
        let plan = plan(&replicas, &(dest, vec![]), &Manifest::new(), false, &prices).unwrap();
        let from: Vec<(String, usize)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Copy { path, from, .. } => Some((path.clone(), *from)),
                _ => None,
            })
            .collect();
        // a: GCP Europe to US (same cloud) beats AWS internet egress; b: the
        // same region is free; c: only AWS has it.
        assert_eq!(from, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 0)]);
        assert_eq!(plan.replicas[2].usd, 0.0);
        assert!(plan.replicas[1].usd > 0.0 && plan.replicas[1].usd < 0.09);
    }

    #[test]
    fn replicas_that_disagree_are_an_error_naming_both() {
        let dest = place("/tmp/x", "local", None);
        let replicas = vec![
            (place("s3://a/", "aws", None), vec![meta("w", 1, "1")]),
            (place("s3://b/", "aws", None), vec![meta("w", 2, "1")]),
        ];
        let error =
            plan(&replicas, &(dest, vec![]), &Manifest::new(), false, &EgressPrices::shipped())
                .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("s3://a/ holds 1 bytes") && text.contains("s3://b/ holds 2"),
            "{text}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// On random listings: every source path is copied or skipped once,
        /// copies come from a replica that has the file, deletes only touch
        /// paths no source has (and only with --delete), the totals add up.
        #[test]
        fn plans_account_for_every_file(
            a in proptest::collection::btree_map("[a-e]{1,2}", 0u64..5, 0..8),
            b in proptest::collection::btree_map("[a-e]{1,2}", 0u64..5, 0..8),
            d in proptest::collection::btree_map("[a-e]{1,2}", 0u64..5, 0..8),
            delete in proptest::prelude::any::<bool>(),
        ) {
            // Replicas agree on sizes (else the plan is an error, tested above).
            let size = |k: &str| k.len() as u64 * 10;
            let listing = |m: &std::collections::BTreeMap<String, u64>| -> Vec<ObjectMeta> {
                m.iter().map(|(k, v)| meta(k, size(k), &v.to_string())).collect()
            };
            let replicas = vec![
                (place("s3://a/", "aws", Some("us-east-1")), listing(&a)),
                (place("gs://b/", "gcp", Some("us-central1")), listing(&b)),
            ];
            let target = (place("az://d/", "azure", Some("eastus")), listing(&d));
            let plan = plan(&replicas, &target, &Manifest::new(), delete, &EgressPrices::shipped()).unwrap();
            let sources: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let mut seen = std::collections::BTreeSet::new();
            let (mut copied, mut deleted) = (0u64, 0u64);
            for action in &plan.actions {
                match action {
                    Action::Copy { path, from, size: s, .. } => {
                        proptest::prop_assert!(seen.insert(path.clone()));
                        let holder = if *from == 0 { &a } else { &b };
                        proptest::prop_assert!(holder.contains_key(path));
                        proptest::prop_assert_eq!(*s, size(path));
                        copied += s;
                    }
                    Action::Skip { .. } => proptest::prop_assert!(false, "nothing is vouched for"),
                    Action::Delete { path, size: s } => {
                        proptest::prop_assert!(delete && !sources.contains(path));
                        deleted += s;
                    }
                }
            }
            proptest::prop_assert_eq!(seen.len(), sources.len());
            proptest::prop_assert_eq!((plan.copy.bytes, plan.delete.bytes), (copied, deleted));
            let extra = d.keys().filter(|k| !sources.contains(k)).count() as u64;
            proptest::prop_assert_eq!(plan.delete.files, if delete { extra } else { 0 });
        }
    }
}
