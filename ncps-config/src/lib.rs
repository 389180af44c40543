//! ncps-config: the settings of an ncps-rs cache, read once.
//!
//! Flags, environment variables and the config file (`--config`, YAML, TOML
//! or JSON with ncps's keys) are one clap command line ([`options`],
//! [`command_line`]: flag, then environment, then file, then default).
//! [`Settings::from_options`] turns it into typed settings (storage, database,
//! locks, upstreams with their keys, server, cache policy) and checks them
//! without reading or contacting anything; [`load()`] reads the files they name
//! (secret key, netrc, bearer tokens) and [`open()`] opens the backends
//! (storage, locks, database). `ncps-server` builds its engine on what
//! [`open()`] returns, and `ncps-cli`'s admin commands open the same cache
//! the same way.
//!
//! ```
//! use clap::Parser;
//! use ncps_config::options::ServeOptions;
//! use ncps_config::{LockSettings, Machine, Settings, StorageSettings};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     serve: ServeOptions,
//! }
//!
//! let cli = Cli::parse_from([
//!     "my-cache",
//!     "--server-addr=:8080",
//!     "--cache-storage-local=/var/lib/ncps",
//!     "--cache-max-size=10G",
//! ]);
//! let machine = Machine {
//!     hostname: "cache".into(),
//!     data_dir: "/var/lib/ncps".into(),
//!     home: None,
//!     temp_dir: "/tmp".into(),
//! };
//! let settings = Settings::from_options(&cli.serve, &machine)?;
//! assert_eq!(settings.server.addr.port(), 8080);
//! assert_eq!(settings.server.hostname, "cache");
//! assert_eq!(settings.storage, StorageSettings::Local("/var/lib/ncps".into()));
//! assert_eq!(settings.database.url, "sqlite:/var/lib/ncps/db/db.sqlite");
//! assert_eq!(settings.lock, LockSettings::Local);
//! assert_eq!(settings.cache.max_size, Some(10 << 30));
//! // Then, in a Tokio runtime: `let backends = ncps_config::open(&settings).await?;`
//! # Ok::<(), ncps_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod byte_size;
pub mod command_line;
pub mod config_file;
pub mod database;
pub mod error;
pub mod load;
pub mod lock;
pub mod machine;
pub mod open;
pub mod options;
pub mod policy;
pub mod schedule;
pub mod server;
pub mod settings;
pub mod sources;
pub mod storage;
pub mod upstreams;
pub mod writes;

pub use command_line::{CommandLine, ParseError};
pub use database::DatabaseSettings;
pub use load::{Loaded, load};
pub use lock::{LockSettings, RedisSettings};
pub use machine::Machine;
pub use open::open;
pub use policy::CachePolicy;
pub use server::ServerSettings;
pub use settings::Settings;
pub use storage::{S3Settings, StorageSettings};
pub use upstreams::UpstreamSettings;
pub use writes::WritePolicy;
