//! The admin commands that work on a cache through the server's own
//! configuration (`stats`, `gc`, `pin`, `unpin`, `pins`, `fsck`,
//! `narinfo show`): they take every `ncps-server serve` option under the
//! same names, environment variables and config file keys, and open the
//! same database, storage and locks the server uses.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ncps_config::byte_size::{format_size, parse_size};
use ncps_config::options::ServeOptions;
use ncps_config::{Machine, Settings};
use ncps_core::eviction::{self, Backends, EvictionOptions, EvictionReport};
use ncps_core::fsck::{self, FsckOptions, FsckReport};
use ncps_core::{NarInfo, NarStorage, StorePathHash};
use serde_json::{Value, json};

/// What an admin command's exit code means (see README, "ncps-cli").
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Failed: the database, storage or lock backend failed.
    pub const FAILURE: u8 = 1;
    /// Invalid usage or configuration.
    pub const USAGE: u8 = 2;
    /// `fsck` found problems it left in place.
    pub const PROBLEMS: u8 = 3;
    /// `fsck --repair` found problems and repaired them all.
    pub const REPAIRED: u8 = 4;
    /// `gc`: another instance holds the eviction lock; nothing was done.
    pub const BUSY: u8 = 5;
    /// `narinfo show`, `unpin`: no such path.
    pub const NOT_FOUND: u8 = 6;
}

/// How a command ends when it does not succeed.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What to say on stderr.
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ncps_core::Error> for Failure {
    fn from(e: ncps_core::Error) -> Self {
        let code = match e {
            ncps_core::Error::InvalidInput(_) => exit::USAGE,
            _ => exit::FAILURE,
        };
        Failure::new(code, e.to_string())
    }
}

/// The server's options, as a command's flags.
#[derive(Debug, Args)]
pub struct Server {
    /// `ncps-server serve` options (storage, database, locks, ...).
    #[command(flatten, next_help_heading = "Server options (as ncps-server serve)")]
    pub options: ServeOptions,
}

/// The admin subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// What the cache holds: paths, NARs and bytes in storage, pins, hit
    /// ratios (counted by the servers), per upstream.
    Stats {
        #[command(flatten)]
        server: Server,
    },
    /// Evicts least recently used paths now, until storage is under the
    /// limit (pinned closures and recently used paths are kept).
    Gc {
        /// Only list what would go.
        #[arg(long)]
        dry_run: bool,
        /// The limit (default: --cache-max-size).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        #[command(flatten)]
        server: Server,
    },
    /// Pins store paths (and their closures) against eviction.
    Pin {
        /// Store paths (`/nix/store/<hash>-<name>`), base names or hashes.
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Unpins store paths.
    Unpin {
        /// Store paths, base names or hashes.
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Lists the pins.
    Pins {
        #[command(flatten)]
        server: Server,
    },
    /// Checks the database against storage: stored NARs are there with
    /// their size, narinfos have their NAR, storage has nothing unrecorded.
    Fsck {
        /// Also read every stored NAR and check its FileHash and NarHash.
        #[arg(long)]
        verify_content: bool,
        /// Remove what is broken, so it is fetched again from upstream.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Narinfo tools.
    Narinfo {
        #[command(subcommand)]
        command: NarinfoCommand,
    },
}

/// `ncps-cli narinfo` subcommands.
#[derive(Debug, Subcommand)]
pub enum NarinfoCommand {
    /// Shows a cached narinfo and what the cache knows of its NAR.
    Show {
        /// A store path, base name or hash.
        path: String,
        #[command(flatten)]
        server: Server,
    },
}

/// Runs `command`; `json` prints JSON for scripts instead of text.
pub fn run(command: AdminCommand, json: bool) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        match command {
            AdminCommand::Stats { server } => crate::stats::stats(&server.settings()?, json).await,
            AdminCommand::Gc {
                dry_run,
                max_size,
                server,
            } => gc(&server.settings()?, dry_run, max_size, json).await,
            AdminCommand::Pin { paths, server } => {
                pin(&server.settings()?, &paths, true, json).await
            }
            AdminCommand::Unpin { paths, server } => {
                pin(&server.settings()?, &paths, false, json).await
            }
            AdminCommand::Pins { server } => pins(&server.settings()?, json).await,
            AdminCommand::Fsck {
                verify_content,
                repair,
                server,
            } => fsck(&server.settings()?, verify_content, repair, json).await,
            AdminCommand::Narinfo {
                command: NarinfoCommand::Show { path, server },
            } => narinfo_show(&server.settings()?, &path, json).await,
        }
    })
}

impl Server {
    /// The server's settings, checked as the server checks them.
    fn settings(&self) -> Result<Settings, Failure> {
        Ok(Settings::from_options(&self.options, &Machine::detect())?)
    }
}

pub(crate) async fn open(settings: &Settings) -> Result<Backends, Failure> {
    ncps_config::open(settings).await.map_err(Failure::from)
}

