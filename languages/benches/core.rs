//! Core figures per language, through the kernel API with real interpreters:
//! start-to-ready, a trivial execution's round trip, and 20 MB of stdout (compared byte for byte
//! with what the code writes; a lost, doubled or changed byte fails the run).
//!
//! `cargo bench -p spindle-languages --bench core` (add `-- python` to pick languages).

use std::time::{Duration, Instant};

use futures::StreamExt;
use spindle_kernel::{ExecOptions, Kernel, KernelConfig, Session, SessionSpec};
use spindle_protocol::{Body, ConsoleFormat};

struct Case {
    lang: &'static str,
    trivial: &'static str,
    stream: &'static str,
    /// The stream's stdout is this unit repeated, cut to 20 MB.
    unit: &'static str,
}

const STREAM_BYTES: usize = 20_000_000;

const CASES: [Case; 3] = [
    Case {
        lang: "python",
        trivial: "1+1",
        stream: "import sys; _ = sys.stdout.write('x' * 20_000_000)",
        unit: "x",
    },
    Case {
        lang: "bash",
        trivial: "true",
        stream: "yes xxxxxxxxx | head -c 20000000",
        unit: "xxxxxxxxx\n",
    },
    Case {
        lang: "node",
        trivial: "1+1",
        stream: "process.stdout.write('x'.repeat(20000000)); undefined",
        unit: "x",
    },
];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn new_session(kernel: &Kernel, lang: &str) -> Session {
    let language = spindle_languages::language(lang, &Default::default()).expect("language");
    kernel
        .create_session(SessionSpec::new(language))
        .await
        .expect("session")
}

/// Everything the execution wrote to stdout.
async fn stdout_text(s: &Session, code: &str) -> String {
    let mut exec = s.execute(code, ExecOptions::default()).expect("execute");
    let mut text = String::new();
    while let Some(c) = exec.next().await {
        if let Body::Console {
            format: ConsoleFormat::Stdout,
            content: Some(t),
            ..
        } = &c.body
        {
            text.push_str(t);
        }
    }
    text
}

/// What the stream must deliver, byte for byte.
fn expected_stream(unit: &str) -> String {
    let mut want = unit.repeat(STREAM_BYTES / unit.len() + 1);
    want.truncate(STREAM_BYTES);
    want
}

/// Panics unless `got` is exactly `want`, saying where they first differ.
fn check_lossless(lang: &str, got: &str, want: &str) {
    if got == want {
        return;
    }
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{lang}: the stream is not byte-exact: {} bytes of {}, first difference at byte {at} ({:?} instead of {:?})",
        got.len(),
        want.len(),
        got.get(at..(at + 16).min(got.len())).unwrap_or(""),
        want.get(at..(at + 16).min(want.len())).unwrap_or(""),
    );
}

async fn bench(case: &Case) {
    let kernel = Kernel::new(KernelConfig::default());
    // Resolve the interpreter once, outside the timings (as a host does at start-up).
    let _ = new_session(&kernel, case.lang).await;
    let mut starts = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let s = new_session(&kernel, case.lang).await;
        starts.push(t.elapsed().as_secs_f64() * 1e3);
        kernel.close_session(s.id()).await.expect("close");
    }
    let s = new_session(&kernel, case.lang).await;
    for _ in 0..30 {
        stdout_text(&s, case.trivial).await;
    }
    let mut rtts = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        stdout_text(&s, case.trivial).await;
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let want = expected_stream(case.unit);
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let got = stdout_text(&s, case.stream).await;
        let secs = t.elapsed().as_secs_f64();
        // Compared outside the timing: every byte, in order, not just how many.
        check_lossless(case.lang, &got, &want);
        rates.push(got.len() as f64 / secs / 1e6);
    }
    println!(
        "{:<7} ready median {:>7.1} ms | rtt median {:>6.3} ms p99 {:>6.3} ms | 20 MB stdout {:>6.1} MB/s (best {:.1}), lossless",
        case.lang,
        median(&mut starts),
        median(&mut rtts.clone()),
        pct(&mut rtts, 0.99),
        median(&mut rates.clone()),
        rates.iter().cloned().fold(0.0, f64::max),
    );
    kernel.shutdown().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for case in &CASES {
            if wanted.is_empty() || wanted.iter().any(|w| w == case.lang) {
                bench(case).await;
            }
        }
    });
}
