//! `spindle serve`: one long-running host for many sessions, on a signed JSON API over ZeroMQ.
//!
//! Requests and replies travel over a ROUTER socket, session events over a PUB socket (topic =
//! session id); the message shapes live in `spindle_protocol::native`, with JSON Schemas under
//! `schemas/`. The host writes a connection file (mode 0600) with the ports and a fresh signing
//! key, and removes it when it stops. SIGTERM, SIGINT, SIGHUP or a `shutdown` request stop it:
//! every session's process tree is killed first.
//!
//! - [`wire`]: checking and signing messages, per-client byte budgets.
//! - [`host`]: sessions and request handlers.
//! - [`chat`]: `chat` requests: the LLM loop on the host's sessions, its items to the requester
//!   and to subscribers, confirmations answered by `chat_reply`.
//! - [`events`]: relaying each session's chunks to the PUB socket.
//! - [`files`]: `upload_file`, `download_file`, `list_files` in a session's work directory.
//! - [`pool`]: the warm pool of pre-started sessions (`--warm N`).

pub mod chat;
pub mod events;
pub mod files;
pub mod host;
pub mod pool;
pub mod wire;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use spindle_kernel::{Kernel, KernelConfig};
use spindle_protocol::native::{ConnectionInfo, PROTOCOL_VERSION, SIGNATURE_SCHEME};
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv};

use crate::auth::{self, Signer};
use crate::common::InterpreterArgs;
use crate::native::events::Events;
use crate::native::host::{Host, HostConfig};
use crate::native::pool::Pool;

/// Ports of the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ports {
    pub router: u16,
    pub publish: u16,
}

impl std::str::FromStr for Ports {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| format!("expected ROUTER,PUB (two ports, 0 for any), got {s:?}"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("bad port {p:?}: {e}"))
        };
        Ok(Ports {
            router: port(a)?,
            publish: port(b)?,
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to bind the sockets to.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: String,
    /// Ports of the request (ROUTER) and event (PUB) sockets; 0 picks a free port.
    #[arg(long, value_name = "ROUTER,PUB", default_value = "0,0")]
    pub ports: Ports,
    /// Where to write the connection file (default: a runtime directory such as
    /// $XDG_RUNTIME_DIR/spindle/).
    #[arg(long, value_name = "PATH")]
    pub connection_file: Option<PathBuf>,
    /// Keep this many pre-started sessions per language, so creating one is instant.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warm: usize,
    /// Languages the warm pool keeps sessions for.
    #[arg(
        long,
        value_name = "LANGS",
        value_delimiter = ',',
        default_value = "python,bash,node"
    )]
    pub warm_languages: Vec<String>,
    /// Largest request accepted, in bytes; larger ones get an error reply.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_message: usize,
    /// Bytes of replies a client may have queued before it counts as slow.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub client_buffer: usize,
    /// Seconds a reply may wait for a client that does not read; then that client's chunks
    /// are dropped (it is told how many) and the session runs on.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub client_timeout: f64,
    /// Bytes of events all subscribers together may have queued; beyond it events are dropped
    /// and subscribers get a `missed` event with the count.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub event_buffer: usize,
    /// Bytes of recent chunks each session keeps for `replay` and for watchers that fall
    /// behind (the oldest go first; a watcher further behind is told how many it missed).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub replay_log: usize,
    /// Seconds a chat's `confirm` (or `input`) item waits for the client's `chat_reply`; then
    /// the code counts as skipped (or the program gets no input).
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub chat_confirm_timeout: f64,
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            ip: "127.0.0.1".into(),
            ports: Ports::default(),
            connection_file: None,
            warm: 0,
            warm_languages: vec!["python".into(), "bash".into(), "node".into()],
            max_message: 64 << 20,
            client_buffer: 32 << 20,
            client_timeout: 10.0,
            event_buffer: 64 << 20,
            replay_log: 64 << 20,
            chat_confirm_timeout: 600.0,
            sandbox: Default::default(),
        }
    }
}

pub fn main(args: ServeArgs, interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    crate::common::init_logging("info");
    let rt = crate::common::runtime()?;
    let code = rt.block_on(serve(args, interp));
    // Tasks still running (a reply to a vanished client) are not worth waiting for.
    rt.shutdown_timeout(Duration::from_millis(500));
    code
}

/// Where connection files go by default.
fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("spindle");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".local/share/spindle/runtime")
}

fn endpoint(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("tcp://[{ip}]:{port}")
    } else {
        format!("tcp://{ip}:{port}")
    }
}

fn bound_port(ep: &zeromq::Endpoint) -> anyhow::Result<u16> {
    match ep {
        zeromq::Endpoint::Tcp(_, port) => Ok(*port),
        other => anyhow::bail!("unexpected endpoint {other}"),
    }
}

