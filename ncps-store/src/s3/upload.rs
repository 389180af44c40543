//! Streaming a body into S3: one `PutObject` for bodies up to one part,
//! a multipart upload for larger ones, holding at most one part in memory.
//!
//! A multipart upload only becomes an object on `CompleteMultipartUpload`, so
//! readers never see a partial object. Any failure (the body's, S3's, or the
//! caller dropping the future) aborts the upload so no parts linger.

use std::io;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use ncps_core::{ByteStream, Error, Result};

use super::error::map_sdk_error;

/// Size of each part of a multipart upload (the last may be smaller), and the
/// largest body sent with a single `PutObject`.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// S3 allows at most this many parts, so objects are limited to
/// `MAX_PARTS * PART_SIZE` bytes (about 78 GiB).
const MAX_PARTS: i32 = 10_000;

/// Where an upload goes.
pub(crate) struct Target<'a> {
    pub(crate) client: &'a Client,
    pub(crate) bucket: &'a str,
    /// The object key, prefix included.
    pub(crate) key: &'a str,
}

/// Stores `body` under the target; returns the number of bytes stored.
pub(crate) async fn upload(target: Target<'_>, body: ByteStream) -> Result<u64> {
    let mut parts = PartReader::new(body);
    let first = parts
        .next_part()
        .await
        .map_err(|e| body_error(target.key, e))?;
    if parts.is_finished() {
        let size = first.len() as u64;
        target
            .client
            .put_object()
            .bucket(target.bucket)
            .key(target.key)
            .content_length(first.len() as i64)
            .body(S3Body::from(first))
            .send()
            .await
            .map_err(|e| map_sdk_error(format!("S3 PutObject {}", target.key), e))?;
        return Ok(size);
    }

    let created = target
        .client
        .create_multipart_upload()
        .bucket(target.bucket)
        .key(target.key)
        .send()
        .await
        .map_err(|e| map_sdk_error(format!("S3 CreateMultipartUpload {}", target.key), e))?;
    let upload_id = created.upload_id.ok_or_else(|| {
        Error::backend(
            format!("S3 CreateMultipartUpload {}", target.key),
            "the response has no upload id",
        )
    })?;
    let mut guard = AbortOnDrop {
        client: target.client.clone(),
        bucket: target.bucket.to_string(),
        key: target.key.to_string(),
        upload_id: Some(upload_id.clone()),
    };
    match upload_parts(&target, &upload_id, first, &mut parts).await {
        Ok(size) => {
            guard.upload_id = None;
            Ok(size)
        }
        Err(e) => {
            guard.abort().await;
            Err(e)
        }
    }
}

/// Uploads `first` and the rest of `parts`, then completes the upload.
async fn upload_parts(
    target: &Target<'_>,
    upload_id: &str,
    first: Bytes,
    parts: &mut PartReader,
) -> Result<u64> {
    let mut completed = Vec::new();
    let mut size = 0u64;
    let mut part = first;
    let mut number = 1;
    loop {
        size += part.len() as u64;
        let uploaded = target
            .client
            .upload_part()
            .bucket(target.bucket)
            .key(target.key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(part.len() as i64)
            .body(S3Body::from(part))
            .send()
            .await
            .map_err(|e| map_sdk_error(format!("S3 UploadPart {} #{number}", target.key), e))?;
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag)
                .build(),
        );
        if parts.is_finished() {
            break;
        }
        if number == MAX_PARTS {
            return Err(Error::InvalidInput(format!(
                "{}: larger than S3 allows with {MAX_PARTS} parts of {PART_SIZE} bytes",
                target.key
            )));
        }
        part = parts
            .next_part()
            .await
            .map_err(|e| body_error(target.key, e))?;
        number += 1;
    }
    target
        .client
        .complete_multipart_upload()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map_err(|e| map_sdk_error(format!("S3 CompleteMultipartUpload {}", target.key), e))?;
    Ok(size)
}

/// The error for a body that failed while being read.
fn body_error(key: &str, e: io::Error) -> Error {
    Error::backend(format!("reading body of {key}"), e)
}

/// Cuts a byte stream into parts of exactly [`PART_SIZE`] bytes (the last may
/// be shorter), looking one chunk ahead to know when the body has ended.
struct PartReader {
    body: ByteStream,
    /// Bytes read but not yet handed out.
    pending: Option<Bytes>,
    /// Whether `body` has ended.
    ended: bool,
}

impl PartReader {
    fn new(body: ByteStream) -> Self {
        PartReader {
            body,
            pending: None,
            ended: false,
        }
    }

