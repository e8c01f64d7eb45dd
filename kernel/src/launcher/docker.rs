//! Language processes in Docker containers, through the Engine API (`bollard`).
//!
//! How the streams of `docs/child-protocol.md` cross the container boundary:
//!
//! - **PTY**: the container runs with a TTY (`Tty`, `OpenStdin`); the kernel attaches to it
//!   before it starts, so the attach's output is the PTY's output and the attach's input is what
//!   the kernel types. A wrapper shell turns off `ECHO` and `ONLCR` with `stty` (as the local
//!   launcher does with termios) before the interpreter starts.
//! - **stderr, events, requests**: the session's private run directory, with its three FIFOs
//!   and the bootstrap files, is bind-mounted into the container at the same path, so the FIFOs
//!   are the very same kernel objects on both sides and every path in the environment is valid
//!   inside.
//! - **interrupt**: `^C` (`0x03`) written to the TTY, so the line discipline inside the container
//!   sends SIGINT to the terminal's foreground process group, exactly as `killpg(tcgetpgrp())`
//!   does for a local process.
//! - **kill**: removing the container (`force`) kills every process in it.
//!
//! Every container carries the labels `spindle.session=<id>` and `spindle.host=<instance>`; a
//! new launcher removes the containers of hosts on this machine that are gone.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
    ResizeContainerTTYOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use spindle_protocol::{SandboxInfo, SandboxLimits};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{
    give_to, mkfifo, open_fifo_reader, open_fifo_writer, request_opener, set_pipe_size,
    write_private, ExitInfo, LaunchRequest, Launcher, ProcessControl, Sink, Source, Spawned,
};
use crate::error::KernelError;

mod files;

/// The image `--sandbox docker` uses unless told otherwise (`scripts/sandbox-image.sh` builds it).
pub const DEFAULT_IMAGE: &str = "spindle-sandbox:latest";

/// Label with the session id on every container.
pub const LABEL_SESSION: &str = "spindle.session";
/// Label with the host instance (`hostname/boot id/pid/start time`) on every container.
pub const LABEL_HOST: &str = "spindle.host";

/// The unprivileged user sessions run as when the host itself runs as root (the image's
/// `sandbox` user).
const SANDBOX_UID: u32 = 1000;

/// Where the writable working directory is inside the container.
const WORKDIR: &str = "/work";

/// How long an engine call may take before the engine counts as unreachable.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(15);

/// Run by `/bin/sh` in the container: terminal modes as the local launcher sets them, fd 2 to
/// the stderr FIFO (status [`NO_RUN_DIR`] when the FIFOs are not there: the engine is on
/// another machine, where the bind mount is an empty directory), and a clear error naming interpreter and image when the interpreter is not
/// there.
const WRAPPER: &str = "stty -echo -echoctl -onlcr 2>/dev/null; \
[ -p \"$SPINDLE_ERR\" ] || exit 97; exec 2>\"$SPINDLE_ERR\"; \
command -v \"$0\" >/dev/null 2>&1 || { echo \"spindle: the interpreter $0 is not in the sandbox \
image $SPINDLE_IMAGE\" >&2; exit 127; }; exec \"$0\" \"$@\"";

/// The wrapper's exit status when the run directory's FIFOs are not visible in the container.
const NO_RUN_DIR: i64 = 97;

/// Errors of the container launcher. Every one is final: there is no fallback to the host.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot reach the Docker engine at {host}: {detail} (is the daemon running? DOCKER_HOST \
         selects another engine); no session is started outside the sandbox"
    )]
    EngineUnreachable { host: String, detail: String },
    #[error(
        "the sandbox image {image} is not in the Docker engine at {host}; build it with \
         scripts/sandbox-image.sh (or choose another image with --image)"
    )]
    ImageMissing { image: String, host: String },
    #[error(
        "permission denied on the Docker socket {path}: this user may not use the engine (add \
         it to the `docker` group, or run as a user that may); no session is started outside \
         the sandbox"
    )]
    SocketPermission { path: String },
    #[error("the Docker engine at {host} refused: {detail}")]
    Engine { host: String, detail: String },
    #[error("invalid sandbox setting: {0}")]
    Invalid(String),
}

