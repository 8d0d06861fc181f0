//! The model side of the endpoint: one thread owns the classifier (all burn work of the
//! process happens on it) and classifies images in dynamic batches; a bounded admission count
//! keeps the images waiting for it, and their memory, in check.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use crate::dataset::preprocess::Preprocess;
use crate::infer::Classifier;

/// What the connection threads need to know about the served model.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    /// `GET /health`'s body.
    pub health: serde_json::Value,
    /// One line for the start-up message.
    pub description: String,
}

/// A classified image: the decision and one probability per label.
pub type Answer = Result<(String, Vec<f32>), String>;

/// One preprocessed image on its way to the model.
pub struct Job {
    /// CHW input, `3 × size × size`.
    pub chw: Vec<f32>,
    pub reply: SyncSender<Answer>,
    pub ticket: Ticket,
}

/// How many images are admitted (being decoded, waiting, or in the batch being classified),
/// and how many of them the model has not taken yet.
#[derive(Debug, Default)]
pub struct Admission {
    capacity: usize,
    admitted: AtomicUsize,
    untaken: AtomicUsize,
}

impl Admission {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            ..Default::default()
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A place for one more image, or `None` when `capacity` images are already admitted.
    pub fn try_admit(self: &Arc<Self>) -> Option<Ticket> {
        self.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()?;
        self.untaken.fetch_add(1, Ordering::SeqCst);
        Some(Ticket {
            admission: self.clone(),
            taken: false,
        })
    }

    /// Images admitted that the model has not taken yet (being decoded, or queued).
    fn untaken(&self) -> usize {
        self.untaken.load(Ordering::SeqCst)
    }
}

/// One admitted image's place; freed when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    taken: bool,
}

impl Ticket {
    fn take(&mut self) {
        if !self.taken {
            self.taken = true;
            self.admission.untaken.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.take();
        self.admission.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How the model thread forms batches.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Most images in one batch.
    pub max_batch: usize,
    /// How long to wait for more images after the first of a batch, while more are on their
    /// way (admitted and being decoded).
    pub wait: Duration,
    /// Test-time augmentation over the 8 orientations.
    pub orientation_tta: bool,
}

/// Starts the model thread: it loads the run's model onto `device`, reports what it serves
/// (or why it cannot), then classifies jobs until every sender is dropped.
pub fn spawn(
    run: PathBuf,
    device: burn::tensor::Device,
    batching: Batching,
    admission: Arc<Admission>,
) -> anyhow::Result<(Sender<Job>, std::thread::JoinHandle<()>, ModelSummary)> {
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<ModelSummary, String>>(1);
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let handle = std::thread::Builder::new()
        .name("cellbench-model".into())
        .spawn(move || {
            let classifier = match Classifier::load(&run, &device) {
                Ok(c) => c.with_orientation_tta(batching.orientation_tta),
                Err(e) => {
                    ready_tx.send(Err(format!("{e:#}"))).ok();
                    return;
                }
            };
            ready_tx.send(Ok(summary(&classifier))).ok();
            drop(ready_tx);
            run_batches(&classifier, &job_rx, batching, &admission);
        })?;
    match ready_rx.recv() {
        Ok(Ok(summary)) => Ok((job_tx, handle, summary)),
        Ok(Err(message)) => {
            handle.join().ok();
            Err(anyhow::anyhow!(message))
        }
        Err(_) => {
            handle.join().ok();
            anyhow::bail!("the model could not be loaded (its thread stopped)")
        }
    }
}

fn summary(classifier: &Classifier) -> ModelSummary {
    let info = &classifier.info;
    ModelSummary {
        labels: info.labels.clone(),
        preprocess: info.preprocess.clone(),
        health: serde_json::json!({
            "status": "ok",
            "mode": info.mode,
            "task": info.task,
            "labels": info.labels,
            "input_size": info.preprocess.size,
            "backbone": info.backbone,
            "orientation_tta": classifier.orientation_tta(),
        }),
        description: format!(
            "{} ({:?}, labels {}{})",
            info.mode_name(),
            info.task,
            info.labels.join(", "),
            if classifier.orientation_tta() {
                "; each image averaged over its 8 orientations"
            } else {
                ""
            }
        ),
    }
}

/// Takes jobs in batches: the first job that arrives, then whatever else is queued, then —
/// while more admitted images are still being decoded — whatever arrives within the wait,
/// up to `max_batch`.
fn run_batches(
    classifier: &Classifier,
    jobs: &Receiver<Job>,
    batching: Batching,
    admission: &Admission,
) {
    let max_batch = batching.max_batch.max(1);
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch[0].ticket.take();
        let until = Instant::now() + batching.wait;
        while batch.len() < max_batch {
            let next = match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if admission.untaken() == 0 || now >= until {
                        None
                    } else {
                        jobs.recv_timeout(until - now).ok()
                    }
                }
            };
            let Some(mut job) = next else { break };
            job.ticket.take();
            batch.push(job);
        }
        classify_batch(classifier, batch);
    }
}

fn classify_batch(classifier: &Classifier, batch: Vec<Job>) {
    let n = batch.len();
    let mut flat = Vec::with_capacity(batch.iter().map(|j| j.chw.len()).sum());
    let mut replies = Vec::with_capacity(n);
    for job in batch {
        flat.extend_from_slice(&job.chw);
        replies.push((job.reply, job.ticket));
    }
    let started = Instant::now();
    // A failure inside the model answers this batch with an error and leaves the server up.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let probs = classifier.probabilities(flat, n);
        let predicted: Vec<String> = probs.iter().map(|p| classifier.predicted(p)).collect();
        (probs, predicted)
    }));
    log::debug!(
        "classified a batch of {n} images in {} ms",
        started.elapsed().as_millis()
    );
    let answers: Vec<Answer> = match result {
        Ok((probs, predicted)) if probs.len() == n => predicted
            .into_iter()
            .zip(probs)
            .map(|(label, p)| Ok((label, p)))
            .collect(),
        Ok((probs, _)) => {
            let message = format!("the model returned {} results for {n} images", probs.len());
            log::error!("{message}");
            vec![Err(message); n]
        }
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            log::error!("the model failed on a batch of {n} images: {message}");
            vec![Err(format!("the model failed: {message}")); n]
        }
    };
    for ((reply, ticket), answer) in replies.into_iter().zip(answers) {
        // The place is free before the answer leaves, so the client's next image finds it.
        drop(ticket);
        reply.send(answer).ok();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown error".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_and_tickets_free_their_place() {
        let a = Admission::new(2);
        let mut t1 = a.try_admit().unwrap();
        let t2 = a.try_admit().unwrap();
        assert!(a.try_admit().is_none());
        assert_eq!(a.untaken(), 2);
        t1.take();
        t1.take();
        assert_eq!(a.untaken(), 1);
        assert!(
            a.try_admit().is_none(),
            "taken images still hold their place"
        );
        drop(t1);
        assert_eq!(a.untaken(), 1);
        let t3 = a.try_admit().unwrap();
        drop((t2, t3));
        assert_eq!(a.untaken(), 0);
        assert_eq!(a.admitted.load(Ordering::SeqCst), 0);
    }
}
