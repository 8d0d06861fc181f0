//! `cellbench serve` end to end: a real server process on 127.0.0.1 serving a probe trained
//! here on the bundled demo (BCCD crops), driven over raw TCP so that every malformed,
//! stalled, cut-short and concurrent request can be made exactly.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "serve-test-token-8f2Kq9Lm3Xw7";

/// A probe trained once per test binary on the demo dataset.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        // Kept for the whole test binary (the servers read the run from it).
        let tmp = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let runs = tmp.path().join("runs");
        let out = cellbench()
            .args([
                "train",
                path_str(&cellbench::demo_dataset()),
                "--backend",
                "cpu",
                "--image-size",
                "64",
                "--epochs",
                "10",
                "--seed",
                "1",
                "--json",
                "--runs",
                path_str(&runs),
            ])
            .env("CELLBENCH_CACHE", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "training the probe failed: {}\n{}",
            stderr(&out),
            stdout(&out)
        );
        let mut dirs: Vec<_> = std::fs::read_dir(&runs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        let run = dirs.pop().expect("a run folder");
        assert!(run.join("model.safetensors").is_file());
        run
    })
}

/// The demo's images: (label, bytes), sorted by path.
fn demo_images() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for class in std::fs::read_dir(cellbench::demo_dataset()).unwrap() {
        let class = class.unwrap().path();
        if !class.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&class).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let label = f
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (label, std::fs::read(&f).unwrap())
        })
        .collect()
}

/// A `cellbench serve` process on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, |_| {})
    }

    fn start_with(extra: &[&str], configure: impl FnOnce(&mut std::process::Command)) -> Self {
        let mut cmd = cellbench();
        cmd.args([
            "serve",
            path_str(run_dir()),
            "--port",
            "0",
            "--backend",
            "cpu",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<u16>();
        {
            let mut pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&chunk[..n]);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        let line = String::from_utf8_lossy(&line).into_owned();
                        if let Some(rest) = line.split("on http://127.0.0.1:").nth(1) {
                            let port: String =
                                rest.chars().take_while(char::is_ascii_digit).collect();
                            tx.send(port.parse().unwrap()).ok();
                        }
                        stderr.lock().unwrap().push_str(&line);
                    }
                }
            });
        }
        let port = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(port) => port,
            Err(_) => {
                child.kill().ok();
                child.wait().ok();
                panic!("the server did not start:\n{}", stderr.lock().unwrap());
            }
        };
        Self {
            child,
            port,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    json: serde_json::Value,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

/// One client connection speaking HTTP/1.1 by hand.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn new(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one response (head, then a body of its Content-Length).
    fn response(&mut self) -> Response {
        let mut chunk = [0u8; 8192];
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = self.stream.read(&mut chunk).expect("reading a response");
            assert!(
                n > 0,
                "connection closed without a response ({} bytes: {:?})",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        while self.buf.len() < len {
            let n = self.stream.read(&mut chunk).expect("reading a body");
            assert!(n > 0, "connection closed in the middle of a response body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = self.buf.drain(..len).collect();
        Response {
            status,
            headers,
            json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        }
    }

    fn exchange(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.response()
    }
}

fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra_headers}\r\n").into_bytes()
}

fn post(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut req = format!(
        "POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

/// One request on a fresh connection.
fn once(port: u16, request: &[u8]) -> Response {
    Client::new(port).exchange(request)
}

fn predicted(r: &Response) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    r.json["predicted"].as_str().unwrap().to_owned()
}

/// A PNG of `width × height` black pixels: tiny on the wire, huge once decoded.
fn huge_png(width: u32, height: u32) -> Vec<u8> {
    let img = image::GrayImage::new(width, height);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn every_malformed_request_gets_a_clear_error_and_the_server_stays_up() {
    let server = Server::start(&[]);
    let port = server.port;
    let images = demo_images();
    let (_, jpeg) = &images[0];

    let health = once(port, &get("/health", ""));
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json["labels"].as_array().unwrap().len(), 5);
    let first = once(port, &post(jpeg, ""));
    let label = predicted(&first);

    // No body at all: no Content-Length.
    let r = once(port, b"POST /predict HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 411, "{r:?}");
    assert!(r.error().contains("Content-Length"), "{r:?}");
    // An empty body.
    let r = once(port, &post(b"", ""));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("empty body"), "{r:?}");
    // Not an image.
    let r = once(port, &post(b"these bytes are no picture at all", ""));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("not a readable image"), "{r:?}");
    // A body cut short: 100000 bytes announced, the first 1000 bytes of a real image sent,
    // then the client closes its side.
    let mut cut = Client::new(port);
    let mut req = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec();
    req.extend_from_slice(&jpeg[..1000]);
    cut.send(&req);
    cut.stream.shutdown(Shutdown::Write).unwrap();
    let r = cut.response();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("1000 of the 100000 bytes"), "{r:?}");
    // A whole body holding half an image file.
    let r = once(port, &post(&jpeg[..jpeg.len() / 2], ""));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("truncated"), "{r:?}");
    // A body larger than the limit is refused from its Content-Length alone.
    let r = once(
        port,
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 30000000\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.error().contains("larger than the limit"), "{r:?}");
    // Huge dimensions in a small file: refused from the header, before decoding.
    let bomb = huge_png(8000, 8000);
    assert!(bomb.len() < 1_000_000, "{} bytes", bomb.len());
    let r = once(port, &post(&bomb, ""));
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.error().contains("64000000 pixels"), "{r:?}");
    // A BMP header claiming 100000 × 100000 pixels and carrying none.
    let mut bmp = b"BM".to_vec();
    for v in [54u32, 0, 54, 40, 100_000, 100_000] {
        bmp.extend_from_slice(&v.to_le_bytes());
    }
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.extend_from_slice(&[0u8; 24]);
    let r = once(port, &post(&bmp, ""));
    assert!(r.status == 413 || r.status == 400, "{r:?}");
    // Wrong methods, unknown paths, a malformed request line, chunked uploads.
    let r = once(port, &get("/predict", ""));
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("Allow"), Some("POST"), "{r:?}");
    let r = once(port, b"DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 405, "{r:?}");
    let r = once(port, &get("/nope", ""));
    assert_eq!(r.status, 404, "{r:?}");
    let r = once(port, b"this is not http\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    let r = once(
        port,
        b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 411, "{r:?}");

    // Still serving, with the same answer as before.
    assert_eq!(predicted(&once(port, &post(jpeg, ""))), label);
}

