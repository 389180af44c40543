//! The metadata database lost while the server runs, for PostgreSQL and
//! MariaDB, reached through a [`Relay`] that takes it away and gives it back
//! at the same address. Two kinds of loss: refused (the server went down:
//! open connections closed, new ones refused) and hung (no byte moves, nothing
//! is closed: a frozen host or a network dropping packets).
//!
//! While it is gone, requests that need it answer 503 within [`FAIL_WITHIN`]
//! and nothing is asked of the upstream; once it is back the same server,
//! never restarted, serves what it had cached without asking the upstream,
//! and fetches new paths again, checked with real Nix.
//!
//! Needs Nix and the servers of `NCPS_TEST_POSTGRES_URL` /
//! `NCPS_TEST_MYSQL_URL` (see `.ci/services.sh`); a missing one skips
//! loudly, or fails with `NCPS_TEST_REQUIRE_ALL=1`.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::*;
use ncps_core::testkit::service;

/// How the database goes away.
#[derive(Clone, Copy, Debug)]
enum Outage {
    Refused,
    Hung,
}

/// The longest a request needing the lost database may take to answer. The
/// database backends give up on a connection, or a statement, after 5 s;
/// twice that leaves room for a loaded two-core machine and is still far
/// below anything a Nix client would wait for.
const FAIL_WITHIN: Duration = Duration::from_secs(10);

/// The longest the server may take to use the database again once it is back.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

/// A GET's status and how long it took; status 0 if it got no answer (the
/// client gives up after a minute).
async fn timed_get(client: &reqwest::Client, url: &str) -> (u16, Duration, Fetched) {
    let started = Instant::now();
    let fetched = fetch(client, url).await;
    (fetched.status, started.elapsed(), fetched)
}

/// The path (`/nar/...`) at which the fixture's xz upstream serves the NAR
/// of `store_path`.
fn upstream_nar_path(fx: &NixFixture, store_path: &str) -> String {
    let narinfo = fx.narinfo_in(fx.cache(Compression::Xz), store_path);
    format!(
        "/{}",
        narinfo_field(&narinfo, "URL").expect("fixture narinfo has a URL")
    )
}

/// The proxy's URL of the NAR its narinfo `text` names.
fn nar_url(proxy: &Proxy, text: &str) -> String {
    let url = narinfo_field(text, "URL").expect("proxy narinfo has a URL");
    format!("{}/{url}", proxy.url())
}

/// The narinfo and NAR of `store_path` through the proxy, both 200 and
/// complete: (narinfo text, NAR bytes).
async fn get_path(client: &reqwest::Client, proxy: &Proxy, store_path: &str) -> (String, Vec<u8>) {
    let url = format!("{}/{}.narinfo", proxy.url(), hash_part(store_path));
    let narinfo = fetch(client, &url).await;
    assert_eq!(narinfo.status, 200, "{url}: {narinfo:?}");
    let text = String::from_utf8(narinfo.body).expect("narinfo is UTF-8");
    let url = nar_url(proxy, &text);
    let nar = fetch(client, &url).await;
    assert!(nar.status == 200 && nar.complete, "{url}: {nar:?}");
    (text, nar.body)
}

/// Waits (bounded) until the NAR the narinfo `text` names is in the
/// proxy's local storage, holding `nar`.
async fn wait_stored(proxy: &Proxy, text: &str, nar: &[u8]) {
    let url = narinfo_field(text, "URL").expect("proxy narinfo has a URL");
    let file = proxy.dir().join("storage").join(&url);
    let started = Instant::now();
    while !file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url} not in storage 30 s after it was served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = std::fs::read(&file).expect("reading the stored NAR");
    assert!(stored == nar, "{url} stored differs from what was served");
}

