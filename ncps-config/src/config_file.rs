//! The config file (`--config`, YAML, TOML or JSON with ncps's keys): its
//! keys, the environment variables of their options, and reading it into
//! values by variable (which [`crate::command_line`] makes the defaults of
//! those options).

use std::ffi::OsString;
use std::path::Path;

use serde_json::Value;

/// Config keys and the environment variables of their options.
pub const KEYS: &[(&str, &str)] = &[
    ("server.addr", "SERVER_ADDR"),
    ("cache.hostname", "CACHE_HOSTNAME"),
    ("cache.storage.local", "CACHE_STORAGE_LOCAL"),
    ("cache.storage.s3.bucket", "CACHE_STORAGE_S3_BUCKET"),
    ("cache.storage.s3.endpoint", "CACHE_STORAGE_S3_ENDPOINT"),
    ("cache.storage.s3.region", "CACHE_STORAGE_S3_REGION"),
    (
        "cache.storage.s3.access-key-id",
        "CACHE_STORAGE_S3_ACCESS_KEY_ID",
    ),
    (
        "cache.storage.s3.secret-access-key",
        "CACHE_STORAGE_S3_SECRET_ACCESS_KEY",
    ),
    (
        "cache.storage.s3.force-path-style",
        "CACHE_STORAGE_S3_FORCE_PATH_STYLE",
    ),
    ("cache.storage.s3.prefix", "CACHE_STORAGE_S3_PREFIX"),
    ("cache.database-url", "CACHE_DATABASE_URL"),
    (
        "cache.database.pool.max-open-conns",
        "CACHE_DATABASE_POOL_MAX_OPEN_CONNS",
    ),
    ("cache.upstream.urls", "CACHE_UPSTREAM_URLS"),
    ("cache.upstream.public-keys", "CACHE_UPSTREAM_PUBLIC_KEYS"),
    (
        "cache.upstream.dialer-timeout",
        "CACHE_UPSTREAM_DIALER_TIMEOUT",
    ),
    (
        "cache.upstream.response-header-timeout",
        "CACHE_UPSTREAM_RESPONSE_HEADER_TIMEOUT",
    ),
    ("cache.upstream.read-timeout", "CACHE_UPSTREAM_READ_TIMEOUT"),
    ("cache.secret-key-path", "CACHE_SECRET_KEY_PATH"),
    ("cache.netrc-file", "NETRC_FILE"),
    ("cache.sign-narinfo", "CACHE_SIGN_NARINFO"),
    ("cache.lock.download-lock-ttl", "CACHE_LOCK_DOWNLOAD_TTL"),
    ("cache.lock.backend", "CACHE_LOCK_BACKEND"),
    ("cache.lock.redis.key-prefix", "CACHE_LOCK_REDIS_KEY_PREFIX"),
    (
        "cache.lock.retry.max-attempts",
        "CACHE_LOCK_RETRY_MAX_ATTEMPTS",
    ),
    (
        "cache.lock.retry.initial-delay",
        "CACHE_LOCK_RETRY_INITIAL_DELAY",
    ),
    ("cache.lock.retry.max-delay", "CACHE_LOCK_RETRY_MAX_DELAY"),
    ("cache.lock.retry.jitter", "CACHE_LOCK_RETRY_JITTER"),
    (
        "cache.lock.allow-degraded-mode",
        "CACHE_LOCK_ALLOW_DEGRADED_MODE",
    ),
    ("cache.redis.addrs", "CACHE_REDIS_ADDRS"),
    ("cache.redis.username", "CACHE_REDIS_USERNAME"),
    ("cache.redis.password", "CACHE_REDIS_PASSWORD"),
    ("cache.redis.db", "CACHE_REDIS_DB"),
    ("cache.redis.use-tls", "CACHE_REDIS_USE_TLS"),
    ("cache.redis.pool-size", "CACHE_REDIS_POOL_SIZE"),
    ("cache.negative-narinfo-ttl", "CACHE_NEGATIVE_NARINFO_TTL"),
    ("cache.max-size", "CACHE_MAX_SIZE"),
    ("cache.lru.schedule", "CACHE_LRU_SCHEDULE"),
    ("cache.lru.schedule-timezone", "CACHE_LRU_SCHEDULE_TZ"),
    ("cache.lru.min-age", "CACHE_LRU_MIN_AGE"),
    ("cache.lock.lru-lock-ttl", "CACHE_LOCK_LRU_TTL"),
    ("cache.allow-put-verb", "CACHE_ALLOW_PUT_VERB"),
    ("cache.allow-delete-verb", "CACHE_ALLOW_DELETE_VERB"),
    ("cache.get-token", "CACHE_GET_TOKEN"),
    ("cache.put-token", "CACHE_PUT_TOKEN"),
    (
        "cache.require-trusted-signature",
        "CACHE_REQUIRE_TRUSTED_SIGNATURE",
    ),
    ("cache.trusted-upload-keys", "CACHE_TRUSTED_UPLOAD_KEYS"),
    ("cache.temp-path", "CACHE_TEMP_PATH"),
    ("cache.advertise-url", "CACHE_ADVERTISE_URL"),
    ("log.level", "LOG_LEVEL"),
    ("log.format", "LOG_FORMAT"),
    ("prometheus.enabled", "PROMETHEUS_ENABLED"),
    ("opentelemetry.enabled", "OTEL_ENABLED"),
    ("opentelemetry.grpc-url", "OTEL_GRPC_URL"),
];