#[test]
fn the_pixel_budget_is_configurable() {
    let server = Server::start(&["--max-pixels", "100"]);
    let images = demo_images();
    let r = once(server.port, &post(&images[0].1, ""));
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.error().contains("limit of 100 pixels"), "{r:?}");
    assert_eq!(once(server.port, &get("/health", "")).status, 200);
}

#[test]
fn stalled_clients_delay_nobody_and_time_out() {
    let server = Server::start(&["--timeout-secs", "8"]);
    let port = server.port;
    let images = demo_images();
    let (_, jpeg) = &images[1];
    let expected = predicted(&once(port, &post(jpeg, "")));

    // Three clients announce 100000 bytes, send 1000, and then nothing, keeping the
    // connection open.
    let started = Instant::now();
    let mut stalled: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::new(port);
            let mut req =
                b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec();
            req.extend_from_slice(&jpeg[..1000]);
            c.send(&req);
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Everyone else is answered meanwhile, well before the stalled requests time out.
    for _ in 0..3 {
        let mut c = Client::new(port);
        c.stream
            .set_read_timeout(Some(Duration::from_secs(6)))
            .unwrap();
        let health = c.exchange(&get("/health", "Connection: close\r\n"));
        assert_eq!(health.status, 200, "{health:?}");
        let mut c = Client::new(port);
        c.stream
            .set_read_timeout(Some(Duration::from_secs(6)))
            .unwrap();
        assert_eq!(predicted(&c.exchange(&post(jpeg, ""))), expected);
    }
    let others_done = started.elapsed();
    assert!(
        others_done < Duration::from_secs(7),
        "the other clients took {others_done:?}"
    );

    // The stalled clients get 408 once their time is up, not before.
    for c in &mut stalled {
        let r = c.response();
        assert_eq!(r.status, 408, "{r:?}");
        assert!(r.error().contains("1000 of 100000 bytes"), "{r:?}");
    }
    let stalled_done = started.elapsed();
    assert!(
        stalled_done >= Duration::from_secs(7) && stalled_done < Duration::from_secs(20),
        "the stalled requests ended after {stalled_done:?}"
    );
}

