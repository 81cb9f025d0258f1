//! A persistent worker pool: threads are spawned once and woken for each parallel op, so the
//! decode loop neither spawns threads nor allocates.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = dyn Fn(usize, usize) + Sync;

/// A job pointer whose lifetime was erased; `run` keeps the job alive until every worker is done.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync` and outlives every use (see `ThreadPool::run`).
unsafe impl Send for JobPtr {}

struct State {
    job: Option<JobPtr>,
    generation: u64,
    pending: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    panicked: AtomicBool,
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
            state: Mutex::new(State {
                job: None,
                generation: 0,
                pending: 0,
                shutdown: false,
            }),
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
        // SAFETY: erase the lifetime; we wait below until no worker holds the pointer.
        let ptr: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Job>(job) };
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.job = Some(JobPtr(ptr));
            st.generation = st.generation.wrapping_add(1);
            st.pending = n - 1;
        }
        self.shared.work.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| job(0, n)));
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.pending > 0 {
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.job = None;
        drop(st);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if self.shared.panicked.swap(false, Ordering::SeqCst) {
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
}

/// The `tid`-th of `nth` nearly equal contiguous parts of `0..n`.
pub fn split_range(n: usize, tid: usize, nth: usize) -> std::ops::Range<usize> {
    let base = n / nth;
    let extra = n % nth;
    let start = tid * base + tid.min(extra);
    let len = base + usize::from(tid < extra);
    start..start + len
}

fn worker_loop(shared: &Shared, tid: usize, n_threads: usize) {
    let mut seen = 0u64;
    loop {
        let job = {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.generation == seen && !st.shutdown {
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job
        };
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: `run` keeps the job alive until `pending` reaches zero.
            let f = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| f(tid, n_threads))).is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pending -= 1;
        if st.pending == 0 {
            shared.done.notify_one();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.shutdown = true;
        }
        self.shared.work.notify_all();
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
