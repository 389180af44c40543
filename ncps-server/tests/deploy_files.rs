//! The packaging files under `deploy/` (Dockerfile, Compose, Kubernetes, Helm,
//! systemd, NixOS) cannot drift from the binary: every flag, environment
//! variable and config key they give ncps-server is checked against the
//! binary's own `--help` and config-key table, each environment block is run
//! through `ncps-server --check-config` when the binary has it, and what can
//! run here is run: the image's HEALTHCHECK command and the Compose nginx
//! config against the real server, `systemd-analyze verify` on the unit, and
//! the NixOS module evaluated by Nix.
//!
//! Every problem names the file and the unknown option.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_yaml::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_ncps-server");

/// Environment variables the binary reads outside its command line (so not
/// in `--help`), each with the source file that reads it: the test checks the
/// name is still there, so this list cannot go stale either.
const OUTSIDE_CLAP: &[(&str, &str)] = &[
    ("SERVER_DRAIN_TIMEOUT", "ncps-server/src/server.rs"),
    ("XDG_DATA_HOME", "ncps-config/src/machine.rs"),
    ("HOME", "ncps-config/src/machine.rs"),
];

/// The image every ncps container of the Compose and Kubernetes files runs.
const IMAGE: &str = "ncps-rs";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// A path relative to the repository, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// What the binary knows
// ---------------------------------------------------------------------------

/// The options of the binary under test, read from its `--help`.
struct Binary {
    /// Long flags without the dashes (`cache-hostname`).
    flags: BTreeSet<String>,
    /// Flags that take a value: required (`--config <CONFIG>`) or optional
    /// (`--cache-sign-narinfo [<...>]`).
    value_flags: BTreeMap<String, bool>,
    /// Environment variables clap reads (`[env: NAME=]`).
    envs: BTreeSet<String>,
    /// Subcommands (`serve`, `help`).
    subcommands: BTreeSet<String>,
    /// Config-file keys (`cache.hostname`).
    keys: BTreeSet<&'static str>,
    /// Whether `--check-config` exists.
    check_config: bool,
}

