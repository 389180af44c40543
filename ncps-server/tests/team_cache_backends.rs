//! Eviction, uploads, deletes and `fsck` on the shared backends (S3 storage
//! with PostgreSQL or MySQL), through the real `ncps-server` and `ncps-cli`
//! binaries. The servers come from `NCPS_TEST_S3_ENDPOINT` and
//! `NCPS_TEST_POSTGRES_URL` / `NCPS_TEST_MYSQL_URL` (loud skip without).

mod common;

use common::*;
use ncps_core::testkit::service;
use ncps_core::testkit::upstream::{TestUpstream, fixture};
use ncps_core::{NixHash, SigningKey};

async fn on_s3_and(test: &str, db_var: &str) {
    let Some(endpoint) = service(test, "NCPS_TEST_S3_ENDPOINT", ".ci/s3.sh") else {
        return;
    };
    let Some(db_server) = service(test, db_var, ".ci/services.sh") else {
        return;
    };
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3, "team").await;
    let db = fresh_database(&db_server).await;
    let mut backend_args = s3_storage_args(&endpoint, &bucket, "test");
    backend_args.extend(["--cache-database-url".to_string(), db]);

    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("team-up-1");
    let a = fixture("team-a", 200_000, &key);
    let b = fixture("team-bb", 300_000, &key);
    a.publish(&upstream, &a.nar);
    b.publish(&upstream, &b.nar);
    let mut cfg = ProxyConfig::new(upstream.url.clone(), &[&key.public_key().to_string()]);
    cfg.extra_args = backend_args.clone();
    cfg.extra_args.extend(
        [
            "--cache-allow-put-verb",
            "--cache-allow-delete-verb",
            "--cache-put-token",
            "w",
        ]
        .map(String::from),
    );
    let proxy = Proxy::start(cfg).await;
    let client = http_client();
    let cli = |args: &[&str]| run_cli(args, &backend_args);

    // Both paths through the proxy, into the bucket.
    let mut nar_urls = Vec::new();
    for f in [&a, &b] {
        let text = client
            .get(format!("{}/{}.narinfo", proxy.url(), f.hash()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let url = format!("{}/{}", proxy.url(), narinfo_field(&text, "URL").unwrap());
        let got = client
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == f.nar);
        nar_urls.push(url);
    }
    let started = std::time::Instant::now();
    while bucket_keys(&s3, &bucket, "nar/").await.len() < 2 {
        assert!(started.elapsed().as_secs() < 30, "NARs never stored in S3");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // An upload into S3: an uncompressed NAR named by its hash, then its narinfo.
    let nar: Vec<u8> = b"nix-archive-1 uploaded to the team cache".to_vec();
    let hash = NixHash::digest(&nar);
    let file = format!("{}.nar", hash.to_nix32());
    let put = client
        .put(format!("{}/upload/nar/{file}", proxy.url()))
        .bearer_auth("w")
        .body(nar.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let store_hash = "0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc";
    let narinfo = format!(
        "StorePath: /nix/store/{store_hash}-uploaded\nURL: nar/{file}\nCompression: none\nFileHash: {hash}\nFileSize: {}\nNarHash: {hash}\nNarSize: {}\nReferences: \n",
        nar.len(),
        nar.len()
    );
    let put = client
        .put(format!("{}/upload/{store_hash}.narinfo", proxy.url()))
        .bearer_auth("w")
        .body(narinfo)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204, "{:?}", put.text().await);
    let got = client
        .get(format!("{}/nar/{file}", proxy.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == nar);
    assert_eq!(bucket_keys(&s3, &bucket, "nar/").await.len(), 3);

    // Deleting the uploaded NAR takes its narinfo along.
    let r = client
        .delete(format!("{}/nar/{file}", proxy.url()))
        .bearer_auth("w")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client
        .get(format!("{}/{store_hash}.narinfo", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(bucket_keys(&s3, &bucket, "nar/").await.len(), 2);

    // gc down to 100 kB: both go (each alone is over).
    let (code, out) = cli(&[
        "--json",
        "gc",
        "--max-size",
        "100K",
        "--cache-lru-min-age",
        "0s",
    ]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["bytesBefore"], 500_000, "{report}");
    assert_eq!(report["evicted"].as_array().unwrap().len(), 2, "{report}");
    assert!(bucket_keys(&s3, &bucket, "nar/").await.is_empty());

    // Fetched again from the upstream, into the bucket.
    for url in &nar_urls {
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url}: the NAR record went with it");
    }
    for f in [&a, &b] {
        let r = client
            .get(format!("{}/{}.narinfo", proxy.url(), f.hash()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let got = client
            .get(&nar_urls[if f.hash() == a.hash() { 0 } else { 1 }])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == f.nar);
    }
    assert_eq!(upstream.hits(&a.nar_path()), 2);
    assert_eq!(upstream.hits(&b.nar_path()), 2);
    let started = std::time::Instant::now();
    while bucket_keys(&s3, &bucket, "nar/").await.len() < 2 {
        assert!(started.elapsed().as_secs() < 30, "NARs never stored again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // fsck on S3: a NAR deleted behind the cache's back, and an orphan.
    let keys = bucket_keys(&s3, &bucket, "nar/").await;
    s3.delete_object()
        .bucket(&bucket)
        .key(&keys[0])
        .send()
        .await
        .unwrap();
    s3.put_object()
        .bucket(&bucket)
        .key("nar/orphan.nar")
        .body(b"left".to_vec().into())
        .send()
        .await
        .unwrap();
    let (code, out) = cli(&["--json", "fsck", "--verify-content", "--repair"]);
    assert_eq!(code, 4, "problems found and repaired");
    assert!(
        out.contains("missing-nar") && out.contains("orphan"),
        "{out}"
    );
    let (code, _) = cli(&["fsck", "--verify-content"]);
    assert_eq!(code, 0);
    let (code, out) = cli(&["--json", "stats"]);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["storedNars"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_uploads_and_fsck_on_s3_and_postgres() {
    on_s3_and(
        "eviction_uploads_and_fsck_on_s3_and_postgres",
        "NCPS_TEST_POSTGRES_URL",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_uploads_and_fsck_on_s3_and_mysql() {
    on_s3_and(
        "eviction_uploads_and_fsck_on_s3_and_mysql",
        "NCPS_TEST_MYSQL_URL",
    )
    .await;
}
