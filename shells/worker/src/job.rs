//! One delivery, from message to ack.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudimg_engine::{Converted, Options};
use cloudimg_runtime::amqp::{self, HEADER_ERROR, HEADER_ERROR_KIND, HEADER_JOB_ID};
use cloudimg_runtime::backoff::Backoff;
use cloudimg_runtime::jobs::{self, FailureMarker, JobId};
use cloudimg_runtime::proto::{ImageJob, image_job};
use cloudimg_runtime::store::{ObjectMeta, ObjectStore};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::Context;

/// How a job ended, from the queue's point of view.
enum Outcome {
    /// The result is in the store: ack.
    Done {
        key: String,
        engine: Option<Duration>,
        /// When the producer accepted the job (ms since the epoch; 0 when unknown).
        accepted_unix_ms: i64,
    },
    /// Permanent: dead-letter with the reason, then ack.
    Poison {
        job_id: String,
        kind: &'static str,
        error: String,
        source_name: String,
    },
    /// A transient error outlived the link or the shutdown: give the job back to the broker.
    Requeue(String),
}

fn poison(job_id: &str, kind: &'static str, error: impl Into<String>) -> Outcome {
    Outcome::Poison {
        job_id: job_id.to_owned(),
        kind,
        error: error.into(),
        source_name: String::new(),
    }
}

/// Counts the jobs a worker holds, for `cloudimg_jobs_in_flight`.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        metrics::gauge!("cloudimg_jobs_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("cloudimg_jobs_in_flight").decrement(1.0);
    }
}

fn job_outcome(outcome: &'static str) {
    metrics::counter!("cloudimg_jobs_total", "outcome" => outcome).increment(1);
}

/// Records `time` under `cloudimg_stage_seconds{stage}`.
fn record_stage(stage: impl Into<metrics::SharedString>, time: Duration) {
    metrics::histogram!("cloudimg_stage_seconds", "stage" => stage.into())
        .record(time.as_secs_f64());
}

/// Handles one delivery to the end: ack, dead-letter then ack, or nack for redelivery.
pub(crate) async fn handle(
    ctx: Arc<Context>,
    delivery: Delivery,
    dead_letters: Channel,
    link: CancellationToken,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let _in_flight = InFlight::enter();
    let Delivery {
        data,
        acker,
        properties,
        redelivered,
        ..
    } = delivery;
    let body = Bytes::from(data);
    let retry = Retry {
        link: &link,
        shutdown: &shutdown,
    };
    let outcome = process(&ctx, body.clone(), redelivered, &retry).await;
    match outcome {
        Outcome::Done {
            key,
            engine,
            accepted_unix_ms,
        } => {
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(%key, error = %e, "ack failed; the job will be redelivered");
                job_outcome("ack_failed");
                return;
            }
            job_outcome(if engine.is_some() {
                "done"
            } else {
                "already_done"
            });
            metrics::histogram!("cloudimg_job_seconds").record(started.elapsed().as_secs_f64());
            tracing::info!(
                %key,
                ms = started.elapsed().as_millis() as u64,
                engine_ms = engine.map(|d| d.as_millis() as u64),
                since_accepted_ms = (accepted_unix_ms > 0)
                    .then(|| jobs::unix_ms().saturating_sub(accepted_unix_ms)),
                "job done"
            );
        }
        Outcome::Requeue(reason) => {
            tracing::warn!(%reason, "job handed back to the broker");
            job_outcome("requeued");
            let _ = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
        Outcome::Poison {
            mut job_id,
            kind,
            error,
            source_name,
        } => {
            if job_id.is_empty() {
                // An unusable message: keep the id the producer put in the header, if any.
                job_id = amqp::header_str(properties.headers().as_ref(), HEADER_JOB_ID)
                    .unwrap_or_default();
            }
            let marked = mark_failed(&ctx, &job_id, kind, &error, &source_name, &retry).await;
            if let Err(reason) = marked {
                tracing::warn!(%job_id, %reason, "cannot write the failure marker; requeueing");
                job_outcome("requeued");
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await;
                return;
            }
            let dead_queue = ctx.topology.dead_letter_queue();
            let mut headers = properties.headers().clone().unwrap_or_default();
            if !job_id.is_empty() {
                headers.insert(HEADER_JOB_ID.into(), amqp::long_string(&job_id));
            }
            headers.insert(
                HEADER_ERROR.into(),
                amqp::long_string(&truncate(&error, 2000)),
            );
            headers.insert(HEADER_ERROR_KIND.into(), amqp::long_string(kind));
            let published = amqp::publish_confirmed(
                &dead_letters,
                &dead_queue,
                &body,
                properties.clone().with_headers(headers),
                amqp::DEFAULT_CONFIRM_TIMEOUT,
            )
            .await;
            if let Err(e) = &published {
                tracing::warn!(%job_id, error = %e, "dead-letter publish failed; rejecting instead");
            }
            let confirmed = published.is_ok();
            let result = if confirmed {
                acker.ack(BasicAckOptions::default()).await
            } else {
                // Let the broker dead-letter it instead (the work queue's dead-letter route keeps
                // the job id header; the reason is in the marker).
                acker.reject(BasicRejectOptions { requeue: false }).await
            };
            if let Err(e) = result {
                tracing::warn!(%job_id, error = %e, "ack after dead-lettering failed");
            }
            job_outcome("dead_lettered");
            metrics::counter!("cloudimg_job_errors_total", "kind" => kind).increment(1);
            tracing::error!(%job_id, kind, %error, "job dead-lettered");
        }
    }
}

