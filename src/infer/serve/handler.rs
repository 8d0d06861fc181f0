//! What a connection thread does: reads requests, checks the token and the limits, decodes
//! the image, hands it to the model thread and writes the answer.

use std::net::TcpStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::http::{Conn, ReadError, Reply, Request};
use super::lobby::Lobby;
use super::model::{Admission, Job, ModelSummary};
use super::{Limits, Token};

/// Everything the connection threads share.
pub struct Shared {
    pub model: ModelSummary,
    pub token: Option<Token>,
    pub limits: Limits,
    pub admission: Arc<Admission>,
    pub decoding: Permits,
    /// Set once the server is stopping: finish what is in flight, take nothing new.
    pub stopping: Arc<AtomicBool>,
    /// Connections accepted and waiting for a connection thread.
    pub lobby: Arc<Lobby>,
    /// Connection threads free to take a waiting connection.
    pub free_threads: AtomicUsize,
}

impl Shared {
    /// Every connection thread is busy and connections wait for one: idle kept-alive
    /// connections should make way.
    fn pool_exhausted(&self) -> bool {
        self.lobby.len() > 0 && self.free_threads.load(Ordering::SeqCst) == 0
    }
}

/// Serves one connection until it closes, times out, errs, or the server stops.
pub fn serve_connection(shared: &Shared, jobs: &Sender<Job>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let mut conn = Conn::new(stream);
    loop {
        let give_up = || shared.stopping.load(Ordering::SeqCst) || shared.pool_exhausted();
        let request =
            match conn.read_head(shared.limits.idle_timeout, shared.limits.timeout, &give_up) {
                Ok(request) => request,
                Err(ReadError::Closed) => return,
                Err(e) => {
                    let reply = read_error_reply(e, &shared.limits);
                    log::info!("{peer}: bad request -> {}", reply.status);
                    conn.write(&reply.to_bytes(false), shared.limits.timeout)
                        .ok();
                    conn.close();
                    return;
                }
            };
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            answer(shared, jobs, &mut conn, &request)
        }));
        let (reply, body_read) = outcome.unwrap_or_else(|_| {
            (
                Reply::error(500, "internal error while answering this request"),
                false,
            )
        });
        log::info!(
            "{peer}: {} {} -> {} in {} ms",
            request.method,
            request.path.escape_debug(),
            reply.status,
            started.elapsed().as_millis()
        );
        // Keep the connection only after a clean exchange, while no connection waits for a
        // thread, and while the server runs.
        let keep_alive = request.keep_alive
            && body_read
            && reply.status < 400
            && !shared.pool_exhausted()
            && !shared.stopping.load(Ordering::SeqCst);
        if conn
            .write(&reply.to_bytes(keep_alive), shared.limits.timeout)
            .is_err()
        {
            return;
        }
        if !keep_alive {
            conn.close();
            return;
        }
    }
}

fn read_error_reply(e: ReadError, limits: &Limits) -> Reply {
    match e {
        ReadError::Bad(status, message) => Reply::error(status, message),
        ReadError::TimedOut { received } => Reply::error(
            408,
            format!(
                "the request did not arrive within {} s ({received} bytes received)",
                limits.timeout.as_secs_f64()
            ),
        ),
        ReadError::Short { received } => Reply::error(
            400,
            format!("the connection ended after {received} bytes, in the middle of the request"),
        ),
        ReadError::Closed => Reply::error(400, "the connection ended"),
    }
}

/// Answers one request. Returns the reply and whether the request was read completely (its
/// body included), so the connection can carry another.
fn answer(
    shared: &Shared,
    jobs: &Sender<Job>,
    conn: &mut Conn,
    request: &Request,
) -> (Reply, bool) {
    let method = request.method.as_str();
    let path = request.path.as_str();
    let declares_body = request.header("transfer-encoding").is_some()
        || request
            .header("content-length")
            .is_some_and(|v| v.trim() != "0");
    let unread = |reply: Reply| (reply, !declares_body);
    if path == "/health" {
        return unread(match method {
            "GET" => Reply::json(200, shared.model.health.clone()),
            _ => not_allowed(method, path, "GET"),
        });
    }
    if let Some(token) = &shared.token
        && let Err(reply) = check_token(token, request)
    {
        return unread(reply);
    }
    match (method, path) {
        ("POST", "/predict") => {}
        (_, "/predict") => return unread(not_allowed(method, path, "POST")),
        _ => {
            return unread(Reply::error(
                404,
                format!("no route {path} (try GET /health or POST /predict)"),
            ));
        }
    }

    // The body: its length is known and within the limit before any of it is read.
    if request.header("transfer-encoding").is_some() {
        return unread(Reply::error(
            411,
            "chunked bodies are not accepted: send the image with a Content-Length header",
        ));
    }
    let mut lengths = request.headers("content-length");
    let Some(length) = lengths.next() else {
        return unread(Reply::error(
            411,
            "no body: POST the image file as the request body, with a Content-Length header",
        ));
    };
    if lengths.any(|other| other != length) {
        return unread(Reply::error(400, "conflicting Content-Length headers"));
    }
    let Ok(length) = length.parse::<u64>() else {
        return unread(Reply::error(
            400,
            format!("malformed Content-Length {length:?}"),
        ));
    };
    if length == 0 {
        return unread(Reply::error(
            400,
            "empty body: POST the image file as the request body",
        ));
    }
    let max_body = shared.limits.max_body_bytes;
    if length > max_body {
        return unread(Reply::error(
            413,
            format!("the body ({length} bytes) is larger than the limit of {max_body} bytes"),
        ));
    }
    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        && conn
            .write(b"HTTP/1.1 100 Continue\r\n\r\n", shared.limits.timeout)
            .is_err()
    {
        return (Reply::error(400, "the connection failed"), false);
    }
    let body = match conn.read_body(length as usize, request.deadline) {
        Ok(body) => body,
        Err(ReadError::Short { received }) => {
            return (
                Reply::error(
                    400,
                    format!(
                        "the body ended after {received} of the {length} bytes announced by Content-Length"
                    ),
                ),
                false,
            );
        }
        Err(ReadError::TimedOut { received }) => {
            return (
                Reply::error(
                    408,
                    format!(
                        "the body did not arrive within {} s ({received} of {length} bytes received)",
                        shared.limits.timeout.as_secs_f64()
                    ),
                ),
                false,
            );
        }
        Err(e) => return (read_error_reply(e, &shared.limits), false),
    };
    (predict(shared, jobs, body), true)
}

