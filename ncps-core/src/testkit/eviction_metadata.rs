//! The part of the [`MetadataDb`] contract that eviction, pinning and
//! `ncps-cli` rely on: what storage holds of each NAR, least recently used
//! order, batched access times, pins and counters. Run by
//! [`super::metadata_conformance`] on every backend.

use crate::{MetadataDb, NarInfoRecord, NarRecord, NarStorage, PinRecord, StoredNar};

/// A NAR record of this suite, not in storage.
fn nar(file: &str, at: i64, upstream: Option<&str>) -> NarRecord {
    NarRecord {
        file: file.to_string(),
        compression: "xz".to_string(),
        file_hash: None,
        file_size: Some(10),
        nar_hash: format!("sha256:eviction-{file}"),
        nar_size: 20,
        upstream_url: upstream.map(str::to_string),
        last_accessed_at: at,
    }
}

/// Checks storage states, LRU order, access batches, pins and counters on a
/// database the rest of the suite may have written to (file names and
/// hashes here start with `e`, so they collide with nothing).
pub async fn eviction_metadata_conformance(db: &dyn MetadataDb) {
    let before = db
        .storage_usage()
        .await
        .expect("metadata: storage_usage failed");

    // Storage states.
    let upstream = "https://up.invalid/nar/e1.nar.xz";
    for (file, at) in [("e1.nar.xz", 30), ("e2.nar.xz", 10), ("e3.nar.xz", 20)] {
        db.put_nar(&nar(file, at, Some(upstream)))
            .await
            .expect("metadata: put_nar failed");
    }
    db.put_nar(&nar("e4.nar.xz", 10, None))
        .await
        .expect("metadata: put_nar failed");
    assert_eq!(
        db.get_nar_storage("e1.nar.xz")
            .await
            .expect("metadata: get_nar_storage failed"),
        Some(NarStorage::Absent),
        "metadata: a new NAR record is not Absent from storage"
    );
    assert_eq!(
        db.get_nar_storage("e-missing.nar")
            .await
            .expect("metadata: get_nar_storage failed"),
        None,
        "metadata: get_nar_storage found a missing record"
    );
    assert!(
        !db.set_nar_storage("e-missing.nar", NarStorage::Stored(1))
            .await
            .expect("metadata: set_nar_storage failed"),
        "metadata: set_nar_storage of a missing record returned true"
    );
    for (file, size) in [("e1.nar.xz", 100), ("e2.nar.xz", 200), ("e4.nar.xz", 400)] {
        assert!(
            db.set_nar_storage(file, NarStorage::Stored(size))
                .await
                .expect("metadata: set_nar_storage failed"),
            "metadata: set_nar_storage of an existing record returned false"
        );
    }
    db.set_nar_storage("e3.nar.xz", NarStorage::Unknown)
        .await
        .expect("metadata: set_nar_storage failed");
    assert_eq!(
        db.get_nar_storage("e2.nar.xz")
            .await
            .expect("metadata: get_nar_storage failed"),
        Some(NarStorage::Stored(200)),
        "metadata: get_nar_storage did not return the size set"
    );
    // An upsert of the record keeps what storage holds.
    db.put_nar(&nar("e2.nar.xz", 10, Some(upstream)))
        .await
        .expect("metadata: put_nar failed");
    assert_eq!(
        db.get_nar_storage("e2.nar.xz")
            .await
            .expect("metadata: get_nar_storage failed"),
        Some(NarStorage::Stored(200)),
        "metadata: put_nar over a record changed what storage holds of it"
    );
    assert_eq!(
        db.nars_of_unknown_storage(100)
            .await
            .expect("metadata: nars_of_unknown_storage failed"),
        vec!["e3.nar.xz".to_string()],
        "metadata: nars_of_unknown_storage did not list the one unknown NAR"
    );

    // Least recently used first; ties by file name; pages after a position.
    let lru = db
        .stored_nars_by_last_access(None, 100)
        .await
        .expect("metadata: stored_nars_by_last_access failed");
    let ours: Vec<&StoredNar> = lru.iter().filter(|n| n.file.starts_with('e')).collect();
    assert_eq!(
        ours.iter()
            .map(|n| (n.file.as_str(), n.size, n.last_accessed_at))
            .collect::<Vec<_>>(),
        vec![
            ("e2.nar.xz", 200, 10),
            ("e4.nar.xz", 400, 10),
            ("e1.nar.xz", 100, 30)
        ],
        "metadata: stored_nars_by_last_access is not the stored NARs, least recently used first"
    );
    assert_eq!(
        (
            ours[0].upstream_url.as_deref(),
            ours[1].upstream_url.as_deref()
        ),
        (Some(upstream), None),
        "metadata: stored_nars_by_last_access lost the upstream URL"
    );
    let page = db
        .stored_nars_by_last_access(Some((10, "e2.nar.xz")), 1)
        .await
        .expect("metadata: stored_nars_by_last_access failed");
    assert_eq!(
        page.iter().map(|n| n.file.as_str()).collect::<Vec<_>>(),
        vec!["e4.nar.xz"],
        "metadata: stored_nars_by_last_access after a position did not start at the next NAR"
    );

    // Access batches never move back, and skip what does not exist.
    db.put_narinfo(&NarInfoRecord {
        hash: "e0000000000000000000000000000000".to_string(),
        narinfo: "StorePath: /nix/store/e0000000000000000000000000000000-e\n".to_string(),
        nar_file: "e2.nar.xz".to_string(),
        created_at: 5,
        last_accessed_at: 5,
    })
    .await
    .expect("metadata: put_narinfo failed");
    db.record_accesses(
        &[
            ("e0000000000000000000000000000000".to_string(), 50),
            ("e-missing".to_string(), 50),
        ],
        &[
            ("e2.nar.xz".to_string(), 40),
            ("e1.nar.xz".to_string(), 25),
            ("e-missing.nar".to_string(), 50),
        ],
    )
    .await
    .expect("metadata: record_accesses failed");
    let access = |file: &'static str| async move {
        db.get_nar(file)
            .await
            .expect("metadata: get_nar failed")
            .expect("metadata: NAR record gone")
            .last_accessed_at
    };
    assert_eq!(
        (access("e2.nar.xz").await, access("e1.nar.xz").await),
        (40, 30),
        "metadata: record_accesses did not move a NAR forward, or moved one back"
    );
    assert_eq!(
        db.get_narinfo("e0000000000000000000000000000000")
            .await
            .expect("metadata: get_narinfo failed")
            .map(|r| r.last_accessed_at),
        Some(50),
        "metadata: record_accesses did not record a narinfo access"
    );
    assert_eq!(
        db.narinfos_of_nar("e2.nar.xz")
            .await
            .expect("metadata: narinfos_of_nar failed"),
        vec!["e0000000000000000000000000000000".to_string()],
        "metadata: narinfos_of_nar did not find the narinfo naming the NAR"
    );

    let after = db
        .storage_usage()
        .await
        .expect("metadata: storage_usage failed");
    assert_eq!(
        (
            after.narinfos - before.narinfos,
            after.nar_records - before.nar_records,
            after.stored_nars - before.stored_nars,
            after.stored_bytes - before.stored_bytes,
            after.unknown_nars - before.unknown_nars,
        ),
        (1, 4, 3, 700, 1),
        "metadata: storage_usage does not count what was recorded"
    );

    // Pins.
    let hash = "e1111111111111111111111111111111";
    assert!(
        db.add_pin(hash, 7).await.expect("metadata: add_pin failed"),
        "metadata: add_pin of a new pin returned false"
    );
    assert!(
        !db.add_pin(hash, 8).await.expect("metadata: add_pin failed"),
        "metadata: add_pin of an existing pin returned true"
    );
    db.add_pin("e2222222222222222222222222222222", 9)
        .await
        .expect("metadata: add_pin failed");
    assert_eq!(
        db.list_pins().await.expect("metadata: list_pins failed"),
        vec![
            PinRecord {
                hash: hash.to_string(),
                created_at: 7
            },
            PinRecord {
                hash: "e2222222222222222222222222222222".to_string(),
                created_at: 9
            },
        ],
        "metadata: list_pins is not every pin in hash order, with its first time"
    );
    assert_eq!(
        db.storage_usage()
            .await
            .expect("metadata: storage_usage failed")
            .pins,
        before.pins + 2,
        "metadata: storage_usage does not count pins"
    );
    assert!(
        db.delete_pin(hash)
            .await
            .expect("metadata: delete_pin failed"),
        "metadata: delete_pin of a pin returned false"
    );
    assert!(
        !db.delete_pin(hash)
            .await
            .expect("metadata: delete_pin failed"),
        "metadata: delete_pin of a missing pin returned true"
    );

    // Counters add up, repeated names included.
    db.add_counters(&[("e.hits".to_string(), 3), ("e.misses".to_string(), 1)])
        .await
        .expect("metadata: add_counters failed");
    db.add_counters(&[("e.hits".to_string(), 2), ("e.hits".to_string(), 5)])
        .await
        .expect("metadata: add_counters failed");
    db.add_counters(&[])
        .await
        .expect("metadata: add_counters of nothing failed");
    let counters: Vec<(String, i64)> = db
        .list_counters()
        .await
        .expect("metadata: list_counters failed")
        .into_iter()
        .filter(|(name, _)| name.starts_with("e."))
        .collect();
    assert_eq!(
        counters,
        vec![("e.hits".to_string(), 10), ("e.misses".to_string(), 1)],
        "metadata: counters do not add up"
    );
}
