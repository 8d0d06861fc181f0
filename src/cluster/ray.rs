//! [`ClusterBackend`] over the Ray Jobs REST API of a Ray 2.60 dashboard.
//!
//! Facts this relies on (captured from a real head; see `tools/ray-jobs-api-notes.md`):
//! - every endpoint, `/api/version` included, needs `Authorization: Bearer <token>` when the
//!   cluster runs with `RAY_AUTH_MODE=token`: no header → 401, a wrong token → 403;
//! - unknown job ids answer 404 with a plain-text body;
//! - a duplicate `submission_id` answers 500 with a traceback ending in
//!   `Job with submission_id … already exists`;
//! - the package endpoint accepts at most 100 MiB (413 above);
//! - `GET /api/jobs/{id}` does not echo `entrypoint_num_cpus/gpus`, so they are also kept in
//!   the job's metadata (`cellbench_num_cpus`, `cellbench_num_gpus`);
//! - deleting a job within about a second of it ending can leave a "ghost" record (status
//!   FAILED, entrypoint "Entrypoint not found."), written by Ray's job monitor after the delete;
//!   [`RayClient::delete`] waits that window out and deletes the ghost;
//! - stopping a PENDING job answers `{"stopped": true}` but does nothing (ray#58353).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::package::package_name;
use super::{
    ClusterBackend, ClusterError, ClusterProfile, JobInfo, JobStatus, JobSubmission,
    PACKAGE_LIMIT_BYTES, Result, Secret, TokenSource, describe_source, short_message,
    truncate_chars, validate_job_id,
};

/// Connecting must be quick; a cluster that does not accept a connection in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ordinary requests (status, list, logs, stop, delete).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Submit and upload: the server may take long (ray#62766); a short timeout followed by a
/// retry is exactly what must not happen, so wait long.
const LONG_TIMEOUT: Duration = Duration::from_secs(600);
/// Without news on the log WebSocket for this long, the job's status is checked.
const WS_QUIET_CHECK: Duration = Duration::from_secs(15);
/// Response bodies larger than this are refused (logs are the only big ones).
const MAX_BODY_BYTES: u64 = 512 * 1024 * 1024;
/// Attempts for a submit whose request failed in transit.
const SUBMIT_ATTEMPTS: u32 = 3;
/// Consecutive transient failures tolerated while following a log by polling.
const POLL_TRANSIENT_LIMIT: u32 = 30;

/// Metadata keys that carry the requested resources (Ray's job API does not return them).
pub const META_NUM_CPUS: &str = "cellbench_num_cpus";
pub const META_NUM_GPUS: &str = "cellbench_num_gpus";

/// A client for one Ray cluster. Cheap to share between threads (`&self` everywhere).
pub struct RayClient {
    profile_name: String,
    base: String,
    token: Option<Secret>,
    token_source: TokenSource,
    headers: Vec<(String, Secret)>,
    verify_tls: bool,
    agent: ureq::Agent,
    poll_interval: Duration,
    delete_settle: Duration,
    websocket: bool,
}

impl std::fmt::Debug for RayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RayClient")
            .field("profile", &self.profile_name)
            .field("address", &self.base)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_source", &self.token_source)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("verify_tls", &self.verify_tls)
            .finish()
    }
}

/// How an HTTP exchange ended, before interpretation.
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Timeouts {
    Normal,
    Long,
}

/// A job as the REST API returns it (more fields than [`JobInfo`], most ignored).
#[derive(Deserialize)]
struct RawJob {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    submission_id: Option<String>,
    status: JobStatus,
    #[serde(default)]
    entrypoint: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    start_time: Option<u64>,
    #[serde(default)]
    end_time: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    entrypoint_num_cpus: Option<f64>,
    #[serde(default)]
    entrypoint_num_gpus: Option<f64>,
    #[serde(default)]
    driver_exit_code: Option<i32>,
}

impl RawJob {
    fn into_info(self, fallback_id: &str) -> JobInfo {
        let metadata = self.metadata.unwrap_or_default();
        let from_meta = |k: &str| metadata.get(k).and_then(|v| v.parse::<f64>().ok());
        JobInfo {
            submission_id: self
                .submission_id
                .unwrap_or_else(|| fallback_id.to_string()),
            status: self.status,
            entrypoint: self.entrypoint,
            message: self.message,
            error_type: self.error_type,
            start_time: self.start_time,
            end_time: self.end_time,
            entrypoint_num_cpus: self
                .entrypoint_num_cpus
                .or_else(|| from_meta(META_NUM_CPUS)),
            entrypoint_num_gpus: self
                .entrypoint_num_gpus
                .or_else(|| from_meta(META_NUM_GPUS)),
            driver_exit_code: self.driver_exit_code,
            metadata,
        }
    }
}

/// Parses a JSON reply; `context` names what was being read, for the error.
fn decode<T: serde::de::DeserializeOwned>(
    body: &str,
    context: impl FnOnce() -> String,
) -> Result<T> {
    serde_json::from_str(body).map_err(|source| ClusterError::Json {
        context: context(),
        source,
    })
}

pub(crate) fn parse_job(body: &str, id: &str) -> Result<JobInfo> {
    let raw: RawJob = decode(body, || format!("status of job {id}"))?;
    Ok(raw.into_info(id))
}

/// Submission jobs only: driver jobs started outside the job API have no submission id.
pub(crate) fn parse_job_list(body: &str) -> Result<Vec<JobInfo>> {
    let raw: Vec<RawJob> = decode(body, || "job list".into())?;
    Ok(raw
        .into_iter()
        .filter(|j| j.kind.as_deref().is_none_or(|k| k == "SUBMISSION"))
        .filter_map(|j| {
            let id = j.submission_id.clone()?;
            Some(j.into_info(&id))
        })
        .collect())
}

pub(crate) fn submission_body(job: &JobSubmission) -> serde_json::Value {
    let mut body = json!({
        "entrypoint": job.entrypoint,
        "submission_id": job.submission_id,
    });
    let mut runtime_env = serde_json::Map::new();
    if let Some(wd) = &job.working_dir {
        runtime_env.insert("working_dir".into(), json!(wd));
    }
    if !job.env_vars.is_empty() {
        runtime_env.insert("env_vars".into(), json!(job.env_vars));
    }
    if !runtime_env.is_empty() {
        body["runtime_env"] = serde_json::Value::Object(runtime_env);
    }
    let mut metadata = job.metadata.clone();
    if let Some(c) = job.entrypoint_num_cpus {
        body["entrypoint_num_cpus"] = json!(c);
        metadata.insert(META_NUM_CPUS.into(), c.to_string());
    }
    if let Some(g) = job.entrypoint_num_gpus {
        body["entrypoint_num_gpus"] = json!(g);
        metadata.insert(META_NUM_GPUS.into(), g.to_string());
    }
    if !metadata.is_empty() {
        body["metadata"] = json!(metadata);
    }
    body
}

