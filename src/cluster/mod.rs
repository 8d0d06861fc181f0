//! Running cellbench work on a cluster.
//!
//! The [`ClusterBackend`] trait is what the CLI, the GUI and workbooks talk to; [`RayClient`]
//! implements it over the Ray Jobs REST API (see `tools/ray-jobs-api-notes.md` for the facts it
//! relies on). A job ships its code as a zip built by [`build_package`], uploaded with
//! [`ClusterBackend::upload_package`] and referenced from [`JobSubmission::working_dir`].
//!
//! Secrets: a [`ClusterProfile`] names where the token lives (an environment variable or a file)
//! and never holds the value; the value only exists inside a [`Secret`] and in request headers.
//! No error message or log line built here contains it.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;
use std::time::Duration;

use web_time::Instant;

use serde::{Deserialize, Serialize};

#[cfg(not(target_arch = "wasm32"))]
pub mod job;
#[cfg(not(target_arch = "wasm32"))]
pub mod package;
pub mod profile;
#[cfg(not(target_arch = "wasm32"))]
pub mod ray;
#[cfg(not(target_arch = "wasm32"))]
pub mod results;

#[cfg(not(target_arch = "wasm32"))]
pub use package::build_package;
pub use profile::{ClusterProfile, Profiles, Secret, TokenSource};
#[cfg(not(target_arch = "wasm32"))]
pub use ray::RayClient;

/// The largest package the Ray dashboard accepts: its `client_max_size` is 100 MiB and a body
/// of exactly this size is still accepted (one byte more answers 413).
pub const PACKAGE_LIMIT_BYTES: u64 = 100 * 1024 * 1024;

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a cluster. Messages are meant for users: they say
/// what happened and what to do, and never contain a token or a header value.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach the cluster at {address}: {reason}")]
    Unreachable { address: String, reason: String },

    #[error(
        "the cluster at {address} rejected the token from {source_desc} (HTTP {status}); check that it is the cluster's current token"
    )]
    Unauthorized {
        address: String,
        source_desc: String,
        status: u16,
    },

    #[error(
        "the cluster at {address} requires a token, but the profile names no token_env or token_file"
    )]
    TokenRequired { address: String },

    #[error("no job with id {id} on the cluster")]
    NotFound { id: String },

    #[error(
        "the job package is {bytes} bytes, more than the cluster accepts ({limit} bytes); leave large files out and pass data through shared storage"
    )]
    PackageTooLarge { bytes: u64, limit: u64 },

    #[error("the cluster answered HTTP {status}: {body}")]
    Http { status: u16, body: String },

    #[error("the job's runtime environment could not be set up on the cluster: {message}")]
    RuntimeEnvSetup { message: String },

    #[error("job {id} is still pending after {secs} s; {hint}")]
    PendingTooLong { id: String, secs: u64, hint: String },

    #[error("the cluster says a job with id {id} already exists, but it cannot be found")]
    DuplicateNotFound { id: String },

    #[error(
        "the job id {id} is already used by another job (entrypoint {existing_entrypoint:?}); choose a new submission id"
    )]
    SubmissionIdTaken {
        id: String,
        existing_entrypoint: String,
    },

    #[error("job {id} is {status} and can only be deleted once it has ended; stop it first")]
    NotTerminal { id: String, status: JobStatus },

    #[error("invalid job id {id:?}: use letters, digits, '-', '_' and '.' only")]
    InvalidJobId { id: String },

    #[error("cluster configuration {location}: {message}")]
    Config { location: String, message: String },

    #[error("no token for the cluster: {message}")]
    MissingToken { message: String },

    #[error("TLS with the cluster at {address} failed: {reason}")]
    Tls { address: String, reason: String },

    #[error("talking to the cluster at {address} failed: {reason}")]
    Transport { address: String, reason: String },

    #[error("unexpected answer from the cluster ({context}): {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }

    /// True for errors where trying again later may help (the cluster is down or unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClusterError::Unreachable { .. } | ClusterError::Transport { .. }
        )
    }
}

