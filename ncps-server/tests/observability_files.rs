//! The Prometheus rules (deploy/prometheus/ncps-alerts.yaml, and the series
//! of their unit tests) and the Grafana dashboard (deploy/grafana) name only
//! metrics a running ncps-server exposes, with labels it puts on them.
//!
//! The real binary is started against an in-process upstream and driven
//! through misses, hits, an upstream error, concurrent requests for one NAR
//! and for one narinfo (lock waits) and its probes; then /metrics is scraped. Every `ncps_*`
//! name the files use must be a sample name of that scrape or of a family it
//! declares (`# TYPE`; a family whose labels were never seen has no
//! samples), and every label a selector or a test series puts on it must be
//! one of its labels. Names with a colon are recording rules, defined in the
//! rules file itself.
//!
//! `promtool check rules` / `promtool test rules` run the same files in
//! deploy/check.sh.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{Proxy, ProxyConfig};
use ncps_core::SigningKey;
use ncps_core::testkit::upstream::{Gate, TestUpstream, fixture};

fn deploy(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sample names of the exposition -> their label names; declared families
/// (name and type) from `# TYPE` lines.
struct Exposition {
    samples: BTreeMap<String, BTreeSet<String>>,
    families: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut families = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    families.insert(n.to_owned(), t.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = samples.entry(line[..end].to_owned()).or_default();
            if line[end..].starts_with('{') {
                let inner = &line[end + 1..line.find('}').unwrap_or(line.len())];
                for pair in inner.split(',') {
                    if let Some((k, _)) = pair.split_once('=') {
                        labels.insert(k.trim().to_owned());
                    }
                }
            }
        }
        Exposition { samples, families }
    }

    /// Whether `name` is a sample name here, or one a declared family has.
    fn knows(&self, name: &str) -> bool {
        if self.samples.contains_key(name) {
            return true;
        }
        self.families.iter().any(|(family, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().any(|s| format!("{family}{s}") == name)
        })
    }
}

/// Every `ncps_*` name in `text` with the label names of each selector it
/// has there (`name{a="..",b=~".."}`), and names with a colon (recording rules).
fn references(text: &str) -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut recorded = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while let Some(at) = text[i..].find("ncps") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        i = end.max(start + 4);
        if start > 0 && word(bytes[start - 1]) {
            continue;
        }
        let name = &text[start..end];
        if name.starts_with("ncps:") {
            recorded.insert(name.to_owned());
            continue;
        }
        if !name.starts_with("ncps_") {
            continue;
        }
        let labels = names.entry(name.to_owned()).or_default();
        if bytes.get(end) == Some(&b'{') {
            let close = text[end..].find('}').map(|c| end + c).unwrap_or(end);
            for m in text[end + 1..close].split(',') {
                let key: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !key.is_empty() {
                    labels.insert(key);
                }
            }
        }
    }
    (names, recorded)
}

/// Labels Prometheus itself adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