fn is_duplicate_reply(reply: &Reply) -> bool {
    reply.status >= 400 && reply.body.contains("already exists")
}

fn is_no_agent_reply(reply: &Reply) -> bool {
    reply.status == 500 && reply.body.contains("No available agent to submit job")
}

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

enum WsEnd {
    /// The server closed the stream and the job has ended: everything was delivered.
    Finished,
    /// The callback asked to stop.
    Stopped,
    /// The stream ended but the job has not: continue another way.
    Interrupted(String),
}

impl RayClient {
    /// A client for the cluster a profile describes. Reads the token now (from the
    /// environment or a file); talks to nobody yet.
    pub fn new(profile: &ClusterProfile) -> Result<Self> {
        profile.validate()?;
        let (token, token_source) = profile.resolve_token()?;
        let headers = profile.resolved_headers()?;
        let base = profile.base_url().to_string();
        if token.is_some() && !profile.is_tls() && !is_loopback_url(&base) {
            log::warn!(
                "profile '{}' sends its token over plain http to {base}; use https or an SSH tunnel",
                profile.name
            );
        }
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(!profile.verify_tls)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(REQUEST_TIMEOUT))
            .timeout_per_read(Some(REQUEST_TIMEOUT))
            .timeout_per_write(Some(REQUEST_TIMEOUT))
            .user_agent(format!("cellbench/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        Ok(RayClient {
            profile_name: profile.name.clone(),
            base,
            token,
            token_source,
            headers,
            verify_tls: profile.verify_tls,
            agent: config.into(),
            poll_interval: Duration::from_secs(1),
            delete_settle: Duration::from_millis(2500),
            websocket: true,
        })
    }

    /// How often [`ClusterBackend::tail`] polls when the WebSocket is unavailable (default 1 s).
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(100));
        self
    }

    /// Whether [`ClusterBackend::tail`] tries the log WebSocket first (default true). Turn it
    /// off behind proxies that do not pass WebSockets; polling `/logs` is then used.
    pub fn with_websocket(mut self, enabled: bool) -> Self {
        self.websocket = enabled;
        self
    }

    pub fn address(&self) -> &str {
        &self.base
    }

    /// The cluster's Ray version; a cheap check that the address and token work.
    pub fn version(&self) -> Result<String> {
        let reply = self.call("GET", "/api/version", None, Timeouts::Normal)?;
        let reply = self.expect_ok(reply, None)?;
        #[derive(Deserialize)]
        struct Version {
            ray_version: String,
        }
        let v: Version = decode(&reply.body, || "version".into())?;
        Ok(v.ray_version)
    }

    // ----- HTTP plumbing -------------------------------------------------------------------

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&[u8], &str)>,
        t: Timeouts,
    ) -> Result<Reply> {
        let url = self.url(path);
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Bearer {}", t.expose()));
        macro_rules! prepare {
            ($builder:expr) => {{
                let mut b = $builder;
                if let Some(a) = &auth {
                    b = b.header("Authorization", a.as_str());
                }
                for (name, value) in &self.headers {
                    b = b.header(name.as_str(), value.expose());
                }
                if t == Timeouts::Long {
                    b = b
                        .config()
                        .timeout_recv_response(Some(LONG_TIMEOUT))
                        .timeout_per_read(Some(LONG_TIMEOUT))
                        .timeout_per_write(Some(LONG_TIMEOUT))
                        .build();
                }
                b
            }};
        }
        let result = match (method, body) {
            ("GET", _) => prepare!(self.agent.get(&url)).call(),
            ("DELETE", _) => prepare!(self.agent.delete(&url)).call(),
            ("POST", Some((bytes, ct))) => prepare!(self.agent.post(&url))
                .header("Content-Type", ct)
                .send(bytes),
            ("POST", None) => prepare!(self.agent.post(&url)).send_empty(),
            ("PUT", Some((bytes, ct))) => prepare!(self.agent.put(&url))
                .header("Content-Type", ct)
                .send(bytes),
            _ => unreachable!("unsupported request {method}"),
        };
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        log::debug!("{method} {path} -> {status}");
        Ok(Reply { status, body })
    }

    /// Removes the token and header values from text that came from elsewhere.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        let secrets = self.token.iter().chain(self.headers.iter().map(|(_, v)| v));
        for s in secrets {
            if s.expose().len() >= 4 {
                out = out.replace(s.expose(), "***");
            }
        }
        out
    }

    fn transport_error(&self, e: ureq::Error) -> ClusterError {
        let address = self.base.clone();
        match e {
            ureq::Error::Io(io) => ClusterError::Unreachable {
                address,
                reason: io_reason(&io),
            },
            ureq::Error::Timeout(t) => ClusterError::Unreachable {
                address,
                reason: format!("timed out ({t})"),
            },
            ureq::Error::HostNotFound => ClusterError::Unreachable {
                address,
                reason: "host not found (DNS lookup failed)".into(),
            },
            ureq::Error::ConnectionFailed => ClusterError::Unreachable {
                address,
                reason: "connection failed".into(),
            },
            ureq::Error::Tls(m) => ClusterError::Tls {
                address,
                reason: m.to_string(),
            },
            ureq::Error::Rustls(r) => ClusterError::Tls {
                address,
                reason: self.scrub(&r.to_string()),
            },
            other => ClusterError::Transport {
                address,
                reason: self.scrub(&other.to_string()),
            },
        }
    }

    fn auth_error(&self, status: u16) -> ClusterError {
        match self.token {
            None => ClusterError::TokenRequired {
                address: self.base.clone(),
            },
            Some(_) => ClusterError::Unauthorized {
                address: self.base.clone(),
                source_desc: describe_source(&self.token_source),
                status,
            },
        }
    }

    fn http_error(&self, reply: &Reply) -> ClusterError {
        ClusterError::Http {
            status: reply.status,
            body: self.scrub(&short_message(&reply.body)),
        }
    }

    /// 2xx → the reply; 401/403 → Unauthorized; 404 → NotFound when `id` is given.
    fn expect_ok(&self, reply: Reply, id: Option<&str>) -> Result<Reply> {
        match reply.status {
            _ if reply.ok() => Ok(reply),
            401 | 403 => Err(self.auth_error(reply.status)),
            404 if id.is_some() => Err(ClusterError::NotFound {
                id: id.unwrap_or_default().to_string(),
            }),
            _ => Err(self.http_error(&reply)),
        }
    }

    fn job_path(id: &str, suffix: &str) -> String {
        format!("/api/jobs/{id}{suffix}")
    }

    // ----- log following --------------------------------------------------------------------

    fn tail_ws(
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
    fn open_log_socket(&self, id: &str) -> Result<tungstenite::WebSocket<WsStream>> {
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

    fn tail_poll(
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

    fn confirm_existing(&self, job: &JobSubmission) -> Result<String> {
        match self.status(&job.submission_id) {
            Ok(info) if info.entrypoint == job.entrypoint => {
                log::info!(
                    "job {} was already submitted; not submitting it again",
                    job.submission_id
                );
                Ok(job.submission_id.clone())
            }
            Ok(info) => Err(ClusterError::SubmissionIdTaken {
                id: job.submission_id.clone(),
                existing_entrypoint: truncate_chars(&info.entrypoint, 200),
            }),
            Err(ClusterError::NotFound { id }) => Err(ClusterError::DuplicateNotFound { id }),
            Err(e) => Err(e),
        }
    }
}

impl ClusterBackend for RayClient {
    fn describe(&self) -> String {
        format!("Ray cluster '{}' at {}", self.profile_name, self.base)
    }

    fn upload_package(&self, zip: &[u8]) -> Result<String> {
        let bytes = zip.len() as u64;
        if bytes > PACKAGE_LIMIT_BYTES {
            return Err(ClusterError::PackageTooLarge {
                bytes,
                limit: PACKAGE_LIMIT_BYTES,
            });
        }
        let name = package_name(zip);
        let uri = format!("gcs://{name}");
        let path = format!("/api/packages/gcs/{name}");
        // GET also pins an existing package for a while, so it survives until submit.
        let probe = self.call("GET", &path, None, Timeouts::Normal)?;
        match probe.status {
            200 => {
                log::info!("package {uri} is already on the cluster");
                return Ok(uri);
            }
            404 => {}
            _ => {
                return Err(self
                    .expect_ok(probe, None)
                    .err()
                    .unwrap_or_else(|| unreachable!()));
            }
        }
        log::info!("uploading package {uri} ({bytes} bytes)");
        let reply = self.call("PUT", &path, Some((zip, "application/zip")), Timeouts::Long)?;
        if reply.status == 413 {
            return Err(ClusterError::PackageTooLarge {
                bytes,
                limit: PACKAGE_LIMIT_BYTES,
            });
        }
        self.expect_ok(reply, None)?;
        Ok(uri)
    }

    fn submit(&self, job: &JobSubmission) -> Result<String> {
        validate_job_id(&job.submission_id)?;
        let body = serde_json::to_vec(&submission_body(job)).expect("a JSON value serialises");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reply = match self.call(
                "POST",
                "/api/jobs/",
                Some((&body, "application/json")),
                Timeouts::Long,
            ) {
                Ok(reply) => reply,
                Err(e) if e.is_transient() && attempt < SUBMIT_ATTEMPTS => {
                    // The request may or may not have arrived; the same submission_id makes the
                    // retry safe (a duplicate is recognised below).
                    log::warn!("submitting job {}: {e}; retrying", job.submission_id);
                    std::thread::sleep(Duration::from_secs(u64::from(attempt)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if reply.ok() {
                #[derive(Deserialize)]
                struct Submitted {
                    submission_id: String,
                }
                let s: Submitted = decode(&reply.body, || "submit".into())?;
                log::info!("submitted job {} to {}", s.submission_id, self.base);
                return Ok(s.submission_id);
            }
            if is_duplicate_reply(&reply) {
                return self.confirm_existing(job);
            }
            if is_no_agent_reply(&reply) && attempt < SUBMIT_ATTEMPTS {
                log::warn!("the cluster has no job agent ready yet; retrying");
                std::thread::sleep(Duration::from_secs(2 * u64::from(attempt)));
                continue;
            }
            return Err(self
                .expect_ok(reply, None)
                .err()
                .unwrap_or_else(|| unreachable!()));
        }
    }

    fn status(&self, id: &str) -> Result<JobInfo> {
        validate_job_id(id)?;
        let reply = self.call("GET", &Self::job_path(id, ""), None, Timeouts::Normal)?;
        let reply = self.expect_ok(reply, Some(id))?;
        parse_job(&reply.body, id)
    }

    fn logs(&self, id: &str) -> Result<String> {
        validate_job_id(id)?;
        let reply = self.call("GET", &Self::job_path(id, "/logs"), None, Timeouts::Normal)?;
        let reply = self.expect_ok(reply, Some(id))?;
        #[derive(Deserialize)]
        struct Logs {
            logs: String,
        }
        let logs: Logs = decode(&reply.body, || format!("logs of job {id}"))?;
        Ok(logs.logs)
    }

    fn tail(&self, id: &str, on_line: &mut dyn FnMut(&str) -> ControlFlow<()>) -> Result<()> {
        validate_job_id(id)?;
        let mut asm = LineAssembler::default();
        let mut reached = false;
        if !self.websocket {
            return self.tail_poll(id, &mut asm, on_line, reached);
        }
        match self.tail_ws(id, &mut asm, on_line) {
            Ok(WsEnd::Finished) => {
                let _ = asm.finish(on_line);
                return Ok(());
            }
            Ok(WsEnd::Stopped) => return Ok(()),
            Ok(WsEnd::Interrupted(why)) => {
                reached = true;
                log::warn!("log stream of job {id} interrupted ({why}); following by polling");
            }
            Err(
                e @ (ClusterError::Unauthorized { .. }
                | ClusterError::TokenRequired { .. }
                | ClusterError::NotFound { .. }
                | ClusterError::Config { .. }),
            ) => return Err(e),
            Err(e) => log::warn!("cannot stream the log of job {id} ({e}); following by polling"),
        }
        self.tail_poll(id, &mut asm, on_line, reached)
    }

    fn stop(&self, id: &str) -> Result<bool> {
        validate_job_id(id)?;
        if let Ok(info) = self.status(id) {
            // An ended job has nothing to stop (Ray itself may still answer "stopped" for a
            // while after the end, while its supervisor winds down).
            if info.is_terminal() {
                return Ok(false);
            }
            if info.status == JobStatus::Pending {
                log::warn!(
                    "job {id} is still PENDING; Ray ignores a stop request until the job runs (ray#58353)"
                );
            }
        }
        let reply = self.call("POST", &Self::job_path(id, "/stop"), None, Timeouts::Normal)?;
        let reply = self.expect_ok(reply, Some(id))?;
        #[derive(Deserialize)]
        struct Stopped {
            stopped: bool,
        }
        let s: Stopped = decode(&reply.body, || format!("stop job {id}"))?;
        Ok(s.stopped)
    }

    fn delete(&self, id: &str) -> Result<()> {
        validate_job_id(id)?;
        let info = self.status(id)?;
        if !info.is_terminal() {
            return Err(ClusterError::NotTerminal {
                id: id.to_string(),
                status: info.status,
            });
        }
        let delete_once = || -> Result<()> {
            let reply = self.call("DELETE", &Self::job_path(id, ""), None, Timeouts::Normal)?;
            if reply.status == 500 && reply.body.contains("non-terminal state") {
                return Err(ClusterError::NotTerminal {
                    id: id.to_string(),
                    status: JobStatus::Unknown,
                });
            }
            self.expect_ok(reply, Some(id)).map(|_| ())
        };
        delete_once()?;
        // Ray's job monitor may write a FAILED record for a job deleted within ~1 s of ending;
        // wait that out and delete the ghost too.
        let start = Instant::now();
        while start.elapsed() < self.delete_settle {
            std::thread::sleep(Duration::from_millis(500));
            match self.status(id) {
                Err(ClusterError::NotFound { .. }) => {}
                Ok(ghost) if ghost.is_terminal() => {
                    log::debug!("deleting the leftover record of job {id}");
                    match delete_once() {
                        Ok(()) | Err(ClusterError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<JobInfo>> {
        let reply = self.call("GET", "/api/jobs/", None, Timeouts::Normal)?;
        let reply = self.expect_ok(reply, None)?;
        parse_job_list(&reply.body)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => {
            "connection refused (is the cluster running, and the address right?)".into()
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".into(),
        ErrorKind::ConnectionReset => "connection reset by the server".into(),
        ErrorKind::ConnectionAborted => "connection aborted".into(),
        ErrorKind::UnexpectedEof => "the server closed the connection early".into(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            "host or network unreachable".into()
        }
        ErrorKind::NotFound => "host not found (DNS lookup failed)".into(),
        _ => e.to_string(),
    }
}

fn is_loopback_url(base: &str) -> bool {
    let rest = base.split("://").nth(1).unwrap_or("");
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "localhost" | "[::1]") || host.starts_with("127.")
}

fn connect_tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(ErrorKind::NotFound, "no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The log WebSocket's transport.
enum WsStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl WsStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            WsStream::Plain(s) => s,
            WsStream::Tls(s) => &s.sock,
        }
    }
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            WsStream::Plain(s) => s.read(buf),
            WsStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for WsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            WsStream::Plain(s) => s.write(buf),
            WsStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            WsStream::Plain(s) => s.flush(),
            WsStream::Tls(s) => s.flush(),
        }
    }
}

/// `host:port`, `[v6]:port` or a bare host → (host without brackets, port).
fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_string(), default_port)),
        None => None,
    }
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates checked against the Mozilla roots, like the HTTP requests (ureq).
fn verifying_tls_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// For `verify_tls = false`: accepts any certificate (signatures are still checked).
fn insecure_tls_config() -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AcceptAny(Arc<CryptoProvider>);
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = ring_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::Mutex;

    // Responses captured from a real Ray 2.60.0 head (see tools/ray-jobs-api-notes.md);
    // the DRIVER entry of the list is synthetic (shape from Ray's JobDetails).
    const JOB_SUCCEEDED: &str = r##"{"type": "SUBMISSION", "job_id": null, "submission_id": "cellbench-exp-1", "driver_info": null, "status": "SUCCEEDED", "entrypoint": "bash job.sh", "message": "Job finished successfully.", "error_type": null, "start_time": 1795370704237, "end_time": 1795370707169, "metadata": {"tool": "cellbench"}, "runtime_env": {"working_dir": "gcs://_ray_pkg_dd94039d52a4c8738fea50448d9b1ef0.zip", "env_vars": {"FOO": "bar"}}, "driver_agent_http_address": "http://127.0.0.1:52365", "driver_node_id": "583849a1512664f93c56c07f1a419ef23ff214c91fd0b2c830199121", "driver_exit_code": 0}"##;
    const JOB_RUNTIME_ENV_FAILED: &str = r##"{"type": "SUBMISSION", "job_id": null, "submission_id": "cellbench-exp-badenv", "driver_info": null, "status": "FAILED", "entrypoint": "ls", "message": "runtime_env setup failed: Failed to set up runtime environment.\nCould not create the actor because its associated runtime env failed to be created.\n[Node 127.0.0.1] Traceback (most recent call last):\n  File \"/tmp/rayvenv/lib/python3.11/site-packages/ray/_private/runtime_env/agent/runtime_env_agent.py\", line 561, in _create_runtime_env_with_retry\n    runtime_env_context = await asyncio.wait_for(\n                          ^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/tasks.py\", line 489, in wait_for\n    return fut.result()\n           ^^^^^^^^^^^^\n  File \"/tmp/rayvenv/lib/python3.11/site-packages/ray/_private/runtime_env/agent/runtime_env_agent.py\", line 499, in _setup_runtime_env\n    await create_for_plugin_if_needed(\n  File \"/tmp/rayvenv/lib/python3.11/site-packages/ray/_private/runtime_env/plugin.py\", line 255, in create_for_plugin_if_needed\n    size_bytes = await plugin.create(uri, runtime_env, context, logger=logger)\n                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/tmp/rayvenv/lib/python3.11/site-packages/ray/_private/runtime_env/working_dir.py\", line 260, in create\n    local_dir = await download_and_unpack_package(\n                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/tmp/rayvenv/lib/python3.11/site-packages/ray/_private/runtime_env/packaging.py\", line 957, in download_and_unpack_package\n    raise IOError(\nOSError: Failed to download runtime_env file package gcs://_ray_pkg_00000000000000000000000000000000.zip from the GCS to the Ray worker node. The package may have prematurely been deleted from the GCS due to a long upload time or a problem with Ray. Try setting the environment variable RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S  to a value larger than the upload time in seconds (the default is 600). If this fails, try re-running after making any change to a file in the file package.\n", "error_type": "RUNTIME_ENV_SETUP_FAILURE", "start_time": 1795370748486, "end_time": 1795370751504, "metadata": null, "runtime_env": {"working_dir": "gcs://_ray_pkg_00000000000000000000000000000000.zip"}, "driver_agent_http_address": null, "driver_node_id": null, "driver_exit_code": null}"##;
    const JOB_PENDING: &str = r##"{"type": "SUBMISSION", "job_id": null, "submission_id": "cellbench-exp-gpu", "driver_info": null, "status": "PENDING", "entrypoint": "echo hi", "message": "Job has not started yet. It may be waiting for resources (CPUs, GPUs, memory, custom resources) to become available.", "error_type": null, "start_time": 1795370748560, "end_time": null, "metadata": null, "runtime_env": null, "driver_agent_http_address": null, "driver_node_id": null, "driver_exit_code": null}"##;
    const JOB_LIST: &str = r##"[{"type": "SUBMISSION", "job_id": null, "submission_id": "cellbench-exp-1", "driver_info": null, "status": "SUCCEEDED", "entrypoint": "bash job.sh", "message": "Job finished successfully.", "error_type": null, "start_time": 1795370704237, "end_time": 1795370707169, "metadata": {"tool": "cellbench"}, "runtime_env": {"working_dir": "gcs://_ray_pkg_dd94039d52a4c8738fea50448d9b1ef0.zip", "env_vars": {"FOO": "bar"}}, "driver_agent_http_address": "http://127.0.0.1:52365", "driver_node_id": "583849a1512664f93c56c07f1a419ef23ff214c91fd0b2c830199121", "driver_exit_code": 0}, {"type": "SUBMISSION", "job_id": null, "submission_id": "cellbench-exp-del", "driver_info": null, "status": "STOPPED", "entrypoint": "sleep 300", "message": "Job was intentionally stopped.", "error_type": null, "start_time": 1795370741246, "end_time": 1795370745817, "metadata": null, "runtime_env": null, "driver_agent_http_address": "http://127.0.0.1:52365", "driver_node_id": "583849a1512664f93c56c07f1a419ef23ff214c91fd0b2c830199121", "driver_exit_code": null}, {"type": "DRIVER", "job_id": "01000000", "submission_id": null, "driver_info": {"id": "01000000", "node_ip_address": "127.0.0.1", "pid": "4242"}, "status": "SUCCEEDED", "entrypoint": "python x.py", "message": null, "error_type": null, "start_time": 1795370000000, "end_time": 1795370001000, "metadata": {}, "runtime_env": {}, "driver_agent_http_address": null, "driver_node_id": null, "driver_exit_code": null}]"##;
    const JOB_LOGS: &str = r##"{"logs": "2026-11-22 18:05:04,242\tINFO job_manager.py:581 -- Runtime env is setting up.\nRunning entrypoint for job cellbench-exp-1: bash job.sh\n{\"event\":\"progress\",\"step\":1}\n{\"event\":\"finished\",\"ok\":true}\n"}"##;

    const TOKEN: &str = "tok-5ecret-0123456789abcdef";

    #[test]
    fn parses_recorded_job_status() {
        let ok = parse_job(JOB_SUCCEEDED, "x").unwrap();
        assert_eq!(ok.submission_id, "cellbench-exp-1");
        assert_eq!(ok.status, JobStatus::Succeeded);
        assert_eq!(ok.entrypoint, "bash job.sh");
        assert_eq!(ok.start_time, Some(1_795_370_704_237));
        assert_eq!(ok.end_time, Some(1_795_370_707_169));
        assert_eq!(ok.driver_exit_code, Some(0));
        assert_eq!(
            ok.metadata.get("tool").map(String::as_str),
            Some("cellbench")
        );
        assert!(ok.is_terminal() && ok.runtime_env_error().is_none());

        let pending = parse_job(JOB_PENDING, "x").unwrap();
        assert_eq!(pending.status, JobStatus::Pending);
        assert!(pending.metadata.is_empty(), "null metadata reads as empty");
        assert_eq!(pending.end_time, None);
        assert!(pending.message.unwrap().contains("waiting for resources"));

        let failed = parse_job(JOB_RUNTIME_ENV_FAILED, "x").unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(
            failed.error_type.as_deref(),
            Some("RUNTIME_ENV_SETUP_FAILURE")
        );
        let err = failed
            .runtime_env_error()
            .expect("a runtime env failure")
            .to_string();
        assert!(
            err.contains("runtime_env setup failed") && err.contains("OSError: Failed to download"),
            "{err}"
        );
        assert!(err.chars().count() < 600, "{err}");
    }

    #[test]
    fn parses_recorded_list_and_logs() {
        let jobs = parse_job_list(JOB_LIST).unwrap();
        let ids: Vec<&str> = jobs.iter().map(|j| j.submission_id.as_str()).collect();
        assert_eq!(
            ids,
            ["cellbench-exp-1", "cellbench-exp-del"],
            "driver jobs are left out"
        );
        assert_eq!(jobs[1].status, JobStatus::Stopped);
        #[derive(Deserialize)]
        struct Logs {
            logs: String,
        }
        let logs: Logs = serde_json::from_str(JOB_LOGS).unwrap();
        let lines: Vec<&str> = logs.logs.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            serde_json::from_str::<serde_json::Value>(lines[0]).is_err(),
            "Ray's header lines are not JSON"
        );
        assert_eq!(lines[2], r#"{"event":"progress","step":1}"#);
    }

    #[test]
    fn submission_body_matches_the_api() {
        let mut job = JobSubmission::new("bash job.sh");
        job.submission_id = "cellbench-1".into();
        job.working_dir = Some("gcs://_ray_pkg_00.zip".into());
        job.env_vars.insert("A".into(), "1".into());
        job.metadata.insert("who".into(), "me".into());
        job.entrypoint_num_gpus = Some(1.0);
        let v = submission_body(&job);
        assert_eq!(
            v,
            json!({
                "entrypoint": "bash job.sh",
                "submission_id": "cellbench-1",
                "runtime_env": {"working_dir": "gcs://_ray_pkg_00.zip", "env_vars": {"A": "1"}},
                "entrypoint_num_gpus": 1.0,
                "metadata": {"who": "me", "cellbench_num_gpus": "1"}
            })
        );
        let bare = submission_body(&JobSubmission {
            submission_id: "b".into(),
            ..JobSubmission::new("ls")
        });
        assert_eq!(bare, json!({"entrypoint": "ls", "submission_id": "b"}));
        // The resources come back through the metadata.
        let info = parse_job(
            r#"{"type":"SUBMISSION","submission_id":"b","status":"PENDING","entrypoint":"ls","metadata":{"cellbench_num_gpus":"1"}}"#,
            "b",
        )
        .unwrap();
        assert_eq!(info.entrypoint_num_gpus, Some(1.0));
    }

    #[test]
    fn line_assembler_joins_partial_lines() {
        let mut lines = Vec::new();
        let mut asm = LineAssembler::default();
        let mut cb = |l: &str| {
            lines.push(l.to_string());
            ControlFlow::Continue(())
        };
        for chunk in ["a\nb", "c\n\nd\r\n", "", "{\"x\":", "1}\ne"] {
            let _ = asm.push(chunk, &mut cb);
        }
        let _ = asm.finish(&mut cb);
        assert_eq!(lines, ["a", "bc", "", "d", "{\"x\":1}", "e"]);
        assert_eq!(asm.consumed, "a\nbc\n\nd\r\n{\"x\":1}\ne".len());

        let mut n = 0;
        let mut stop_after_two = |_: &str| {
            n += 1;
            if n == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut asm = LineAssembler::default();
        assert!(asm.push("1\n2\n3\n", &mut stop_after_two).is_break());
        assert_eq!(n, 2);
    }

    // ----- a scripted fake dashboard ---------------------------------------------------------

    #[derive(Debug, Clone)]
    struct Req {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    enum Resp {
        Http(u16, String),
        /// Close the connection without answering (a network failure after the request).
        Drop,
        /// Accept the WebSocket and send these text frames, then close.
        Ws(Vec<String>),
    }

    struct Fake {
        base: String,
        seen: Arc<Mutex<Vec<Req>>>,
        _dir: tempfile::TempDir,
        profile: ClusterProfile,
    }

    impl Fake {
        fn client(&self) -> RayClient {
            RayClient::new(&self.profile)
                .unwrap()
                .with_poll_interval(Duration::from_millis(100))
        }
        fn seen(&self) -> Vec<(String, String)> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|r| (r.method.clone(), r.path.clone()))
                .collect()
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    type Handler = Arc<Mutex<dyn FnMut(&Req) -> Resp + Send>>;

    fn fake(handler: impl FnMut(&Req) -> Resp + Send + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler: Handler = Arc::new(Mutex::new(handler));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, handler) = (log.clone(), handler.clone());
                std::thread::spawn(move || serve_one(stream, &log, &handler));
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let token_file: PathBuf = dir.path().join("token");
        crate::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut profile = ClusterProfile::new("fake", base.clone());
        profile.token_file = Some(token_file);
        Fake {
            base,
            seen,
            _dir: dir,
            profile,
        }
    }

    fn serve_one(mut stream: TcpStream, log: &Mutex<Vec<Req>>, handler: &Handler) {
        let handle = |req: &Req| (handler.lock().unwrap())(req);
        {
            {
                let mut buf = vec![0u8; 65536];
                let mut head_len = 0;
                for _ in 0..500 {
                    let n = stream.peek(&mut buf).unwrap_or(0);
                    if let Some(p) = find(&buf[..n], b"\r\n\r\n") {
                        head_len = p + 4;
                        break;
                    }
                    if n == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                if head_len == 0 {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                    .collect();
                let mut req = Req {
                    method,
                    path,
                    headers,
                    body: Vec::new(),
                };
                if req
                    .header("upgrade")
                    .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
                {
                    log.lock().unwrap().push(req.clone());
                    match handle(&req) {
                        Resp::Ws(frames) => {
                            let mut ws = tungstenite::accept(stream).unwrap();
                            for f in frames {
                                ws.send(tungstenite::Message::text(f)).unwrap();
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            let _ = ws.close(None);
                            while ws.read().is_ok() {}
                        }
                        Resp::Http(status, body) => {
                            let _ = stream.read_exact(&mut buf[..head_len]);
                            respond(&mut stream, status, &body);
                        }
                        Resp::Drop => {}
                    }
                    return;
                }
                stream.read_exact(&mut buf[..head_len]).unwrap();
                let len: usize = req
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                req.body = vec![0; len];
                stream.read_exact(&mut req.body).unwrap();
                log.lock().unwrap().push(req.clone());
                match handle(&req) {
                    Resp::Http(status, body) => respond(&mut stream, status, &body),
                    Resp::Drop => {}
                    Resp::Ws(_) => panic!("not a WebSocket request"),
                }
            }
        }
    }

    fn respond(stream: &mut TcpStream, status: u16, body: &str) {
        let ct = if body.starts_with('{') || body.starts_with('[') {
            "application/json"
        } else {
            "text/plain"
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.flush();
    }

    fn job_json(id: &str, status: &str, entrypoint: &str) -> String {
        json!({"type": "SUBMISSION", "submission_id": id, "status": status, "entrypoint": entrypoint,
               "message": null, "error_type": null, "metadata": null})
        .to_string()
    }

    #[test]
    fn sends_the_bearer_token_and_maps_401_403() {
        let f = fake(|req| match req.header("authorization") {
            Some(a) if a == format!("Bearer {TOKEN}") => Resp::Http(200, "[]".into()),
            Some(_) => Resp::Http(403, "Forbidden: Invalid authentication token".into()),
            None => Resp::Http(401, "Unauthorized: Missing authentication token".into()),
        });
        assert!(f.client().list().unwrap().is_empty());

        crate::fs::write(
            f.profile.token_file.as_ref().unwrap(),
            "wrong-token-value-42",
        )
        .unwrap();
        let e = f.client().list().unwrap_err();
        assert!(
            matches!(e, ClusterError::Unauthorized { status: 403, .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("rejected the token from file") && msg.contains("token"),
            "{msg}"
        );
        assert!(
            !msg.contains("wrong-token-value-42")
                && !format!("{e:?}").contains("wrong-token-value-42")
        );

        let mut no_token = f.profile.clone();
        no_token.token_file = None;
        let e = RayClient::new(&no_token).unwrap().list().unwrap_err();
        assert!(matches!(e, ClusterError::TokenRequired { .. }), "{e:?}");
    }

    #[test]
    fn submit_retried_after_a_lost_request_does_not_duplicate() {
        let mut posts = 0;
        let f = fake(move |req| match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/api/jobs/") => {
                posts += 1;
                if posts == 1 {
                    Resp::Drop // the job was created, but the answer is lost
                } else {
                    Resp::Http(500, "Traceback (most recent call last):\n  File \"x\"\nValueError: Job with submission_id cellbench-dup already exists. Please use a different submission_id.\n.".into())
                }
            }
            ("GET", "/api/jobs/cellbench-dup") => {
                Resp::Http(200, job_json("cellbench-dup", "RUNNING", "bash job.sh"))
            }
            _ => Resp::Http(404, "nope".into()),
        });
        let mut job = JobSubmission::new("bash job.sh");
        job.submission_id = "cellbench-dup".into();
        assert_eq!(f.client().submit(&job).unwrap(), "cellbench-dup");
        assert_eq!(
            f.seen(),
            [
                ("POST".to_string(), "/api/jobs/".to_string()),
                ("POST".into(), "/api/jobs/".into()),
                ("GET".into(), "/api/jobs/cellbench-dup".into())
            ]
        );
        let body: serde_json::Value =
            serde_json::from_slice(&f.seen.lock().unwrap()[0].body).unwrap();
        assert_eq!(body["submission_id"], "cellbench-dup");

        // The same id used by a different job is an error, not a silent success.
        job.entrypoint = "bash other.sh".into();
        let e = f.client().submit(&job).unwrap_err();
        assert!(matches!(e, ClusterError::SubmissionIdTaken { .. }), "{e:?}");
    }

    #[test]
    fn duplicate_of_a_vanished_job_is_reported() {
        let f = fake(|req| match req.method.as_str() {
            "POST" => Resp::Http(
                500,
                "ValueError: Job with submission_id gone already exists.".into(),
            ),
            _ => Resp::Http(404, "Job gone does not exist".into()),
        });
        let job = JobSubmission {
            submission_id: "gone".into(),
            ..JobSubmission::new("ls")
        };
        let e = f.client().submit(&job).unwrap_err();
        assert!(matches!(e, ClusterError::DuplicateNotFound { .. }), "{e:?}");
    }

    #[test]
    fn upload_checks_existence_and_size() {
        let stored = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = stored.clone();
        let f = fake(move |req| {
            let name = req
                .path
                .trim_start_matches("/api/packages/gcs/")
                .to_string();
            match req.method.as_str() {
                "GET" if s.lock().unwrap().contains(&name) => Resp::Http(200, String::new()),
                "GET" => Resp::Http(404, format!("Package gcs://{name} does not exist")),
                "PUT" if req.body.len() > 10 => {
                    Resp::Http(413, "Maximum request body size 104857600 exceeded.".into())
                }
                "PUT" => {
                    s.lock().unwrap().push(name);
                    Resp::Http(200, String::new())
                }
                _ => Resp::Http(405, String::new()),
            }
        });
        let client = f.client();
        let uri = client.upload_package(b"zipbytes").unwrap();
        assert_eq!(uri, format!("gcs://{}", package_name(b"zipbytes")));
        assert_eq!(client.upload_package(b"zipbytes").unwrap(), uri);
        let methods: Vec<String> = f.seen().into_iter().map(|(m, _)| m).collect();
        assert_eq!(
            methods,
            ["GET", "PUT", "GET"],
            "a package already there is not uploaded again"
        );

        let e = client.upload_package(b"more than ten bytes").unwrap_err();
        assert!(
            matches!(e, ClusterError::PackageTooLarge { .. }),
            "413 → {e:?}"
        );

        let before = f.seen().len();
        let huge = vec![0u8; PACKAGE_LIMIT_BYTES as usize + 1];
        let e = client.upload_package(&huge).unwrap_err();
        assert!(
            matches!(e, ClusterError::PackageTooLarge { bytes, limit } if bytes == limit + 1),
            "{e:?}"
        );
        assert!(e.to_string().contains("104857601 bytes"), "{e}");
        assert_eq!(
            f.seen().len(),
            before,
            "an oversized package is refused before any request"
        );
    }

    #[test]
    fn tail_over_websocket_reassembles_lines() {
        let f = fake(|req| {
            if req.path.ends_with("/logs/tail") {
                assert_eq!(
                    req.header("authorization"),
                    Some(format!("Bearer {TOKEN}").as_str())
                );
                return Resp::Ws(
                    ["2026-11-22 INFO header\nRunning entrypoint for job j: bash job.sh\n{\"event\":\"pro", "gress\"}\n", "{\"event\":\"finished\"}\nno newline at end"]
                        .map(String::from)
                        .to_vec(),
                );
            }
            Resp::Http(200, job_json("j", "SUCCEEDED", "bash job.sh"))
        });
        let mut lines = Vec::new();
        f.client()
            .tail("j", &mut |l| {
                lines.push(l.to_string());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(
            lines,
            [
                "2026-11-22 INFO header",
                "Running entrypoint for job j: bash job.sh",
                "{\"event\":\"progress\"}",
                "{\"event\":\"finished\"}",
                "no newline at end"
            ]
        );
        assert!(
            !f.seen().iter().any(|(_, p)| p.ends_with("/logs")),
            "no polling needed"
        );
    }

    #[test]
    fn tail_falls_back_to_polling_and_emits_each_line_once() {
        let mut polls = 0;
        let f = fake(move |req| {
            if req.path.ends_with("/logs/tail") {
                return Resp::Http(502, "Bad Gateway".into());
            }
            if req.path.ends_with("/logs") {
                polls += 1;
                let logs = match polls {
                    1 => "a\nb",
                    2 => "a\nbc\n",
                    _ => "a\nbc\nd\ne",
                };
                return Resp::Http(200, json!({ "logs": logs }).to_string());
            }
            let status = if polls >= 3 { "SUCCEEDED" } else { "RUNNING" };
            Resp::Http(200, job_json("j", status, "x"))
        });
        let mut lines = Vec::new();
        f.client()
            .tail("j", &mut |l| {
                lines.push(l.to_string());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(lines, ["a", "bc", "d", "e"]);
    }

    #[test]
    fn unknown_jobs_and_unreachable_clusters() {
        let f = fake(|req| Resp::Http(404, format!("Job {} does not exist", req.path)));
        let c = f.client();
        assert!(matches!(c.status("nope"), Err(ClusterError::NotFound { id }) if id == "nope"));
        assert!(matches!(c.logs("nope"), Err(ClusterError::NotFound { .. })));
        assert!(matches!(c.stop("nope"), Err(ClusterError::NotFound { .. })));
        assert!(matches!(
            c.delete("nope"),
            Err(ClusterError::NotFound { .. })
        ));
        assert!(matches!(
            c.tail("nope", &mut |_| ControlFlow::Continue(())),
            Err(ClusterError::NotFound { .. })
        ));
        assert!(matches!(
            c.status("../x"),
            Err(ClusterError::InvalidJobId { .. })
        ));

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = RayClient::new(&ClusterProfile::new(
            "down",
            format!("http://127.0.0.1:{port}"),
        ))
        .unwrap();
        let t = Instant::now();
        let e = down.list().unwrap_err();
        assert!(matches!(e, ClusterError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn delete_refuses_running_jobs_and_removes_ghosts() {
        let deleted = Arc::new(Mutex::new(0));
        let d = deleted.clone();
        let f = fake(move |req| {
            let mut n = d.lock().unwrap();
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/api/jobs/run") => Resp::Http(200, job_json("run", "RUNNING", "x")),
                ("DELETE", "/api/jobs/done") => {
                    *n += 1;
                    Resp::Http(200, r#"{"deleted": true}"#.into())
                }
                // After the first delete Ray's monitor writes a ghost; after the second, gone.
                ("GET", "/api/jobs/done") => match *n {
                    0 => Resp::Http(200, job_json("done", "SUCCEEDED", "x")),
                    1 => Resp::Http(200, job_json("done", "FAILED", "Entrypoint not found.")),
                    _ => Resp::Http(404, "Job done does not exist".into()),
                },
                _ => Resp::Http(404, String::new()),
            }
        });
        let c = f.client();
        assert!(matches!(
            c.delete("run"),
            Err(ClusterError::NotTerminal { .. })
        ));
        c.delete("done").unwrap();
        assert_eq!(*deleted.lock().unwrap(), 2);
    }

    #[test]
    fn wait_until_running_reports_pending_and_env_failures() {
        let f = fake(|req| {
            match req.path.as_str() {
            "/api/jobs/pend" => Resp::Http(
                200,
                r#"{"type":"SUBMISSION","submission_id":"pend","status":"PENDING","entrypoint":"x","metadata":{"cellbench_num_cpus":"2","cellbench_num_gpus":"1"}}"#.into(),
            ),
            _ => Resp::Http(200, JOB_RUNTIME_ENV_FAILED.into()),
        }
        });
        let c = f.client();
        let e = c
            .wait_until_running("pend", Duration::from_millis(600))
            .unwrap_err();
        assert!(matches!(e, ClusterError::PendingTooLong { .. }), "{e:?}");
        assert!(e.to_string().contains("(2 CPUs / 1 GPUs)"), "{e}");
        let e = c
            .wait_until_running("cellbench-exp-badenv", Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(e, ClusterError::RuntimeEnvSetup { .. }), "{e:?}");
    }

    #[test]
    fn host_port_and_tls_configs() {
        assert_eq!(split_host_port("h:8265", 80), Some(("h".into(), 8265)));
        assert_eq!(split_host_port("h", 443), Some(("h".into(), 443)));
        assert_eq!(split_host_port("[::1]:9", 80), Some(("::1".into(), 9)));
        assert_eq!(split_host_port("[::1]", 443), Some(("::1".into(), 443)));
        assert_eq!(split_host_port("h:x", 80), None);
        assert!(
            is_loopback_url("http://127.0.0.1:8265") && is_loopback_url("http://localhost:1/x")
        );
        assert!(!is_loopback_url("http://10.0.0.1:8265"));
        let _ = verifying_tls_config();
        let _ = insecure_tls_config();
        let mut p = ClusterProfile::new("tls", "https://ray.example.org:8443");
        p.verify_tls = false;
        let c = RayClient::new(&p).unwrap();
        assert_eq!(c.address(), "https://ray.example.org:8443");
    }

    /// A hostile or careless server that echoes the request headers into every answer:
    /// no error message, Debug output or log line may carry the token or a header value.
    #[test]
    fn no_error_ever_contains_the_token() {
        const HEADER_SECRET: &str = "hdr-5ecret-value-987";
        let f = fake(|req| {
            let echo = format!("{:?} {}", req.headers, String::from_utf8_lossy(&req.body));
            if req.path.ends_with("/logs/tail") {
                return Resp::Http(500, echo);
            }
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", p) if p.starts_with("/api/packages/") => Resp::Http(404, echo),
                ("PUT", _) => Resp::Http(500, echo),
                ("POST", "/api/jobs/") => {
                    Resp::Http(400, format!("Traceback\n  x\nTypeError: {echo}"))
                }
                ("GET", "/api/jobs/") => Resp::Http(500, echo),
                ("GET", "/api/jobs/a") => Resp::Http(200, format!("not json {echo}")),
                ("GET", "/api/jobs/b") => Resp::Http(403, echo),
                ("GET", "/api/jobs/c") => Resp::Http(500, echo),
                ("GET", "/api/jobs/c/logs") => Resp::Http(418, echo),
                ("POST", _) => Resp::Http(401, echo),
                _ => Resp::Http(500, echo),
            }
        });
        let mut profile = f.profile.clone();
        profile
            .headers
            .insert("X-Proxy-Auth".into(), HEADER_SECRET.into());
        let c = RayClient::new(&profile)
            .unwrap()
            .with_poll_interval(Duration::from_millis(100));
        let job = JobSubmission {
            submission_id: "s".into(),
            ..JobSubmission::new(format!("echo {TOKEN}"))
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut down_profile = profile.clone();
        down_profile.address = format!("http://127.0.0.1:{port}");
        let down = RayClient::new(&down_profile).unwrap();

        let errors: Vec<ClusterError> = vec![
            c.upload_package(b"zip").unwrap_err(),
            c.submit(&JobSubmission {
                entrypoint: "ls".into(),
                ..job.clone()
            })
            .unwrap_err(),
            c.list().unwrap_err(),
            c.status("a").unwrap_err(),
            c.status("b").unwrap_err(),
            c.status("c").unwrap_err(),
            c.logs("c").unwrap_err(),
            c.stop("c").unwrap_err(),
            c.tail("c", &mut |_| ControlFlow::Continue(())).unwrap_err(),
            c.delete("c").unwrap_err(),
            down.list().unwrap_err(),
            down.tail("x", &mut |_| ControlFlow::Continue(()))
                .unwrap_err(),
            down.submit(&job).unwrap_err(),
        ];
        // Every variant, built the way the client builds it (contexts derived from the
        // profile, which holds the token's source but not the token).
        let src = describe_source(&TokenSource::File(profile.token_file.clone().unwrap()));
        let all_variants = vec![
            ClusterError::Unauthorized {
                address: f.base.clone(),
                source_desc: src,
                status: 403,
            },
            ClusterError::TokenRequired {
                address: f.base.clone(),
            },
            ClusterError::NotFound { id: "x".into() },
            ClusterError::PackageTooLarge { bytes: 1, limit: 0 },
            c.http_error(&Reply {
                status: 500,
                body: format!("Bearer {TOKEN} {HEADER_SECRET}"),
            }),
            ClusterError::RuntimeEnvSetup {
                message: "m".into(),
            },
            ClusterError::PendingTooLong {
                id: "x".into(),
                secs: 1,
                hint: "h".into(),
            },
            ClusterError::DuplicateNotFound { id: "x".into() },
            ClusterError::SubmissionIdTaken {
                id: "x".into(),
                existing_entrypoint: "ls".into(),
            },
            ClusterError::NotTerminal {
                id: "x".into(),
                status: JobStatus::Running,
            },
            ClusterError::InvalidJobId { id: "x".into() },
            ClusterError::Config {
                location: "l".into(),
                message: "m".into(),
            },
            ClusterError::MissingToken {
                message: "m".into(),
            },
            ClusterError::Tls {
                address: f.base.clone(),
                reason: c.scrub(&format!("bad cert {TOKEN}")),
            },
            ClusterError::Transport {
                address: f.base.clone(),
                reason: c.scrub(TOKEN),
            },
            ClusterError::Json {
                context: "c".into(),
                source: serde_json::from_str::<u8>("x").unwrap_err(),
            },
            ClusterError::io("c", std::io::Error::other("o")),
        ];
        for e in errors.iter().chain(&all_variants) {
            for text in [
                e.to_string(),
                format!("{e:?}"),
                format!("{:#}", anyhow_like(e)),
            ] {
                assert!(!text.contains(TOKEN), "token leaked: {text}");
                assert!(!text.contains(HEADER_SECRET), "header value leaked: {text}");
            }
        }
        let dbg = format!("{c:?} {profile:?}");
        assert!(
            !dbg.contains(TOKEN) && !dbg.contains(HEADER_SECRET),
            "{dbg}"
        );
        // The echoes really were there, so the scrubbing was exercised.
        assert!(
            errors.iter().any(|e| e.to_string().contains("***")),
            "{errors:?}"
        );
    }

    /// The error and its sources, as `anyhow`'s `{:#}` would print them.
    fn anyhow_like(e: &ClusterError) -> String {
        let mut out = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            out.push_str(&format!(": {s}"));
            src = s.source();
        }
        out
    }
}
