//! How the engine behaves: [`CacheOptions`], read by every part of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::events::Observer;

/// How the engine behaves.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Whether served narinfos carry this cache's signature.
    pub sign_narinfo: bool,
    /// How long a download or narinfo lock is held at most.
    pub download_lock_ttl: Duration,
    /// `Priority:` this cache advertises in its nix-cache-info.
    pub priority: u32,
    /// How long a narinfo no upstream has is answered 404 without asking again; zero disables.
    pub negative_ttl: Duration,
    /// How many narinfos are served from memory (for 30 s each at most);
    /// zero asks the database every time.
    pub hot_narinfos: usize,
    /// Where downloads in progress are spooled (their files are unlinked at once).
    pub temp_dir: PathBuf,
    /// This instance's URL as peers reach it; it labels the download locks it
    /// holds, so a peer asked for the same NAR can stream it from here.
    pub advertise_url: Option<String>,
    /// The token reads need (`--cache-get-token`), sent to peers when
    /// streaming a NAR from them.
    pub peer_token: Option<String>,
    /// How old an unfinished write of a known key must be before
    /// [`crate::Cache::clean_incomplete`] throws it away. Its free download lock
    /// already says no instance of this cache is writing it; the age also
    /// spares writers that take no lock (`ncps-cli storage copy` into the
    /// same bucket, a download that outlived its lock), so it must be far
    /// longer than any upload takes.
    pub incomplete_min_age: Duration,
    /// More observers of the engine's events, told after its own metrics
    /// ([`crate::Cache::metrics`]) and database counters.
    pub observers: Vec<Arc<dyn Observer>>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            sign_narinfo: true,
            download_lock_ttl: Duration::from_secs(300),
            priority: 40,
            negative_ttl: Duration::from_secs(300),
            hot_narinfos: 10_000,
            temp_dir: std::env::temp_dir(),
            advertise_url: None,
            peer_token: None,
            incomplete_min_age: Duration::from_secs(24 * 60 * 60),
            observers: Vec::new(),
        }
    }
}
