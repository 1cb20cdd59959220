//! The broker side shared by producer and worker: the queue topology both declare, the one
//! confirmed publish, and the producer's publisher over a supervised link ([`crate::link`]).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionStatus};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::link::{self, SessionEnd};
use crate::settings::{BrokerSettings, QueueType};
use crate::{Error, Result};

/// Header naming the job on every message, on the work queue and the dead-letter queue.
pub const HEADER_JOB_ID: &str = "x-cloudimg-job-id";
/// Header carrying the reason on a dead-lettered message.
pub const HEADER_ERROR: &str = "x-cloudimg-error";
/// Header carrying the error's kind (`invalid`, `unsupported`, `over_limit`, `internal`, `job`).
pub const HEADER_ERROR_KIND: &str = "x-cloudimg-error-kind";

/// The largest message we ever publish. RabbitMQ 4 and Amazon MQ refuse messages over 16 MiB by
/// default; anything larger is staged in the store (claim-check) instead.
pub const MAX_MESSAGE_BYTES: u64 = 15 << 20;

/// The work queue and its dead-letter queue, declared identically by producer and worker.
///
/// The work queue dead-letters through the default exchange straight to `<queue>.dead`, so the
/// topology is two queues and nothing else to create or delete. The worker publishes poison jobs
/// to `<queue>.dead` itself (to add the reason as a header); the broker-side dead-lettering
/// catches what the worker cannot handle (a reject when the dead-letter publish failed, a quorum
/// queue's delivery limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub queue: String,
    pub queue_type: QueueType,
}

impl Topology {
    pub fn new(settings: &BrokerSettings) -> Topology {
        Topology {
            queue: settings.queue.clone(),
            queue_type: settings.queue_type,
        }
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    fn type_argument(&self, args: &mut FieldTable) {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.queue_type.as_str().into()),
        );
    }

    /// The work queue's arguments. Changing them breaks every running deployment (a redeclare
    /// with different arguments is refused), so they are defined here only.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        self.type_argument(&mut args);
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_letter_queue().into()),
        );
        args
    }

    /// Declares both queues, durable. Idempotent. A queue that already exists with other
    /// arguments (declared by hand, or by an older version) is [`Error::Topology`], with what to do.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut dead_args = FieldTable::default();
        self.type_argument(&mut dead_args);
        let dead = self.dead_letter_queue();
        channel
            .queue_declare(dead.as_str().into(), durable, dead_args)
            .await
            .map_err(|e| self.mismatch(&dead, e))?;
        channel
            .queue_declare(self.queue.as_str().into(), durable, self.queue_arguments())
            .await
            .map_err(|e| self.mismatch(&self.queue, e))?;
        Ok(())
    }

    fn mismatch(&self, queue: &str, e: lapin::Error) -> Error {
        if !is_precondition_failed(&e) {
            return Error::Broker(e);
        }
        let wanted = if queue == self.queue {
            format!(
                "x-queue-type={}, x-dead-letter-exchange=\"\", x-dead-letter-routing-key={}",
                self.queue_type.as_str(),
                self.dead_letter_queue()
            )
        } else {
            format!("x-queue-type={}", self.queue_type.as_str())
        };
        Error::Topology(format!(
            "queue `{queue}` already exists on the broker with other arguments than cloudimg \
             declares (durable, {wanted}): {e}. Delete it (`rabbitmqctl delete_queue {queue}`, \
             after moving any messages), or set CLOUDIMG_QUEUE to another name, or \
             CLOUDIMG_QUEUE_TYPE to the type it has. Retrying until then."
        ))
    }
}

/// Whether the broker refused a declaration because it conflicts with what exists (406).
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// How long a confirmed publish waits for the broker's confirm unless told otherwise (the
/// producer's `CLOUDIMG_CONFIRM_TIMEOUT` default, and the worker's dead-letter publish). A healthy
/// broker confirms in milliseconds; ten seconds rides out a busy disk without letting a wedged link
/// hold a request for good.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a publish did not end in a confirmed, routed message, split by whether the broker may hold
/// the message anyway ([`PublishError::broker_may_hold`]).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not sent: no link to the broker right now (it is down, or the supervisor is reconnecting).
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// Not sent: the broker blocked the connection under a memory or disk alarm and reads nothing
    /// from it until the alarm clears.
    #[error(
        "the broker is blocked by a resource alarm ({0}); it takes no messages until it clears"
    )]
    Blocked(String),
    /// The broker refused the message (nack).
    #[error("the broker refused the message")]
    Nacked,
    /// Confirmed but returned: routed to no queue (the queue is gone).
    #[error("the message reached no queue (queue `{0}` missing)")]
    Unroutable(String),
    /// Sent (or partly sent), but no confirm came within the bound, or the link failed while
    /// waiting: the broker may or may not hold the message.
    #[error("no confirm from the broker ({0}); it may hold the message")]
    Unconfirmed(String),
}

