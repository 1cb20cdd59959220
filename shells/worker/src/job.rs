//! One delivery, from message to ack.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudimg_engine::{Converted, Options};
use cloudimg_runtime::StoreFailure;
use cloudimg_runtime::amqp::{self, HEADER_ERROR, HEADER_ERROR_KIND, HEADER_JOB_ID};
use cloudimg_runtime::backoff::Backoff;
use cloudimg_runtime::budget::Reservation;
use cloudimg_runtime::jobs::{self, FailureKind, FailureMarker, JobId};
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
    Failed(Failure),
    /// Not this job's fault, and not settled here (the link or the shutdown came first, or the
    /// store refuses the worker itself): give the job back to the broker.
    Requeue(String),
}

/// A job that failed for good: what its dead letter and its `failed/` marker say.
struct Failure {
    job_id: String,
    kind: FailureKind,
    error: String,
    source_name: String,
}

fn failed(job_id: &str, kind: FailureKind, error: impl Into<String>) -> Outcome {
    Outcome::Failed(Failure {
        job_id: job_id.to_owned(),
        kind,
        error: error.into(),
        source_name: String::new(),
    })
}

/// The outcome when a store call could not be completed.
fn store_stopped(job_id: &str, stop: Stop) -> Outcome {
    match stop {
        Stop::Rejected(reason) => failed(job_id, FailureKind::Store, reason),
        Stop::Released(reason) => Outcome::Requeue(reason),
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

/// A nack that puts the delivery back in the queue.
const REQUEUE: BasicNackOptions = BasicNackOptions {
    requeue: true,
    multiple: false,
};

/// Settles a delivery with the broker (`settlement`: its ack, nack or reject), unless the link
/// is lost first. On a lost connection lapin's settlement may never resolve, and a job waiting on
/// it held the session's end, and so the reconnection and the shutdown, for good; the broker
/// redelivers every delivery its closed channel left unsettled.
async fn settle<T>(
    link: &CancellationToken,
    settlement: impl Future<Output = lapin::Result<T>>,
) -> Result<T, String> {
    tokio::select! {
        biased;
        _ = link.cancelled() => Err("the broker link was lost".into()),
        settled = settlement => settled.map_err(|e| e.to_string()),
    }
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
        ctx: &ctx,
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
            if let Err(e) = settle(&link, acker.ack(BasicAckOptions::default())).await {
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
            let _ = settle(&link, acker.nack(REQUEUE)).await;
        }
        Outcome::Failed(Failure {
            mut job_id,
            kind,
            error,
            source_name,
        }) => {
            if job_id.is_empty() {
                // An unusable message: keep the id the producer put in the header, if any.
                job_id = amqp::header_str(properties.headers().as_ref(), HEADER_JOB_ID)
                    .unwrap_or_default();
            }
            let marked = mark_failed(&ctx, &job_id, kind, &error, &source_name, &retry).await;
            if let Err(Stop::Released(reason)) = marked {
                tracing::warn!(%job_id, %reason, "cannot write the failure marker; requeueing");
                job_outcome("requeued");
                let _ = settle(&link, acker.nack(REQUEUE)).await;
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
            headers.insert(HEADER_ERROR_KIND.into(), amqp::long_string(kind.as_str()));
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
                settle(&link, acker.ack(BasicAckOptions::default())).await
            } else {
                // Let the broker dead-letter it instead (the work queue's dead-letter route keeps
                // the job id header; the reason is in the marker).
                settle(&link, acker.reject(BasicRejectOptions { requeue: false })).await
            };
            match result {
                Err(e) => tracing::warn!(%job_id, error = %e, "ack after dead-lettering failed"),
                // Settled for good (engine errors are permanent, never retried): its staged
                // upload can go. With nearly every upload staged, keeping them would leave one
                // object per dead letter until the lifecycle rule.
                Ok(_) => {
                    if let Ok(job) = ImageJob::decode(body.clone())
                        && let Ok(id) = JobId::parse(&job.job_id)
                    {
                        cleanup_staged(&ctx, &id, &job.payload).await;
                    }
                }
            }
            job_outcome("dead_lettered");
            metrics::counter!("cloudimg_job_errors_total", "kind" => kind.as_str()).increment(1);
            tracing::error!(%job_id, kind = kind.as_str(), %error, "job dead-lettered");
        }
    }
}

async fn process(ctx: &Context, body: Bytes, redelivered: bool, retry: &Retry<'_>) -> Outcome {
    let job = match ImageJob::decode(body) {
        Ok(job) => job,
        Err(e) => {
            return failed(
                "",
                FailureKind::BadMessage,
                format!("not an ImageJob message: {e}"),
            );
        }
    };
    let Ok(job_id) = JobId::parse(&job.job_id) else {
        return failed(
            &job.job_id,
            FailureKind::BadMessage,
            format!("bad job id {:?}", job.job_id),
        );
    };
    let options = match jobs::engine_options(&job.options.unwrap_or_default(), ctx.limits) {
        Ok(o) => o,
        Err(e) => return failed(&job.job_id, FailureKind::BadMessage, e),
    };
    if job.accepted_unix_ms > 0 {
        let lag_ms = jobs::unix_ms().saturating_sub(job.accepted_unix_ms).max(0);
        metrics::histogram!("cloudimg_queue_lag_seconds").record(lag_ms as f64 / 1000.0);
    }
    let key = job_id.result_key(options.format);
    if job.output_key != key {
        return failed(
            &job.job_id,
            FailureKind::BadMessage,
            format!(
                "output key {:?} does not belong to job {job_id} (expected {key:?})",
                job.output_key
            ),
        );
    }
    let with_name = |outcome: Outcome| match outcome {
        Outcome::Failed(failure) => Outcome::Failed(Failure {
            source_name: job.source_name.clone(),
            ..failure
        }),
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
            Err(stop) => return with_name(store_stopped(&job.job_id, stop)),
        }
    }

    let data = match &job.payload {
        Some(image_job::Payload::Inline(data)) => data.clone(),
        Some(image_job::Payload::Staged(staged)) => {
            if staged.key != job_id.staging_key() {
                return with_name(failed(
                    &job.job_id,
                    FailureKind::BadMessage,
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
                        Ok(None) => with_name(failed(
                            &job.job_id,
                            FailureKind::BadMessage,
                            format!("staged upload {} is missing", staged.key),
                        )),
                        Err(stop) => with_name(store_stopped(&job.job_id, stop)),
                    };
                }
                Err(stop) => return with_name(store_stopped(&job.job_id, stop)),
            }
        }
        None => {
            return with_name(failed(
                &job.job_id,
                FailureKind::BadMessage,
                "the job carries no image",
            ));
        }
    };

    metrics::counter!("cloudimg_input_bytes_total").increment(data.len() as u64);
    let estimate = match cloudimg_engine::estimate(&data, &options) {
        Ok(estimate) => estimate,
        Err(e) => return with_name(failed(&job.job_id, e.kind().into(), e.to_string())),
    };
    let needed = estimate.peak_bytes + data.len() as u64;
    let reservation = tokio::select! {
        reserved = ctx.budget.reserve(needed) => match reserved {
            Ok(reservation) => reservation,
            Err(over) => {
                return with_name(failed(
                    &job.job_id,
                    FailureKind::OverBudget,
                    format!("the conversion {over} (CLOUDIMG_MEMORY_BUDGET)"),
                ));
            }
        },
        _ = retry.link.cancelled() => return Outcome::Requeue("link lost while waiting for memory".into()),
        _ = retry.shutdown.cancelled() => return Outcome::Requeue("shutdown while waiting for memory".into()),
    };
    let converted = match convert_on_pool(ctx, data, options, reservation).await {
        Ok(c) => c,
        Err(failure) => {
            let (kind, error) = failure.describe();
            return with_name(failed(&job.job_id, kind, error));
        }
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
                jobs::source_name_metadata(&job.source_name),
            ),
            ("job-id".to_owned(), job.job_id.clone()),
            ("width".to_owned(), width.to_string()),
            ("height".to_owned(), height.to_string()),
        ]
        .into(),
    };
    let output = Bytes::from(converted.data);
    let put_started = Instant::now();
    if let Err(stop) = retry
        .run("put", || ctx.store.put(&key, output.clone(), &meta))
        .await
    {
        return with_name(store_stopped(&job.job_id, stop));
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

/// Why a conversion produced nothing.
enum ConvertFailure {
    Engine(cloudimg_engine::Error),
    TimedOut(Duration),
}

impl ConvertFailure {
    fn describe(&self) -> (FailureKind, String) {
        match self {
            ConvertFailure::Engine(e) => (e.kind().into(), e.to_string()),
            ConvertFailure::TimedOut(limit) => (
                FailureKind::Timeout,
                format!(
                    "the conversion took longer than CLOUDIMG_JOB_TIMEOUT ({} s)",
                    limit.as_secs_f64()
                ),
            ),
        }
    }
}

/// Runs the engine on the pool, never on a tokio thread, for at most the job timeout; a panic
/// becomes an internal error (and so a dead-lettered job) instead of taking the worker down.
async fn convert_on_pool(
    ctx: &Context,
    data: Bytes,
    options: Options,
    reservation: Reservation,
) -> Result<Converted, ConvertFailure> {
    let cancel = cloudimg_engine::Cancel::new();
    let budget = ctx.budget.clone();
    metrics::gauge!("cloudimg_memory_reserved_bytes").set(budget.in_use() as f64);
    let rx = spawn_caught(&ctx.pool, {
        let cancel = cancel.clone();
        move || {
            let held = Held {
                data,
                reservation: Some(reservation),
                budget,
            };
            cloudimg_engine::convert_cancellable(&held.data, &options, &cancel)
        }
    });
    match tokio::time::timeout(ctx.job_timeout, rx).await {
        Ok(Ok(result)) => result.map_err(ConvertFailure::Engine),
        Ok(Err(_)) => Err(ConvertFailure::Engine(cloudimg_engine::Error::Internal(
            "the engine task vanished".into(),
        ))),
        Err(_) => {
            // The engine sees the flag at its next scan or row and frees its memory then; the
            // reservation is held until it has.
            cancel.cancel();
            Err(ConvertFailure::TimedOut(ctx.job_timeout))
        }
    }
}

/// A conversion's input and memory reservation, released on the pool thread as soon as the
/// engine is done with them (returned or panicked), before the job is answered.
struct Held {
    data: Bytes,
    reservation: Option<Reservation>,
    budget: cloudimg_runtime::budget::MemoryBudget,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.data = Bytes::new();
        drop(self.reservation.take());
        metrics::gauge!("cloudimg_memory_reserved_bytes").set(self.budget.in_use() as f64);
    }
}

