use super::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
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
        !msg.contains("wrong-token-value-42") && !format!("{e:?}").contains("wrong-token-value-42")
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
    let body: serde_json::Value = serde_json::from_slice(&f.seen.lock().unwrap()[0].body).unwrap();
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
    assert!(is_loopback_url("http://127.0.0.1:8265") && is_loopback_url("http://localhost:1/x"));
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
            ("POST", "/api/jobs/") => Resp::Http(400, format!("Traceback\n  x\nTypeError: {echo}")),
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
