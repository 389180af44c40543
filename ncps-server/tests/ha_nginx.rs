//! High availability behind a load balancer: three `ncps-server` instances
//! sharing one PostgreSQL database (metadata), one S3 bucket (NARs) and a
//! lock, behind nginx. A rolling restart (SIGTERM, drain, start) of every
//! instance under continuous client load fails no request, and real Nix
//! fetches a closure through the load balancer, also once the upstream is
//! gone and every instance answers from what the others cached.
//!
//! Needs nginx, Nix, `NCPS_TEST_POSTGRES_URL` (`.ci/services.sh`),
//! `NCPS_TEST_S3_ENDPOINT` (`.ci/s3.sh`) and `NCPS_TEST_REDIS_URL`
//! (`.ci/redis.sh`); a missing one skips loudly (without Redis the instances
//! run on local locks), or fails with `NCPS_TEST_REQUIRE_ALL=1`. The lock the
//! instances share is chosen in one place, [`lock_args`].

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ncps_core::testkit::service;
use tempfile::TempDir;

/// How many instances run behind the load balancer.
const INSTANCES: usize = 3;

/// Client tasks hammering the load balancer during the rolling restart.
const CLIENTS: usize = 6;

/// How many times every instance is restarted, one after the other.
const ROUNDS: usize = 3;

/// Store paths no instance has seen before the load starts, so clients keep
/// causing first-time misses (upstream fetch, S3 upload, metadata insert)
/// while instances restart.
const MISS_POOL: usize = 240;

// ---------------------------------------------------------------------------
// The shared lock: the ONE place that decides it
// ---------------------------------------------------------------------------

/// The lock options of one cluster's instances. THE ONE PLACE the shared
/// lock is chosen: the Redis of `NCPS_TEST_REDIS_URL` (from `.ci/redis.sh`),
/// under a key prefix of this cluster alone, so clusters of tests running
/// side by side never see each other's locks. Without it: a loud skip of
/// the Redis part (fatal under `NCPS_TEST_REQUIRE_ALL=1`), and each instance
/// keeps its default local lock, sharing only PostgreSQL and S3.
fn lock_args(test: &str) -> Vec<String> {
    let Some(redis_url) = service(
        test,
        "NCPS_TEST_REDIS_URL",
        "source .ci/redis.sh; running on local locks instead",
    ) else {
        return Vec::new();
    };
    let url = url::Url::parse(&redis_url)
        .unwrap_or_else(|e| panic!("NCPS_TEST_REDIS_URL {redis_url:?}: {e}"));
    let host = url
        .host_str()
        .unwrap_or_else(|| panic!("NCPS_TEST_REDIS_URL {redis_url:?} names no host"));
    let port = url.port().unwrap_or(6379);
    vec![
        "--cache-lock-backend".to_string(),
        "redis".to_string(),
        "--cache-redis-addrs".to_string(),
        format!("{host}:{port}"),
        "--cache-lock-redis-key-prefix".to_string(),
        format!("{}:", unique("ha-nginx")),
    ]
}

// ---------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------

/// The nginx binary, or `None` after a loud skip (fatal under
/// `NCPS_TEST_REQUIRE_ALL=1`). Debian puts it in /usr/sbin, which a non-root
/// `PATH` may lack.
fn nginx_binary(test: &str) -> Option<PathBuf> {
    if tool_installed("nginx") {
        return Some(PathBuf::from("nginx"));
    }
    let sbin = Path::new("/usr/sbin/nginx");
    if sbin.is_file() {
        return Some(sbin.to_path_buf());
    }
    require_tool(test, "nginx");
    None
}

/// Everything the tests need from outside, or `None` after a loud skip.
struct Services {
    nginx: PathBuf,
    postgres: String,
    s3: String,
}

