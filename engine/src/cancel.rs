//! Stopping a conversion from another thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A flag that stops the conversions it is passed to ([`crate::convert_cancellable`]) when set
/// from any thread: for a caller's deadline, so that the memory is released when the job ends
/// rather than when a detached thread finishes.
///
/// Cheap to clone (the clones share the flag) and to check: the engine looks at it between
/// scans and between rows of blocks or pixels, never per pixel. A conversion inside a decoder
/// the engine does not own (zune-jpeg for CMYK and RGB JPEGs, zune-png) is stopped before and
/// after that decoder's call, which the limits keep bounded.
#[derive(Debug, Clone)]
pub struct Cancel(Option<Arc<AtomicBool>>);

impl Cancel {
    /// A flag not yet set.
    pub fn new() -> Cancel {
        Cancel(Some(Arc::new(AtomicBool::new(false))))
    }

    /// What [`crate::convert`] passes: never set, and checking it costs a branch.
    pub(crate) const NEVER: Cancel = Cancel(None);

    /// Sets the flag: conversions given it (or a clone) end with [`Error::Cancelled`] at their
    /// next check.
    pub fn cancel(&self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// `Err(Error::Cancelled)` once the flag is set.
    #[inline]
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}
