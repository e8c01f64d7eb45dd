//! `spindle mcp`: Spindle's sessions as a Model Context Protocol server over stdio, on the
//! official Rust SDK (`rmcp`).
//!
//! - [`server`]: the tools, resources and progress notifications;
//! - [`tools`]: the tools' arguments (JSON Schemas) and descriptions;
//! - [`store`]: executions kept after their call returned (full output, paging, waiting);
//! - [`sessions`]: where sessions live, an embedded kernel or `spindle serve` (`--connect`);
//! - [`transport`]: stdio with a guard that answers lines that are not JSON.
//!
//! stdout carries only the protocol: logs go to stderr, and session processes get their own
//! PTY as stdin, stdout and stderr (the kernel's local launcher), never the server's stdout.

mod server;
mod sessions;
mod store;
mod tools;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rmcp::ServiceExt;
use spindle_llm::policy::Policy;

use crate::common::InterpreterArgs;

/// Serve Spindle's sessions to MCP clients (agents) over stdio.
///
/// For Claude Desktop, Claude Code, Cursor and any Model Context Protocol client.
///
/// The client starts `spindle mcp` and speaks JSON-RPC on its stdin and stdout; logs go to
/// stderr (`SPINDLE_LOG=debug` for more). Tools: execute, read_output, wait, list_sessions,
/// create_session, close_session, restart_session, interrupt, send_input, and upload_file,
/// download_file, list_files (confined to a session's work directory). Each session is also a
/// resource, spindle://sessions/{id}, with its recent output.
///
/// Sessions run in an embedded kernel (the default: one `mcp-<language>` session per language,
/// created on first use, and any named ones), or in a running `spindle serve` with
/// `--connect`, where a person can watch them (`spindle repl --connect FILE`). When the client
/// closes stdin, every session this server started is ended and it exits.
///
/// Client configuration (for example claude_desktop_config.json):
///
///   {"mcpServers": {"spindle": {"command": "spindle", "args": ["mcp"]}}}
#[derive(Debug, Clone, Args)]
#[command(verbatim_doc_comment)]
pub struct McpArgs {
    /// Use the sessions of a running `spindle serve` (its connection file) instead of an
    /// embedded kernel.
    #[arg(long, value_name = "FILE")]
    pub connect: Option<PathBuf>,
    /// Bytes of console text an `execute` answer shows (head and tail kept, with a marker of the
    /// bytes dropped between them; `read_output` pages all of it).
    #[arg(long, value_name = "BYTES", default_value_t = 16384,
          value_parser = clap::value_parser!(u64).range(256..=(64 << 20)))]
    pub output_budget: u64,
    /// Where sessions run: `--sandbox docker` puts every session this server creates in a
    /// container (embedded kernel only; with --connect the server's own --sandbox decides).
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

pub fn main(args: McpArgs, interpreters: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    crate::common::init_logging("warn,rmcp=error");
    // A sandbox that was asked for and cannot be had is an error before any MCP traffic.
    let launcher = args
        .sandbox
        .launcher_unless_connected(args.connect.as_deref())?;
    let rt = crate::common::runtime()?;
    let code = rt.block_on(serve(args, interpreters, launcher))?;
    // Nothing may linger: a blocked stdin read must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(code)
}

async fn serve(
    args: McpArgs,
    interpreters: &InterpreterArgs,
    launcher: Option<std::sync::Arc<dyn spindle_kernel::Launcher>>,
) -> anyhow::Result<ExitCode> {
    let sessions = match &args.connect {
        Some(path) => sessions::Sessions::connect(path).await?,
        None => sessions::Sessions::embedded(
            interpreters.interpreters(),
            launcher.unwrap_or_else(|| std::sync::Arc::new(spindle_kernel::LocalPtyLauncher)),
        ),
    };
    tracing::info!("spindle mcp: sessions in {}", sessions.describe());
    let policy = Policy {
        budget: args.output_budget as usize,
        image_max_dim: sessions::IMAGE_MAX_DIM,
        max_images: 8,
    };
    let server = server::Server::new(sessions, policy);
    let (stdin, stdout) = rmcp::transport::io::stdio_pipes();
    let (sdk_io, pump) = transport::guarded(stdin, stdout);
    let running = server
        .clone()
        .serve(sdk_io)
        .await
        .map_err(|e| anyhow::anyhow!("MCP initialization failed: {e}"))?;
    let cancel = running.cancellation_token();
    tokio::select! {
        r = running.waiting() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "the MCP service ended with an error");
            }
        }
        _ = crate::common::shutdown_signal() => cancel.cancel(),
    }
    tracing::info!("spindle mcp: ending every session it started");
    server.shutdown().await;
    pump.abort();
    Ok(ExitCode::SUCCESS)
}
