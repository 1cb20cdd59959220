//! `cloudimg-worker`: consumes `ImageJob`s, converts them on the engine's thread pool (never on a
//! tokio thread), writes each result to the store and acks only after the write succeeded.
//!
//! * **Prefetch = concurrency**: the broker hands over at most as many jobs as the engine pool has
//!   threads, so the pool never idles while jobs wait in the queue. Each delivery becomes one pool
//!   task bridged back with a oneshot; the pool is the batch, so a fast image never waits for a
//!   slow one to share its ack.
//! * **Memory by budget**: before converting, a job reserves the engine's estimate of its peak
//!   heap (from the header) plus its input from `CLOUDIMG_MEMORY_BUDGET`, and waits while the
//!   jobs in flight hold too much; one that needs more than the whole budget is dead-lettered
//!   `over_budget`. The reservation ends when the engine returns, not when the job is answered.
//! * **Time by deadline**: a conversion past `CLOUDIMG_JOB_TIMEOUT` is cancelled (the engine checks
//!   its flag between scans and rows) and the job dead-lettered `timeout`.
//! * **Poison** (every engine error, and messages the worker cannot use) goes to `<queue>.dead` with
//!   `x-cloudimg-job-id` / `x-cloudimg-error` headers after a `failed/<job_id>.json` marker is
//!   written, and is then acked: it never blocks the queue or loops.
//! * **Store errors by who must act**: transient ones are retried with backoff while the job is
//!   held (nothing transient is ever dead-lettered); an object the store rejects for good fails its
//!   job with kind `store` after a few tries; a store that refuses the worker itself (access
//!   denied, no such bucket) pauses consuming, with `cloudimg_worker_ready` 0 and the jobs back in
//!   the queue, instead of burning the queue into dead letters: the worker tries again after a
//!   growing pause, and resumes once the store accepts it.
//! * **Link loss**: the link supervisor ([`cloudimg_runtime::link`]), the producer's too,
//!   reconnects with backoff; jobs in flight on the lost link stop retrying and are redelivered by
//!   the broker. Redeliveries are idempotent: output keys are per job, and a redelivered job whose
//!   result exists is acked without converting again.
//! * **Shutdown** (SIGTERM/SIGINT): cancel the consumer, finish and ack what is held, close, exit 0.
#![forbid(unsafe_code)]

mod config;
mod job;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudimg_engine::batch::Pool;
use cloudimg_runtime::amqp::Topology;
use cloudimg_runtime::backoff::Backoff;
use cloudimg_runtime::budget::MemoryBudget;
use cloudimg_runtime::link::{self, SessionEnd};
use cloudimg_runtime::store::Store;
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Args, Config};

/// Everything that stops the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] cloudimg_runtime::Error),
    #[error("the worker needs a store: set BUCKET_NAME or CLOUDIMG_OUT_DIR")]
    NoStore,
    #[error("cannot start the engine pool: {0}")]
    Pool(std::io::Error),
}

/// What every job task shares.
pub(crate) struct Context {
    pub store: Store,
    pub pool: Pool,
    pub topology: Topology,
    pub limits: cloudimg_engine::Limits,
    pub job_timeout: Duration,
    /// What the jobs in flight may hold together (`CLOUDIMG_MEMORY_BUDGET`).
    pub budget: MemoryBudget,
    pub readiness: Readiness,
}

/// Whether the store accepts the worker at all: a job that meets an access denial reports it
/// here, and the consume loop pauses.
pub(crate) struct Readiness {
    denied: tokio::sync::watch::Sender<Option<String>>,
}

impl Readiness {
    fn new() -> Readiness {
        Readiness {
            denied: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The store refused the worker itself (see [`cloudimg_runtime::StoreFailure::Denied`]).
    pub fn store_denied(&self, error: &cloudimg_runtime::Error) {
        self.denied.send_replace(Some(error.to_string()));
    }

    /// Forgets earlier denials and returns a receiver that sees the next one.
    fn watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.denied.send_replace(None);
        self.denied.subscribe()
    }
}

/// Consumes until `shutdown` is cancelled, over a supervised broker link (reconnected with
/// backoff whenever it fails); then drains.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let store = Store::open(&config.store).await?.ok_or(Error::NoStore)?;
    let pool = Pool::new(config.concurrency).map_err(Error::Pool)?;
    tracing::info!(
        store = %store.describe(),
        queue = %config.broker.queue,
        concurrency = config.concurrency,
        memory_budget = config.memory_budget,
        job_timeout_s = config.job_timeout.as_secs_f64(),
        simd = ?cloudimg_engine::simd_path(),
        "worker starting"
    );
    let ctx = Arc::new(Context {
        store,
        pool,
        topology: Topology::new(&config.broker),
        limits: config.limits,
        job_timeout: config.job_timeout,
        budget: MemoryBudget::new(config.memory_budget),
        readiness: Readiness::new(),
    });
    metrics::gauge!("cloudimg_worker_ready").set(0.0);
    metrics::gauge!("cloudimg_jobs_in_flight").set(0.0);
    let mut session = WorkerSession {
        ctx,
        config: &config,
        shutdown: shutdown.clone(),
        pause: Backoff::new(Duration::from_secs(5), Duration::from_secs(60)),
    };
    link::supervise(&config.broker, "cloudimg-worker", &shutdown, &mut session).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The worker's session on each connection the supervisor opens.
struct WorkerSession<'a> {
    ctx: Arc<Context>,
    config: &'a Config,
    shutdown: CancellationToken,
    /// Paces the pauses while the store refuses the worker.
    pause: Backoff,
}

