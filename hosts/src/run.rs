//! `spindle run`: one execution in a fresh session.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use spindle_kernel::{ExecOptions, Kernel, KernelConfig, SessionSpec};
use spindle_protocol::{Body, Chunk, ConsoleFormat, Outcome};

use crate::common::InterpreterArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// python, bash or node.
    #[arg(long, short = 'l')]
    pub lang: String,
    /// The code to run.
    #[arg(short = 'c', long = "code", conflicts_with = "file")]
    pub code: Option<String>,
    /// A file holding the code to run.
    #[arg(required_unless_present = "code")]
    pub file: Option<PathBuf>,
    /// Print every chunk as a JSON line instead of readable output.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds (interrupt, then kill).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Keep at most this many bytes of console output (head and tail).
    #[arg(long, value_name = "BYTES")]
    pub cap: Option<u64>,
    /// Also give images a downscaled copy no larger than this many pixels a side.
    #[arg(long, value_name = "PIXELS")]
    pub image_max: Option<u32>,
    /// Report the line being executed (`active_line` chunks).
    #[arg(long)]
    pub active_lines: bool,
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

pub fn main(args: RunArgs, interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    crate::common::init_logging("warn");
    let code = match (&args.code, &args.file) {
        (Some(c), _) => c.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => anyhow::bail!("give code with -c or a file"),
    };
    let language = spindle_languages::language(&args.lang, &interp.interpreters())?;
    let launcher = args.sandbox.launcher()?;
    let rt = crate::common::runtime()?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers before the session starts: a SIGTERM while a sandbox container starts is
        // then handled below (the container removed), not the default death that leaves it.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let kernel = Kernel::new(KernelConfig {
            launcher,
            ..KernelConfig::default()
        });
        let session = kernel.create_session(SessionSpec::new(language)).await?;
        let opts = ExecOptions {
            timeout: args.timeout.map(Duration::from_secs_f64),
            output_cap: args.cap,
            image_max_dim: args.image_max,
            active_lines: args.active_lines,
            ..ExecOptions::default()
        };
        let mut exec = session.execute(&code, opts)?;
        let mut status = 0u8;
        let mut interrupts = 0;
        loop {
            tokio::select! {
                chunk = exec.next_shared() => {
                    let Some(chunk) = chunk else { break };
                    if let Body::InputRequest { content: Some(req) } = &chunk.body {
                        if !args.json {
                            eprint!("{}", req.prompt);
                        }
                        let answer = read_line().await;
                        session.input_reply(&answer)?;
                    }
                    if let Some(code) = exit_code(&chunk) {
                        status = code;
                    }
                    if args.json {
                        print_json(&chunk)?;
                    } else {
                        print_human(&chunk)?;
                    }
                }
                _ = sigterm.recv() => {
                    status = 143;
                    break;
                }
                _ = sigint.recv() => {
                    interrupts += 1;
                    if interrupts > 1 {
                        status = 130;
                        break;
                    }
                    session.interrupt()?;
                }
            }
        }
        drop(exec);
        kernel.shutdown().await;
        Ok(ExitCode::from(status))
    })
}

async fn read_line() -> String {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        line.trim_end_matches(['\n', '\r']).to_string()
    })
    .await
    .unwrap_or_default()
}

/// The process exit code an execution's `finished` chunk stands for.
pub fn exit_code(chunk: &Chunk) -> Option<u8> {
    let Body::Status {
        content: Some(s), ..
    } = &chunk.body
    else {
        return None;
    };
    let outcome = s.outcome?;
    Some(match (outcome, s.exit_status) {
        (Outcome::Ok, _) => 0,
        (Outcome::Interrupted, _) => 130,
        (Outcome::Timeout, _) => 124,
        (_, Some(code)) if code != 0 => (code & 0xff) as u8,
        _ => 1,
    })
}

fn print_json(chunk: &Chunk) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, chunk)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn print_human(chunk: &Chunk) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    match &chunk.body {
        Body::Console {
            format,
            content: Some(text),
            ..
        } => match format {
            ConsoleFormat::Stdout => out.write_all(text.as_bytes())?,
            ConsoleFormat::Stderr => err.write_all(text.as_bytes())?,
            ConsoleFormat::ActiveLine => {}
        },
        Body::Console { line: Some(l), .. } => writeln!(err, "→ line {l}")?,
        Body::Error { content: Some(e) } => {
            if e.traceback.is_empty() {
                writeln!(err, "{}: {}", e.name, e.value)?;
            } else {
                for line in &e.traceback {
                    writeln!(err, "{line}")?;
                }
            }
        }
        Body::Notice { content: Some(n) } => writeln!(err, "spindle: {n}")?,
        Body::File { content: Some(f) } => writeln!(out, "[file {} ({})]", f.path, f.mime)?,
        body => {
            if let Some(text) = crate::run::describe_rich(body) {
                writeln!(out, "{text}")?;
            }
        }
    }
    out.flush()?;
    err.flush()?;
    Ok(())
}

/// A one-line text form of a rich chunk: its `text/plain`, and the richer types it carries.
pub fn describe_rich(body: &Body) -> Option<String> {
    let rich = match body {
        Body::Result { content: Some(r) }
        | Body::Image {
            content: Some(r), ..
        }
        | Body::Html { content: Some(r) }
        | Body::Markdown { content: Some(r) }
        | Body::Latex { content: Some(r) }
        | Body::Json { content: Some(r) }
        | Body::Text { content: Some(r) } => r,
        _ => return None,
    };
    let plain = rich
        .bundle
        .get("text/plain")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let others: Vec<String> = rich
        .bundle
        .keys()
        .filter(|k| k.as_str() != "text/plain")
        .map(
            |k| match (k.starts_with("image/"), rich.width, rich.height) {
                (true, Some(w), Some(h)) => format!("{k} {w}x{h}"),
                _ => k.clone(),
            },
        )
        .collect();
    Some(match (plain.is_empty(), others.is_empty()) {
        (_, true) => plain,
        (true, false) => format!("[{}]", others.join(", ")),
        (false, false) => format!("{plain} [{}]", others.join(", ")),
    })
}
