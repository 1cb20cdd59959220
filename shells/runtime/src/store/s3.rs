//! S3 (and S3-compatible servers) as the object store, through aws-sdk-s3.
//!
//! Credentials come from the SDK's default chain. With a custom endpoint (`AWS_ENDPOINT_URL`, for
//! moto, MinIO, R2…) addressing is path-style and checksums are computed only where an operation
//! requires them, which every S3-compatible server understands. An object up to
//! [`MULTIPART_OVER`] bytes is written with one `PutObject` (every photo: they are megabytes); a
//! larger one (a staged upload of tens of MiB) as a multipart upload whose parts go up at once, so
//! one large upload is not held to one connection's speed.
//!
//! Bodies are sent with `UNSIGNED-PAYLOAD` instead of their SHA-256 in the signature: otherwise the
//! SDK hashes every byte of every upload and result once more, CPU that grows with the bytes
//! (awslabs/aws-sdk-rust#1085). The signature still covers the request's headers; the body's integrity comes from TLS and, on AWS,
//! from the CRC32 checksum the SDK adds and S3 verifies. (A custom endpoint over plain `http://`
//! gets neither: use it only on a trusted network, as the tests' moto is.)
//!
//! moto 5.2.1 mis-answers `CompleteMultipartUpload` (its reply's XML root is
//! `CompleteMultipartUploadResponse`, so the SDK cannot read it) while it assembles the object.
//! Rather than trust or ignore an unreadable success, a completion answered 2xx but unreadable is
//! checked with `HeadObject`: the object must be there, as large as what was sent and assembled
//! from as many parts. Only then is the put a success; anything else aborts the upload.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{ObjectInfo, ObjectMeta, ObjectStore, check_key};
use crate::error::StoreFailure;
use crate::{Error, Result};

/// Objects larger than this are written as multipart uploads. 16 MiB: every photo (a 12 MP phone
/// photo is 2 to 6 MB) stays one request, while an upload near the 64 MiB default limit goes up
/// as eight parts at once.
pub const MULTIPART_OVER: usize = 16 << 20;

/// The size of each part but the last (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// Builds a client for `bucket`. Nothing is sent until the first call: a missing bucket or
    /// bad credentials show up as store errors there. Each request attempt may take
    /// `attempt_timeout`, the SDK's three attempts together three times that.
    pub async fn connect(
        bucket: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
        attempt_timeout: Duration,
    ) -> S3Store {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(attempt_timeout)
                .operation_timeout(attempt_timeout * 3)
                .build(),
        );
        if shared.region().is_none() {
            config = config.region(Region::from_static("us-east-1"));
        }
        if endpoint.is_some() {
            config = config
                .force_path_style(true)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        S3Store {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_owned(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client, for tests and tools that need more than the store's four calls.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn fail<E>(op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let class = classify(&e);
    Error::store(op, key, class, DisplayErrorContext(e))
}

/// Sorts an S3 answer by who must act: S3's documented error codes by HTTP status, with the
/// few 4xx that are about load or time, not about the request, kept transient.
fn classify<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> StoreFailure {
    let SdkError::ServiceError(context) = e else {
        // Timeouts, connection failures, unreadable responses: the network or the store's load.
        return match e {
            SdkError::ConstructionFailure(_) => StoreFailure::Rejected,
            _ => StoreFailure::Transient,
        };
    };
    let status = context.raw().status().as_u16();
    store_failure(status, context.err().code())
}

/// The classification behind [`classify`], by status and S3 error code.
fn store_failure(status: u16, code: Option<&str>) -> StoreFailure {
    match (status, code) {
        (_, Some("RequestTimeout" | "SlowDown" | "OperationAborted" | "ExpiredToken")) => {
            StoreFailure::Transient
        }
        (_, Some("NoSuchBucket" | "PermanentRedirect" | "AuthorizationHeaderMalformed")) => {
            StoreFailure::Denied
        }
        (301 | 401 | 403, _) => StoreFailure::Denied,
        (408 | 409 | 429, _) => StoreFailure::Transient,
        (400..=499, _) => StoreFailure::Rejected,
        _ => StoreFailure::Transient,
    }
}

impl S3Store {
    /// Writes `body` as a multipart upload of [`PART_BYTES`] parts sent concurrently; on any
    /// failure the upload is aborted (best effort: the bucket's lifecycle rule for incomplete
    /// multipart uploads collects what an abort misses).
    async fn put_multipart(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<()> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        if !meta.content_type.is_empty() {
            create = create.content_type(&meta.content_type);
        }
        for (k, v) in &meta.metadata {
            create = create.metadata(k, v);
        }
        let created = create.send().await.map_err(|e| fail("put", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = self.send_parts(key, &upload_id, body).await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn send_parts(&self, key: &str, upload_id: &str, body: Bytes) -> Result<()> {
        let size = body.len();
        let parts = size.div_ceil(PART_BYTES);
        let sends = (0..parts).map(|i| {
            let part = body.slice(i * PART_BYTES..((i + 1) * PART_BYTES).min(size));
            let number = i as i32 + 1;
            async move {
                let sent = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(part.len() as i64)
                    .body(ByteStream::from(part))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| fail("put", key, e))?;
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(sent.e_tag().map(str::to_owned))
                        .build(),
                )
            }
        });
        let completed = futures_util::future::try_join_all(sends).await?;
        let answer = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().is_success()) => {
                // Answered 2xx, but the reply could not be read (moto, see the module doc):
                // the object itself decides.
                let found = self.head_object(key).await?.map(|h| {
                    (
                        h.content_length().unwrap_or(0),
                        h.e_tag().map(str::to_owned),
                    )
                });
                match found {
                    Some((len, Some(etag)))
                        if len == size as i64 && etag_parts(&etag) == Some(parts) =>
                    {
                        Ok(())
                    }
                    found => Err(Error::store(
                        "put",
                        key,
                        StoreFailure::Transient,
                        format!(
                            "multipart completion answered success unreadably ({}), and the \
                             object is not the {size} bytes in {parts} parts sent (found {found:?})",
                            DisplayErrorContext(e)
                        ),
                    )),
                }
            }
            Err(e) => Err(fail("put", key, e)),
        }
    }

    /// `HeadObject` on `key`, or `None` when it does not exist: for [`ObjectStore::head`] and the
    /// multipart check, which also needs the ETag.
    async fn head_object(&self, key: &str) -> Result<Option<HeadObjectOutput>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(h)),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(fail("head", key, e)),
        }
    }
}