async fn serve(args: ServeArgs, interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    // Install the signal handlers before anyone can know we exist (the connection file).
    let signal = crate::common::shutdown_signal();
    tokio::pin!(signal);
    let _ = futures::poll!(&mut signal);

    let interpreters = interp.interpreters();
    let mut languages = Vec::new();
    for name in &args.warm_languages {
        languages.push(
            spindle_languages::language(name, &interpreters)
                .with_context(|| format!("--warm-languages: {name}"))?,
        );
    }

    let key = auth::new_key();
    let signer = Signer::new(key.as_bytes());
    // Both sockets bound what they read: a request over --max-message is discarded as it
    // arrives (see `wire::socket_options`), and so is a subscription over 64 KiB.
    let mut router = RouterSocket::with_options(wire::socket_options(args.max_message));
    let router_ep = router
        .bind(&endpoint(&args.ip, args.ports.router))
        .await
        .with_context(|| format!("cannot bind the ROUTER socket on {}", args.ip))?;
    let mut publisher = PubSocket::with_options(wire::socket_options(wire::MAX_SUBSCRIPTION));
    let pub_ep = publisher
        .bind(&endpoint(&args.ip, args.ports.publish))
        .await
        .with_context(|| format!("cannot bind the PUB socket on {}", args.ip))?;
    let info = ConnectionInfo {
        transport: "tcp".into(),
        ip: args.ip.clone(),
        router_port: bound_port(&router_ep)?,
        pub_port: bound_port(&pub_ep)?,
        signature_scheme: SIGNATURE_SCHEME.into(),
        key,
        max_message: args.max_message as u64,
        replay_log: args.replay_log as u64,
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    let (router_tx, mut router_rx) = router.split();
    let (events, pub_task) = Events::start(publisher, args.event_buffer, signer.clone());

    let path = args
        .connection_file
        .clone()
        .unwrap_or_else(|| runtime_dir().join(format!("serve-{}.json", std::process::id())));
    let attach_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::sandbox::set_host_defaults(&args.sandbox)?;
    let kernel = Arc::new(Kernel::new(KernelConfig {
        launcher: args.sandbox.launcher()?,
        watch_log_bytes: args.replay_log,
        ..KernelConfig::default()
    }));
    let pool = Pool::start(kernel.clone(), languages, args.warm);
    let host = Arc::new(Host::new(
        kernel,
        interpreters,
        signer,
        router_tx,
        events,
        pool,
        HostConfig {
            max_message: args.max_message,
            client_buffer: args.client_buffer,
            client_patience: Duration::try_from_secs_f64(args.client_timeout)
                .context("--client-timeout: a number of seconds")?,
            ip: args.ip.clone(),
            attach_dir,
            chat_confirm_timeout: Duration::try_from_secs_f64(args.chat_confirm_timeout)
                .ok()
                .filter(|d| !d.is_zero())
                .context("--chat-confirm-timeout: a positive number of seconds")?,
        },
    ));

    let text = serde_json::to_string_pretty(&info)?;
    auth::write_private_file(&path, &text)
        .with_context(|| format!("cannot write the connection file {}", path.display()))?;
    banner(&info, &path, &args);
    tracing::info!(router = info.router_port, events = info.pub_port, "serving");

    loop {
        tokio::select! {
            msg = router_rx.recv() => match msg {
                Ok(msg) => host.dispatch(msg),
                Err(e) => tracing::debug!(error = %e, "receive failed"),
            },
            _ = &mut signal => break,
            _ = host.stop_requested() => break,
        }
    }

    host.shutdown().await;
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(error = %e, path = %path.display(), "cannot remove the connection file");
    }
    // Give the last replies and `closed` events a moment to leave.
    tokio::time::sleep(Duration::from_millis(100)).await;
    pub_task.abort();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn banner(info: &ConnectionInfo, path: &std::path::Path, args: &ServeArgs) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the host.
    let _ = writeln!(
        out,
        "spindle serve (pid {pid})\n  requests (ROUTER): {router}\n  events (PUB):      {events}\n  connection file:   {file}",
        pid = info.pid,
        router = endpoint(&info.ip, info.router_port),
        events = endpoint(&info.ip, info.pub_port),
        file = path.display(),
    );
    if args.warm > 0 {
        let _ = writeln!(
            out,
            "  warm pool:         {} per language ({})",
            args.warm,
            args.warm_languages.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "  clients:           examples/python/client.py {file}\n  attach Jupyter:    send {{\"type\":\"attach\",\"session\":ID}}, then `jupyter console --existing <connection_file from the reply>`\n  stop:              Ctrl-C, SIGTERM, or a {{\"type\":\"shutdown\"}} request",
        file = path.display(),
    );
    let _ = out.flush();
}
