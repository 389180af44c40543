//! Reads: a narinfo, a NAR, its size or a range of it, each told how far it
//! may go for an answer ([`Fetch`]).

use std::future::Future;

use super::Cache;
use crate::nar_file::NarFile;
use crate::{NarBody, NarSize, Result, ServedNarinfo, StorePathHash};

/// How far a read may go for what this cache does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Only what is stored (the database, storage): never a download.
    Never,
    /// What is stored or being downloaded in this process, never a new
    /// download: what a peer replica asks for ([`crate::cache::PEER_HEADER`]),
    /// so peers cannot send each other in circles. A NAR's size is then the
    /// stored size once any download in flight is done.
    InFlight,
    /// On a miss, the upstreams (and a peer downloading the NAR): a NAR is
    /// downloaded, checked and stored as it is served.
    Upstream,
}

impl Cache {
    /// The narinfo of `hash` as this cache serves it, with its entity tag (a
    /// hot narinfo comes from memory without copying or hashing its text).
    /// With [`Fetch::Upstream`], a miss asks the upstreams; narinfos have no
    /// downloads, so [`Fetch::InFlight`] is [`Fetch::Never`]. Never
    /// downloads the NAR.
    pub async fn get_narinfo(
        &self,
        hash: &StorePathHash,
        fetch: Fetch,
    ) -> Result<Option<ServedNarinfo>> {
        match fetch {
            Fetch::Upstream => self.inner.fetcher.narinfo(hash).await,
            Fetch::Never | Fetch::InFlight => self.inner.index.narinfo(hash).await,
        }
    }

    /// A NAR file, from storage or as far as `fetch` allows. With
    /// [`Fetch::Upstream`] a missing NAR is streamed from its upstream while
    /// it is checked and stored; concurrent requests read the one download as
    /// it arrives, and with a shared lock a replica asked for a NAR a peer is
    /// downloading streams it from that peer. A NAR served from storage is a
    /// hit ([`crate::Event::NarHit`]) whatever `fetch` says.
    pub async fn get_nar(&self, file: &NarFile, fetch: Fetch) -> Result<Option<NarBody>> {
        let key = file.storage_key();
        match fetch {
            Fetch::Never => self.inner.blobs.serve(file.as_str(), &key, true).await,
            Fetch::InFlight => self.inner.fetcher.nar_in_flight(file, &key).await,
            Fetch::Upstream => {
                if let Some(body) = self.inner.blobs.serve(file.as_str(), &key, true).await? {
                    return Ok(Some(body));
                }
                // Boxed: the state of a miss (locks, peers, the download) would
                // otherwise make every hit's future larger, and servers move it.
                Box::pin(self.inner.fetcher.nar(file, key)).await
            }
        }
    }

    /// What this cache can say of a NAR's size without sending it: the
    /// stored size; with [`Fetch::InFlight`], the stored size after any
    /// download of it in flight; with [`Fetch::Upstream`], else the size its
    /// upstream's narinfo gave, if any.
    pub async fn get_nar_size(&self, file: &NarFile, fetch: Fetch) -> Result<NarSize> {
        let known = |size: Option<u64>| size.map_or(NarSize::Absent, NarSize::Known);
        match fetch {
            Fetch::Never => Ok(known(self.inner.blobs.head(&file.storage_key()).await?)),
            Fetch::InFlight => Ok(known(
                self.inner.fetcher.stored_size_after_download(file).await?,
            )),
            Fetch::Upstream => {
                if let Some(size) = self.inner.blobs.head(&file.storage_key()).await? {
                    return Ok(NarSize::Known(size));
                }
                let record = self.inner.index.nar(file.as_str()).await?;
                Ok(match record.filter(|r| r.upstream_url.is_some()) {
                    Some(record) => record.file_size.map_or(NarSize::Unknown, NarSize::Known),
                    None => NarSize::Absent,
                })
            }
        }
    }

    /// `len` bytes from `offset` of a stored NAR; `None` if it is not stored.
    /// Ranges are served from storage only: a cold NAR is fetched whole first.
    pub async fn nar_range(
        &self,
        file: &NarFile,
        offset: u64,
        len: u64,
    ) -> Result<Option<NarBody>> {
        let key = file.storage_key();
        self.inner
            .blobs
            .range(file.as_str(), &key, offset, len)
            .await
    }

    /// [`Cache::get_narinfo`] from the upstreams, as text.
    // forwarder: callers move after merge
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<String>> {
        let served = self.get_narinfo(hash, Fetch::Upstream).await?;
        Ok(served.map(|narinfo| narinfo.as_str().to_owned()))
    }

    /// [`Cache::get_narinfo`] with [`Fetch::Upstream`].
    // forwarder: callers move after merge
    pub fn served_narinfo<'a>(
        &'a self,
        hash: &'a StorePathHash,
    ) -> impl Future<Output = Result<Option<ServedNarinfo>>> + Send + 'a {
        self.get_narinfo(hash, Fetch::Upstream)
    }

    /// The narinfo text the database holds, never asking an upstream and
    /// counting nothing (for `/upload/...`).
    // forwarder: callers move after merge
    pub async fn cached_narinfo(&self, hash: &StorePathHash) -> Result<Option<String>> {
        self.inner.index.narinfo_text(hash).await
    }

    /// [`Cache::get_nar`] with [`Fetch::Upstream`].
    // forwarder: callers move after merge
    pub fn nar<'a>(
        &'a self,
        file: &'a NarFile,
    ) -> impl Future<Output = Result<Option<NarBody>>> + Send + 'a {
        self.get_nar(file, Fetch::Upstream)
    }

    /// [`Cache::get_nar`] with [`Fetch::InFlight`].
    // forwarder: callers move after merge
    pub async fn nar_for_peer(&self, file: &NarFile) -> Result<Option<NarBody>> {
        self.get_nar(file, Fetch::InFlight).await
    }

    /// A stored NAR, counting nothing but its reader (for `/upload/...`).
    // forwarder: callers move after merge
    pub async fn stored_nar_only(&self, file: &NarFile) -> Result<Option<NarBody>> {
        let key = file.storage_key();
        self.inner.blobs.read(file.as_str(), &key).await
    }

    /// [`Cache::nar_range`].
    // forwarder: callers move after merge
    pub async fn stored_nar_range(
        &self,
        file: &NarFile,
        offset: u64,
        len: u64,
    ) -> Result<Option<NarBody>> {
        self.nar_range(file, offset, len).await
    }

    /// [`Cache::get_nar_size`] with [`Fetch::Upstream`], as options: `None`
    /// if absent, `Some(None)` if its size is unknown.
    // forwarder: callers move after merge
    pub async fn nar_size(&self, file: &NarFile) -> Result<Option<Option<u64>>> {
        let size = self.get_nar_size(file, Fetch::Upstream).await?;
        Ok(size.is_available().then(|| size.bytes()))
    }

    /// [`Cache::get_nar_size`] with [`Fetch::InFlight`].
    // forwarder: callers move after merge
    pub async fn stored_nar_size(&self, file: &NarFile) -> Result<Option<u64>> {
        Ok(self.get_nar_size(file, Fetch::InFlight).await?.bytes())
    }

    /// [`Cache::get_nar_size`] with [`Fetch::Never`].
    // forwarder: callers move after merge
    pub async fn stored_nar_size_only(&self, file: &NarFile) -> Result<Option<u64>> {
        Ok(self.get_nar_size(file, Fetch::Never).await?.bytes())
    }
}