impl PublishError {
    /// Whether the broker may hold the message despite the error. Then whatever the message
    /// refers to (a staged upload) must be kept: a job the broker holds needs it. Every other
    /// error is definite: the broker does not have the message.
    pub fn broker_may_hold(&self) -> bool {
        matches!(self, PublishError::Unconfirmed(_))
    }
}

/// The one confirmed publish of the shells (the producer's jobs, the worker's dead letters):
/// `payload` persistent and mandatory to `routing_key` on the default exchange, over `channel`
/// (in confirm mode), waiting at most `confirm_timeout` for the broker's confirm. `Ok` means the
/// broker has taken responsibility for a message that reached a queue; a returned (unroutable)
/// message is [`PublishError::Unroutable`], never success.
pub async fn publish_confirmed(
    channel: &Channel,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
    confirm_timeout: Duration,
) -> std::result::Result<(), PublishError> {
    let deadline = tokio::time::Instant::now() + confirm_timeout;
    let unconfirmed = || {
        PublishError::Unconfirmed(format!(
            "nothing within {confirm_timeout:?} (CLOUDIMG_CONFIRM_TIMEOUT)"
        ))
    };
    let sent = channel.basic_publish(
        ShortString::from(""),
        routing_key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        payload,
        properties.with_delivery_mode(2),
    );
    // lapin resolves the send once every frame is written; an error before that means the
    // message never reached the broker whole (a partial message is discarded with its channel).
    let confirm = match tokio::time::timeout_at(deadline, sent).await {
        Err(_) => return Err(unconfirmed()),
        Ok(Err(e)) => return Err(PublishError::Unavailable(e.to_string())),
        Ok(Ok(confirm)) => confirm,
    };
    match tokio::time::timeout_at(deadline, confirm).await {
        Err(_) => Err(unconfirmed()),
        Ok(Err(e)) => Err(PublishError::Unconfirmed(format!("link lost: {e}"))),
        Ok(Ok(confirm)) if confirm.is_ack() => match confirm.take_message() {
            None => Ok(()),
            Some(_) => Err(PublishError::Unroutable(routing_key.to_owned())),
        },
        Ok(Ok(_)) => Err(PublishError::Nacked),
    }
}

/// The publisher's link as its users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// A connection with a confirm-mode channel and the topology declared is up.
    pub connected: bool,
    /// The broker has blocked that connection (a memory or disk alarm): publishes would wait for
    /// the alarm to clear, so they are refused at once instead.
    pub blocked: bool,
}

impl LinkState {
    /// Whether a publish can go out now.
    pub fn usable(self) -> bool {
        self.connected && !self.blocked
    }
}

#[derive(Clone)]
struct Link {
    channel: Channel,
    connection: ConnectionStatus,
}

/// A confirmed publisher on one long-lived connection, kept alive by a supervisor task.
///
/// Clones share the link. Many publishes can be outstanding at once: each awaits only its own
/// confirm, so concurrent requests form a window of unconfirmed messages instead of a queue.
#[derive(Clone)]
pub struct Publisher {
    link: watch::Receiver<Option<Link>>,
    broken: Arc<Notify>,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Starts the supervisor: it connects (with backoff), enables confirms, declares `topology`,
    /// and starts over whenever the link fails, until `stop` is cancelled (then it closes the
    /// connection). Returns at once; [`Publisher::publish`] answers `Unavailable` until connected.
    /// Each publish waits at most `confirm_timeout` for its confirm.
    pub fn start(
        broker: BrokerSettings,
        name: String,
        topology: Topology,
        confirm_timeout: Duration,
        stop: CancellationToken,
    ) -> (Publisher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let broken = Arc::new(Notify::new());
        let mut session = PublisherSession {
            topology,
            link: tx,
            broken: broken.clone(),
            stop,
        };
        let task = tokio::spawn(async move {
            let stop = session.stop.clone();
            link::supervise(&broker, &name, &stop, &mut session).await;
            session.link.send_replace(None);
        });
        let publisher = Publisher {
            link: rx,
            broken,
            confirm_timeout,
        };
        (publisher, task)
    }

