//! Many images at once: the only place the engine uses threads.
//!
//! One image per task: the decoders and encoders are single-threaded, so images are the unit of
//! parallelism, and a pool of N threads holds at most N images in memory at a time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Converted, Options, Result, convert};

/// A fixed-size pool of engine threads.
pub struct Pool {
    pool: rayon::ThreadPool,
}

impl Pool {
    /// A pool of `threads` threads; 0 means one per available core.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            // Thread names are part of the contract with the e2e benchmark, which tells engine
            // CPU time from the rest of the worker by them.
            .thread_name(|i| format!("cloudimg-engine-{i}"))
            // A panic in a `spawn`ed job would abort the process (rayon's default); instead the
            // job just ends, dropping whatever channel it held, and the caller sees it gone.
            .panic_handler(|_| {})
            .build()
            .map(|pool| Pool { pool })
            .map_err(std::io::Error::other)
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Applies `f` to every item in parallel; results in input order.
    ///
    /// Items are taken in order, one at a time, by whichever thread is free. Images vary in
    /// cost, so callers that know the sizes put the largest first: the last image to finish
    /// is then a small one and no thread idles long at the end (longest-processing-time first).
    pub fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
        self.pool.scope(|scope| {
            for _ in 0..self.threads().min(items.len()) {
                scope.spawn(|_| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let result = f(item);
                        *results[i].lock().expect("no panic while holding the lock") = Some(result);
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .expect("unpoisoned")
                    .expect("every item was processed")
            })
            .collect()
    }

    /// Converts every input in parallel; results in input order.
    pub fn convert_all<B: AsRef<[u8]> + Sync>(
        &self,
        inputs: &[B],
        options: &Options,
    ) -> Vec<Result<Converted>> {
        self.map(inputs, |data| convert(data.as_ref(), options))
    }

    /// Runs `job` on the pool without blocking the caller: the bridge for async callers, which
    /// send the result back through a channel and never run engine work on their own threads.
    /// If `job` panics, the pool lives on; the job's channel is dropped unanswered.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.spawn(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_input_order_on_every_thread_count() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads).unwrap();
            let items: Vec<u64> = (0..100).collect();
            let out = pool.map(&items, |&i| {
                std::thread::sleep(std::time::Duration::from_micros((i * 37) % 200));
                i * 2
            });
            assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        }
        assert!(Pool::new(2).unwrap().map(&[] as &[u8], |_| 0).is_empty());
    }

    #[test]
    fn a_panicking_job_does_not_take_the_pool_down() {
        let pool = Pool::new(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        pool.spawn(move || {
            let _keep = tx;
            panic!("a bug in one job");
        });
        assert!(
            rx.recv().is_err(),
            "the job's sender was dropped without an answer"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        pool.spawn(move || tx.send(7).unwrap());
        assert_eq!(rx.recv().unwrap(), 7, "the pool still runs jobs");
    }
}
