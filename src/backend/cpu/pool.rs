//! A persistent worker pool: threads are spawned once and woken for each parallel op, so the
//! decode loop neither spawns threads nor allocates.
//!
//! A decode step runs a few hundred short parallel ops back to back. Handing each one over
//! through a condition variable alone cost a futex wake-up on the critical path twice per op
//! (the workers waking for the job, the caller waking when they finish). Both sides now first
//! spin on an atomic for a bounded time ([`SPIN`], tens of microseconds: longer than the gap
//! between two ops of a step, short enough not to matter to other processes when idle), and
//! only then park on the condition variable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = dyn Fn(usize, usize) + Sync;

/// A job pointer whose lifetime was erased; `run` keeps the job alive until every worker is done.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync` and outlives every use (see `ThreadPool::run`).
unsafe impl Send for JobPtr {}

/// Iterations of the spin-wait before parking (a `spin_loop` hint each, ~10-50 ns).
const SPIN: u32 = 2000;

struct Shared {
    /// The current job; set before `generation` is bumped, cleared after `pending` reaches 0.
    job: Mutex<Option<JobPtr>>,
    /// Bumped once per `run` (under `lock`, so a worker about to park cannot miss it).
    generation: AtomicU64,
    /// Workers still running the current job.
    pending: AtomicUsize,
    shutdown: AtomicBool,
    /// Threads parked (or about to park) on `work` or `done`: notifications are skipped when 0.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    work: Condvar,
    done: Condvar,
    panicked: AtomicBool,
}

impl Shared {
    /// Spins until `ready()`, then parks on `cv` until it holds.
    fn wait_until(&self, cv: &Condvar, ready: impl Fn() -> bool) {
        for _ in 0..SPIN {
            if ready() {
                return;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while !ready() {
            guard = cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the threads parked on `cv`, if any. The caller changed what they wait for first.
    fn wake(&self, cv: &Condvar, all: bool) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this after a parker's check of its condition (made under
            // the lock), so the wake-up cannot fall between its check and its wait.
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            if all {
                cv.notify_all();
            } else {
                cv.notify_one();
            }
        }
    }
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises `run` calls from different threads sharing one pool.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` (the calling thread counts as one of them).
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            work: Condvar::new(),
            done: Condvar::new(),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|tid| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("qwen-worker-{tid}"))
                    .spawn(move || worker_loop(&shared, tid, n_threads))
                    .expect("failed to spawn a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(thread_index, n_threads)` once on every thread of the pool and returns when all
    /// are done. Re-raises a panic from any worker.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.n_threads();
        if n == 1 {
            job(0, 1);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: erase the lifetime; we wait below until no worker holds the pointer.
        let ptr: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Job>(job) };
        *sh.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobPtr(ptr));
        sh.pending.store(n - 1, Ordering::SeqCst);
        {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.generation.fetch_add(1, Ordering::SeqCst);
        }
        sh.wake(&sh.work, true);
        let mine = catch_unwind(AssertUnwindSafe(|| job(0, n)));
        sh.wait_until(&sh.done, || sh.pending.load(Ordering::SeqCst) == 0);
        *sh.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if sh.panicked.swap(false, Ordering::SeqCst) {
            panic!("a worker thread panicked");
        }
    }

    /// Splits `0..n` into one contiguous range per thread and calls `f(range)` in parallel.
    pub fn for_ranges(&self, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        self.run(&|tid, nth| {
            let r = split_range(n, tid, nth);
            if !r.is_empty() {
                f(r)
            }
        });
    }

