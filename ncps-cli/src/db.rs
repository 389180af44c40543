//! `ncps-cli migrate` and `ncps-cli db ...`: schema migrations, and copying
//! all metadata between databases of any backend.

use clap::Subcommand;
use ncps_db::redact_url;

/// `ncps-cli db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copies all metadata (narinfo and NAR records, signing key and config)
    /// from one database to another, migrating both first. Stop the servers
    /// using the source first.
    Copy {
        /// The database to copy from.
        #[arg(long)]
        from: String,
        /// The database to copy into; a different signing key there is an error.
        #[arg(long)]
        to: String,
        /// Records read per query.
        #[arg(long, default_value_t = ncps_db::DEFAULT_BATCH)]
        batch_size: usize,
    },
}

/// Runs `f` on a new runtime.
fn block_on<T>(f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(f)
}

/// Opens (and so migrates) the database at `url`.
pub fn migrate(url: &str) -> Result<(), String> {
    block_on(async {
        let db = ncps_db::open(url, 1).await.map_err(|e| e.to_string())?;
        db.ping().await.map_err(|e| e.to_string())?;
        println!("{}: schema is current", redact_url(url));
        Ok(())
    })
}

/// Runs a `db` subcommand.
pub fn run(command: DbCommand) -> Result<(), String> {
    match command {
        DbCommand::Copy {
            from,
            to,
            batch_size,
        } => block_on(async {
            let source = ncps_db::open(&from, 2).await.map_err(|e| e.to_string())?;
            let target = ncps_db::open(&to, 2).await.map_err(|e| e.to_string())?;
            let stats = ncps_db::copy(source.as_ref(), target.as_ref(), batch_size)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "copied {} narinfos, {} NAR records and {} config values from {} to {}",
                stats.narinfos,
                stats.nars,
                stats.config,
                redact_url(&from),
                redact_url(&to)
            );
            Ok(())
        }),
    }
}