/// The life cycle of a job, as Ray reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Running,
    Stopped,
    Succeeded,
    Failed,
    /// A status this client does not know (a newer server); treated as not terminal.
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Stopped | JobStatus::Succeeded | JobStatus::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Stopped => "STOPPED",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
            JobStatus::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the cluster knows about one submitted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub submission_id: String,
    pub status: JobStatus,
    #[serde(default)]
    pub entrypoint: String,
    #[serde(default)]
    pub message: Option<String>,
    /// Ray's error type on failure, e.g. `RUNTIME_ENV_SETUP_FAILURE`,
    /// `JOB_ENTRYPOINT_COMMAND_ERROR`, `JOB_SUPERVISOR_ACTOR_START_TIMEOUT`.
    #[serde(default)]
    pub error_type: Option<String>,
    /// Milliseconds since the Unix epoch (cluster clock).
    #[serde(default)]
    pub start_time: Option<u64>,
    #[serde(default)]
    pub end_time: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub entrypoint_num_cpus: Option<f64>,
    #[serde(default)]
    pub entrypoint_num_gpus: Option<f64>,
    #[serde(default)]
    pub driver_exit_code: Option<i32>,
}

impl JobInfo {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The runtime-environment failure of a failed job, if that is why it failed.
    pub fn runtime_env_error(&self) -> Option<ClusterError> {
        (self.status == JobStatus::Failed
            && self.error_type.as_deref() == Some(RUNTIME_ENV_SETUP_FAILURE))
        .then(|| ClusterError::RuntimeEnvSetup {
            message: short_message(self.message.as_deref().unwrap_or("")),
        })
    }
}

pub(crate) const RUNTIME_ENV_SETUP_FAILURE: &str = "RUNTIME_ENV_SETUP_FAILURE";

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Keeps the useful end of a long server message (Ray puts a Python traceback first and the
/// actual reason last) and caps it at 500 characters.
pub(crate) fn short_message(msg: &str) -> String {
    let msg = msg.trim();
    // The last non-empty line of a traceback is the exception; Ray's runtime-env message
    // starts with a summary line, so keep the first line too.
    let lines: Vec<&str> = msg.lines().filter(|l| !l.trim().is_empty()).collect();
    let text = if lines.len() > 3 && msg.contains("Traceback") {
        format!("{} … {}", lines[0].trim(), lines[lines.len() - 1].trim())
    } else {
        msg.to_string()
    };
    truncate_chars(&text, 500)
}

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// A job to run: a shell command executed in the unpacked package directory on the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSubmission {
    /// Chosen by the client so that a retried submit can never start a second job
    /// (see [`new_submission_id`]).
    pub submission_id: String,
    pub entrypoint: String,
    /// The package URI returned by [`ClusterBackend::upload_package`], if any.
    pub working_dir: Option<String>,
    /// Visible to anyone who can list jobs on the cluster: never put secrets here.
    pub env_vars: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub entrypoint_num_cpus: Option<f64>,
    pub entrypoint_num_gpus: Option<f64>,
}

impl JobSubmission {
    /// A submission with a fresh id and no resources reserved.
    pub fn new(entrypoint: impl Into<String>) -> Self {
        JobSubmission {
            submission_id: new_submission_id(),
            entrypoint: entrypoint.into(),
            working_dir: None,
            env_vars: BTreeMap::new(),
            metadata: BTreeMap::new(),
            entrypoint_num_cpus: None,
            entrypoint_num_gpus: None,
        }
    }
}

/// `cellbench-<UTC yyyymmddThhmmss>-<8 hex>`: sortable, unique across processes and machines
/// for all practical purposes, and valid in URLs.
pub fn new_submission_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let now = web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = RandomState::new().build_hasher();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let rand = h.finish() as u32;
    format!(
        "cellbench-{}-{rand:08x}",
        crate::clock::utc_compact(now.as_secs())
    )
}

/// Submission ids travel in URL paths; restrict them to a safe alphabet.
pub fn validate_job_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidJobId {
            id: truncate_chars(id, 80),
        })
    }
}

/// A place that runs jobs. All methods block; call them off the UI thread.
pub trait ClusterBackend: Send + Sync {
    /// Human-readable name of the backend and where it points, e.g. `ray at http://h:8265`.
    fn describe(&self) -> String;

    /// Stores a job package (a zip from [`build_package`]) on the cluster and returns the URI
    /// to put in [`JobSubmission::working_dir`]. Uploading the same bytes twice is cheap.
    fn upload_package(&self, zip: &[u8]) -> Result<String>;

