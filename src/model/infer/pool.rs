//! A tiny fork–join pool for the decode kernels. A decode step of a small model runs ~30 parallel
//! products of tens of microseconds each; a general work-stealing pool parks its threads between
//! them and pays a wake-up each time. Here workers spin briefly on one atomic word, then sleep.
//!
//! A job is `n` tasks claimed one at a time from a word holding (epoch, n, next task), so the
//! calling thread alone finishes the job if a worker is descheduled (shared machines), and waits
//! only for tasks that a worker has actually claimed. The exception is a team job, whose tasks
//! wait for each other at a [`Barrier`]: there a descheduled thread holds up the others.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// epoch << 32 | n_tasks << 16 | next_task.
    claim: AtomicU64,
    /// Points at the caller's `Job` (a fat reference on its stack) while the epoch's job runs.
    job: AtomicPtr<()>,
    done: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    shared: &'static Shared,
    threads: usize,
    /// Serialises callers (jobs from several threads at once queue up here).
    caller: Mutex<u64>,
}

thread_local! {
    /// Set while the thread runs tasks of a pool (always, on the workers).
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as running tasks until dropped (also when a task panics).
struct InTask(bool);

impl InTask {
    fn enter() -> Self {
        InTask(IN_TASK.replace(true))
    }
}

impl Drop for InTask {
    fn drop(&mut self) {
        IN_TASK.set(self.0);
    }
}

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

/// The process-wide pool, sized like rayon's global pool (so `--threads` applies to both).
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            claim: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for _ in 1..threads {
            std::thread::spawn(move || worker(shared));
        }
        Pool { shared, threads: threads.max(1), caller: Mutex::new(0) }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether the calling thread should run its work alone: a pool of one thread, or a call
    /// from inside a pool task (the process has one pool, whose other threads are then busy
    /// with the same job).
    pub fn serial(&self) -> bool {
        self.threads == 1 || IN_TASK.get()
    }

    /// Runs `f(0..n)` across the pool and returns when all tasks are done. Called from inside a
    /// task, it runs the tasks in order on the calling thread.
    pub fn run(&self, n: usize, f: impl Fn(usize) + Sync) {
        if n == 0 {
            return;
        }
        if self.serial() || n == 1 {
            (0..n).for_each(f);
            return;
        }
        assert!(n < 1 << 16, "too many tasks");
        let mut epoch = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        *epoch = *epoch % 0xFFFF_FFFF + 1; // 1 ..= 2^32 − 1: a new worker has seen epoch 0
        let s = self.shared;
        let job: Job = &f;
        s.job.store(&job as *const Job as *mut (), Release);
        s.done.store(0, Relaxed);
        s.claim.store(*epoch << 32 | (n as u64) << 16, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let in_task = InTask::enter();
        while let Ok(t) = claim(s) {
            f(t);
            s.done.fetch_add(1, Release);
        }
        drop(in_task);
        // A worker still on a claimed task: spin, but give the core away if it was descheduled.
        let mut spins = 0u32;
        while s.done.load(Acquire) < n {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(4096) {
                std::thread::yield_now();
            }
        }
    }
}

/// Where the tasks of one job meet between the phases of a team step: each waits until all `n`
/// have arrived. Only for a job of as many tasks as the pool has threads, started from outside
/// any task: each thread then runs one task and blocks in it, so every task gets a thread of its
/// own (fewer threads, and the first task would wait for ever on one never started). A task that
/// panicked would leave the others waiting, and the caller's frame gone under them: team tasks
/// hold an [`AbortOnPanic`].
pub struct Barrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    pub fn new(n: usize) -> Self {
        Barrier { n, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0) }
    }

    pub fn wait(&self) {
        let g = self.generation.load(Acquire);
        if self.arrived.fetch_add(1, AcqRel) + 1 == self.n {
            self.arrived.store(0, Relaxed);
            self.generation.store(g.wrapping_add(1), Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Acquire) == g {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(4096) {
                std::thread::yield_now();
            }
        }
    }
}

/// Ends the process if dropped while its thread panics (the panic's message is printed first).
pub struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::process::abort();
        }
    }
}

/// Claims the next task of the current job: `Ok(task)`, or `Err(epoch)` when the job of that
/// epoch has none left.
fn claim(s: &Shared) -> Result<usize, u64> {
    let mut c = s.claim.load(Acquire);
    loop {
        let (n, t) = ((c >> 16) & 0xFFFF, c & 0xFFFF);
        if t >= n {
            return Err(c >> 32);
        }
        match s.claim.compare_exchange_weak(c, c + 1, AcqRel, Acquire) {
            Ok(_) => return Ok(t as usize),
            Err(now) => c = now,
        }
    }
}

fn worker(s: &'static Shared) {
    IN_TASK.set(true);
    // The epoch whose job this worker has finished with: jobs start at epoch 1, so a job posted
    // before the worker first looks is not missed; nor is one posted between its last failed
    // claim and its next wait (a team step waits for every task to start).
    let mut seen = 0;
    loop {
        // Wait for a new job: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.claim.load(Acquire) >> 32 == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                let g = if s.claim.load(SeqCst) >> 32 == seen {
                    s.wake.wait(g).unwrap_or_else(|e| e.into_inner())
                } else {
                    g
                };
                s.sleepers.fetch_sub(1, SeqCst);
                drop(g);
            }
        }
        seen = loop {
            match claim(s) {
                Ok(t) => {
                    // SAFETY: a successful claim means the job of this epoch is not finished (its
                    // caller waits until every claimed task is done), so its `Job` is still alive.
                    let job: Job = unsafe { *(s.job.load(Acquire) as *const Job) };
                    job(t);
                    s.done.fetch_add(1, Release);
                }
                Err(epoch) => break epoch,
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_task_once() {
        let p = Pool::new(3);
        for n in [1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                p.run(n, |t| {
                    hits[t].fetch_add(1, Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Relaxed) == 50));
        }
    }

    #[test]
    fn a_barrier_holds_every_task_until_all_arrive() {
        let p = Pool::new(3);
        let b = Barrier::new(3);
        let phase: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let out_of_step = AtomicUsize::new(0);
        p.run(3, |t| {
            for k in 1..=200 {
                phase[t].store(k, Relaxed);
                b.wait();
                // every task has finished phase k and none has started phase k + 1
                if !phase.iter().all(|f| f.load(Relaxed) == k) {
                    out_of_step.fetch_add(1, Relaxed);
                }
                b.wait();
            }
        });
        assert_eq!(out_of_step.load(Relaxed), 0);
    }

    #[test]
    fn a_job_started_inside_a_task_runs_on_that_thread() {
        let p = Pool::new(2);
        let hits: Vec<AtomicUsize> = (0..12).map(|_| AtomicUsize::new(0)).collect();
        p.run(3, |t| {
            let me = std::thread::current().id();
            p.run(4, |u| {
                assert_eq!(std::thread::current().id(), me);
                hits[t * 4 + u].fetch_add(1, Relaxed);
            });
        });
        assert!(hits.iter().all(|h| h.load(Relaxed) == 1));
        assert!(!p.serial(), "the caller is outside any task again");
    }
}
