//! A memory budget shared by the uploads (producer) or jobs (worker) in flight: each reserves what
//! it will hold before it allocates, so the sum stays under the budget however many arrive at once.
//! The worker reserves a job's estimate from its header and waits for room (a job that fits is
//! only delayed); the producer grows an upload's reservation with the bytes it receives and
//! refuses beyond the budget (RESOURCE_EXHAUSTED). Either way a request larger than the whole
//! budget is refused at once instead of waiting forever.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Error, Result};

/// Budgets count in KiB, so one semaphore covers up to 512 GiB with room to spare.
const UNIT: u64 = 1024;

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes held against a [`MemoryBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: MemoryBudget,
    permit: Option<OwnedSemaphorePermit>,
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> MemoryBudget {
        let total_units = units(bytes).clamp(1, u64::from(u32::MAX) >> 3) as u32;
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        (u64::from(self.total_units) - self.permits.available_permits() as u64) * UNIT
    }

    fn over(&self, wanted: u64, held: u64) -> Error {
        Error::OverBudget {
            wanted,
            others: self.in_use().saturating_sub(held),
            limit: self.bytes(),
        }
    }

    /// Waits until `bytes` fit beside what is reserved, then reserves them (first come, first
    /// served, so a large job is not starved by small ones). [`Error::OverBudget`] at once when
    /// `bytes` exceed the whole budget.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation> {
        let needed = units(bytes);
        if needed > u64::from(self.total_units) {
            return Err(self.over(bytes, 0));
        }
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(needed as u32)
            .await
            .expect("the budget's semaphore is never closed");
        Ok(Reservation {
            budget: self.clone(),
            permit: Some(permit),
        })
    }

    /// An empty reservation, to [`Reservation::grow`] as bytes arrive.
    pub fn empty(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            permit: None,
        }
    }
}

impl Reservation {
    /// Adds `bytes` if they fit now; [`Error::OverBudget`] (nothing changed) if not.
    pub fn grow(&mut self, bytes: u64) -> Result<()> {
        let more = units(bytes);
        if more == 0 {
            return Ok(());
        }
        let permit = u32::try_from(more)
            .ok()
            .and_then(|more| {
                self.budget
                    .permits
                    .clone()
                    .try_acquire_many_owned(more)
                    .ok()
            })
            .ok_or_else(|| self.budget.over(self.bytes() + bytes, self.bytes()))?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        Ok(())
    }

    /// Bytes held (rounded up to KiB).
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_share_the_budget_and_give_it_back() {
        let budget = MemoryBudget::new(10 << 20);
        let a = budget.reserve(6 << 20).await.unwrap();
        assert_eq!(budget.in_use(), 6 << 20);
        let refused = budget.reserve(11 << 20).await.unwrap_err();
        assert!(
            matches!(refused, Error::OverBudget { wanted, others: 6_291_456, limit: 10_485_760 } if wanted == 11 << 20),
            "larger than the whole budget: refused at once, never waits: {refused:?}"
        );
        let mut grown = budget.empty();
        grown.grow(3 << 20).unwrap();
        grown.grow(1 << 20).unwrap();
        let refused = grown.grow(1 << 20).unwrap_err();
        assert!(
            matches!(
                refused,
                Error::OverBudget {
                    wanted: 5_242_880,
                    others: 6_291_456,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(grown.bytes(), 4 << 20);
        drop(a);
        grown.grow(6 << 20).unwrap();
        drop(grown);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_in_when_room_is_given_back() {
        let budget = MemoryBudget::new(4 << 20);
        let held = budget.reserve(3 << 20).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 << 20).await.unwrap().bytes() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), 2 << 20);
    }
}
