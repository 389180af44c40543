//! Peer replicas: a replica asked for a NAR that another one is downloading
//! (it holds the NAR's download lock, labelled with its advertised URL)
//! streams it from that peer, checking it as it comes, instead of waiting.

use std::io;
use std::time::Duration;

use futures::StreamExt;

use super::Fetcher;
use crate::lock::LockKey;
use crate::nar_file::NarFile;
use crate::nar_verify::{self, NarCheck};
use crate::{ByteStream, NarBody, NarRecord};

/// The request header a replica sends when it streams a NAR from the peer
/// downloading it; a peer answers it with what it has stored or in flight
/// only ([`crate::Fetch::InFlight`]).
pub const PEER_HEADER: &str = "x-ncps-peer";

/// The client for peers: raw bytes (no decompression), no proxy (peers are
/// on the same network), and a bounded wait for the first answer.
pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_zstd()
        .no_brotli()
        .no_deflate()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default()
}

impl Fetcher {
    /// Streams a NAR from the peer holding its download lock, checking it as
    /// it comes; `None` if there is no such peer or it cannot serve it.
    pub(super) async fn stream_from_peer(
        &self,
        lock_key: &LockKey,
        file: &NarFile,
        record: &NarRecord,
    ) -> Option<NarBody> {
        let own = self.options.advertise_url.as_deref();
        let peer = match self.lock.holder_of(lock_key).await {
            Ok(Some(peer)) if Some(peer.as_str()) != own => peer,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(%file, error = %e, "cannot tell who is downloading a NAR");
                return None;
            }
        };
        let url = format!("{}/nar/{file}", peer.trim_end_matches('/'));
        let body = self.ask_peer(&url).await?;
        let check = match NarCheck::of_record(record) {
            Ok(check) => check,
            Err(e) => {
                tracing::warn!(%file, error = %e, "stored NAR record is unreadable");
                return None;
            }
        };
        match nar_verify::verified(body, check) {
            Ok(body) => {
                tracing::info!(%url, "streaming a NAR from the peer downloading it");
                Some(NarBody {
                    size: record.file_size,
                    body,
                    file: None,
                })
            }
            Err(e) => {
                tracing::warn!(%file, error = %e, "cannot check a NAR from a peer");
                None
            }
        }
    }

    /// The body of a peer's `200` to `url`, unchecked.
    async fn ask_peer(&self, url: &str) -> Option<ByteStream> {
        let mut request = self.peer_client.get(url).header(PEER_HEADER, "1");
        if let Some(token) = &self.options.peer_token {
            // Peers guard reads with the same --cache-get-token.
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => r,
            Ok(r) => {
                tracing::info!(%url, status = %r.status(), "peer cannot serve a NAR it was downloading");
                return None;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "peer unreachable; waiting for its download instead");
                return None;
            }
        };
        Some(Box::pin(
            response
                .bytes_stream()
                .map(|item| item.map_err(io::Error::other)),
        ))
    }
}
