use super::*;

fn parse(cloud: &str, text: &str) -> Result<Catalog, ConfigErrors> {
    Catalog::parse(&[CatalogFile {
        cloud: cloud.into(),
        name: format!("{cloud}.csv"),
        text: text.into(),
    }])
}

fn find<'a>(catalog: &'a Catalog, cloud: &str, zone: &str, instance: &str) -> &'a Offering {
    catalog
        .offerings
        .iter()
        .find(|o| o.cloud == cloud && o.place() == zone && o.instance_type == instance)
        .unwrap_or_else(|| panic!("no {instance} in {cloud} {zone}"))
}

#[test]
fn the_shipped_catalog_parses_every_row() {
    let catalog = Catalog::shipped();
    let data_rows: usize = SHIPPED
        .iter()
        .map(|(_, text)| text.lines().skip(1).filter(|l| !l.is_empty()).count())
        .sum();
    assert_eq!(data_rows, 983 + 68 + 1552);
    // GCP host rows are consumed by pairing, so they are neither offerings
    // nor skipped; every other row is one or the other.
    assert!(catalog.offerings.len() > 1500, "{} offerings", catalog.offerings.len());
    for cloud in ["aws", "azure", "gcp"] {
        assert!(catalog.offerings.iter().any(|o| o.cloud == cloud), "no {cloud} offering");
    }
    for o in &catalog.offerings {
        assert!(o.accelerator_count >= 1, "{o:?}");
        assert!(o.on_demand.is_some() || o.spot.is_some(), "{o:?}");
        assert!(o.on_demand.is_none_or(|p| p >= 0.0) && o.spot.is_none_or(|p| p >= 0.0));
    }
    for name in ["H100", "H200", "B200", "A100", "A100-80GB", "L4", "A10G", "Inferentia2"] {
        assert!(!catalog.matching(name, catalog.counts(name)[0]).is_empty(), "{name}");
    }
}

#[test]
fn gcp_prices_are_host_plus_accelerator_of_the_same_zone() {
    let catalog = Catalog::shipped();
    // gcp.csv: a3-highgpu-8g us-central1-a host 9.46006 / spot 2.75246,
    // H100 x8 us-central1-a 33.60609 / spot 22.8008.
    let o = find(&catalog, "gcp", "us-central1-a", "a3-highgpu-8g");
    assert_eq!((o.accelerator.as_str(), o.accelerator_count), ("H100", 8));
    assert!((o.on_demand.unwrap() - (9.46006 + 33.60609)).abs() < 1e-9);
    assert!((o.spot.unwrap() - (2.75246 + 22.8008)).abs() < 1e-9);
    assert_eq!(o.vcpus, Some(208.0));
    // a4-highgpu-8g hosts cost 0.0 in the source: the B200 row carries it all.
    let o = find(&catalog, "gcp", "asia-northeast1-b", "a4-highgpu-8g");
    assert_eq!(o.on_demand, Some(64.44));
    // TPUs stand alone.
    let tpu = catalog.offerings.iter().find(|o| o.instance_type == "tpu-v5p-8").unwrap();
    assert_eq!((tpu.accelerator.as_str(), tpu.accelerator_count), ("tpu-v5p-8", 1));
}

#[test]
fn aws_rows_are_complete_offerings_per_zone() {
    let catalog = Catalog::shipped();
    let o = find(&catalog, "aws", "use1-az3", "p5.48xlarge");
    assert_eq!((o.region.as_str(), o.on_demand, o.spot), ("us-east-1", Some(55.04), Some(14.582)));
    assert_eq!(o.origin.line, 898);
}

#[test]
fn errata_are_applied_and_listed() {
    let catalog = Catalog::shipped();
    let nd = find(&catalog, "azure", "eastus", "Standard_ND96isr_H100_v5");
    assert_eq!(nd.accelerator_count, 8);
    assert!(catalog.notes.iter().any(|n| n.contains("Standard_ND96isr_H100_v5")));
    // trn2 has no price in the source, so it is not offered, but its name
    // is known (a job may list it as an alternative).
    assert_eq!(catalog.canonical_name("trainium2"), Some("Trainium2"));
    assert!(catalog.matching("Trainium2", 16).is_empty());
}

#[test]
fn unpriced_and_unpaired_rows_are_skipped_with_a_reason() {
    let text = "InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice\n\
                a3-highgpu-8g,208.0,1872.0,,,,us-central1,us-central1-a,9.0,3.0\n\
                ,,,H100,8,,us-central1,us-central1-a,30.0,20.0\n\
                ,,,H100,8,,us-central1,us-central1-b,30.0,20.0\n\
                ,,,H100,4,,us-central1,us-central1-a,15.0,\n\
                n2-standard-8,8.0,32.0,,,,us-central1,us-central1-a,0.4,0.1\n";
    let catalog = parse("gcp", text).unwrap();
    assert_eq!(catalog.offerings.len(), 1);
    assert_eq!(catalog.offerings[0].on_demand, Some(39.0));
    let reasons: Vec<String> =
        catalog.skipped.iter().map(|s| format!("{}: {}", s.origin, s.reason)).collect();
    assert!(
        reasons.contains(&"gcp.csv:4: H100 x8: no host VM row in us-central1-b".into()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"gcp.csv:5: H100 x4: no host VM row in us-central1-a".into()),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"gcp.csv:6: n2-standard-8: no accelerator".into()), "{reasons:?}");
}

