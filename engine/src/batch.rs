//! Many images at once: the only place the engine uses threads.
//!
//! One image per task: the decoders and encoders are single-threaded, so images are the unit of
//! parallelism and a pool of N threads holds at most N images in memory at a time.

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
            .thread_name(|i| format!("cloudimg-engine-{i}"))
            .build()
            .map(|pool| Pool { pool })
            .map_err(std::io::Error::other)
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Applies `f` to every item in parallel, results in input order.
    pub fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
        use rayon::prelude::*;
        self.pool.install(|| items.par_iter().map(f).collect())
    }

    /// Converts every input in parallel, results in input order.
    pub fn convert_all<B: AsRef<[u8]> + Sync>(
        &self,
        inputs: &[B],
        options: &Options,
    ) -> Vec<Result<Converted>> {
        self.map(inputs, |data| convert(data.as_ref(), options))
    }

    /// Runs `job` on the pool without blocking the caller: the bridge for async callers, which
    /// send the result back through a channel and never run engine work on their own threads.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.spawn(job);
    }
}
