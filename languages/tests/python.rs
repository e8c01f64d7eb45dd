//! End-to-end tests of the Python language: real interpreters driven through the kernel.
//!
//! Most tests use `python3` from `PATH`. Those that need matplotlib, pandas or IPython use the
//! test virtualenv: `<repo>/.venv/bin/python` (the README's test command creates it), else
//! `$SPINDLE_TEST_PYTHON`.

mod common;
use common::{active_lines, console, errors, outcome, run, run_with, status as finished, stdout};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_kernel::{ExecOptions, Kernel, Query, Session, SessionSpec};
use spindle_languages::Interpreters;
use spindle_protocol::{Body, Chunk, ConsoleFormat, ImageFormat, Outcome, Rich};

const LIMIT: Duration = Duration::from_secs(120);

fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace");
    let venv = root.join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    match std::env::var("SPINDLE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "these tests need a Python with matplotlib, pandas and IPython: run the README's test \
             command (it creates {}) or set SPINDLE_TEST_PYTHON=/path/to/python",
            venv.display()
        ),
    }
}

async fn start(interpreters: Interpreters) -> (Kernel, Session) {
    let kernel = Kernel::new(common::config());
    let lang = spindle_languages::language("python", &interpreters).expect("python language");
    let session = kernel
        .create_session(SessionSpec::new(lang))
        .await
        .expect("python session starts");
    (kernel, session)
}

/// A session on `python3` from `PATH`.
async fn python() -> (Kernel, Session) {
    start(Interpreters::default()).await
}

/// A session on the test virtualenv (matplotlib, pandas, IPython).
async fn venv() -> (Kernel, Session) {
    start(Interpreters {
        python: Some(venv_python().to_string_lossy().into_owned()),
        ..Default::default()
    })
    .await
}

fn result(chunks: &[Chunk]) -> Option<Rich> {
    chunks.iter().find_map(|c| match &c.body {
        Body::Result { content: Some(r) } => Some(r.clone()),
        _ => None,
    })
}

