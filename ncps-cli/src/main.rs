//! `ncps-cli`: admin commands for an ncps-rs cache.

// The admin commands await deep futures (database, storage and lock
// backends behind trait objects); the default limit is too low for them.
#![recursion_limit = "256"]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ncps_core::{NarInfo, PublicKey, SigningKey};

mod admin;
mod db;
mod stats;
mod storage;

/// Admin commands for an ncps-rs cache.
///
/// `stats`, `gc`, `pin`, `unpin`, `pins`, `fsck` and `narinfo show` read the
/// server's configuration: its options, environment variables and config
/// file (`--config`), so they open the database, storage and locks the
/// server uses. Exit codes: 0 done, 1 failed, 2 invalid usage or
/// configuration, 3 fsck found problems it left, 4 fsck repaired every
/// problem it found, 5 gc found another instance evicting, 6 not found.
#[derive(Debug, Parser)]
#[command(name = "ncps-cli", version)]
struct Cli {
    /// The server's config file (YAML, TOML or JSON with ncps's keys); flags
    /// and environment win over it.
    #[arg(long, env = "NCPS_CONFIG_FILE", global = true)]
    config: Option<PathBuf>,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generates a signing key pair, as `nix-store --generate-binary-cache-key` does.
    #[command(visible_alias = "keygen")]
    GenerateKey {
        /// The key's name, by convention `<hostname>-1`.
        name: String,
        /// Where to write the secret key (mode 0600).
        secret_key_file: PathBuf,
        /// Where to write the public key.
        public_key_file: PathBuf,
    },
    /// Checks a narinfo file: parses it, prints its fingerprint, and verifies its signatures.
    VerifyNarinfo {
        /// The narinfo file.
        file: PathBuf,
        /// A trusted public key `name:base64` (repeatable).
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
    },
    /// Migrates a metadata database to the current schema (the server also does at start).
    Migrate {
        /// The database: `sqlite:/path/db.sqlite`, `postgres://...` or `mysql://...`.
        #[arg(long, visible_alias = "cache-database-url", env = "CACHE_DATABASE_URL")]
        database_url: String,
    },
    /// Metadata database tools.
    Db {
        #[command(subcommand)]
        command: db::DbCommand,
    },
    /// NAR storage tools.
    Storage {
        #[command(subcommand)]
        command: storage::StorageCommand,
    },
    #[command(flatten)]
    Admin(Box<admin::AdminCommand>),
}

fn run(cli: Cli) -> Result<(), String> {
    let json = cli.json;
    match cli.command {
        Command::GenerateKey {
            name,
            secret_key_file,
            public_key_file,
        } => {
            let key = SigningKey::generate(&name);
            write_secret(&secret_key_file, &key.to_string())?;
            std::fs::write(&public_key_file, key.public_key().to_string())
                .map_err(|e| format!("{}: {e}", public_key_file.display()))?;
            println!("{}", key.public_key());
            Ok(())
        }
        Command::VerifyNarinfo { file, public_keys } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let info: NarInfo = text
                .parse()
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let keys = public_keys
                .iter()
                .map(|k| k.parse::<PublicKey>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--public-key: {e}"))?;
            println!("fingerprint: {}", info.fingerprint());
            if keys.is_empty() {
                return Ok(());
            }
            if info.has_valid_signature(&keys) {
                println!("signature: valid");
                Ok(())
            } else {
                Err(format!(
                    "{}: no valid signature by the given keys",
                    file.display()
                ))
            }
        }
        Command::Migrate { database_url } => db::migrate(&database_url),
        Command::Db { command } => db::run(command),
        Command::Storage { command } => storage::run(command, json),
        Command::Admin(_) => unreachable!("admin commands are run by main"),
    }
}

fn write_secret(path: &PathBuf, secret: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(secret.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a reader that closed early (`gc
    // --dry-run | head`) panicked with a backtrace; with the default action
    // the process ends quietly, as other Unix tools do.
    // SAFETY: done first, before any thread starts; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Like the server: flags, then environment, then the config file.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match ncps_config::CommandLine::<Cli>::parse(&args) {
        Ok(line) => line.parsed,
        Err(ncps_config::ParseError::ConfigFile(e)) => {
            eprintln!("ncps-cli: {e}");
            return ExitCode::from(admin::exit::USAGE);
        }
        Err(ncps_config::ParseError::CommandLine(e)) => e.exit(),
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let json = cli.json;
    if let Command::Admin(command) = cli.command {
        return admin::finish(admin::run(*command, json));
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ncps-cli: {e}");
            ExitCode::FAILURE
        }
    }
}
