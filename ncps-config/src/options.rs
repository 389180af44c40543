//! The options of `ncps-server serve` as clap flattens them into a command
//! line: ncps's option names, environment variables, defaults and help text.
//! `ncps-server` takes them under `serve` and the admin commands of
//! `ncps-cli` take them too, so both read one configuration the same way.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// cache.nixos.org, the upstream used when none is configured.
pub const DEFAULT_UPSTREAM: &str = "https://cache.nixos.org";
/// cache.nixos.org's public key.
pub const DEFAULT_UPSTREAM_KEY: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// Options of every subcommand.
#[derive(Debug, Args)]
pub struct GlobalOptions {
    /// A config file (YAML, TOML or JSON) with ncps's keys; flags and environment win over it.
    #[arg(long, env = "NCPS_CONFIG_FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log format: `text` (one readable line per event, coloured only on a
    /// terminal) or `json` (one JSON object per line).
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Export traces over OTLP/gRPC (OpenTelemetry); needs a build with the
    /// `otel` cargo feature.
    #[arg(long, env = "OTEL_ENABLED", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set, global = true)]
    pub otel_enabled: bool,
    /// The OTLP/gRPC collector URL (default: `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// else `http://localhost:4317`).
    #[arg(long, env = "OTEL_GRPC_URL", global = true)]
    pub otel_grpc_url: Option<String>,
    /// Check the options (flags, environment, config file) and print the
    /// effective settings with secrets hidden, then exit: 0 when valid, 2 when
    /// not. Connects to nothing (database, S3, Redis and upstreams are not
    /// contacted) and creates nothing.
    #[arg(long, global = true)]
    pub check_config: bool,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeOptions {
    /// Address to listen on; `:8501` means every interface.
    #[arg(long, env = "SERVER_ADDR", default_value = ":8501")]
    pub server_addr: String,

    /// The cache's name; its generated signing key is named `<hostname>-1`.
    #[arg(long, env = "CACHE_HOSTNAME")]
    pub cache_hostname: Option<String>,

    /// Directory to keep NARs (and by default the SQLite database) in.
    #[arg(long, env = "CACHE_STORAGE_LOCAL")]
    pub cache_storage_local: Option<PathBuf>,

    /// S3 bucket to keep NARs in instead of a local directory.
    #[arg(long, env = "CACHE_STORAGE_S3_BUCKET")]
    pub cache_storage_s3_bucket: Option<String>,

    /// S3 endpoint URL with its scheme, for S3-compatible servers (default: AWS S3).
    #[arg(long, env = "CACHE_STORAGE_S3_ENDPOINT")]
    pub cache_storage_s3_endpoint: Option<String>,

    /// S3 region (default: the AWS region settings, then us-east-1).
    #[arg(long, env = "CACHE_STORAGE_S3_REGION")]
    pub cache_storage_s3_region: Option<String>,

    /// S3 access key id; without it the AWS default credential chain is used
    /// (environment, profile, web identity, container or instance role).
    #[arg(long, env = "CACHE_STORAGE_S3_ACCESS_KEY_ID")]
    pub cache_storage_s3_access_key_id: Option<String>,

    /// S3 secret access key, with `--cache-storage-s3-access-key-id`.
    #[arg(
        long,
        env = "CACHE_STORAGE_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub cache_storage_s3_secret_access_key: Option<Secret>,

    /// Address the S3 bucket as `endpoint/bucket` instead of `bucket.endpoint`
    /// (most self-hosted S3 servers need this).
    #[arg(long, env = "CACHE_STORAGE_S3_FORCE_PATH_STYLE", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_storage_s3_force_path_style: bool,

    /// Key prefix in the S3 bucket, so several caches can share one bucket
    /// (an ncps-rs addition).
    #[arg(long, env = "CACHE_STORAGE_S3_PREFIX")]
    pub cache_storage_s3_prefix: Option<String>,

    /// Metadata database: `sqlite:/path/db.sqlite`, `postgres://` or
    /// `postgresql://`, `mysql://` (Unix sockets: `postgresql:///db?host=/run/postgresql`,
    /// `mysql://user:pass@/db?socket=/run/mysqld/mysqld.sock`). TLS:
    /// PostgreSQL's libpq `sslmode` (`disable`, `allow`, `prefer` by default,
    /// `require`, `verify-ca`, `verify-full`) with `sslrootcert=/path/ca.pem`;
    /// MySQL's `tls=true`, `skip-verify`, `preferred` or `false` (default)
    /// with `ssl-ca=/path/ca.pem`; without a CA file the system's roots (or
    /// `SSL_CERT_FILE`) are trusted. See the README's Database section.
    #[arg(long, env = "CACHE_DATABASE_URL")]
    pub cache_database_url: Option<String>,

    /// Most connections open at once to PostgreSQL or MySQL; 0 means the
    /// default (25). SQLite always uses one.
    #[arg(long, env = "CACHE_DATABASE_POOL_MAX_OPEN_CONNS", default_value_t = 0)]
    pub cache_database_pool_max_open_conns: usize,

    /// An upstream cache URL (repeatable); `?priority=N` sets its priority,
    /// `?public-key=name:base64` binds a key to it.
    #[arg(
        long = "cache-upstream-url",
        env = "CACHE_UPSTREAM_URLS",
        value_delimiter = ','
    )]
    pub cache_upstream_urls: Vec<String>,

    /// An upstream public key `name:base64` (repeatable): with one upstream
    /// all keys are its; with several, the n-th key is the n-th upstream's.
    #[arg(
        long = "cache-upstream-public-key",
        env = "CACHE_UPSTREAM_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub cache_upstream_public_keys: Vec<String>,

    /// A netrc file with logins for private upstreams (default: `~/.netrc` if it exists).
    #[arg(long, env = "NETRC_FILE")]
    pub netrc_file: Option<PathBuf>,

    /// How long connecting to an upstream may take.
    #[arg(long, env = "CACHE_UPSTREAM_DIALER_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub cache_upstream_dialer_timeout: Duration,

    /// How long an upstream may take to send response headers.
    #[arg(long, env = "CACHE_UPSTREAM_RESPONSE_HEADER_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub cache_upstream_response_header_timeout: Duration,

    /// How long an upstream may send nothing while a body is coming (an
    /// ncps-rs addition): a stalled download fails after this, not never.
    #[arg(long, env = "CACHE_UPSTREAM_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub cache_upstream_read_timeout: Duration,

    /// The cache's secret key file (from `nix-store --generate-binary-cache-key`);
    /// without it a key is generated at first start and kept in the database.
    #[arg(long, env = "CACHE_SECRET_KEY_PATH")]
    pub cache_secret_key_path: Option<PathBuf>,

    /// Whether served narinfos carry the cache's signature.
    #[arg(long, env = "CACHE_SIGN_NARINFO", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_sign_narinfo: bool,

    /// The most bytes of NARs to keep, with a unit: B, K, M, G or T (powers
    /// of 1024; `10G`, `500M`). Least recently used paths are evicted on
    /// `--cache-lru-schedule` (hourly when not given). Unlimited when unset.
    #[arg(long, env = "CACHE_MAX_SIZE", value_parser = crate::byte_size::parse_size)]
    pub cache_max_size: Option<u64>,

    /// When eviction runs: a cron spec (`0 2 * * *`; 5 fields, or 6 with
    /// seconds first; `@hourly`, `@daily`; `@every 30m`). Needs `--cache-max-size`.
    #[arg(long, env = "CACHE_LRU_SCHEDULE")]
    pub cache_lru_schedule: Option<String>,

    /// The time zone of `--cache-lru-schedule`: `Local` (the machine's) or `UTC`.
    #[arg(long, env = "CACHE_LRU_SCHEDULE_TZ", default_value = "Local")]
    pub cache_lru_schedule_timezone: String,

    /// Paths used more recently than this are never evicted, even over
    /// `--cache-max-size` (an ncps-rs addition): a client of another
    /// instance may be reading them. 0 turns this off.
    #[arg(long, env = "CACHE_LRU_MIN_AGE", default_value = "5m", value_parser = parse_duration)]
    pub cache_lru_min_age: Duration,

    /// How long one instance may hold the eviction lock without extending
    /// it; the holder extends it while it runs.
    #[arg(long, env = "CACHE_LOCK_LRU_TTL", default_value = "30m", value_parser = parse_duration)]
    pub cache_lock_lru_ttl: Duration,

    /// Accept uploads: `PUT /upload/<hash>.narinfo` and `PUT /upload/nar/...`
    /// (`nix copy --to http://<cache>/upload`).
    #[arg(long, env = "CACHE_ALLOW_PUT_VERB", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_allow_put_verb: bool,

    /// Accept `DELETE /<hash>.narinfo` and `DELETE /nar/...`.
    #[arg(long, env = "CACHE_ALLOW_DELETE_VERB", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_allow_delete_verb: bool,

    /// A token every read needs (`Authorization: Bearer <token>`, or basic
    /// auth with the token as password, as Nix sends from a netrc file).
    /// `/healthz`, `/readyz` and `/metrics` stay open. Empty: reads are open.
    #[arg(long, env = "CACHE_GET_TOKEN", hide_env_values = true)]
    pub cache_get_token: Option<Secret>,

    /// A token uploads, deletes and pins need (an ncps-rs addition); without
    /// it they need `--cache-get-token` when that is set, else nothing.
    #[arg(long, env = "CACHE_PUT_TOKEN", hide_env_values = true)]
    pub cache_put_token: Option<Secret>,

    /// Refuse (403) uploaded narinfos without a signature by a
    /// `--cache-trusted-upload-key`.
    #[arg(long, env = "CACHE_REQUIRE_TRUSTED_SIGNATURE", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_require_trusted_signature: bool,

    /// A public key `name:base64` whose signatures make uploads trusted (repeatable).
    #[arg(
        long = "cache-trusted-upload-key",
        env = "CACHE_TRUSTED_UPLOAD_KEYS",
        value_delimiter = ','
    )]
    pub cache_trusted_upload_keys: Vec<String>,

    /// How long a narinfo that no upstream has is answered 404 without asking
    /// the upstreams again; 0 turns this off.
    #[arg(long, env = "CACHE_NEGATIVE_NARINFO_TTL", default_value = "5m", value_parser = parse_duration)]
    pub cache_negative_narinfo_ttl: Duration,

    /// How long one instance may hold a download lock without extending it;
    /// the holder extends it while the download runs, so this is how soon the
    /// others take over from an instance that died.
    #[arg(long, env = "CACHE_LOCK_DOWNLOAD_TTL", default_value = "5m", value_parser = parse_duration)]
    pub cache_lock_download_ttl: Duration,

    /// Where download locks live: `local` (this process only) or `redis`
    /// (shared by every instance). Default: `redis` when
    /// `--cache-redis-addrs` is set, else `local`.
    #[arg(long, env = "CACHE_LOCK_BACKEND", value_enum)]
    pub cache_lock_backend: Option<LockBackend>,

    /// Prefix of every lock key in Redis, so several caches can share one Redis.
    #[arg(
        long,
        env = "CACHE_LOCK_REDIS_KEY_PREFIX",
        default_value = "ncps:lock:"
    )]
    pub cache_lock_redis_key_prefix: String,

    /// How many times a failing call to the lock server is tried in all.
    #[arg(long, env = "CACHE_LOCK_RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub cache_lock_retry_max_attempts: u32,

    /// The first delay between tries, doubling up to `--cache-lock-retry-max-delay`;
    /// also how often a waiting instance first asks again for a held lock.
    #[arg(long, env = "CACHE_LOCK_RETRY_INITIAL_DELAY", default_value = "100ms", value_parser = parse_duration)]
    pub cache_lock_retry_initial_delay: Duration,

    /// The longest delay between tries.
    #[arg(long, env = "CACHE_LOCK_RETRY_MAX_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub cache_lock_retry_max_delay: Duration,

    /// Whether the delays are randomised, so instances do not retry in step.
    #[arg(long, env = "CACHE_LOCK_RETRY_JITTER", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_lock_retry_jitter: bool,

    /// While Redis is unavailable, lock within this instance only instead of
    /// answering 503 (instances may then download the same NAR twice).
    #[arg(long, env = "CACHE_LOCK_ALLOW_DEGRADED_MODE", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_lock_allow_degraded_mode: bool,

    /// Redis addresses `host:port`, comma-separated: one server, or the seed
    /// nodes of one Redis Cluster (`rediss://host:port` also works, and means
    /// TLS). Setting them makes `redis` the default `--cache-lock-backend`.
    #[arg(long, env = "CACHE_REDIS_ADDRS", value_delimiter = ',')]
    pub cache_redis_addrs: Vec<String>,

    /// Redis ACL user name.
    #[arg(long, env = "CACHE_REDIS_USERNAME")]
    pub cache_redis_username: Option<String>,

    /// Redis password.
    #[arg(long, env = "CACHE_REDIS_PASSWORD", hide_env_values = true)]
    pub cache_redis_password: Option<Secret>,

    /// Redis database number (0 with a Redis Cluster).
    #[arg(long, env = "CACHE_REDIS_DB", default_value_t = 0)]
    pub cache_redis_db: i64,

    /// Talk TLS to Redis, checking its certificate against the system's root certificates (or the PEM file SSL_CERT_FILE names).
    #[arg(long, env = "CACHE_REDIS_USE_TLS", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_redis_use_tls: bool,

    /// Most connections open to Redis at once.
    #[arg(long, env = "CACHE_REDIS_POOL_SIZE", default_value_t = 10)]
    pub cache_redis_pool_size: usize,

    /// Directory for downloads in progress (default: the OS temp dir). Files
    /// there are unlinked at once, so a crash leaves nothing behind.
    #[arg(long, env = "CACHE_TEMP_PATH")]
    pub cache_temp_path: Option<PathBuf>,

    /// This instance's URL as its peers reach it (high availability, an
    /// ncps-rs addition): a replica asked for a NAR this instance is
    /// downloading streams it from here instead of waiting for the download.
    #[arg(long, env = "CACHE_ADVERTISE_URL")]
    pub cache_advertise_url: Option<String>,

    /// Serve Prometheus metrics on `/metrics` (off: `/metrics` answers 404).
    #[arg(long, env = "PROMETHEUS_ENABLED", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub prometheus_enabled: bool,
}

/// `--cache-lock-backend`: where download locks live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LockBackend {
    /// In this process only: for a single instance.
    Local,
    /// In Redis, shared by every instance.
    Redis,
}

/// A secret option value (a password or key): `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for handing to the library that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Parses Go-style durations such as `3s`, `5m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 3s, 5m or 1h: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_style() {
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
    }
}