#[test]
fn more_stalled_clients_than_threads_delay_nobody() {
    // Stalled requests would hold their connections for a minute.
    let server = Server::start(&["--threads", "2", "--timeout-secs", "60"]);
    let port = server.port;
    let jpeg = &demo_images()[0].1;
    // Five clients announce a body and send nothing: two hold both connection threads, three
    // wait for one.
    let mut stalled: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = Client::new(port);
            c.send(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
            c.stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The health check is answered, not kept waiting until a stalled request times out (the
    // read timeout fails the test long before that).
    let mut c = Client::new(port);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let health = c.exchange(&get("/health", "Connection: close\r\n"));
    assert_eq!(health.status, 200, "{health:?}");
    // A request that no thread can take in time is told to come back later.
    let mut c = Client::new(port);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let r = c.exchange(&post(jpeg, ""));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("Retry-After"), Some("1"), "{r:?}");
    assert!(r.error().contains("connections are in use"), "{r:?}");
    // So are the stalled clients that waited for a thread.
    for c in &mut stalled[2..] {
        let r = c.response();
        assert_eq!(r.status, 503, "{r:?}");
    }
}

#[test]
fn a_concurrent_burst_gets_the_answers_of_single_requests() {
    let server = Server::start(&[]);
    let port = server.port;
    let images: Vec<(String, Vec<u8>)> = demo_images().into_iter().take(16).collect();
    // One at a time first: the reference answers.
    let single: Vec<(String, serde_json::Value)> = images
        .iter()
        .map(|(_, bytes)| {
            let r = once(port, &post(bytes, ""));
            (predicted(&r), r.json["probabilities"].clone())
        })
        .collect();

    // 16 clients × 4 images each, on kept-alive connections, all at once.
    let clients = 16;
    let barrier = Arc::new(Barrier::new(clients));
    let images = Arc::new(images);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (barrier, images) = (barrier.clone(), images.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(port);
                barrier.wait();
                (0..4)
                    .map(|k| {
                        let i = (c * 4 + k) % images.len();
                        let r = client.exchange(&post(&images[i].1, ""));
                        (i, r)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answered = 0;
    for h in handles {
        let answers = h
            .join()
            .unwrap_or_else(|_| panic!("a client failed; the server said:\n{}", server.stderr()));
        for (i, r) in answers {
            assert_eq!(predicted(&r), single[i].0, "image {i}: {r:?}");
            let probs = r.json["probabilities"].as_object().unwrap();
            for (label, p) in probs {
                let alone = single[i].1[label].as_f64().unwrap();
                assert!(
                    (p.as_f64().unwrap() - alone).abs() < 1e-4,
                    "image {i}, {label}: {p} in the burst, {alone} alone"
                );
            }
            answered += 1;
        }
    }
    assert_eq!(answered, 64);
    assert!(server.stderr().contains("POST /predict -> 200"));
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = Server::start(&["--queue", "1", "--max-batch", "1"]);
    let port = server.port;
    let images: Vec<(String, Vec<u8>)> = demo_images().into_iter().take(16).collect();
    let single: Vec<String> = images
        .iter()
        .map(|(_, b)| predicted(&once(port, &post(b, ""))))
        .collect();
    // Every client sends all of its request but the last byte, then all send that byte at
    // once: 16 images arrive together for a queue of one.
    let barrier = Arc::new(Barrier::new(images.len()));
    let images = Arc::new(images);
    let handles: Vec<_> = (0..images.len())
        .map(|i| {
            let (barrier, images) = (barrier.clone(), images.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(port);
                let req = post(&images[i].1, "");
                let (head, last) = req.split_at(req.len() - 1);
                client.send(head);
                std::thread::sleep(Duration::from_millis(200));
                barrier.wait();
                client.send(last);
                (i, client.response())
            })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for h in handles {
        let (i, r) = h
            .join()
            .unwrap_or_else(|_| panic!("a client failed; the server said:\n{}", server.stderr()));
        match r.status {
            200 => {
                assert_eq!(predicted(&r), single[i]);
                ok += 1;
            }
            503 => {
                assert_eq!(r.header("Retry-After"), Some("1"), "{r:?}");
                assert!(r.error().contains("busy"), "{r:?}");
                busy += 1;
            }
            _ => panic!("unexpected answer {r:?}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "{ok} answered, {busy} refused");
}

#[test]
fn the_token_is_checked_and_required_off_loopback() {
    // Off loopback without a token: refused at start, with the way out in the message.
    let out = cellbench()
        .args([
            "serve",
            path_str(run_dir()),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refusing") && err.contains("--token-env") && err.contains("--token-file"),
        "{err}"
    );
    // A token variable that is not set is an error, not an open server.
    let out = cellbench()
        .args([
            "serve",
            path_str(run_dir()),
            "--port",
            "0",
            "--token-env",
            "CELLBENCH_TEST_UNSET_TOKEN_VARIABLE",
        ])
        .env_remove("CELLBENCH_TEST_UNSET_TOKEN_VARIABLE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("CELLBENCH_TEST_UNSET_TOKEN_VARIABLE"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = Server::start(&["--token-file", path_str(&token_file)]);
    let port = server.port;
    let images = demo_images();
    let jpeg = &images[2].1;

    // Health needs no token; everything else does.
    assert_eq!(once(port, &get("/health", "")).status, 200);
    let r = once(port, &post(jpeg, ""));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("WWW-Authenticate").is_some(), "{r:?}");
    assert!(r.error().contains("Authorization: Bearer"), "{r:?}");
    let r = once(
        port,
        &post(jpeg, "Authorization: Bearer wrong-token-value\r\n"),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().contains("not valid"), "{r:?}");
    let almost = &TOKEN[..TOKEN.len() - 1];
    let r = once(
        port,
        &post(jpeg, &format!("Authorization: Bearer {almost}\r\n")),
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = once(
        port,
        &post(jpeg, &format!("Authorization: Basic {TOKEN}\r\n")),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(once(port, &get("/nope", "")).status, 401);
    assert_eq!(once(port, &get("/nope", &bearer())).status, 404);
    let r = once(port, &post(jpeg, &bearer()));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json["predicted"].is_string());

    // The token is never printed or logged, whatever the requests carried.
    let log = server.stderr();
    assert!(log.contains("token required"), "{log}");
    assert!(log.contains("POST /predict -> 401"), "{log}");
    assert!(!log.contains(TOKEN) && !log.contains(almost), "{log}");
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_stops() {
    let mut server = Server::start(&[]);
    let port = server.port;
    let images = demo_images();
    let jpeg = &images[3].1;
    let expected = predicted(&once(port, &post(jpeg, "")));

    // A request in flight: its head and half its body are in.
    let mut client = Client::new(port);
    let req = post(jpeg, "");
    let half = req.len() - jpeg.len() / 2;
    client.send(&req[..half]);
    std::thread::sleep(Duration::from_millis(500));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(500));

    // No new connections once stopping…
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server still accepts connections after SIGTERM"
    );
    // …but the request in flight is answered in full.
    client.send(&req[half..]);
    let r = client.response();
    assert_eq!(predicted(&r), expected);
    assert_eq!(r.header("Connection"), Some("close"), "{r:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0), "{}", server.stderr());
    let log = server.stderr();
    assert!(log.contains("stopping") && log.contains("stopped"), "{log}");
}