/// Settings of the container launcher. Every limit is on by default.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub image: String,
    /// Memory limit in bytes; swap is off (memory+swap = memory).
    pub memory: u64,
    pub cpus: f64,
    pub pids: u64,
    /// Docker network mode (`none` by default: no network at all).
    pub network: String,
    /// Size of the writable `/work` (tmpfs), bytes.
    pub workdir_size: u64,
    /// Size of `/tmp` (tmpfs), bytes.
    pub tmp_size: u64,
    /// The interpreter to run inside the image, by language (`python3`, `bash`, `node`).
    pub programs: HashMap<String, String>,
    /// The engine (`unix:///…`, `tcp://host:port`); `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// A host directory mounted at `/work` instead of the tmpfs (read-only unless `writable`).
    pub mount: Option<HostMount>,
}

/// A host directory given to the sandbox as its work directory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMount {
    /// Absolute, canonical path of an existing directory.
    pub path: std::path::PathBuf,
    pub writable: bool,
}

impl HostMount {
    /// Check `path` (it must be an existing directory; it is made absolute and canonical).
    pub fn new(path: &std::path::Path, writable: bool) -> Result<Self, String> {
        let canon = std::fs::canonicalize(path)
            .map_err(|e| format!("invalid mount path {}: {e}", path.display()))?;
        if !canon.is_dir() {
            return Err(format!(
                "invalid mount path {}: not a directory",
                path.display()
            ));
        }
        let text = canon.to_string_lossy();
        // The engine's bind syntax is `src:dst:mode`.
        if text.contains(':') || text.contains(',') {
            return Err(format!(
                "invalid mount path {}: Docker cannot bind a path with ':' or ','",
                path.display()
            ));
        }
        Ok(Self {
            path: canon,
            writable,
        })
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_string(),
            memory: 1 << 30,
            cpus: 1.0,
            pids: 256,
            network: "none".to_string(),
            workdir_size: 512 << 20,
            tmp_size: 256 << 20,
            programs: [("python", "python3"), ("bash", "bash"), ("node", "node")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            host: None,
            mount: None,
        }
    }
}

impl DockerConfig {
    fn check(&self) -> Result<(), SandboxError> {
        if self.image.trim().is_empty() {
            return Err(SandboxError::Invalid("the image name is empty".into()));
        }
        if self.memory < (6 << 20) {
            return Err(SandboxError::Invalid(format!(
                "memory limit {} bytes is below Docker's minimum of 6 MiB",
                self.memory
            )));
        }
        if !(self.cpus > 0.0 && self.cpus.is_finite()) {
            return Err(SandboxError::Invalid(format!(
                "cpus must be positive, not {}",
                self.cpus
            )));
        }
        if self.pids == 0 {
            return Err(SandboxError::Invalid(
                "the process limit must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Parse a size such as `512m`, `1g`, `2GiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, SandboxError> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num
        .parse()
        .map_err(|_| SandboxError::Invalid(format!("{s:?} is not a size (like 512m or 2g)")))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(SandboxError::Invalid(format!(
                "{s:?} has an unknown unit (use k, m or g)"
            )))
        }
    };
    Ok((n * mult as f64) as u64)
}

/// The launcher's own runtime. Kept for the life of the process: the kernel calls launchers
/// from any thread, inside or outside a runtime, and a runtime must not be dropped in one.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("spindle-docker")
            .enable_all()
            .build()
            .expect("the Docker launcher's runtime")
    })
}

/// Run `fut` on the launcher's runtime and wait for it on this thread (which may be any thread
/// but one of that runtime's own).
fn block<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the Docker launcher's runtime is running")
}

/// Starts each process in a fresh container.
#[derive(Clone)]
pub struct DockerLauncher {
    shared: Arc<Shared>,
}

struct Shared {
    docker: Docker,
    cfg: DockerConfig,
    engine: String,
    api_version: String,
    instance: String,
    /// The user inside the container, and who gets the run directory.
    user: (u32, u32),
}

impl std::fmt::Debug for DockerLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerLauncher")
            .field("engine", &self.shared.engine)
            .field("image", &self.shared.cfg.image)
            .field("api_version", &self.shared.api_version)
            .finish()
    }
}