/// A store path hash from a store path, base name or hash.
fn hash_of(path: &str) -> Result<StorePathHash, Failure> {
    let base = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path);
    let hash = base.get(..32).unwrap_or(base);
    hash.parse().map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!("{path:?} is not a store path, base name or hash: {e}"),
        )
    })
}

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A progress bar on stderr when it is a terminal (and not for `--json`).
fn progress_bar(len: u64, what: &str, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn eviction_json(report: &EvictionReport) -> Value {
    let evicted: Vec<Value> = report
        .evicted
        .iter()
        .map(|n| {
            json!({"file": n.file, "size": n.size, "lastUsed": n.last_accessed_at, "storePaths": n.store_paths})
        })
        .collect();
    json!({
        "ran": report.ran,
        "dryRun": report.dry_run,
        "maxSize": report.max_size,
        "bytesBefore": report.bytes_before,
        "bytesAfter": report.bytes_after,
        "freedBytes": report.freed_bytes(),
        "withinLimit": report.within_limit(),
        "skippedPinned": report.skipped_pinned,
        "skippedBusy": report.skipped_busy,
        "failed": report.failed,
        "stoppedAtRecent": report.stopped_at_recent,
        "evicted": evicted,
    })
}

async fn gc(
    settings: &Settings,
    dry_run: bool,
    max_size: Option<u64>,
    json: bool,
) -> Result<u8, Failure> {
    let Some(max_size) = max_size.or(settings.cache.max_size) else {
        return Err(Failure::new(
            exit::USAGE,
            "gc needs a limit: --max-size or --cache-max-size (CACHE_MAX_SIZE)",
        ));
    };
    let backends = open(settings).await?;
    let eviction_options = EvictionOptions {
        dry_run,
        ..settings.cache.eviction_options(max_size)
    };
    let usage = backends.db.storage_usage().await?;
    let bar = progress_bar(
        usage.stored_bytes.saturating_sub(max_size),
        if dry_run { "would evict" } else { "evicting" },
        json,
    );
    let report =
        eviction::evict_with_progress(&backends, &eviction_options, &|nar| bar.inc(nar.size))
            .await?;
    bar.finish_and_clear();
    if json {
        print_json(&eviction_json(&report));
    } else if !report.ran {
        println!("another instance is evicting now; nothing done");
    } else {
        for nar in &report.evicted {
            let paths = if nar.store_paths.is_empty() {
                format!("nar/{}", nar.file)
            } else {
                nar.store_paths.join(" ")
            };
            let verb = if dry_run { "would evict" } else { "evicted" };
            println!("{verb} {paths} ({})", format_size(nar.size));
        }
        println!(
            "{} NARs, {} {}; storage {} -> {} (limit {}){}",
            report.evicted.len(),
            format_size(report.freed_bytes()),
            if dry_run { "would be freed" } else { "freed" },
            format_size(report.bytes_before),
            format_size(report.bytes_after),
            format_size(max_size),
            if report.within_limit() {
                String::new()
            } else {
                format!(
                    "; still over the limit: {} pinned, {} in use, {} too recently used",
                    report.skipped_pinned,
                    report.skipped_busy,
                    if report.stopped_at_recent {
                        "the rest"
                    } else {
                        "none"
                    }
                )
            }
        );
    }
    Ok(if report.ran { exit::OK } else { exit::BUSY })
}

async fn pin(settings: &Settings, paths: &[String], pin: bool, json: bool) -> Result<u8, Failure> {
    let hashes = paths
        .iter()
        .map(|p| hash_of(p))
        .collect::<Result<Vec<_>, _>>()?;
    let backends = open(settings).await?;
    let db = backends.db.as_ref();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut results = Vec::new();
    let mut missing = false;
    for (path, hash) in paths.iter().zip(&hashes) {
        let cached = db.get_narinfo(hash.as_str()).await?.is_some();
        let changed = if pin {
            db.add_pin(hash.as_str(), now).await?
        } else {
            db.delete_pin(hash.as_str()).await?
        };
        if !pin && !changed {
            missing = true;
        }
        if !json {
            let what = match (pin, changed) {
                (true, true) => "pinned",
                (true, false) => "already pinned",
                (false, true) => "unpinned",
                (false, false) => "was not pinned",
            };
            let note = if pin && !cached {
                " (not cached yet: protected once it is)"
            } else {
                ""
            };
            println!("{what}: {path}{note}");
        }
        results.push(
            json!({"path": path, "hash": hash.as_str(), "changed": changed, "cached": cached}),
        );
    }
    if json {
        print_json(&Value::Array(results));
    }
    Ok(if missing { exit::NOT_FOUND } else { exit::OK })
}

async fn pins(settings: &Settings, json: bool) -> Result<u8, Failure> {
    let backends = open(settings).await?;
    let db = backends.db.as_ref();
    let mut list = Vec::new();
    for pin in db.list_pins().await? {
        let store_path = db.get_narinfo(&pin.hash).await?.and_then(|r| {
            r.narinfo
                .parse::<NarInfo>()
                .ok()
                .map(|i| i.store_path.to_string())
        });
        list.push((pin, store_path));
    }
    if json {
        let values: Vec<Value> = list
            .iter()
            .map(|(pin, path)| json!({"hash": pin.hash, "pinnedAt": pin.created_at, "storePath": path}))
            .collect();
        print_json(&Value::Array(values));
    } else {
        for (pin, path) in &list {
            match path {
                Some(path) => println!("{path}"),
                None => println!("{} (not cached)", pin.hash),
            }
        }
    }
    Ok(exit::OK)
}

fn fsck_json(report: &FsckReport) -> Value {
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| json!({"problem": f.problem.to_string(), "kind": kind(&f.problem), "repaired": f.repaired}))
        .collect();
    json!({
        "nars": report.nars,
        "narinfos": report.narinfos,
        "verified": report.verified,
        "objects": report.objects,
        "busy": report.busy,
        "problems": report.findings.len(),
        "unrepaired": report.unrepaired(),
        "findings": findings,
    })
}

