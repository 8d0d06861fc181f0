//! `cellbench serve`: an HTTP endpoint. `POST /predict` with an image as the body returns the
//! probabilities as JSON; `GET /health` says what model is served.
//!
//! How it is built:
//! - a pool of connection threads reads requests with deadlines and writes replies with a
//!   timeout, so a stalled or slow client only ever holds its own thread; connections waiting
//!   for a thread get their `GET /health` answered at once, and `503` with `Retry-After` when
//!   no thread frees up in time, so clients holding every thread delay nobody else;
//! - each image's size is checked from its header before its pixels are decoded, and at most
//!   one image per CPU core is decoded at once (memory stays bounded);
//! - one model thread owns the classifier (all burn work happens on it) and classifies the
//!   decoded images in dynamic batches; a bounded number of images is admitted at once, more
//!   get `503` with `Retry-After`;
//! - anywhere but loopback, every request except `GET /health` must carry the token;
//! - SIGTERM or Ctrl-C stops taking connections and finishes the requests in flight.

mod handler;
mod http;
mod lobby;
mod model;

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

/// Largest accepted request body, by default.
pub const MAX_BODY_BYTES: u64 = 20 * 1024 * 1024;
/// Largest accepted image (width × height), by default.
pub const MAX_PIXELS: u64 = 40_000_000;

/// What one request may cost.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest body; a larger `Content-Length` is refused (413) before any of it is read.
    pub max_body_bytes: u64,
    /// Largest image, in pixels, read from its header; larger is refused (413) undecoded.
    pub max_pixels: u64,
    /// Time a client has to send one whole request, and to take one reply.
    pub timeout: Duration,
    /// Time an idle kept-alive connection waits for its next request.
    pub idle_timeout: Duration,
    /// Time an accepted connection may wait for a free connection thread; then it gets 503
    /// with `Retry-After` (a `GET /health` is answered while it waits).
    pub queue_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: MAX_BODY_BYTES,
            max_pixels: MAX_PIXELS,
            timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(5),
            queue_wait: Duration::from_secs(2),
        }
    }
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `host:port` to listen on (port 0: any free port, printed at start).
    pub addr: String,
    /// The token clients must send (`Authorization: Bearer …`); required off loopback.
    pub token: Option<Token>,
    /// Connection threads: clients served at once.
    pub threads: usize,
    /// Images admitted at once (being decoded, waiting, or being classified).
    pub queue: usize,
    /// Most images classified in one batch.
    pub max_batch: usize,
    /// How long the model waits for more images to fill a batch while more are on their way.
    pub batch_wait: Duration,
    /// Average each image's probabilities over its 8 orientations (8 times the compute).
    pub orientation_tta: bool,
    pub limits: Limits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            token: None,
            threads: 64,
            queue: 64,
            max_batch: 16,
            batch_wait: Duration::from_millis(5),
            orientation_tta: false,
            limits: Limits::default(),
        }
    }
}

/// The secret clients present. Never printed: its `Debug` shows `***`.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// A token from text; surrounding whitespace (a file's final newline) is ignored.
    /// `source` names where it came from, for the error messages.
    pub fn new(text: &str, source: &str) -> anyhow::Result<Self> {
        let t = text.trim();
        anyhow::ensure!(!t.is_empty(), "the token from {source} is empty");
        anyhow::ensure!(
            t.bytes().all(|b| b.is_ascii_graphic()),
            "the token from {source} has spaces or characters that cannot go in an HTTP header"
        );
        if t.len() < 16 {
            log::warn!(
                "the token from {source} is only {} characters long; a longer one is harder to guess",
                t.len()
            );
        }
        Ok(Self(t.as_bytes().to_vec()))
    }

    /// Reads the token from an environment variable.
    pub fn from_env(var: &str) -> anyhow::Result<Self> {
        let value = std::env::var(var).map_err(|_| {
            anyhow::anyhow!("the environment variable {var} (--token-env) is not set or not UTF-8")
        })?;
        Self::new(&value, &format!("the environment variable {var}"))
    }

    /// Reads the token from a file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = crate::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the token file (--token-file) {}",
                path.display()
            )
        })?;
        Self::new(&text, &format!("the file {}", path.display()))
    }

    /// Compares in time that does not depend on where the presented token differs.
    fn matches(&self, presented: &[u8]) -> bool {
        let mut diff = u8::from(self.0.len() != presented.len());
        for (i, a) in self.0.iter().enumerate() {
            diff |= a ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

/// Resolves `addr`; refuses an address off loopback when no token protects it.
fn resolve(addr: &str, token: Option<&Token>) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the address to listen on: {addr}"))?
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "{addr} resolves to no address");
    let exposed: Vec<String> = addrs
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if token.is_none() && !exposed.is_empty() {
        anyhow::bail!(
            "refusing to serve on {} without a token: other machines could reach the model. \
             Give --token-env VAR or --token-file PATH (clients then send \
             Authorization: Bearer <token>), or listen on 127.0.0.1",
            exposed.join(", ")
        );
    }
    Ok(addrs)
}