/// Finds `--config` (or `NCPS_CONFIG_FILE`) before the command line is parsed.
pub fn path_from_args(args: &[OsString]) -> Option<OsString> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let s = arg.to_string_lossy();
        if s == "--config" {
            return iter.next().cloned();
        }
        if let Some(path) = s.strip_prefix("--config=") {
            return Some(path.into());
        }
    }
    std::env::var_os("NCPS_CONFIG_FILE")
}

/// What a config file says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigValues {
    /// (environment variable, value) of each known key.
    pub values: Vec<(&'static str, String)>,
    /// Keys this server does not know, to warn about.
    pub unknown_keys: Vec<String>,
}

/// Reads a config file.
pub fn read(path: &Path) -> Result<ConfigValues, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {shown}: {e}"))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    parse(&text, ext).map_err(|e| format!("--config {shown}: {e}"))
}

/// Parses the text of a config file whose name ends in `.<ext>` (`yaml`,
/// `yml`, `toml` or `json`); no I/O, so it can be fuzzed.
pub fn parse(text: &str, ext: &str) -> Result<ConfigValues, String> {
    let value: Value = match ext {
        "json" => serde_json::from_str(text).map_err(|e| e.to_string())?,
        "toml" => toml::from_str(text).map_err(|e| e.to_string())?,
        "yaml" | "yml" => serde_yaml::from_str(text).map_err(|e| e.to_string())?,
        _ => return Err("name it .yaml, .yml, .toml or .json".into()),
    };
    let mut flat = Vec::new();
    flatten("", &value, &mut flat)?;
    let mut config = ConfigValues::default();
    for (key, value) in flat {
        match KEYS.iter().find(|(k, _)| *k == key) {
            Some((_, env)) => config.values.push((*env, value)),
            None => config.unknown_keys.push(key),
        }
    }
    Ok(config)
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) -> Result<(), String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("{prefix}: unexpected value {other}")),
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        Value::Array(items) => {
            let items = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            out.push((prefix.to_owned(), items.join(",")));
        }
        Value::Null => {}
        other => out.push((prefix.to_owned(), scalar(other)?)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_three_formats_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (
                "c.yaml",
                "server:\n  addr: 127.0.0.1:9\ncache:\n  upstream:\n    urls: [http://a, http://b]\n  lru:\n    frobnicate: x\n",
            ),
            (
                "c.toml",
                "[server]\naddr = \"127.0.0.1:9\"\n[cache.upstream]\nurls = [\"http://a\", \"http://b\"]\n[cache.lru]\nfrobnicate = \"x\"\n",
            ),
            (
                "c.json",
                r#"{"server":{"addr":"127.0.0.1:9"},"cache":{"upstream":{"urls":["http://a","http://b"]},"lru":{"frobnicate":"x"}}}"#,
            ),
        ];
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let ConfigValues {
                values: mut known,
                unknown_keys: unknown,
            } = read(&path).unwrap();
            known.sort();
            assert_eq!(
                known,
                vec![
                    ("CACHE_UPSTREAM_URLS", "http://a,http://b".to_string()),
                    ("SERVER_ADDR", "127.0.0.1:9".to_string())
                ],
                "{name}"
            );
            assert_eq!(unknown, vec!["cache.lru.frobnicate".to_string()], "{name}");
        }
    }

    #[test]
    fn a_broken_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "server: [").unwrap();
        assert!(read(&path).unwrap_err().contains("c.yaml"));
        assert!(
            read(&dir.path().join("missing.toml"))
                .unwrap_err()
                .contains("missing.toml")
        );
    }

    #[test]
    fn finds_the_config_flag() {
        let args: Vec<OsString> = ["x", "serve", "--config=/a.yaml"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(path_from_args(&args), Some("/a.yaml".into()));
        let args: Vec<OsString> = ["x", "--config", "/b.toml"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(path_from_args(&args), Some("/b.toml".into()));
    }
}
