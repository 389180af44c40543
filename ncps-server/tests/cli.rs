//! The ncps-server binary's configuration: defaults, config files, and
//! refusing invalid options by name. These need no outside service.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::{assert_refused_naming, free_port, offline_server, run_to_exit};

/// Runs the server in a clean environment that expects it to exit.
fn run_expecting_exit(home: &Path, args: &[&str]) -> Output {
    let mut command = offline_server(home);
    command.args(args);
    run_to_exit(command)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Running {
    let child = offline_server(home)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

/// Polls a URL until it answers, within a bounded number of tries.
fn get(url: &str) -> Option<String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..200 {
        if let Ok(response) = client.get(url).send() {
            return response.text().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn invalid_options_exit_non_zero_naming_the_option() {
    let home = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--cache-upstream-url",
                "ftp://x",
                "--cache-upstream-public-key",
                "k-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=",
            ],
            "--cache-upstream-url",
        ),
        (
            &["--cache-upstream-url", "http://x"],
            "--cache-upstream-url",
        ),
        (
            &[
                "--cache-upstream-url",
                "http://a",
                "--cache-upstream-url",
                "http://b",
                "--cache-upstream-public-key",
                "k-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=",
            ],
            "--cache-upstream-public-key",
        ),
        (
            &[
                "--cache-upstream-public-key",
                "nonsense",
                "--cache-upstream-url",
                "http://x",
            ],
            "--cache-upstream-public-key",
        ),
        (&["--server-addr", "nowhere"], "--server-addr"),
        (
            &["--cache-upstream-response-header-timeout", "soon"],
            "--cache-upstream-response-header-timeout",
        ),
        (
            &["--cache-secret-key-path", "/nonexistent/key"],
            "--cache-secret-key-path",
        ),
        (
            &["--cache-database-url", "oracle://x"],
            "--cache-database-url",
        ),
        (&["--config", "/nonexistent/ncps.yaml"], "--config"),
    ];
    for (args, option) in cases {
        assert_refused_naming(&run_expecting_exit(home.path(), args), args, option);
    }
}

#[test]
fn serve_subcommand_and_config_file_are_accepted() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = home.path().join("ncps.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  addr: 127.0.0.1:{port}\ncache:\n  hostname: from-config\n  storage:\n    local: {}\n  upstream:\n    urls:\n      - http://127.0.0.1:9\n    public-keys:\n      - up-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=\n",
            home.path().join("data").display()
        ),
    )
    .unwrap();
    let _server = start(
        home.path(),
        &["serve", "--config", config.to_str().unwrap()],
        &[],
    );
    let root = get(&format!("http://127.0.0.1:{port}/")).expect("server never answered");
    assert!(root.contains("\"hostname\":\"from-config\""), "{root}");
    assert!(root.contains("from-config-1:"), "{root}");
    assert!(home.path().join("data/db/db.sqlite").exists());
}

#[test]
fn environment_wins_over_the_config_file() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = home.path().join("ncps.toml");
    std::fs::write(
        &config,
        format!("[server]\naddr = \"127.0.0.1:{port}\"\n[cache]\nhostname = \"from-file\"\n"),
    )
    .unwrap();
    let _server = start(
        home.path(),
        &[],
        &[
            ("NCPS_CONFIG_FILE", config.to_str().unwrap()),
            ("CACHE_HOSTNAME", "from-env"),
        ],
    );
    let root = get(&format!("http://127.0.0.1:{port}/")).expect("server never answered");
    assert!(root.contains("\"hostname\":\"from-env\""), "{root}");
}

#[test]
fn with_no_options_it_serves_the_embedded_default_and_keeps_its_key() {
    // The embedded default listens on :8501; skip if something else holds it.
    if TcpListener::bind("0.0.0.0:8501").is_err() {
        eprintln!(
            "SKIPPED: with_no_options_it_serves_the_embedded_default_and_keeps_its_key: port 8501 is taken"
        );
        assert!(
            std::env::var_os("NCPS_TEST_REQUIRE_ALL").is_none(),
            "port 8501 is taken"
        );
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let first_key = {
        let _server = start(home.path(), &[], &[]);
        let key = get("http://127.0.0.1:8501/pubkey").expect("server never answered");
        let info = get("http://127.0.0.1:8501/nix-cache-info").unwrap();
        assert!(info.contains("StoreDir: /nix/store"), "{info}");
        key
    };
    assert!(home.path().join(".local/share/ncps/db/db.sqlite").exists());
    // Wait until the first server has let go of the port.
    for _ in 0..200 {
        if TcpListener::bind("0.0.0.0:8501").is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _server = start(home.path(), &[], &[]);
    let second_key = get("http://127.0.0.1:8501/pubkey").expect("server never answered");
    assert_eq!(first_key, second_key, "the generated key was not kept");
}
