//! Threads kept from one session to the next for the harness's own work (running the server's
//! handler and its reader loop, reading the client's socket).
//!
//! A thread made for every input costs more than most inputs: under AddressSanitizer each new
//! thread gets a fresh fake stack (for stack-use-after-return detection), and every frame it
//! touches the first time is a page fault; its exit unmaps them again. A pooled thread has them
//! touched already.
//!
//! Nothing of a job outlives it, and a worker touches nothing of a job once the job is over:
//! the job's closure, and everything it captured, is dropped and its outcome stored in the
//! task's slot before the worker says the job is over, and after that the worker allocates and
//! frees nothing. So when the harness sees the job over ([`Task::join`]), every allocation the
//! job made is freed or in the harness's hands. libFuzzer counts mallocs and frees during each
//! input, and more mallocs than frees makes it run the input again and then scan for leaks; a
//! worker freeing a job's last pieces after the input is over would look like a leak of one
//! input and an extra free of the next.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A job as a worker runs it (the closure stores its own outcome).
type Job = Box<dyn FnOnce() + Send>;

/// What a job ended with: its value, or its panic.
pub type Outcome<T> = Result<T, Box<dyn Any + Send>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One thread of a pool.
struct Worker {
    state: Mutex<WorkerState>,
    /// Signalled when a job is given and when one is over.
    cond: Condvar,
}

#[derive(Default)]
struct WorkerState {
    /// The job to run next.
    job: Option<Job>,
    /// Jobs given so far.
    given: u64,
    /// Jobs over so far (they run in the order given).
    over: u64,
}

/// Threads of one name; more are made when every one is busy.
pub struct Pool {
    name: &'static str,
    /// The idle threads.
    idle: Mutex<Vec<Arc<Worker>>>,
}

impl Pool {
    /// A pool of threads named `name`, none started yet.
    pub const fn new(name: &'static str) -> Pool {
        Pool {
            name,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle thread of the pool (a new one if none is idle).
    pub fn spawn<T: Send + 'static>(
        &'static self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Task<T> {
        let slot = Arc::new(Mutex::new(None));
        let job: Job = {
            let slot = slot.clone();
            Box::new(move || {
                let outcome = panic::catch_unwind(AssertUnwindSafe(f));
                *lock(&slot) = Some(outcome);
            })
        };
        let worker = lock(&self.idle).pop().unwrap_or_else(|| self.start());
        let ticket = {
            let mut state = lock(&worker.state);
            debug_assert!(state.job.is_none(), "an idle worker has no job");
            state.job = Some(job);
            state.given += 1;
            state.given
        };
        worker.cond.notify_all();
        Task {
            worker,
            ticket,
            slot,
        }
    }

    /// A new worker thread, waiting for its first job.
    fn start(&'static self) -> Arc<Worker> {
        let worker = Arc::new(Worker {
            state: Mutex::new(WorkerState::default()),
            cond: Condvar::new(),
        });
        let this = worker.clone();
        thread::Builder::new()
            .name(self.name.into())
            .spawn(move || loop {
                let job = {
                    let mut state = lock(&this.state);
                    loop {
                        if let Some(job) = state.job.take() {
                            break job;
                        }
                        state = this.cond.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                };
                // The job, its captures and its box are gone when this returns.
                job();
                // Idle again before the job is over, so that the next session finds this
                // thread rather than making another (the vector's room is made when the pool
                // grows, not here).
                self.push_idle(this.clone());
                lock(&this.state).over += 1;
                this.cond.notify_all();
            })
            .unwrap_or_else(|e| panic!("spawn a {} thread: {e}", self.name));
        worker
    }

    fn push_idle(&self, worker: Arc<Worker>) {
        let mut idle = lock(&self.idle);
        if idle.len() == idle.capacity() {
            // Only when the pool has more threads than ever before.
            idle.reserve(8);
        }
        idle.push(worker);
    }
}

/// A job running on a pooled thread.
pub struct Task<T> {
    worker: Arc<Worker>,
    ticket: u64,
    slot: Arc<Mutex<Option<Outcome<T>>>>,
}

impl<T> Task<T> {
    /// Waits for the job to end.
    pub fn join(self) -> Outcome<T> {
        let mut state = lock(&self.worker.state);
        while state.over < self.ticket {
            state = self
                .worker
                .cond
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        self.take()
    }

    /// Waits up to `timeout` for the job to end; `None` if it is still running.
    pub fn join_timeout(&self, timeout: Duration) -> Option<Outcome<T>> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.worker.state);
        while state.over < self.ticket {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .worker
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(state);
        Some(self.take())
    }

    fn take(&self) -> Outcome<T> {
        lock(&self.slot)
            .take()
            .expect("a job stores its outcome before it is over, and it is taken once")
    }
}
