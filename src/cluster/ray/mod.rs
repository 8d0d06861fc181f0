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

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::package::package_name;
use super::{
    ClusterBackend, ClusterError, ClusterProfile, JobInfo, JobStatus, JobSubmission,
    PACKAGE_LIMIT_BYTES, Result, Secret, TokenSource, describe_source, short_message,
    truncate_chars, validate_job_id,
};

mod logs;
mod transport;
mod wire;

use logs::*;
use transport::*;
pub(crate) use wire::*;

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Timeouts {
    Normal,
    Long,
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

#[cfg(test)]
mod tests;