#[tokio::test(flavor = "multi_thread")]
async fn rules_and_dashboard_name_only_metrics_the_server_exposes() {
    // Traffic: misses and hits of narinfos and NARs, an upstream 500, two
    // clients at once for one NAR and for one narinfo held back by the
    // upstream (the second narinfo request waits for the first's lock), the
    // probes.
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("observability-up-1");
    let big = fixture("observability-big", 400_000, &key);
    let small = fixture("observability-small", 20_000, &key);
    big.publish(&upstream, &big.nar);
    small.publish(&upstream, &small.nar);
    let gate = Gate::new(1000);
    upstream.put_gated(&big.nar_path(), big.nar.clone(), &gate);
    let broken = fixture("observability-broken", 1_000, &key);
    upstream.put(
        &format!("/{}.narinfo", broken.hash()),
        http::StatusCode::INTERNAL_SERVER_ERROR,
        "boom",
    );
    // A narinfo the upstream holds back: two clients asking for it at once
    // wait on one narinfo lock.
    let slow = fixture("observability-slow", 1_000, &key);
    slow.publish(&upstream, &slow.nar);
    let slow_narinfo_path = format!("/{}.narinfo", slow.hash());
    let slow_narinfo = reqwest::get(format!("{}{slow_narinfo_path}", upstream.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let narinfo_gate = Gate::new(10);
    upstream.put_gated(&slow_narinfo_path, slow_narinfo, &narinfo_gate);
    let proxy = Proxy::start(ProxyConfig::new(
        upstream.url.clone(),
        &[&key.public_key().to_string()],
    ))
    .await;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{}{path}", proxy.url());
        async move {
            client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };
    for f in [&small, &big] {
        get(format!("/{}.narinfo", f.hash())).await;
        get(format!("/{}.narinfo", f.hash())).await;
    }
    get(format!("/{}.narinfo", broken.hash())).await;
    get(format!("/{}", small.nar_path().trim_start_matches('/'))).await;
    get(format!("/{}", small.nar_path().trim_start_matches('/'))).await;
    let big_nar = format!("/{}", big.nar_path().trim_start_matches('/'));
    let first = tokio::spawn(get(big_nar.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = tokio::spawn(get(big_nar.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    gate.open();
    assert_eq!(first.await.unwrap(), big.nar);
    assert_eq!(second.await.unwrap(), big.nar);
    let first = tokio::spawn(get(slow_narinfo_path.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = tokio::spawn(get(slow_narinfo_path.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    narinfo_gate.open();
    assert_eq!(first.await.unwrap(), second.await.unwrap());
    for path in ["/healthz", "/readyz", "/nix-cache-info", "/pubkey", "/nope"] {
        get(path.to_owned()).await;
    }
    let text = get("/metrics".to_owned()).await;
    let exposition = Exposition::parse(&String::from_utf8_lossy(&text));
    eprintln!(
        "/metrics sample names: {:?}",
        exposition.samples.keys().collect::<Vec<_>>()
    );

    let mut problems = Vec::new();
    let rules = deploy("prometheus/ncps-alerts.yaml");
    let (_, defined) = references(
        &rules
            .lines()
            .filter(|l| l.trim_start().starts_with("- record:"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    for (file, text) in [
        ("prometheus/ncps-alerts.yaml", rules.clone()),
        (
            "prometheus/ncps-alerts.test.yaml",
            deploy("prometheus/ncps-alerts.test.yaml"),
        ),
        (
            "grafana/ncps-dashboard.json",
            deploy("grafana/ncps-dashboard.json"),
        ),
    ] {
        let (names, recorded) = references(&text);
        assert!(names.len() >= 8, "{file}: only {names:?}");
        for (name, labels) in &names {
            if !exposition.knows(name) {
                problems.push(format!("{file}: {name} is not on /metrics"));
                continue;
            }
            // Labels can only be checked on a name with samples.
            let Some(have) = exposition.samples.get(name) else {
                continue;
            };
            for l in labels {
                if !have.contains(l) && !TARGET_LABELS.contains(&l.as_str()) && l != "le" {
                    problems.push(format!("{file}: {name} has no label {l} (it has {have:?})"));
                }
            }
        }
        for r in recorded {
            // `ncps:x:y` and its `{labels}` are the rule file's own.
            if !defined.contains(&r) {
                problems.push(format!(
                    "{file}: {r} is no recording rule of ncps-alerts.yaml"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The name scanner sees names with their selector labels, and not names
/// inside other words.
#[test]
fn references_finds_names_and_selector_labels() {
    let (names, recorded) = references(
        r#"sum by (job) (rate(ncps_http_requests_total{route!~"healthz",status=~"5.."}[5m])) / ncps:x:rate5m + xncps_no + ncps_store_nar_bytes"#,
    );
    assert_eq!(
        names.get("ncps_http_requests_total").unwrap(),
        &BTreeSet::from(["route".to_owned(), "status".to_owned()])
    );
    assert!(names.contains_key("ncps_store_nar_bytes"));
    assert_eq!(names.len(), 2);
    assert_eq!(recorded, BTreeSet::from(["ncps:x:rate5m".to_owned()]));
}
