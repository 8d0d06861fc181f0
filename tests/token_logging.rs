//! The cluster token never reaches the log, even at `RUST_LOG=trace`, where the HTTP client
//! would dump each request byte by byte. The cluster here is a tiny local stand-in that
//! answers every request with an empty job list: the point is what the client logs.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;

const TOKEN: &str = "tok-Zq8x7LwP3vN9mK2rJ5";

/// Every fragment of the token an output could carry it by: its 6-byte windows as text, and
/// as hex (the wire dump's left column, where bytes come in pairs of hex digits).
fn leaks(output: &str) -> Vec<String> {
    let squeezed: String = output
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let bytes = TOKEN.as_bytes();
    let mut found = Vec::new();
    for w in bytes.windows(6) {
        let text = std::str::from_utf8(w).unwrap();
        if output.contains(text) {
            found.push(text.to_owned());
        }
        let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
        if squeezed.contains(&hex) {
            found.push(format!("hex {hex}"));
        }
    }
    found
}

#[test]
fn trace_logging_never_shows_the_cluster_token() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let heads = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let body = "[]";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).ok();
            }
        });
    }

    let out = cellbench()
        .args([
            "cluster",
            "list",
            "--address",
            &format!("http://127.0.0.1:{port}"),
            "--token-env",
            "CELLBENCH_TEST_CLUSTER_TOKEN",
        ])
        .env("CELLBENCH_TEST_CLUSTER_TOKEN", TOKEN)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let (out_text, err_text) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{err_text}\n{out_text}");

    // The token went to the cluster, and the log was at trace level: the check below means
    // something.
    let heads = heads.lock().unwrap().clone();
    assert!(
        heads
            .iter()
            .any(|h| h.to_ascii_lowercase().contains(&format!(
                "authorization: bearer {}",
                TOKEN.to_ascii_lowercase()
            ))),
        "the client did not send the token: {heads:?}"
    );
    assert!(
        err_text.contains("TRACE") || err_text.contains("DEBUG"),
        "RUST_LOG=trace produced no debug or trace lines:\n{err_text}"
    );
    assert!(
        err_text.contains("/api/jobs/"),
        "the client's own request log is missing:\n{err_text}"
    );

    let found = leaks(&format!("{out_text}\n{err_text}"));
    assert!(
        found.is_empty(),
        "the token leaked into the output ({found:?}):\n{err_text}"
    );

    // The same at the HTTP client's own targets, asked for explicitly.
    let out = cellbench()
        .args([
            "cluster",
            "list",
            "--address",
            &format!("http://127.0.0.1:{port}"),
            "--token-env",
            "CELLBENCH_TEST_CLUSTER_TOKEN",
        ])
        .env("CELLBENCH_TEST_CLUSTER_TOKEN", TOKEN)
        .env(
            "RUST_LOG",
            "ureq=trace,ureq_proto=trace,ureq_proto::util=trace,rustls=trace,tungstenite=trace,http=trace",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let found = leaks(&format!("{}\n{}", stdout(&out), stderr(&out)));
    assert!(
        found.is_empty(),
        "the token leaked into the output ({found:?}):\n{}",
        stderr(&out)
    );
}
