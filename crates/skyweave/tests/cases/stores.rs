//! One conformance suite for every object-store backend, run against the
//! real emulators over real sockets (moto for S3, Azurite for Azure Blob,
//! fake-gcs-server for GCS) and a local directory.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::Digest as _;
use skyweave_data::store::{ObjectStore, Part, PartDone, StoreError};

use crate::support::TempDir;

pub fn md5_of(data: &[u8]) -> [u8; 16] {
    md5::Md5::digest(data).into()
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// `data` as the parts of a multipart upload of `part_size` bytes each.
pub fn parts_of(data: &[u8], part_size: usize) -> Vec<Part> {
    let count = data.len().div_ceil(part_size);
    data.chunks(part_size)
        .enumerate()
        .map(|(index, chunk)| Part {
            index: index as u32,
            offset: (index * part_size) as u64,
            md5: md5_of(chunk),
            data: Bytes::from(chunk.to_vec()),
            last: index + 1 == count,
        })
        .collect()
}

pub async fn read_all(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, StoreError> {
    let chunks: Vec<Bytes> = store.get(key, None).await?.try_collect().await?;
    Ok(chunks.concat())
}

/// Writes each key (its name as its content), 32 at a time.
pub async fn put_each<S: ObjectStore + ?Sized>(store: &Arc<S>, keys: &[String]) {
    futures::stream::iter(keys.iter())
        .map(|key| {
            let store = store.clone();
            let data = Bytes::from(key.as_bytes().to_vec());
            async move { store.put(key, data.clone(), md5_of(&data)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// Deletes each key, 32 at a time.
pub async fn delete_each<S: ObjectStore + ?Sized>(store: &Arc<S>, keys: &[String]) {
    futures::stream::iter(keys.iter())
        .map(|key| {
            let store = store.clone();
            async move { store.delete(key).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// A fresh prefix for one test run, so that runs never see each other.
#[allow(dead_code)] // used by the cloud backends' tests
pub fn fresh_prefix(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Everything the data plane needs of a store. `part_size` is the smallest
/// part the backend accepts (5 MiB on S3). `ask_midway`: ask the store which
/// parts of an unfinished upload it holds (false only where an emulator
/// cannot answer without ending the upload; see the GCS test).
/// `refuses_stale_reads`: a read pinned to a replaced version is refused
/// (false only where an emulator ignores the precondition; see the GCS
/// test).
pub async fn conformance(
    store: Arc<dyn ObjectStore>,
    part_size: usize,
    ask_midway: bool,
    refuses_stale_reads: bool,
) {
    let at = store.describe();
    assert!(store.list().await.unwrap().is_empty(), "{at}: a fresh prefix is empty");
    assert!(store.head("absent").await.unwrap().is_none(), "{at}");
    assert!(
        matches!(read_all(store.as_ref(), "absent").await, Err(StoreError::NotFound { .. })),
        "{at}: reading a missing object is NotFound"
    );

    // Small objects, awkward names, an empty one.
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"hello".to_vec()),
        ("dir/with space/b c.txt", pattern(1000, 1)),
        ("ünïcödé/日本語 ファイル.bin", pattern(70_000, 2)),
        ("empty", Vec::new()),
        ("odd+chars&=%?#.bin", pattern(10, 3)),
    ];
    for (key, data) in &objects {
        let version = store.put(key, Bytes::from(data.clone()), md5_of(data)).await;
        let version = version.unwrap_or_else(|e| panic!("{at}: put {key}: {e}"));
        assert!(!version.is_empty(), "{at}: {key} has a version");
        let head = store.head(key).await.unwrap().unwrap_or_else(|| panic!("{at}: head {key}"));
        assert_eq!((head.key.as_str(), head.size), (*key, data.len() as u64), "{at}");
        assert_eq!(&read_all(store.as_ref(), key).await.unwrap(), data, "{at}: {key} reads back");
    }
    let mut listed = store.list().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let mut expected: Vec<(&str, u64)> =
        objects.iter().map(|(k, d)| (*k, d.len() as u64)).collect();
    expected.sort();
    assert_eq!(
        listed.iter().map(|m| (m.key.as_str(), m.size)).collect::<Vec<_>>(),
        expected,
        "{at}: the listing"
    );

    // A read pinned to a version: served while the object is at it, refused
    // once it changed (a sync records what it read, not a later version).
    let (key, data) = &objects[1];
    let version = store.head(key).await.unwrap().unwrap().version;
    let pinned: Vec<Bytes> =
        store.get_if(key, &version).await.unwrap().try_collect().await.unwrap();
    assert_eq!(&pinned.concat(), data, "{at}: a read at the listed version");
    let rewritten = pattern(data.len(), 99);
    store.put(key, Bytes::from(rewritten.clone()), md5_of(&rewritten)).await.unwrap();
    if refuses_stale_reads {
        let stale = store.get_if(key, &version).await;
        assert!(
            matches!(stale, Err(StoreError::Changed { .. })),
            "{at}: a read at a replaced version is refused"
        );
    }
    store.put(key, Bytes::from(data.clone()), md5_of(data)).await.unwrap();

    // A range.
    let key = objects[2].0;
    let range: Vec<Bytes> =
        store.get(key, Some(100..1100)).await.unwrap().try_collect().await.unwrap();
    assert_eq!(range.concat(), objects[2].1[100..1100].to_vec(), "{at}: a range");

    // What arrives is checked against the MD5 sent with it.
    let wrong = store.put("corrupt.bin", Bytes::from_static(b"some bytes"), md5_of(b"other")).await;
    assert!(wrong.is_err(), "{at}: a part whose MD5 does not match is refused");
    assert!(store.head("corrupt.bin").await.unwrap().is_none(), "{at}: nothing was stored");

    // A multipart upload: two full parts and a short one, resumed midway.
    let data = pattern(part_size * 2 + 12_345, 4);
    let parts: Vec<&[u8]> = data.chunks(part_size).collect();
    let key = "big/model weights.safetensors";
    let upload = store.start_upload(key, data.len() as u64, part_size as u64).await.unwrap();
    let send = |index: usize| {
        let (store, upload, part) =
            (store.clone(), upload.clone(), Bytes::from(parts[index].to_vec()));
        async move {
            let part = Part {
                index: index as u32,
                offset: (index * part_size) as u64,
                md5: md5_of(&part),
                data: part,
                last: index == 2,
            };
            store.put_part(key, &upload, part).await
        }
    };
    let mut done: Vec<PartDone> = vec![send(0).await.unwrap()];
    if store.parallel_parts() {
        done.push(send(2).await.unwrap());
    }
    // As after a crash: ask the store what it holds.
    let held = if ask_midway {
        store.uploaded_parts(key, &upload).await.unwrap().expect("the upload exists")
    } else {
        done.clone()
    };
    let mut held_indexes: Vec<u32> = held.iter().map(|p| p.index).collect();
    held_indexes.sort();
    let mut sent: Vec<u32> = done.iter().map(|p| p.index).collect();
    sent.sort();
    assert_eq!(held_indexes, sent, "{at}: the store holds the parts sent");
    for part in &held {
        assert_eq!(
            part.size,
            parts[part.index as usize].len() as u64,
            "{at}: part {} size",
            part.index
        );
    }
    let mut parts_done = held;
    for index in 0..3u32 {
        if !parts_done.iter().any(|p| p.index == index) {
            parts_done.push(send(index as usize).await.unwrap());
        }
    }
    parts_done.sort_by_key(|p| p.index);
    let version = store.finish_upload(key, &upload, &parts_done, data.len() as u64).await.unwrap();
    assert!(!version.is_empty());
    assert_eq!(store.head(key).await.unwrap().map(|m| m.size), Some(data.len() as u64), "{at}");
    assert!(
        read_all(store.as_ref(), key).await.unwrap() == data,
        "{at}: the multipart object reads back"
    );

    // An aborted upload leaves nothing.
    let key = "aborted.bin";
    let upload = store.start_upload(key, part_size as u64 * 2, part_size as u64).await.unwrap();
    let data = Bytes::from(pattern(part_size, 5));
    let part = Part { index: 0, offset: 0, md5: md5_of(&data), data, last: false };
    store.put_part(key, &upload, part).await.unwrap();
    store.abort_upload(key, &upload).await.unwrap();
    assert!(
        store
            .uploaded_parts(key, &upload)
            .await
            .map_or(true, |parts| parts.is_none_or(|p| p.is_empty())),
        "{at}: an aborted upload holds nothing"
    );
    assert!(store.head(key).await.unwrap().is_none(), "{at}: an aborted upload makes no object");

    // Deletes, of present and absent objects.
    for (key, _) in &objects {
        store.delete(key).await.unwrap();
    }
    store.delete("big/model weights.safetensors").await.unwrap();
    store.delete("never-there").await.unwrap();
    assert!(store.list().await.unwrap().is_empty(), "{at}: everything deleted");

    // More objects than one listing page holds (1,000 on S3 and GCS).
    let keys: Vec<String> = (0..1_100).map(|i| format!("many/{i:05}.bin")).collect();
    put_each(&store, &keys).await;
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1_100, "{at}: every page of the listing");
    delete_each(&store, &keys).await;
    assert!(store.list().await.unwrap().is_empty(), "{at}");
}

#[tokio::test]
async fn a_local_directory_is_a_conforming_store() {
    let dir = TempDir::new();
    let store = Arc::new(skyweave_data::store::local::Local::new(dir.path().join("store")));
    conformance(store, 64 * 1024, true, true).await;
}

/// An S3 store on the suite's moto server, in a fresh bucket and prefix.
pub async fn moto_store(name: &str) -> Arc<skyweave_data::store::s3::S3> {
    use skyweave_data::store::s3::{S3Config, S3Credentials, S3};
    let moto = crate::support::services::moto();
    let config = |prefix: &str| S3Config {
        bucket: "skyweave-tests".into(),
        prefix: prefix.into(),
        region: "us-east-1".into(),
        endpoint: Some(moto.endpoint()),
        credentials: S3Credentials::Static(aws_credential_types::Credentials::new(
            "AKIDTESTS3",
            "moto-accepts-any-secret",
            None,
            None,
            "tests",
        )),
    };
    S3::new(config("")).create_bucket().await.unwrap();
    Arc::new(S3::new(config(&fresh_prefix(name))))
}

#[tokio::test]
async fn s3_on_moto_is_a_conforming_store() {
    conformance(moto_store("conformance").await, 5 * 1024 * 1024, true, true).await;
}

#[tokio::test]
async fn local_keys_cannot_leave_the_directory() {
    let dir = TempDir::new();
    let store = skyweave_data::store::local::Local::new(dir.path().join("store"));
    for key in ["../escape", "/etc/passwd", "a/../../b", ""] {
        let data = Bytes::from_static(b"x");
        assert!(store.put(key, data.clone(), md5_of(&data)).await.is_err(), "{key}");
    }
}

/// The configuration of an Azure Blob store on the suite's Azurite, in a
/// fresh container (created) and prefix, with the credentials
/// `UseDevelopmentStorage=true` names.
pub async fn azurite_config(name: &str) -> skyweave_data::store::azure::AzureConfig {
    use skyweave_data::store::azure::{Azure, AzureConfig, DEVELOPMENT_ACCOUNT};
    let azurite = crate::support::services::azurite();
    let mut config = AzureConfig::from_connection_string(
        "UseDevelopmentStorage=true",
        fresh_prefix("skyweave"),
        fresh_prefix(name),
    )
    .unwrap();
    config.endpoint = Some(format!("{}/{DEVELOPMENT_ACCOUNT}", azurite.endpoint()));
    let store = Azure::new(config.clone()).unwrap();
    store.create_container().await.unwrap();
    // Twice: an existing container is success.
    store.create_container().await.unwrap();
    config
}

#[tokio::test]
async fn azure_blob_on_azurite_is_a_conforming_store() {
    let config = azurite_config("conformance").await;
    let store = skyweave_data::store::azure::Azure::new(config).unwrap();
    conformance(Arc::new(store), 256 * 1024, true, true).await;
}

/// What the conformance suite leaves open: which error each refusal is,
/// versions, and uploads that meet an existing blob.
#[tokio::test]
async fn azure_blob_refusals_versions_and_uploads_on_azurite() {
    use skyweave_data::store::azure::{Azure, AzureCredentials};
    let config = azurite_config("specifics").await;
    let store = Azure::new(config.clone()).unwrap();
    let at = store.describe();

    // The service checks the MD5 sent with the bytes, of a blob and of a block.
    let data = Bytes::from_static(b"some bytes");
    let wrong = store.put("x.bin", data.clone(), md5_of(b"other")).await;
    assert!(matches!(wrong, Err(StoreError::Integrity { .. })), "{at}: {wrong:?}");
    let upload = store.start_upload("x.bin", 10, 10).await.unwrap();
    let part = Part { index: 0, offset: 0, data: data.clone(), md5: md5_of(b"other"), last: true };
    let wrong = store.put_part("x.bin", &upload, part).await;
    assert!(matches!(wrong, Err(StoreError::Integrity { .. })), "{at}: {wrong:?}");

    // One version, however it is read.
    let old = Bytes::from_static(b"the old object");
    let version = store.put("v.bin", old.clone(), md5_of(&old)).await.unwrap();
    assert_eq!(store.head("v.bin").await.unwrap().unwrap().version, version, "{at}");
    let listed = store.list().await.unwrap();
    assert_eq!(listed.iter().find(|m| m.key == "v.bin").unwrap().version, version, "{at}");

    // Aborting an upload over an existing blob leaves the blob as it was.
    let new = Bytes::from_static(b"the new one");
    let part = |data: &Bytes| Part {
        index: 0,
        offset: 0,
        md5: md5_of(data),
        data: data.clone(),
        last: true,
    };
    let aborted = store.start_upload("v.bin", new.len() as u64, 64).await.unwrap();
    store.put_part("v.bin", &aborted, part(&new)).await.unwrap();
    store.abort_upload("v.bin", &aborted).await.unwrap();
    assert_eq!(read_all(&store, "v.bin").await.unwrap(), old, "{at}: the old blob survives");
    assert_eq!(store.head("v.bin").await.unwrap().unwrap().version, version, "{at}");

    // Another upload of the same blob never takes the aborted one's blocks
    // for its own; once finished, it no longer exists.
    let upload = store.start_upload("v.bin", new.len() as u64, 64).await.unwrap();
    assert_eq!(store.uploaded_parts("v.bin", &upload).await.unwrap(), Some(vec![]), "{at}");
    let done = store.put_part("v.bin", &upload, part(&new)).await.unwrap();
    let held = store.uploaded_parts("v.bin", &upload).await.unwrap();
    assert_eq!(held, Some(vec![done.clone()]), "{at}");
    let finished = store.finish_upload("v.bin", &upload, &[done], new.len() as u64).await.unwrap();
    assert_ne!(finished, version, "{at}");
    assert_eq!(read_all(&store, "v.bin").await.unwrap(), new, "{at}");
    assert_eq!(store.uploaded_parts("v.bin", &upload).await.unwrap(), None, "{at}: finished");

    // A wrong key is a credentials error that does not repeat the key.
    let wrong_key = "bm90IHRoZSBhY2NvdW50IGtleQ==";
    let refused = Azure::new(skyweave_data::store::azure::AzureConfig {
        credentials: AzureCredentials::SharedKey { key: wrong_key.into() },
        ..config.clone()
    })
    .unwrap()
    .head("v.bin")
    .await;
    match refused {
        Err(error @ StoreError::Credentials { .. }) => {
            assert!(!error.to_string().contains(wrong_key), "{error}")
        }
        other => panic!("{at}: a wrong key gave {other:?}"),
    }

    // A missing container is an error, not an empty or absent object.
    let absent = Azure::new(skyweave_data::store::azure::AzureConfig {
        container: "no-such-container".into(),
        ..config
    })
    .unwrap();
    assert!(matches!(absent.list().await, Err(StoreError::NotFound { .. })));
    assert!(matches!(absent.head("a").await, Err(StoreError::NotFound { .. })));

    for key in ["v.bin", "x.bin"] {
        store.delete(key).await.unwrap();
    }
    assert!(store.list().await.unwrap().is_empty(), "{at}");
}

/// A GCS store on the suite's fake-gcs-server, without credentials, in a
/// bucket (created) and a fresh prefix.
pub async fn fake_gcs_store(name: &str) -> skyweave_data::store::gcs::Gcs {
    use skyweave_data::store::gcs::{Gcs, GcsConfig};
    let service = crate::support::services::fake_gcs();
    let config = |prefix: String| GcsConfig {
        bucket: "skyweave-tests".into(),
        prefix,
        endpoint: Some(service.endpoint()),
        credentials: None,
    };
    let bucket = Gcs::new(config(String::new())).unwrap();
    bucket.create_bucket().await.unwrap();
    // Twice: an existing bucket (409) is success.
    bucket.create_bucket().await.unwrap();
    Gcs::new(config(fresh_prefix(name))).unwrap()
}

/// The whole suite but two questions the emulator cannot answer:
/// - fake-gcs-server (1.54, and 1.56.1 alike: fsouza/fake-gcs-server#1362,
///   #2354) finishes a resumable upload when asked how far it got (`PUT`
///   with `Content-Range: bytes */SIZE`), with the bytes it holds, where GCS
///   answers 308 and keeps it open; so an upload cannot be resumed there. The
///   store deletes that short object and reports the upload gone (checked
///   below).
/// - it ignores `ifGenerationMatch` on a download (GCS answers 412), so a
///   read pinned to a replaced generation is served there.
#[tokio::test]
async fn gcs_on_fake_gcs_server_is_a_conforming_store() {
    conformance(Arc::new(fake_gcs_store("conformance").await), 256 * 1024, false, false).await;
}

/// What the conformance suite cannot reach on fake-gcs-server (it stops at
/// resuming: see above) or leaves open: a resumable upload sent in one go,
/// the checks of its parts and of the finished object, abort, versions,
/// deletes, and a listing of more than one page.
#[tokio::test]
async fn gcs_uploads_checks_and_listing_on_fake_gcs_server() {
    let store = Arc::new(fake_gcs_store("specifics").await);
    let at = store.describe();
    const PART: usize = 256 * 1024;

    // A resumable upload in order: two full parts and a short one.
    let data = pattern(PART * 2 + 12_345, 6);
    let key = "big/ünïcödé weights+1.bin";
    let send = |upload: String, data: Vec<u8>, index: usize, last: bool| {
        let store = store.clone();
        async move {
            let chunk =
                Bytes::from(data[index * PART..((index + 1) * PART).min(data.len())].to_vec());
            let part = Part {
                index: index as u32,
                offset: (index * PART) as u64,
                md5: md5_of(&chunk),
                data: chunk,
                last,
            };
            store.put_part(key, &upload, part).await
        }
    };
    let upload = store.start_upload(key, data.len() as u64, PART as u64).await.unwrap();
    let mut parts = Vec::new();
    for index in 0..3 {
        parts.push(send(upload.clone(), data.clone(), index, index == 2).await.unwrap());
    }
    let version = store.finish_upload(key, &upload, &parts, data.len() as u64).await.unwrap();
    let head = store.head(key).await.unwrap().expect("the object exists");
    assert_eq!((head.size, &head.version), (data.len() as u64, &version), "{at}");
    assert!(read_all(store.as_ref(), key).await.unwrap() == data, "{at}: reads back");

    // A part is checked against its MD5 before it goes.
    let upload = store.start_upload("bad-part.bin", PART as u64 * 2, PART as u64).await.unwrap();
    let chunk = Bytes::from(pattern(PART, 7));
    let wrong = Part { index: 0, offset: 0, md5: md5_of(b"other"), data: chunk, last: false };
    assert!(matches!(
        store.put_part("bad-part.bin", &upload, wrong).await,
        Err(StoreError::Integrity { .. })
    ));
    store.abort_upload("bad-part.bin", &upload).await.unwrap();

    // The finished object is checked against the CRC32Cs of the parts
    // sent; one that differs is not kept.
    let key = "crc-mismatch.bin";
    let upload = store.start_upload(key, data.len() as u64, PART as u64).await.unwrap();
    let mut parts = Vec::new();
    for index in 0..3 {
        parts.push(send(upload.clone(), data.clone(), index, index == 2).await.unwrap());
    }
    parts[1].tag = parts[1].tag.replace("crc32c=", "crc32c=f");
    parts[1].tag.truncate("crc32c=".len() + 8);
    let finished = store.finish_upload(key, &upload, &parts, data.len() as u64).await;
    assert!(matches!(finished, Err(StoreError::Integrity { .. })), "{at}: {finished:?}");
    assert!(store.head(key).await.unwrap().is_none(), "{at}: the object was deleted");

    // Asking the emulator about an unfinished upload finishes it with the
    // bytes it holds (GCS answers 308): then no short object may remain.
    let key = "asked.bin";
    let upload = store.start_upload(key, PART as u64 * 2, PART as u64).await.unwrap();
    send(upload.clone(), pattern(PART * 2, 8), 0, false).await.unwrap();
    match store.uploaded_parts(key, &upload).await.unwrap() {
        Some(held) => assert_eq!(held.iter().map(|p| p.index).collect::<Vec<_>>(), [0]),
        None => assert!(store.head(key).await.unwrap().is_none(), "{at}: no short object"),
    }
    store.abort_upload(key, &upload).await.unwrap();
    assert!(store.head(key).await.unwrap().is_none(), "{at}");

    // An aborted upload leaves nothing.
    let key = "aborted.bin";
    let upload = store.start_upload(key, PART as u64 * 2, PART as u64).await.unwrap();
    send(upload.clone(), pattern(PART * 2, 9), 0, false).await.unwrap();
    store.abort_upload(key, &upload).await.unwrap();
    store.abort_upload(key, &upload).await.unwrap();
    assert!(
        store.uploaded_parts(key, &upload).await.unwrap().is_none_or(|p| p.is_empty()),
        "{at}: an aborted upload holds nothing"
    );
    assert!(store.head(key).await.unwrap().is_none(), "{at}");

    // Versions are generations: a new one at every write.
    let first = store.put("v.bin", Bytes::from_static(b"1"), md5_of(b"1")).await.unwrap();
    let second = store.put("v.bin", Bytes::from_static(b"2"), md5_of(b"2")).await.unwrap();
    assert_ne!(first, second, "{at}");
    assert_eq!(store.head("v.bin").await.unwrap().map(|m| m.version), Some(second));

    // Deletes, and more objects than one listing page holds.
    for key in ["big/ünïcödé weights+1.bin", "v.bin", "never-there"] {
        store.delete(key).await.unwrap();
    }
    assert!(store.list().await.unwrap().is_empty(), "{at}: everything deleted");
    let keys: Vec<String> = (0..1_100).map(|i| format!("many/{i:05}.bin")).collect();
    put_each(&store, &keys).await;
    let mut listed: Vec<String> = store.list().await.unwrap().into_iter().map(|m| m.key).collect();
    listed.sort();
    assert_eq!(listed, keys, "{at}: every page of the listing");
    delete_each(&store, &keys).await;
    assert!(store.list().await.unwrap().is_empty(), "{at}");
}

/// A resumable upload goes in one streamed request. When that connection
/// breaks midway, a part's upload fails with an error (never a success,
/// never a hang), and no short object is left behind.
#[tokio::test]
async fn a_streamed_gcs_upload_cut_midway_fails_cleanly_on_fake_gcs_server() {
    use skyweave_data::store::gcs::{Gcs, GcsConfig};
    const PART: usize = 256 * 1024;
    let service = crate::support::services::fake_gcs();
    // The session's request carries the parts one after the other: cut it
    // within the third part.
    let proxy = crate::support::proxy::cutting(service.port, PART * 5 / 2).await;
    let config = |endpoint: String, prefix: String| GcsConfig {
        bucket: "skyweave-tests".into(),
        prefix,
        endpoint: Some(endpoint),
        credentials: None,
    };
    Gcs::new(config(service.endpoint(), String::new())).unwrap().create_bucket().await.unwrap();
    let prefix = fresh_prefix("cut");
    let store = Gcs::new(config(format!("http://127.0.0.1:{proxy}"), prefix.clone())).unwrap();
    let direct = Gcs::new(config(service.endpoint(), prefix)).unwrap();

    let data = pattern(PART * 4, 11);
    let key = "cut/weights.bin";
    let upload = store.start_upload(key, data.len() as u64, PART as u64).await.unwrap();
    let mut outcomes = Vec::new();
    for part in parts_of(&data, PART) {
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            store.put_part(key, &upload, part),
        )
        .await
        .expect("a broken upload request fails within seconds, not after a stall");
        let failed = outcome.is_err();
        outcomes.push(outcome);
        if failed {
            break;
        }
    }
    let error = match outcomes.pop() {
        Some(Err(error)) => error,
        other => panic!("the cut went unnoticed: {other:?} after {} parts", outcomes.len()),
    };
    let message = error.to_string();
    assert!(message.contains(&format!("{key} (resumable upload)")), "names the upload: {message}");
    assert!(message.contains("broke midway"), "says what happened: {message}");
    assert!(!message.contains("upload_id"), "no session URI in errors: {message}");
    assert!(outcomes.iter().all(|o| o.is_ok()), "the parts before the cut went: {outcomes:?}");
    // Whatever the emulator did with the truncated request, no object of
    // the wrong size exists.
    match direct.head(key).await.unwrap() {
        None => {}
        Some(meta) => assert_eq!(meta.size, data.len() as u64, "no short object"),
    }
    let _ = store.abort_upload(key, &upload).await;
}

/// Resuming a GCS upload, on a protocol emulator of resumable uploads that
/// keeps a session open when asked about it (as GCS does; fake-gcs-server
/// finishes it). A streamed upload is cut inside its third part; the store
/// then reports the whole parts the session holds, a further part is
/// refused as out of order (`Behind`: the file goes again), and sending the
/// missing parts finishes the object with exactly the bytes of the file.
#[tokio::test]
async fn a_gcs_upload_cut_midway_resumes_from_what_the_session_holds() {
    use skyweave_data::store::gcs::{Gcs, GcsConfig};
    const PART: usize = 256 * 1024;
    let emulator = skyweave_emulators::spawn_gcs_uploads().await.unwrap();
    let proxy = crate::support::proxy::cutting(emulator.addr.port(), PART * 5 / 2).await;
    let config = |endpoint: String| GcsConfig {
        bucket: "resume".into(),
        prefix: "p".into(),
        endpoint: Some(endpoint),
        credentials: None,
    };
    let cut = Gcs::new(config(format!("http://127.0.0.1:{proxy}"))).unwrap();
    let data = pattern(PART * 4 + 1_000, 12);
    let parts = parts_of(&data, PART);
    let part = |index: usize| parts[index].clone();
    let key = "weights.bin";
    let upload = cut.start_upload(key, data.len() as u64, PART as u64).await.unwrap();
    let mut sent = 0;
    let error = loop {
        match cut.put_part(key, &upload, part(sent)).await {
            Ok(_) => sent += 1,
            Err(error) => break error,
        }
        assert!(sent < parts.len(), "the cut went unnoticed");
    };
    assert!(error.to_string().contains("broke midway"), "{error}");

    // As after a kill: another store asks what is held (the session URI
    // names the proxy, whose limit is per connection: new ones pass).
    let resumed = Gcs::new(config(format!("http://127.0.0.1:{proxy}"))).unwrap();
    let held = resumed.uploaded_parts(key, &upload).await.unwrap().expect("the session is open");
    let held: Vec<u32> = held.iter().map(|p| p.index).collect();
    assert_eq!(held, [0, 1], "two whole parts arrived before the cut");

    // A part past what the session holds is refused: the file goes again.
    let skipped = resumed.put_part(key, &upload, part(3)).await;
    assert!(matches!(skipped, Err(StoreError::Behind { held: 524_288, .. })), "{skipped:?}");

    // Sending the missing parts finishes the object.
    let held_parts = resumed.uploaded_parts(key, &upload).await.unwrap().unwrap();
    let mut done = held_parts;
    for index in 2..parts.len() {
        done.push(resumed.put_part(key, &upload, part(index)).await.unwrap());
    }
    resumed.finish_upload(key, &upload, &done, data.len() as u64).await.unwrap();
    assert!(emulator.object("resume", "p/weights.bin").unwrap() == data, "the object is the file");
    assert_eq!(emulator.chunk_requests(), 2, "one streamed request before the cut, one after");
}

/// An S3-compatible store that does not implement checksum algorithms
/// (Cloudflare R2 documents `x-amz-checksum-algorithm` as unsupported;
/// such a store answers `501 NotImplemented`), as a small path-style
/// subset of the S3 API: multipart uploads then go without part checksums,
/// and the MD5 checks still hold them to the bytes sent.
#[tokio::test]
async fn s3_stores_that_refuse_part_checksums_get_uploads_without_them() {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::{IntoResponse, Response};
    use skyweave_data::store::s3::{S3Config, S3Credentials, S3};

    #[derive(Default)]
    struct Seen {
        log: Vec<String>,
        parts: BTreeMap<u32, Vec<u8>>,
        object: Option<(Vec<u8>, String)>,
    }
    type Shared = Arc<Mutex<Seen>>;
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    fn s3_error(status: StatusCode, code: &str) -> Response {
        let body = format!("<Error><Code>{code}</Code><Message>{code}</Message></Error>");
        (status, body).into_response()
    }
    async fn handle(
        State(seen): State<Shared>,
        method: Method,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Response {
        let mut seen = seen.lock().unwrap();
        if method == Method::POST && query.contains_key("uploads") {
            if headers.contains_key("x-amz-checksum-algorithm") {
                seen.log.push("create refused".into());
                return s3_error(StatusCode::NOT_IMPLEMENTED, "NotImplemented");
            }
            seen.log.push("create".into());
            let xml = "<InitiateMultipartUploadResult><UploadId>u-1</UploadId>\
                       </InitiateMultipartUploadResult>";
            return xml.into_response();
        }
        if method == Method::PUT && query.contains_key("partNumber") {
            if headers.contains_key("x-amz-checksum-crc32") {
                return s3_error(StatusCode::BAD_REQUEST, "InvalidRequest");
            }
            let number: u32 = query["partNumber"].parse().unwrap();
            seen.log.push(format!("part {number}"));
            let etag = format!("\"{}\"", hex(&md5_of(&body)));
            seen.parts.insert(number, body.to_vec());
            return (StatusCode::OK, [("etag", etag)]).into_response();
        }
        if method == Method::POST && query.contains_key("uploadId") {
            if String::from_utf8_lossy(&body).contains("Checksum") {
                return s3_error(StatusCode::BAD_REQUEST, "InvalidPart");
            }
            seen.log.push("complete".into());
            let md5s: Vec<u8> = seen.parts.values().flat_map(|p| md5_of(p)).collect();
            let etag = format!("\"{}-{}\"", hex(&md5_of(&md5s)), seen.parts.len());
            let data: Vec<u8> = seen.parts.values().flatten().copied().collect();
            seen.object = Some((data, etag.clone()));
            let xml = format!(
                "<CompleteMultipartUploadResult><ETag>{}</ETag></CompleteMultipartUploadResult>",
                etag.replace('"', "&quot;")
            );
            return xml.into_response();
        }
        match (&method, &seen.object) {
            (&Method::HEAD | &Method::GET, Some((data, etag))) => {
                let headers = [("etag", etag.clone()), ("content-length", data.len().to_string())];
                (StatusCode::OK, headers, data.clone()).into_response()
            }
            _ => s3_error(StatusCode::NOT_FOUND, "NoSuchKey"),
        }
    }

    let seen: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(handle).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let store = S3::new(S3Config {
        bucket: "b".into(),
        prefix: String::new(),
        region: "auto".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        credentials: S3Credentials::Static(aws_credential_types::Credentials::new(
            "AKIDTEST", "secret", None, None, "tests",
        )),
    });
    const PART: usize = 256 * 1024;
    let data = pattern(PART * 2 + 999, 21);
    let key = "weights.bin";
    let upload = store.start_upload(key, data.len() as u64, PART as u64).await.unwrap();
    let mut done = Vec::new();
    for part in parts_of(&data, PART) {
        done.push(store.put_part(key, &upload, part).await.unwrap());
    }
    let version = store.finish_upload(key, &upload, &done, data.len() as u64).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.log,
        ["create refused", "create", "part 1", "part 2", "part 3", "complete"],
        "one refused create, then an upload without checksums"
    );
    let (object, etag) = seen.object.clone().unwrap();
    assert!(object == data, "the object is the file");
    assert_eq!(version, etag, "the version is the assembled object's ETag");
}