fn kind(problem: &fsck::Problem) -> &'static str {
    match problem {
        fsck::Problem::MissingNar { .. } => "missing-nar",
        fsck::Problem::WrongSize { .. } => "wrong-size",
        fsck::Problem::Corrupt { .. } => "corrupt",
        fsck::Problem::LostUpload { .. } => "lost-upload",
        fsck::Problem::DanglingNarinfo { .. } => "dangling-narinfo",
        fsck::Problem::UnreadableNarinfo { .. } => "unreadable-narinfo",
        fsck::Problem::Orphan { .. } => "orphan",
    }
}

async fn fsck(
    settings: &Settings,
    verify_content: bool,
    repair: bool,
    json: bool,
) -> Result<u8, Failure> {
    let backends = open(settings).await?;
    let fsck_options = FsckOptions {
        verify_content,
        repair,
        download_lock_ttl: settings.cache.download_lock_ttl,
    };
    let bar = progress_bar(0, "checking", json);
    let report = fsck::fsck(&backends, &fsck_options, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    if json {
        print_json(&fsck_json(&report));
    } else {
        for finding in &report.findings {
            let state = if finding.repaired {
                "repaired"
            } else {
                "found"
            };
            println!("{state}: {}", finding.problem);
        }
        println!(
            "checked {} NAR records, {} narinfos{}{}; {} problems, {} left{}",
            report.nars,
            report.narinfos,
            if verify_content {
                format!(", verified {} NARs", report.verified)
            } else {
                String::new()
            },
            match report.objects {
                Some(n) => format!(", {n} objects in storage"),
                None => ", storage cannot list (no orphan check)".to_owned(),
            },
            report.findings.len(),
            report.unrepaired(),
            if report.busy > 0 {
                format!(
                    "; {} skipped while being downloaded or evicted",
                    report.busy
                )
            } else {
                String::new()
            }
        );
    }
    Ok(if report.findings.is_empty() {
        exit::OK
    } else if report.unrepaired() == 0 {
        exit::REPAIRED
    } else {
        exit::PROBLEMS
    })
}

async fn narinfo_show(settings: &Settings, path: &str, json: bool) -> Result<u8, Failure> {
    let hash = hash_of(path)?;
    let backends = open(settings).await?;
    let db = backends.db.as_ref();
    let Some(record) = db.get_narinfo(hash.as_str()).await? else {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("{hash}.narinfo is not cached"),
        ));
    };
    let nar = db.get_nar(&record.nar_file).await?;
    let storage = db.get_nar_storage(&record.nar_file).await?;
    let pinned = db
        .list_pins()
        .await?
        .iter()
        .any(|p| p.hash == hash.as_str());
    let stored = match storage {
        Some(NarStorage::Stored(size)) => Some(size),
        _ => None,
    };
    if json {
        print_json(&json!({
            "hash": record.hash,
            "narinfo": record.narinfo,
            "narFile": record.nar_file,
            "createdAt": record.created_at,
            "lastUsed": record.last_accessed_at.max(nar.as_ref().map_or(0, |n| n.last_accessed_at)),
            "storedSize": stored,
            "storageKnown": !matches!(storage, Some(NarStorage::Unknown)),
            "upstreamUrl": nar.as_ref().and_then(|n| n.upstream_url.clone()),
            "pinned": pinned,
        }));
        return Ok(exit::OK);
    }
    print!("{}", record.narinfo);
    println!("--");
    println!("NAR file:     nar/{}", record.nar_file);
    println!(
        "in storage:   {}",
        match storage {
            Some(NarStorage::Stored(size)) => format_size(size),
            Some(NarStorage::Absent) => "no (fetched on its next request)".to_owned(),
            Some(NarStorage::Unknown) => "not known yet".to_owned(),
            None => "no NAR record".to_owned(),
        }
    );
    match nar.as_ref().and_then(|n| n.upstream_url.as_deref()) {
        Some(url) => println!("from:         {url}"),
        None => println!("from:         an upload"),
    }
    println!(
        "cached at:    {} (seconds since the epoch)",
        record.created_at
    );
    println!(
        "last used:    {}",
        record
            .last_accessed_at
            .max(nar.as_ref().map_or(0, |n| n.last_accessed_at))
    );
    println!("pinned:       {}", if pinned { "yes" } else { "no" });
    Ok(exit::OK)
}

/// An exit code from a command's result, printing the failure.
pub fn finish(result: Result<u8, Failure>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("ncps-cli: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
