//! Test support shared by the ncps-server integration tests.
//!
//! - [`require_tool`] / [`require_nix`]: skip loudly when an external tool is
//!   missing (fatal with `NCPS_TEST_REQUIRE_ALL=1`).
//! - [`nix_fixture`]: a Nix closure built once per test process and copied
//!   into signed binary cache directories (xz, zstd, bzip2, none, plus a
//!   wrong-signature cache).
//! - [`StaticServer`]: a tiny static HTTP upstream that counts requests and can
//!   be stopped; [`RouteServer`]: the same, but answering from a map of
//!   request path-and-query to [`Route`] (body plus extra headers), for
//!   upstreams of other shapes; [`HangingUpstream`]: accepts TCP connections,
//!   never answers.
//! - [`Relay`]: a TCP relay in front of a service (S3, a database) that can
//!   refuse or hang its traffic and restore it: outages on demand.
//! - [`Proxy`]: the `ncps-server` binary on a free loopback port; can be
//!   stopped with SIGTERM and restarted on the same port.
//! - [`nix_copy_from`]: `nix copy --from <proxy>` into a fresh chroot store.
//! - [`unique`], [`fresh_database`], [`redis_addr`], and in [`s3`] the S3
//!   client, fresh buckets and storage options: the shared services.
//! - [`cli_binary`]: the `ncps-cli` binary, built if needed; in [`offline`]
//!   the `ncps-server` binary run without internet until it exits.
#![allow(dead_code)]

mod offline;
mod s3;
// Each test file uses some of the helpers; the others are not unused.
#[allow(unused_imports)]
pub use offline::*;
#[allow(unused_imports)]
pub use s3::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsStr;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;

/// `NIX_CONFIG` for every nix invocation: no substituters (offline), and the
/// `nix` command enabled.
pub const NIX_CONFIG: &str = "substituters =\nexperimental-features = nix-command";

/// A fixed Nix signing key for proxies of tests that need no Nix at all.
pub const STATIC_SECRET_KEY: &str = "ncps-test-static-1:n1XMIcZCKXbDIGPirmmsZG9eCf2SjlKIRldDuNprnBVAPTDYbQx19c0iXglCgmRs43on+E7ZJUPSX08Lt+bFpg==";
/// The public half of [`STATIC_SECRET_KEY`].
pub const STATIC_PUBLIC_KEY: &str =
    "ncps-test-static-1:QD0w2G0MdfXNIl4JQoJkbON6J/hO2SVD0l9PC7fmxaY=";

// ---------------------------------------------------------------------------
// Tool checks
// ---------------------------------------------------------------------------

fn require_all() -> bool {
    std::env::var("NCPS_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Whether `tool` is an executable file somewhere on `PATH`.
pub fn tool_installed(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Returns true when `tool` is installed. Otherwise prints a loud SKIPPED line
/// to stderr and returns false (the test should return early), or panics when
/// `NCPS_TEST_REQUIRE_ALL=1`.
pub fn require_tool(test: &str, tool: &str) -> bool {
    if tool_installed(tool) {
        return true;
    }
    let msg = format!(
        "SKIPPED: {test}: {tool} not installed (set NCPS_TEST_REQUIRE_ALL=1 to make this fatal)"
    );
    if require_all() {
        panic!("{msg} [NCPS_TEST_REQUIRE_ALL=1 is set]");
    }
    // Written to the real stderr (not through eprintln!, which the libtest
    // harness captures for passing tests) so the skip is always visible.
    let bar = "!".repeat(72);
    let _ = writeln!(std::io::stderr(), "\n{bar}\n{msg}\n{bar}\n");
    false
}

/// `nix-build`, `nix-store` and `nix` all present (see [`require_tool`]).
pub fn require_nix(test: &str) -> bool {
    require_tool(test, "nix-build") && require_tool(test, "nix-store") && require_tool(test, "nix")
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// The 32-char hash part of a full store path `/nix/store/<hash>-<name>`.
pub fn hash_part(store_path: &str) -> &str {
    let base = store_path.strip_prefix("/nix/store/").unwrap_or(store_path);
    &base[..32]
}

/// The value of the first `Key: value` line of a narinfo.
pub fn narinfo_field(narinfo: &str, key: &str) -> Option<String> {
    narinfo.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(": "))
            .map(|v| v.to_string())
    })
}

/// All values of a repeated narinfo key (e.g. `Sig`).
pub fn narinfo_fields(narinfo: &str, key: &str) -> Vec<String> {
    narinfo
        .lines()
        .filter_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(": "))
                .map(|v| v.to_string())
        })
        .collect()
}