    /// Calls `f(thread, range)` over `0..n` in consecutive pieces of `chunk` items (the last may
    /// be shorter), which the threads claim one at a time from a shared counter until none is
    /// left; `thread` is the claiming thread's index in `0..n_threads()` (0: the caller), for
    /// per-thread scratch. Unlike [`ThreadPool::for_ranges`], a thread slowed down (by another
    /// process on its core, or by waking up late) takes fewer pieces instead of making every
    /// other thread wait for its fixed share.
    pub fn for_chunks(
        &self,
        n: usize,
        chunk: usize,
        f: &(dyn Fn(usize, std::ops::Range<usize>) + Sync),
    ) {
        let chunk = chunk.max(1);
        if self.n_threads() == 1 || n <= chunk {
            // Nothing to share (waking the workers would cost more than the piece).
            for start in (0..n).step_by(chunk) {
                f(0, start..n.min(start + chunk));
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|tid, _| loop {
            // Relaxed: `run` orders the job's start and end; the counter only hands out indices.
            let start = next.fetch_add(chunk, Ordering::Relaxed);
            if start >= n {
                break;
            }
            f(tid, start..n.min(start + chunk));
        });
    }
}

/// The `tid`-th of `nth` nearly equal contiguous parts of `0..n`.
pub fn split_range(n: usize, tid: usize, nth: usize) -> std::ops::Range<usize> {
    let base = n / nth;
    let extra = n % nth;
    let start = tid * base + tid.min(extra);
    let len = base + usize::from(tid < extra);
    start..start + len
}

fn worker_loop(sh: &Shared, tid: usize, n_threads: usize) {
    let mut seen = 0u64;
    loop {
        sh.wait_until(&sh.work, || {
            sh.generation.load(Ordering::SeqCst) != seen || sh.shutdown.load(Ordering::SeqCst)
        });
        if sh.shutdown.load(Ordering::SeqCst) {
            return;
        }
        seen = sh.generation.load(Ordering::SeqCst);
        let job = *sh.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: `run` keeps the job alive until `pending` reaches zero.
            let f = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| f(tid, n_threads))).is_err() {
                sh.panicked.store(true, Ordering::SeqCst);
            }
        }
        if sh.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            sh.wake(&sh.done, false);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::SeqCst);
        }
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.work.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Default thread count: the number of physical cores where we can tell, else logical CPUs.
pub fn default_threads() -> usize {
    physical_cores().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

fn physical_cores() -> Option<usize> {
    // Linux: count distinct (physical id, core id) pairs; hyper-threads share a core.
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mut cores = std::collections::HashSet::new();
    let mut phys = "";
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => phys = v.trim(),
                "core id" => {
                    cores.insert((phys.to_string(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    let avail = std::thread::available_parallelism().ok()?.get();
    (!cores.is_empty()).then(|| cores.len().min(avail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_index_runs_once() {
        let pool = ThreadPool::new(4);
        for _ in 0..100 {
            let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
            pool.for_ranges(1000, &|r| {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn chunks_cover_every_index_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for (n, chunk) in [
                (0, 4),
                (1, 4),
                (7, 2),
                (1000, 6),
                (1000, 0),
                (64, 64),
                (65, 64),
            ] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_chunks(n, chunk, &|tid, r| {
                    assert!(tid < threads);
                    assert!(r.len() <= chunk.max(1) && !r.is_empty());
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{n} {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_slow_thread_takes_fewer_chunks() {
        // One thread sleeps in each of its chunks: the others must take the rest rather than
        // leave it a fixed half.
        let pool = ThreadPool::new(2);
        let per_thread: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        pool.for_chunks(40, 1, &|tid, _| {
            per_thread[tid].fetch_add(1, Ordering::Relaxed);
            if tid == 1 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let (f, s) = (
            per_thread[0].load(Ordering::Relaxed),
            per_thread[1].load(Ordering::Relaxed),
        );
        assert_eq!(s + f, 40);
        assert!(s < 10, "the slow thread took {s} of 40 chunks");
    }

    #[test]
    fn split_covers_everything() {
        for n in [0, 1, 7, 100] {
            for nth in 1..6 {
                let total: usize = (0..nth).map(|t| split_range(n, t, nth).len()).sum();
                assert_eq!(total, n);
            }
        }
    }

    #[test]
    fn worker_panic_is_reported() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(&|tid, _| assert!(tid == 0))));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.run(&|_, _| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