impl link::Session for WorkerSession<'_> {
    type Link = Consuming;

    async fn setup(
        &mut self,
        connection: &Connection,
    ) -> Result<Consuming, cloudimg_runtime::Error> {
        open(&self.ctx, self.config, connection).await
    }

    async fn serve(&mut self, connection: &Connection, consuming: Consuming) -> SessionEnd {
        consume(
            &self.ctx,
            self.config,
            &self.shutdown,
            &mut self.pause,
            connection,
            consuming,
        )
        .await
    }
}

/// What the worker sets up on each connection.
struct Consuming {
    channel: Channel,
    /// In confirm mode, for the poison jobs' dead letters.
    dead_letters: Channel,
    consumer: Consumer,
}

/// Declares the topology, sets the prefetch and starts consuming.
async fn open(
    ctx: &Context,
    config: &Config,
    connection: &Connection,
) -> Result<Consuming, cloudimg_runtime::Error> {
    let channel = connection.create_channel().await?;
    ctx.topology.declare(&channel).await?;
    channel
        .basic_qos(config.concurrency as u16, BasicQosOptions::default())
        .await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            ctx.topology.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %ctx.topology.queue, prefetch = config.concurrency, "worker consuming");
    Ok(Consuming {
        channel,
        dead_letters,
        consumer,
    })
}

/// One connection's life: consume until shutdown (drained), link loss or a store that refuses the
/// worker (the jobs held go back to the broker, and consuming pauses for `pause`'s next delay).
async fn consume(
    ctx: &Arc<Context>,
    config: &Config,
    shutdown: &CancellationToken,
    pause: &mut Backoff,
    connection: &Connection,
    consuming: Consuming,
) -> SessionEnd {
    let Consuming {
        channel,
        dead_letters,
        mut consumer,
    } = consuming;
    let started = Instant::now();
    let mut denied = ctx.readiness.watch();
    metrics::gauge!("cloudimg_worker_ready").set(1.0);

    let tracker = TaskTracker::new();
    let link = CancellationToken::new();
    let link_lost = link::link_lost(connection);
    tokio::pin!(link_lost);
    let ended = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break SessionEnd::Stopped,
            Ok(()) = denied.changed() => {
                if let Some(reason) = denied.borrow_and_update().clone() {
                    if started.elapsed() > Duration::from_secs(30) {
                        pause.reset();
                    }
                    let delay = pause.next_delay();
                    tracing::error!(
                        %reason,
                        store = %ctx.store.describe(),
                        retry_in_s = delay.as_secs(),
                        "the store refuses this worker (check its role, credentials and bucket): \
                         not taking jobs; they stay in the queue"
                    );
                    break SessionEnd::Pause(delay);
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tracker.spawn(job::handle(
                        ctx.clone(),
                        delivery,
                        dead_letters.clone(),
                        link.clone(),
                        shutdown.clone(),
                    ));
                }
                Some(Err(e)) => break lost(e.to_string()),
                None => break lost("the consumer was cancelled".to_owned()),
            },
            _ = &mut link_lost => break lost("connection lost".to_owned()),
        }
    };
    metrics::gauge!("cloudimg_worker_ready").set(0.0);
    if let SessionEnd::Stopped = ended {
        // Drain: no new deliveries; finish and ack what we hold. Deliveries prefetched but not
        // started are released when the channel closes, and the broker requeues them.
        let _ = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        tracker.close();
        let drain = config.service.drain;
        tracing::info!(
            held = tracker.len(),
            drain_seconds = drain.as_secs(),
            "shutdown: consumer cancelled; finishing the jobs held"
        );
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            // Unacked deliveries go back to the queue when the connection closes: another
            // worker does them. Nothing is lost; at worst a result is written twice.
            tracing::warn!(
                still_held = tracker.len(),
                drain_seconds = drain.as_secs(),
                "drain timed out: closing the link; the broker requeues what is still held"
            );
            link.cancel();
        }
    } else {
        // Link lost: the jobs in flight can no longer be acked on it, and the broker redelivers
        // them. Store denied: they stop retrying and are handed back (nacked with requeue).
        link.cancel();
        tracker.close();
        tracker.wait().await;
    }
    ended
}

/// The broker link failed while consuming, for `reason`.
fn lost(reason: String) -> SessionEnd {
    SessionEnd::Lost(cloudimg_runtime::Error::LinkLost(reason))
}