/// Serves the model of a run folder until SIGTERM or Ctrl-C, then finishes the requests in
/// flight and returns. The model is loaded onto `device` on the model thread.
pub fn serve(
    run: &Path,
    device: burn::tensor::Device,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let addrs = resolve(&options.addr, options.token.as_ref())?;
    let listener = TcpListener::bind(&addrs[..])
        .with_context(|| format!("cannot listen on {}", options.addr))?;
    let local = listener.local_addr()?;

    let admission = model::Admission::new(options.queue);
    let (jobs, model_thread, summary) = model::spawn(
        PathBuf::from(run),
        device,
        model::Batching {
            max_batch: options.max_batch,
            wait: options.batch_wait,
            orientation_tta: options.orientation_tta,
        },
        admission.clone(),
    )?;

    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        let wake = wake_address(local);
        let installed = ctrlc::set_handler(move || {
            if stopping.swap(true, Ordering::SeqCst) {
                crate::errln!("stopping at once");
                std::process::exit(130);
            }
            crate::errln!(
                "stopping: finishing the requests in flight (Ctrl-C again to quit at once)…"
            );
            // Wakes the accept loop so that it sees the flag.
            TcpStream::connect_timeout(&wake, Duration::from_secs(1)).ok();
        });
        if let Err(e) = installed {
            log::warn!("cannot catch SIGTERM/Ctrl-C ({e}); stopping will cut requests in flight");
        }
    }

    let threads = options.threads.max(1);
    let decoders = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Waiting connections leave within `queue_wait`, so many may wait; the bound only keeps
    // file descriptors for the connections being served.
    let lobby = Arc::new(lobby::Lobby::new((4 * threads).max(256)));
    let shared = Arc::new(handler::Shared {
        model: summary,
        token: options.token.clone(),
        limits: options.limits.clone(),
        admission,
        decoding: handler::Permits::new(decoders),
        stopping: stopping.clone(),
        lobby: lobby.clone(),
        free_threads: AtomicUsize::new(0),
    });
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let (shared, jobs) = (shared.clone(), jobs.clone());
        let worker = std::thread::Builder::new()
            .name(format!("cellbench-http-{i}"))
            .spawn(move || connection_worker(&shared, &jobs))
            .context("cannot start the connection threads")?;
        workers.push(worker);
    }
    drop(jobs);
    let attendant = {
        let (lobby, queue_wait) = (lobby.clone(), options.limits.queue_wait);
        let health = shared.model.health.clone();
        std::thread::Builder::new()
            .name("cellbench-http-lobby".into())
            .spawn(move || lobby.attend(queue_wait, &health, threads))
            .context("cannot start the connection threads")?
    };

    crate::errln!(
        "serving {} on http://{local}  —  POST /predict, GET /health{}",
        shared.model.description,
        if shared.token.is_some() {
            "  (token required except on /health)"
        } else {
            ""
        }
    );
    for incoming in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                log::warn!("cannot accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if let Err(stream) = lobby.enter(stream) {
            lobby::refuse_busy(stream, threads);
        }
    }
    drop(listener);
    lobby.close();
    for worker in workers {
        worker.join().ok();
    }
    attendant.join().ok();
    // The last sender of jobs went with the connection threads: the model thread finishes.
    model_thread.join().ok();
    crate::errln!("stopped");
    Ok(())
}

fn connection_worker(shared: &handler::Shared, jobs: &mpsc::Sender<model::Job>) {
    loop {
        shared.free_threads.fetch_add(1, Ordering::SeqCst);
        let next = shared.lobby.next();
        shared.free_threads.fetch_sub(1, Ordering::SeqCst);
        let Some(stream) = next else { return };
        // A failure on one connection must not take the thread, and its capacity, with it.
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler::serve_connection(shared, jobs, stream);
        }));
        if served.is_err() {
            log::error!("a connection failed with an internal error");
        }
    }
}

/// Where to connect to reach the listener from this machine.
fn wake_address(local: SocketAddr) -> SocketAddr {
    let mut a = local;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compares_whole_values_and_hides_itself() {
        let t = Token::new("  s3cret-token-value-1234\n", "a test").unwrap();
        assert!(t.matches(b"s3cret-token-value-1234"));
        assert!(!t.matches(b"s3cret-token-value-123"));
        assert!(!t.matches(b"s3cret-token-value-12345"));
        assert!(!t.matches(b"S3cret-token-value-1234"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(Token::new(" \n", "a test").is_err());
        assert!(Token::new("two words", "a test").is_err());
    }

    #[test]
    fn off_loopback_needs_a_token() {
        assert!(resolve("127.0.0.1:0", None).is_ok());
        assert!(resolve("[::1]:0", None).is_ok());
        let e = resolve("0.0.0.0:0", None).unwrap_err().to_string();
        assert!(e.contains("refusing") && e.contains("--token-env"), "{e}");
        let t = Token::new("s3cret-token-value-1234", "a test").unwrap();
        assert!(resolve("0.0.0.0:0", Some(&t)).is_ok());
    }
}
