//! Threads kept from one session to the next for the harness's own work (running the server,
//! reading the client's socket).
//!
//! A thread made for every input costs more than most inputs: under AddressSanitizer each new
//! thread gets a fresh fake stack (for stack-use-after-return detection), and every frame it
//! touches the first time is a page fault. A pooled thread has them touched already. The
//! server's and the device's own threads (its reader, the engine's worker) are still made per
//! session, as a real server makes them.
//!
//! Nothing of a job outlives it: its closure, and everything it captured, is dropped before
//! its result is handed over, so a session's descriptors and references are gone when the
//! harness has the result (as after a thread's `join`).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

/// A job as a worker runs it: the closure, which returns how to hand its result over.
type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// What a job ended with: its value, or its panic.
pub type Outcome<T> = Result<T, Box<dyn Any + Send>>;

/// Threads of one name; more are made when every one is busy.
pub struct Pool {
    name: &'static str,
    /// The idle threads, each by the sender of its job queue.
    idle: Mutex<Vec<Sender<Job>>>,
}

impl Pool {
    /// A pool of threads named `name`, none started yet.
    pub const fn new(name: &'static str) -> Pool {
        Pool {
            name,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn push_idle(&self, worker: Sender<Job>) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
    }

    /// Runs `f` on an idle thread of the pool (a new one if none is idle).
    pub fn spawn<T: Send + 'static>(
        &'static self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Task<T> {
        let (done, result) = mpsc::sync_channel(1);
        let mut job: Job = Box::new(move || {
            let outcome = panic::catch_unwind(AssertUnwindSafe(f));
            Box::new(move || {
                let _ = done.send(outcome);
            })
        });
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(worker) = idle else { break };
            match worker.send(job) {
                Ok(()) => return Task { result },
                // That thread is gone (it cannot be, but then take another).
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        let (worker, jobs) = mpsc::channel::<Job>();
        worker.send(job).expect("a new job queue");
        thread::Builder::new()
            .name(self.name.into())
            .spawn(move || {
                while let Ok(job) = jobs.recv() {
                    let hand_over = job();
                    // Idle again before the result is out, so that the next session finds
                    // this thread rather than making another.
                    self.push_idle(worker.clone());
                    hand_over();
                }
            })
            .unwrap_or_else(|e| panic!("spawn a {} thread: {e}", self.name));
        Task { result }
    }
}

/// A job running on a pooled thread.
pub struct Task<T> {
    result: Receiver<Outcome<T>>,
}

impl<T> Task<T> {
    /// Waits for the job to end.
    pub fn join(self) -> Outcome<T> {
        self.result
            .recv()
            .expect("a pooled thread hands over every job's outcome")
    }

    /// Waits up to `timeout` for the job to end; `None` if it is still running.
    pub fn join_timeout(&self, timeout: Duration) -> Option<Outcome<T>> {
        match self.result.recv_timeout(timeout) {
            Ok(outcome) => Some(outcome),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("a pooled thread hands over every job's outcome")
            }
        }
    }
}