/// `narinfo` with `key` set to `value` in place (appended when absent), or
/// every `key` line removed when `value` is `None`. Other lines keep their
/// order. Rewriting `URL`, `Compression`, `FileHash` or `FileSize` keeps the
/// signatures valid (they are not in the fingerprint).
pub fn narinfo_with(narinfo: &str, key: &str, value: Option<&str>) -> String {
    let prefix = format!("{key}:");
    let mut out = String::new();
    let mut done = false;
    for line in narinfo.lines() {
        if line.starts_with(&prefix) {
            if let Some(v) = value
                && !done
            {
                out.push_str(&format!("{key}: {v}\n"));
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(v) = value
        && !done
    {
        out.push_str(&format!("{key}: {v}\n"));
    }
    out
}

/// Percent-encode a string for use as a URL query value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Recursively copy a directory tree (regular files and directories).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A `Command` for a nix tool with the test `NIX_CONFIG` and a fresh
/// `XDG_CACHE_HOME` (a new directory under `cache_root`).
fn nix_std_command(program: &str, cache_root: &Path) -> Command {
    let xdg = tempfile::Builder::new()
        .prefix("xdg-cache-")
        .tempdir_in(cache_root)
        .unwrap()
        .keep();
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", xdg)
        .stdin(Stdio::null());
    cmd
}

/// Run a command to completion; panic with its output if it fails.
fn run_ok(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Nix fixture
// ---------------------------------------------------------------------------

/// A Nix binary cache signing key pair.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The key name (`name` in `name:base64`).
    pub name: String,
    /// File holding the secret key (`nix-store --generate-binary-cache-key`).
    pub secret_path: PathBuf,
    /// File holding the public key.
    pub public_path: PathBuf,
    /// The public key, `name:base64`.
    pub public: String,
}

/// The compressions the fixture has binary caches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Xz,
    Zstd,
    Bzip2,
    None,
}

impl Compression {
    pub const ALL: [Compression; 4] = [
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::None,
    ];

    /// The value of `?compression=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::None => "none",
        }
    }

    /// The NAR file extension Nix uses.
    pub fn nar_ext(self) -> &'static str {
        match self {
            Compression::Xz => ".nar.xz",
            Compression::Zstd => ".nar.zst",
            Compression::Bzip2 => ".nar.bz2",
            Compression::None => ".nar",
        }
    }
}

/// Everything built by [`nix_fixture`].
#[derive(Debug)]
pub struct NixFixture {
    /// Directory holding keys, caches and result links; lives for the process.
    pub dir: PathBuf,
    /// Leaf store path (no references).
    pub leaf: String,
    /// Middle store path: references `leaf`, holds 1 MiB of random bytes.
    pub middle: String,
    /// Top store path: references `leaf` and `middle`.
    pub top: String,
    /// `[leaf, middle, top]`.
    pub closure: Vec<String>,
    /// The store path with the big random file (same as `middle`).
    pub big: String,
    /// Binary caches (file:// layout) of the closure, signed by `upstream_key`.
    pub cache_xz: PathBuf,
    pub cache_zstd: PathBuf,
    pub cache_bzip2: PathBuf,
    pub cache_none: PathBuf,
    /// A small store path signed ONLY by `wrong_key`...
    pub bad_path: String,
    /// ...copied (xz) into this cache dir.
    pub bad_cache: PathBuf,
    /// Key the upstream caches are signed with.
    pub upstream_key: KeyPair,
    /// Key for the proxy (`--cache-secret-key-path`).
    pub proxy_key: KeyPair,
    /// A key nobody should trust.
    pub wrong_key: KeyPair,
}

impl NixFixture {
    /// The binary cache directory for compression `c`.
    pub fn cache(&self, c: Compression) -> &Path {
        match c {
            Compression::Xz => &self.cache_xz,
            Compression::Zstd => &self.cache_zstd,
            Compression::Bzip2 => &self.cache_bzip2,
            Compression::None => &self.cache_none,
        }
    }

    /// The narinfo text of `store_path` in cache dir `cache`.
    pub fn narinfo_in(&self, cache: &Path, store_path: &str) -> String {
        std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_part(store_path)))).unwrap()
    }
}

static FIXTURE: OnceLock<NixFixture> = OnceLock::new();

/// The Nix fixture, built on first use (once per test process). Call
/// [`require_nix`] first.
pub fn nix_fixture() -> &'static NixFixture {
    FIXTURE.get_or_init(build_fixture)
}