    /// Whether every byte of the body has been handed out.
    fn is_finished(&self) -> bool {
        self.ended && self.pending.is_none()
    }

    /// The next non-empty chunk of the body, or `None` at its end.
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(chunk) = self.pending.take() {
            return Ok(Some(chunk));
        }
        while !self.ended {
            match self.body.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    if !chunk.is_empty() {
                        return Ok(Some(chunk));
                    }
                }
                None => self.ended = true,
            }
        }
        Ok(None)
    }

    /// The next part: [`PART_SIZE`] bytes, or fewer at the end of the body.
    /// Afterwards `is_finished` says whether more bytes follow.
    async fn next_part(&mut self) -> io::Result<Bytes> {
        let mut part = BytesMut::new();
        while part.len() < PART_SIZE {
            let Some(mut chunk) = self.next_chunk().await? else {
                break;
            };
            let room = PART_SIZE - part.len();
            if chunk.len() > room {
                self.pending = Some(chunk.split_off(room));
            }
            if part.capacity() == 0 {
                // Untouched capacity costs address space, not memory.
                part.reserve(PART_SIZE);
            }
            part.extend_from_slice(&chunk);
        }
        if !self.ended && self.pending.is_none() {
            // Look ahead so `is_finished` is exact after a full part.
            self.pending = self.next_chunk().await?;
        }
        Ok(part.freeze())
    }
}

/// Aborts a multipart upload that was neither completed nor aborted, also
/// when the `put` future is dropped halfway (a client went away).
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    /// `Some` while the upload still needs aborting.
    upload_id: Option<String>,
}

impl AbortOnDrop {
    /// Aborts the upload now; a failure is logged, not returned, since the
    /// caller is already reporting the error that made it abort.
    async fn abort(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            abort_upload(
                self.client.clone(),
                self.bucket.clone(),
                self.key.clone(),
                upload_id,
            )
            .await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(abort_upload(
                    self.client.clone(),
                    std::mem::take(&mut self.bucket),
                    std::mem::take(&mut self.key),
                    upload_id,
                ));
            }
            Err(_) => tracing::warn!(
                bucket = %self.bucket,
                key = %self.key,
                upload_id = %upload_id,
                "S3 multipart upload left behind: no runtime to abort it on"
            ),
        }
    }
}

/// Sends `AbortMultipartUpload`, logging a failure.
async fn abort_upload(client: Client, bucket: String, key: String, upload_id: String) {
    let result = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&upload_id)
        .send()
        .await;
    if let Err(e) = result {
        let e = map_sdk_error("S3 AbortMultipartUpload", e);
        tracing::warn!(
            bucket = %bucket,
            key = %key,
            upload_id = %upload_id,
            error = %e,
            "aborting an S3 multipart upload failed; a bucket lifecycle rule for incomplete uploads cleans it up"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{PART_SIZE, PartReader};
    use bytes::Bytes;
    use std::io;

    fn reader(chunks: Vec<usize>) -> PartReader {
        let items: Vec<io::Result<Bytes>> = chunks
            .into_iter()
            .map(|n| Ok(Bytes::from(vec![7u8; n])))
            .collect();
        PartReader::new(Box::pin(futures::stream::iter(items)))
    }

    async fn part_sizes(mut parts: PartReader) -> Vec<usize> {
        let mut sizes = Vec::new();
        loop {
            let part = parts.next_part().await.expect("part");
            sizes.push(part.len());
            if parts.is_finished() {
                return sizes;
            }
        }
    }

    #[tokio::test]
    async fn cuts_exact_parts() {
        assert_eq!(part_sizes(reader(vec![])).await, vec![0]);
        assert_eq!(part_sizes(reader(vec![0, 10, 0])).await, vec![10]);
        assert_eq!(part_sizes(reader(vec![PART_SIZE])).await, vec![PART_SIZE]);
        assert_eq!(
            part_sizes(reader(vec![PART_SIZE, 0])).await,
            vec![PART_SIZE]
        );
        assert_eq!(
            part_sizes(reader(vec![PART_SIZE - 1, 2, PART_SIZE])).await,
            vec![PART_SIZE, PART_SIZE, 1]
        );
        assert_eq!(
            part_sizes(reader(vec![3 * PART_SIZE + 5])).await,
            vec![PART_SIZE, PART_SIZE, PART_SIZE, 5]
        );
    }

    #[tokio::test]
    async fn body_errors_surface() {
        let items: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("boom")),
        ];
        let mut parts = PartReader::new(Box::pin(futures::stream::iter(items)));
        assert!(parts.next_part().await.is_err());
    }
}