fn services(test: &str) -> Option<Services> {
    let nginx = nginx_binary(test)?;
    if !require_nix(test) {
        return None;
    }
    let postgres = service(test, "NCPS_TEST_POSTGRES_URL", "source .ci/services.sh")?;
    let s3 = service(test, "NCPS_TEST_S3_ENDPOINT", "source .ci/s3.sh")?;
    Some(Services {
        nginx,
        postgres,
        s3,
    })
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/// nginx on a free loopback port, balancing over `ncps-server` instances;
/// killed on drop (one process: `master_process off`).
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// The load balancer configuration: round robin over the instances with
/// pooled HTTP/1.1 connections to them, and a GET that fails to connect or
/// gets a 502/503/504 retried on the next instance. `max_fails=0` because a
/// restarting instance costs one refused loopback connect, while marking it
/// down could leave nginx with "no live upstreams" when the next instance
/// restarts before the first's `fail_timeout` ends.
fn nginx_config(dir: &Path, port: u16, instances: &[u16]) -> String {
    let d = dir.display();
    let servers: String = instances
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
        .collect();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 1024;
}}
http {{
    log_format upstreams '$request $status upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {d}/access.log upstreams;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream ncps {{
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ncps;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            add_header X-Ncps-Upstream $upstream_addr always;
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Start nginx in front of the instances on `instances` (ports) and wait
    /// (bounded) until it answers through them.
    async fn start(binary: &Path, instances: &[u16]) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("ncps-ha-nginx-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_config(dir.path(), port, instances)).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let mut nginx = Nginx { child, port, dir };
        let client = http_client();
        let info = format!("{}/nix-cache-info", nginx.url());
        for _ in 0..200 {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited at start ({status}):\n{}", nginx.error_log());
            }
            if let Ok(r) = client.get(&info).send().await
                && r.status() == reqwest::StatusCode::OK
            {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nginx did not answer GET /nix-cache-info with 200 within ~10 s:\n{}",
            nginx.error_log()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Access log lines of requests nginx had to retry on another instance.
    fn retried(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(", "))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- nginx error log ---\n{}", self.error_log());
        }
    }
}

// ---------------------------------------------------------------------------
// The upstream: the fixture closure plus store paths for first-time misses
// ---------------------------------------------------------------------------

/// What a client expects for one store path.
struct Expected {
    store_path: String,
    nar_hash: String,
    file_hash: String,
    /// The NAR file as the upstream serves it.
    nar: Vec<u8>,
}

/// A signed binary cache holding the fixture closure and [`MISS_POOL`] more
/// store paths, with what each should look like through the proxy.
struct Upstream {
    _dir: TempDir,
    cache: PathBuf,
    /// Hash part to expectation.
    expected: HashMap<String, Expected>,
    /// The extra store paths' hash parts, in the order clients take them.
    pool: Vec<String>,
}

/// A `Command` for a nix tool with the test `NIX_CONFIG` and its own
/// `XDG_CACHE_HOME` under `dir`.
fn nix_command(program: &str, dir: &Path) -> Command {
    let xdg = tempfile::Builder::new()
        .prefix("xdg-cache-")
        .tempdir_in(dir)
        .unwrap()
        .keep();
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", xdg)
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `len` bytes that differ per test process and per `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn build_upstream(fx: &NixFixture) -> Upstream {
    let dir = tempfile::Builder::new()
        .prefix("ncps-ha-upstream-")
        .tempdir()
        .unwrap();
    let cache = dir.path().join("cache");
    copy_dir(&fx.cache_xz, &cache);

    // Files of a few KiB, every eighth a few hundred, added to the store as
    // content-addressed paths, signed by the upstream key and copied in.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let files: Vec<PathBuf> = (0..MISS_POOL)
        .map(|i| {
            let len = if i.is_multiple_of(8) {
                300 * 1024
            } else {
                2048 + i * 64
            };
            let path = src.join(format!("ncps-ha-miss-{i}"));
            std::fs::write(&path, noise(len, nanos ^ i as u64)).unwrap();
            path
        })
        .collect();
    let mut add = nix_command("nix-store", dir.path());
    add.arg("--add").args(&files);
    let paths: Vec<String> = run(add).lines().map(str::to_string).collect();
    assert_eq!(paths.len(), MISS_POOL, "{paths:?}");
    let mut sign = nix_command("nix", dir.path());
    sign.args(["store", "sign", "-k"])
        .arg(&fx.upstream_key.secret_path)
        .args(&paths);
    run(sign);
    let mut copy = nix_command("nix", dir.path());
    copy.arg("copy")
        .arg("--to")
        .arg(format!("file://{}?compression=xz", cache.display()))
        .args(&paths);
    run(copy);

    let mut expected = HashMap::new();
    for store_path in fx.closure.iter().chain(&paths) {
        let narinfo = fx.narinfo_in(&cache, store_path);
        let field =
            |key| narinfo_field(&narinfo, key).unwrap_or_else(|| panic!("no {key} in {narinfo}"));
        let nar = std::fs::read(cache.join(field("URL"))).unwrap();
        expected.insert(
            hash_part(store_path).to_string(),
            Expected {
                store_path: store_path.clone(),
                nar_hash: field("NarHash"),
                file_hash: field("FileHash"),
                nar,
            },
        );
    }
    let pool = paths.iter().map(|p| hash_part(p).to_string()).collect();
    Upstream {
        _dir: dir,
        cache,
        expected,
        pool,
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Three instances over one database, one bucket and one lock, behind nginx.
struct Cluster {
    instances: Vec<Proxy>,
    nginx: Nginx,
}

impl Cluster {
    async fn start(
        test: &str,
        services: &Services,
        upstream_url: &str,
        fx: &NixFixture,
    ) -> Cluster {
        let lock = lock_args(test);
        let database = fresh_database(&services.postgres).await;
        let bucket = new_bucket(&s3_client(&services.s3), "ha-nginx").await;
        let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect();
        // All at once, as a deployment starts them: the first start of a
        // fresh database must not trip over the others' migrations.
        let starts = ports.iter().map(|&port| {
            let mut config = ProxyConfig::new(upstream_url, &[&fx.upstream_key.public])
                .secret_key(&fx.proxy_key);
            config.extra_args = s3_storage_args(&services.s3, &bucket, "test");
            config.extra_args.extend(
                [
                    "--cache-database-url",
                    &database,
                    "--cache-advertise-url",
                    &format!("http://127.0.0.1:{port}"),
                ]
                .iter()
                .map(|s| s.to_string())
                .chain(lock.iter().cloned()),
            );
            Proxy::start_on(config, port)
        });
        let instances = futures::future::join_all(starts).await;
        let nginx = Nginx::start(&services.nginx, &ports).await;
        Cluster { instances, nginx }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// What the clients saw.
#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    /// First-time misses (pool paths) fetched.
    misses: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// Responses by the instance that answered (the last address of
    /// nginx's `$upstream_addr`; earlier ones were tried first).
    by_upstream: Mutex<BTreeMap<String, usize>>,
}

/// One GET through the load balancer: status 200 and the whole body, or why
/// not.
async fn get(client: &reqwest::Client, url: &str, tally: &Tally) -> Result<Vec<u8>, String> {
    tally.requests.fetch_add(1, Ordering::SeqCst);
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e:?}"))?;
    let upstream = response
        .headers()
        .get("x-ncps-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {url} ({status} via {upstream}): body: {e:?}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!(
            "GET {url}: {status} via {upstream}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let answered = upstream.rsplit(", ").next().unwrap_or("?").to_string();
    *tally
        .by_upstream
        .lock()
        .unwrap()
        .entry(answered)
        .or_default() += 1;
    Ok(body.to_vec())
}

/// Fetches one store path's narinfo and NAR through `base` and checks both
/// against what the upstream has.
async fn fetch_path(
    client: &reqwest::Client,
    base: &str,
    hash: &str,
    want: &Expected,
    proxy_key_name: &str,
    tally: &Tally,
) -> Result<(), String> {
    let narinfo = get(client, &format!("{base}/{hash}.narinfo"), tally).await?;
    let narinfo = String::from_utf8_lossy(&narinfo);
    let field = |key| narinfo_field(&narinfo, key).unwrap_or_default();
    if field("StorePath") != want.store_path || field("NarHash") != want.nar_hash {
        return Err(format!(
            "{hash}.narinfo does not match the upstream:\n{narinfo}"
        ));
    }
    if !narinfo_fields(&narinfo, "Sig")
        .iter()
        .any(|s| s.starts_with(&format!("{proxy_key_name}:")))
    {
        return Err(format!(
            "{hash}.narinfo lacks the proxy's signature:\n{narinfo}"
        ));
    }
    if field("FileHash") != want.file_hash {
        return Err(format!(
            "{hash}.narinfo: FileHash {} where the upstream has {}",
            field("FileHash"),
            want.file_hash
        ));
    }
    let url = field("URL");
    let nar = get(client, &format!("{base}/{url}"), tally).await?;
    if nar != want.nar {
        return Err(format!(
            "{url}: {} bytes that differ from the upstream's {}",
            nar.len(),
            want.nar.len()
        ));
    }
    Ok(())
}

/// Fetches store paths through `base` until `stop`: every other one a path
/// not fetched before (while the pool lasts), the others the fixture
/// closure again. Every failure is recorded, none ends the loop.
async fn client_loop(
    base: String,
    upstream: Arc<Upstream>,
    closure: Vec<String>,
    next_miss: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    proxy_key_name: String,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let miss = if round.is_multiple_of(2) {
            upstream.pool.get(next_miss.fetch_add(1, Ordering::SeqCst))
        } else {
            None
        };
        let hash = match miss {
            Some(hash) => {
                tally.misses.fetch_add(1, Ordering::SeqCst);
                hash.clone()
            }
            None => hash_part(&closure[round % closure.len()]).to_string(),
        };
        let want = &upstream.expected[&hash];
        if let Err(e) = fetch_path(&client, &base, &hash, want, &proxy_key_name, &tally).await {
            tally.failures.lock().unwrap().push(e);
        }
    }
}

/// Waits (bounded by 60 s) until `tally` counts at least `n` requests.
async fn wait_for_requests(tally: &Tally, n: usize) {
    let started = Instant::now();
    while tally.requests.load(Ordering::SeqCst) < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the clients made fewer than {n} requests in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The number in `line` right after `prefix` (`"draining 3 connections"`).
fn number_after(line: &str, prefix: &str) -> Option<usize> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Rolling restart under load: while clients keep fetching narinfos and
/// NARs through nginx (warm hits and first-time misses), each instance in
/// turn gets SIGTERM, drains, exits 0 and starts again on its port. Not one
/// request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_behind_nginx_fails_no_request() {
    let test = "rolling_restart_behind_nginx_fails_no_request";
    let Some(services) = services(test) else {
        return;
    };
    let fx = nix_fixture();
    let upstream = Arc::new(build_upstream(fx));
    let upstream_server = StaticServer::start(&upstream.cache).await;
    let mut cluster = Cluster::start(test, &services, &upstream_server.url(), fx).await;
    let base = cluster.nginx.url();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next_miss = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client_loop(
                base.clone(),
                upstream.clone(),
                fx.closure.clone(),
                next_miss.clone(),
                stop.clone(),
                tally.clone(),
                fx.proxy_key.name.clone(),
            ))
        })
        .collect();

    // Load on every instance first, so each has connections and requests
    // when its SIGTERM comes.
    wait_for_requests(&tally, 60).await;
    let before = (
        tally.requests.load(Ordering::SeqCst),
        tally.misses.load(Ordering::SeqCst),
    );
    let restarts_began = Instant::now();
    let mut drains = Vec::new();
    for _ in 0..ROUNDS {
        for (i, instance) in cluster.instances.iter_mut().enumerate() {
            let (status, took) = instance.terminate().await;
            assert!(
                status.success(),
                "instance {i} exited with {status} after SIGTERM\n--- its log ---\n{}",
                instance.log()
            );
            let stopped = Instant::now();
            instance.restart().await;
            drains.push((i, took, stopped.elapsed()));
        }
    }
    let restarts_took = restarts_began.elapsed();
    let during = (
        tally.requests.load(Ordering::SeqCst) - before.0,
        tally.misses.load(Ordering::SeqCst) - before.1,
    );
    // The restarted instances serve: give them some load, then stop.
    let after_restarts = tally.requests.load(Ordering::SeqCst);
    let served_before = tally.by_upstream.lock().unwrap().clone();
    wait_for_requests(&tally, after_restarts + 60).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }

    let failures = tally.failures.lock().unwrap().clone();
    let by_upstream = tally.by_upstream.lock().unwrap().clone();
    let mut report = format!(
        "{} requests ({} first-time misses); during {ROUNDS} rounds of rolling restarts \
         ({restarts_took:.1?}): {} requests, {} misses; {} failed; answered by instance: \
         {by_upstream:?}; retried by nginx on another instance: {}",
        tally.requests.load(Ordering::SeqCst),
        tally.misses.load(Ordering::SeqCst),
        during.0,
        during.1,
        failures.len(),
        cluster.nginx.retried().len(),
    );
    let nginx_errors = cluster.nginx.error_log();
    for what in [
        "connect() failed",
        "upstream prematurely closed",
        "reset by peer",
        "timed out",
    ] {
        report.push_str(&format!(
            "; nginx {what:?}: {}",
            nginx_errors.matches(what).count()
        ));
    }
    // Each instance's log holds a drain, then its end, per restart.
    let mut drain_logs: Vec<_> = cluster
        .instances
        .iter()
        .map(|p| {
            p.log()
                .lines()
                .filter(|l| l.contains("shutting down, draining") || l.contains("drained "))
                .map(str::to_string)
                .collect::<Vec<_>>()
                .into_iter()
        })
        .collect();
    let mut in_flight_at_sigterm = 0;
    let mut unfinished_drains = Vec::new();
    for (i, took, down) in &drains {
        let draining = drain_logs[*i].next().unwrap_or_default();
        let drained = drain_logs[*i].next().unwrap_or_default();
        if !(draining.contains("shutting down, draining") && drained.contains("drained ")) {
            unfinished_drains.push(format!("instance {i}: {draining:?} then {drained:?}"));
        }
        let requests = number_after(&draining, "connections, ").unwrap_or(0);
        in_flight_at_sigterm += requests;
        report.push_str(&format!(
            "\n  instance {i}: SIGTERM to exit {took:.1?} ({} connections, {requests} requests \
             in flight), down {down:.1?}",
            number_after(&draining, "draining ").unwrap_or(0),
        ));
    }
    // Written past libtest's capture, so the numbers show in every run.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{report}\n").as_bytes());

    assert!(
        failures.is_empty(),
        "{report}\nfailures (first 20):\n{}",
        failures[..failures.len().min(20)].join("\n")
    );
    assert!(
        unfinished_drains.is_empty(),
        "a restart did not log a drain that finished: {report}\n{}",
        unfinished_drains.join("\n")
    );
    assert!(during.0 > 0, "no request ran during the restarts: {report}");
    assert!(
        in_flight_at_sigterm > 0,
        "no instance had a request in flight at its SIGTERM, so no drain was \
         tested: {report}"
    );
    for instance in &cluster.instances {
        let addr = instance.addr().to_string();
        assert!(
            by_upstream.get(&addr) > served_before.get(&addr),
            "instance {addr} answered nothing after the rolling restart: {report}"
        );
    }
}

/// Real Nix copies the closure through nginx (each request may land on
/// another instance), then again into a fresh store with the upstream gone:
/// every instance answers from the database and bucket they share.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_copies_a_closure_through_nginx() {
    let test = "nix_copies_a_closure_through_nginx";
    let Some(services) = services(test) else {
        return;
    };
    let fx = nix_fixture();
    let mut upstream = StaticServer::start(fx.cache(Compression::Xz)).await;
    let cluster = Cluster::start(test, &services, &upstream.url(), fx).await;
    let base = cluster.nginx.url();

    let copy = nix_copy_from(&base, &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "nix copy through nginx failed: {copy:?}");
    assert!(copy.all_valid(&fx.closure).await, "{copy:?}");

    upstream.stop().await;
    for round in 0..INSTANCES {
        let copy = nix_copy_from(&base, &fx.closure, &fx.proxy_key.public).await;
        assert!(
            copy.success(),
            "nix copy {round} through nginx with the upstream gone failed: {copy:?}"
        );
        assert!(copy.all_valid(&fx.closure).await, "{copy:?}");
    }
}
