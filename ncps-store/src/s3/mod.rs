//! `S3Storage`: objects in an S3 bucket (AWS or any S3-compatible server),
//! optionally under a key prefix.

mod config;
mod error;
mod proxy;
mod upload;

use std::io;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use ncps_core::storage::slice;
use ncps_core::{ByteStream, Error, Incomplete, Result, Storage, StoredObject};

use crate::ObjectInfo;

pub use config::S3Config;
pub use proxy::S3Proxy;
pub use upload::PART_SIZE;

use error::{is_unavailable, map_sdk_error, status};

/// Storage in an S3 bucket: the object under `nar/x.nar.xz` is the S3 key
/// `nar/x.nar.xz`, or `<prefix>/nar/x.nar.xz` with a prefix.
///
/// `put` sends bodies up to [`PART_SIZE`] with one `PutObject` and larger
/// ones as a multipart upload, one part in memory at a time; S3 makes an
/// object visible only once complete, and a failed multipart upload is
/// aborted. `get` streams the object's body.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: Option<String>,
    endpoint: String,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Connects to the bucket `config` names and checks that it exists and
    /// the credentials may use it (`HeadBucket`).
    ///
    /// Errors name the bucket and the endpoint: `InvalidInput` for a bad
    /// configuration, a missing bucket or refused credentials, `Unavailable`
    /// when S3 cannot be reached.
    pub async fn new(config: S3Config) -> Result<Self> {
        let prefix = config.normalized_prefix()?;
        let client = config.client().await?;
        let storage = S3Storage {
            client,
            bucket: config.bucket.clone(),
            prefix,
            endpoint: config.endpoint_for_display(),
        };
        storage.check_bucket().await?;
        Ok(storage)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix, without surrounding slashes.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The S3 client, for tools that need more than [`Storage`].
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every object under the key prefix `under` (such as `nar`), sorted by
    /// key; keys are storage keys, without the bucket prefix.
    pub async fn list(&self, under: &str) -> Result<Vec<ObjectInfo>> {
        let under = under.trim_end_matches('/');
        let search = format!("{}/", self.object_key(under)?);
        let strip = match &self.prefix {
            Some(prefix) => prefix.len() + 1,
            None => 0,
        };
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&search)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_sdk_error(format!("S3 ListObjectsV2 {search}"), e))?;
            for object in page.contents() {
                let (Some(key), Some(size)) = (object.key(), object.size()) else {
                    continue;
                };
                let key = key.get(strip..).unwrap_or_default().to_owned();
                objects.push(ObjectInfo {
                    key,
                    size: u64::try_from(size).unwrap_or(0),
                });
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// The S3 key for a storage key, after checking the key.
    fn object_key(&self, key: &str) -> Result<String> {
        crate::key::validate_key(key)?;
        Ok(match &self.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_string(),
        })
    }

    /// `HeadBucket`, with an error that says what to fix.
    async fn check_bucket(&self) -> Result<()> {
        let result = self.client.head_bucket().bucket(&self.bucket).send().await;
        let Err(err) = result else {
            return Ok(());
        };
        let what = format!("S3 bucket {:?} at {}", self.bucket, self.endpoint);
        if is_unavailable(&err) {
            return Err(map_sdk_error(format!("{what}: cannot reach S3"), err));
        }
        let why = match status(&err) {
            Some(404) => "no such bucket".to_string(),
            Some(401 | 403) => "access denied: check the access key id and secret access key, \
                 and that they may use this bucket"
                .to_string(),
            Some(301) => {
                let region = err
                    .raw_response()
                    .and_then(|r| r.headers().get("x-amz-bucket-region"))
                    .unwrap_or("another region");
                format!("the bucket is in {region}: set the region to it")
            }
            _ => error::describe(&err),
        };
        Err(Error::InvalidInput(format!("{what}: {why}")))
    }
}

/// The body of a `GetObject` as a [`ByteStream`], read as it is consumed.
fn stream_body(body: S3Body) -> ByteStream {
    Box::pin(futures::stream::unfold(body, |mut body| async move {
        let chunk = body.next().await?;
        Some((chunk.map_err(io::Error::other), body))
    }))
}

/// The object size from a response's `Content-Length`.
fn content_length(value: Option<i64>, object_key: &str) -> Result<u64> {
    value.and_then(|n| u64::try_from(n).ok()).ok_or_else(|| {
        Error::backend(
            format!("S3 object {object_key}"),
            "the response has no valid Content-Length",
        )
    })
}

