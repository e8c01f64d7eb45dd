//! `spindle kernel`: Spindle's sessions as genuine Jupyter kernels (messaging protocol 5.3).
//!
//! - `spindle kernel install [--user | --sys-prefix | --prefix DIR] [--name NAME]` writes the
//!   kernelspecs `NAME-python`, `NAME-bash` and `NAME-node` ([`kernelspec`]).
//! - `spindle kernel -f CONNECTION_FILE --language L` runs one kernel: it binds the five
//!   sockets while the session's process starts, and serves until `shutdown_request`, SIGTERM
//!   or SIGHUP. SIGINT (a signal-mode interrupt) is forwarded to the session; the kernel itself
//!   survives it.
//! - [`attach`] exposes a live [`Session`] (one that `spindle serve` owns, say) as a kernel on
//!   fresh loopback ports, so `jupyter console --existing` can share it with native clients.
//!
//! Both run the same server ([`server`]): wire format in [`wire`], executions in [`execute`],
//! history in [`history`].

mod comm;
mod execute;
mod history;
pub mod kernelspec;
mod server;
mod wire;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jupyter_protocol::{ConnectionInfo, Transport};
use spindle_kernel::{Kernel, KernelConfig, Session, SessionSpec};
use tokio::sync::watch;

use crate::auth::Signer;
use crate::common::InterpreterArgs;

pub use server::StopReason;

/// `spindle kernel`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KernelArgs {
    #[command(subcommand)]
    pub command: Option<KernelCommand>,
    /// The connection file Jupyter wrote for this kernel.
    #[arg(short = 'f', long = "connection-file", value_name = "CONNECTION_FILE")]
    pub connection_file: Option<PathBuf>,
    /// python, bash or node.
    #[arg(long, short = 'l', value_name = "L", default_value = "python")]
    pub language: String,
    /// Where the kernel's session runs (the sandboxed kernelspecs pass these).
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KernelCommand {
    /// Install the kernelspecs (spindle-python, spindle-bash, spindle-node; with --sandbox
    /// docker the sandboxed spindle-python-sandbox, spindle-bash-sandbox, spindle-node-sandbox).
    Install(kernelspec::InstallArgs),
}

pub fn main(args: KernelArgs, interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    if let Some(KernelCommand::Install(i)) = &args.command {
        kernelspec::install(i, interp)?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::common::init_logging("warn");
    let file = args.connection_file.context(
        "give the connection file with -f CONNECTION_FILE (or install kernelspecs with \
         `spindle kernel install`)",
    )?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the connection file {}", file.display()))?;
    let info: ConnectionInfo = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Jupyter connection file", file.display()))?;
    anyhow::ensure!(
        info.key.is_empty() || info.signature_scheme == "hmac-sha256",
        "unsupported signature scheme {:?} (Spindle signs with hmac-sha256)",
        info.signature_scheme
    );
    let name = if args.language.is_empty() {
        "python"
    } else {
        &args.language
    };
    let language = spindle_languages::language(name, &interp.interpreters())?;
    // Fail closed: a sandbox that cannot be had ends the kernel before it binds a socket.
    let launcher = args.sandbox.launcher()?;
    // One thread: a kernel serves one session for a handful of clients, and every hop between
    // worker threads (a futex wake and a context switch each) lengthened the round trip. The
    // session's readers and writers have threads of their own; blocking work goes to the
    // runtime's blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()?;
    let result = rt.block_on(run_kernel(info, file, language, launcher));
    // Reader threads of a killed session may linger for a moment; do not wait on them.
    rt.shutdown_timeout(Duration::from_millis(300));
    result
}

/// How long an idle thread of the blocking pool stays. Such work is rare in a kernel (the
/// launch, the history, a terminal prompt's scan), and a thread kept for tokio's default ten
/// seconds holds its stack and its allocator cache (about half a megabyte after start-up) through
/// the first idle spell.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_millis(500);

/// A kernel that is idle gives back the mappings of the code it ran (see
/// [`crate::common::release_code`]): a second after it is up, and then whenever it has
/// been idle for [`IDLE_RELEASE`] after running something. Only mappings go; the next execution
/// maps what it needs back from the page cache (a few hundred minor faults, well under a
/// millisecond).
async fn release_code_when_idle(
    mut slot: watch::Receiver<Option<Result<Session, String>>>,
    mut busy: watch::Receiver<bool>,
) {
    if slot.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let mut delay = Duration::from_secs(1);
    loop {
        if busy.wait_for(|b| !*b).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                crate::common::release_code();
                spindle_kernel::buffers::release();
                // This runtime's one thread did the work: its caches are what is left.
                crate::common::trim_allocator();
                delay = IDLE_RELEASE;
                // Nothing ran since: nothing to give back until something does.
                if busy.wait_for(|b| *b).await.is_err() {
                    return;
                }
            }
            r = busy.changed() => if r.is_err() { return },
        }
    }
}

