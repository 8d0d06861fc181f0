//! The one owner of burn/tensor work in the workbench: a single thread that runs compute jobs
//! (training, prediction) one after the other, in the order they were asked for. cubecl orders
//! GPU work per thread, and two trainings at once would only halve each other's speed; a job
//! waiting its turn is shown as queued by the cell that asked for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the compute thread.
pub struct ComputeWorker {
    tx: Option<mpsc::Sender<Job>>,
    /// Jobs submitted and not yet finished (running + queued).
    pending: Arc<AtomicUsize>,
}

impl ComputeWorker {
    /// Starts the compute thread.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let count = pending.clone();
        let spawned = std::thread::Builder::new()
            .name("compute".into())
            .spawn(move || {
                for job in rx {
                    // A panicking job must not take the worker (and every later job) with it.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    if r.is_err() {
                        log::error!("a compute job panicked; the worker goes on");
                    }
                    count.fetch_sub(1, Ordering::SeqCst);
                }
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                log::error!("could not start the compute thread: {e}");
                None
            }
        };
        Self { tx, pending }
    }

    /// Queues a job. Returns false when the worker is gone (the job is dropped).
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let Some(tx) = &self.tx else { return false };
        self.pending.fetch_add(1, Ordering::SeqCst);
        if tx.send(Box::new(job)).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Jobs running or waiting.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_one_at_a_time_in_order_and_survive_a_panic() {
        let worker = ComputeWorker::start();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        for i in 0..4 {
            let log = log.clone();
            let running = running.clone();
            let done = done_tx.clone();
            assert!(worker.submit(move || {
                assert_eq!(
                    running.fetch_add(1, Ordering::SeqCst),
                    0,
                    "one job at a time"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
                log.lock().unwrap().push(i);
                running.fetch_sub(1, Ordering::SeqCst);
                done.send(()).unwrap();
                if i == 1 {
                    panic!("a failing job");
                }
            }));
        }
        for _ in 0..4 {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap();
        }
        assert_eq!(*log.lock().unwrap(), [0, 1, 2, 3]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while worker.pending() > 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
    }
}
