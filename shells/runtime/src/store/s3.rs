//! S3 (and S3-compatible servers) as the object store, through aws-sdk-s3.
//!
//! Credentials come from the SDK's default chain. With a custom endpoint (`AWS_ENDPOINT_URL`, for
//! moto, MinIO, R2…) addressing is path-style and checksums are computed only where an operation
//! requires them, which every S3-compatible server understands. Objects are written with one
//! `PutObject` each (no multipart: images are megabytes, and moto mis-answers multipart).

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{ObjectInfo, ObjectMeta, ObjectStore, check_key};
use crate::error::StoreFailure;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// Builds a client for `bucket`. Nothing is sent until the first call: a missing bucket or
    /// bad credentials show up as store errors there.
    pub async fn connect(bucket: &str, endpoint: Option<&str>, region: Option<&str>) -> S3Store {
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
                .operation_attempt_timeout(Duration::from_secs(30))
                .operation_timeout(Duration::from_secs(90))
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

impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<()> {
        check_key(key)?;
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
        req.send().await.map_err(|e| fail("put", key, e))?;
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
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(ObjectInfo {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                content_type: h.content_type().map(str::to_owned),
                metadata: h
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            })),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(fail("head", key, e)),
        }
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
