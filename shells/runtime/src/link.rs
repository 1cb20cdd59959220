//! One broker connection kept alive, for both shells: [`supervise`] connects with backoff, sets
//! up what the shell needs on the connection (channels, confirms, topology, a consumer), serves on
//! it until the link fails, the shell pauses or stops, closes it, and starts over.
//!
//! lapin's automatic recovery is not reliable (amqp-rs/lapin#450), so it stays off: connection,
//! channels and consumers are rebuilt here whenever the link fails. The producer's publisher and
//! the worker's consumer are each a setup and a serve step over this one loop.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::settings::{BrokerSettings, redact_url};
use crate::{Error, Result};

/// How a session on one connection ended, as its serve step reports it.
#[derive(Debug)]
pub enum SessionEnd {
    /// The shell is stopping: the supervisor closes the connection and returns.
    Stopped,
    /// The link failed while in use: reconnect after the supervisor's backoff.
    Lost(Error),
    /// The shell cannot use the link for now (the worker's store refuses it): close, wait `delay`
    /// (the shell's own pacing), then connect again.
    Pause(Duration),
}

/// A session that served this long counts as healthy: the next failure starts the backoff over.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// What a shell does on each connection the supervisor opens.
pub trait Session: Send {
    /// What `setup` builds on the connection (channels, a consumer) for `serve`.
    type Link: Send;

    /// Prepares the connection (an error counts as a failed connect: logged, retried with
    /// backoff).
    fn setup(&mut self, connection: &Connection)
    -> impl Future<Output = Result<Self::Link>> + Send;

    /// Uses the connection until the link fails, the shell pauses or stops.
    fn serve(
        &mut self,
        connection: &Connection,
        link: Self::Link,
    ) -> impl Future<Output = SessionEnd> + Send;
}

/// Keeps one connection named `name` to `broker` until `stop` is cancelled (or the session's
/// serve step says [`SessionEnd::Stopped`]). Each round connects and runs [`Session::setup`] (an
/// error is logged and retried with backoff; a topology mismatch is logged as an error once), then
/// [`Session::serve`], then closes the connection, bounded in time.
///
/// `cloudimg_broker_connected` is 1 while a session serves, and `cloudimg_broker_connects_total`
/// counts the sessions set up.
pub async fn supervise(
    broker: &BrokerSettings,
    name: &str,
    stop: &CancellationToken,
    session: &mut impl Session,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut errors = SetupErrorLog::default();
    metrics::gauge!("cloudimg_broker_connected").set(0.0);
    while !stop.is_cancelled() {
        let attempt = tokio::select! {
            r = async {
                let connection = connect(broker, name).await?;
                let link = session.setup(&connection).await?;
                Ok::<_, Error>((connection, link))
            } => r,
            _ = stop.cancelled() => break,
        };
        let ended = match attempt {
            Ok((connection, link)) => {
                tracing::info!(broker = %redact_url(&broker.url), name, "broker link up");
                errors.reset();
                metrics::gauge!("cloudimg_broker_connected").set(1.0);
                metrics::counter!("cloudimg_broker_connects_total").increment(1);
                let started = Instant::now();
                let ended = session.serve(&connection, link).await;
                metrics::gauge!("cloudimg_broker_connected").set(0.0);
                if started.elapsed() >= HEALTHY_SESSION {
                    backoff.reset();
                }
                let (reason, bound) = match &ended {
                    SessionEnd::Stopped => ("cloudimg shutting down", Duration::from_secs(5)),
                    _ => ("cloudimg reconnecting", Duration::from_secs(2)),
                };
                let _ = tokio::time::timeout(bound, connection.close(200, reason.into())).await;
                ended
            }
            Err(e) => SessionEnd::Lost(e),
        };
        let delay = match ended {
            SessionEnd::Stopped => break,
            SessionEnd::Pause(delay) => delay,
            SessionEnd::Lost(e) => {
                let delay = backoff.next_delay();
                errors.report(&e, delay, name);
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => break,
        }
    }
}

/// Logs a topology mismatch as an error the first time and quietly after that, so an operator
/// sees one clear, actionable line instead of one per retry. Other errors go to `warn`.
#[derive(Debug, Default)]
struct SetupErrorLog {
    topology_reported: bool,
}

impl SetupErrorLog {
    fn report(&mut self, e: &Error, retry_in: Duration, connection: &str) {
        let retry_in_ms = retry_in.as_millis() as u64;
        let what = "broker link down; reconnecting";
        match e {
            Error::Topology(_) if !self.topology_reported => {
                self.topology_reported = true;
                tracing::error!(error = %e, retry_in_ms, connection, "{what}");
            }
            Error::Topology(_) => tracing::debug!(error = %e, retry_in_ms, connection, "{what}"),
            _ => tracing::warn!(error = %e, retry_in_ms, connection, "{what}"),
        }
    }

    /// The link came up: a later mismatch is news again.
    fn reset(&mut self) {
        self.topology_reported = false;
    }
}

/// Opens one connection, named so operators can tell our connections apart in the management UI.
/// `amqps://` URLs trust the system's CAs plus `broker.ca_pem`.
pub async fn connect(broker: &BrokerSettings, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let mut builder = DefaultConnectionBuilder::new()?
        .with_uri_str(broker.url.clone())
        .with_properties(props);
    if let Some(pem) = &broker.ca_pem {
        builder = builder.with_tls_config(OwnedTLSConfig {
            identity: None,
            cert_chain: Some(pem.clone()),
        });
    }
    builder.connect().await.map_err(|e| {
        tracing::debug!(url = %redact_url(&broker.url), error = %e, "broker connection failed");
        Error::Broker(e)
    })
}

/// Resolves when the connection reports an error or stops being connected.
pub async fn link_lost(connection: &Connection) {
    follow_link(connection, |_| {}).await
}

/// [`link_lost`], calling `on_alarm` with `true` on every `connection.blocked` (a broker memory or
/// disk alarm) and `false` on every `connection.unblocked`. One function reads the events because
/// lapin's event stream is one queue shared by all its listeners (each event reaches one of them),
/// not a broadcast.
pub(crate) async fn follow_link(connection: &Connection, mut on_alarm: impl FnMut(bool)) {
    let mut events = connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => {
                    tracing::warn!(error = %e, "broker link error");
                    return;
                }
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "the broker blocked the connection (a memory or disk alarm)");
                    on_alarm(true);
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("the broker unblocked the connection");
                    on_alarm(false);
                }
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => {
                if !connection.status().connected() {
                    return;
                }
            }
        }
    }
}