/// Remove fixture directories of test processes that are gone.
fn sweep_stale_fixtures(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("ncps-e2e-fixture-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn gen_key(dir: &Path, name: &str) -> KeyPair {
    let secret_path = dir.join(format!("{name}.sec"));
    let public_path = dir.join(format!("{name}.pub"));
    let mut cmd = nix_std_command("nix-store", dir);
    cmd.arg("--generate-binary-cache-key")
        .arg(name)
        .arg(&secret_path)
        .arg(&public_path);
    run_ok(cmd);
    let public = std::fs::read_to_string(&public_path)
        .unwrap()
        .trim()
        .to_string();
    KeyPair {
        name: name.to_string(),
        secret_path,
        public_path,
        public,
    }
}

const CLOSURE_NIX: &str = r#"{ salt }:
let
  mk = name: script: derivation {
    inherit name;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
    system = builtins.currentSystem;
  };
in rec {
  leaf = mk "ncps-e2e-leaf" "mkdir $out && echo 'leaf ${salt}' > $out/leaf.txt";
  middle = mk "ncps-e2e-middle" "mkdir $out && echo '${leaf} ${salt}' > $out/ref && head -c 1048576 /dev/urandom > $out/big.bin";
  top = mk "ncps-e2e-top" "mkdir $out && echo '${leaf} ${middle} ${salt}' > $out/refs";
  badsig = mk "ncps-e2e-badsig" "mkdir $out && echo 'signed by the wrong key ${salt}' > $out/bad.txt";
}
"#;

fn build_fixture() -> NixFixture {
    let tmp = std::env::temp_dir();
    sweep_stale_fixtures(&tmp);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = tmp.join(format!("ncps-e2e-fixture-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let salt = format!("{}-{nanos}", std::process::id());
    let nix_file = dir.join("closure.nix");
    std::fs::write(&nix_file, CLOSURE_NIX).unwrap();

    // Build leaf, middle, top and badsig; results: result, result-2, ...
    let result = dir.join("result");
    let mut cmd = nix_std_command("nix-build", &dir);
    cmd.arg(&nix_file)
        .args(["--argstr", "salt", &salt])
        .args(["-A", "leaf", "-A", "middle", "-A", "top", "-A", "badsig"])
        .arg("-o")
        .arg(&result);
    run_ok(cmd);
    let link = |suffix: &str| -> String {
        let p = dir.join(format!("result{suffix}"));
        std::fs::read_link(&p)
            .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
            .to_str()
            .unwrap()
            .to_string()
    };
    let (leaf, middle, top, bad_path) = (link(""), link("-2"), link("-3"), link("-4"));
    assert!(leaf.ends_with("-ncps-e2e-leaf"), "{leaf}");
    assert!(middle.ends_with("-ncps-e2e-middle"), "{middle}");
    assert!(top.ends_with("-ncps-e2e-top"), "{top}");
    assert!(bad_path.ends_with("-ncps-e2e-badsig"), "{bad_path}");
    let closure = vec![leaf.clone(), middle.clone(), top.clone()];

    let upstream_key = gen_key(&dir, "ncps-test-upstream-1");
    let proxy_key = gen_key(&dir, "ncps-test-proxy-1");
    let wrong_key = gen_key(&dir, "ncps-test-wrong-1");

    // Sign the closure with the upstream key.
    let mut cmd = nix_std_command("nix", &dir);
    cmd.args(["store", "sign", "-k"])
        .arg(&upstream_key.secret_path)
        .arg("-r")
        .arg(&top);
    run_ok(cmd);

    let copy_to = |cache: &Path, compression: &str, paths: &[String]| {
        let mut cmd = nix_std_command("nix", &dir);
        cmd.arg("copy")
            .arg("--to")
            .arg(format!(
                "file://{}?compression={compression}",
                cache.display()
            ))
            .args(paths);
        run_ok(cmd);
    };
    let cache_xz = dir.join("cache-xz");
    let cache_zstd = dir.join("cache-zstd");
    let cache_bzip2 = dir.join("cache-bzip2");
    let cache_none = dir.join("cache-none");
    copy_to(&cache_xz, "xz", &closure);
    copy_to(&cache_zstd, "zstd", &closure);
    copy_to(&cache_bzip2, "bzip2", &closure);
    copy_to(&cache_none, "none", &closure);

    // The bad-signature path: signed only by the wrong key.
    let mut cmd = nix_std_command("nix", &dir);
    cmd.args(["store", "sign", "-k"])
        .arg(&wrong_key.secret_path)
        .arg(&bad_path);
    run_ok(cmd);
    let bad_cache = dir.join("cache-bad");
    copy_to(&bad_cache, "xz", std::slice::from_ref(&bad_path));

    let fx = NixFixture {
        dir,
        big: middle.clone(),
        leaf,
        middle,
        top,
        closure,
        cache_xz,
        cache_zstd,
        cache_bzip2,
        cache_none,
        bad_path,
        bad_cache,
        upstream_key,
        proxy_key,
        wrong_key,
    };
    // Sanity: every narinfo is there and signed as intended.
    for c in Compression::ALL {
        for p in &fx.closure {
            let ni = fx.narinfo_in(fx.cache(c), p);
            let url = narinfo_field(&ni, "URL").unwrap();
            assert!(url.ends_with(c.nar_ext()), "{url} for {c:?}");
            let sigs = narinfo_fields(&ni, "Sig");
            assert!(
                sigs.len() == 1 && sigs[0].starts_with("ncps-test-upstream-1:"),
                "{ni}"
            );
        }
    }
    let bad = fx.narinfo_in(&fx.bad_cache, &fx.bad_path);
    let sigs = narinfo_fields(&bad, "Sig");
    assert!(
        sigs.len() == 1 && sigs[0].starts_with("ncps-test-wrong-1:"),
        "{bad}"
    );
    fx
}

// ---------------------------------------------------------------------------
// Static HTTP upstreams
// ---------------------------------------------------------------------------

type Hits = Arc<Mutex<HashMap<String, usize>>>;

type BoxedAnswer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>,
>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxedAnswer + Send + Sync>;

/// The accept loop shared by [`StaticServer`] and [`RouteServer`]: a loopback
/// HTTP/1.1 server that can be stopped (listener and open connections closed).
struct LoopbackServer {
    addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LoopbackServer {
    async fn start(handler: Handler) -> LoopbackServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = rx.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = handler.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handler(req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                        while conns.try_join_next().is_some() {}
                    }
                }
            }
            // Close the listener and every open (keep-alive) connection.
            drop(listener);
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
        LoopbackServer {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn count_hit(hits: &Hits, key: String) {
    *hits.lock().unwrap().entry(key).or_default() += 1;
}

fn hits_with_prefix(hits: &Hits, prefix: &str) -> usize {
    hits.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

fn status_only(s: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(s)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The content type a binary cache serves for the file `rel` (relative to
/// the cache root, no leading slash).
fn cache_content_type(rel: &str) -> &'static str {
    if rel.ends_with(".narinfo") {
        "text/x-nix-narinfo"
    } else if rel == "nix-cache-info" {
        "text/x-nix-cache-info"
    } else if rel.starts_with("nar/") {
        "application/x-nix-nar"
    } else {
        "application/octet-stream"
    }
}

/// A tiny static file server on 127.0.0.1 that counts requests per path.
pub struct StaticServer {
    server: LoopbackServer,
    hits: Hits,
}

impl StaticServer {
    /// Serve the files under `root` (GET and HEAD) on a free loopback port.
    pub async fn start(root: impl Into<PathBuf>) -> StaticServer {
        let root = Arc::new(root.into());
        let hits: Hits = Arc::default();
        let task_hits = hits.clone();
        let handler: Handler =
            Arc::new(move |req| Box::pin(serve_static(root.clone(), task_hits.clone(), req)));
        StaticServer {
            server: LoopbackServer::start(handler).await,
            hits,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Requests seen for exactly this request path (e.g. `/nar/x.nar.xz`).
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// All requests seen, by path.
    pub fn all_hits(&self) -> HashMap<String, usize> {
        self.hits.lock().unwrap().clone()
    }

    /// Total number of requests seen.
    pub fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    /// Requests seen for paths starting with `prefix`.
    pub fn hits_with_prefix(&self, prefix: &str) -> usize {
        hits_with_prefix(&self.hits, prefix)
    }

    /// Stop serving: the listener is closed (connections are refused) and all
    /// open connections are dropped before this returns.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }
}

async fn serve_static(
    root: Arc<PathBuf>,
    hits: Hits,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    count_hit(&hits, path.clone());
    let is_head = req.method() == Method::HEAD;
    if !is_head && req.method() != Method::GET {
        return Ok(status_only(StatusCode::METHOD_NOT_ALLOWED));
    }
    let rel = path.trim_start_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\\'))
    {
        return Ok(status_only(StatusCode::NOT_FOUND));
    }
    let data = match tokio::fs::read(root.join(rel)).await {
        Ok(d) => d,
        Err(_) => return Ok(status_only(StatusCode::NOT_FOUND)),
    };
    let content_type = cache_content_type(rel);
    let len = data.len();
    let body = if is_head {
        Bytes::new()
    } else {
        Bytes::from(data)
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("content-length", len)
        .body(Full::new(body))
        .unwrap())
}

/// One answer of a [`RouteServer`]: a 200 with this body, content type and
/// any extra response headers (e.g. `Content-Encoding`). `Content-Length` is
/// always the length of `body` as sent.
#[derive(Debug, Clone)]
pub struct Route {
    pub body: Bytes,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
}

impl Route {
    /// `body` with content type `content_type` and no extra headers.
    pub fn new(body: impl Into<Bytes>, content_type: &str) -> Route {
        Route {
            body: body.into(),
            content_type: content_type.to_string(),
            headers: Vec::new(),
        }
    }

    /// A NAR file (`application/x-nix-nar`).
    pub fn nar(body: impl Into<Bytes>) -> Route {
        Route::new(body, "application/x-nix-nar")
    }

    /// A narinfo (`text/x-nix-narinfo`).
    pub fn narinfo(text: impl Into<String>) -> Route {
        Route::new(text.into(), "text/x-nix-narinfo")
    }

    /// The contents of the file at `path`, typed as a binary cache would type
    /// `rel` (its path relative to the cache root).
    pub fn file(path: &Path, rel: &str) -> Route {
        let body =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Route::new(body, cache_content_type(rel))
    }

    /// Add an extra response header.
    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Routes of a [`RouteServer`], keyed by request path-and-query
/// (`/nar/blob?id=x`; no query: `/x.narinfo`).
pub type Routes = HashMap<String, Route>;

/// A route for every file under `root` (recursively), keyed `/<relative path>`,
/// as [`StaticServer`] would serve them.
pub fn routes_from_dir(root: &Path) -> Routes {
    fn walk(root: &Path, dir: &Path, routes: &mut Routes) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, routes);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                routes.insert(format!("/{rel}"), Route::file(&path, &rel));
            }
        }
    }
    let mut routes = Routes::new();
    walk(root, root, &mut routes);
    routes
}

/// A loopback HTTP upstream answering GET and HEAD from a fixed map of request
/// path-and-query to [`Route`] (anything else: 404). It counts requests by
/// path-and-query, so `/nar/blob?id=a` and `/nar/blob?id=b` are told apart.
pub struct RouteServer {
    server: LoopbackServer,
    hits: Hits,
}

impl RouteServer {
    pub async fn start(routes: Routes) -> RouteServer {
        let routes = Arc::new(routes);
        let hits: Hits = Arc::default();
        let task_hits = hits.clone();
        let handler: Handler =
            Arc::new(move |req| Box::pin(serve_route(routes.clone(), task_hits.clone(), req)));
        RouteServer {
            server: LoopbackServer::start(handler).await,
            hits,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Requests seen for exactly this path-and-query.
    pub fn hits(&self, path_and_query: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    /// All requests seen, by path-and-query.
    pub fn all_hits(&self) -> HashMap<String, usize> {
        self.hits.lock().unwrap().clone()
    }

    /// Total number of requests seen.
    pub fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    /// Requests seen whose path-and-query starts with `prefix`.
    pub fn hits_with_prefix(&self, prefix: &str) -> usize {
        hits_with_prefix(&self.hits, prefix)
    }

    /// Stop serving (see [`StaticServer::stop`]).
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }
}

async fn serve_route(
    routes: Arc<Routes>,
    hits: Hits,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let key = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    count_hit(&hits, key.clone());
    let is_head = req.method() == Method::HEAD;
    if !is_head && req.method() != Method::GET {
        return Ok(status_only(StatusCode::METHOD_NOT_ALLOWED));
    }
    let Some(route) = routes.get(&key) else {
        return Ok(status_only(StatusCode::NOT_FOUND));
    };
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", &route.content_type)
        .header("content-length", route.body.len());
    for (name, value) in &route.headers {
        resp = resp.header(name, value);
    }
    let body = if is_head {
        Bytes::new()
    } else {
        route.body.clone()
    };
    Ok(resp.body(Full::new(body)).unwrap())
}

/// An "upstream" that accepts TCP connections (kernel backlog) but never reads
/// or answers.
pub struct HangingUpstream {
    listener: std::net::TcpListener,
}

impl HangingUpstream {
    pub fn start() -> HangingUpstream {
        HangingUpstream {
            listener: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }
}

/// A 127.0.0.1 port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Outages on demand
// ---------------------------------------------------------------------------

/// A loopback TCP relay in front of a service (S3, a database) whose traffic
/// can be refused or hung and later restored at the same address: an outage
/// on demand.
pub struct Relay {
    addr: SocketAddr,
    target: String,
    /// Whether bytes move; every connection's pumps wait while it is false.
    flowing: tokio::sync::watch::Sender<bool>,
    /// The accept loop, owning every connection; `None` while refusing.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// A relay on a free loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the relay");
        let addr = listener.local_addr().expect("relay address");
        let (flowing, _) = tokio::sync::watch::channel(true);
        let mut relay = Relay {
            addr,
            target: target.to_string(),
            flowing,
            task: None,
        };
        relay.task = Some(relay.spawn(listener));
        relay
    }

    fn spawn(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let target = self.target.clone();
        let flowing = self.flowing.clone();
        tokio::spawn(async move {
            // Dropping the set (when this task is aborted) cuts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let flowing = flowing.subscribe();
                connections.spawn(Self::connection(client, target, flowing));
                while connections.try_join_next().is_some() {}
            }
        })
    }

    /// One relayed connection: the target is dialled once traffic flows, so
    /// a connection made while hung is held open without an answer.
    async fn connection(
        client: tokio::net::TcpStream,
        target: String,
        mut flowing: tokio::sync::watch::Receiver<bool>,
    ) {
        if flowing.wait_for(|f| *f).await.is_err() {
            return;
        }
        let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
            return;
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            Self::pump(client_read, server_write, flowing.clone()),
            Self::pump(server_read, client_write, flowing),
        );
    }

    /// Copies one direction, holding every read (and the final close) while
    /// hung, so nothing at all gets through until traffic flows again.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut flowing: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            if flowing.wait_for(|f| *f).await.is_err() {
                return;
            }
            if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for HTTP services such as S3.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The service goes away: open connections are closed and new ones
    /// refused, as when its server stops.
    pub async fn refuse(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// The service stops answering: connections stay open and new ones are
    /// accepted, but no byte moves either way, as when its host freezes or
    /// the network between drops packets.
    pub fn hang(&mut self) {
        self.flowing.send_replace(false);
    }

    /// The service is back at the same address: after [`Relay::refuse`] new
    /// connections are taken again; after [`Relay::hang`] the held bytes go
    /// through and traffic flows on.
    pub async fn restore(&mut self) {
        self.flowing.send_replace(true);
        if self.task.is_none() {
            let listener = tokio::net::TcpListener::bind(self.addr)
                .await
                .expect("rebinding the relay");
            self.task = Some(self.spawn(listener));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A name no other test or run uses: `ncps-{what}-{pid}-{nanos}-{count}`,
/// fit for a bucket name or a Redis key prefix.
pub fn unique(what: &str) -> String {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ncps-{what}-{}-{nanos}-{count}", std::process::id())
}

/// `host:port` of a `redis://host:port` URL such as `NCPS_TEST_REDIS_URL`,
/// as `--cache-redis-addrs` takes it.
pub fn redis_addr(url: &str) -> String {
    url.trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned()
}

/// A new, empty database on the PostgreSQL or MySQL server `server` (a
/// `postgres://` or `mysql://` URL such as `NCPS_TEST_POSTGRES_URL`); its URL.
pub async fn fresh_database(server: &str) -> String {
    use mysql_async::prelude::Queryable;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    let name = format!("ncps_fresh_{}_{nanos}", std::process::id());
    let mut url = url::Url::parse(server).expect("test database URL");
    if server.starts_with("mysql:") {
        let mut conn = mysql_async::Conn::from_url(server)
            .await
            .expect("connecting to the test MySQL");
        conn.query_drop(format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        let _ = conn.disconnect().await;
    } else {
        let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
            .await
            .expect("connecting to the test PostgreSQL");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
    }
    url.set_path(&format!("/{name}"));
    url.to_string()
}

// ---------------------------------------------------------------------------
// The ncps-cli binary
// ---------------------------------------------------------------------------

/// The `ncps-cli` binary of this build, built if needed: it is another
/// package's binary, so cargo does not build it for these tests.
///
/// It is built as `cargo test --workspace` builds it (for ncps-cli's own
/// `cli` test), so it shares this build's dependencies: `cargo build -p
/// ncps-cli` would pick other features and rebuild half the dependency
/// stack, minutes and a gigabyte of disk.
pub fn cli_binary() -> &'static Path {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        let server = Path::new(env!("CARGO_BIN_EXE_ncps-server"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(cargo)
            .args([
                "test",
                "--workspace",
                "--no-run",
                "--quiet",
                "--test",
                "cli",
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .status()
            .expect("running cargo test --no-run for ncps-cli");
        assert!(status.success(), "building ncps-cli failed");
        let cli = server.with_file_name("ncps-cli");
        assert!(cli.is_file(), "{} is missing", cli.display());
        cli
    })
}

/// Runs `ncps-cli <args> <backend>` (`backend`: the database and storage
/// options), without `CACHE_MAX_SIZE` from the environment, logging its
/// output; (exit code, stdout).
pub fn run_cli<S: AsRef<OsStr>>(
    args: &[&str],
    backend: impl IntoIterator<Item = S>,
) -> (i32, String) {
    let out = Command::new(cli_binary())
        .args(args)
        .args(backend)
        .env_remove("CACHE_MAX_SIZE")
        .output()
        .expect("running ncps-cli");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "ncps-cli {args:?}: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

// ---------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------

/// How to start a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `--cache-upstream-url` values, in order.
    pub upstream_urls: Vec<String>,
    /// `--cache-upstream-public-key` values, in order.
    pub upstream_keys: Vec<String>,
    /// The proxy's own key; `None` uses [`STATIC_SECRET_KEY`].
    pub secret_key: Option<KeyPair>,
    /// `--cache-upstream-dialer-timeout`.
    pub dialer_timeout: String,
    /// `--cache-upstream-response-header-timeout`.
    pub response_header_timeout: String,
    /// Any further arguments.
    pub extra_args: Vec<String>,
    /// Environment variables set for the server (such as `SERVER_*` limits).
    pub env: Vec<(String, String)>,
}

impl ProxyConfig {
    /// One upstream, bound to `keys`.
    pub fn new(upstream_url: impl Into<String>, keys: &[&str]) -> ProxyConfig {
        ProxyConfig {
            upstream_urls: vec![upstream_url.into()],
            upstream_keys: keys.iter().map(|k| k.to_string()).collect(),
            secret_key: None,
            dialer_timeout: "3s".into(),
            response_header_timeout: "3s".into(),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Several upstreams (URLs may carry `?priority=` / `?public-key=`).
    pub fn multi(upstream_urls: &[String], keys: &[&str]) -> ProxyConfig {
        let mut c = ProxyConfig::new("", keys);
        c.upstream_urls = upstream_urls.to_vec();
        c
    }

    pub fn secret_key(mut self, key: &KeyPair) -> ProxyConfig {
        self.secret_key = Some(key.clone());
        self
    }
}

/// A running `ncps-server` child process; killed on drop. Its stdout and stderr
/// go to a log file, printed when the owning test panics.
pub struct Proxy {
    child: std::process::Child,
    port: u16,
    url: String,
    public_key: String,
    log_path: PathBuf,
    dir: TempDir,
    /// The command line, for [`Proxy::restart`].
    args: Vec<std::ffi::OsString>,
    cfg: ProxyConfig,
}

impl Proxy {
    /// Start the server and wait (bounded) until `GET /healthz` answers 200.
    pub async fn start(cfg: ProxyConfig) -> Proxy {
        Proxy::start_on(cfg, free_port()).await
    }

    /// [`Proxy::start`] on the loopback port `port` (for instances whose
    /// arguments must name their own URL, such as `--cache-advertise-url`).
    pub async fn start_on(cfg: ProxyConfig, port: u16) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("ncps-e2e-proxy-")
            .tempdir()
            .unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let db = dir.path().join("db.sqlite");
        let (secret_path, public_key) = match &cfg.secret_key {
            Some(k) => (k.secret_path.clone(), k.public.clone()),
            None => {
                let p = dir.path().join("static.sec");
                std::fs::write(&p, STATIC_SECRET_KEY).unwrap();
                (p, STATIC_PUBLIC_KEY.to_string())
            }
        };
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ncps-server"));
        cmd.arg("serve")
            .arg("--server-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--cache-hostname", "ncps-e2e.test"])
            .arg("--cache-secret-key-path")
            .arg(&secret_path)
            .args(["--cache-upstream-dialer-timeout", &cfg.dialer_timeout])
            .args([
                "--cache-upstream-response-header-timeout",
                &cfg.response_header_timeout,
            ]);
        // Storage or database given in `extra_args` replace the local defaults.
        let given = |option: &str| cfg.extra_args.iter().any(|a| a == option);
        if !given("--cache-storage-s3-bucket") && !given("--cache-storage-local") {
            cmd.arg("--cache-storage-local").arg(&storage);
        }
        if !given("--cache-database-url") {
            cmd.arg("--cache-database-url")
                .arg(format!("sqlite:{}", db.display()));
        }
        for u in &cfg.upstream_urls {
            cmd.args(["--cache-upstream-url", u]);
        }
        for k in &cfg.upstream_keys {
            cmd.args(["--cache-upstream-public-key", k]);
        }
        cmd.args(&cfg.extra_args);
        cmd.envs(cfg.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let args = cmd.get_args().map(|a| a.to_owned()).collect();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning ncps-server: {e}"));
        let mut proxy = Proxy {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            public_key,
            log_path,
            dir,
            args,
            cfg: cfg.clone(),
        };
        proxy.wait_ready(&cfg).await;
        proxy
    }

    /// Send SIGTERM and wait (bounded by 60 s) for the server to exit, as a
    /// service manager stopping it would; its exit status and how long the
    /// exit took.
    pub async fn terminate(&mut self) -> (ExitStatus, Duration) {
        self.send_sigterm();
        self.wait_exit().await
    }

    /// Sends SIGTERM, without waiting.
    pub fn send_sigterm(&self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits (bounded by 60 s) for the server to exit; its exit status and
    /// how long that took.
    pub async fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for ncps-server") {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "ncps-server did not exit within 60 s of SIGTERM\n--- server log ---\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Start the server again, after [`Proxy::terminate`], with the same
    /// arguments, port, directory and log file (appended to); wait until it
    /// is ready.
    pub async fn restart(&mut self) {
        assert!(
            self.child.try_wait().ok().flatten().is_some(),
            "restart() of a running ncps-server"
        );
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ncps-server"));
        cmd.args(&self.args);
        cmd.envs(self.cfg.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning ncps-server: {e}"));
        let cfg = self.cfg.clone();
        self.wait_ready(&cfg).await;
    }

    async fn wait_ready(&mut self, cfg: &ProxyConfig) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let health = format!("{}/healthz", self.url);
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ncps-server exited early ({status}); config {cfg:?}\n--- server log ---\n{}",
                    self.log()
                );
            }
            if let Ok(r) = client.get(&health).send().await
                && r.status() == reqwest::StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "ncps-server did not answer GET /healthz with 200 within ~10 s; config {cfg:?}\n--- server log ---\n{}",
            self.log()
        );
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (for `/proc/<pid>/fd` checks and `kill -9`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` the server, as a crash would, and reap it; [`Proxy::restart`]
    /// starts it again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The public key of the proxy's signing key.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The proxy's storage/database directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's stdout+stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- ncps-server log ({}) ---\n{}\n--- end of ncps-server log ---",
                self.url,
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

/// A reqwest client with a 30 s overall timeout.
/// The proxy's URL of the NAR of the store path hash `hash`, read from its
/// narinfo there (which must answer 200).
pub async fn proxy_nar_url(client: &reqwest::Client, proxy_url: &str, hash: &str) -> String {
    let url = format!("{proxy_url}/{hash}.narinfo");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let text = response.text().await.unwrap();
    let nar = narinfo_field(&text, "URL").expect("the narinfo has a URL");
    format!("{proxy_url}/{nar}")
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The outcome of a GET whose body may fail mid-way.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub body: Vec<u8>,
    /// Whether the body was read to its end without an error.
    pub complete: bool,
    pub error: Option<String>,
}

/// GET `url`, reading the body chunk by chunk and recording a mid-body error.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Fetched {
    let mut resp = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) => {
            return Fetched {
                status: 0,
                body: Vec::new(),
                complete: false,
                error: Some(format!("{e:?}")),
            };
        }
    };
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => {
                return Fetched {
                    status,
                    body,
                    complete: true,
                    error: None,
                };
            }
            Err(e) => {
                return Fetched {
                    status,
                    body,
                    complete: false,
                    error: Some(format!("{e:?}")),
                };
            }
        }
    }
}

/// Send a raw HTTP/1.1 request line (`METHOD PATH`) to `addr` without any URL
/// normalisation and return the status code (bounded by 30 s).
pub async fn raw_request(addr: SocketAddr, method: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let status_line = text.lines().next().unwrap_or_default().to_string();
        status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no HTTP status line in answer to {method} {path}: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
}

/// A response read by [`raw_get`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body with any chunked transfer coding removed, but NOT
    /// content-decoded: the bytes exactly as the server meant them.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path_and_query` over a fresh HTTP/1.1 connection to `addr`, sending no
/// `Accept-Encoding` (plus `extra_headers`), so nothing decodes the body
/// behind the test's back (bounded by 60 s).
pub async fn raw_get(
    addr: SocketAddr,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (n, v) in extra_headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("GET {path_and_query}: no complete answer within 60 s"));
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP header end in answer to GET {path_and_query}: {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("bad status line in answer to GET {path_and_query}: {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw_body = &buf[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)
            .unwrap_or_else(|e| panic!("bad chunked body in answer to GET {path_and_query}: {e}"))
    } else {
        raw_body.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Remove HTTP/1.1 chunked transfer coding.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let line = std::str::from_utf8(&data[..line_end]).map_err(|e| e.to_string())?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|e| format!("{line:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(format!("chunk of {size} bytes truncated"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// nix copy --from the proxy
// ---------------------------------------------------------------------------

/// The outcome of [`nix_copy_from`].
pub struct NixCopy {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The chroot store copied into (`<tempdir>/store`).
    pub store: PathBuf,
    dir: TempDir,
}

impl NixCopy {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Whether all `paths` are valid in the chroot store
    /// (`nix-store --store S --check-validity`).
    pub async fn all_valid(&self, paths: &[String]) -> bool {
        let out = nix_tokio_command("nix-store", self.dir.path())
            .arg("--store")
            .arg(&self.store)
            .arg("--check-validity")
            .args(paths)
            .output()
            .await
            .unwrap();
        out.status.success()
    }
}

impl std::fmt::Debug for NixCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nix copy into {}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.store.display(),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

fn nix_tokio_command(program: impl AsRef<OsStr>, cache_root: &Path) -> tokio::process::Command {
    let xdg = tempfile::Builder::new()
        .prefix("xdg-cache-")
        .tempdir_in(cache_root)
        .unwrap()
        .keep();
    let mut cmd = tokio::process::Command::new(program);
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", xdg)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `nix copy --from <proxy_url> --to <fresh tempdir>/store` of `store_paths`,
/// trusting only `trusted_key`, with narinfo caching off and a fresh
/// `XDG_CACHE_HOME`. Bounded by 120 s.
pub async fn nix_copy_from(proxy_url: &str, store_paths: &[String], trusted_key: &str) -> NixCopy {
    let dir = tempfile::Builder::new()
        .prefix("ncps-e2e-copy-")
        .tempdir()
        .unwrap();
    let store = dir.path().join("store");
    let mut cmd = nix_tokio_command("nix", dir.path());
    cmd.arg("copy")
        .arg("--from")
        .arg(proxy_url)
        .arg("--to")
        .arg(&store)
        .args(["--option", "trusted-public-keys", trusted_key])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(store_paths);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("nix copy --from {proxy_url} did not finish within 120 s"))
        .unwrap();
    NixCopy {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        store,
        dir,
    }
}
