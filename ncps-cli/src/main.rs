//! `ncps-cli`: admin commands for an ncps-rs cache.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ncps_core::{NarInfo, PublicKey, SigningKey};

mod db;
mod storage;

/// Admin commands for an ncps-rs cache.
#[derive(Debug, Parser)]
#[command(name = "ncps-cli", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generates a signing key pair, as `nix-store --generate-binary-cache-key` does.
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
        #[arg(long, env = "CACHE_DATABASE_URL")]
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
}

fn run(cli: Cli) -> Result<(), String> {
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
        Command::Storage { command } => storage::run(command),
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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ncps-cli: {e}");
            ExitCode::FAILURE
        }
    }
}