/// How long a kernel stays idle before it gives back the code it ran.
const IDLE_RELEASE: Duration = Duration::from_secs(10);

async fn run_kernel(
    info: ConnectionInfo,
    file: PathBuf,
    language: Arc<dyn spindle_kernel::Language>,
    launcher: Arc<dyn spindle_kernel::Launcher>,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: from here on SIGINT interrupts the session instead of killing us.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let kernel = Arc::new(Kernel::new(KernelConfig {
        launcher,
        ..KernelConfig::default()
    }));
    let mut spec = SessionSpec::new(language.clone());
    // The code can tell a Jupyter frontend renders its output (tqdm.auto picks its widget bar).
    spec.env
        .insert("SPINDLE_FRONTEND".to_string(), "jupyter".to_string());
    let (slot_tx, _) = watch::channel(None);
    // The interpreter starts while the sockets are bound.
    let starter = {
        let (kernel, spec, tx) = (kernel.clone(), spec.clone(), slot_tx.clone());
        tokio::spawn(async move {
            let r = kernel.create_session(spec).await.map_err(|e| e.to_string());
            if let Err(e) = &r {
                tracing::error!(error = %e, "the session did not start");
            }
            tx.send_replace(Some(r));
        })
    };
    let sockets = server::bind_all(&info).await?;
    if sockets.info != info {
        // Some ports were 0: tell the frontend which ones we got.
        let text = serde_json::to_string_pretty(&sockets.info)?;
        crate::auth::write_private_file(&file, &text)
            .with_context(|| format!("cannot update {}", file.display()))?;
    }
    let signer = Signer::new(info.key.as_bytes());
    // A Jupyter kernel manager launched us: it restarts a kernel by starting a new process.
    let managed = std::env::var_os("JPY_PARENT_PID").is_some();
    let lang = server::lang_meta(language.name());
    let mut running = server::start(
        sockets,
        signer,
        lang,
        slot_tx.clone(),
        server::Owner::Kernel {
            kernel: kernel.clone(),
            spec,
            managed,
        },
    );
    let release = tokio::spawn(release_code_when_idle(
        slot_tx.subscribe(),
        running.server.own_busy(),
    ));
    let parent_gone = parent_gone(managed);
    tokio::pin!(parent_gone);
    let reason = loop {
        tokio::select! {
            _ = sigint.recv() => {
                let session = match &*slot_tx.borrow() {
                    Some(Ok(s)) => Some(s.clone()),
                    _ => None,
                };
                if let Some(s) = session {
                    if let Err(e) = s.interrupt() {
                        tracing::debug!(error = %e, "interrupt failed");
                    }
                }
            }
            _ = sigterm.recv() => break StopReason::Signal,
            _ = sighup.recv() => break StopReason::Signal,
            _ = &mut parent_gone => break StopReason::Signal,
            r = running.stopped() => break r,
        }
    };
    tracing::info!(?reason, "kernel stopping");
    running.server.flush_history().await;
    starter.abort();
    release.abort();
    kernel.shutdown().await;
    running.abort();
    Ok(ExitCode::SUCCESS)
}

/// Resolves when the process that launched us is gone (a kernel manager that died without
/// shutting us down), so no kernel outlives its frontend. Never resolves when unmanaged.
async fn parent_gone(managed: bool) {
    if !managed {
        return std::future::pending().await;
    }
    // SAFETY: getppid has no preconditions.
    let original = unsafe { libc::getppid() };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        // SAFETY: as above.
        if unsafe { libc::getppid() } != original {
            tracing::warn!("the launching process is gone; shutting down");
            return;
        }
    }
}

