//! Just enough HTTP/1.1 for the endpoint: one connection's requests read with deadlines, and
//! replies written with a timeout. A client that stops sending, or sends slowly, costs its own
//! connection an error once its deadline passes; it never holds anything another client needs.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines in one request.
const MAX_HEADERS: usize = 100;
/// While waiting for the next request on an idle connection, how often to look whether the
/// connection should be given up (the server stops, or other clients wait for a thread).
const IDLE_POLL: Duration = Duration::from_millis(200);

/// A request's head.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    headers: Vec<(String, String)>,
    /// The client wants the connection kept open after the reply.
    pub keep_alive: bool,
    /// When the whole request (head and body) must have arrived.
    pub deadline: Instant,
}

impl Request {
    /// The value of a header (names compare case-insensitively); the first if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request (or no body) could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection ended between requests, or stayed idle too long: close it quietly.
    Closed,
    /// Part of a request arrived, then nothing more before the deadline.
    TimedOut { received: usize },
    /// The client closed its side before the body it announced was complete.
    Short { received: usize },
    /// A malformed request: answer with this status and message, then close.
    Bad(u16, String),
}

/// One client connection: the socket and the bytes read but not yet used.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        stream.set_nodelay(true).ok();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads the next request head. Waits up to `idle` for its first byte (giving up early
    /// with [`ReadError::Closed`] once `give_up` says so, e.g. when the server stops), then up
    /// to `timeout` for the rest of the request; the deadline is kept in the request for its
    /// body.
    pub fn read_head(
        &mut self,
        idle: Duration,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Request, ReadError> {
        let idle_until = Instant::now() + idle;
        let mut deadline = (!self.buf.is_empty()).then(|| Instant::now() + timeout);
        loop {
            // Empty lines before a request line are allowed (RFC 9112 §2.2).
            let blank = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buf.drain(..blank);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout);
                return parse_head(&head[..end], deadline);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Bad(
                    431,
                    format!("the request head is longer than {MAX_HEAD_BYTES} bytes"),
                ));
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if now >= d => {
                    return Err(ReadError::TimedOut {
                        received: self.buf.len(),
                    });
                }
                Some(d) => d - now,
                None if now >= idle_until => return Err(ReadError::Closed),
                None => (idle_until - now).min(IDLE_POLL),
            };
            match self.fill(wait) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {
                    deadline.get_or_insert_with(|| Instant::now() + timeout);
                }
                // Idle: what already arrived was looked at; give the thread up if asked.
                Err(e) if is_timeout(&e) && deadline.is_none() && give_up() => {
                    return Err(ReadError::Closed);
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    /// Reads a body of exactly `len` bytes before the request's deadline.
    pub fn read_body(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < len {
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::TimedOut {
                    received: self.buf.len(),
                });
            }
            match self.fill(deadline - now) {
                Ok(0) => {
                    return Err(ReadError::Short {
                        received: self.buf.len(),
                    });
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => {
                    return Err(ReadError::Short {
                        received: self.buf.len(),
                    });
                }
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Reads whatever arrives within `wait` (at least 1 ms) into the buffer.
    fn fill(&mut self, wait: Duration) -> std::io::Result<usize> {
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes bytes within `timeout` (a client that does not read cannot hold the thread).
    pub fn write(&mut self, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
        self.stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Ends the connection after the last reply: stops sending, then reads and discards what
    /// the client still sends for a moment, so that a reply sent before the request's body
    /// was read reaches the client instead of being lost to a connection reset.
    pub fn close(mut self) {
        self.stream.shutdown(std::net::Shutdown::Write).ok();
        let until = Instant::now() + Duration::from_secs(1);
        let mut discarded = 0usize;
        let mut chunk = [0u8; 64 * 1024];
        while discarded < 64 * 1024 * 1024 {
            let now = Instant::now();
            if now >= until {
                break;
            }
            if self.stream.set_read_timeout(Some(until - now)).is_err() {
                break;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(message: impl Into<String>) -> ReadError {
    ReadError::Bad(400, message.into())
}

fn parse_head(head: &[u8], deadline: Instant) -> Result<Request, ReadError> {
    let text = std::str::from_utf8(head).map_err(|_| bad("the request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {request_line:?}")));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad(format!("malformed method {method:?}")));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => {
            return Err(ReadError::Bad(
                505,
                format!("{v} is not supported; use HTTP/1.1"),
            ));
        }
        v => return Err(bad(format!("malformed HTTP version {v:?}"))),
    };
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(ReadError::Bad(
                431,
                format!("more than {MAX_HEADERS} header lines"),
            ));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("malformed header line {line:?}")));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(bad(format!("malformed header name {name:?}")));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let path = target.split('?').next().unwrap_or("").to_owned();
    let mut request = Request {
        method: method.to_owned(),
        path,
        headers,
        keep_alive: !http10,
        deadline,
    };
    let connection = request.header("connection").map(str::to_ascii_lowercase);
    if let Some(c) = connection {
        if c.split(',').any(|t| t.trim() == "close") {
            request.keep_alive = false;
        } else if c.split(',').any(|t| t.trim() == "keep-alive") {
            request.keep_alive = true;
        }
    }
    Ok(request)
}

/// A reply: status, JSON body and extra headers.
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// An error reply: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, serde_json::json!({ "error": message.into() }))
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let body = self.body.to_string();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Request, ReadError> {
        parse_head(text.as_bytes(), Instant::now())
    }

    #[test]
    fn parses_request_line_headers_and_keep_alive() {
        let r = head("POST /predict?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/predict"));
        assert_eq!(r.header("content-length"), Some("12"));
        assert!(r.keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: close")
                .unwrap()
                .keep_alive
        );
        assert!(!head("GET / HTTP/1.0").unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: Keep-Alive")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn malformed_heads_are_client_errors() {
        for (text, status) in [
            ("GET /", 400),
            ("GET  / HTTP/1.1", 400),
            ("G=T / HTTP/1.1", 400),
            ("GET / HTTP/2.0", 505),
            ("GET / HTTP/1.1\r\nno colon here", 400),
            ("GET / HTTP/1.1\r\nbad name: x", 400),
        ] {
            match head(text) {
                Err(ReadError::Bad(s, _)) => assert_eq!(s, status, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn reply_bytes_carry_length_and_headers() {
        let bytes = Reply::error(503, "busy")
            .with_header("Retry-After", "1")
            .to_bytes(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Retry-After: 1\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"error\":\"busy\"}"), "{text}");
        assert!(text.contains("Content-Length: 16\r\n"), "{text}");
    }
}
