//! The Helm chart (deploy/helm/ncps) rendered by the real `helm`: secrets
//! only ever come from Secrets (never in a ConfigMap, never as a plain value,
//! refused when put in `env`), each example values file renders the parts it
//! turns on, and the migration and fsck containers run commands the real
//! `ncps-cli` accepts: the rendered single-mode migrate and fsck are run with
//! their rendered environment, paths moved to a temporary directory.
//!
//! `helm lint` and the Kubernetes schema validation of the same renders are
//! in deploy/check.sh (tools from .ci/deploy-tools.sh).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

/// Variables whose values are secrets (`ncps-server serve --help` hides them
/// in `--check-config`); the database URL carries a password.
const SECRET_VARIABLES: &[&str] = &[
    "CACHE_DATABASE_URL",
    "CACHE_STORAGE_S3_SECRET_ACCESS_KEY",
    "CACHE_REDIS_PASSWORD",
    "CACHE_GET_TOKEN",
    "CACHE_PUT_TOKEN",
];

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/ncps")
}

/// `helm template ncps <chart> <args>`: the documents, or helm's stderr.
fn render(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new("helm")
        .arg("template")
        .arg("ncps")
        .arg(chart())
        .args(args)
        .output()
        .expect("running helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("helm printed YAML"))
        .filter(|d: &Value| !d.is_null())
        .collect())
}

fn values(file: &str) -> String {
    chart().join(file).display().to_string()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

/// Every container of a Deployment, Job or CronJob (init containers too),
/// with the object's kind.
fn containers(docs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for doc in docs {
        let pod = match kind(doc) {
            "Deployment" | "Job" => &doc["spec"]["template"]["spec"],
            "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_sequence().into_iter().flatten() {
                out.push((kind(doc).to_owned(), c.clone()));
            }
        }
    }
    out
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("?")
}

/// The example values files, and one with every Secret reference set.
fn renders() -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for file in ["values.yaml", "values-ha.yaml", "values-full.yaml"] {
        let docs = render(&["-f", &values(file)]).unwrap_or_else(|e| panic!("{file}: {e}"));
        out.push((file.to_owned(), docs));
    }
    let all_secrets = [
        "-f",
        &values("values-ha.yaml"),
        "--set",
        "auth.existingSecret=tokens,signingKey.existingSecret=key,fsck.enabled=true",
    ];
    out.push((
        "values-ha.yaml + every existingSecret".to_owned(),
        render(&all_secrets).unwrap(),
    ));
    out
}

