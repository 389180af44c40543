//! `ncps-cli storage copy`: moves every NAR of a cache between a local
//! directory and an S3 bucket (either way, or bucket to bucket), resumably:
//! NARs already in the target with the same size are skipped.
//! `ncps-cli storage abort-uploads`: aborts the multipart uploads a killed
//! process left in a bucket.

use std::time::Duration;

use clap::{Args, Subcommand};
use ncps_core::Storage;
use ncps_store::{CopyOutcome, LocalStorage, ObjectInfo, S3Config, S3Proxy, S3Storage};
use serde_json::json;

/// The key prefix the cache keeps NARs under.
const NARS: &str = "nar";

/// `ncps-cli storage` subcommands.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copies every NAR from one storage to another, skipping NARs the target
    /// already has with the same size, and checking each copy's size. Safe to
    /// run again after an interruption; the metadata database is not touched.
    Copy {
        /// Where to copy from: a directory (`--cache-storage-local` of the
        /// server) or `s3://bucket[/prefix]`.
        #[arg(long)]
        from: String,
        /// Where to copy to: a directory or `s3://bucket[/prefix]`.
        #[arg(long)]
        to: String,
        /// NARs copied at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// How to reach S3 (for `s3://` locations).
        #[command(flatten)]
        s3: S3Options,
    },
    /// Aborts the unfinished multipart uploads under a bucket's key prefix
    /// (in a directory: removes dead processes' temporary files) that
    /// started at least `--older-than` ago: what a process killed
    /// mid-upload leaves, whose parts S3 bills until aborted. The server
    /// does this too, for uploads over a day old.
    AbortUploads {
        /// The storage: `s3://bucket[/prefix]` or a directory.
        #[arg(long)]
        at: String,
        /// Only uploads started at least this long ago (`30m`, `24h`); keep
        /// it far longer than any upload takes, as a running server's
        /// uploads in progress look the same.
        #[arg(long, default_value = "24h", value_parser = ncps_config::options::parse_duration)]
        older_than: Duration,
        /// Only list what would be aborted.
        #[arg(long)]
        dry_run: bool,
        /// How to reach S3 (for `s3://` locations).
        #[command(flatten)]
        s3: S3Options,
    },
}

/// The server's S3 connection options, under the same names and variables.
#[derive(Debug, Args)]
pub struct S3Options {
    /// S3 endpoint URL with its scheme, for S3-compatible servers (default: AWS S3).
    #[arg(long = "cache-storage-s3-endpoint", env = "CACHE_STORAGE_S3_ENDPOINT")]
    endpoint: Option<String>,
    /// S3 region (default: the AWS region settings, then us-east-1).
    #[arg(long = "cache-storage-s3-region", env = "CACHE_STORAGE_S3_REGION")]
    region: Option<String>,
    /// S3 access key id; without it the AWS default credential chain is used.
    #[arg(
        long = "cache-storage-s3-access-key-id",
        env = "CACHE_STORAGE_S3_ACCESS_KEY_ID"
    )]
    access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(
        long = "cache-storage-s3-secret-access-key",
        env = "CACHE_STORAGE_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    secret_access_key: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`.
    #[arg(
        long = "cache-storage-s3-force-path-style",
        env = "CACHE_STORAGE_S3_FORCE_PATH_STYLE",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    force_path_style: bool,
}

/// An opened storage of either kind.
enum Location {
    Local(LocalStorage),
    S3(S3Storage),
}

