//! The two servers: nginx serving the cache directory, and ncps-server
//! proxying nginx.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a plain GET of `http://host:port/path` answers 200.
fn answers_200(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut answer = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && answer.ends_with(b" 200")
}

/// Waits until `url` answers 200, or panics after 30 s.
fn wait_ready(url: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{url}: the server exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if answers_200(url) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx serving a directory, as fast as it is usually set up for static files.
pub struct Nginx {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    access_log: std::path::PathBuf,
}

impl Nginx {
    pub fn start(work: &Path, root: &Path) -> Nginx {
        let dir = work.join("nginx");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let access_log = dir.join("access.log");
        let conf = format!(
            "daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    open_file_cache max=2000 inactive=60s;
    log_format bench '$uri';
    access_log {log} bench;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
",
            d = dir.display(),
            log = access_log.display(),
            root = root.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nginx (apt-get install nginx)");
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(
            &format!("{url}/nix-cache-info"),
            &mut child,
            &dir.join("error.log"),
        );
        Nginx {
            url,
            child,
            access_log,
        }
    }

    /// Requests nginx has logged for exactly `path`.
    pub fn hits(&self, path: &str) -> usize {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter(|line| *line == path)
            .count()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master stops its workers, which would
        // otherwise outlive it (holding the caller's stdout open).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// A release ncps-server proxying an upstream, with its own storage and SQLite.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
}

impl Proxy {
    pub fn start(server: &Path, work: &Path, name: &str, upstream: &str, key: &str) -> Proxy {
        let dir = work.join(format!("proxy-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = dir.join("server.log");
        let mut child = Command::new(server)
            .arg("serve")
            .args(["--server-addr", &format!("127.0.0.1:{port}")])
            .args(["--cache-hostname", "bench"])
            .arg("--cache-storage-local")
            .arg(dir.join("storage"))
            .arg("--cache-database-url")
            .arg(format!("sqlite:{}", dir.join("db.sqlite").display()))
            .arg("--cache-temp-path")
            .arg(&dir)
            .args(["--cache-upstream-url", upstream])
            .args(["--cache-upstream-public-key", key])
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("server.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", server.display()));
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(
            &format!("{url}/healthz"),
            &mut child,
            &dir.join("server.err"),
        );
        Proxy { url, child }
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