/// Fills a proxy on `server`'s database (through a relay) with part of the
/// fixture closure, takes the database away as `outage` says, checks what
/// answers and how fast, gives it back and checks the proxy recovers with
/// nothing lost.
async fn lose_and_regain(test: &str, server: &str, outage: Outage) {
    let fx = nix_fixture();
    let mut database = url::Url::parse(&fresh_database(server).await).expect("database URL");
    let target = format!(
        "{}:{}",
        database.host_str().expect("database host"),
        database.port().expect("database port")
    );
    let mut relay = Relay::start(&target).await;
    database
        .set_port(Some(relay.addr().port()))
        .expect("database URL port");

    let upstream = StaticServer::start(fx.cache(Compression::Xz)).await;
    let mut config =
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);
    config.extra_args = vec!["--cache-database-url".to_string(), database.to_string()];
    let proxy = Proxy::start(config).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");

    // Warm leaf and middle, and wait until their NARs are in storage (a
    // download is stored just after its last byte is sent).
    let mut warm = Vec::new();
    for path in [&fx.leaf, &fx.middle] {
        let first = get_path(&client, &proxy, path).await;
        wait_stored(&proxy, &first.0, &first.1).await;
        let second = get_path(&client, &proxy, path).await;
        assert_eq!(first, second, "{path} served differently twice");
        warm.push((path.clone(), first));
    }
    let narinfo_path = |p: &str| format!("/{}.narinfo", hash_part(p));
    for (path, _) in &warm {
        assert_eq!(upstream.hits(&narinfo_path(path)), 1, "{path} narinfo");
        assert_eq!(upstream.hits(&upstream_nar_path(fx, path)), 1, "{path} NAR");
    }
    let hits_before = upstream.all_hits();

    match outage {
        Outage::Refused => relay.refuse().await,
        Outage::Hung => relay.hang(),
    }
    // At once, as clients would: a miss, a cached narinfo, a stored NAR,
    // and a readiness probe.
    let miss_url = format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.top));
    let hit_url = format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.leaf));
    let stored_nar_url = nar_url(&proxy, &warm[1].1.0);
    let readyz_url = format!("{}/readyz", proxy.url());
    let (miss, hit, nar, ready) = tokio::join!(
        timed_get(&client, &miss_url),
        timed_get(&client, &hit_url),
        timed_get(&client, &stored_nar_url),
        timed_get(&client, &readyz_url),
    );
    let report = format!(
        "{test}: database {outage:?}: narinfo miss {} in {:?}, narinfo hit {} in {:?}, \
         stored NAR {} in {:?}, /readyz {} in {:?}",
        miss.0, miss.1, hit.0, hit.1, nar.0, nar.1, ready.0, ready.1
    );
    let _ = writeln!(std::io::stderr(), "{report}");
    // A miss needs the database. A hit is served from memory while its
    // narinfo is hot (read from the database less than 30 s ago), else it
    // needs the database too: either way it is right or a quick 503.
    assert_eq!(miss.0, 503, "{report}\n{:?}", miss.2);
    let hot = hit.0 == 200 && hit.2.complete && hit.2.body == warm[0].1.0.as_bytes();
    assert!(hot || hit.0 == 503, "{report}\n{:?}", hit.2);
    // A stored NAR needs the database only to record the access.
    assert!(
        nar.0 == 200 && nar.2.complete && nar.2.body == warm[1].1.1,
        "{report}\n{:?}",
        nar.2.error
    );
    assert!(
        ready.0 == 503 && String::from_utf8_lossy(&ready.2.body).contains("database"),
        "{report}\n{:?}",
        ready.2
    );
    for (what, took) in [
        ("narinfo miss", miss.1),
        ("narinfo hit", hit.1),
        ("NAR", nar.1),
        ("/readyz", ready.1),
    ] {
        assert!(took < FAIL_WITHIN, "{what} took {took:?}: {report}");
    }
    assert_eq!(
        upstream.all_hits(),
        hits_before,
        "the upstream was asked while the database was gone"
    );

    // Back: the same server uses it again without a restart.
    relay.restore().await;
    let restored = Instant::now();
    let mut last = None;
    // Readiness needs the database (a hot narinfo would not tell).
    while restored.elapsed() < RECOVER_WITHIN {
        let fetched = fetch(&client, &readyz_url).await;
        if fetched.status == 200 {
            last = None;
            break;
        }
        last = Some(fetched);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = restored.elapsed();
    assert!(
        last.is_none(),
        "{test}: still not ready {recovered:?} after the database came back: {last:?}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "{test}: database {outage:?}: served again {recovered:?} after it came back"
    );

    let ready = fetch(&client, &readyz_url).await;
    assert_eq!(
        ready.status, 200,
        "/readyz after the database came back: {ready:?}"
    );

    // Nothing lost: what was cached is served as before, from the cache alone.
    for (path, before) in &warm {
        let after = get_path(&client, &proxy, path).await;
        assert_eq!(&after, before, "{path} changed across the outage");
    }
    assert_eq!(
        upstream.all_hits(),
        hits_before,
        "cached paths were fetched again after the outage"
    );
    // New misses are fetched again, and real Nix gets the whole closure.
    get_path(&client, &proxy, &fx.top).await;
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "nix copy after the outage failed: {copy:?}");
    assert!(copy.all_valid(&fx.closure).await, "{copy:?}");
    for path in &fx.closure {
        assert_eq!(upstream.hits(&narinfo_path(path)), 1, "{path} narinfo");
        assert_eq!(upstream.hits(&upstream_nar_path(fx, path)), 1, "{path} NAR");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_refusing_connections_gives_503_and_recovers() {
    let test = "postgres_refusing_connections_gives_503_and_recovers";
    if let Some(server) = needs(test, "NCPS_TEST_POSTGRES_URL") {
        lose_and_regain(test, &server, Outage::Refused).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_hanging_gives_503_and_recovers() {
    let test = "postgres_hanging_gives_503_and_recovers";
    if let Some(server) = needs(test, "NCPS_TEST_POSTGRES_URL") {
        lose_and_regain(test, &server, Outage::Hung).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_refusing_connections_gives_503_and_recovers() {
    let test = "mariadb_refusing_connections_gives_503_and_recovers";
    if let Some(server) = needs(test, "NCPS_TEST_MYSQL_URL") {
        lose_and_regain(test, &server, Outage::Refused).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_hanging_gives_503_and_recovers() {
    let test = "mariadb_hanging_gives_503_and_recovers";
    if let Some(server) = needs(test, "NCPS_TEST_MYSQL_URL") {
        lose_and_regain(test, &server, Outage::Hung).await;
    }
}

/// Nix and the database server in `var`, or `None` after a loud skip.
fn needs(test: &str, var: &str) -> Option<String> {
    if !require_nix(test) {
        return None;
    }
    service(test, var, "source .ci/services.sh")
}