/// Runs `work` on the pool and answers through a oneshot; a panic in it becomes
/// [`cloudimg_engine::Error::Internal`] (kind `internal`, dead-lettered like any engine error)
/// instead of an unanswered job, and the pool thread lives on.
fn spawn_caught<T, F>(
    pool: &cloudimg_engine::batch::Pool,
    work: F,
) -> tokio::sync::oneshot::Receiver<Result<T, cloudimg_engine::Error>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, cloudimg_engine::Error> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.spawn(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
            Err(cloudimg_engine::Error::Internal(
                "the engine panicked on this input".into(),
            ))
        });
        let _ = tx.send(result);
    });
    rx
}

/// Deletes a staged upload once its result exists or its job is dead-lettered (best effort: a
/// leftover is harmless, and a lifecycle rule on `staging/` collects it).
async fn cleanup_staged(ctx: &Context, job_id: &JobId, payload: &Option<image_job::Payload>) {
    if let Some(image_job::Payload::Staged(_)) = payload
        && let Err(e) = ctx.store.delete(&job_id.staging_key()).await
    {
        tracing::warn!(%job_id, error = %e, "cannot delete the staged upload");
    }
}

/// Writes the `failed/` marker. A marker the store rejects for good is skipped (the dead letter
/// still carries the reason); only a released job (link, shutdown, access) stops the
/// dead-lettering.
async fn mark_failed(
    ctx: &Context,
    job_id: &str,
    kind: FailureKind,
    error: &str,
    source_name: &str,
    retry: &Retry<'_>,
) -> Result<(), Stop> {
    let Ok(id) = JobId::parse(job_id) else {
        return Ok(()); // no usable id: nobody can ask about it; the dead-letter queue has it
    };
    let marker = FailureMarker {
        job_id: job_id.to_owned(),
        kind: kind.as_str().to_owned(),
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
    match retry
        .run("put", || ctx.store.put(&key, body.clone(), &meta))
        .await
    {
        Err(Stop::Rejected(reason)) => {
            tracing::warn!(%job_id, %reason, "the store refuses the failure marker; dead-lettering without it");
            Ok(())
        }
        other => other,
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Why a store call gave up.
enum Stop {
    /// The store refuses this job's object for good ([`StoreFailure::Rejected`], tried
    /// [`REJECTED_TRIES`] times): the job fails with kind `store`.
    Rejected(String),
    /// The link was lost, shutdown began, or the store refuses the worker itself
    /// ([`StoreFailure::Denied`], reported to [`crate::Readiness`]): the job goes back to the
    /// broker, nothing is dead-lettered.
    Released(String),
}

/// Tries before a rejection is believed: one more than a request that raced a configuration
/// change would need.
const REJECTED_TRIES: u32 = 3;

/// Retries transient store errors with backoff until they succeed, the link is lost or shutdown
/// begins; a rejection is retried [`REJECTED_TRIES`] times, an access denial not at all.
struct Retry<'a> {
    ctx: &'a Context,
    link: &'a CancellationToken,
    shutdown: &'a CancellationToken,
}

impl Retry<'_> {
    async fn run<T, F, Fut>(&self, what: &'static str, mut attempt: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = cloudimg_runtime::Result<T>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut rejections = 0;
        loop {
            let e = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let class = e.store_failure();
            metrics::counter!("cloudimg_store_errors_total", "op" => what).increment(1);
            match class {
                StoreFailure::Denied => {
                    self.ctx.readiness.store_denied(&e);
                    return Err(Stop::Released(e.to_string()));
                }
                StoreFailure::Rejected => {
                    rejections += 1;
                    if rejections >= REJECTED_TRIES {
                        return Err(Stop::Rejected(e.to_string()));
                    }
                }
                StoreFailure::Transient => {}
            }
            if self.link.is_cancelled() || self.shutdown.is_cancelled() {
                return Err(Stop::Released(e.to_string()));
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                op = what,
                error = %e,
                class = ?class,
                attempt = backoff.attempts(),
                retry_in_ms = delay.as_millis() as u64,
                "store error; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.link.cancelled() => return Err(Stop::Released(e.to_string())),
                _ = self.shutdown.cancelled() => return Err(Stop::Released(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A settlement that never resolves (lapin's, on a connection that died) ends when the link
    /// is lost; on a live link the settlement's own result comes back.
    #[tokio::test]
    async fn a_settlement_stops_waiting_when_the_link_is_lost() {
        let link = CancellationToken::new();
        let settled = settle(&link, async { Ok::<_, lapin::Error>(true) }).await;
        assert_eq!(settled, Ok(true));
        let waiting = tokio::spawn({
            let link = link.clone();
            async move { settle(&link, std::future::pending::<lapin::Result<bool>>()).await }
        });
        link.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the settlement ended with the link")
            .expect("no panic");
        assert_eq!(ended, Err("the broker link was lost".to_string()));
    }

    /// The README's "a panic in the engine is caught on the pool thread and dead-lettered as
    /// `internal`": no input is known to panic the engine, and the engine has no hook to make it,
    /// so the panic is injected here, in the one function every conversion goes through. A job
    /// whose conversion fails with kind `internal` is dead-lettered like any engine error
    /// (`tests/jobs.rs` and the poison sweep prove that path over the broker).
    #[tokio::test]
    async fn a_panic_on_the_pool_is_an_internal_failure_and_the_pool_lives_on() {
        let pool = cloudimg_engine::batch::Pool::new(1).unwrap();
        let panicked = spawn_caught(&pool, || -> Result<(), cloudimg_engine::Error> {
            panic!("injected by the test")
        })
        .await
        .expect("answered, not dropped");
        let error = panicked.unwrap_err();
        assert!(
            matches!(error, cloudimg_engine::Error::Internal(_)),
            "{error:?}"
        );
        assert_eq!(FailureKind::from(error.kind()), FailureKind::Internal);
        assert_eq!(FailureKind::Internal.as_str(), "internal");
        // The pool's only thread survived it and takes the next job.
        let next = spawn_caught(&pool, || Ok(7)).await.unwrap();
        assert_eq!(next.unwrap(), 7);
    }
}
