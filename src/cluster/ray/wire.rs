//! The Jobs API's wire format: replies, job records, submission bodies.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use crate::cluster::{ClusterError, JobInfo, JobStatus, JobSubmission, Result};

use super::*;

/// How an HTTP exchange ended, before interpretation.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: String,
}

impl Reply {
    pub(super) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A job as the REST API returns it (more fields than [`JobInfo`], most ignored).
#[derive(Deserialize)]
pub(super) struct RawJob {
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
pub(super) fn decode<T: serde::de::DeserializeOwned>(
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

pub(super) fn is_duplicate_reply(reply: &Reply) -> bool {
    reply.status >= 400 && reply.body.contains("already exists")
}

pub(super) fn is_no_agent_reply(reply: &Reply) -> bool {
    reply.status == 500 && reply.body.contains("No available agent to submit job")
}
