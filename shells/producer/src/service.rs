//! The `cloudimg.v1.ImageService` implementation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cloudimg_engine::{ErrorKind, Limits};
use cloudimg_runtime::amqp::{MAX_MESSAGE_BYTES, Publisher, Topology, job_headers};
use cloudimg_runtime::budget::{MemoryBudget, Reservation};
use cloudimg_runtime::jobs::{self, FailureMarker, JobId};
use cloudimg_runtime::proto::{
    self, GetJobReply, GetJobRequest, ImageJob, JobState, StagedObject, UploadReply, UploadRequest,
    image_job, upload_request,
};
use cloudimg_runtime::settings::Secret;
use cloudimg_runtime::store::{ObjectMeta, ObjectStore, Store};
use lapin::BasicProperties;
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::{Config, UploadBounds};

/// How long an upload waits for the broker link when it arrives mid-reconnect, before UNAVAILABLE.
const LINK_WAIT: Duration = Duration::from_secs(2);

/// The service: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: Publisher,
    store: Option<Arc<Store>>,
    topology: Topology,
    limits: Limits,
    stage_over_bytes: u64,
    token: Option<Secret>,
    bounds: UploadBounds,
    budget: MemoryBudget,
}

impl ImageService {
    pub fn new(
        config: &Config,
        publisher: Publisher,
        store: Option<Arc<Store>>,
        topology: Topology,
    ) -> ImageService {
        ImageService {
            inner: Arc::new(Inner {
                publisher,
                store,
                topology,
                limits: config.limits,
                stage_over_bytes: config.stage_over_bytes,
                token: config.token.clone(),
                bounds: config.upload_bounds,
                budget: MemoryBudget::new(config.memory_budget),
            }),
        }
    }
}

