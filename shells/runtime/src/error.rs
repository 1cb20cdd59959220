//! The runtime's one error type, split by who must act.

/// What can go wrong in the shared pieces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed: the operator must fix the configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The object store failed, refused or could not be reached; `class` says who must act.
    #[error("object store: {op} `{key}`: {reason}")]
    Store {
        op: &'static str,
        key: String,
        reason: String,
        class: StoreFailure,
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

/// Who must act on a store error, which decides what a caller does with the job that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// The store is slow, overloaded or unreachable: retry with backoff; the job is not at fault.
    Transient,
    /// The store refuses this one object for good (bad metadata, too large, invalid argument):
    /// retrying cannot help, the job fails with the reason.
    Rejected,
    /// The store refuses us, whatever the object (access denied, no such bucket, bad
    /// credentials): the configuration is wrong, every job would fail the same way.
    Denied,
}

impl Error {
    pub(crate) fn store(
        op: &'static str,
        key: &str,
        class: StoreFailure,
        reason: impl std::fmt::Display,
    ) -> Self {
        Error::Store {
            op,
            key: key.to_owned(),
            reason: reason.to_string(),
            class,
        }
    }

    /// How a store error should be handled; every other error is transient for the store's
    /// callers (a key the store refuses to form is a rejection of that job).
    pub fn store_failure(&self) -> StoreFailure {
        match self {
            Error::Store { class, .. } => *class,
            Error::Config(_) => StoreFailure::Rejected,
            _ => StoreFailure::Transient,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