impl Location {
    /// Opens `spec`: `s3://bucket[/prefix]` or a directory.
    async fn open(spec: &str, s3: &S3Options) -> Result<Location, String> {
        let Some(rest) = spec.strip_prefix("s3://") else {
            let storage = LocalStorage::new(spec).map_err(|e| format!("{spec}: {e}"))?;
            return Ok(Location::Local(storage));
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, Some(prefix.to_owned())),
            None => (rest, None),
        };
        let config = S3Config {
            bucket: bucket.to_owned(),
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            force_path_style: s3.force_path_style,
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            prefix,
            proxy: S3Proxy::from_env(),
        };
        let storage = S3Storage::new(config)
            .await
            .map_err(|e| format!("{spec}: {e}"))?;
        Ok(Location::S3(storage))
    }

    /// Every NAR.
    async fn list_nars(&self) -> ncps_core::Result<Vec<ObjectInfo>> {
        match self {
            Location::Local(storage) => storage.list(NARS).await,
            Location::S3(storage) => storage.list(NARS).await,
        }
    }

    fn storage(&self) -> &dyn Storage {
        match self {
            Location::Local(storage) => storage,
            Location::S3(storage) => storage,
        }
    }
}

/// Runs a `storage` subcommand; `json` prints JSON for scripts.
pub fn run(command: StorageCommand, json: bool) -> Result<(), String> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    match command {
        StorageCommand::Copy { from, to, jobs, s3 } => {
            runtime.block_on(copy(&from, &to, jobs, &s3))
        }
        StorageCommand::AbortUploads {
            at,
            older_than,
            dry_run,
            s3,
        } => runtime.block_on(abort_uploads(&at, older_than, dry_run, json, &s3)),
    }
}

async fn abort_uploads(
    at: &str,
    older_than: Duration,
    dry_run: bool,
    json: bool,
    s3: &S3Options,
) -> Result<(), String> {
    let location = Location::open(at, s3).await?;
    let report = ncps_store::discard_incomplete(location.storage(), older_than, dry_run)
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    let describe = |i: &ncps_core::Incomplete| {
        json!({
            "key": i.key,
            "id": i.id,
            "age_secs": i.age.map(|a| a.as_secs()),
        })
    };
    if json {
        let value = json!({
            "dry_run": dry_run,
            "older_than_secs": older_than.as_secs(),
            "aborted": report.discarded.iter().map(describe).collect::<Vec<_>>(),
            "kept": report.kept.len(),
            "failed": report.failed.iter().map(|(i, e)| {
                let mut value = describe(i);
                value["error"] = json!(e.to_string());
                value
            }).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        let verb = if dry_run { "would abort" } else { "aborted" };
        for i in &report.discarded {
            let what = i.key.as_deref().unwrap_or(&i.id);
            match i.age {
                Some(age) => println!("{verb} {what} (started {}s ago)", age.as_secs()),
                None => println!("{verb} {what}"),
            }
        }
        for (i, e) in &report.failed {
            eprintln!("failed {}: {e}", i.key.as_deref().unwrap_or(&i.id));
        }
        println!(
            "{verb} {} unfinished uploads in {at}, kept {} younger than {}s, {} failed",
            report.discarded.len(),
            report.kept.len(),
            older_than.as_secs(),
            report.failed.len()
        );
    }
    if !report.failed.is_empty() {
        return Err(format!(
            "{} unfinished uploads could not be aborted; run again to retry them",
            report.failed.len()
        ));
    }
    Ok(())
}

async fn copy(from: &str, to: &str, jobs: usize, s3: &S3Options) -> Result<(), String> {
    let source = Location::open(from, s3).await?;
    let target = Location::open(to, s3).await?;
    let nars = source
        .list_nars()
        .await
        .map_err(|e| format!("{from}: {e}"))?;
    println!("{} NARs in {from}", nars.len());
    let report = |object: &ObjectInfo, outcome: &CopyOutcome| match outcome {
        CopyOutcome::Copied(bytes) => println!("copied {} ({bytes} bytes)", object.key),
        CopyOutcome::Skipped => {}
        CopyOutcome::Failed(e) => eprintln!("failed {}: {e}", object.key),
    };
    let stats =
        ncps_store::copy_objects(source.storage(), target.storage(), nars, jobs, &report).await;
    println!(
        "copied {} NARs ({} bytes), skipped {} already in {to}, {} failed",
        stats.copied, stats.bytes, stats.skipped, stats.failed
    );
    if stats.failed > 0 {
        return Err(format!(
            "{} NARs failed to copy; run again to retry them",
            stats.failed
        ));
    }
    Ok(())
}
