//! A memory budget shared by everything in flight: each holder grows its own [`Reservation`] as it
//! actually allocates (never by a size it was merely told), and the bytes return to the budget
//! when the reservation is dropped, however its holder ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Bytes that may be held at once, shared by every [`Reservation`] taken from it.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now, by all holders.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as bytes arrive.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }
}

/// One holder's share of a [`Budget`]; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: u64,
}

impl Reservation {
    /// Adds `bytes` to this reservation, or [`Error::OverBudget`] (and nothing added) when the
    /// budget cannot hold them.
    pub fn grow(&mut self, bytes: u64) -> Result<()> {
        let budget = &self.budget;
        budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= budget.limit)
            })
            .map_err(|used| Error::OverBudget {
                wanted: self.held + bytes,
                others: used - self.held,
                limit: budget.limit,
            })?;
        self.held += bytes;
        Ok(())
    }

    /// The budget it is part of.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Bytes this reservation holds.
    pub fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_return_their_bytes_when_dropped() {
        let budget = Budget::new(100);
        let mut a = budget.reserve();
        let mut b = budget.reserve();
        a.grow(60).unwrap();
        b.grow(40).unwrap();
        let refused = b.grow(1).unwrap_err();
        assert!(
            matches!(
                refused,
                Error::OverBudget {
                    wanted: 41,
                    others: 60,
                    limit: 100
                }
            ),
            "{refused:?}"
        );
        assert_eq!((b.held(), budget.used()), (40, 100));
        drop(a);
        assert_eq!(budget.used(), 40);
        b.grow(60).unwrap();
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
