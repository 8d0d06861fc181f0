//! A real Ray head for end-to-end tests: token auth on, loopback only, free ports, its own
//! temporary folder; stopped (and every process it started swept away) on drop, panics
//! included, and by a watchdog if the test process dies without dropping it.
//!
//! Needs a venv with `ray[default]==2.60.0`: `$CELLBENCH_RAY_VENV`, else `<repo>/.cache/ray-venv`,
//! else `~/.cache/cellbench-ray-venv` (what `scripts/ray-venv.sh` creates).
//! Only std is used, so this file works unchanged in any test crate.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(20);

pub struct RayHead {
    child: Option<Child>,
    watchdog: Option<Child>,
    address: String,
    token: String,
    token_file: PathBuf,
    dir: PathBuf,
    marker: String,
    dashboard_port: u16,
    started_in: Duration,
}

impl RayHead {
    /// Starts a head and waits until its job API answers (up to 60 s). Panics with the head's
    /// log when it cannot.
    pub fn start() -> RayHead {
        let t0 = Instant::now();
        let venv = venv();
        let ray = venv.join("bin").join("ray");
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short: Ray puts unix sockets under it (107-byte limit on socket paths).
        let dir = std::env::temp_dir().join(format!("cbray-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the Ray head's folder");
        let token = random_hex(24);
        let token_file = dir.join("token");
        write_private(&token_file, &token);
        let marker = format!("{}-{n}-{}", std::process::id(), random_hex(4));

        let ports = free_ports(4);
        let (gcs, dashboard, client, agent) = (ports[0], ports[1], ports[2], ports[3]);
        let path = format!(
            "{}:{}",
            venv.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.join("head.log")).expect("creating head.log");
        let mut cmd = Command::new(&ray);
        cmd.args(["start", "--head", "--block", "--disable-usage-stats"])
            .arg("--num-cpus=2")
            .arg("--num-gpus=0")
            .arg("--node-ip-address=127.0.0.1")
            .arg("--dashboard-host=127.0.0.1")
            .arg(format!("--port={gcs}"))
            .arg(format!("--dashboard-port={dashboard}"))
            .arg(format!("--ray-client-server-port={client}"))
            .arg(format!("--dashboard-agent-listen-port={agent}"))
            .arg(format!("--temp-dir={}", dir.join("r").display()))
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            .env("RAY_AUTH_MODE", "token")
            .env("RAY_AUTH_TOKEN", &token)
            // Tests do not need the 30 s drain Ray allows running jobs on SIGTERM.
            .env("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "2")
            .env("CELLBENCH_TEST_RAY_HEAD", &marker)
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", path)
            .env_remove("RAY_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", ray.display()));
        let watchdog = spawn_watchdog(child.id(), &marker, &dir);
        let mut head = RayHead {
            child: Some(child),
            watchdog,
            address: format!("http://127.0.0.1:{dashboard}"),
            token,
            token_file,
            dir,
            marker,
            dashboard_port: dashboard,
            started_in: Duration::ZERO,
        };
        head.wait_ready(agent);
        head.started_in = t0.elapsed();
        eprintln!(
            "ray head at {} ready in {:.1?}",
            head.address, head.started_in
        );
        head
    }

    /// One head shared by the tests of a test binary that run at the same time; it stops when
    /// the last of them drops its handle.
    pub fn shared() -> Arc<RayHead> {
        static SHARED: Mutex<Weak<RayHead>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(head) = slot.upgrade() {
            return head;
        }
        let head = Arc::new(RayHead::start());
        *slot = Arc::downgrade(&head);
        head
    }

    /// `http://127.0.0.1:<dashboard port>`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A 0600 file holding the token, for profiles (`token_file`).
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// `--address <head> --token-file <file>`: this head as `cellbench cluster …` names it.
    pub fn cli_target(&self) -> [&str; 4] {
        [
            "--address",
            self.address(),
            "--token-file",
            super::path_str(self.token_file()),
        ]
    }

    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The head's own log (useful in assertion messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("head.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn wait_ready(&mut self, agent_port: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the Ray head exited during start-up ({status}):\n{}",
                    self.log_tail()
                );
            }
            match http_status(self.dashboard_port, "/api/jobs/", &self.token) {
                // The job API answers; submissions also need the head's dashboard agent.
                Ok(200) if TcpStream::connect(("127.0.0.1", agent_port)).is_ok() => return,
                Ok(code) => last = format!("HTTP {code}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                panic!(
                    "the Ray head did not answer GET /api/jobs/ within {READY_TIMEOUT:?} (last: {last}):\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        signal("TERM", &pid.to_string());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Helpers Ray leaves behind in its process group (forkserver, dashboard modules).
        signal("TERM", &format!("-{pid}"));
        std::thread::sleep(Duration::from_millis(500));
        signal("KILL", &format!("-{pid}"));
        let _ = child.kill();
        let _ = child.wait();
        // Workers and job processes live in other groups: find them by the marker variable.
        sweep_marked(&self.marker);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RayHead {
    fn drop(&mut self) {
        self.stop();
    }
}

fn venv() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("CELLBENCH_RAY_VENV").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(v));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".cache")
            .join("ray-venv"),
    );
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(
            PathBuf::from(home)
                .join(".cache")
                .join("cellbench-ray-venv"),
        );
    }
    candidates
        .iter()
        .find(|c| c.join("bin").join("ray").is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no Ray venv found (looked in {candidates:?}); create one with scripts/ray-venv.sh \
                 or point CELLBENCH_RAY_VENV at a venv with ray[default]==2.60.0"
            )
        })
}

fn free_ports(n: usize) -> Vec<u16> {
    // Hold all listeners until every port is chosen so that they differ.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        use std::hash::{BuildHasher, Hasher};
        for chunk in buf.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, text: &str) {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("writing the token file");
}

/// Status code of `GET path` on the loopback dashboard, with the token.
fn http_status(port: u16, path: &str, token: &str) -> std::io::Result<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))
}

fn signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), "--".into(), target.into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills every process whose environment carries this head's marker (Linux).
fn sweep_marked(marker: &str) {
    #[cfg(target_os = "linux")]
    {
        let needle = format!("CELLBENCH_TEST_RAY_HEAD={marker}");
        let me = std::process::id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
                continue;
            }
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if env.split(|&b| b == 0).any(|var| var == needle.as_bytes()) {
                signal("KILL", &name);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = marker;
}

/// A shell that stops the head if this test process disappears without dropping it.
fn spawn_watchdog(head_pid: u32, marker: &str, dir: &Path) -> Option<Child> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 2; done; \
         kill -TERM {head_pid} 2>/dev/null; sleep 10; kill -KILL -- -{head_pid} 2>/dev/null; \
         for p in /proc/[0-9]*; do \
           if tr '\\0' '\\n' < $p/environ 2>/dev/null | grep -qx 'CELLBENCH_TEST_RAY_HEAD={marker}'; then \
             kill -KILL ${{p#/proc/}} 2>/dev/null; fi; done; rm -rf '{dir}'",
        dir = dir.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn().ok()
}
