//! A cache kept for a team, end to end with the real `ncps-server` and
//! `ncps-cli` binaries and real Nix: uploads (`nix copy --to .../upload`),
//! tokens (bearer and netrc), pins, LRU eviction on a schedule and with
//! `ncps-cli gc`, `fsck` and `stats`, and paths fetched again after an
//! eviction.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// How long a poll waits before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// `nix copy --to <url> <paths>` from the local store, with `extra` options.
fn nix_copy_to(url: &str, paths: &[String], extra: &[&str]) -> std::process::Output {
    let xdg = tempfile::tempdir().unwrap();
    Command::new("nix")
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", xdg.path())
        .arg("copy")
        .args(["--to", url])
        .args(extra)
        .args(paths)
        .output()
        .unwrap()
}

/// `nix copy --from <url>` into a fresh store with a netrc file, trusting `key`.
fn nix_copy_from_with_netrc(url: &str, paths: &[String], key: &str, netrc: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("nix")
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", dir.path().join("xdg"))
        .arg("copy")
        .args(["--from", url])
        .arg("--to")
        .arg(dir.path().join("store"))
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .arg("--option")
        .arg("netrc-file")
        .arg(netrc)
        .args(paths)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("nix copy: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// Runs `ncps-cli <args>` on the proxy's database and storage; (exit code, stdout).
fn cli(proxy: &Proxy, args: &[&str]) -> (i32, String) {
    let storage = proxy.dir().join("storage");
    let database = format!("sqlite:{}", proxy.dir().join("db.sqlite").display());
    run_cli(
        args,
        [
            "--cache-storage-local".as_ref(),
            storage.as_os_str(),
            "--cache-database-url".as_ref(),
            database.as_ref(),
        ],
    )
}

/// The NAR files in the proxy's local storage.
fn stored_nars(proxy: &Proxy) -> Vec<String> {
    let dir = proxy.dir().join("storage/nar");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".nar"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_uploads_with_put_on_and_fetches_them_back() {
    let test = "nix_uploads_with_put_on_and_fetches_them_back";
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    // An upstream with nothing: what is fetched back must be the upload.
    let empty = tempfile::tempdir().unwrap();
    let upstream = StaticServer::start(empty.path()).await;
    let mut cfg =
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);
    cfg.extra_args = vec!["--cache-allow-put-verb".into()];
    let proxy = Proxy::start(cfg).await;

    let upload = format!("{}/upload?compression=zstd", proxy.url());
    let out = nix_copy_to(&upload, &fx.closure, &[]);
    assert!(
        out.status.success(),
        "nix copy --to: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored_nars(&proxy).len(), 3, "three NARs uploaded");
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "{copy:?}");
    assert!(copy.all_valid(&fx.closure).await, "{copy:?}");
    assert_eq!(
        upstream.hits_with_prefix("/nar/"),
        0,
        "a NAR came from upstream"
    );

    // Uploading again is a no-op for Nix: everything is there.
    let again = nix_copy_to(&upload, &fx.closure, &[]);
    assert!(again.status.success());

    // The uploaded narinfo keeps the uploader's signature and gains the proxy's.
    let client = http_client();
    let got = fetch(
        &client,
        &format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.top)),
    )
    .await;
    let text = String::from_utf8(got.body).unwrap();
    let sigs = narinfo_fields(&text, "Sig");
    assert!(
        sigs.iter().any(|s| s.starts_with("ncps-test-upstream-1:")),
        "{text}"
    );
    assert!(
        sigs.iter().any(|s| s.starts_with("ncps-test-proxy-1:")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_checked_refused_when_off_and_untrusted_ones_are_403() {
    let test = "uploads_are_checked_refused_when_off_and_untrusted_ones_are_403";
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    let empty = tempfile::tempdir().unwrap();
    let upstream = StaticServer::start(empty.path()).await;
    let client = http_client();

    // PUT off: 405.
    let off = Proxy::start(ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public])).await;
    let nar_url = format!(
        "{}/upload/nar/0z73wcb5dlg18k69lzbdi7drgbgbcd3qchma57z763x14j2cwipa.nar",
        off.url()
    );
    let r = client.put(&nar_url).body("x").send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("allow").is_some());
    let out = nix_copy_to(&format!("{}/upload", off.url()), &fx.closure[..1], &[]);
    assert!(
        !out.status.success(),
        "nix copy to a cache with PUT off worked"
    );
    // DELETE off: 405.
    let r = client
        .delete(format!("{}/{}.narinfo", off.url(), hash_part(&fx.leaf)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // PUT on, trusted signatures required.
    let mut cfg = ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]);
    cfg.extra_args = vec![
        "--cache-allow-put-verb".into(),
        "--cache-allow-delete-verb".into(),
        "--cache-require-trusted-signature".into(),
        "--cache-trusted-upload-key".into(),
        fx.upstream_key.public.clone(),
    ];
    let proxy = Proxy::start(cfg).await;
    let upload = format!("{}/upload?compression=xz", proxy.url());

    // A NAR whose bytes do not hash to its name: 400, nothing stored.
    let bad = client
        .put(format!(
            "{}/upload/nar/0z73wcb5dlg18k69lzbdi7drgbgbcd3qchma57z763x14j2cwipa.nar",
            proxy.url()
        ))
        .body("not the right bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(stored_nars(&proxy).is_empty());
    // A narinfo whose NAR was never uploaded: 400.
    let narinfo = fx.narinfo_in(&fx.cache_xz, &fx.leaf);
    let r = client
        .put(format!(
            "{}/upload/{}.narinfo",
            proxy.url(),
            hash_part(&fx.leaf)
        ))
        .body(narinfo.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("upload it first"));

    // The closure is signed by the trusted key: accepted.
    let out = nix_copy_to(&upload, &fx.closure, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A narinfo lying about the NarHash of the uploaded NAR, signed by the
    // trusted key (an unsigned change would be refused first, with 403): 400.
    let stored = client
        .get(format!(
            "{}/upload/{}.narinfo",
            proxy.url(),
            hash_part(&fx.leaf)
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key: ncps_core::SigningKey = std::fs::read_to_string(&fx.upstream_key.secret_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut info: ncps_core::NarInfo = stored.parse().unwrap();
    info.nar_hash = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
        .parse()
        .unwrap();
    info.sigs.clear();
    info.sign(&key);
    let lying = info.to_string();
    let unsigned = narinfo_with(
        &stored,
        "NarHash",
        Some("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"),
    );
    let r = client
        .put(format!(
            "{}/upload/{}.narinfo",
            proxy.url(),
            hash_part(&fx.leaf)
        ))
        .body(unsigned)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a changed narinfo kept a valid signature");
    let r = client
        .put(format!(
            "{}/upload/{}.narinfo",
            proxy.url(),
            hash_part(&fx.leaf)
        ))
        .body(lying)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("NarHash"));
    // The bad path is signed only by an untrusted key: 403, and Nix fails.
    let out = nix_copy_to(&upload, std::slice::from_ref(&fx.bad_path), &[]);
    assert!(!out.status.success(), "an untrusted upload was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("403"), "{stderr}");
    let r = client
        .get(format!(
            "{}/{}.narinfo",
            proxy.url(),
            hash_part(&fx.bad_path)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the untrusted narinfo is served");

    // DELETE on: the narinfo goes (204), then 404.
    let url = format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.leaf));
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 404);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_reads_and_writes_and_nix_reads_with_a_netrc() {
    let test = "tokens_guard_reads_and_writes_and_nix_reads_with_a_netrc";
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    let upstream = StaticServer::start(fx.cache(Compression::Xz)).await;
    let mut cfg =
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);
    cfg.extra_args = vec![
        "--cache-get-token".into(),
        "read-token".into(),
        "--cache-put-token".into(),
        "write-token".into(),
        "--cache-allow-put-verb".into(),
    ];
    let proxy = Proxy::start(cfg).await;
    let client = http_client();
    let info = format!("{}/nix-cache-info", proxy.url());

    let r = client.get(&info).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenges: Vec<String> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer")),
        "{challenges:?}"
    );
    let r = client.get(&info).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&info)
        .bearer_auth("read-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(&info)
        .basic_auth("anyone", Some("read-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = client
            .get(format!("{}{open}", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401, "{open} needs a token");
    }
    // Writes need the write token; the read token is not enough.
    let pin = format!("{}/pin/{}.narinfo", proxy.url(), hash_part(&fx.top));
    let r = client
        .post(&pin)
        .bearer_auth("read-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&pin)
        .bearer_auth("write-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let r = client
        .get(format!("{}/pins", proxy.url()))
        .bearer_auth("read-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(hash_part(&fx.top)));

    // Real Nix: without credentials it fails, with a netrc it copies.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.netrc");
    std::fs::write(&wrong, "machine 127.0.0.1 login nix password nope\n").unwrap();
    assert!(!nix_copy_from_with_netrc(
        proxy.url(),
        &fx.closure,
        &fx.proxy_key.public,
        &wrong
    ));
    let netrc = dir.path().join("netrc");
    std::fs::write(&netrc, "machine 127.0.0.1 login nix password read-token\n").unwrap();
    assert!(nix_copy_from_with_netrc(
        proxy.url(),
        &fx.closure,
        &fx.proxy_key.public,
        &netrc
    ));
    // And uploads with the write token in a netrc.
    let write_netrc = dir.path().join("write.netrc");
    std::fs::write(&write_netrc, "machine 127.0.0.1 password write-token\n").unwrap();
    let out = nix_copy_to(
        &format!("{}/upload", proxy.url()),
        std::slice::from_ref(&fx.bad_path),
        &["--option", "netrc-file", write_netrc.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_on_a_schedule_keeps_pins_and_evicted_paths_come_back_from_upstream() {
    let test = "eviction_on_a_schedule_keeps_pins_and_evicted_paths_come_back_from_upstream";
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    let upstream = StaticServer::start(fx.cache(Compression::Xz)).await;
    let mut cfg =
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);
    cfg.extra_args = vec![
        "--cache-max-size".into(),
        "1".into(),
        "--cache-lru-schedule".into(),
        "* * * * * *".into(),
        // Long enough for Nix to get a NAR after its narinfo.
        "--cache-lru-min-age".into(),
        "2s".into(),
    ];
    let proxy = Proxy::start(cfg).await;
    let client = http_client();
    // Pin the leaf (its closure is itself).
    let r = client
        .post(format!(
            "{}/pin/{}.narinfo",
            proxy.url(),
            hash_part(&fx.leaf)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "{copy:?}");
    let leaf_nar = {
        let ni = fx.narinfo_in(fx.cache(Compression::Xz), &fx.leaf);
        narinfo_field(&ni, "URL").unwrap()
    };
    let leaf_file = leaf_nar.strip_prefix("nar/").unwrap().to_owned();
    // Eviction runs every second: only the pinned leaf stays.
    let started = Instant::now();
    while stored_nars(&proxy) != vec![leaf_file.clone()] {
        assert!(
            started.elapsed() < DEADLINE,
            "eviction left {:?}\n{}",
            stored_nars(&proxy),
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.log().contains("eviction run"), "{}", proxy.log());
    let nar_hits_before = upstream.hits_with_prefix("/nar/");

    // Fetched again from upstream: the two evicted NARs, not the pinned one.
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "{copy:?}");
    assert!(copy.all_valid(&fx.closure).await);
    assert_eq!(
        upstream.hits_with_prefix("/nar/") - nar_hits_before,
        2,
        "{:?}",
        upstream.all_hits()
    );
    assert_eq!(
        upstream.hits(&format!("/{leaf_nar}")),
        1,
        "the pinned NAR was fetched again"
    );
}

/// GETs the narinfo of each path from the proxy, then its NAR; the NAR file names.
async fn get_paths(proxy: &Proxy, paths: &[&str]) -> Vec<String> {
    let client = http_client();
    let mut files = Vec::new();
    for path in paths {
        let url = format!("{}/{}.narinfo", proxy.url(), hash_part(path));
        let narinfo = fetch(&client, &url).await;
        assert_eq!(narinfo.status, 200, "{url}");
        let nar = narinfo_field(&String::from_utf8_lossy(&narinfo.body), "URL").unwrap();
        let got = fetch(&client, &format!("{}/{nar}", proxy.url())).await;
        assert!(got.status == 200 && got.complete, "{nar}: {got:?}");
        files.push(nar.strip_prefix("nar/").unwrap().to_owned());
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_stats_per_upstream() {
    let test = "cli_stats_per_upstream";
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    // The first upstream lacks top, which only the second has.
    let first_dir = tempfile::tempdir().unwrap();
    copy_dir(fx.cache(Compression::Xz), first_dir.path());
    std::fs::remove_file(
        first_dir
            .path()
            .join(format!("{}.narinfo", hash_part(&fx.top))),
    )
    .unwrap();
    let first = StaticServer::start(first_dir.path()).await;
    let second = StaticServer::start(fx.cache(Compression::Zstd)).await;
    let mut proxy = Proxy::start(
        ProxyConfig::multi(
            &[first.url(), second.url()],
            &[&fx.upstream_key.public, &fx.upstream_key.public],
        )
        .secret_key(&fx.proxy_key),
    )
    .await;

    // Each path once from its upstream, then once from storage.
    let paths = [fx.leaf.as_str(), fx.middle.as_str(), fx.top.as_str()];
    let mut files = get_paths(&proxy, &paths).await;
    files.sort();
    let started = Instant::now();
    while stored_nars(&proxy) != files {
        assert!(started.elapsed() < DEADLINE, "NARs never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get_paths(&proxy, &paths).await;
    // Stopping writes the counters.
    let (status, _) = proxy.terminate().await;
    assert!(status.success(), "{}", proxy.log());

    let (code, out) = cli(&proxy, &["--json", "stats"]);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["nar"]["hits"], 3, "{stats}");
    assert_eq!(stats["nar"]["misses"], 3, "{stats}");
    let upstreams = stats["upstreams"].as_array().unwrap();
    assert_eq!(upstreams.len(), 2, "{stats}");
    let of = |url: &str| {
        upstreams
            .iter()
            .find(|u| u["upstream"] == url)
            .unwrap_or_else(|| panic!("no {url} in {stats}"))
    };
    for (upstream, paths) in [(of(&first.url()), 2), (of(&second.url()), 1)] {
        assert_eq!(upstream["storedNars"], paths, "{upstream}");
        assert_eq!(upstream["narinfoFetches"], paths, "{upstream}");
        assert_eq!(upstream["narFetches"], paths, "{upstream}");
        assert_eq!(upstream["narHits"], paths, "{upstream}");
        assert_eq!(upstream["narMisses"], paths, "{upstream}");
        assert_eq!(upstream["narHitRatio"], 0.5, "{upstream}");
        assert_eq!(
            upstream["fetchedBytes"], upstream["storedBytes"],
            "{upstream}"
        );
    }
    let first_bytes = of(&first.url())["storedBytes"].as_u64().unwrap();
    let second_bytes = of(&second.url())["storedBytes"].as_u64().unwrap();
    assert!(
        first_bytes > 1_000_000,
        "middle (1 MiB) came from the first"
    );
    assert_eq!(first_bytes + second_bytes, stats["storedBytes"]);

    // The text output says the same per upstream.
    let (code, out) = cli(&proxy, &["stats"]);
    assert_eq!(code, 0);
    let second_part = out.split(&format!("{}:", second.url())).nth(1).unwrap();
    assert!(
        second_part.contains("NAR hit ratio:  50.0% (1 hits, 1 misses)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_gc_fsck_stats_pins_and_narinfo_show() {
    let test = "cli_gc_fsck_stats_pins_and_narinfo_show";
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    let upstream = StaticServer::start(fx.cache(Compression::Zstd)).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "{copy:?}");
    let started = Instant::now();
    while stored_nars(&proxy).len() < 3 {
        assert!(started.elapsed() < DEADLINE, "NARs never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // stats and narinfo show.
    let (code, out) = cli(&proxy, &["--json", "stats"]);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["paths"], 3);
    assert_eq!(stats["storedNars"], 3);
    assert!(stats["storedBytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(stats["upstreams"][0]["storedNars"], 3, "{stats}");
    let (code, out) = cli(&proxy, &["narinfo", "show", &fx.top]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("StorePath: {}", fx.top)), "{out}");
    assert!(out.contains("in storage:"), "{out}");
    let (code, _) = cli(
        &proxy,
        &["narinfo", "show", "00000000000000000000000000000000"],
    );
    assert_eq!(code, 6, "not found");

    // Pins through the CLI protect the whole closure of top.
    let (code, _) = cli(&proxy, &["pin", &fx.top]);
    assert_eq!(code, 0);
    let (_, out) = cli(&proxy, &["pins"]);
    assert_eq!(out.trim(), fx.top);
    let (code, out) = cli(
        &proxy,
        &[
            "--json",
            "gc",
            "--max-size",
            "0",
            "--cache-lru-min-age",
            "0s",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0);
    let dry: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["evicted"].as_array().unwrap().len(), 0, "{dry}");
    assert_eq!(dry["skippedPinned"], 3, "{dry}");
    let (code, _) = cli(&proxy, &["unpin", &fx.top]);
    assert_eq!(code, 0);
    let (code, _) = cli(&proxy, &["unpin", &fx.top]);
    assert_eq!(code, 6, "unpin of a path not pinned");

    // A dry run lists, a run evicts, down to the limit.
    let (code, out) = cli(
        &proxy,
        &[
            "gc",
            "--max-size",
            "0",
            "--cache-lru-min-age",
            "0s",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out.matches("would evict /nix/store/").count(), 3, "{out}");
    assert_eq!(stored_nars(&proxy).len(), 3);
    let (code, out) = cli(
        &proxy,
        &[
            "--json",
            "gc",
            "--max-size",
            "0",
            "--cache-lru-min-age",
            "0s",
        ],
    );
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["evicted"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(report["bytesAfter"], 0);
    assert!(stored_nars(&proxy).is_empty());

    // Evicted paths come back from the upstream.
    let before = upstream.hits_with_prefix("/nar/");
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "{copy:?}");
    assert_eq!(upstream.hits_with_prefix("/nar/") - before, 3);
    let started = Instant::now();
    while stored_nars(&proxy).len() < 3 {
        assert!(started.elapsed() < DEADLINE, "NARs never stored again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // fsck: clean; then a NAR lost and one corrupted.
    let (code, _) = cli(&proxy, &["fsck", "--verify-content"]);
    assert_eq!(code, 0);
    let nars = stored_nars(&proxy);
    let storage = proxy.dir().join("storage/nar");
    std::fs::remove_file(storage.join(&nars[0])).unwrap();
    let corrupt = storage.join(&nars[1]);
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&corrupt, bytes).unwrap();
    std::fs::write(storage.join("orphan.nar"), b"left behind").unwrap();
    let (code, out) = cli(&proxy, &["--json", "fsck"]);
    assert_eq!(code, 3, "problems found and left");
    let found: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = found["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"missing-nar"), "{found}");
    assert!(kinds.contains(&"orphan"), "{found}");
    assert!(
        !kinds.contains(&"corrupt"),
        "without --verify-content: {found}"
    );
    let (code, out) = cli(&proxy, &["--json", "fsck", "--verify-content", "--repair"]);
    assert_eq!(code, 4, "every problem repaired");
    let repaired: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(out.contains("\"corrupt\""), "{repaired}");
    assert_eq!(repaired["unrepaired"], 0);
    let (code, _) = cli(&proxy, &["fsck", "--verify-content"]);
    assert_eq!(code, 0, "clean after the repair");
    // Repaired paths are fetched again.
    let before = upstream.hits_with_prefix("/nar/");
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "{copy:?}");
    assert_eq!(upstream.hits_with_prefix("/nar/") - before, 2);

    // keygen is generate-key.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(cli_binary())
        .args(["keygen", "team-1"])
        .arg(dir.path().join("sk"))
        .arg(dir.path().join("pk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    // gc without a limit is a usage error.
    let (code, _) = cli(&proxy, &["gc"]);
    assert_eq!(code, 2);
}