/// The part count a multipart object's ETag ends with (`"<md5 of the parts' md5s>-<parts>"`).
fn etag_parts(etag: &str) -> Option<usize> {
    etag.trim_matches('"').rsplit_once('-')?.1.parse().ok()
}

impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<()> {
        check_key(key)?;
        if body.len() > MULTIPART_OVER {
            return self.put_multipart(key, body, meta).await;
        }
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body));
        if !meta.content_type.is_empty() {
            req = req.content_type(&meta.content_type);
        }
        for (k, v) in &meta.metadata {
            req = req.metadata(k, v);
        }
        req.customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| fail("put", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        check_key(key)?;
        let resp = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(fail("get", key, e)),
        };
        let body = resp
            .body
            .collect()
            .await
            .map_err(|e| Error::store("get", key, StoreFailure::Transient, e))?;
        Ok(Some(body.into_bytes()))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        check_key(key)?;
        Ok(self.head_object(key).await?.map(|h| ObjectInfo {
            size: h.content_length().unwrap_or(0).max(0) as u64,
            content_type: h.content_type().map(str::to_owned),
            metadata: h
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| fail("delete", key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_etag_tells_its_part_count() {
        assert_eq!(
            etag_parts("\"9b2cf535f27731c974343645a3985328-5\""),
            Some(5)
        );
        assert_eq!(etag_parts("9b2cf535f27731c974343645a3985328-12"), Some(12));
        assert_eq!(etag_parts("\"9b2cf535f27731c974343645a3985328\""), None);
        assert_eq!(etag_parts(""), None);
    }

    #[test]
    fn s3_errors_are_sorted_by_who_must_act() {
        use StoreFailure::*;
        for (status, code, expected) in [
            (403, Some("AccessDenied"), Denied),
            (403, Some("InvalidAccessKeyId"), Denied),
            (404, Some("NoSuchBucket"), Denied),
            (301, None, Denied),
            (400, Some("MetadataTooLarge"), Rejected),
            (400, Some("EntityTooLarge"), Rejected),
            (400, Some("InvalidArgument"), Rejected),
            (400, Some("RequestTimeout"), Transient),
            (400, Some("ExpiredToken"), Transient),
            (503, Some("SlowDown"), Transient),
            (500, Some("InternalError"), Transient),
            (409, Some("OperationAborted"), Transient),
            (429, None, Transient),
        ] {
            assert_eq!(store_failure(status, code), expected, "{status} {code:?}");
        }
    }
}