impl Inner {
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if token_matches(token, given) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or wrong bearer token (CLOUDIMG_TOKEN)",
            ))
        }
    }

    /// Receives the whole upload, refusing it as soon as it is known to be bad, or slow.
    async fn receive(
        &self,
        stream: &mut Streaming<UploadRequest>,
    ) -> Result<(proto::UploadMetadata, Held), Status> {
        let mut stream = Paced::new(stream, self.bounds);
        let meta = match stream.message().await? {
            Some(UploadRequest {
                part: Some(upload_request::Part::Metadata(meta)),
            }) => meta,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of an upload must carry the metadata",
                ));
            }
            None => return Err(Status::invalid_argument("empty upload: no messages")),
        };
        let max = self.limits.max_input_bytes;
        if meta.size > max {
            return Err(Status::resource_exhausted(format!(
                "upload of {} bytes is over the limit of {max} bytes",
                meta.size
            )));
        }
        // The declared size is a claim, not a reservation: the upload's share of the memory budget
        // grows only as bytes arrive, so a client declaring 64 MiB and sending nothing holds
        // nothing (see `Buffer`).
        let mut reservation = self.budget.empty();
        // The metadata is held for the whole upload and a file name can be megabytes: it counts.
        reservation
            .grow(meta.encoded_len() as u64)
            .map_err(over_budget)?;
        let mut buf = Buffer::new(reservation, meta.size);
        let mut sniffed = false;
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(upload_request::Part::Chunk(chunk)) => {
                    let total = buf.len() as u64 + chunk.len() as u64;
                    if total > max {
                        return Err(Status::resource_exhausted(format!(
                            "upload is over the limit of {max} bytes (received {total} so far)"
                        )));
                    }
                    buf.extend(&chunk, max)?;
                    if !sniffed && buf.len() >= cloudimg_engine::SNIFF_BYTES {
                        sniffed = true;
                        cloudimg_engine::sniff(&buf).map_err(engine_status)?;
                        // When the first chunk holds the header, a pixel bomb is refused now,
                        // before the rest is received. (Any other error on a prefix may be
                        // truncation: the full probe after the last chunk decides.)
                        if let Err(e @ cloudimg_engine::Error::OverLimit { .. }) =
                            cloudimg_engine::probe(&buf, &self.limits)
                        {
                            return Err(engine_status(e));
                        }
                    }
                }
                Some(upload_request::Part::Metadata(_)) => {
                    return Err(Status::invalid_argument(
                        "metadata may only be sent once, in the first message",
                    ));
                }
                None => {}
            }
        }
        if buf.is_empty() {
            return Err(Status::invalid_argument("empty upload: no image bytes"));
        }
        if meta.size != 0 && meta.size != buf.len() as u64 {
            return Err(Status::invalid_argument(format!(
                "upload declared {} bytes but sent {}",
                meta.size,
                buf.len()
            )));
        }
        Ok((meta, buf.freeze()))
    }

    async fn upload(&self, mut stream: Streaming<UploadRequest>) -> Result<UploadReply, Status> {
        let started = Instant::now();
        // A broker under a memory or disk alarm takes nothing: say so now, before receiving.
        if self.publisher.state().blocked {
            return Err(Status::unavailable(
                "the broker is blocked by a resource alarm; retry later",
            ));
        }
        // `held` keeps the upload's share of the memory budget until it is published or refused.
        let (meta, held) = self.receive(&mut stream).await?;
        let data = held.data.clone();
        metrics::histogram!("cloudimg_stage_seconds", "stage" => "receive")
            .record(started.elapsed().as_secs_f64());
        let wire_options = meta.options.unwrap_or_default();
        let options =
            jobs::engine_options(&wire_options, self.limits).map_err(Status::invalid_argument)?;
        // The header only: format, dimensions against the pixel limit. Bombs stop here.
        let info = cloudimg_engine::probe(&data, &self.limits).map_err(engine_status)?;

        let job_id = JobId::random();
        let output_key = job_id.result_key(options.format);
        let size = data.len() as u64;
        let staged = size > self.stage_over_bytes;
        let payload = if staged {
            let Some(store) = &self.store else {
                // A configuration gap, not the sender's fault: the same words as GetJob's.
                return Err(Status::failed_precondition(format!(
                    "upload of {size} bytes needs staging (over CLOUDIMG_STAGE_OVER_BYTES, {} \
                     bytes) but this producer has no object store (set BUCKET_NAME or \
                     CLOUDIMG_OUT_DIR)",
                    self.stage_over_bytes
                )));
            };
            let key = job_id.staging_key();
            let meta = ObjectMeta {
                content_type: info_mime(info.format),
                metadata: [("job-id".to_owned(), job_id.to_string())].into(),
            };
            let put_started = Instant::now();
            store.put(&key, data, &meta).await.map_err(|e| {
                tracing::warn!(%job_id, error = %e, "cannot stage upload");
                metrics::counter!("cloudimg_store_errors_total", "op" => "put").increment(1);
                Status::unavailable(format!("cannot stage the upload: {e}"))
            })?;
            metrics::histogram!("cloudimg_stage_seconds", "stage" => "staging")
                .record(put_started.elapsed().as_secs_f64());
            image_job::Payload::Staged(StagedObject { key, size })
        } else if size > MAX_MESSAGE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "upload of {size} bytes is too large to queue without a store"
            )));
        } else {
            image_job::Payload::Inline(data)
        };

        let job = ImageJob {
            job_id: job_id.to_string(),
            output_key: output_key.clone(),
            options: Some(wire_options),
            source_name: meta.file_name,
            payload: Some(payload),
            accepted_unix_ms: jobs::unix_ms(),
        };
        let body = job.encode_to_vec();
        let properties = BasicProperties::default()
            .with_content_type("application/x-protobuf".into())
            .with_message_id(job.job_id.as_str().into())
            .with_timestamp((job.accepted_unix_ms / 1000) as u64)
            .with_headers(job_headers(&job.job_id));
        let publish_started = Instant::now();
        let published = self
            .publisher
            .publish(&self.topology.queue, &body, properties, LINK_WAIT)
            .await;
        metrics::histogram!("cloudimg_stage_seconds", "stage" => "publish")
            .record(publish_started.elapsed().as_secs_f64());
        if let Err(e) = published {
            // Only a definite refusal frees the staged upload: after an unconfirmed publish the
            // broker may hold the job, and its worker will need the staged bytes.
            let keep = e.broker_may_hold();
            tracing::warn!(%job_id, error = %e, staged, kept_staged = staged && keep, "job not accepted by the broker");
            if staged
                && !keep
                && let Some(store) = &self.store
            {
                let _ = store.delete(&job_id.staging_key()).await;
            }
            return Err(Status::unavailable(if keep {
                format!("{e}: job {job_id} may still run")
            } else {
                e.to_string()
            }));
        }
        tracing::info!(
            %job_id,
            bytes = size,
            staged,
            width = info.width,
            height = info.height,
            "job accepted"
        );
        metrics::counter!("cloudimg_upload_bytes_total").increment(size);
        if staged {
            metrics::counter!("cloudimg_uploads_staged_total").increment(1);
        }
        metrics::histogram!("cloudimg_upload_seconds").record(started.elapsed().as_secs_f64());
        Ok(UploadReply {
            job_id: job.job_id,
            key: output_key,
        })
    }

    async fn get_job(&self, request: GetJobRequest) -> Result<GetJobReply, Status> {
        let job_id = JobId::parse(&request.job_id).map_err(Status::invalid_argument)?;
        let Some(store) = &self.store else {
            return Err(Status::failed_precondition(
                "this producer has no object store (set BUCKET_NAME or CLOUDIMG_OUT_DIR) to answer GetJob",
            ));
        };
        let candidates = [
            job_id.result_key(cloudimg_engine::OutputFormat::Jpeg),
            job_id.result_key(cloudimg_engine::OutputFormat::Png),
        ];
        let keys: Vec<&String> = if request.key.is_empty() {
            candidates.iter().collect()
        } else {
            match candidates.iter().find(|k| **k == request.key) {
                Some(k) => vec![k],
                None => {
                    return Err(Status::invalid_argument(format!(
                        "key {:?} is not a result key of job {job_id}",
                        request.key
                    )));
                }
            }
        };
        let unavailable = |e: cloudimg_runtime::Error| Status::unavailable(e.to_string());
        for key in keys {
            if store.head(key).await.map_err(unavailable)?.is_some() {
                return Ok(GetJobReply {
                    job_id: job_id.to_string(),
                    state: JobState::Done as i32,
                    key: key.clone(),
                    error: String::new(),
                });
            }
        }
        if let Some(marker) = store
            .get(&job_id.failure_key())
            .await
            .map_err(unavailable)?
        {
            let error = serde_json::from_slice::<FailureMarker>(&marker)
                .map(|m| m.error)
                .unwrap_or_else(|e| format!("failed (unreadable failure marker: {e})"));
            return Ok(GetJobReply {
                job_id: job_id.to_string(),
                state: JobState::Failed as i32,
                key: String::new(),
                error,
            });
        }
        Ok(GetJobReply {
            job_id: job_id.to_string(),
            state: JobState::Pending as i32,
            key: String::new(),
            error: String::new(),
        })
    }
}

