//! The one owner of burn/tensor work in the workbench: a single thread that runs compute jobs
//! (training, prediction) one after the other, in the order they were asked for. cubecl orders
//! GPU work per thread, and two trainings at once would only halve each other's speed; a job
//! waiting its turn is shown as queued by the cell that asked for it.
//!
//! A browser page has one thread. There the same jobs wait in a queue that [`run_deferred`]
//! works through between frames, within a time budget per frame; background tasks of the UI
//! (opening a dataset, thumbnails) use the same queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

type Job = Box<dyn FnOnce() + Send>;

#[cfg(target_arch = "wasm32")]
thread_local! {
    static DEFERRED: std::cell::RefCell<std::collections::VecDeque<(&'static str, Job)>> = Default::default();
}

/// Queues `job` to run between frames (the browser's stand-in for a thread). `name` appears
/// in the console when one job holds the page for longer than a frame should take.
#[cfg(target_arch = "wasm32")]
pub fn defer(name: &'static str, job: impl FnOnce() + Send + 'static) {
    DEFERRED.with(|q| q.borrow_mut().push_back((name, Box::new(job))));
}

/// Queues `job` before every other waiting job (the next step of a job in steps).
#[cfg(target_arch = "wasm32")]
fn defer_first(name: &'static str, job: Job) {
    DEFERRED.with(|q| q.borrow_mut().push_front((name, job)));
}

/// Runs queued jobs, in order, until `budget` is spent (at least one job when any waits).
/// Returns whether jobs are left. Called once per frame by the app.
#[cfg(target_arch = "wasm32")]
pub fn run_deferred(budget: std::time::Duration) -> bool {
    let start = web_time::Instant::now();
    loop {
        let Some((name, job)) = DEFERRED.with(|q| q.borrow_mut().pop_front()) else {
            return false;
        };
        let job_start = web_time::Instant::now();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            log::error!("a background job ({name}) panicked; the page goes on");
        }
        let ms = job_start.elapsed().as_millis();
        if ms > 100 {
            log::warn!("{name} held the page for {ms} ms");
        }
        if start.elapsed() >= budget {
            return DEFERRED.with(|q| !q.borrow().is_empty());
        }
    }
}

/// A handle to the compute thread.
pub struct ComputeWorker {
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    tx: Option<mpsc::Sender<Job>>,
    /// Jobs submitted and not yet finished (running + queued).
    pending: Arc<AtomicUsize>,
}

impl ComputeWorker {
    /// In the browser: jobs go to the between-frames queue.
    #[cfg(target_arch = "wasm32")]
    pub fn start() -> Self {
        Self {
            tx: None,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Starts the compute thread.
    #[cfg(not(target_arch = "wasm32"))]
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
        #[cfg(target_arch = "wasm32")]
        {
            // A job of one step.
            let mut job = Some(job);
            self.submit_steps(move || {
                if let Some(job) = job.take() {
                    job();
                }
                false
            })
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.send_to_thread(job)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn send_to_thread(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let Some(tx) = &self.tx else { return false };
        self.pending.fetch_add(1, Ordering::SeqCst);
        if tx.send(Box::new(job)).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Queues a job made of steps: `step` is called until it returns false. On the desktop
    /// the steps run back to back on the compute thread; in the browser one step per turn of
    /// the between-frames queue, ahead of the jobs queued after it, so that a long job (a
    /// batch prediction) never holds the page for more than a step.
    pub fn submit_steps(&self, step: impl FnMut() -> bool + Send + 'static) -> bool {
        #[cfg(target_arch = "wasm32")]
        {
            fn again(mut step: Box<dyn FnMut() -> bool + Send>, count: Arc<AtomicUsize>) -> Job {
                Box::new(move || {
                    if step() {
                        defer_first("compute", again(step, count));
                    } else {
                        count.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            }
            self.pending.fetch_add(1, Ordering::SeqCst);
            defer("compute", again(Box::new(step), self.pending.clone()));
            true
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let mut step = step;
            self.submit(move || while step() {})
        }
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
