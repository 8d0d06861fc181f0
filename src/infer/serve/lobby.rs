//! Where accepted connections wait for a connection thread. A connection never waits long:
//! a `GET /health` that has arrived is answered from here at once, and any other connection
//! still waiting after [`Limits::queue_wait`](super::Limits) gets `503` with `Retry-After`.
//! So clients that hold every connection thread (stalled or slow ones) delay nobody else.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::http::Reply;

/// How often waiting connections are looked at.
const TICK: Duration = Duration::from_millis(50);

/// The waiting connections, oldest first.
pub struct Lobby {
    state: Mutex<State>,
    arrived: Condvar,
    /// Most connections waiting at once; more are refused at the door.
    capacity: usize,
}

struct State {
    waiting: VecDeque<(TcpStream, Instant)>,
    /// No more connections will come: threads finish once the queue is empty.
    closed: bool,
}

/// What to do with a waiting connection.
enum Verdict {
    Wait,
    /// A health check whose request head is this many bytes long.
    Health(usize),
    Busy,
}

impl Lobby {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                closed: false,
            }),
            arrived: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a connection wait; gives it back when the lobby is full.
    pub fn enter(&self, stream: TcpStream) -> Result<(), TcpStream> {
        let mut state = self.lock();
        if state.waiting.len() >= self.capacity {
            return Err(stream);
        }
        state.waiting.push_back((stream, Instant::now()));
        drop(state);
        self.arrived.notify_one();
        Ok(())
    }

    /// The next waiting connection, or `None` once the lobby is closed and empty.
    pub fn next(&self) -> Option<TcpStream> {
        let mut state = self.lock();
        loop {
            if let Some((stream, _)) = state.waiting.pop_front() {
                return Some(stream);
            }
            if state.closed {
                return None;
            }
            state = self.arrived.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// No more connections come; the waiting ones are still served.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_all();
    }

    /// Until the lobby closes: answers `GET /health` on waiting connections, and `503` to
    /// those that waited longer than `queue_wait`. `health` is the health reply's body;
    /// `threads` is named in the 503.
    pub fn attend(&self, queue_wait: Duration, health: &serde_json::Value, threads: usize) {
        loop {
            let mut health_checks = Vec::new();
            let mut refused = Vec::new();
            {
                let mut state = self.lock();
                if state.closed {
                    return;
                }
                let mut kept = VecDeque::with_capacity(state.waiting.len());
                while let Some((stream, since)) = state.waiting.pop_front() {
                    match verdict(&stream, since, queue_wait) {
                        Verdict::Wait => kept.push_back((stream, since)),
                        Verdict::Health(len) => health_checks.push((stream, len)),
                        Verdict::Busy => refused.push(stream),
                    }
                }
                state.waiting = kept;
            }
            for (stream, len) in health_checks {
                answer_health(stream, len, health);
            }
            for stream in refused {
                refuse_busy(stream, threads);
            }
            std::thread::sleep(TICK);
        }
    }
}

fn verdict(stream: &TcpStream, since: Instant, queue_wait: Duration) -> Verdict {
    if let Some(len) = health_check(stream) {
        Verdict::Health(len)
    } else if since.elapsed() >= queue_wait {
        Verdict::Busy
    } else {
        Verdict::Wait
    }
}

/// When the connection's first request has arrived and is a `GET /health` without a body:
/// the length of its head. Looks without taking anything off the connection.
fn health_check(stream: &TcpStream) -> Option<usize> {
    let mut buf = [0u8; 4096];
    stream.set_nonblocking(true).ok()?;
    let peeked = stream.peek(&mut buf);
    stream.set_nonblocking(false).ok();
    let seen = &buf[..peeked.ok()?];
    let end = seen.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&seen[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some("GET"), Some(target), Some("HTTP/1.1" | "HTTP/1.0"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let declares_body = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                || (name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
        })
    });
    (target.split('?').next() == Some("/health") && !declares_body).then_some(end + 4)
}

/// Answers the health check that [`health_check`] saw (its head `len` bytes long), then
/// closes the connection.
fn answer_health(stream: TcpStream, len: usize, health: &serde_json::Value) {
    let mut stream = stream;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok();
    // Takes the request off the connection, so closing it does not reset the reply.
    let mut head = vec![0u8; len];
    stream.read_exact(&mut head).ok();
    let reply = Reply::json(200, health.clone());
    stream.set_write_timeout(Some(Duration::from_secs(1))).ok();
    stream.write_all(&reply.to_bytes(false)).ok();
    stream.shutdown(std::net::Shutdown::Both).ok();
}

/// Every connection thread is busy, and this connection cannot be served in time: 503.
pub fn refuse_busy(stream: TcpStream, threads: usize) {
    let reply = Reply::error(
        503,
        format!("busy: all {threads} connections are in use; retry shortly"),
    )
    .with_header("Retry-After", "1");
    let mut stream = stream;
    // What the client already sent is taken off first: closing a connection with unread
    // bytes resets it, and the reply would be lost.
    if stream.set_nonblocking(true).is_ok() {
        let mut chunk = [0u8; 64 * 1024];
        let mut discarded = 0usize;
        while discarded < 16 * 1024 * 1024 {
            match stream.read(&mut chunk) {
                Ok(n) if n > 0 => discarded += n,
                _ => break,
            }
        }
        stream.set_nonblocking(false).ok();
    }
    stream.set_write_timeout(Some(Duration::from_secs(1))).ok();
    stream.write_all(&reply.to_bytes(false)).ok();
    stream.shutdown(std::net::Shutdown::Write).ok();
}