fn engine_address(cfg: &DockerConfig) -> String {
    cfg.host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

impl DockerLauncher {
    /// Connect to the engine (negotiating the API version), check that the image is there, and
    /// remove the containers left by dead hosts on this machine.
    pub fn connect(cfg: DockerConfig) -> Result<Self, SandboxError> {
        cfg.check()?;
        let engine = engine_address(&cfg);
        let host = engine.clone();
        let unreachable = move |detail: String| SandboxError::EngineUnreachable {
            host: host.clone(),
            detail,
        };
        // A socket this user may not open: say so, rather than "cannot reach".
        if let Some(path) = engine.strip_prefix("unix://") {
            if let Err(e) = std::os::unix::net::UnixStream::connect(path) {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    return Err(SandboxError::SocketPermission {
                        path: path.to_string(),
                    });
                }
            }
        }
        // bollard knows unix://, tcp:// and http://; tcp:// is plain HTTP.
        let docker = Docker::connect_with_host(&engine).map_err(|e| unreachable(e.to_string()))?;
        let engine2 = engine.clone();
        let image = cfg.image.clone();
        let (docker, api_version) = block(async move {
            let docker =
                match tokio::time::timeout(ENGINE_TIMEOUT, docker.negotiate_version()).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => return Err(unreachable(e.to_string())),
                    Err(_) => return Err(unreachable("no answer in 15 s".into())),
                };
            match tokio::time::timeout(ENGINE_TIMEOUT, docker.inspect_image(&image)).await {
                Ok(Ok(_)) => {}
                Ok(Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                })) => {
                    return Err(SandboxError::ImageMissing {
                        image,
                        host: engine2,
                    })
                }
                Ok(Err(e)) => {
                    return Err(SandboxError::Engine {
                        host: engine2,
                        detail: e.to_string(),
                    })
                }
                Err(_) => return Err(unreachable("no answer in 15 s".into())),
            }
            let v = docker.client_version().to_string();
            Ok((docker, v))
        })?;
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let user = if uid == 0 {
            (SANDBOX_UID, SANDBOX_UID)
        } else {
            (uid, gid)
        };
        let launcher = DockerLauncher {
            shared: Arc::new(Shared {
                docker,
                cfg,
                engine,
                api_version,
                instance: instance_label(),
                user,
            }),
        };
        tracing::info!(engine = %launcher.shared.engine, api = %launcher.shared.api_version,
            image = %launcher.shared.cfg.image, "docker sandbox ready");
        let removed = launcher.sweep();
        if removed > 0 {
            tracing::info!(removed, "removed containers of dead Spindle hosts");
        }
        Ok(launcher)
    }

    /// The engine's address.
    pub fn engine(&self) -> &str {
        &self.shared.engine
    }

    /// The label value that marks this host's containers.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// A client of the same engine (for tests and tools).
    pub fn docker(&self) -> Docker {
        self.shared.docker.clone()
    }

    /// Remove the containers of Spindle hosts on this machine that are no longer running;
    /// returns how many were removed.
    pub fn sweep(&self) -> usize {
        let docker = self.shared.docker.clone();
        let me = self.shared.instance.clone();
        block(sweep_containers(docker, me))
    }
}

/// Remove the containers of dead Spindle hosts of this machine from the engine `host` (or
/// `DOCKER_HOST`, else the local socket) without needing an image: what a host that runs no
/// sandbox of its own does at start, so a killed host's containers never outlive the next
/// start. Returns how many were removed. It runs a runtime of its own: call it from a thread
/// outside any async context (the hosts call it from a thread of its own at start).
pub fn sweep_dead_hosts(host: Option<String>) -> Result<usize, SandboxError> {
    let engine = engine_address(&DockerConfig {
        host,
        ..DockerConfig::default()
    });
    let unreachable = |detail: String| SandboxError::EngineUnreachable {
        host: engine.clone(),
        detail,
    };
    let docker = Docker::connect_with_host(&engine).map_err(|e| unreachable(e.to_string()))?;
    let me = instance_label();
    // A runtime of its own, gone with the sweep: a host that never starts a sandbox keeps no
    // threads, client or connection pool for the engine.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("no runtime for the sweep: {e}")))?;
    rt.block_on(async move {
        let docker = match tokio::time::timeout(ENGINE_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer in 15 s".to_string()),
        };
        Ok(sweep_containers(docker, me).await)
    })
    .map_err(unreachable)
}

