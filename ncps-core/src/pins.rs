//! Pins: store paths kept out of eviction together with their whole closure
//! (every path their narinfos' `References:` reach, transitively).
//!
//! A pin names a store path hash; the closure is walked through the narinfos
//! the database holds at each eviction run, so paths of a pinned closure
//! that are cached later are protected too.

use std::collections::{HashSet, VecDeque};

use crate::{MetadataDb, NarInfo, Result};

/// What the pins protect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedClosure {
    /// Store path hashes in the closures of the pins that the database has
    /// a narinfo for.
    pub paths: HashSet<String>,
    /// NAR file names of those paths.
    pub nar_files: HashSet<String>,
    /// Store path hashes in the closures with no narinfo here (not cached,
    /// or cached later; their own references are not known).
    pub missing: HashSet<String>,
}

/// The closures of every pin, walked through the narinfos in `db`.
pub async fn pinned_closure(db: &dyn MetadataDb) -> Result<PinnedClosure> {
    let roots: Vec<String> = db.list_pins().await?.into_iter().map(|p| p.hash).collect();
    closure(db, roots).await
}

/// The closure of `roots` (store path hashes), walked through the narinfos in `db`.
pub async fn closure(db: &dyn MetadataDb, roots: Vec<String>) -> Result<PinnedClosure> {
    let mut out = PinnedClosure::default();
    let mut seen: HashSet<String> = roots.iter().cloned().collect();
    let mut queue: VecDeque<String> = roots.into();
    while let Some(hash) = queue.pop_front() {
        let Some(record) = db.get_narinfo(&hash).await? else {
            out.missing.insert(hash);
            continue;
        };
        out.nar_files.insert(record.nar_file.clone());
        out.paths.insert(hash.clone());
        match record.narinfo.parse::<NarInfo>() {
            Ok(info) => {
                for reference in info.references {
                    let reference = reference.hash().as_str().to_owned();
                    if seen.insert(reference.clone()) {
                        queue.push_back(reference);
                    }
                }
            }
            Err(e) => {
                // Its own NAR stays protected; what it references cannot be known.
                tracing::warn!(%hash, error = %e, "a pinned narinfo does not parse");
            }
        }
    }
    Ok(out)
}

/// What pinning a path found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// Whether it was not pinned before.
    pub new: bool,
    /// Its store path, when its narinfo is cached (or could be fetched).
    pub store_path: Option<String>,
    /// How many paths of its closure are cached now.
    pub closure_paths: usize,
}