/// A live session served as a Jupyter kernel; see [`attach`]. Dropping it stops serving.
pub struct Attached {
    connection_file: PathBuf,
    info: ConnectionInfo,
    running: server::Running,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("connection_file", &self.connection_file)
            .finish_non_exhaustive()
    }
}

impl Attached {
    /// The connection file (mode 0600) for `jupyter console --existing FILE`.
    pub fn connection_file(&self) -> &Path {
        &self.connection_file
    }

    /// The ports and key in that file.
    pub fn connection_info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Resolves when a Jupyter client sends `shutdown_request` (without restart). The session
    /// is left open: its owner decides what happens to it.
    pub async fn stopped(&mut self) -> StopReason {
        self.running.stopped().await
    }

    /// Stop serving and remove the connection file. The session stays open.
    pub async fn stop(mut self) {
        self.running.server.stop(StopReason::Detached);
        self.running.abort();
        // Let the aborted tasks drop their sockets before the caller goes on.
        tokio::task::yield_now().await;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.running.abort();
        let _ = std::fs::remove_file(&self.connection_file);
    }
}

/// Expose a live session as a Jupyter kernel on fresh ports of `ip` (use `127.0.0.1`).
///
/// Writes `dir/kernel-spindle-<session id>.json` (mode 0600, a fresh key) and serves until the
/// returned [`Attached`] is stopped or dropped. Executions from Jupyter and from the session's
/// other clients share the session; iopub also publishes the chunks of executions other clients
/// start (from [`Session::subscribe`]), with a parent header whose `msg_id` is their request id.
/// A Jupyter `shutdown_request` with `restart` restarts the session (for every client); without
/// it, only this attachment stops.
pub async fn attach(session: Session, ip: &str, dir: &Path) -> anyhow::Result<Attached> {
    let lang = server::lang_meta(session.language().name());
    let want = ConnectionInfo {
        ip: ip.to_string(),
        transport: Transport::TCP,
        shell_port: 0,
        iopub_port: 0,
        stdin_port: 0,
        control_port: 0,
        hb_port: 0,
        key: crate::auth::new_key(),
        signature_scheme: "hmac-sha256".to_string(),
        kernel_name: Some(format!("spindle-{}", lang.spindle)),
    };
    let sockets = server::bind_all(&want).await?;
    let info = sockets.info.clone();
    let path = dir.join(format!("kernel-spindle-{}.json", session.id()));
    crate::auth::write_private_file(&path, &serde_json::to_string_pretty(&info)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let (slot_tx, _) = watch::channel(Some(Ok(session)));
    let running = server::start(
        sockets,
        Signer::new(info.key.as_bytes()),
        lang,
        slot_tx,
        server::Owner::Attached,
    );
    Ok(Attached {
        connection_file: path,
        info,
        running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use serde_json::{json, Value};
    use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

    struct Msg {
        msg_type: String,
        parent: Value,
        content: Value,
    }

    fn decode(m: ZmqMessage, signer: &Signer) -> Msg {
        let f = m.into_vec();
        let at = f
            .iter()
            .position(|x| x.as_ref() == wire::DELIMITER)
            .unwrap();
        assert!(signer.verify(
            &f[at + 1],
            &[&f[at + 2], &f[at + 3], &f[at + 4], &f[at + 5]]
        ));
        let h: Value = serde_json::from_slice(&f[at + 2]).unwrap();
        Msg {
            msg_type: h["msg_type"].as_str().unwrap().to_string(),
            parent: serde_json::from_slice(&f[at + 3]).unwrap(),
            content: serde_json::from_slice(&f[at + 5]).unwrap(),
        }
    }

    async fn next(sub: &mut SubSocket, signer: &Signer) -> Msg {
        let m = tokio::time::timeout(Duration::from_secs(20), sub.recv())
            .await
            .expect("iopub message in time")
            .unwrap();
        decode(m, signer)
    }

    /// iopub messages until the idle status whose parent has `msg_id`; their types and stdout.
    async fn until_idle(
        sub: &mut SubSocket,
        signer: &Signer,
        msg_id: &str,
    ) -> (Vec<String>, String) {
        let (mut kinds, mut out) = (vec![], String::new());
        loop {
            let m = next(sub, signer).await;
            if m.parent["msg_id"] != msg_id {
                continue;
            }
            if m.msg_type == "stream" {
                out.push_str(m.content["text"].as_str().unwrap());
            }
            kinds.push(m.msg_type.clone());
            if m.msg_type == "status" && m.content["execution_state"] == "idle" {
                return (kinds, out);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attach_shares_a_live_session_with_native_clients() {
        use std::os::unix::fs::PermissionsExt;
        let lang = spindle_languages::language("bash", &Default::default()).unwrap();
        let kernel = Kernel::new(KernelConfig::default());
        let session = kernel.create_session(SessionSpec::new(lang)).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut attached = attach(session.clone(), "127.0.0.1", dir.path())
            .await
            .unwrap();
        let path = attached.connection_file().to_path_buf();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let info: ConnectionInfo =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(&info, attached.connection_info());
        assert!(info.shell_port > 0 && info.iopub_port > 0 && info.key.len() == 64);
        let signer = Signer::new(info.key.as_bytes());
        let client = wire::Wire::new(signer.clone());

        let mut sub = SubSocket::new();
        sub.connect(&info.iopub_url()).await.unwrap();
        sub.subscribe("").await.unwrap();
        let welcome = next(&mut sub, &signer).await;
        assert_eq!(welcome.msg_type, "iopub_welcome");
        assert_eq!(welcome.content, json!({"subscription": ""}));

        let mut shell = DealerSocket::new();
        shell.connect(&info.shell_url()).await.unwrap();
        let header = Bytes::from_static(b"{}");
        let exec = |code: &str| {
            let m = client.build(
                vec![],
                "execute_request",
                &header,
                &json!({"code": code, "silent": false, "store_history": true,
                        "user_expressions": {}, "allow_stdin": false}),
            );
            let f = m.into_vec();
            let id: Value = serde_json::from_slice(&f[2]).unwrap();
            (
                ZmqMessage::try_from(f).unwrap(),
                id["msg_id"].as_str().unwrap().to_string(),
            )
        };
        // From Jupyter.
        let (m, id) = exec("shared_var=from-jupyter; echo jupyter-side");
        shell.send(m).await.unwrap();
        let reply = decode(
            tokio::time::timeout(Duration::from_secs(20), shell.recv())
                .await
                .unwrap()
                .unwrap(),
            &signer,
        );
        assert_eq!(reply.msg_type, "execute_reply");
        assert_eq!(reply.content["status"], "ok");
        let (kinds, out) = until_idle(&mut sub, &signer, &id).await;
        assert_eq!(out, "jupyter-side\n");
        assert_eq!(kinds.first().map(String::as_str), Some("status"));

        // From a native client: same state, and iopub sees it.
        let mut native = session
            .execute(
                "echo native-sees-$shared_var",
                spindle_kernel::ExecOptions::default(),
            )
            .unwrap();
        let native_id = native.id().to_string();
        while native.next().await.is_some() {}
        let (kinds, out) = until_idle(&mut sub, &signer, &native_id).await;
        assert_eq!(out, "native-sees-from-jupyter\n");
        assert_eq!(kinds.first().map(String::as_str), Some("status"));

        // A Jupyter shutdown (no restart) detaches; the session lives on.
        let m = client.build(
            vec![],
            "shutdown_request",
            &header,
            &json!({"restart": false}),
        );
        let mut control = DealerSocket::new();
        control.connect(&info.control_url()).await.unwrap();
        control.send(m).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), attached.stopped())
            .await
            .unwrap();
        assert_eq!(why, StopReason::Shutdown);
        attached.stop().await;
        assert!(!path.exists());
        let mut again = session
            .execute("echo $shared_var", spindle_kernel::ExecOptions::default())
            .unwrap();
        let mut text = String::new();
        while let Some(c) = again.next().await {
            if let spindle_protocol::Body::Console {
                content: Some(t), ..
            } = c.body
            {
                text.push_str(&t);
            }
        }
        assert_eq!(text, "from-jupyter\n");
        kernel.shutdown().await;
    }
}
