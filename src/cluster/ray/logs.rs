//! Following a job's log: over the dashboard's websocket, else by polling, as whole lines.

use std::io::{ErrorKind, Read, Write};
use std::ops::ControlFlow;

use crate::cluster::{ClusterBackend, ClusterError, Result, short_message};

use super::*;

/// Reassembles log chunks (several lines, or part of one) into complete lines.
#[derive(Default)]
pub(crate) struct LineAssembler {
    partial: String,
    /// Bytes of log received so far, i.e. the offset into the full log text.
    pub(crate) consumed: usize,
}

impl LineAssembler {
    pub(crate) fn push(
        &mut self,
        chunk: &str,
        on_line: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        self.consumed += chunk.len();
        let mut rest = chunk;
        while let Some(pos) = rest.find('\n') {
            let piece = &rest[..pos];
            rest = &rest[pos + 1..];
            if self.partial.is_empty() {
                on_line(piece.strip_suffix('\r').unwrap_or(piece))?;
            } else {
                self.partial.push_str(piece);
                let line = std::mem::take(&mut self.partial);
                on_line(line.strip_suffix('\r').unwrap_or(&line))?;
            }
        }
        self.partial.push_str(rest);
        ControlFlow::Continue(())
    }

    /// Emits a last line that never got its newline.
    pub(crate) fn finish(
        &mut self,
        on_line: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if self.partial.is_empty() {
            return ControlFlow::Continue(());
        }
        let line = std::mem::take(&mut self.partial);
        on_line(&line)
    }
}

pub(super) enum WsEnd {
    /// The server closed the stream and the job has ended: everything was delivered.
    Finished,
    /// The callback asked to stop.
    Stopped,
    /// The stream ended but the job has not: continue another way.
    Interrupted(String),
}

impl RayClient {
    // ----- log following --------------------------------------------------------------------