impl Binary {
    fn read() -> Binary {
        let mut help = String::new();
        for args in [&["--help"][..], &["serve", "--help"]] {
            let out = Command::new(SERVER)
                .args(args)
                .env_clear()
                .output()
                .expect("running ncps-server --help");
            assert!(out.status.success(), "ncps-server {args:?} failed");
            help.push_str(&String::from_utf8_lossy(&out.stdout));
            help.push('\n');
        }
        let mut binary = Binary {
            flags: BTreeSet::new(),
            value_flags: BTreeMap::new(),
            envs: BTreeSet::new(),
            subcommands: BTreeSet::new(),
            keys: ncps_config::config_file::KEYS
                .iter()
                .map(|(k, _)| *k)
                .collect(),
            check_config: false,
        };
        let mut in_commands = false;
        for line in help.lines() {
            let trimmed = line.trim_start();
            if line.starts_with("Commands:") {
                in_commands = true;
                continue;
            }
            if in_commands {
                match trimmed.split_whitespace().next() {
                    Some(word) if line.starts_with("  ") => {
                        binary.subcommands.insert(word.to_owned());
                    }
                    _ => in_commands = false,
                }
            }
            if trimmed.starts_with('-') {
                for (i, token) in trimmed.split_whitespace().enumerate() {
                    let token = token.trim_end_matches(',');
                    if let Some(name) = token.strip_prefix("--") {
                        binary.flags.insert(name.to_owned());
                        let next = trimmed.split_whitespace().nth(i + 1).unwrap_or("");
                        if next.starts_with('<') {
                            binary.value_flags.insert(name.to_owned(), true);
                        } else if next.starts_with("[<") {
                            binary.value_flags.insert(name.to_owned(), false);
                        }
                    }
                }
            }
            if let Some(at) = line.find("[env: ") {
                let name: String = line[at + 6..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                binary.envs.insert(name);
            }
        }
        binary.check_config = binary.flags.contains("check-config");
        assert!(
            binary.flags.contains("cache-hostname") && binary.envs.contains("CACHE_HOSTNAME"),
            "could not read the options from ncps-server --help:\n{help}"
        );
        binary
    }

    fn knows_env(&self, name: &str) -> bool {
        self.envs.contains(name) || OUTSIDE_CLAP.iter().any(|(n, _)| *n == name)
    }

    /// `flag` without dashes and without `=value`.
    fn knows_flag(&self, flag: &str) -> bool {
        self.flags.contains(flag)
    }

    /// First words of the flags (`cache`, `server`, ...): a `--word-...` in
    /// any deploy file starting with one of these must be a real flag.
    fn flag_families(&self) -> BTreeSet<String> {
        self.flags
            .iter()
            .map(|f| f.split('-').next().unwrap_or(f).to_owned())
            .collect()
    }

    /// Prefixes of the environment variables (`CACHE_`, `SERVER_`, ...): an
    /// upper-case word in any deploy file starting with one of these must be
    /// a real variable.
    fn env_families(&self) -> BTreeSet<String> {
        self.envs
            .iter()
            .map(String::as_str)
            .chain(OUTSIDE_CLAP.iter().map(|(n, _)| *n))
            .filter_map(|e| e.split_once('_').map(|(head, _)| format!("{head}_")))
            .collect()
    }
}

/// The drain deadline a deployment file sets, or the built-in one.
fn drain(env: &[(String, String)]) -> Duration {
    env.iter()
        .find(|(k, _)| k == ncps_server::server::DRAIN_TIMEOUT_ENV)
        .and_then(|(_, v)| humantime::parse_duration(v).ok())
        .unwrap_or(ncps_server::server::DRAIN_TIMEOUT)
}

// ---------------------------------------------------------------------------
// Checks shared by every file kind
// ---------------------------------------------------------------------------

/// One set of options a deploy file hands to an ncps-server process.
#[derive(Debug, Clone)]
struct Invocation {
    /// `file: where in it`, for messages.
    label: String,
    /// Arguments after the binary (`serve --config ...`).
    args: Vec<String>,
    /// Environment variables, with placeholders for secrets and pod fields.
    env: Vec<(String, String)>,
}

/// Checks an invocation's arguments and environment variable names.
fn check_invocation(bin: &Binary, inv: &Invocation, problems: &mut Vec<String>) {
    let mut args = inv.args.iter().peekable();
    while let Some(arg) = args.next() {
        if let Some(flag) = arg.strip_prefix("--") {
            let (name, inline_value) = match flag.split_once('=') {
                Some((name, _)) => (name, true),
                None => (flag, false),
            };
            if !bin.knows_flag(name) {
                problems.push(format!(
                    "{}: --{name} is not an option of ncps-server",
                    inv.label
                ));
                continue;
            }
            if !inline_value {
                match bin.value_flags.get(name) {
                    Some(true) => {
                        args.next();
                    }
                    Some(false) if args.peek().is_some_and(|v| *v == "true" || *v == "false") => {
                        args.next();
                    }
                    _ => {}
                }
            }
        } else if !bin.subcommands.contains(arg) {
            problems.push(format!(
                "{}: argument {arg:?} is not a subcommand of ncps-server",
                inv.label
            ));
        }
    }
    for (name, _) in &inv.env {
        if !bin.knows_env(name) {
            problems.push(format!(
                "{}: environment variable {name} is not read by ncps-server (not in `ncps-server serve --help`; if the binary reads it elsewhere, add it to OUTSIDE_CLAP)",
                inv.label
            ));
        }
    }
}

/// Every `--family-...` flag and `FAMILY_...` variable anywhere in `text`
/// (comments and docs included) must be the binary's; a name ending in `-*`
/// or `_*` must be the prefix of one.
fn scan_text(bin: &Binary, file: &str, text: &str, problems: &mut Vec<String>) {
    let flag_families = bin.flag_families();
    let env_families = bin.env_families();
    let bytes = text.as_bytes();
    let is_flag_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    let is_word_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut seen = BTreeSet::new();
    // Flags.
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        i = start + 2;
        if start > 0 && (is_flag_char(bytes[start - 1]) || bytes[start - 1].is_ascii_alphanumeric())
        {
            continue;
        }
        let mut end = i;
        while end < bytes.len() && is_flag_char(bytes[end]) {
            end += 1;
        }
        let name = &text[i..end];
        i = end;
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            continue;
        }
        let family = name.split('-').next().unwrap_or(name);
        if !flag_families.contains(family) {
            continue;
        }
        let glob = bytes.get(end) == Some(&b'*');
        let known = if glob {
            bin.flags.iter().any(|f| f.starts_with(name))
        } else {
            bin.knows_flag(name)
        };
        if !known && seen.insert(format!("--{name}")) {
            problems.push(format!(
                "{file}: --{name}{} is not an option of ncps-server",
                if glob { "*" } else { "" }
            ));
        }
    }
    // Environment variables.
    let mut i = 0;
    while i < bytes.len() {
        if !is_word_char(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word_char(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let upper = word
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        let Some((head, _)) = word.split_once('_') else {
            continue;
        };
        if !upper || !env_families.contains(&format!("{head}_")) {
            continue;
        }
        let glob = bytes.get(i) == Some(&b'*');
        let known = if glob {
            bin.envs.iter().any(|e| e.starts_with(word))
        } else {
            bin.knows_env(word)
        };
        if !known && seen.insert(word.to_owned()) {
            problems.push(format!(
                "{file}: {word}{} is not an environment variable of ncps-server",
                if glob { "*" } else { "" }
            ));
        }
    }
}

/// Checks config-file keys with the binary's own reader: any key it would
/// ignore as unknown is a problem.
fn check_config_file(path: &Path, label: &str, problems: &mut Vec<String>) {
    match ncps_config::config_file::read(path) {
        Ok(config) => {
            for key in config.unknown_keys {
                problems.push(format!(
                    "{label}: config key {key} is not read by ncps-server (not in config_file::KEYS)"
                ));
            }
        }
        Err(e) => problems.push(format!("{label}: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        current.push_str(trimmed);
        let (instruction, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((instruction.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// Splits Docker's `KEY=value KEY2=value` (no quoting used here).
fn docker_env(rest: &str) -> Vec<(String, String)> {
    rest.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The final stage's environment, default arguments and HEALTHCHECK command.
struct Image {
    env: Vec<(String, String)>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
}

fn image(bin: &Binary, problems: &mut Vec<String>) -> Image {
    let path = deploy().join("docker/Dockerfile");
    let file = shown(&path);
    let mut image = Image {
        env: Vec::new(),
        cmd: Vec::new(),
        healthcheck: Vec::new(),
    };
    let mut user = None;
    let mut entrypoint = Vec::new();
    for (instruction, rest) in dockerfile_instructions(&read(&path)) {
        match instruction.as_str() {
            // Only the last stage is the image.
            "FROM" => {
                image.env.clear();
                entrypoint.clear();
                user = None;
            }
            "ENV" => image.env.extend(docker_env(&rest)),
            "USER" => user = Some(rest),
            "ENTRYPOINT" => {
                entrypoint = serde_json::from_str(&rest)
                    .unwrap_or_else(|e| panic!("{file}: ENTRYPOINT is not a JSON array: {e}"))
            }
            "CMD" => {
                image.cmd = serde_json::from_str(&rest)
                    .unwrap_or_else(|e| panic!("{file}: CMD is not a JSON array: {e}"))
            }
            "HEALTHCHECK" => {
                let at = rest.find("CMD ").expect("HEALTHCHECK ... CMD [...]");
                image.healthcheck = serde_json::from_str(&rest[at + 4..])
                    .unwrap_or_else(|e| panic!("{file}: HEALTHCHECK CMD is not a JSON array: {e}"));
            }
            _ => {}
        }
    }
    if !entrypoint
        .iter()
        .any(|e: &String| e.ends_with("/ncps-server"))
    {
        problems.push(format!(
            "{file}: ENTRYPOINT {entrypoint:?} does not run ncps-server"
        ));
    }
    match user.as_deref() {
        Some(u) if !u.starts_with("0") && !u.starts_with("root") => {}
        other => problems.push(format!(
            "{file}: the image must run as a non-root USER, not {other:?}"
        )),
    }
    if image.healthcheck.is_empty() {
        problems.push(format!("{file}: no HEALTHCHECK"));
    }
    check_invocation(
        bin,
        &Invocation {
            label: format!("{file}: ENV/CMD"),
            args: image.cmd.clone(),
            env: image.env.clone(),
        },
        problems,
    );
    image
}

// ---------------------------------------------------------------------------
// Compose
// ---------------------------------------------------------------------------

fn yaml_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `NAME=value` lines of an env file.
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Checks a Compose file; returns the invocations of its ncps services.
fn compose(
    bin: &Binary,
    path: &Path,
    text: &str,
    default_cmd: &[String],
    problems: &mut Vec<String>,
) -> Vec<Invocation> {
    let file = shown(path);
    let mut doc: Value =
        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{file}: YAML merge keys: {e}"));
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        problems.push(format!("{file}: no services"));
        return out;
    };
    for (name, service) in services {
        let name = yaml_string(name).unwrap_or_default();
        let image = service.get("image").and_then(Value::as_str).unwrap_or("");
        let dockerfile = service
            .get("build")
            .and_then(|b| b.get("dockerfile"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !image.starts_with(IMAGE) && !dockerfile.ends_with("deploy/docker/Dockerfile") {
            continue;
        }
        let label = format!("{file}: service {name}");
        let mut env = Vec::new();
        let env_files = match service.get("env_file") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(|i| yaml_string(i).or_else(|| i.get("path").and_then(yaml_string)))
                .collect(),
            _ => Vec::new(),
        };
        for f in env_files {
            let p = dir.join(&f);
            match std::fs::read_to_string(&p) {
                Ok(text) => env.extend(env_file(&text)),
                Err(e) => problems.push(format!("{label}: env_file {f}: {e}")),
            }
        }
        match service.get("environment") {
            Some(Value::Mapping(map)) => {
                for (k, v) in map {
                    env.retain(|(name, _)| Some(name) != yaml_string(k).as_ref());
                    env.push((
                        yaml_string(k).unwrap_or_default(),
                        yaml_string(v).unwrap_or_default(),
                    ));
                }
            }
            Some(Value::Sequence(items)) => {
                for item in items.iter().filter_map(yaml_string) {
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    env.retain(|(name, _)| name != k);
                    env.push((k.to_owned(), v.to_owned()));
                }
            }
            _ => {}
        }
        let args = match service.get("command") {
            Some(Value::Sequence(items)) => items.iter().filter_map(yaml_string).collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => default_cmd.to_vec(),
        };
        if service.get("entrypoint").is_some() {
            problems.push(format!("{label}: overrides the image's ENTRYPOINT"));
        }
        let grace = service
            .get("stop_grace_period")
            .and_then(Value::as_str)
            .and_then(|g| humantime::parse_duration(g).ok());
        match grace {
            Some(g) if g > drain(&env) => {}
            other => problems.push(format!(
                "{label}: stop_grace_period {other:?} must exceed the {:?} drain (Docker's default is 10 s)",
                drain(&env)
            )),
        }
        let inv = Invocation { label, args, env };
        check_invocation(bin, &inv, problems);
        out.push(inv);
    }
    out
}

// ---------------------------------------------------------------------------
// Kubernetes (plain manifests and rendered Helm)
// ---------------------------------------------------------------------------

/// Placeholder values for what Kubernetes fills in at run time.
fn secret_placeholder(env: &str) -> String {
    match env {
        "CACHE_DATABASE_URL" => "postgres://ncps:placeholder@db.invalid:5432/ncps".into(),
        _ => "placeholder".into(),
    }
}

/// Checks the workloads of a multi-document Kubernetes YAML; returns the
/// invocations of their ncps containers.
fn kubernetes(bin: &Binary, file: &str, text: &str, problems: &mut Vec<String>) -> Vec<Invocation> {
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"))
        })
        .filter(|d: &Value| !d.is_null())
        .collect();
    let kind = |d: &Value| {
        d.get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let pdb_selectors: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == "PodDisruptionBudget")
        .filter_map(|d| d.get("spec")?.get("selector"))
        .collect();
    let mut out = Vec::new();
    for doc in &docs {
        if !matches!(
            kind(doc).as_str(),
            "Deployment" | "StatefulSet" | "DaemonSet"
        ) {
            continue;
        }
        let name = doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let replicas = doc
            .get("spec")
            .and_then(|s| s.get("replicas"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let Some(pod) = doc
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
        else {
            continue;
        };
        let containers = pod
            .get("containers")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for c in containers {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            // `ncps-rs:tag` or `registry/path/ncps-rs:tag`.
            if !image.rsplit('/').next().unwrap_or("").starts_with(IMAGE) {
                continue;
            }
            let label = format!(
                "{file}: {} {name} container {}",
                kind(doc),
                c.get("name").and_then(Value::as_str).unwrap_or("?")
            );
            let items = c
                .get("env")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            // Names only used to build other values, as `$(POD_IP)`.
            let referenced: BTreeSet<String> = items
                .iter()
                .filter_map(|i| i.get("value").and_then(Value::as_str))
                .flat_map(|v| {
                    v.split("$(")
                        .skip(1)
                        .filter_map(|s| s.split_once(')').map(|(n, _)| n.to_owned()))
                        .collect::<Vec<_>>()
                })
                .collect();
            let mut env: Vec<(String, String)> = Vec::new();
            let mut pod_ip_vars = BTreeSet::new();
            for item in &items {
                let n = item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let value = if let Some(v) = item.get("value") {
                    yaml_string(v).unwrap_or_default()
                } else if let Some(from) = item.get("valueFrom") {
                    if from
                        .get("fieldRef")
                        .and_then(|f| f.get("fieldPath"))
                        .and_then(Value::as_str)
                        == Some("status.podIP")
                    {
                        pod_ip_vars.insert(n.clone());
                        "127.0.0.1".to_owned()
                    } else {
                        secret_placeholder(&n)
                    }
                } else {
                    String::new()
                };
                env.push((n, value));
            }
            // A file from a mounted Secret (the signing key): a real key
            // file here, as --check-config reads it.
            let secret_mounts: Vec<String> = c
                .get("volumeMounts")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter(|m| {
                    let name = m.get("name").and_then(Value::as_str);
                    pod.get("volumes")
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten()
                        .any(|v| {
                            v.get("name").and_then(Value::as_str) == name
                                && v.get("secret").is_some()
                        })
                })
                .filter_map(|m| {
                    m.get("mountPath")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect();
            for (n, v) in env.iter_mut() {
                if n == "CACHE_SECRET_KEY_PATH"
                    && secret_mounts.iter().any(|m| v.starts_with(m.as_str()))
                {
                    let key = std::env::temp_dir().join("ncps-deploy-files-signing-key");
                    std::fs::write(&key, common::STATIC_SECRET_KEY).unwrap();
                    *v = key.display().to_string();
                }
            }
            // Expand $(NAME) as Kubernetes does, then drop the helpers.
            let snapshot = env.clone();
            for (_, v) in env.iter_mut() {
                for (k, kv) in &snapshot {
                    *v = v.replace(&format!("$({k})"), kv);
                }
            }
            env.retain(|(n, _)| !referenced.contains(n) || bin.knows_env(n));
            let get = |n: &str| {
                snapshot
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            let args: Vec<String> = c
                .get("command")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .chain(
                    c.get("args")
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten(),
                )
                .filter_map(yaml_string)
                .collect();
            let args = if args.is_empty() {
                vec!["serve".to_owned()]
            } else {
                args
            };

            // Probes: readiness asks for the backends, liveness only the process.
            let probe = |p: &str| {
                c.get(p)
                    .and_then(|p| p.get("httpGet"))
                    .and_then(|g| g.get("path"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            if probe("readinessProbe").as_deref() != Some("/readyz") {
                problems.push(format!("{label}: readinessProbe must GET /readyz"));
            }
            if probe("livenessProbe").as_deref() != Some("/healthz") {
                problems.push(format!("{label}: livenessProbe must GET /healthz"));
            }
            // The grace period covers preStop and the drain.
            // The kubelet's own `sleep` action (the image has no sleep
            // program), or an exec of `sleep N`.
            let pre_stop_hook = c.get("lifecycle").and_then(|l| l.get("preStop"));
            let pre_stop = pre_stop_hook
                .and_then(|p| p.get("sleep"))
                .and_then(|s| s.get("seconds"))
                .and_then(Value::as_u64)
                .or_else(|| {
                    pre_stop_hook
                        .and_then(|p| p.get("exec"))
                        .and_then(|e| e.get("command"))
                        .and_then(Value::as_sequence)
                        .and_then(|cmd| match cmd.as_slice() {
                            [s, n] if s.as_str() == Some("sleep") => {
                                yaml_string(n)?.parse::<u64>().ok()
                            }
                            _ => None,
                        })
                })
                .unwrap_or(0);
            let grace = pod
                .get("terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30);
            let needed = drain(&env) + Duration::from_secs(pre_stop);
            if Duration::from_secs(grace) <= needed {
                problems.push(format!(
                    "{label}: terminationGracePeriodSeconds {grace} must exceed preStop + drain ({needed:?})"
                ));
            }
            if replicas > 1 {
                let advertise = items.iter().find_map(|i| {
                    (i.get("name")?.as_str()? == "CACHE_ADVERTISE_URL").then(|| {
                        i.get("value")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned()
                    })
                });
                match advertise {
                    Some(a) if pod_ip_vars.iter().any(|v| a.contains(&format!("$({v})"))) => {}
                    _ => problems.push(format!(
                        "{label}: {replicas} replicas need CACHE_ADVERTISE_URL built from the pod IP (fieldRef status.podIP)"
                    )),
                }
                for shared in [
                    "CACHE_DATABASE_URL",
                    "CACHE_STORAGE_S3_BUCKET",
                    "CACHE_REDIS_ADDRS",
                ] {
                    if get(shared).is_none() {
                        problems.push(format!("{label}: {replicas} replicas must share {shared}"));
                    }
                }
                let labels = pod_labels(doc);
                if !pdb_selectors.iter().any(|s| selects(s, &labels)) {
                    problems.push(format!(
                        "{label}: {replicas} replicas and no PodDisruptionBudget selecting them"
                    ));
                }
            }
            let inv = Invocation { label, args, env };
            check_invocation(bin, &inv, problems);
            out.push(inv);
        }
    }
    out
}

fn pod_labels(doc: &Value) -> BTreeMap<String, String> {
    doc.get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((yaml_string(k)?, yaml_string(v)?)))
        .collect()
}

fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    selector
        .get("matchLabels")
        .and_then(Value::as_mapping)
        .is_some_and(|m| {
            m.iter().all(|(k, v)| {
                yaml_string(k).and_then(|k| labels.get(&k).cloned()) == yaml_string(v)
            })
        })
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

/// The `[Service]` section's directives, in order (a key may repeat).
fn unit_service_section(text: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[Service]"
            || line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
        {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// `Environment=` assignments, quoted or not.
fn unit_environment(value: &str) -> Vec<(String, String)> {
    value
        .split_whitespace()
        .map(|a| a.trim_matches('"'))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Checks the unit; returns its invocation, with `--config` pointing at the
/// example config file shipped beside it.
fn systemd_unit(bin: &Binary, path: &Path, text: &str, problems: &mut Vec<String>) -> Invocation {
    let file = shown(path);
    let service = unit_service_section(text);
    let get = |k: &str| {
        service
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let mut env = Vec::new();
    for (k, v) in &service {
        if k == "Environment" {
            env.extend(unit_environment(v));
        }
    }
    let exec = get("ExecStart").unwrap_or_default();
    let mut words = exec.split_whitespace();
    let binary = words.next().unwrap_or("");
    if !binary.ends_with("/ncps-server") {
        problems.push(format!(
            "{file}: ExecStart does not run ncps-server: {exec}"
        ));
    }
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    // The config file the unit names is the example shipped beside it.
    if let Some(i) = args.iter().position(|a| a == "--config")
        && let Some(config) = args.get_mut(i + 1)
    {
        let name = Path::new(config.as_str())
            .file_name()
            .unwrap_or_default()
            .to_owned();
        let example = path.with_file_name(&name);
        if example.exists() {
            check_config_file(&example, &shown(&example), problems);
            *config = example.display().to_string();
        } else {
            problems.push(format!(
                "{file}: --config {config}: no example {name:?} beside the unit"
            ));
        }
    }
    if get("KillSignal").as_deref() != Some("SIGTERM") {
        problems.push(format!("{file}: KillSignal must be SIGTERM (the drain)"));
    }
    let stop = get("TimeoutStopSec").and_then(|t| humantime::parse_duration(&t).ok());
    if stop.is_none_or(|s| s <= drain(&env)) {
        problems.push(format!(
            "{file}: TimeoutStopSec {stop:?} must exceed the {:?} drain",
            drain(&env)
        ));
    }
    let inv = Invocation {
        label: format!("{file}: ExecStart/Environment"),
        args,
        env,
    };
    check_invocation(bin, &inv, problems);
    inv
}

// ---------------------------------------------------------------------------
// --check-config
// ---------------------------------------------------------------------------

/// Outbound requests of a process under test go here and are refused: no
/// test reaches the internet, even if `--check-config` were to try.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// Runs the binary with `args` and exactly `env` (plus a temporary HOME and
/// dead proxies), killed after 30 s: `Err` when it had to be killed.
fn run_bounded(args: &[String], env: &[(String, String)]) -> Result<Output, String> {
    let home = tempfile::tempdir().unwrap();
    let out_path = home.path().join("stdout");
    let err_path = home.path().join("stderr");
    let mut child = Command::new(SERVER)
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running ncps-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "still running after 30 s (killed):\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    })
}

/// Whether `--check-config` is the dry run it says it is: with a storage
/// directory that does not exist and a port already taken, it must exit 0
/// at once and create nothing. The deploy files name real paths
/// (/var/lib/ncps) and ports, so they are only handed to a dry run.
fn check_config_is_a_dry_run() -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let args: Vec<String> = [
        "serve",
        "--check-config",
        "--cache-hostname",
        "probe.test",
        "--server-addr",
        &taken.local_addr().unwrap().to_string(),
        "--cache-storage-local",
        &storage.display().to_string(),
        "--cache-upstream-url",
        "http://127.0.0.1:9",
        "--cache-upstream-public-key",
        common::STATIC_PUBLIC_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_bounded(&args, &[])?;
    if !out.status.success() || storage.exists() {
        return Err(format!(
            "exit {}, storage created: {}:\n{}",
            out.status,
            storage.exists(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Runs `ncps-server <args> --check-config` with exactly `inv.env`: it must
/// accept the options.
fn run_check_config(inv: &Invocation, problems: &mut Vec<String>) {
    let mut args = inv.args.clone();
    args.push("--check-config".into());
    match run_bounded(&args, &inv.env) {
        Ok(out) if out.status.success() => {}
        Ok(out) => problems.push(format!(
            "{}: ncps-server {} refused the options ({}):\n{}{}",
            inv.label,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => problems.push(format!(
            "{}: ncps-server {}: {e}",
            inv.label,
            args.join(" ")
        )),
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

fn deploy_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            deploy_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn helm(args: &[&str]) -> Output {
    Command::new("helm")
        .args(args)
        .output()
        .expect("running helm")
}

#[test]
fn every_option_the_deploy_files_pass_is_one_the_binary_has() {
    let bin = Binary::read();
    let mut problems = Vec::new();
    for (name, source) in OUTSIDE_CLAP {
        if !read(&repo().join(source)).contains(&format!("\"{name}\"")) {
            problems.push(format!(
                "OUTSIDE_CLAP: {source} no longer reads {name}; update the list"
            ));
        }
    }

    // Every file, comments and docs included.
    let mut files = Vec::new();
    deploy_files(&deploy(), &mut files);
    files.sort();
    assert!(files.len() >= 15, "deploy/ has only {files:?}");
    for path in &files {
        if let Ok(text) = std::fs::read_to_string(path) {
            scan_text(&bin, &shown(path), &text, &mut problems);
        }
    }

    let mut invocations = Vec::new();
    let image = image(&bin, &mut problems);
    invocations.push(Invocation {
        label: "deploy/docker/Dockerfile".into(),
        args: image.cmd.clone(),
        env: image.env.clone(),
    });
    for name in ["single.yaml", "ha.yaml"] {
        let path = deploy().join("compose").join(name);
        invocations.extend(compose(
            &bin,
            &path,
            &read(&path),
            &image.cmd,
            &mut problems,
        ));
    }
    for name in ["single.yaml", "ha.yaml"] {
        let path = deploy().join("kubernetes").join(name);
        invocations.extend(kubernetes(&bin, &shown(&path), &read(&path), &mut problems));
    }
    let unit = deploy().join("systemd/ncps.service");
    invocations.push(systemd_unit(&bin, &unit, &read(&unit), &mut problems));

    // Helm: the option names in the values files, and the rendered chart.
    let chart = deploy().join("helm/ncps");
    for values in ["values.yaml", "values-ha.yaml", "values-full.yaml"] {
        let path = chart.join(values);
        let doc: Value = serde_yaml::from_str(&read(&path)).unwrap();
        for map in ["env", "secretEnv"] {
            for (k, _) in doc
                .get(map)
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                let k = yaml_string(k).unwrap_or_default();
                if !bin.knows_env(&k) {
                    problems.push(format!(
                        "{}: {map}.{k} is not an environment variable of ncps-server",
                        shown(&path)
                    ));
                }
            }
        }
    }
    if common::tool_installed("helm") {
        for values in [None, Some("values-ha.yaml"), Some("values-full.yaml")] {
            let chart_dir = chart.display().to_string();
            let mut args = vec!["template", "ncps", chart_dir.as_str()];
            let values_path;
            if let Some(v) = values {
                values_path = chart.join(v).display().to_string();
                args.extend(["-f", values_path.as_str()]);
            }
            let out = helm(&args);
            let label = format!("helm template deploy/helm/ncps {}", values.unwrap_or(""));
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let found = kubernetes(&bin, &label, &text, &mut problems);
                if found.is_empty() {
                    problems.push(format!("{label}: renders no ncps container"));
                }
                invocations.extend(found);
            } else {
                problems.push(format!("{label}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
    } else {
        eprintln!(
            "NOTE: helm is not installed: the chart's option names were checked in its files, not in rendered output"
        );
    }

    if bin.check_config {
        if let Err(e) = check_config_is_a_dry_run() {
            panic!("ncps-server --help lists --check-config, but it is not a dry run: {e}");
        }
        for inv in &invocations {
            run_check_config(inv, &mut problems);
        }
    } else {
        eprintln!("NOTE: this ncps-server has no --check-config: option values were not checked");
    }
    assert!(
        invocations.len() >= 8,
        "expected the Dockerfile, 4 Compose services, 2 manifests and the unit at least: {:#?}",
        invocations.iter().map(|i| &i.label).collect::<Vec<_>>()
    );
    assert!(
        problems.is_empty(),
        "deploy files out of step with ncps-server:\n- {}",
        problems.join("\n- ")
    );
}

/// The checks above can fail: a wrong flag, variable or key in each kind of
/// file is reported with the file and the name.
#[test]
fn the_checks_name_the_file_and_the_unknown_option() {
    let bin = Binary::read();
    let compose_text = "services:\n  ncps:\n    image: ncps-rs:latest\n    command: [serve, --cache-hostnme, x]\n    environment:\n      CACHE_HOSTNAM: x\n    stop_grace_period: 30s\n";
    let mut problems = Vec::new();
    compose(
        &bin,
        Path::new("/x/bad-compose.yaml"),
        compose_text,
        &[],
        &mut problems,
    );
    let all = problems.join("\n");
    assert!(
        all.contains("bad-compose.yaml") && all.contains("--cache-hostnme"),
        "{all}"
    );
    assert!(all.contains("CACHE_HOSTNAM "), "{all}");

    let k8s = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: n}\nspec:\n  replicas: 3\n  template:\n    spec:\n      terminationGracePeriodSeconds: 20\n      containers:\n        - name: c\n          image: ncps-rs:1\n          env: [{name: CACHE_REDIS_ADDR, value: r:6379}]\n";
    let mut problems = Vec::new();
    kubernetes(&bin, "bad-k8s.yaml", k8s, &mut problems);
    let all = problems.join("\n");
    for expected in [
        "bad-k8s.yaml: Deployment n container c: environment variable CACHE_REDIS_ADDR ",
        "readinessProbe must GET /readyz",
        "terminationGracePeriodSeconds 20 must exceed",
        "need CACHE_ADVERTISE_URL built from the pod IP",
        "must share CACHE_REDIS_ADDRS",
        "no PodDisruptionBudget",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }

    let unit = "[Service]\nExecStart=/usr/bin/ncps-server serve --cache-upstream-urls x\nEnvironment=LOG_LEVL=info\nTimeoutStopSec=10s\n";
    let mut problems = Vec::new();
    systemd_unit(&bin, Path::new("/x/bad.service"), unit, &mut problems);
    let all = problems.join("\n");
    for expected in [
        "--cache-upstream-urls is not",
        "LOG_LEVL",
        "TimeoutStopSec",
        "KillSignal",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }

    let mut problems = Vec::new();
    scan_text(
        &bin,
        "bad.md",
        "use --cache-storage-s3-bukket or CACHE_STORAGE_S3_* and CACHE_LOCK_TTL; --mount=type=cache is Docker's",
        &mut problems,
    );
    assert_eq!(
        problems,
        vec![
            "bad.md: --cache-storage-s3-bukket is not an option of ncps-server".to_owned(),
            "bad.md: CACHE_LOCK_TTL is not an environment variable of ncps-server".to_owned(),
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        "cache:\n  hostname: x\n  upstream:\n    url: [y]\n",
    )
    .unwrap();
    let mut problems = Vec::new();
    check_config_file(&config, "c.yaml", &mut problems);
    assert_eq!(
        problems,
        vec!["c.yaml: config key cache.upstream.url is not read by ncps-server (not in config_file::KEYS)".to_owned()]
    );
}

/// The image's HEALTHCHECK command (deploy/docker/healthcheck.rs, built as
/// the Dockerfile builds it: the image has no shell and no HTTP client)
/// succeeds against a live server and fails once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_asks_healthz_of_the_real_server() {
    let mut problems = Vec::new();
    let image = image(&Binary::read(), &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let port_in_image = image
        .env
        .iter()
        .find(|(k, _)| k == "SERVER_ADDR")
        .map(|(_, v)| v.trim_start_matches(':').to_owned())
        .expect("the image sets SERVER_ADDR");
    let [program, url] = image.healthcheck.as_slice() else {
        panic!(
            "HEALTHCHECK CMD [program, url] expected: {:?}",
            image.healthcheck
        );
    };
    assert_eq!(program, "/usr/local/bin/ncps-healthcheck");
    let probed = format!("http://127.0.0.1:{port_in_image}/healthz");
    assert_eq!(
        url, &probed,
        "the HEALTHCHECK must ask /healthz on the port of the image's SERVER_ADDR"
    );

    // Built with the Dockerfile's rustc flags.
    let dockerfile = read(&deploy().join("docker/Dockerfile"));
    let rustc_lines = dockerfile
        .lines()
        .skip_while(|l| !l.contains("&& rustc "))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let flags: Vec<&str> = rustc_lines
        .split_whitespace()
        .filter(|w| *w != "\\")
        .skip_while(|w| *w != "rustc")
        .skip(1)
        .take_while(|w| !w.ends_with(".rs"))
        .collect();
    assert!(
        flags.contains(&"opt-level=s"),
        "rustc flags from the Dockerfile: {flags:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("ncps-healthcheck");
    let status = Command::new("rustc")
        .args(&flags)
        .arg(deploy().join("docker/healthcheck.rs"))
        .arg("-o")
        .arg(&probe)
        .status()
        .expect("running rustc");
    assert!(
        status.success(),
        "rustc deploy/docker/healthcheck.rs failed"
    );

    let upstream = format!("http://127.0.0.1:{}", common::free_port());
    let mut proxy = common::Proxy::start(common::ProxyConfig::new(
        upstream,
        &[common::STATIC_PUBLIC_KEY],
    ))
    .await;
    let run = |url: &str| {
        Command::new(&probe)
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let live = probed.replace(&port_in_image, &proxy.port().to_string());
    let out = run(&live);
    assert!(
        out.status.success(),
        "HEALTHCHECK failed against a live server: {out:?}"
    );
    // A non-2xx answer fails it too.
    let out = run(&live.replace("/healthz", "/no-such-route"));
    assert!(
        !out.status.success(),
        "HEALTHCHECK passed on a 404: {out:?}"
    );
    let (status, _) = proxy.terminate().await;
    assert!(status.success(), "{status}");
    let out = run(&live);
    assert!(
        !out.status.success(),
        "HEALTHCHECK passed with the server stopped: {out:?}"
    );
}

/// The nginx config of the HA Compose file carries the directives
/// tests/ha_nginx.rs proves a rolling restart with, and balances over live
/// and dead instances without failing a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_nginx_config_is_the_tested_one_and_skips_dead_instances() {
    let conf = read(&deploy().join("compose/nginx.conf"));
    let directives = |text: &str| -> BTreeSet<String> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
            .filter(|l| l.ends_with(';'))
            .collect()
    };
    let shipped = directives(&conf);
    // The location block of the tested config, less its test-only header.
    let tested_source = read(&repo().join("ncps-server/tests/ha_nginx.rs"));
    let location = tested_source
        .split("location / {{")
        .nth(1)
        .and_then(|s| s.split("}}").next())
        .expect("the location block in tests/ha_nginx.rs");
    for directive in directives(location) {
        if directive.starts_with("add_header X-Ncps-Upstream") {
            continue;
        }
        assert!(
            shipped.contains(&directive),
            "deploy/compose/nginx.conf lacks `{directive}` of the tested config in tests/ha_nginx.rs"
        );
    }
    assert!(conf.contains("max_fails=0") && conf.contains("keepalive 32;"));

    // Debian's nginx is in /usr/sbin, which a non-root PATH may lack.
    let nginx = if common::tool_installed("nginx") {
        "nginx"
    } else if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        common::require_tool(
            "the_compose_nginx_config_is_the_tested_one_and_skips_dead_instances",
            "nginx",
        );
        return;
    };
    let upstream = format!("http://127.0.0.1:{}", common::free_port());
    let proxy = common::Proxy::start(common::ProxyConfig::new(
        upstream,
        &[common::STATIC_PUBLIC_KEY],
    ))
    .await;
    // ncps-1 is live; ncps-2 and ncps-3 point at ports nobody listens on.
    let (dead_2, dead_3) = (common::free_port(), common::free_port());
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let server_conf = conf
        .replace("ncps-1:8501", &format!("127.0.0.1:{}", proxy.port()))
        .replace("ncps-2:8501", &format!("127.0.0.1:{dead_2}"))
        .replace("ncps-3:8501", &format!("127.0.0.1:{dead_3}"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    let full = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 64; }}\nhttp {{\n access_log {d}/access.log;\n client_body_temp_path {d}/cb;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{server_conf}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, &full).unwrap();
    let test = Command::new(nginx)
        .args(["-t", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _nginx = Killed(
        Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.get(&url).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx did not answer within 10 s: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Round robin sends some of these to the dead instances first; every one
    // must still be answered by the live one.
    for i in 0..9 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i} through nginx");
        assert_eq!(response.text().await.unwrap().trim(), "ok", "request {i}");
    }
    let pubkey = client
        .get(format!("http://127.0.0.1:{port}/pubkey"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pubkey.trim(), proxy.public_key());
    // The dead instances were tried and skipped, not avoided.
    let errors = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    assert!(
        errors.contains("Connection refused"),
        "nginx never tried a dead instance:\n{errors}"
    );
}

/// `systemd-analyze verify` accepts the unit (with its optional credential
/// lines enabled too) once ExecStart names a real ncps-server binary.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !common::require_tool(
        "the_systemd_unit_passes_systemd_analyze_verify",
        "systemd-analyze",
    ) {
        return;
    }
    let text = read(&deploy().join("systemd/ncps.service"));
    let real = text.replace("/usr/local/bin/ncps-server", SERVER);
    assert_ne!(
        real, text,
        "ExecStart no longer names /usr/local/bin/ncps-server"
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret-key");
    std::fs::write(&secret, common::STATIC_SECRET_KEY).unwrap();
    let with_optional: String = real
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with("LoadCredential=") || rest.starts_with("Environment=") =>
            {
                rest.replace("/etc/ncps/secret-key", &secret.display().to_string())
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        with_optional, real,
        "the optional credential lines are gone"
    );
    for (name, unit) in [
        ("ncps.service", &real),
        ("ncps-credentials.service", &with_optional),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Warnings about the unit's own lines (unknown keys, bad values)
        // leave the exit code 0: any line naming the unit is a failure.
        let own: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
        assert!(
            out.status.success() && own.is_empty(),
            "systemd-analyze verify {name} ({}):\n{stderr}",
            out.status
        );
    }
}

/// What the NixOS module evaluates to, through a stub of nixpkgs' `lib` just
/// good enough for it (no nixpkgs here): its settings options, the service it
/// defines, and the config file it would write.
const NIXOS_EVAL: &str = r#"
{ module }:
let
  option = o: o // { _isOption = true; };
  lib = rec {
    mkOption = option;
    mkEnableOption = _: option { default = false; };
    mkIf = cond: value: if cond then value else { };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    optional = cond: value: if cond then [ value ] else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    filterAttrsRecursive = pred: attrs: builtins.listToAttrs (builtins.concatMap
      (name: let value = attrs.${name}; in
        if pred name value
        then [ { inherit name; value = if builtins.isAttrs value then filterAttrsRecursive pred value else value; } ]
        else [ ])
      (builtins.attrNames attrs));
    splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);
    last = list: builtins.elemAt list (builtins.length list - 1);
    toInt = builtins.fromJSON;
    types = {
      str = "str"; bool = "bool"; package = "package"; path = "path";
      nullOr = t: { nullOr = t; };
      listOf = t: { listOf = t; };
      submodule = m: { submodule = m; };
    };
  };
  store = "/nix/store/00000000000000000000000000000000";
  pkgs = {
    formats.yaml = { }: { type = "yaml"; generate = name: value: "${store}-${name}"; };
    callPackage = _: _: "${store}-ncps-rs";
  };
  isOption = v: builtins.isAttrs v && v ? _isOption;
  paths = prefix: opts: builtins.concatLists (map
    (name: let p = if prefix == "" then name else "${prefix}.${name}"; v = opts.${name}; in
      if isOption v then [ p ] else paths p v)
    (builtins.attrNames opts));
  defaults = opts: builtins.mapAttrs (_: v: if isOption v then v.default or null else defaults v) opts;
  evaluated = import module { inherit lib pkgs config; };
  settingsOptions = evaluated.options.services.ncps.settings.type.submodule.options;
  config = {
    networking.hostName = "nixos-host";
    services.ncps = {
      enable = true;
      package = "${store}-ncps-rs";
      settings = defaults settingsOptions;
      environmentFile = "/run/secrets/ncps.env";
      secretKeyFile = "/run/secrets/ncps-secret-key";
      netrcFile = "/run/secrets/netrc";
      openFirewall = true;
    };
  };
  service = evaluated.config.systemd.services.ncps;
in
{
  settingsPaths = paths "" settingsOptions;
  settings = lib.filterAttrsRecursive (_: v: v != null) config.services.ncps.settings;
  inherit (service) environment serviceConfig;
  firewall = evaluated.config.networking.firewall.allowedTCPPorts;
  assertions = map (a: a.assertion) evaluated.config.assertions;
}
"#;

/// Unit values as words, so `yes`/true and lists compare equal.
fn unit_words(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Bool(true) => vec!["yes".into()],
        serde_json::Value::Bool(false) => vec!["no".into()],
        serde_json::Value::Number(n) => vec![n.to_string()],
        serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        serde_json::Value::Array(items) => items.iter().flat_map(unit_words).collect(),
        _ => vec![value.to_string()],
    }
}

/// The NixOS module parses, evaluates, declares only config keys the binary
/// reads, runs the binary with known options and `--check-config` accepts
/// its config file, and hardens the service exactly as deploy/systemd does.
#[test]
fn the_nixos_module_writes_known_keys_and_hardens_like_the_unit() {
    let test = "the_nixos_module_writes_known_keys_and_hardens_like_the_unit";
    if !common::require_tool(test, "nix-instantiate") {
        return;
    }
    let bin = Binary::read();
    let module = deploy().join("nixos/module.nix");
    for file in [&module, &deploy().join("nixos/package.nix")] {
        let out = Command::new("nix-instantiate")
            .arg("--parse")
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nix-instantiate --parse {}: {}",
            shown(file),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let expr = dir.path().join("eval.nix");
    std::fs::write(&expr, NIXOS_EVAL).unwrap();
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(&expr)
        .arg("--arg")
        .arg("module")
        .arg(&module)
        .env("NIX_CONFIG", common::NIX_CONFIG)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "evaluating deploy/nixos/module.nix: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut problems = Vec::new();

    for path in eval["settingsPaths"].as_array().unwrap() {
        let path = path.as_str().unwrap();
        if !bin.keys.contains(path) {
            problems.push(format!(
                "deploy/nixos/module.nix: settings.{path} is not a config key of ncps-server"
            ));
        }
    }
    assert_eq!(eval["assertions"], serde_json::json!([true]));
    assert_eq!(eval["firewall"], serde_json::json!([8501]));

    // The config file the module writes, as the binary reads it.
    let config = dir.path().join("ncps.json");
    std::fs::write(&config, eval["settings"].to_string()).unwrap();
    check_config_file(&config, "deploy/nixos/module.nix: settings", &mut problems);

    let service = &eval["serviceConfig"];
    let exec = service["ExecStart"].as_str().unwrap();
    let mut words = exec.split_whitespace();
    assert!(
        words.next().unwrap().ends_with("/bin/ncps-server"),
        "{exec}"
    );
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    let at = args
        .iter()
        .position(|a| a == "--config")
        .expect("--config in ExecStart");
    args[at + 1] = config.display().to_string();
    let env: Vec<(String, String)> = eval["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect();
    let inv = Invocation {
        label: "deploy/nixos/module.nix: systemd.services.ncps".into(),
        args,
        env: env.clone(),
    };
    check_invocation(&bin, &inv, &mut problems);
    if bin.check_config {
        if let Err(e) = check_config_is_a_dry_run() {
            panic!("ncps-server --help lists --check-config, but it is not a dry run: {e}");
        }
        // The credentials are files only systemd makes; check the rest.
        let mut inv = inv;
        inv.env.clear();
        run_check_config(&inv, &mut problems);
    }
    assert_eq!(
        service["LoadCredential"],
        serde_json::json!([
            "secret-key:/run/secrets/ncps-secret-key",
            "netrc:/run/secrets/netrc"
        ])
    );
    for (var, credential) in [
        ("CACHE_SECRET_KEY_PATH", "secret-key"),
        ("NETRC_FILE", "netrc"),
    ] {
        assert_eq!(
            eval["environment"][var],
            serde_json::json!(format!("%d/{credential}")),
            "{var} must name the credential"
        );
    }

    // The same hardening and stop behaviour as deploy/systemd/ncps.service.
    let unit = unit_service_section(&read(&deploy().join("systemd/ncps.service")));
    let mut from_unit: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in unit {
        if matches!(k.as_str(), "ExecStart" | "EnvironmentFile" | "Environment") {
            continue;
        }
        from_unit
            .entry(k)
            .or_default()
            .extend(v.split_whitespace().map(str::to_owned));
    }
    let from_module: BTreeMap<String, Vec<String>> = service
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "ExecStart" | "EnvironmentFile" | "LoadCredential"
            )
        })
        .map(|(k, v)| (k.clone(), unit_words(v)))
        .collect();
    for (k, v) in &from_unit {
        match from_module.get(k) {
            Some(m) if m == v => {}
            other => problems.push(format!(
                "deploy/nixos/module.nix: serviceConfig.{k} is {other:?}, deploy/systemd/ncps.service has {v:?}"
            )),
        }
    }
    for k in from_module.keys() {
        if !from_unit.contains_key(k) {
            problems.push(format!(
                "deploy/systemd/ncps.service lacks {k}= that deploy/nixos/module.nix sets"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/nixos out of step:\n- {}",
        problems.join("\n- ")
    );
}
