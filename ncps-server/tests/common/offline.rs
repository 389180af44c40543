//! The `ncps-server` binary in a clean environment that cannot reach the
//! internet, for the tests of its options: a command to add options to, a
//! bounded run until it exits, and the check that it refused an option.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Outside requests go to this loopback port, which refuses them: the
/// default upstream is cache.nixos.org, and tests must not reach it.
pub const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// How long [`run_to_exit`] waits for the server to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// `ncps-server` with an empty environment but `HOME` and proxies that
/// refuse every outside request.
pub fn offline_server(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ncps-server"));
    command
        .env_clear()
        .env("HOME", home)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("NO_PROXY", "127.0.0.1,localhost");
    command
}

/// Runs `command` until it exits; its output. Panics, with its stderr, if
/// it is still running after 30 s (a server that should have refused to
/// start would otherwise serve for ever).
pub fn run_to_exit(mut command: Command) -> Output {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("wait_with_output");
        }
        if started.elapsed() > EXIT_WITHIN {
            let _ = child.kill();
            let output = child.wait_with_output().expect("wait_with_output");
            panic!(
                "{command:?} still running after {EXIT_WITHIN:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the server given `args` exited non-zero naming `option` on stderr.
pub fn assert_refused_naming(output: &Output, args: &[&str], option: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} was accepted");
    assert!(
        stderr.contains(option),
        "{args:?}: stderr does not name {option}: {stderr}"
    );
}