    pub(super) fn tail_ws(
        &self,
        id: &str,
        asm: &mut LineAssembler,
        on_line: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<WsEnd> {
        use tungstenite::Message;

        let mut ws = self.open_log_socket(id)?;
        log::debug!("following job {id} over the log WebSocket");

        let mut quiet_terminal_checks = 0;
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    quiet_terminal_checks = 0;
                    if asm.push(text.as_str(), on_line).is_break() {
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        return Ok(WsEnd::Stopped);
                    }
                }
                Ok(Message::Binary(bytes)) => {
                    if asm
                        .push(&String::from_utf8_lossy(&bytes), on_line)
                        .is_break()
                    {
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        return Ok(WsEnd::Stopped);
                    }
                }
                Ok(Message::Close(_)) => {
                    let _ = ws.flush(); // sends the close reply tungstenite queued
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    break;
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    // Quiet: the job may be pending or silent, or the connection dead.
                    let info = match self.status(id) {
                        Ok(info) => info,
                        Err(e) if e.is_transient() => return Ok(WsEnd::Interrupted(e.to_string())),
                        Err(e) => return Err(e),
                    };
                    if info.is_terminal() {
                        quiet_terminal_checks += 1;
                        if quiet_terminal_checks >= 2 {
                            return Ok(WsEnd::Interrupted(
                                "the log stream stayed silent after the job ended".into(),
                            ));
                        }
                    }
                }
                Err(e) => {
                    return Ok(WsEnd::Interrupted(self.scrub(&e.to_string())));
                }
            }
        }
        let info = match self.status(id) {
            Ok(info) => info,
            Err(e) if e.is_transient() => return Ok(WsEnd::Interrupted(e.to_string())),
            Err(e) => return Err(e),
        };
        if info.is_terminal() {
            Ok(WsEnd::Finished)
        } else {
            Ok(WsEnd::Interrupted(format!(
                "the log stream closed while the job is {}",
                info.status
            )))
        }
    }

    /// Opens `/api/jobs/{id}/logs/tail` as a WebSocket. The upgrade request is written here
    /// rather than by tungstenite, whose client handshake logs the whole request (the
    /// Authorization header included) at TRACE level.
    pub(super) fn open_log_socket(&self, id: &str) -> Result<tungstenite::WebSocket<WsStream>> {
        use tungstenite::handshake::{client::generate_key, derive_accept_key};
        use tungstenite::protocol::Role;

        let transport = |reason: String| ClusterError::Transport {
            address: self.base.clone(),
            reason,
        };
        let (tls, rest) = match self.base.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, self.base.trim_start_matches("http://")),
        };
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = split_host_port(authority, if tls { 443 } else { 80 })
            .ok_or_else(|| transport(format!("cannot read host and port from {authority:?}")))?;
        let path = format!(
            "{}/api/jobs/{id}/logs/tail",
            if prefix.is_empty() {
                String::new()
            } else {
                format!("/{}", prefix.trim_end_matches('/'))
            }
        );

        let tcp = connect_tcp(&host, port).map_err(|e| ClusterError::Unreachable {
            address: self.base.clone(),
            reason: io_reason(&e),
        })?;
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .map_err(|e| ClusterError::io("configuring the log stream socket", e))?;
        let mut stream = if tls {
            let config = if self.verify_tls {
                verifying_tls_config()
            } else {
                insecure_tls_config()
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| transport(format!("{host:?} is not a valid TLS server name")))?;
            let conn =
                rustls::ClientConnection::new(config, name).map_err(|e| ClusterError::Tls {
                    address: self.base.clone(),
                    reason: e.to_string(),
                })?;
            WsStream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        } else {
            WsStream::Plain(tcp)
        };

        let key = generate_key();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nUser-Agent: cellbench/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: Bearer {}\r\n", token.expose()));
        }
        for (name, value) in &self.headers {
            request.push_str(&format!("{name}: {}\r\n", value.expose()));
        }
        request.push_str("\r\n");
        let io_err = |e: std::io::Error| match e.kind() {
            ErrorKind::InvalidData => ClusterError::Tls {
                address: self.base.clone(),
                reason: self.scrub(&e.to_string()),
            },
            _ => ClusterError::Unreachable {
                address: self.base.clone(),
                reason: io_reason(&e),
            },
        };
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(io_err)?;
        drop(request);

        // Read the answer's head; bytes after it already belong to the WebSocket.
        let mut buf = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err(transport(
                    "the log stream answer has an oversized header".into(),
                ));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).map_err(io_err)?;
            if n == 0 {
                return Err(transport(
                    "the server closed the log stream during the handshake".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| transport("the log stream answer is not HTTP".into()))?;
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if status != 101 {
            let mut body = buf[head_end..].to_vec();
            let len = header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
                .min(64 * 1024);
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            return Err(match status {
                401 | 403 => self.auth_error(status),
                404 => ClusterError::NotFound { id: id.to_string() },
                _ => ClusterError::Http {
                    status,
                    body: self.scrub(&short_message(&String::from_utf8_lossy(&body))),
                },
            });
        }
        if header("sec-websocket-accept").as_deref()
            != Some(derive_accept_key(key.as_bytes()).as_str())
        {
            return Err(transport(
                "the log stream answer failed the WebSocket handshake check".into(),
            ));
        }
        let _ = stream.tcp().set_read_timeout(Some(WS_QUIET_CHECK));
        Ok(tungstenite::WebSocket::from_partially_read(
            stream,
            buf[head_end..].to_vec(),
            Role::Client,
            None,
        ))
    }

    pub(super) fn tail_poll(
        &self,
        id: &str,
        asm: &mut LineAssembler,
        on_line: &mut dyn FnMut(&str) -> ControlFlow<()>,
        mut reached: bool,
    ) -> Result<()> {
        // Transient failures are retried only once the cluster has been reached: following a
        // long job should survive a network hiccup, but a wrong address should fail at once.
        let mut failures = 0;
        loop {
            // Status first: if the job had ended before the log was read, the log is complete.
            let step = self.status(id).and_then(|info| Ok((info, self.logs(id)?)));
            let (info, logs) = match step {
                Ok(v) => {
                    failures = 0;
                    reached = true;
                    v
                }
                Err(e) if reached && e.is_transient() && failures < POLL_TRANSIENT_LIMIT => {
                    failures += 1;
                    log::warn!("following job {id}: {e}; retrying");
                    std::thread::sleep(self.poll_interval * failures.min(5));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match logs.get(asm.consumed..) {
                Some(new) if !new.is_empty() => {
                    if asm.push(new, on_line).is_break() {
                        return Ok(());
                    }
                }
                Some(_) => {}
                None => {
                    log::warn!(
                        "the log of job {id} no longer matches what was streamed; skipping ahead"
                    );
                    asm.consumed = logs.len();
                }
            }
            if info.is_terminal() {
                let _ = asm.finish(on_line);
                return Ok(());
            }
            std::thread::sleep(self.poll_interval);
        }
    }
}