#[test]
fn secrets_come_only_from_secrets() {
    if !common::require_tool("secrets_come_only_from_secrets", "helm") {
        return;
    }
    let mut problems = Vec::new();
    for (label, docs) in renders() {
        for doc in &docs {
            // The chart creates no Secret and puts nothing secret in a
            // ConfigMap (it makes none today; this keeps it so).
            match kind(doc) {
                "Secret" => problems.push(format!("{label}: renders a Secret")),
                "ConfigMap" => {
                    let text = serde_yaml::to_string(doc).unwrap();
                    for v in SECRET_VARIABLES
                        .iter()
                        .chain(&["CACHE_SECRET_KEY_PATH", "secret"])
                    {
                        if text.contains(v) {
                            problems.push(format!("{label}: ConfigMap holds {v}"));
                        }
                    }
                }
                _ => {}
            }
        }
        for (k, c) in containers(&docs) {
            for item in c["env"].as_sequence().into_iter().flatten() {
                let n = item["name"].as_str().unwrap_or("");
                if !SECRET_VARIABLES.contains(&n) {
                    continue;
                }
                let from_secret = item["valueFrom"]["secretKeyRef"]["name"].as_str().is_some();
                // Single mode's SQLite default is a path, not a secret.
                let sqlite = item["value"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("sqlite:"));
                if !from_secret && !sqlite {
                    problems.push(format!(
                        "{label}: {k} container {}: {n} is not from a secretKeyRef: {item:?}",
                        name(&c)
                    ));
                }
            }
            // The signing key is a file from a Secret volume.
            let key_path = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|i| i["name"].as_str() == Some("CACHE_SECRET_KEY_PATH"))
                .and_then(|i| i["value"].as_str().map(str::to_owned));
            if let Some(path) = key_path {
                let mounted = c["volumeMounts"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|m| {
                        m["name"].as_str() == Some("signing-key")
                            && path.starts_with(m["mountPath"].as_str().unwrap_or("-"))
                            && m["readOnly"].as_bool() == Some(true)
                    });
                if !mounted {
                    problems.push(format!(
                        "{label}: {k} container {}: CACHE_SECRET_KEY_PATH {path} is not on the read-only signing-key mount",
                        name(&c)
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn secrets_in_plain_env_are_refused() {
    if !common::require_tool("secrets_in_plain_env_are_refused", "helm") {
        return;
    }
    for set in [
        "env.CACHE_STORAGE_S3_SECRET_ACCESS_KEY=s3cret",
        "env.CACHE_REDIS_PASSWORD=s3cret",
        "env.CACHE_GET_TOKEN=s3cret",
        "env.CACHE_PUT_TOKEN=s3cret",
        "env.CACHE_DATABASE_URL=postgres://ncps:s3cret@db/ncps",
    ] {
        match render(&["--set", set]) {
            Ok(_) => panic!("--set {set} rendered"),
            Err(e) => assert!(
                e.contains("give it from a Secret") && !e.contains("s3cret"),
                "--set {set}: {e}"
            ),
        }
    }
    // A database URL without a password is no secret.
    render(&[
        "--set",
        "env.CACHE_DATABASE_URL=postgresql:///ncps?host=/run/postgresql",
    ])
    .unwrap();
    // ha without the shared backends is refused too.
    let e = render(&["--set", "mode=ha"]).unwrap_err();
    assert!(e.contains("mode ha needs CACHE_DATABASE_URL"), "{e}");
}

#[test]
fn each_example_renders_the_parts_it_turns_on() {
    if !common::require_tool("each_example_renders_the_parts_it_turns_on", "helm") {
        return;
    }
    let kinds =
        |docs: &[Value]| -> BTreeSet<String> { docs.iter().map(|d| kind(d).to_owned()).collect() };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    let r = renders();
    assert_eq!(
        kinds(&r[0].1),
        set(&["Deployment", "PersistentVolumeClaim", "Service"])
    );
    assert_eq!(
        kinds(&r[1].1),
        set(&[
            "CronJob",
            "Deployment",
            "Job",
            "PodDisruptionBudget",
            "Service",
            "ServiceMonitor"
        ])
    );
    assert_eq!(
        kinds(&r[2].1),
        set(&[
            "CronJob",
            "Deployment",
            "Ingress",
            "PersistentVolumeClaim",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ])
    );
    // Migration: an init container in single mode, a pre-install/upgrade
    // hook Job in ha mode, both `ncps-cli migrate`.
    let migrate = |docs: &[Value]| -> Vec<String> {
        containers(docs)
            .into_iter()
            .filter(|(_, c)| name(c) == "migrate")
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(migrate(&r[0].1), ["Deployment"]);
    assert_eq!(migrate(&r[1].1), ["Job"]);
    let job = r[1].1.iter().find(|d| kind(d) == "Job").unwrap();
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"].as_str(),
        Some("pre-install,pre-upgrade")
    );
    // Every pod non-root with a read-only root; the sidecar and init
    // container of values-full are there.
    for (label, docs) in &r {
        for (k, c) in containers(docs) {
            let sc = &c["securityContext"];
            assert_eq!(
                sc["runAsNonRoot"].as_bool(),
                Some(true),
                "{label}: {k} {}",
                name(&c)
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{label}: {k} {}",
                name(&c)
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{label}: {k} {}",
                name(&c)
            );
        }
    }
    let full: BTreeSet<String> = containers(&r[2].1)
        .iter()
        .map(|(k, c)| format!("{k}/{}", name(c)))
        .collect();
    for expected in [
        "Deployment/ncps",
        "Deployment/migrate",
        "Deployment/wait-for-upstream",
        "Deployment/log-shipper",
        "CronJob/fsck",
    ] {
        assert!(full.contains(expected), "{expected} not in {full:?}");
    }
}

/// The rendered single-mode migrate and fsck containers, run for real: their
/// command and arguments through the real `ncps-cli`, with their rendered
/// environment (the volume's path moved to a temporary directory).
#[test]
fn the_rendered_migrate_and_fsck_commands_run() {
    if !common::require_tool("the_rendered_migrate_and_fsck_commands_run", "helm") {
        return;
    }
    let docs = render(&[
        "--set",
        "fsck.enabled=true,fsck.repair=true,fsck.verifyContent=true",
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let cli = common::cli_binary();
    let mut ran = Vec::new();
    for (k, c) in containers(&docs) {
        if !matches!(name(&c), "migrate" | "fsck") {
            continue;
        }
        let argv: Vec<String> = c["command"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(c["args"].as_sequence().into_iter().flatten())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(argv[0], "/usr/local/bin/ncps-cli", "{k}: {argv:?}");
        let mut cmd = Command::new(cli);
        cmd.args(&argv[1..]).env_clear();
        for item in c["env"].as_sequence().into_iter().flatten() {
            let n = item["name"].as_str().unwrap();
            let v = item["value"]
                .as_str()
                .expect("single mode: plain values only");
            cmd.env(n, v.replace("/var/lib/ncps", &data));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{k} {} {argv:?}: {:?}\n{}{}",
            name(&c),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(format!("{k}/{}", name(&c)));
    }
    assert_eq!(ran, ["Deployment/migrate", "CronJob/fsck"]);
    assert!(dir.path().join("db/db.sqlite").is_file());
}
