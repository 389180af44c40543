//! A full disk (issue 10, point 4): storage and the download spool on an
//! 8 MiB tmpfs, filled up. A miss is refused with 507 before anything is
//! fetched, hits keep working, a download that runs out of space half-way
//! leaves no partial file and never serves wrong bytes, and once space
//! returns the same NARs are fetched and stored whole.
//!
//! Mounting a tmpfs needs root; without it the test skips loudly (and fails
//! under `NCPS_TEST_REQUIRE_ALL=1`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ncps_core::testkit::upstream::{Fixture, fixture};
use ncps_core::{NixHash, SigningKey};

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("ncps-disk-full-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

/// Writes zeros to `path` until the filesystem is full (or `limit` bytes).
fn fill(path: &Path, limit: u64) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    let mut written = 0;
    while written < limit {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

struct Setup {
    disk: Tmpfs,
    upstream: RouteServer,
    proxy: Proxy,
    client: reqwest::Client,
}

impl Setup {
    fn storage(&self) -> PathBuf {
        self.disk.path().join("storage")
    }

    fn stored(&self, fx: &Fixture) -> PathBuf {
        self.storage().join(&fx.info.url)
    }

    async fn get(&self, path: &str) -> Fetched {
        fetch(&self.client, &format!("{}/{path}", self.proxy.url())).await
    }

    /// Fetches the narinfo and then the NAR of `fx`.
    async fn get_nar(&self, fx: &Fixture) -> Fetched {
        let r = self.get(&format!("{}.narinfo", fx.hash())).await;
        assert_eq!(r.status, 200, "narinfo of {}: {r:?}", fx.info.store_path);
        self.get(&fx.info.url).await
    }

    /// No temporary file of storage is left (polled: a failing write
    /// removes its file as it unwinds).
    async fn no_partial_files(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let tmp = files_under(&self.storage().join(".tmp"));
            let spool = files_under(&self.disk.path().join("spool"));
            if tmp.is_empty() && spool.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: partial files left: {tmp:?} {spool:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `fx` is (or becomes, within 15 s) stored whole.
    async fn stored_whole(&self, fx: &Fixture, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.stored(fx).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bytes = std::fs::read(self.stored(fx)).unwrap_or_default();
        assert_eq!(
            NixHash::digest(&bytes),
            fx.info.nar_hash,
            "{what}: {} not stored whole",
            fx.info.store_path
        );
    }
}

#[tokio::test]
async fn a_full_disk_refuses_misses_with_507_serves_hits_and_recovers() {
    let disk = match Tmpfs::mount("8m") {
        Ok(disk) => disk,
        Err(e) => {
            if ncps_core::testkit::require_all() {
                panic!("disk_full: cannot mount a tmpfs ({e}) and NCPS_TEST_REQUIRE_ALL=1");
            }
            eprintln!("SKIPPED: disk_full: cannot mount a tmpfs ({e}); run as root");
            return;
        }
    };
    let key = SigningKey::generate("disk-full-1");
    let a = fixture("disk-full-a", 1 << 20, &key);
    let b = fixture("disk-full-bb", 1 << 20, &key);
    let c = fixture("disk-full-ccc", 1 << 20, &key);
    let mut routes = Routes::new();
    routes.insert(
        "/nix-cache-info".into(),
        Route::new("StoreDir: /nix/store\n", "text/x-nix-cache-info"),
    );
    for fx in [&a, &b, &c] {
        routes.insert(
            format!("/{}.narinfo", fx.hash()),
            Route::narinfo(fx.info.to_string()),
        );
        routes.insert(fx.nar_path(), Route::nar(fx.nar.clone()));
    }
    let upstream = RouteServer::start(routes).await;
    let storage = disk.path().join("storage");
    let spool = disk.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut cfg = ProxyConfig::new(upstream.url(), &[&key.public_key().to_string()]);
    cfg.extra_args = vec![
        "--cache-storage-local".into(),
        storage.display().to_string(),
        "--cache-temp-path".into(),
        spool.display().to_string(),
    ];
    let proxy = Proxy::start(cfg).await;
    let s = Setup {
        disk,
        upstream,
        proxy,
        client: http_client(),
    };

    // A is cached while there is room.
    let r = s.get_nar(&a).await;
    assert!(r.status == 200 && r.complete && r.body == a.nar, "A: {r:?}");
    s.stored_whole(&a, "A with room").await;

    // The disk fills up.
    let filler = s.disk.path().join("filler");
    fill(&filler, u64::MAX);
    let free = ncps_core::disk_space::available(s.disk.path()).unwrap();
    assert!(free < 64 * 1024, "the tmpfs still has {free} bytes free");

    // A hit still works.
    let r = s.get(&a.info.url).await;
    assert!(
        r.status == 200 && r.complete && r.body == a.nar,
        "hit on a full disk: {r:?}"
    );
    // A miss is refused with 507 before the upstream is asked for the NAR.
    let r = s.get_nar(&b).await;
    let message = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 507, "miss on a full disk: {message}");
    assert!(message.contains("insufficient storage"), "{message}");
    assert_eq!(s.upstream.hits(&b.nar_path()), 0, "B was fetched anyway");
    assert!(!s.stored(&b).exists());
    s.no_partial_files("B refused").await;

    // Room for the spool but not for the stored copy too: the download runs
    // out of space half-way. The client gets the right bytes or an aborted
    // transfer, never wrong ones, and nothing partial stays.
    std::fs::remove_file(&filler).unwrap();
    let free = ncps_core::disk_space::available(s.disk.path()).unwrap();
    let leave = ncps_core::disk_space::MARGIN + c.nar.len() as u64 * 3 / 2;
    fill(&filler, free.saturating_sub(leave));
    let r = s.get_nar(&c).await;
    assert_eq!(r.status, 200, "C: {r:?}");
    assert!(
        !r.complete || r.body == c.nar,
        "C: a complete body with wrong bytes"
    );
    assert!(r.body.len() <= c.nar.len());
    s.no_partial_files("C out of space half-way").await;
    assert!(!s.stored(&c).exists(), "C was stored without room for it");
    let log = s.proxy.log();
    assert!(
        log.contains("No space left on device") || log.contains("insufficient storage"),
        "the log does not say the disk is full:\n{log}"
    );

    // Space returns: B and C are fetched and stored whole, A still served.
    std::fs::remove_file(&filler).unwrap();
    for (fx, name) in [(&b, "B"), (&c, "C")] {
        let r = s.get(&fx.info.url).await;
        assert!(
            r.status == 200 && r.complete && r.body == fx.nar,
            "{name} after space returned: {r:?}"
        );
        s.stored_whole(fx, name).await;
    }
    let r = s.get(&a.info.url).await;
    assert!(r.status == 200 && r.body == a.nar);
    s.no_partial_files("at the end").await;
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}