async fn process(ctx: &Context, body: Bytes, redelivered: bool, retry: &Retry<'_>) -> Outcome {
    let job = match ImageJob::decode(body) {
        Ok(job) => job,
        Err(e) => return poison("", "job", format!("not an ImageJob message: {e}")),
    };
    let Ok(job_id) = JobId::parse(&job.job_id) else {
        return poison(&job.job_id, "job", format!("bad job id {:?}", job.job_id));
    };
    let options = match jobs::engine_options(&job.options.unwrap_or_default(), ctx.limits) {
        Ok(o) => o,
        Err(e) => return poison(&job.job_id, "job", e),
    };
    if job.accepted_unix_ms > 0 {
        let lag_ms = jobs::unix_ms().saturating_sub(job.accepted_unix_ms).max(0);
        metrics::histogram!("cloudimg_queue_lag_seconds").record(lag_ms as f64 / 1000.0);
    }
    let key = job_id.result_key(options.format);
    if job.output_key != key {
        return poison(
            &job.job_id,
            "job",
            format!(
                "output key {:?} does not belong to job {job_id} (expected {key:?})",
                job.output_key
            ),
        );
    }
    let with_name = |outcome: Outcome| match outcome {
        Outcome::Poison {
            job_id,
            kind,
            error,
            ..
        } => Outcome::Poison {
            job_id,
            kind,
            error,
            source_name: job.source_name.clone(),
        },
        other => other,
    };

    // A redelivery of a job that already finished (the ack was lost): nothing to do again.
    if redelivered {
        match retry.run("head", || ctx.store.head(&key)).await {
            Ok(Some(_)) => {
                cleanup_staged(ctx, &job_id, &job.payload).await;
                return Outcome::Done {
                    key,
                    engine: None,
                    accepted_unix_ms: job.accepted_unix_ms,
                };
            }
            Ok(None) => {}
            Err(reason) => return Outcome::Requeue(reason),
        }
    }

    let data = match &job.payload {
        Some(image_job::Payload::Inline(data)) => data.clone(),
        Some(image_job::Payload::Staged(staged)) => {
            if staged.key != job_id.staging_key() {
                return with_name(poison(
                    &job.job_id,
                    "job",
                    format!(
                        "staged key {:?} does not belong to job {job_id}",
                        staged.key
                    ),
                ));
            }
            let fetch_started = Instant::now();
            match retry.run("get", || ctx.store.get(&staged.key)).await {
                Ok(Some(data)) => {
                    record_stage("fetch", fetch_started.elapsed());
                    data
                }
                Ok(None) => {
                    // Either the job finished before (and cleaned up), or the upload is gone.
                    return match retry.run("head", || ctx.store.head(&key)).await {
                        Ok(Some(_)) => Outcome::Done {
                            key,
                            engine: None,
                            accepted_unix_ms: job.accepted_unix_ms,
                        },
                        Ok(None) => with_name(poison(
                            &job.job_id,
                            "job",
                            format!("staged upload {} is missing", staged.key),
                        )),
                        Err(reason) => Outcome::Requeue(reason),
                    };
                }
                Err(reason) => return Outcome::Requeue(reason),
            }
        }
        None => return with_name(poison(&job.job_id, "job", "the job carries no image")),
    };

    metrics::counter!("cloudimg_input_bytes_total").increment(data.len() as u64);
    let converted = match convert_on_pool(ctx, data, options).await {
        Ok(c) => c,
        Err(e) => return with_name(poison(&job.job_id, e.kind().as_str(), e.to_string())),
    };
    let engine = converted.stages;
    let engine_time = cloudimg_engine::Stage::ALL
        .iter()
        .map(|s| engine.get(*s))
        .sum::<Duration>();
    for stage in cloudimg_engine::Stage::ALL {
        let time = engine.get(stage);
        if !time.is_zero() {
            // The engine's own stage name as a label: "entropy decode" -> "entropy_decode".
            record_stage(stage.name().replace(' ', "_"), time);
        }
    }
    let (width, height) = converted.displayed_size();
    let meta = ObjectMeta {
        content_type: converted.format.mime_type().to_owned(),
        metadata: [
            (
                "source-name".to_owned(),
                jobs::percent_encode(&job.source_name),
            ),
            ("job-id".to_owned(), job.job_id.clone()),
            ("width".to_owned(), width.to_string()),
            ("height".to_owned(), height.to_string()),
        ]
        .into(),
    };
    let output = Bytes::from(converted.data);
    let put_started = Instant::now();
    if let Err(reason) = retry
        .run("put", || ctx.store.put(&key, output.clone(), &meta))
        .await
    {
        return Outcome::Requeue(reason);
    }
    record_stage("store", put_started.elapsed());
    metrics::counter!("cloudimg_output_bytes_total").increment(output.len() as u64);
    cleanup_staged(ctx, &job_id, &job.payload).await;
    Outcome::Done {
        key,
        engine: Some(engine_time),
        accepted_unix_ms: job.accepted_unix_ms,
    }
}

