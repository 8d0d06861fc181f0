//! Thumbnails decoded in the background and kept in a bounded cache, so a gallery of 100k
//! images scrolls smoothly and never holds them all in memory.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, mpsc};

use eframe::egui;

/// Side of a thumbnail in pixels.
pub const THUMB_SIDE: u32 = 96;
/// Textures kept at most.
const CAPACITY: usize = 1500;
/// Pending requests kept at most (the newest win: what is on screen now).
const QUEUE: usize = 400;

/// What [`ThumbCache::get`] has for an image.
pub enum Thumb {
    Ready(egui::TextureHandle),
    /// Being decoded.
    Pending,
    /// The image cannot be decoded.
    Unreadable,
}

enum Slot {
    Ready(egui::TextureHandle),
    Failed,
}

/// Requests flow to worker threads through a LIFO stack; results come back on a channel.
pub struct ThumbCache {
    slots: HashMap<PathBuf, Slot>,
    lru: VecDeque<PathBuf>,
    pending: std::collections::HashSet<PathBuf>,
    queue: Arc<(Mutex<Vec<PathBuf>>, Condvar)>,
    done: mpsc::Receiver<(PathBuf, Option<egui::ColorImage>)>,
    ctx: egui::Context,
    /// In the browser thumbnails are decoded in [`ThumbCache::poll`], a few per frame.
    #[cfg(target_arch = "wasm32")]
    decoded: mpsc::Sender<(PathBuf, Option<egui::ColorImage>)>,
}

impl ThumbCache {
    pub fn new(ctx: &egui::Context, workers: usize) -> Self {
        let queue: Arc<(Mutex<Vec<PathBuf>>, Condvar)> = Arc::default();
        let (tx, done) = mpsc::channel();
        #[cfg(target_arch = "wasm32")]
        let _ = workers;
        #[cfg(target_arch = "wasm32")]
        let decoded = tx.clone();
        #[cfg(not(target_arch = "wasm32"))]
        for i in 0..workers.max(1) {
            let queue = queue.clone();
            let tx = tx.clone();
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("thumbnails-{i}"))
                .spawn(move || {
                    loop {
                        let path = {
                            let (lock, cv) = &*queue;
                            let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                            while q.is_empty() {
                                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
                            }
                            q.pop().expect("non-empty")
                        };
                        let image = decode_thumbnail(&path);
                        if tx.send((path, image)).is_err() {
                            return;
                        }
                        ctx.request_repaint();
                    }
                })
                .ok();
        }
        Self {
            slots: HashMap::new(),
            lru: VecDeque::new(),
            pending: Default::default(),
            queue,
            done,
            ctx: ctx.clone(),
            #[cfg(target_arch = "wasm32")]
            decoded,
        }
    }

    /// Takes finished thumbnails in (call once per frame).
    pub fn poll(&mut self) {
        #[cfg(target_arch = "wasm32")]
        {
            let start = web_time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(12) {
                let next = self.queue.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(path) = next else { break };
                let image = decode_thumbnail(&path);
                self.decoded.send((path, image)).ok();
            }
            if !self
                .queue
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                self.ctx.request_repaint();
            }
        }
        while let Ok((path, image)) = self.done.try_recv() {
            self.pending.remove(&path);
            let slot = match image {
                Some(img) => Slot::Ready(self.ctx.load_texture(
                    path.display().to_string(),
                    img,
                    egui::TextureOptions::LINEAR,
                )),
                None => Slot::Failed,
            };
            self.slots.insert(path.clone(), slot);
            self.lru.push_back(path);
            while self.lru.len() > CAPACITY {
                if let Some(old) = self.lru.pop_front() {
                    self.slots.remove(&old);
                }
            }
        }
    }

    /// The thumbnail if ready; otherwise asks for it.
    pub fn get(&mut self, path: &PathBuf) -> Thumb {
        match self.slots.get(path) {
            Some(Slot::Ready(t)) => Thumb::Ready(t.clone()),
            Some(Slot::Failed) => Thumb::Unreadable,
            None => {
                if self.pending.insert(path.clone()) {
                    let (lock, cv) = &*self.queue;
                    let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                    q.push(path.clone());
                    if q.len() > QUEUE {
                        let excess = q.len() - QUEUE;
                        let dropped: Vec<PathBuf> = q.drain(..excess).collect();
                        for d in dropped {
                            self.pending.remove(&d);
                        }
                    }
                    cv.notify_one();
                }
                Thumb::Pending
            }
        }
    }

    /// Number of textures held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn decode_thumbnail(path: &std::path::Path) -> Option<egui::ColorImage> {
    let img = crate::dataset::image_io::decode_file(path).ok()?;
    let thumb = img.thumbnail(THUMB_SIDE, THUMB_SIDE).to_rgba8();
    let size = [thumb.width() as usize, thumb.height() as usize];
    Some(egui::ColorImage::from_rgba_unmultiplied(
        size,
        thumb.as_raw(),
    ))
}

/// Loads a full image (bounded to 512 px) for the inspector.
pub fn decode_preview(path: &std::path::Path) -> Result<egui::ColorImage, String> {
    let img = crate::dataset::image_io::decode_file(path).map_err(|e| e.to_string())?;
    let img = if img.width() > 512 || img.height() > 512 {
        img.thumbnail(512, 512)
    } else {
        img
    };
    let rgba = img.to_rgba8();
    Ok(egui::ColorImage::from_rgba_unmultiplied(
        [rgba.width() as usize, rgba.height() as usize],
        rgba.as_raw(),
    ))
}
