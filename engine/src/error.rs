//! The engine's one error type, split by who must act on it.

use crate::Format;

/// Everything that can go wrong turning bytes into a grayscale image.
///
/// The variants are split by who must act: the sender ([`Error::Invalid`], [`Error::Unsupported`],
/// [`Error::OverLimit`]), the maintainers ([`Error::Internal`]) or the caller itself
/// ([`Error::Cancelled`]). None but the last is transient: converting the same bytes again gives
/// the same error, so callers never retry them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a valid image of the format they claim to be (corrupt, truncated).
    #[error("invalid {format}: {reason}")]
    Invalid { format: Format, reason: String },
    /// A valid image, or another file type, that the engine does not convert.
    #[error("unsupported input: {what}")]
    Unsupported { what: String },
    /// The input is over a configured limit; found from the header, before any pixel buffer exists.
    #[error("{limit} is {found}, over the limit of {max}")]
    OverLimit {
        limit: LimitKind,
        found: u64,
        max: u64,
    },
    /// The engine failed on input it accepted: a bug to report, not the sender's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// The caller's [`crate::Cancel`] was set; the conversion stopped and freed what it held.
    #[error("the conversion was cancelled")]
    Cancelled,
}

/// The coarse class of an [`Error`], for metrics, exit codes and dead-letter headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Invalid,
    Unsupported,
    OverLimit,
    Internal,
    Cancelled,
}

impl ErrorKind {
    /// A stable lowercase name (`invalid`, `unsupported`, `over_limit`, `internal`,
    /// `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::OverLimit => "over_limit",
            ErrorKind::Internal => "internal",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

/// Which limit an input went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    InputBytes,
    Pixels,
    Width,
    Height,
    /// Scans (SOS segments) in one JPEG: each progressive scan walks every block again, so a
    /// small file repeating one scan thousands of times costs minutes of CPU.
    Scans,
    /// Bytes a PNG's compressed ancillary chunks (iCCP, zTXt) inflate to, one chunk or all
    /// together: a 1x1 image can hold a zlib bomb there.
    AncillaryChunk,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::InputBytes => "input size in bytes",
            LimitKind::Pixels => "pixel count",
            LimitKind::Width => "width",
            LimitKind::Height => "height",
            LimitKind::Scans => "number of JPEG scans",
            LimitKind::AncillaryChunk => "inflated size of PNG ancillary chunks",
        })
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } => ErrorKind::Invalid,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::OverLimit { .. } => ErrorKind::OverLimit,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Cancelled => ErrorKind::Cancelled,
        }
    }

    pub(crate) fn invalid(format: Format, reason: impl Into<String>) -> Self {
        Error::Invalid {
            format,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported { what: what.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
