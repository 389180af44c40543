//! [`Settings`]: the options of `serve` turned into typed values and
//! checked, the one place they are. Nothing is read or contacted here: the
//! machine-dependent defaults come in a [`Machine`], files named are read by
//! [`crate::load()`], and backends are opened by [`crate::open()`].

use std::path::PathBuf;

use ncps_core::Result;

use crate::database::DatabaseSettings;
use crate::lock::LockSettings;
use crate::machine::Machine;
use crate::options::ServeOptions;
use crate::policy::CachePolicy;
use crate::server::ServerSettings;
use crate::storage::StorageSettings;
use crate::upstreams::UpstreamSettings;
use crate::writes::WritePolicy;

/// Every setting of a cache, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Listening, naming, tokens, `/metrics`.
    pub server: ServerSettings,
    /// Where NARs are kept.
    pub storage: StorageSettings,
    /// The local storage directory, else the machine's data directory.
    pub data_dir: PathBuf,
    /// The metadata database.
    pub database: DatabaseSettings,
    /// Where locks live.
    pub lock: LockSettings,
    /// The upstream caches.
    pub upstreams: UpstreamSettings,
    /// Signing, expiries, spooling and eviction.
    pub cache: CachePolicy,
    /// Uploads and deletes.
    pub writes: WritePolicy,
}

impl Settings {
    /// Checks `options` as `serve` uses them, with the defaults of
    /// `machine`. An invalid option is an
    /// [`Error::InvalidInput`](ncps_core::Error::InvalidInput) naming it.
    pub fn from_options(options: &ServeOptions, machine: &Machine) -> Result<Settings> {
        let server = ServerSettings::from_options(options, machine)?;
        let (storage, data_dir) = StorageSettings::from_options(options, machine)?;
        let database = DatabaseSettings::from_options(options, &data_dir)?;
        let upstreams = UpstreamSettings::from_options(options, machine)?;
        Ok(Settings {
            server,
            storage,
            database,
            upstreams,
            lock: LockSettings::from_options(options)?,
            cache: CachePolicy::from_options(options, machine)?,
            writes: WritePolicy::from_options(options)?,
            data_dir,
        })
    }
}