/// Whether `given` is the token, in time that reveals neither how much of it matched nor its
/// length: both sides are hashed (SHA-256) to 32 bytes and the digests compared without an early
/// exit. A byte-wise comparison would have to stop or branch at the token's length; hashing first
/// makes every comparison the same 32 bytes, and the time spent hashing depends only on the length
/// of what the caller sent, which the caller knows already. (An HMAC under a per-process key would
/// also hide the digest's prefix, but a matching SHA-256 prefix tells an attacker nothing about the
/// token without a preimage.)
fn token_matches(token: &Secret, given: &str) -> bool {
    use sha2::{Digest, Sha256};
    let want = Sha256::digest(token.expose().as_bytes());
    let got = Sha256::digest(given.as_bytes());
    let difference = want
        .iter()
        .zip(got.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

fn over_budget(e: cloudimg_runtime::Error) -> Status {
    Status::resource_exhausted(format!("{e} (CLOUDIMG_MEMORY_BUDGET)"))
}

/// An upload's bytes as they arrive, in one buffer. Its capacity is the size the client declared
/// (within the upload limit, checked before), so each byte is copied once, as it arrives; a client
/// that declared nothing, or sends more than it declared, gets a buffer that grows by doubling.
/// The memory budget holds what has arrived (and the metadata): the capacity beyond it is address
/// space the kernel backs with memory only when it is written, so a client that declares a large
/// upload and stalls holds only what it sent.
struct Buffer {
    bytes: BytesMut,
    reservation: Reservation,
    /// What the reservation held before the first byte (the metadata).
    base: u64,
    declared: usize,
}

impl Buffer {
    fn new(reservation: Reservation, declared: u64) -> Buffer {
        Buffer {
            bytes: BytesMut::new(),
            base: reservation.bytes(),
            reservation,
            declared: usize::try_from(declared).unwrap_or(usize::MAX),
        }
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends `chunk` once the budget holds it (RESOURCE_EXHAUSTED when it cannot). The buffer
    /// is allocated at the declared size on the first chunk, and grows by doubling (never past
    /// `max`, the upload limit) only past it; while a growth step copies, the old buffer (at
    /// most half the new one) still lives: the default budget's share leaves room for that.
    fn extend(&mut self, chunk: &[u8], max: u64) -> Result<(), Status> {
        let needed = self.bytes.len() + chunk.len();
        let held = self.reservation.bytes();
        if self.base + needed as u64 > held {
            self.reservation
                .grow(self.base + needed as u64 - held)
                .map_err(over_budget)?;
            metrics::gauge!("cloudimg_upload_bytes_reserved")
                .set(self.reservation.budget().in_use() as f64);
        }
        let capacity = self.bytes.capacity();
        if needed > capacity {
            let target = if capacity == 0 && self.declared >= needed {
                self.declared
            } else {
                (capacity * 2).max(64 << 10).min(max as usize).max(needed)
            };
            let mut grown = BytesMut::with_capacity(target);
            grown.extend_from_slice(&self.bytes);
            self.bytes = grown;
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn freeze(self) -> Held {
        Held {
            data: self.bytes.freeze(),
            _reservation: self.reservation,
        }
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A received upload with its share of the memory budget, released when this is dropped.
struct Held {
    data: Bytes,
    _reservation: Reservation,
}

/// An upload's stream under its time bounds: each message must arrive within the idle bound and
/// the whole upload within the total one, else DEADLINE_EXCEEDED. Returning that ends the call, so
/// tonic closes the stream and the buffer received so far is dropped with it.
struct Paced<'a> {
    stream: &'a mut Streaming<UploadRequest>,
    bounds: UploadBounds,
    deadline: tokio::time::Instant,
}

impl<'a> Paced<'a> {
    fn new(stream: &'a mut Streaming<UploadRequest>, bounds: UploadBounds) -> Paced<'a> {
        Paced {
            stream,
            bounds,
            deadline: tokio::time::Instant::now() + bounds.total,
        }
    }

    async fn message(&mut self) -> Result<Option<UploadRequest>, Status> {
        let idle_deadline = tokio::time::Instant::now() + self.bounds.idle;
        match tokio::time::timeout_at(idle_deadline.min(self.deadline), self.stream.message()).await
        {
            Ok(message) => message,
            Err(_) if idle_deadline < self.deadline => Err(Status::deadline_exceeded(format!(
                "the upload sent nothing for {:?} (CLOUDIMG_UPLOAD_IDLE_TIMEOUT)",
                self.bounds.idle
            ))),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the upload took longer than {:?} (CLOUDIMG_UPLOAD_TIMEOUT)",
                self.bounds.total
            ))),
        }
    }
}

fn info_mime(format: cloudimg_engine::Format) -> String {
    format.mime_type().into()
}

/// Engine errors seen by the producer are the sender's: over a limit, or not an image we take.
fn engine_status(e: cloudimg_engine::Error) -> Status {
    match e.kind() {
        ErrorKind::OverLimit => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

/// The `outcome` label of a refused call.
fn outcome(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::ResourceExhausted => "over_limit",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::DeadlineExceeded => "timeout",
        _ => "error",
    }
}

#[tonic::async_trait]
impl proto::image_service_server::ImageService for ImageService {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadReply>, Status> {
        let result = match self.inner.authorize(request.metadata()) {
            Ok(()) => self.inner.upload(request.into_inner()).await,
            Err(status) => Err(status),
        };
        metrics::gauge!("cloudimg_upload_bytes_reserved").set(self.inner.budget.in_use() as f64);
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(status) => {
                tracing::info!(code = ?status.code(), reason = status.message(), "upload refused");
                outcome(status.code())
            }
        };
        metrics::counter!("cloudimg_uploads_total", "outcome" => outcome).increment(1);
        result.map(Response::new)
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobReply>, Status> {
        let result = match self.inner.authorize(request.metadata()) {
            Ok(()) => self.inner.get_job(request.into_inner()).await,
            Err(status) => Err(status),
        };
        let state = match &result {
            Ok(reply) => match reply.state() {
                JobState::Done => "done",
                JobState::Failed => "failed",
                _ => "pending",
            },
            Err(status) => outcome(status.code()),
        };
        metrics::counter!("cloudimg_get_job_total", "state" => state).increment(1);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_matches_only_itself_whatever_the_length_given() {
        let token = Secret::new(Some("s3cret-token")).unwrap();
        assert!(token_matches(&token, "s3cret-token"));
        for wrong in [
            "",
            "s",
            "s3cret-toke",
            "s3cret-token ",
            "s3cret-tokeN",
            "x".repeat(4096).as_str(),
        ] {
            assert!(!token_matches(&token, wrong), "{wrong:?}");
        }
    }
}