/// Runs the engine on the pool, never on a tokio thread; a panic becomes an internal error (and
/// so a dead-lettered job) instead of taking the worker down.
async fn convert_on_pool(
    ctx: &Context,
    data: Bytes,
    options: Options,
) -> Result<Converted, cloudimg_engine::Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    ctx.pool.spawn(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            cloudimg_engine::convert(&data, &options)
        }))
        .unwrap_or_else(|_| {
            Err(cloudimg_engine::Error::Internal(
                "the engine panicked on this input".into(),
            ))
        });
        drop(data);
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_else(|_| {
        Err(cloudimg_engine::Error::Internal(
            "the engine task vanished".into(),
        ))
    })
}

/// Deletes a staged upload once its result exists (best effort: a leftover is harmless, and a
/// lifecycle rule on `staging/` collects it).
async fn cleanup_staged(ctx: &Context, job_id: &JobId, payload: &Option<image_job::Payload>) {
    if let Some(image_job::Payload::Staged(_)) = payload
        && let Err(e) = ctx.store.delete(&job_id.staging_key()).await
    {
        tracing::warn!(%job_id, error = %e, "cannot delete the staged upload");
    }
}

async fn mark_failed(
    ctx: &Context,
    job_id: &str,
    kind: &str,
    error: &str,
    source_name: &str,
    retry: &Retry<'_>,
) -> Result<(), String> {
    let Ok(id) = JobId::parse(job_id) else {
        return Ok(()); // no usable id: nobody can ask about it; the dead-letter queue has it
    };
    let marker = FailureMarker {
        job_id: job_id.to_owned(),
        kind: kind.to_owned(),
        error: error.to_owned(),
        source_name: source_name.to_owned(),
        failed_unix_ms: jobs::unix_ms(),
    };
    let body = Bytes::from(serde_json::to_vec(&marker).unwrap_or_default());
    let meta = ObjectMeta {
        content_type: "application/json".into(),
        metadata: [("job-id".to_owned(), job_id.to_owned())].into(),
    };
    let key = id.failure_key();
    retry
        .run("put", || ctx.store.put(&key, body.clone(), &meta))
        .await
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Retries transient store errors with backoff until they succeed, the link is lost or shutdown
/// begins (then the job goes back to the broker: nothing transient is ever dead-lettered).
struct Retry<'a> {
    link: &'a CancellationToken,
    shutdown: &'a CancellationToken,
}

impl Retry<'_> {
    async fn run<T, F, Fut>(&self, what: &'static str, mut attempt: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = cloudimg_runtime::Result<T>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    metrics::counter!("cloudimg_store_errors_total", "op" => what).increment(1);
                    if self.link.is_cancelled() || self.shutdown.is_cancelled() {
                        return Err(e.to_string());
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        op = what,
                        error = %e,
                        attempt = backoff.attempts(),
                        retry_in_ms = delay.as_millis() as u64,
                        "store error; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.link.cancelled() => return Err(e.to_string()),
                        _ = self.shutdown.cancelled() => return Err(e.to_string()),
                    }
                }
            }
        }
    }
}