async fn sweep_containers(docker: Docker, me: String) -> usize {
    let filters = HashMap::from([("label".to_string(), vec![LABEL_HOST.to_string()])]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await;
    let Ok(list) = list else { return 0 };
    let mut removed = 0;
    for c in list {
        let (Some(id), Some(labels)) = (c.id, c.labels) else {
            continue;
        };
        let Some(owner) = labels.get(LABEL_HOST) else {
            continue;
        };
        if owner == &me || !host_is_gone(owner) {
            continue;
        }
        if remove(&docker, &id).await.is_ok() {
            tracing::debug!(container = %id, owner, "removed a dead host's container");
            removed += 1;
        }
    }
    removed
}

/// `hostname/boot id/pid/start time`: unique per host process, and enough to tell whether
/// that process still runs.
fn instance_label() -> String {
    let pid = std::process::id() as i32;
    format!(
        "{}/{}/{}/{}",
        hostname(),
        boot_id(),
        pid,
        start_time(pid).unwrap_or(0)
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Start time of `pid` (clock ticks after boot), from /proc.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // state is field 3; starttime is field 22.
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether the host that wrote `label` is gone. Only hosts of this machine are judged; another
/// machine's (a shared remote engine) are left alone.
fn host_is_gone(label: &str) -> bool {
    let parts: Vec<&str> = label.split('/').collect();
    let [host, boot, pid, start] = parts[..] else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    if boot != boot_id() {
        return true; // this machine has rebooted since
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) != Some(start)
}

async fn remove(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let r = docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    match r {
        // Already gone (or being removed): what we wanted.
        Err(DockerError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        other => other,
    }
}

type Input = Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;

impl Launcher for DockerLauncher {
    fn launch(&self, req: LaunchRequest) -> Result<Spawned, KernelError> {
        let sh = self.shared.clone();
        let start_err = |detail: String| KernelError::StartFailed {
            language: req.language.clone(),
            detail,
        };
        let run_dir = &req.run_dir;
        let run_dir_str = run_dir
            .to_str()
            .filter(|s| !s.contains(':'))
            .ok_or_else(|| {
                start_err(format!(
                    "run directory {} cannot be mounted",
                    run_dir.display()
                ))
            })?
            .to_string();
        // The run directory belongs to the container's user; files written into it later
        // (`write_private`) follow its owner.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            give_to(run_dir, sh.user)?;
        }
        for (name, bytes) in &req.spec.files {
            write_private(&run_dir.join(name), bytes)?;
        }
        let req_path = run_dir.join("req.fifo");
        let evt_path = run_dir.join("evt.fifo");
        let err_path = run_dir.join("err.fifo");
        for p in [&req_path, &evt_path, &err_path] {
            mkfifo(p)?;
            if unsafe { libc::geteuid() } == 0 {
                give_to(p, sh.user)?;
            }
        }
        let evt_reader = open_fifo_reader(&evt_path)?;
        let err_reader = open_fifo_reader(&err_path)?;
        let keep_evt = open_fifo_writer(&evt_path)?;
        let keep_err = open_fifo_writer(&err_path)?;
        set_pipe_size(evt_reader.as_raw_fd(), 1 << 20);

        let program = sh
            .cfg
            .programs
            .get(&req.language)
            .cloned()
            .or_else(|| {
                req.spec
                    .program
                    .file_name()
                    .and_then(|s| s.to_str())
                    .map(str::to_string)
            })
            .ok_or_else(|| start_err("no interpreter for the sandbox".into()))?;
        let config = container_config(
            &sh,
            &req,
            &program,
            &run_dir_str,
            &req_path,
            &evt_path,
            &err_path,
        );
        let name = format!(
            "spindle-{}-{}-{:08x}",
            req.language,
            req.session_id.split('-').next().unwrap_or("session"),
            rand::random::<u32>()
        );
        let docker = sh.docker.clone();
        let engine = sh.engine.clone();
        let image = sh.cfg.image.clone();
        let size = req.pty_size;
        let started = block(async move {
            let created = docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name),
                        ..Default::default()
                    }),
                    config,
                )
                .await
                .map_err(|e| engine_error(&engine, &image, e))?;
            let id = created.id;
            let attach = async {
                let a = docker
                    .attach_container(
                        &id,
                        Some(AttachContainerOptions {
                            stream: true,
                            stdin: true,
                            stdout: true,
                            stderr: true,
                            logs: false,
                            // Never detach on what the user types (Docker's default is ^P^Q).
                            detach_keys: Some("ctrl-@,ctrl-@,ctrl-@,ctrl-@".into()),
                        }),
                    )
                    .await?;
                docker.start_container(&id, None).await?;
                let _ = docker
                    .resize_container_tty(
                        &id,
                        ResizeContainerTTYOptions {
                            h: size.0 as i32,
                            w: size.1 as i32,
                        },
                    )
                    .await;
                // The host pid of the container's init, when the engine is on this machine.
                let init = docker
                    .inspect_container(&id, None)
                    .await
                    .ok()
                    .and_then(|i| i.state?.pid)
                    .filter(|&p| p > 0)
                    .map(|p| p as u32);
                Ok::<_, DockerError>((a, init))
            };
            match attach.await {
                Ok((a, init)) => Ok((id, a, init)),
                Err(e) => {
                    let _ = remove(&docker, &id).await;
                    Err(engine_error(&engine, &image, e))
                }
            }
        });
        let (id, attached, init_pid) = started.map_err(KernelError::from)?;
        tracing::debug!(container = %id, language = %req.language, "sandbox container started");

        // The TTY's output, through a bounded channel: a slow reader slows the container.
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let mut output = attached.output;
        runtime().spawn(async move {
            while let Some(item) = output.next().await {
                match item {
                    Ok(o) => {
                        if out_tx.send(o.into_bytes()).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "sandbox TTY stream ended");
                        break;
                    }
                }
            }
        });
        let input: Input = Arc::new(tokio::sync::Mutex::new(attached.input));
        let control = Arc::new(DockerControl {
            shared: sh.clone(),
            id: id.clone(),
            input: input.clone(),
            removed: AtomicBool::new(false),
            ended: Arc::new(AtomicBool::new(false)),
            init_pid,
            pid: OnceLock::new(),
        });
        let wait_control = control.clone();
        let wait_docker = sh.docker.clone();
        let wait_id = id.clone();
        let wait = Box::new(move || {
            let memory = wait_control.shared.cfg.memory;
            let engine = wait_control.shared.engine.clone();
            let (code, oom) = block(async move {
                let mut s = wait_docker.wait_container(&wait_id, None);
                let code = match s.next().await {
                    Some(Ok(r)) => Some(r.status_code),
                    Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Some(code),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "waiting for the sandbox container failed");
                        None
                    }
                    None => None,
                };
                // The engine knows whether its out-of-memory killer struck (before the
                // container is removed, which forgets it).
                let oom = code == Some(128 + libc::SIGKILL as i64)
                    && wait_docker
                        .inspect_container(&wait_id, None)
                        .await
                        .ok()
                        .and_then(|i| i.state?.oom_killed)
                        .unwrap_or(false);
                (code, oom)
            });
            if oom {
                tracing::warn!(limit = memory, "the sandbox ran out of memory");
            }
            wait_control.ended.store(true, Ordering::SeqCst);
            wait_control.kill_all();
            drop(keep_evt);
            drop(keep_err);
            match code {
                // The container's init reports a child killed by signal n as 128 + n.
                Some(c) if (129..160).contains(&c) => ExitInfo {
                    code: None,
                    signal: Some(signal_name((c - 128) as i32)),
                    out_of_memory: oom.then_some(memory),
                    detail: None,
                },
                Some(NO_RUN_DIR) => ExitInfo {
                    code: Some(NO_RUN_DIR as i32),
                    detail: Some(format!(
                        "exited at once: its run directory (with the stream FIFOs) is not visible \
                         in the container, so the Docker engine at {engine} is not on this machine; \
                         the sandbox needs an engine on the host's own machine (see \
                         ARCHITECTURE.md, Sandboxes)"
                    )),
                    ..ExitInfo::default()
                },
                Some(c) => ExitInfo {
                    code: Some(c as i32),
                    ..ExitInfo::default()
                },
                None => ExitInfo {
                    code: None,
                    signal: Some("unknown (the container is gone)".into()),
                    ..ExitInfo::default()
                },
            }
        });
        let open_requests = request_opener(req_path.clone());
        Ok(Spawned {
            control,
            pty_reader: Source::Reader(Box::new(ChannelReader {
                rx: out_rx,
                buf: Bytes::new(),
            })),
            pty_writer: Sink::Writer(Box::new(AttachWriter { input })),
            err_reader: Source::Fd(err_reader.into()),
            evt_reader: Source::Fd(evt_reader.into()),
            open_requests,
            wait,
        })
    }

    fn sandbox(&self) -> Option<SandboxInfo> {
        let c = &self.shared.cfg;
        Some(SandboxInfo {
            kind: "docker".into(),
            image: c.image.clone(),
            api_version: Some(self.shared.api_version.clone()),
            container: None,
            limits: SandboxLimits {
                memory: c.memory,
                cpus: c.cpus,
                pids: c.pids,
                network: c.network.clone(),
                read_only_root: true,
                workdir: WORKDIR.into(),
                workdir_size: c.workdir_size,
                tmp_size: c.tmp_size,
                user: format!("{}:{}", self.shared.user.0, self.shared.user.1),
                mount: c.mount.as_ref().map(|m| m.path.display().to_string()),
                mount_writable: c.mount.as_ref().is_some_and(|m| m.writable),
            },
        })
    }
}