const AWS_HEADER: &str =
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch\n";

#[test]
fn malformed_rows_are_errors_at_file_line_column() {
    let text = format!(
        "{AWS_HEADER}\
         p5.48xlarge,H100,8.0,192.0,2048.0,,55.04,14.58,us-east-1,use1-az3,x86_64\n\
         p5.48xlarge,H100,8.0,192.0,2048.0,,-1.5,14.58,us-east-1,use1-az4,x86_64\n\
         p5.48xlarge,H100,8.0,192.0,2048.0,,cheap,14.58,us-east-1,use1-az5,x86_64\n\
         p5.48xlarge,H100,-8,192.0,2048.0,,55.04,14.58,us-east-1,use1-az6,x86_64\n\
         NV6ads_A10_v5,A10,0.167,6.0,55.0,,0.45,0.1,us-east-1,use1-az6,x86_64\n\
         p5.48xlarge,H100,8.0,192.0\n"
    );
    let errors = parse("aws", &text).unwrap_err().to_string();
    assert!(errors.contains("aws.csv has 4 problems"), "{errors}");
    assert!(errors.contains("aws.csv:3:36: Price -1.5 is not a price"), "{errors}");
    assert!(errors.contains("aws.csv:4:36: Price `cheap` is not a number"), "{errors}");
    assert!(
        errors.contains("aws.csv:5:18: AcceleratorCount -8 is not a number of accelerators"),
        "{errors}"
    );
    assert!(errors.contains("aws.csv:7:1: malformed row"), "{errors}");
    assert!(!errors.contains("aws.csv:6:"), "a fractional GPU is skipped, not an error: {errors}");
    assert!(errors.contains("fix: "), "{errors}");
}

#[test]
fn a_header_without_the_required_columns_is_an_error() {
    let errors = parse("aws", "InstanceType,Price\np5,1.0\n").unwrap_err().to_string();
    assert!(
        errors.contains(
            "aws.csv:1:1: the header lacks AcceleratorName, AcceleratorCount, SpotPrice, Region"
        ),
        "{errors}"
    );
}

#[test]
fn duplicate_zones_are_listed_once() {
    let row = "p5.48xlarge,H100,8.0,192.0,2048.0,,55.04,14.58,us-east-1,use1-az3,x86_64\n";
    let catalog = parse("aws", &format!("{AWS_HEADER}{row}{row}")).unwrap();
    assert_eq!(catalog.offerings.len(), 1);
    assert_eq!(catalog.skipped.len(), 1);
}

#[test]
fn gpu_hosts_follow_the_machine_type_table() {
    for (machine, want) in [
        ("a2-highgpu-4g", Some(("A100", 4))),
        ("a2-megagpu-16g", Some(("A100", 16))),
        ("a2-ultragpu-8g", Some(("A100-80GB", 8))),
        ("a3-highgpu-2g", Some(("H100", 2))),
        ("a3-edgegpu-8g-nolssd", Some(("H100", 8))),
        ("a3-megagpu-8g", Some(("H100-MEGA", 8))),
        ("a3-ultragpu-8g", Some(("H200", 8))),
        ("a4-highgpu-8g", Some(("B200", 8))),
        ("g2-standard-24", Some(("L4", 2))),
        ("g2-standard-96", Some(("L4", 8))),
        ("g2-standard-6", None),
        ("n2-standard-8", None),
    ] {
        assert_eq!(gpu_of_host(machine), want, "{machine}");
    }
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Lines built from catalog-like fields, quotes and junk.
    fn csv_text() -> impl Strategy<Value = String> {
        let field = prop_oneof![
            Just(String::new()),
            Just("H100".to_string()),
            Just("a3-highgpu-8g".to_string()),
            Just("tpu-v5p-8".to_string()),
            Just("us-central1".to_string()),
            Just("us-central1-a".to_string()),
            Just("\"{'Gpus': [1, 2]}\"".to_string()),
            Just("\"".to_string()),
            Just("-1".to_string()),
            Just("NaN".to_string()),
            Just("1e308".to_string()),
            "[0-9]{1,3}(\\.[0-9]{1,2})?",
            "\\PC{0,6}",
        ];
        let row = prop::collection::vec(field, 0..12).prop_map(|fields| fields.join(","));
        (any::<bool>(), prop::collection::vec(row, 0..8)).prop_map(|(gcp, rows)| {
            let header = if gcp {
                "InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice"
            } else {
                "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch"
            };
            format!("{header}\n{}\n", rows.join("\n"))
        })
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_with_a_located_error(text in csv_text()) {
            match parse("gcp", &text) {
                Ok(catalog) => {
                    for o in &catalog.offerings {
                        prop_assert!(o.accelerator_count >= 1);
                        prop_assert!(o.on_demand.is_none_or(|p| p.is_finite() && p >= 0.0));
                        prop_assert!(o.spot.is_none_or(|p| p.is_finite() && p >= 0.0));
                    }
                }
                Err(errors) => {
                    for error in &errors.0 {
                        prop_assert!(error.line >= 1 && error.column >= 1);
                        prop_assert_eq!(&error.file, "gcp.csv");
                    }
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(text in "\\PC{0,200}") {
            let _ = parse("aws", &text);
        }
    }
}