    /// Submits a job and returns its submission id. Idempotent: submitting the same
    /// `submission_id` again (e.g. after a network error) never starts a second job.
    fn submit(&self, job: &JobSubmission) -> Result<String>;

    fn status(&self, id: &str) -> Result<JobInfo>;

    /// The whole log so far (stdout and stderr of the entrypoint, plus the cluster's own
    /// header lines, which are not JSON).
    fn logs(&self, id: &str) -> Result<String>;

    /// Streams the log line by line (each line without its newline) until the job ends or
    /// `on_line` returns `Break`. Starts from the beginning of the log.
    fn tail(&self, id: &str, on_line: &mut dyn FnMut(&str) -> ControlFlow<()>) -> Result<()>;

    /// Asks the cluster to stop a job; `Ok(false)` when it had already ended. A job still
    /// PENDING may not actually stop (Ray ignores the request until it runs).
    fn stop(&self, id: &str) -> Result<bool>;

    /// Removes an ended job and its log from the cluster.
    fn delete(&self, id: &str) -> Result<()>;

    /// Every submitted job the cluster knows about.
    fn list(&self) -> Result<Vec<JobInfo>>;

    /// Polls until the job leaves PENDING. Returns the job's info once it is RUNNING or has
    /// already ended; [`ClusterError::RuntimeEnvSetup`] if its environment could not be set
    /// up; [`ClusterError::PendingTooLong`] after `timeout`.
    fn wait_until_running(&self, id: &str, timeout: Duration) -> Result<JobInfo> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let info = self.status(id)?;
            if let Some(err) = info.runtime_env_error() {
                return Err(err);
            }
            if info.status != JobStatus::Pending && info.status != JobStatus::Unknown {
                return Ok(info);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                let cpus = info.entrypoint_num_cpus.unwrap_or(0.0);
                let gpus = info.entrypoint_num_gpus.unwrap_or(0.0);
                return Err(ClusterError::PendingTooLong {
                    id: id.to_string(),
                    secs: waited.as_secs(),
                    hint: format!(
                        "the cluster may lack the requested resources ({cpus} CPUs / {gpus} GPUs), \
                         or is still setting up the job's environment"
                    ),
                });
            }
            std::thread::sleep(delay.min(timeout.saturating_sub(waited)));
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Describes where a token came from, for messages (never the value).
pub(crate) fn describe_source(source: &TokenSource) -> String {
    match source {
        TokenSource::Env(var) => format!("environment variable {var}"),
        TokenSource::File(path) => format!("file {}", path.display()),
        TokenSource::None => "no token source".to_string(),
    }
}

#[allow(dead_code)]
fn _assert_object_safe(_: &dyn ClusterBackend) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_ids_are_unique_and_valid() {
        let a = new_submission_id();
        let b = new_submission_id();
        assert_ne!(a, b);
        assert!(a.starts_with("cellbench-2"), "{a}");
        validate_job_id(&a).unwrap();
        assert_eq!(a.len(), "cellbench-20261122T180420-0123abcd".len());
    }

    #[test]
    fn job_ids_are_validated() {
        for bad in ["", "a/b", "..", "a b", "a?b", "x%2F"] {
            assert!(validate_job_id(bad).is_err(), "{bad}");
        }
        validate_job_id("raysubmit_ABC.1-2").unwrap();
    }

    #[test]
    fn statuses_parse_and_unknown_is_not_terminal() {
        let s: JobStatus = serde_json::from_str("\"SUCCEEDED\"").unwrap();
        assert!(s.is_terminal());
        let u: JobStatus = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(u, JobStatus::Unknown);
        assert!(!u.is_terminal());
    }

    #[test]
    fn short_message_keeps_summary_and_exception() {
        let msg = "runtime_env setup failed: Failed to set up runtime environment.\nTraceback (most recent call last):\n  File \"x.py\", line 1\n    raise IOError(\nOSError: Failed to download package gcs://x.zip\n";
        let s = short_message(msg);
        assert!(s.starts_with("runtime_env setup failed"), "{s}");
        assert!(
            s.ends_with("OSError: Failed to download package gcs://x.zip"),
            "{s}"
        );
        assert_eq!(truncate_chars(&"é".repeat(600), 500).chars().count(), 501);
    }
}
