//! The runtime's one error type, split by who must act.

/// What can go wrong in the shared pieces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed: the operator must fix the configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The object store failed or could not be reached. Treated as transient by callers: retried
    /// with backoff, never a reason to dead-letter a job.
    #[error("object store: {op} `{key}`: {reason}")]
    Store {
        op: &'static str,
        key: String,
        reason: String,
    },
    /// The broker failed or could not be reached (transient: the link supervisor reconnects).
    #[cfg(feature = "amqp")]
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The queue exists on the broker with other arguments than ours: an operator must act
    /// (the callers log it as an error once and keep retrying, slowly, until it is fixed).
    #[cfg(feature = "amqp")]
    #[error("{0}")]
    Topology(String),
    /// The broker link failed while in use (the caller reconnects).
    #[cfg(feature = "amqp")]
    #[error("broker link lost: {0}")]
    LinkLost(String),
    /// A memory budget cannot hold what a request needs now (the caller refuses the request; the
    /// sender may retry later, when others have finished).
    #[error(
        "over the memory budget: {wanted} bytes wanted while {others} are held by others, of {limit}"
    )]
    OverBudget {
        wanted: u64,
        others: u64,
        limit: u64,
    },
    /// Local I/O outside the store (binding a port, reading a file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn store(op: &'static str, key: &str, reason: impl std::fmt::Display) -> Self {
        Error::Store {
            op,
            key: key.to_owned(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
