//! Runs the storage conformance suite on `LocalStorage`.

#![cfg(feature = "local")]

use ncps_core::Error;
use ncps_core::Storage;
use ncps_store::LocalStorage;

#[tokio::test]
async fn local_storage_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalStorage::new(dir.path().join("store")).expect("LocalStorage::new");
    ncps_core::testkit::storage_conformance(&storage).await;

    // Failed puts leave no temporary files behind.
    let tmp = dir.path().join("store").join(".tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .expect("read .tmp")
        .collect::<Result<_, _>>()
        .expect("list .tmp");
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[tokio::test]
async fn local_storage_rejects_bad_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalStorage::new(dir.path()).expect("LocalStorage::new");
    for key in [
        "",
        "/etc/passwd",
        "../escape",
        "nar/../../escape",
        "nar\\x",
        "nar/\0x",
        "nar//x",
        "nar/./x",
        "nar/",
        ".tmp/x",
    ] {
        assert!(
            matches!(storage.head(key).await, Err(Error::InvalidInput(_))),
            "head({key:?}) was not rejected"
        );
        assert!(
            matches!(storage.get(key).await, Err(Error::InvalidInput(_))),
            "get({key:?}) was not rejected"
        );
        assert!(
            matches!(storage.delete(key).await, Err(Error::InvalidInput(_))),
            "delete({key:?}) was not rejected"
        );
        let body = Box::pin(futures::stream::empty());
        assert!(
            matches!(storage.put(key, body).await, Err(Error::InvalidInput(_))),
            "put({key:?}) was not rejected"
        );
    }
}

#[tokio::test]
async fn local_storage_directory_is_not_an_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalStorage::new(dir.path()).expect("LocalStorage::new");
    let body = Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(b"x"))]));
    storage.put("nar/a.nar", body).await.expect("put");
    assert!(storage.get("nar").await.expect("get").is_none());
    assert_eq!(storage.head("nar").await.expect("head"), None);
    assert!(!storage.delete("nar").await.expect("delete"));
    assert!(storage.get("nar/a.nar/b").await.expect("get").is_none());
}

#[tokio::test]
async fn a_dead_processs_temporary_files_are_found_and_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalStorage::new(dir.path()).expect("LocalStorage::new");
    let tmp = dir.path().join(".tmp");
    // Above any pid_max, so never a live process; and one of this process.
    let dead = "4294967295-0-00000000000000ff.part";
    let mine = format!("{}-0-00000000000000ff.part", std::process::id());
    std::fs::write(tmp.join(dead), b"half a NAR").unwrap();
    std::fs::write(tmp.join(&mine), b"being written").unwrap();

    let found = storage.incomplete(None).await.expect("incomplete");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, dead);
    storage.discard(&found[0]).await.expect("discard");
    assert!(!tmp.join(dead).exists());
    assert!(tmp.join(&mine).exists(), "a live writer's file was touched");
    let mut outside = found[0].clone();
    outside.id = "../escape.part".into();
    assert!(matches!(
        storage.discard(&outside).await,
        Err(Error::InvalidInput(_))
    ));
}