fn result_text(chunks: &[Chunk]) -> String {
    let r = result(chunks).unwrap_or_else(|| panic!("no result in {chunks:#?}"));
    r.bundle["text/plain"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// One label per piece of content, in order, for checking interleaving.
fn labels(chunks: &[Chunk]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in chunks {
        if c.start || c.end {
            continue;
        }
        let label = match &c.body {
            Body::Console {
                format: ConsoleFormat::Stdout,
                content: Some(t),
                ..
            } => format!("stdout:{t}"),
            Body::Console {
                format: ConsoleFormat::Stderr,
                content: Some(t),
                ..
            } => format!("stderr:{t}"),
            Body::Status { .. } => continue,
            other => other.type_name().to_string(),
        };
        // Console text may arrive in several chunks; merge runs of the same stream.
        if let (Some(prev), Some(rest)) = (out.last_mut(), label.strip_prefix("stdout:")) {
            if prev.starts_with("stdout:") {
                prev.push_str(rest);
                continue;
            }
        }
        out.push(label);
    }
    out
}

fn png_size(rich: &Rich) -> (u32, u32) {
    let b64 = rich.data.as_str().expect("image data is base64 text");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("valid base64");
    let img = image::load_from_memory(&bytes).expect("the image crate decodes it");
    (img.width(), img.height())
}

fn images(chunks: &[Chunk]) -> Vec<(ImageFormat, Rich)> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Image {
                format,
                content: Some(r),
            } => Some((*format, r.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_persists_over_three_executions() {
    let (_k, s) = python().await;
    let a = run(&s, "x = 20").await;
    assert_eq!(outcome(&a), Outcome::Ok);
    let b = run(&s, "def double(v):\n    return v * 2\ny = double(x) + 1").await;
    assert_eq!(outcome(&b), Outcome::Ok);
    let c = run(&s, "y * 2").await;
    assert_eq!(result_text(&c), "82");
    assert_eq!(finished(&c).exit_status, Some(0));
}

/// A tiny PNG built with the standard library, shown through `_repr_png_`.
const RED_PNG: &str = r#"
import struct, zlib
def _png(w, h):
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * w for _ in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
class Red:
    def _repr_png_(self):
        return _png(3, 2)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_display_print_arrive_in_order() {
    let (_k, s) = python().await;
    assert_eq!(outcome(&run(&s, RED_PNG).await), Outcome::Ok);
    let chunks = run(&s, "print('a')\ndisplay(Red())\nprint('b')").await;
    assert_eq!(labels(&chunks), vec!["stdout:a\n", "image", "stdout:b\n"]);
    let imgs = images(&chunks);
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].0, ImageFormat::Png);
    assert_eq!(png_size(&imgs[0].1), (3, 2));
    assert!(imgs[0].1.bundle["text/plain"]
        .as_str()
        .unwrap()
        .contains("Red object"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprocess_output_keeps_its_place() {
    let (_k, s) = python().await;
    let code = "import os, subprocess, sys\nprint('one')\nos.system('echo two')\nprint('three')\n\
                subprocess.run(['echo', 'four'])\nprint('five', file=sys.stderr)\nprint('six')";
    let chunks = run(&s, code).await;
    assert_eq!(
        labels(&chunks),
        vec![
            "stdout:one\ntwo\nthree\nfour\n",
            "stderr:five\n",
            "stdout:six\n"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_stops_sleep_promptly_and_keeps_state() {
    let (_k, s) = python().await;
    run(&s, "kept = 'still here'").await;
    let mut ex = s
        .execute(
            "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
            ExecOptions::default(),
        )
        .unwrap();
    let mut chunks = Vec::new();
    let mut sent_at = None;
    while let Some(c) = tokio::time::timeout(LIMIT, ex.next())
        .await
        .expect("progress")
    {
        let is_sleeping =
            matches!(&c.body, Body::Console { content: Some(t), .. } if t.contains("sleeping"));
        chunks.push(c);
        if is_sleeping && sent_at.is_none() {
            sent_at = Some(Instant::now());
            s.interrupt().unwrap();
        }
    }
    let took = sent_at.expect("the cell printed before sleeping").elapsed();
    assert!(took < Duration::from_secs(3), "interrupt took {took:?}");
    assert_eq!(outcome(&chunks), Outcome::Interrupted);
    let errs = errors(&chunks);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].name, "KeyboardInterrupt");
    // Usually raised in time.sleep(); if the signal lands while print() is still sending its
    // frame, the interrupt is held until the frame is whole and raised from print().
    assert!(errs[0].traceback.join("\n").contains("<cell-"), "{errs:?}");
    // An interrupt while idle is ignored, and the state survived.
    s.interrupt().unwrap();
    let after = run(&s, "kept").await;
    assert_eq!(result_text(&after), "'still here'");
}

/// CPython's C handler only marks a SIGINT; when it runs outside the main thread's blocking call
/// (here on a user thread, which does not block SIGINT; in the wild also just before the main
/// thread enters `time.sleep`), nothing wakes the main thread. The bootstrap's watchdog must
/// re-deliver it to the main thread instead of letting the sleep run its course.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_landing_on_another_thread_still_stops_sleep() {
    let (_k, s) = python().await;
    let t = Instant::now();
    let chunks = run(
        &s,
        "import signal, threading, time\n\
         threading.Thread(target=lambda: (time.sleep(0.2), \
         signal.pthread_kill(threading.get_ident(), signal.SIGINT))).start()\n\
         time.sleep(60)",
    )
    .await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "interrupt took {took:?}");
    assert_eq!(outcome(&chunks), Outcome::Interrupted);
    let errs = errors(&chunks);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].name, "KeyboardInterrupt");
    // The session lives on, and a later execution is not hit by a stale re-delivery.
    let after = run(&s, "import time; time.sleep(0.3); 1 + 1").await;
    assert_eq!(outcome(&after), Outcome::Ok);
    assert_eq!(result_text(&after), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_of_stdout_arrive_byte_exact() {
    let (_k, s) = python().await;
    let t = Instant::now();
    let chunks = run(&s, "import sys; _ = sys.stdout.write('x'*20_000_000)").await;
    let took = t.elapsed();
    let out = stdout(&chunks);
    assert_eq!(out.len(), 20_000_000);
    assert!(out.bytes().all(|b| b == b'x'));
    let rate = 20.0 / took.as_secs_f64();
    eprintln!("20 MB of stdout end to end in {took:?}: {rate:.0} MB/s");
    // Well over 130 MB/s on an idle machine even in a debug build; the floor only catches
    // per-byte work creeping into the path (that would be ~100x slower), not a busy machine.
    assert!(rate > 25.0, "{rate:.0} MB/s");
    // Multi-byte characters across the 1 MiB frame splits, and from print() in a loop.
    let chunks = run(
        &s,
        "_ = sys.stdout.write('é' * 1_500_000)\nfor i in range(50_000): print(i)",
    )
    .await;
    let expected: String =
        "é".repeat(1_500_000) + &(0..50_000).map(|i| format!("{i}\n")).collect::<String>();
    assert!(stdout(&chunks) == expected, "stdout differs");
}

/// A large ASCII string is encoded and sent a frame's worth at a time: every piece arrives,
/// in order, before what the program writes next, and `write` still returns its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_ascii_write_goes_out_in_pieces_in_order() {
    let (_k, s) = python().await;
    let code = "import sys\n\
        s = ''.join(chr(97 + i % 26) * 1000 + '\\n' for i in range(3000))\n\
        print('before')\n\
        n = sys.stdout.write(s)\n\
        sys.stderr.write('err\\n')\n\
        print('after', n == len(s), len(s))";
    let chunks = run(&s, code).await;
    let big: String = (0..3000)
        .map(|i| {
            format!(
                "{}\n",
                ((b'a' + (i % 26) as u8) as char).to_string().repeat(1000)
            )
        })
        .collect();
    assert_eq!(big.len(), 3_003_000);
    let out = stdout(&chunks);
    assert!(
        out == format!("before\n{big}after True 3003000\n"),
        "stdout differs ({} bytes)",
        out.len()
    );
    // stderr's line comes after all of the big write and before `after`.
    let err_at = chunks
        .iter()
        .position(|c| {
            matches!(&c.body, Body::Console { format: ConsoleFormat::Stderr, content: Some(t), .. } if t == "err\n")
        })
        .expect("the stderr line");
    assert_eq!(stdout(&chunks[..err_at]), format!("before\n{big}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emoji_and_cjk_are_intact() {
    let (_k, s) = python().await;
    let chunks = run(
        &s,
        "print('héllo 🎉 中文字符 👩‍👩‍👧')\nimport sys; print('错误 ⚠️', file=sys.stderr)\n'値 🐍'",
    )
    .await;
    assert_eq!(stdout(&chunks), "héllo 🎉 中文字符 👩‍👩‍👧\n");
    assert_eq!(console(&chunks, ConsoleFormat::Stderr), "错误 ⚠️\n");
    assert_eq!(result_text(&chunks), "'値 🐍'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_single_line_program_runs() {
    let (_k, s) = python().await;
    let items = vec!["7"; 50_000].join(",");
    let code = format!("big = [{items}]; print(len(big), sum(big))");
    assert!(code.len() > 100_000);
    let chunks = run(&s, &code).await;
    assert_eq!(stdout(&chunks), "50000 350000\n");
    assert_eq!(outcome(&chunks), Outcome::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matplotlib_show_gives_a_png_of_the_figure_size() {
    let (_k, s) = venv().await;
    let chunks = run(
        &s,
        "import matplotlib.pyplot as plt\nplt.plot([1,2,3]); plt.show()",
    )
    .await;
    assert_eq!(outcome(&chunks), Outcome::Ok, "{chunks:#?}");
    let imgs = images(&chunks);
    assert_eq!(imgs.len(), 1, "{chunks:#?}");
    assert_eq!(imgs[0].0, ImageFormat::Png);
    assert_eq!(png_size(&imgs[0].1), (640, 480));
    assert_eq!(
        imgs[0].1.bundle["text/plain"],
        json!("<Figure size 640x480 with 1 Axes>")
    );
    // Figures left open at the end of an execution are shown (once) and closed.
    let chunks = run(&s, "plt.figure(figsize=(4, 3), dpi=50); plt.plot([3, 1]);").await;
    let imgs = images(&chunks);
    assert_eq!(imgs.len(), 1);
    assert_eq!(png_size(&imgs[0].1), (200, 150));
    assert_eq!(result_text(&run(&s, "len(plt.get_fignums())").await), "0");
    // The bootstrap handed matplotlib Spindle's backend...
    assert_eq!(
        result_text(&run(&s, "import matplotlib; matplotlib.get_backend()").await),
        "'module://spindle_inline'"
    );
    // ...but it does not leak into subprocesses, which have no `spindle_inline`: neither in
    // `os.environ` nor in what a child process inherits.
    let chunks = run(&s, "import os; os.environ.get('MPLBACKEND')").await;
    assert!(result(&chunks).is_none(), "{chunks:#?}");
    let chunks = run(
        &s,
        "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', \
         'import os; print(repr(os.environ.get(\"MPLBACKEND\")))'], capture_output=True, \
         text=True).stdout, end='')",
    )
    .await;
    assert_eq!(stdout(&chunks), "None\n", "{chunks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pandas_dataframe_result_is_html() {
    let (_k, s) = venv().await;
    let chunks = run(
        &s,
        "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})",
    )
    .await;
    let r = result(&chunks).expect("a result");
    let html = r.bundle["text/html"]
        .as_str()
        .expect("text/html in the bundle");
    assert!(html.contains("<table"), "{html}");
    assert!(r.bundle["text/plain"].as_str().unwrap().contains('a'));
    // PIL images come out as PNG.
    let chunks = run(
        &s,
        "from PIL import Image\ndisplay(Image.new('RGB', (5, 4), 'red'))",
    )
    .await;
    let imgs = images(&chunks);
    assert_eq!(imgs.len(), 1);
    assert_eq!(png_size(&imgs[0].1), (5, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_round_trip_and_refusal() {
    let (_k, s) = python().await;
    let mut ex = s
        .execute(
            "name = input('Name: ')\nprint('hi ' + name)",
            ExecOptions::default(),
        )
        .unwrap();
    let mut chunks = Vec::new();
    while let Some(c) = tokio::time::timeout(LIMIT, ex.next())
        .await
        .expect("progress")
    {
        if let Body::InputRequest { content: Some(r) } = &c.body {
            assert_eq!(r.prompt, "Name: ");
            assert!(!r.password);
            s.input_reply("Ada").unwrap();
        }
        chunks.push(c);
    }
    assert_eq!(stdout(&chunks), "hi Ada\n");
    assert_eq!(outcome(&chunks), Outcome::Ok);

    let opts = ExecOptions {
        allow_stdin: false,
        ..Default::default()
    };
    let chunks = run_with(&s, "input('?')", opts).await;
    assert_eq!(outcome(&chunks), Outcome::Error);
    let errs = errors(&chunks);
    assert_eq!(errs[0].name, "StdinNotImplementedError");
    assert!(errs[0].value.contains("allow_stdin"), "{}", errs[0].value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceback_points_at_the_cell_line() {
    let (_k, s) = python().await;
    let chunks = run(&s, "a = 1\nb = a / 0\nc = 2").await;
    assert_eq!(outcome(&chunks), Outcome::Error);
    assert_eq!(finished(&chunks).exit_status, Some(1));
    let errs = errors(&chunks);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].name, "ZeroDivisionError");
    assert_eq!(errs[0].value, "division by zero");
    let tb = errs[0].traceback.join("\n");
    assert!(tb.contains("<cell-"), "{tb}");
    assert!(tb.contains("line 2"), "{tb}");
    assert!(tb.contains("b = a / 0"), "{tb}");
    // The bootstrap's own frames are hidden.
    assert!(
        !tb.contains("_run_cell") && !tb.contains("<string>"),
        "{tb}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_error_and_system_exit() {
    let (_k, s) = python().await;
    run(&s, "x = 1").await;
    let chunks = run(&s, "x = 2\nif x:\nprint(x)").await;
    assert_eq!(outcome(&chunks), Outcome::Error);
    let errs = errors(&chunks);
    assert_eq!(errs[0].name, "IndentationError");
    assert!(errs[0].traceback.join("\n").contains("line 3"));
    assert!(
        stdout(&chunks).is_empty(),
        "nothing of a cell that does not compile runs"
    );
    let chunks = run(&s, "y = (1,").await;
    assert_eq!(errors(&chunks)[0].name, "SyntaxError");

    let chunks = run(&s, "import sys; sys.exit(3)").await;
    assert_eq!(finished(&chunks).exit_status, Some(3));
    assert_eq!(outcome(&chunks), Outcome::Error);
    let chunks = run(&s, "sys.exit(0)").await;
    assert_eq!(outcome(&chunks), Outcome::Ok);
    assert!(errors(&chunks).is_empty());
    // The process is still the same one.
    assert_eq!(result_text(&run(&s, "x").await), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipython_display_routes_through_spindle() {
    let (_k, s) = venv().await;
    let code = "from IPython.display import display, HTML, Markdown, clear_output\n\
                print('before')\n\
                display(HTML('<b>hi</b>'))\n\
                clear_output(wait=True)\n\
                h = display(Markdown('*v1*'), display_id=True)\n\
                h.update(Markdown('*v2*'))";
    let chunks = run(&s, code).await;
    assert_eq!(outcome(&chunks), Outcome::Ok, "{chunks:#?}");
    assert_eq!(
        labels(&chunks),
        vec![
            "stdout:before\n",
            "html",
            "clear_output",
            "markdown",
            "markdown"
        ]
    );
    let rich: Vec<Rich> = chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Html { content: Some(r) } | Body::Markdown { content: Some(r) } => {
                Some(r.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(rich[0].data, json!("<b>hi</b>"));
    assert_eq!(rich[1].data, json!("*v1*"));
    assert!(rich[1].display_id.is_some());
    assert!(!rich[1].update);
    assert_eq!(rich[2].data, json!("*v2*"));
    assert_eq!(rich[2].display_id, rich[1].display_id);
    assert!(rich[2].update);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_inspect_is_complete() {
    let (_k, s) = python().await;
    run(
        &s,
        "my_variable_xyz = 1\ndef documented(a, b=2):\n    \"Adds things.\"\n    return a + b",
    )
    .await;

    let r = s
        .query(Query::Complete {
            code: "import o".into(),
            cursor_pos: 8,
        })
        .await
        .unwrap();
    assert!(
        r["matches"].as_array().unwrap().contains(&json!("os")),
        "{r}"
    );
    assert_eq!(r["cursor_start"], json!(7));
    assert_eq!(r["cursor_end"], json!(8));

    let r = s
        .query(Query::Complete {
            code: "z = my_var".into(),
            cursor_pos: 10,
        })
        .await
        .unwrap();
    assert!(
        r["matches"]
            .as_array()
            .unwrap()
            .contains(&json!("my_variable_xyz")),
        "{r}"
    );
    assert_eq!(r["cursor_start"], json!(4));

    let r = s
        .query(Query::Inspect {
            code: "documented(1, ".into(),
            cursor_pos: 14,
            detail_level: 0,
        })
        .await
        .unwrap();
    assert_eq!(r["found"], json!(true), "{r}");
    let text = r["data"]["text/plain"].as_str().unwrap();
    assert!(text.contains("documented(a, b=2)"), "{text}");
    assert!(text.contains("Adds things."), "{text}");

    let r = s
        .query(Query::Inspect {
            code: "no_such_name_zz".into(),
            cursor_pos: 3,
            detail_level: 0,
        })
        .await
        .unwrap();
    assert_eq!(r["found"], json!(false));

    let status = |v: Value| v["status"].as_str().unwrap().to_string();
    let r = s
        .query(Query::IsComplete {
            code: "def f():".into(),
        })
        .await
        .unwrap();
    assert_eq!(status(r.clone()), "incomplete");
    assert_eq!(r["indent"], json!("    "));
    for (code, want) in [
        ("x = 1", "complete"),
        ("x = )", "invalid"),
        ("for i in range(3):\n    pass\n\n", "complete"),
        ("x = [1,", "incomplete"),
    ] {
        let r = s
            .query(Query::IsComplete { code: code.into() })
            .await
            .unwrap();
        assert_eq!(status(r), want, "{code:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_lines_report_the_cell_lines_only() {
    let (_k, s) = python().await;
    run(&s, "def helper(v):\n    return v + 1").await;
    let opts = ExecOptions {
        active_lines: true,
        ..Default::default()
    };
    let chunks = run_with(&s, "a = 1\nb = helper(a)\nprint(b)", opts).await;
    let lines = active_lines(&chunks);
    // helper() was defined by another execution: its line is not reported.
    assert_eq!(lines, vec![1, 2, 3]);
    assert_eq!(stdout(&chunks), "2\n");
    // Off by default.
    let chunks = run(&s, "c = 3").await;
    assert!(!chunks.iter().any(|c| matches!(
        c.body,
        Body::Console {
            format: ConsoleFormat::ActiveLine,
            ..
        }
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_expressions_and_display_file() {
    let (_k, s) = python().await;
    let mut opts = ExecOptions::default();
    opts.user_expressions.insert("next".into(), json!("n + 1"));
    opts.user_expressions.insert("bad".into(), json!("1/0"));
    let chunks = run_with(&s, "n = 41", opts).await;
    let ue = finished(&chunks)
        .user_expressions
        .expect("user expressions");
    assert_eq!(ue["next"]["status"], json!("ok"));
    assert_eq!(ue["next"]["data"]["text/plain"], json!("42"));
    assert_eq!(ue["bad"]["status"], json!("error"));
    assert_eq!(ue["bad"]["ename"], json!("ZeroDivisionError"));

    // The file is made by the session itself, so the test runs the same in a sandbox.
    let chunks = run(
        &s,
        "import os, tempfile\np = os.path.join(tempfile.mkdtemp(), 'table.csv')\n\
         open(p, 'w').write('a,b\\n1,2\\n')\nprint(p, end='')",
    )
    .await;
    let path = stdout(&chunks);
    assert!(path.ends_with("table.csv"), "{chunks:#?}");
    let chunks = run(&s, "display_file(p)").await;
    let file = chunks
        .iter()
        .find_map(|c| match &c.body {
            Body::File { content: Some(f) } => Some(f.clone()),
            _ => None,
        })
        .expect("a file chunk");
    assert_eq!(file.path, path);
    assert_eq!(file.mime, "text/csv");
}
