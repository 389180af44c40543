//! `ncps_db::copy` moves every record and config value between backends:
//! SQLite to SQLite always; SQLite -> PostgreSQL -> MySQL -> SQLite when the
//! servers are there (see `tests/common/mod.rs` for skipping).

#![cfg(feature = "sqlite")]

mod common;

use ncps_core::{Error, MetadataDb, NarInfoRecord, NarRecord};
use ncps_db::SqliteDb;

/// Everything a database holds, in key order.
async fn contents(
    db: &dyn MetadataDb,
) -> (Vec<NarInfoRecord>, Vec<NarRecord>, Vec<(String, String)>) {
    (
        db.list_narinfos(None, usize::MAX)
            .await
            .expect("list_narinfos"),
        db.list_nars(None, usize::MAX).await.expect("list_nars"),
        db.list_config().await.expect("list_config"),
    )
}

/// A source database with `n` narinfo and NAR records and a signing key.
async fn filled(n: usize) -> SqliteDb {
    let db = SqliteDb::open_in_memory().expect("open");
    for i in 0..n {
        let hash = format!("{i:032}");
        let file = format!("{hash}.nar.xz");
        db.put_narinfo(&NarInfoRecord {
            hash: hash.clone(),
            narinfo: format!("StorePath: /nix/store/{hash}-copy\nURL: nar/{file}\n"),
            nar_file: file.clone(),
            created_at: i as i64,
            last_accessed_at: 1_000 + i as i64,
        })
        .await
        .expect("put_narinfo");
        db.put_nar(&NarRecord {
            file,
            compression: "xz".to_string(),
            file_hash: (i % 2 == 0).then(|| format!("sha256:{i}")),
            file_size: (i % 3 == 0).then_some(i as u64 * 1_000_000_000),
            nar_hash: format!("sha256:nar{i}"),
            nar_size: i as u64,
            upstream_url: (i % 2 == 1).then(|| format!("https://cache.example/nar/{i}")),
            last_accessed_at: 2_000 + i as i64,
        })
        .await
        .expect("put_nar");
    }
    db.set_config_if_absent("secret-key", "copy-test-1:secret")
        .await
        .expect("set_config_if_absent");
    if n > 0 {
        let first = format!("{:032}", 0);
        db.add_pin(&first, 5).await.expect("add_pin");
        db.set_nar_storage(&format!("{first}.nar.xz"), ncps_core::NarStorage::Stored(3))
            .await
            .expect("set_nar_storage");
    }
    db
}

#[tokio::test]
async fn sqlite_to_sqlite_copies_everything_in_pages() {
    let from = filled(25).await;
    let to = SqliteDb::open_in_memory().expect("open");
    let stats = ncps_db::copy(&from, &to, 7).await.expect("copy");
    assert_eq!((stats.narinfos, stats.nars, stats.config), (25, 25, 1));
    assert_eq!(contents(&to).await, contents(&from).await);
    assert_eq!(stats.pins, 1);
    assert_eq!(
        to.list_pins().await.expect("list_pins"),
        from.list_pins().await.expect("list_pins"),
        "pins travel with the records"
    );
    // NARs the source had in storage are to be looked up again in the target's.
    assert_eq!(
        to.nars_of_unknown_storage(100)
            .await
            .expect("unknown")
            .len(),
        1
    );

    // Copying again changes nothing.
    ncps_db::copy(&from, &to, 0).await.expect("second copy");
    assert_eq!(contents(&to).await, contents(&from).await);
}

#[tokio::test]
async fn copy_never_replaces_another_signing_key() {
    let from = filled(1).await;
    let to = SqliteDb::open_in_memory().expect("open");
    to.set_config_if_absent("secret-key", "other-1:secret")
        .await
        .expect("set_config_if_absent");
    let e = ncps_db::copy(&from, &to, 0)
        .await
        .expect_err("copied over a key");
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    assert_eq!(
        to.get_config("secret-key").await.expect("get_config"),
        Some("other-1:secret".to_string())
    );
}

#[cfg(all(feature = "postgres", feature = "mysql"))]
#[tokio::test]
async fn sqlite_to_postgres_to_mysql_and_back() {
    let test = "sqlite_to_postgres_to_mysql_and_back";
    let Some((pg_url, pg_server)) = common::fresh_postgres(test).await else {
        return;
    };
    let Some((my_url, my_server)) = common::fresh_mysql(test).await else {
        return;
    };
    let from = filled(30).await;
    let pg = ncps_db::open(&pg_url, 4).await.expect("open postgres");
    let my = ncps_db::open(&my_url, 4).await.expect("open mysql");
    let back = SqliteDb::open_in_memory().expect("open");

    ncps_db::copy(&from, pg.as_ref(), 8)
        .await
        .expect("to postgres");
    ncps_db::copy(pg.as_ref(), my.as_ref(), 8)
        .await
        .expect("to mysql");
    ncps_db::copy(my.as_ref(), &back, 8)
        .await
        .expect("back to sqlite");
    let expected = contents(&from).await;
    assert_eq!(contents(pg.as_ref()).await, expected, "postgres");
    assert_eq!(contents(my.as_ref()).await, expected, "mysql");
    assert_eq!(contents(&back).await, expected, "sqlite again");

    drop((pg, my));
    common::drop_postgres(&pg_server, &pg_url).await;
    common::drop_mysql(&my_server, &my_url).await;
}

#[cfg(not(all(feature = "postgres", feature = "mysql")))]
#[test]
fn sqlite_to_postgres_to_mysql_and_back() {
    common::skip(
        "sqlite_to_postgres_to_mysql_and_back",
        "ncps-db was built without the `postgres` and `mysql` features",
    );
}
