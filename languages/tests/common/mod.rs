//! Helpers shared by the end-to-end tests: run code through a session and read its chunks.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use spindle_kernel::{DockerConfig, DockerLauncher, ExecOptions, KernelConfig, Launcher, Session};
use spindle_protocol::{
    Body, Chunk, ConsoleFormat, ErrorContent, Outcome, StatusContent, StatusFormat,
};

/// Longest any single execution in these tests may take.
pub const LIMIT: Duration = Duration::from_secs(120);

/// The launcher these tests run on: the local PTY launcher, or the Docker sandbox when
/// `SPINDLE_TEST_LAUNCHER=docker` (image `SPINDLE_TEST_IMAGE`, default `spindle-sandbox:latest`).
/// Every behaviour test runs unchanged on both.
pub fn launcher() -> Arc<dyn Launcher> {
    static DOCKER: OnceLock<Arc<dyn Launcher>> = OnceLock::new();
    if !sandboxed() {
        return Arc::new(spindle_kernel::LocalPtyLauncher);
    }
    DOCKER
        .get_or_init(|| {
            let mut cfg = DockerConfig::default();
            if let Ok(image) = std::env::var("SPINDLE_TEST_IMAGE") {
                cfg.image = image;
            }
            Arc::new(DockerLauncher::connect(cfg).expect("the Docker sandbox is available"))
        })
        .clone()
}

/// Whether these tests run in the Docker sandbox.
pub fn sandboxed() -> bool {
    std::env::var("SPINDLE_TEST_LAUNCHER").is_ok_and(|v| v == "docker")
}

/// The kernel settings of these tests: the defaults, on [`launcher`].
pub fn config() -> KernelConfig {
    KernelConfig {
        launcher: launcher(),
        ..KernelConfig::default()
    }
}

/// Run `code` and collect every chunk up to `finished`.
pub async fn run_with(session: &Session, code: &str, opts: ExecOptions) -> Vec<Chunk> {
    let exec = session.execute(code, opts).expect("execute accepted");
    tokio::time::timeout(LIMIT, exec.collect::<Vec<_>>())
        .await
        .unwrap_or_else(|_| panic!("execution of {code:?} did not finish"))
}

pub async fn run(session: &Session, code: &str) -> Vec<Chunk> {
    run_with(session, code, ExecOptions::default()).await
}

/// All the text of one console stream, in order.
pub fn console(chunks: &[Chunk], want: ConsoleFormat) -> String {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Console {
                format,
                content: Some(t),
                ..
            } if *format == want => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

pub fn stdout(chunks: &[Chunk]) -> String {
    console(chunks, ConsoleFormat::Stdout)
}

pub fn stderr(chunks: &[Chunk]) -> String {
    console(chunks, ConsoleFormat::Stderr)
}

/// The content of the `finished` chunk that must end every execution.
pub fn status(chunks: &[Chunk]) -> StatusContent {
    match &chunks.last().expect("some chunks").body {
        Body::Status {
            format: StatusFormat::Finished,
            content: Some(s),
        } => s.clone(),
        other => panic!("last chunk is not `finished`: {other:?}"),
    }
}

/// The lines reported by `active_line` chunks, in order.
pub fn active_lines(chunks: &[Chunk]) -> Vec<u32> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Console {
                format: ConsoleFormat::ActiveLine,
                line: Some(l),
                ..
            } => Some(*l),
            _ => None,
        })
        .collect()
}

/// How the execution ended (its finished status chunk's outcome).
pub fn outcome(chunks: &[Chunk]) -> Outcome {
    status(chunks).outcome.expect("finished has an outcome")
}

/// Every error the execution reported, in order.
pub fn errors(chunks: &[Chunk]) -> Vec<ErrorContent> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Error { content: Some(e) } => Some(e.clone()),
            _ => None,
        })
        .collect()
}