    /// The link now.
    pub fn state(&self) -> LinkState {
        state_of(self.link.borrow().as_ref())
    }

    /// Resolves when the link goes up or down or is blocked or unblocked, with its state now;
    /// `None` once the supervisor has stopped.
    pub async fn link_changed(&mut self) -> Option<LinkState> {
        self.link.changed().await.ok()?;
        Some(state_of(self.link.borrow_and_update().as_ref()))
    }

    /// Waits up to `timeout` for a link (for startup, and for a request arriving mid-reconnect).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut link = self.link.clone();
        tokio::time::timeout(timeout, link.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// [`publish_confirmed`] on the supervised link, waiting up to `wait_for_link` for one; a
    /// blocked link refuses at once ([`PublishError::Blocked`]). A publish left unconfirmed makes
    /// the supervisor rebuild the link: a confirm that does not come means a wedged connection.
    pub async fn publish(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        wait_for_link: Duration,
    ) -> std::result::Result<(), PublishError> {
        if !self.wait_connected(wait_for_link).await {
            return Err(PublishError::Unavailable("not connected".into()));
        }
        let Some(link) = self.link.borrow().clone() else {
            return Err(PublishError::Unavailable("not connected".into()));
        };
        if link.connection.blocked() {
            return Err(PublishError::Blocked("connection.blocked".into()));
        }
        let result = publish_confirmed(
            &link.channel,
            routing_key,
            payload,
            properties,
            self.confirm_timeout,
        )
        .await;
        if matches!(
            result,
            Err(PublishError::Unavailable(_) | PublishError::Unconfirmed(_))
        ) {
            self.broken.notify_one();
        }
        result
    }
}

fn state_of(link: Option<&Link>) -> LinkState {
    LinkState {
        connected: link.is_some(),
        blocked: link.is_some_and(|l| l.connection.blocked()),
    }
}

/// The publisher's session on each connection: a confirm-mode channel with the topology declared,
/// offered to publishers until the link fails, a publish finds it broken, or `stop`.
struct PublisherSession {
    topology: Topology,
    link: watch::Sender<Option<Link>>,
    broken: Arc<Notify>,
    stop: CancellationToken,
}

impl link::Session for PublisherSession {
    type Link = Channel;

    async fn setup(&mut self, connection: &Connection) -> Result<Channel> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology.declare(&channel).await?;
        Ok(channel)
    }

    async fn serve(&mut self, connection: &Connection, channel: Channel) -> SessionEnd {
        self.link.send_replace(Some(Link {
            channel: channel.clone(),
            connection: connection.status().clone(),
        }));
        // The link's state is read from the connection's status: an alarm only wakes the
        // watchers (health, metrics).
        let ended = tokio::select! {
            _ = link::follow_link(connection, |_| self.link.send_modify(|_| {})) => {
                SessionEnd::Lost(Error::LinkLost("connection lost".into()))
            }
            _ = self.broken.notified() => {
                SessionEnd::Lost(Error::LinkLost("a publish found the link broken".into()))
            }
            _ = self.stop.cancelled() => SessionEnd::Stopped,
        };
        self.link.send_replace(None);
        // The channel before the connection: dropping the last channel handle while the
        // connection closes makes lapin log a spurious error.
        if channel.status().connected() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                channel.close(200, "cloudimg publisher closing".into()),
            )
            .await;
        }
        ended
    }
}

/// A header table with `x-cloudimg-job-id` set.
pub fn job_headers(job_id: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_JOB_ID.into(), AMQPValue::LongString(job_id.into()));
    headers
}

/// A string header's value, if present.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    headers?.inner().get(name).and_then(|v| match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    })
}

/// A long-string header value.
pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queue_dead_letters_to_its_dot_dead_queue() {
        let t = Topology {
            queue: "images".into(),
            queue_type: QueueType::Classic,
        };
        assert_eq!(t.dead_letter_queue(), "images.dead");
        let args = t.queue_arguments();
        assert_eq!(
            header_str(Some(&args), "x-dead-letter-routing-key").as_deref(),
            Some("images.dead")
        );
        assert_eq!(
            header_str(Some(&args), "x-dead-letter-exchange").as_deref(),
            Some("")
        );
        assert_eq!(
            header_str(Some(&args), "x-queue-type").as_deref(),
            Some("classic")
        );
    }
}