fn not_allowed(method: &str, path: &str, allowed: &str) -> Reply {
    Reply::error(
        405,
        format!("method {method} not allowed on {path} (use {allowed})"),
    )
    .with_header("Allow", allowed)
}

fn check_token(token: &Token, request: &Request) -> Result<(), Reply> {
    let unauthorized = |message: &str| {
        Reply::error(401, message).with_header("WWW-Authenticate", "Bearer realm=\"cellbench\"")
    };
    let Some(value) = request.header("authorization") else {
        return Err(unauthorized(
            "this server needs a token: send the header Authorization: Bearer <token>",
        ));
    };
    let presented = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match presented {
        Some(t) if token.matches(t.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("the token is not valid")),
        None => Err(unauthorized(
            "the Authorization header is not a bearer token: send Authorization: Bearer <token>",
        )),
    }
}

/// Checks the image's dimensions from its header, then decodes, preprocesses and classifies.
fn predict(shared: &Shared, jobs: &Sender<Job>, body: Vec<u8>) -> Reply {
    // A file cut short may lose its header too (a TIFF's directory follows its pixels): said
    // as a cut rather than as garbage.
    if let Ok(format) = image::guess_format(&body)
        && let Err(message) = crate::dataset::image_io::check_complete(&body, format)
    {
        return Reply::error(400, format!("not a readable image: {message}"));
    }
    let (_, width, height) = match image_dimensions(&body) {
        Ok(d) => d,
        Err(message) => return Reply::error(400, format!("not a readable image: {message}")),
    };
    // Decoders accept a file cut short (a JPEG's missing rows come out grey): refused above,
    // as a label for half an image would be a confident answer to the wrong question.
    let pixels = u64::from(width) * u64::from(height);
    let max_pixels = shared.limits.max_pixels;
    if pixels > max_pixels {
        return Reply::error(
            413,
            format!(
                "the image is {width}×{height} = {pixels} pixels, more than the limit of {max_pixels} pixels"
            ),
        );
    }
    let Some(ticket) = shared.admission.try_admit() else {
        return Reply::error(
            503,
            format!(
                "busy: {} images are already waiting for the model; retry shortly",
                shared.admission.capacity()
            ),
        )
        .with_header("Retry-After", "1");
    };
    let chw = {
        let _permit = shared.decoding.acquire();
        match crate::dataset::image_io::decode_bytes(&body) {
            Ok(img) => {
                drop(body);
                shared.model.preprocess.apply(&img)
            }
            Err(e) => return Reply::error(400, format!("not a readable image: {e}")),
        }
    };
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    if jobs
        .send(Job {
            chw,
            reply: reply_tx,
            ticket,
        })
        .is_err()
    {
        return Reply::error(500, "the model is not running");
    }
    match reply_rx.recv() {
        Ok(Ok((predicted, probs))) => {
            let map: serde_json::Map<String, serde_json::Value> = shared
                .model
                .labels
                .iter()
                .zip(&probs)
                .map(|(l, p)| (l.clone(), serde_json::json!(p)))
                .collect();
            Reply::json(
                200,
                serde_json::json!({ "predicted": predicted, "probabilities": map }),
            )
        }
        Ok(Err(message)) => Reply::error(500, message),
        Err(_) => Reply::error(500, "the model stopped before answering"),
    }
}

/// Format, width and height from the image's header, without decoding its pixels.
fn image_dimensions(bytes: &[u8]) -> Result<(image::ImageFormat, u32, u32), String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let Some(format) = reader.format() else {
        return Err("unknown format (send a PNG, JPEG, BMP, TIFF or WebP file)".into());
    };
    let (width, height) = reader.into_dimensions().map_err(|e| e.to_string())?;
    Ok((format, width, height))
}

/// A counting semaphore: at most `n` holders at once.
pub struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    pub fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

/// Held while decoding; returns its permit when dropped.
pub struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}