/// The total size in a `Content-Range: bytes a-b/total` header.
fn total_size(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.parse().ok()
}

/// An object of `size` bytes with an empty body: a range past its end.
fn empty_object(size: u64) -> StoredObject {
    StoredObject {
        size,
        body: Box::pin(futures::stream::empty()),
        file: None,
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn list_objects(&self, prefix: &str) -> Result<Option<Vec<(String, u64)>>> {
        let objects = self.list(prefix).await?;
        Ok(Some(objects.into_iter().map(|o| (o.key, o.size)).collect()))
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<u64> {
        let object_key = self.object_key(key)?;
        let target = upload::Target {
            client: &self.client,
            bucket: &self.bucket,
            key: &object_key,
        };
        upload::upload(target, body).await
    }

    async fn get(&self, key: &str) -> Result<Option<StoredObject>> {
        let object_key = self.object_key(key)?;
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(map_sdk_error(format!("S3 GetObject {object_key}"), e)),
        };
        let size = content_length(output.content_length, &object_key)?;
        Ok(Some(StoredObject {
            size,
            body: stream_body(output.body),
            file: None,
        }))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<StoredObject>> {
        let object_key = self.object_key(key)?;
        if len == 0 {
            return Ok(self.head(key).await?.map(empty_object));
        }
        let last = offset.saturating_add(len - 1);
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) if status(&e) == Some(404) => return Ok(None),
            // 416: the range starts at or past the end; the answer is empty.
            Err(e) if status(&e) == Some(416) => {
                return Ok(self.head(key).await?.map(empty_object));
            }
            Err(e) => return Err(map_sdk_error(format!("S3 GetObject {object_key}"), e)),
        };
        match output.content_range.as_deref().and_then(total_size) {
            Some(size) => Ok(Some(StoredObject {
                size,
                body: stream_body(output.body),
                file: None,
            })),
            // A server that ignores ranges sends the whole object; cut it here.
            None => {
                let size = content_length(output.content_length, &object_key)?;
                Ok(Some(StoredObject {
                    size,
                    body: slice(stream_body(output.body), offset, len),
                    file: None,
                }))
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let object_key = self.object_key(key)?;
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => return Ok(None),
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(map_sdk_error(format!("S3 HeadObject {object_key}"), e)),
        };
        Ok(Some(content_length(output.content_length, &object_key)?))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        // DeleteObject succeeds on missing keys too, so ask first.
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        let object_key = self.object_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
            .map_err(|e| map_sdk_error(format!("S3 DeleteObject {object_key}"), e))?;
        Ok(true)
    }

    /// Multipart uploads never completed nor aborted, under this storage's
    /// prefix (or of one key).
    async fn incomplete(&self, key: Option<&str>) -> Result<Vec<Incomplete>> {
        let strip = match &self.prefix {
            Some(prefix) => prefix.len() + 1,
            None => 0,
        };
        let search = match (key, &self.prefix) {
            (Some(key), _) => self.object_key(key)?,
            (None, Some(prefix)) => format!("{prefix}/"),
            (None, None) => String::new(),
        };
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .set_prefix((!search.is_empty()).then(|| search.clone()))
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| map_sdk_error(format!("S3 ListMultipartUploads {search}"), e))?;
            for upload in page.uploads() {
                let (Some(object_key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                // A prefix search for one key also finds longer keys.
                if key.is_some() && object_key != search {
                    continue;
                }
                let age = upload.initiated().and_then(|t| {
                    std::time::SystemTime::try_from(*t)
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                });
                found.push(Incomplete {
                    key: object_key.get(strip..).map(str::to_owned),
                    id: format!("{object_key}\n{id}"),
                    age,
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(found)
    }

    async fn discard(&self, incomplete: &Incomplete) -> Result<()> {
        let Some((key, id)) = incomplete.id.split_once('\n') else {
            return Err(Error::InvalidInput(format!(
                "{:?}: not a multipart upload of this storage",
                incomplete.id
            )));
        };
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await
            .map_err(|e| map_sdk_error(format!("S3 AbortMultipartUpload {key}"), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::total_size;

    #[test]
    fn reads_the_total_of_a_content_range() {
        assert_eq!(total_size("bytes 0-9/100"), Some(100));
        assert_eq!(total_size("bytes 5-5/6"), Some(6));
        assert_eq!(total_size("bytes */100"), Some(100));
        assert_eq!(total_size("bytes 0-9/*"), None);
        assert_eq!(total_size("garbage"), None);
    }
}