fn signal_name(n: i32) -> String {
    match n {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

fn engine_error(engine: &str, image: &str, e: DockerError) -> SandboxError {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.contains("image") => SandboxError::ImageMissing {
            image: image.to_string(),
            host: engine.to_string(),
        },
        DockerError::DockerResponseServerError { message, .. } => SandboxError::Engine {
            host: engine.to_string(),
            detail: message,
        },
        other => SandboxError::EngineUnreachable {
            host: engine.to_string(),
            detail: other.to_string(),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn container_config(
    sh: &Shared,
    req: &LaunchRequest,
    program: &str,
    run_dir: &str,
    req_path: &Path,
    evt_path: &Path,
    err_path: &Path,
) -> ContainerCreateBody {
    let c = &sh.cfg;
    // No host environment: only what the session and the language set, and the protocol's.
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "TERM=xterm-256color".into(),
        format!("HOME={WORKDIR}"),
    ];
    let sets_locale = req
        .env
        .iter()
        .any(|(k, _)| k == "LANG" || k == "LC_ALL" || k == "LC_CTYPE");
    if !sets_locale {
        env.push("LC_CTYPE=C.UTF-8".into());
    }
    env.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    env.extend(req.spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    for (k, v) in [
        ("SPINDLE_REQ", req_path.display().to_string()),
        ("SPINDLE_EVT", evt_path.display().to_string()),
        ("SPINDLE_ERR", err_path.display().to_string()),
        ("SPINDLE_RUNDIR", run_dir.to_string()),
        ("SPINDLE_NONCE", req.nonce.clone()),
        ("SPINDLE_SESSION", req.session_id.clone()),
        ("SPINDLE_LANG", req.language.clone()),
        ("SPINDLE_IMAGE", c.image.clone()),
    ] {
        env.push(format!("{k}={v}"));
    }
    let mut cmd = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        WRAPPER.to_string(),
        program.to_string(),
    ];
    cmd.extend(req.spec.args.iter().cloned());
    let mut tmpfs = HashMap::from([(
        "/tmp".to_string(),
        format!("rw,nosuid,nodev,size={},mode=1777", c.tmp_size),
    )]);
    let mut binds = vec![format!("{run_dir}:{run_dir}:rw")];
    match &c.mount {
        // The host directory is the work directory, read-only unless asked otherwise.
        Some(m) => binds.push(format!(
            "{}:{WORKDIR}:{}",
            m.path.display(),
            if m.writable { "rw" } else { "ro" }
        )),
        None => {
            tmpfs.insert(
                WORKDIR.to_string(),
                format!("rw,nosuid,nodev,size={},mode=1777", c.workdir_size),
            );
        }
    }
    let labels = HashMap::from([
        (LABEL_SESSION.to_string(), req.session_id.clone()),
        (LABEL_HOST.to_string(), sh.instance.clone()),
        ("spindle.language".to_string(), req.language.clone()),
    ]);
    ContainerCreateBody {
        image: Some(c.image.clone()),
        entrypoint: Some(cmd),
        cmd: None,
        env: Some(env),
        user: Some(format!("{}:{}", sh.user.0, sh.user.1)),
        working_dir: Some(WORKDIR.into()),
        tty: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(false),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        labels: Some(labels),
        network_disabled: Some(c.network == "none"),
        host_config: Some(HostConfig {
            memory: Some(c.memory as i64),
            memory_swap: Some(c.memory as i64),
            nano_cpus: Some((c.cpus * 1e9) as i64),
            pids_limit: Some(c.pids as i64),
            network_mode: Some(c.network.clone()),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            init: Some(true),
            binds: Some(binds),
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Signals and kills for a container.
struct DockerControl {
    shared: Arc<Shared>,
    id: String,
    input: Input,
    removed: AtomicBool,
    ended: Arc<AtomicBool>,
    /// Host pid of the container's init (a local engine only).
    init_pid: Option<u32>,
    /// Host pid of the language process: init's child, found once it is running.
    pid: OnceLock<Option<u32>>,
}

/// The first child of `pid`, from /proc.
fn first_child(pid: u32) -> Option<u32> {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    kids.split_whitespace().next()?.parse().ok()
}

impl std::fmt::Debug for DockerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerControl")
            .field("container", &self.id)
            .finish()
    }
}

impl ProcessControl for DockerControl {
    /// The language process's pid on the host, when the engine runs on this machine (the kernel
    /// asks once the process said `ready`, so it is running by then).
    fn pid(&self) -> Option<u32> {
        *self.pid.get_or_init(|| self.init_pid.and_then(first_child))
    }

    fn interrupt(&self) -> io::Result<()> {
        if self.ended.load(Ordering::SeqCst) || self.removed.load(Ordering::SeqCst) {
            return Err(io::Error::other("the container has ended"));
        }
        // ^C through the TTY: its line discipline signals the foreground process group. Sent
        // from the launcher's runtime, so this never blocks the caller.
        let input = self.input.clone();
        runtime().spawn(async move {
            let mut w = input.lock().await;
            if let Err(e) = async {
                w.write_all(&[0x03]).await?;
                w.flush().await
            }
            .await
            {
                tracing::debug!(error = %e, "cannot send ^C to the sandbox");
            }
        });
        Ok(())
    }

    /// Terminal prompts: when the engine is on this machine the container's processes are in
    /// our /proc (checked: the language process's cgroup names this container), and their
    /// foreground group and terminal settings are read there.
    fn tty_wait(&self) -> Option<crate::tty_prompt::TtyWait> {
        if self.ended.load(Ordering::SeqCst) || self.removed.load(Ordering::SeqCst) {
            return None;
        }
        let pid = self.pid()?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        if !cgroup.contains(&self.id) {
            return None;
        }
        crate::tty_prompt::probe(pid as i32, None)
    }

    /// `/work` inside the container, through execs (see [`files`]).
    fn work_dir(&self) -> Option<Arc<dyn crate::files::WorkDir>> {
        Some(Arc::new(files::ContainerWorkDir {
            docker: self.shared.docker.clone(),
            container: self.id.clone(),
            user: format!("{}:{}", self.shared.user.0, self.shared.user.1),
        }))
    }

    fn kill_all(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        let docker = self.shared.docker.clone();
        let id = self.id.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime().spawn(async move {
            let r = tokio::time::timeout(ENGINE_TIMEOUT, remove(&docker, &id)).await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(Ok(()))) => tracing::debug!(container = %self.id, "sandbox container removed"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(container = %self.id, error = %e, "cannot remove the sandbox container")
            }
            _ => tracing::warn!(container = %self.id, "removing the sandbox container timed out"),
        }
    }
}

/// The PTY's reading end: bytes from the attach stream.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    buf: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.buf = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// The PTY's writing end: bytes to the attach stream.
struct AttachWriter {
    input: Input,
}

impl Write for AttachWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let input = self.input.clone();
        let bytes = buf.to_vec();
        block(async move {
            let mut w = input.lock().await;
            w.write_all(&bytes).await?;
            w.flush().await
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3x").is_err());
    }

    #[test]
    fn our_own_instance_is_alive_and_a_dead_pid_is_gone() {
        let me = instance_label();
        assert!(!host_is_gone(&me));
        let parts: Vec<&str> = me.split('/').collect();
        let dead = format!("{}/{}/{}/{}", parts[0], parts[1], parts[2], 1);
        assert!(host_is_gone(&dead), "same pid, other start time: {dead}");
        let other_boot = format!("{}/not-this-boot/1/1", parts[0]);
        assert!(host_is_gone(&other_boot));
        assert!(!host_is_gone("another-machine/x/1/1"));
        assert!(!host_is_gone("garbage"));
    }

    #[test]
    fn bad_limits_are_refused_before_the_engine_is_asked() {
        let cfg = DockerConfig {
            memory: 1024,
            ..Default::default()
        };
        assert!(matches!(
            DockerLauncher::connect(cfg),
            Err(SandboxError::Invalid(_))
        ));
    }
}
