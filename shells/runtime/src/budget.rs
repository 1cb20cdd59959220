//! A memory budget shared by the uploads (producer) or jobs (worker) in flight: each reserves what
//! it will hold before it allocates, by an estimate from its header, so the sum stays under the
//! budget however many arrive at once. The worker waits for room (a job that fits is only
//! delayed); the producer refuses beyond it (RESOURCE_EXHAUSTED). Either way a request too large
//! for the whole budget is refused at once instead of waiting forever.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets count in KiB, so one `u32` permit count covers up to 4 TiB.
const UNIT: u64 = 1024;

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes held against a [`MemoryBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

/// A request that needs more than the whole budget: it can never fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("needs {needed} bytes, over the whole memory budget of {budget} bytes")]
pub struct OverBudget {
    pub needed: u64,
    pub budget: u64,
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

    fn check(&self, bytes: u64) -> Result<u32, OverBudget> {
        let needed = units(bytes);
        if needed > u64::from(self.total_units) {
            return Err(OverBudget {
                needed: bytes,
                budget: self.bytes(),
            });
        }
        Ok(needed as u32)
    }

    /// Waits until `bytes` fit beside what is reserved, then reserves them (first come, first
    /// served, so a large job is not starved by small ones).
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, OverBudget> {
        let needed = self.check(bytes)?;
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(needed)
            .await
            .expect("the budget's semaphore is never closed");
        Ok(Reservation {
            permit: Some(permit),
        })
    }

    /// Reserves `bytes` if they fit now; `Ok(None)` if they would fit once others finish.
    pub fn try_reserve(&self, bytes: u64) -> Result<Option<Reservation>, OverBudget> {
        let needed = self.check(bytes)?;
        Ok(self
            .permits
            .clone()
            .try_acquire_many_owned(needed)
            .ok()
            .map(|permit| Reservation {
                permit: Some(permit),
            }))
    }

    /// An empty reservation, to grow as bytes arrive.
    pub fn empty(&self) -> Reservation {
        Reservation { permit: None }
    }

    /// Adds `bytes` to `reservation` if they fit now; `false` (nothing changed) if not.
    pub fn try_grow(&self, reservation: &mut Reservation, bytes: u64) -> bool {
        let Ok(more) = self.check(bytes) else {
            return false;
        };
        if more == 0 {
            return true;
        }
        let Ok(permit) = self.permits.clone().try_acquire_many_owned(more) else {
            return false;
        };
        match &mut reservation.permit {
            Some(held) => held.merge(permit),
            None => reservation.permit = Some(permit),
        }
        true
    }
}

impl Reservation {
    /// Bytes held (rounded up to KiB).
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }
}

/// The memory this process may use: the cgroup's limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) when one is set, else the machine's total memory.
pub fn available_memory() -> Option<u64> {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    // cgroup v1 says "no limit" with a number near 2^63.
    .find(|&limit| limit < 1 << 60);
    cgroup.or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    })
}

/// `percent` of [`available_memory`], or of 1 GiB when nothing says how much there is.
pub fn default_budget(percent: u64) -> u64 {
    available_memory().unwrap_or(1 << 30) / 100 * percent
}

/// Parses a byte size setting: a number with an optional `KiB`, `MiB`, `GiB` (or `K`, `M`, `G`,
/// powers of 1024) suffix.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("not a size: {text:?} (examples: 512MiB, 2GiB, 1048576)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (KiB, MiB or GiB)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{text:?} must be a positive size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_share_the_budget_and_give_it_back() {
        let budget = MemoryBudget::new(10 << 20);
        let a = budget.reserve(6 << 20).await.unwrap();
        assert_eq!(budget.in_use(), 6 << 20);
        assert!(
            budget.try_reserve(5 << 20).unwrap().is_none(),
            "over what is left"
        );
        let b = budget.try_reserve(4 << 20).unwrap().expect("fits");
        assert_eq!(
            budget.reserve(11 << 20).await.unwrap_err().needed,
            11 << 20,
            "larger than the whole budget: refused at once, never waits"
        );
        drop(a);
        let mut grown = budget.empty();
        assert!(budget.try_grow(&mut grown, 3 << 20));
        assert!(budget.try_grow(&mut grown, 3 << 20));
        assert!(!budget.try_grow(&mut grown, 1 << 20), "10 MiB held");
        assert_eq!(grown.bytes(), 6 << 20);
        drop((b, grown));
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

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        for bad in ["", "0", "lots", "5 TB", "-1"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_machine_has_some_memory() {
        let bytes = available_memory().expect("cgroup or /proc/meminfo");
        assert!(bytes > 64 << 20, "{bytes}");
        assert_eq!(default_budget(50), bytes / 100 * 50);
    }
}
