//! End-to-end tests of the Node.js language: a real `node` running the bootstrap, driven through
//! the kernel.

mod common;
use common::{run, run_with, stderr, stdout};

use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_kernel::{ExecOptions, Kernel, Query, Session, SessionSpec};
use spindle_protocol::{Body, Chunk, ImageFormat, Outcome, StatusFormat};

async fn session_in(cwd: std::path::PathBuf) -> (Kernel, Session) {
    let kernel = Kernel::new(common::config());
    let lang = spindle_languages::language("node", &Default::default()).expect("node language");
    let mut spec = SessionSpec::new(lang);
    spec.cwd = Some(cwd);
    let session = kernel.create_session(spec).await.expect("node session");
    (kernel, session)
}

async fn session() -> (Kernel, Session) {
    session_in(std::env::temp_dir()).await
}

/// The `text/plain` of the execution's result, if it had one.
fn result(chunks: &[Chunk]) -> Option<String> {
    chunks.iter().find_map(|c| match &c.body {
        Body::Result { content: Some(r) } => r
            .bundle
            .get("text/plain")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    })
}

fn errors(chunks: &[Chunk]) -> Vec<(String, String)> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Error { content: Some(e) } => Some((e.name.clone(), e.value.clone())),
            _ => None,
        })
        .collect()
}

fn outcome(chunks: &[Chunk]) -> Outcome {
    let last = chunks.last().expect("some chunks");
    match &last.body {
        Body::Status {
            format: StatusFormat::Finished,
            content: Some(c),
        } => c.outcome.expect("outcome"),
        other => panic!("last chunk is not `finished`: {other:?}"),
    }
}

/// A real 3×2 PNG, so the kernel's image checks accept it.
fn png_base64() -> String {
    let img = image::RgbImage::from_pixel(3, 2, image::Rgb([200, 10, 10]));
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .expect("encode png");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-node-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[tokio::test]
async fn let_then_expression() {
    let (_k, s) = session().await;
    let c = run(&s, "let x = 1").await;
    assert_eq!(outcome(&c), Outcome::Ok, "{c:#?}");
    assert_eq!(result(&c), None);
    let c = run(&s, "x + 1").await;
    assert_eq!(result(&c).as_deref(), Some("2"), "{c:#?}");
    // Re-running a cell that declares `let x` is allowed (REPL mode).
    let c = run(&s, "let x = 10; x").await;
    assert_eq!(result(&c).as_deref(), Some("10"), "{c:#?}");
}

#[tokio::test]
async fn top_level_await() {
    let (_k, s) = session().await;
    let c = run(&s, "await new Promise(r => setTimeout(() => r(5), 10))").await;
    assert_eq!(result(&c).as_deref(), Some("5"), "{c:#?}");
    assert_eq!(outcome(&c), Outcome::Ok);
    // A cell that ends in a promise ends when it settles.
    let started = Instant::now();
    let c = run(&s, "new Promise(r => setTimeout(() => r('late'), 300))").await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(result(&c).as_deref(), Some("'late'"), "{c:#?}");
}

#[tokio::test]
async fn state_persists_over_three_executions() {
    let (_k, s) = session().await;
    run(&s, "let base = 40").await;
    run(&s, "function add(a) { return a + base }").await;
    run(&s, "class Counter { constructor() { this.n = add(2) } }").await;
    let c = run(
        &s,
        "const y = await Promise.resolve(1); new Counter().n + y - 1",
    )
    .await;
    assert_eq!(result(&c).as_deref(), Some("42"), "{c:#?}");
    assert_eq!(result(&run(&s, "y").await).as_deref(), Some("1"));
}

#[tokio::test]
async fn console_and_display_keep_their_order() {
    let (_k, s) = session().await;
    let code = format!(
        "console.log('a'); display.png('{}'); console.log('b'); console.error('oops')",
        png_base64()
    );
    let c = run(&s, &code).await;
    assert_eq!(outcome(&c), Outcome::Ok, "{c:#?}");
    let kinds: Vec<String> = c
        .iter()
        .filter_map(|c| match &c.body {
            Body::Console {
                format,
                content: Some(t),
                ..
            } => Some(format!("{format:?}:{t}")),
            Body::Image {
                format: ImageFormat::Png,
                content: Some(_),
            } => Some("png".into()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["Stdout:a\n", "png", "Stdout:b\n", "Stderr:oops\n"]);
    assert_eq!(stderr(&c), "oops\n");
}

#[tokio::test]
async fn display_helpers() {
    let (_k, s) = session().await;
    let c = run(
        &s,
        "display.html('<b>hi</b>'); display.markdown('*m*'); display.json({a: [1, 2]}); \
         display.svg('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'); display('plain'); \
         display({_repr_mimebundle_: () => ({'text/html': '<i>x</i>', 'text/plain': 'x'})})",
    )
    .await;
    assert_eq!(outcome(&c), Outcome::Ok, "{c:#?}");
    let bundles: Vec<Value> = c
        .iter()
        .filter_map(|c| match &c.body {
            Body::Html { content: Some(r) }
            | Body::Markdown { content: Some(r) }
            | Body::Json { content: Some(r) }
            | Body::Text { content: Some(r) }
            | Body::Image {
                content: Some(r), ..
            } => Some(Value::Object(r.bundle.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(bundles.len(), 6, "{c:#?}");
    assert_eq!(bundles[0], json!({"text/html": "<b>hi</b>"}));
    assert_eq!(bundles[2], json!({"application/json": {"a": [1, 2]}}));
    assert_eq!(bundles[4], json!({"text/plain": "plain"}));
    assert_eq!(bundles[5]["text/html"], "<i>x</i>");
}

#[tokio::test]
async fn subprocess_output_keeps_its_place() {
    let (_k, s) = session().await;
    let c = run(
        &s,
        "console.log('a'); require('child_process').execSync('echo b', {stdio: 'inherit'}); \
         console.log('c')",
    )
    .await;
    assert_eq!(stdout(&c), "a\nb\nc\n", "{c:#?}");
}

#[tokio::test]
async fn interrupt_stops_a_busy_loop_and_keeps_state() {
    let (_k, s) = session().await;
    run(&s, "let kept = 'yes'").await;
    for code in [
        "let i = 0; while (true) { i++ }",
        "await null; while (true) {}",
    ] {
        let exec = s.execute(code, ExecOptions::default()).expect("execute");
        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            s2.interrupt().expect("interrupt");
        });
        let started = Instant::now();
        let c = tokio::time::timeout(Duration::from_secs(10), exec.collect::<Vec<_>>())
            .await
            .expect("interrupt ended the execution");
        assert!(started.elapsed() < Duration::from_secs(3), "{code}");
        assert_eq!(outcome(&c), Outcome::Interrupted, "{code}: {c:#?}");
        assert!(!errors(&c).is_empty(), "{c:#?}");
    }
    let c = run(&s, "kept + (typeof i)").await;
    assert_eq!(result(&c).as_deref(), Some("'yesnumber'"), "{c:#?}");
}

#[tokio::test]
async fn interrupt_stops_an_awaited_sleep() {
    let (_k, s) = session().await;
    run(&s, "const before = 7").await;
    for code in [
        "await new Promise(r => setTimeout(r, 100000))",
        "await new Promise(() => {})",
    ] {
        let exec = s.execute(code, ExecOptions::default()).expect("execute");
        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            s2.interrupt().expect("interrupt");
        });
        let started = Instant::now();
        let c = tokio::time::timeout(Duration::from_secs(10), exec.collect::<Vec<_>>())
            .await
            .expect("interrupt ended the execution");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(outcome(&c), Outcome::Interrupted, "{c:#?}");
    }
    assert_eq!(result(&run(&s, "before").await).as_deref(), Some("7"));
}

#[tokio::test]
async fn interrupt_unblocks_a_busy_timer_between_cells() {
    let (_k, s) = session().await;
    let c = run(
        &s,
        "let alive = 1; setTimeout(() => { while (true) {} }, 20); 'armed'",
    )
    .await;
    assert_eq!(outcome(&c), Outcome::Ok);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The process is stuck in the timer; this cell waits behind it until the interrupt.
    let exec = s
        .execute("alive + 1", ExecOptions::default())
        .expect("execute");
    let s2 = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s2.interrupt().expect("interrupt");
    });
    let c = tokio::time::timeout(Duration::from_secs(10), exec.collect::<Vec<_>>())
        .await
        .expect("the cell ran after the interrupt");
    // The interrupt stopped the timer, and the cell waiting behind it ran, whole and ok: the
    // SIGINT was spent on the timer. (Regression: it also reached the main thread's handler
    // once the cell had started, which reported the cell as interrupted after its result.)
    assert_eq!(result(&c).as_deref(), Some("2"), "{c:#?}");
    assert_eq!(outcome(&c), Outcome::Ok, "{c:#?}");
    assert!(errors(&c).is_empty(), "{c:#?}");
    assert_eq!(result(&run(&s, "alive").await).as_deref(), Some("1"));
}

#[tokio::test]
async fn interrupt_of_a_busy_cell_spares_the_cell_queued_behind_it() {
    let (_k, s) = session().await;
    for _ in 0..3 {
        let busy = s
            .execute("while (true) {}", ExecOptions::default())
            .expect("execute");
        let next = s
            .execute("'next ran'", ExecOptions::default())
            .expect("execute");
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.interrupt().expect("interrupt");
        let c = tokio::time::timeout(Duration::from_secs(10), busy.collect::<Vec<_>>())
            .await
            .expect("the interrupt ended the busy cell");
        assert_eq!(outcome(&c), Outcome::Interrupted, "{c:#?}");
        let c = tokio::time::timeout(Duration::from_secs(10), next.collect::<Vec<_>>())
            .await
            .expect("the queued cell ran");
        assert_eq!(result(&c).as_deref(), Some("'next ran'"), "{c:#?}");
        assert_eq!(outcome(&c), Outcome::Ok, "{c:#?}");
    }
}

#[tokio::test]
async fn idle_interrupt_is_ignored() {
    let (_k, s) = session().await;
    run(&s, "let z = 3").await;
    s.interrupt().expect("interrupt");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(result(&run(&s, "z").await).as_deref(), Some("3"));
}

#[tokio::test]
async fn timeout_recovers_the_session() {
    let (_k, s) = session().await;
    run(&s, "let survivor = 'here'").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opts = ExecOptions {
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let started = Instant::now();
    let c = run_with(&s, "while (true) {}", opts).await;
    assert_eq!(outcome(&c), Outcome::Timeout, "{c:#?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let c = run(&s, "survivor").await;
    assert_eq!(result(&c).as_deref(), Some("'here'"), "{c:#?}");
}

#[tokio::test]
async fn twenty_megabytes_of_stdout_byte_exact() {
    let (_k, s) = session().await;
    let c = run(
        &s,
        "const chunk = 'abcdefghijklmnopqrstuvwxyz0123456789\\n'.repeat(1024);\n\
         for (let i = 0; i < 540; i++) process.stdout.write(chunk);\n\
         process.stdout.write('end\\n')",
    )
    .await;
    assert_eq!(outcome(&c), Outcome::Ok);
    let out = stdout(&c);
    let line = "abcdefghijklmnopqrstuvwxyz0123456789\n";
    let expected = format!("{}end\n", line.repeat(1024 * 540));
    assert!(expected.len() > 20_000_000);
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "stdout differs");
}

#[tokio::test]
async fn emoji_and_cjk_intact() {
    let (_k, s) = session().await;
    let c = run(
        &s,
        "const t = '😀 héllo 中文字符 🎉'; console.log(t); console.error(t); \
         process.stdout.write(Buffer.from('分割', 'utf8').subarray(0, 4)); \
         process.stdout.write(Buffer.from('分割', 'utf8').subarray(4)); t",
    )
    .await;
    assert_eq!(stdout(&c), "😀 héllo 中文字符 🎉\n分割");
    assert_eq!(stderr(&c), "😀 héllo 中文字符 🎉\n");
    assert_eq!(result(&c).as_deref(), Some("'😀 héllo 中文字符 🎉'"));
}

#[tokio::test]
async fn hundred_kilobyte_single_line_program() {
    let (_k, s) = session().await;
    let items: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    let code = format!(
        "const big = [{}]; big.reduce((a, b) => a + b, 0)",
        items.join(",")
    );
    assert!(code.len() > 100_000);
    assert!(!code.contains('\n'));
    let c = run(&s, &code).await;
    assert_eq!(result(&c).as_deref(), Some("199990000"), "{:?}", errors(&c));
}

#[tokio::test]
async fn errors_and_unhandled_rejections() {
    let (_k, s) = session().await;
    let c = run(&s, "throw new TypeError('boom')").await;
    assert_eq!(outcome(&c), Outcome::Error);
    assert_eq!(errors(&c), [("TypeError".to_string(), "boom".to_string())]);
    let tb = c
        .iter()
        .find_map(|c| match &c.body {
            Body::Error { content: Some(e) } => Some(e.traceback.join("\n")),
            _ => None,
        })
        .unwrap();
    assert!(tb.contains("<cell-"), "{tb}");
    assert!(!tb.contains("node_bootstrap"), "{tb}");

    let c = run(&s, "Promise.reject(new Error('nobody listens')); 1").await;
    assert_eq!(outcome(&c), Outcome::Error, "{c:#?}");
    assert!(
        errors(&c).contains(&("Error".to_string(), "nobody listens".to_string())),
        "{c:#?}"
    );
    let c = run(&s, "await Promise.reject(new RangeError('awaited'))").await;
    assert_eq!(
        errors(&c),
        [("RangeError".to_string(), "awaited".to_string())]
    );
    let c = run(&s, "let broken = (1 + ;").await;
    assert_eq!(errors(&c)[0].0, "SyntaxError");
    // The session is alive and well.
    assert_eq!(result(&run(&s, "6 * 7").await).as_deref(), Some("42"));
}

#[tokio::test]
async fn require_and_import_are_relative_to_the_cwd() {
    if common::sandboxed() {
        return; // a sandbox's working directory is its own /work, never a host directory
    }
    let dir = scratch_dir("modules");
    std::fs::write(dir.join("cjs.js"), "module.exports = { answer: 41 };").unwrap();
    std::fs::write(
        dir.join("esm.mjs"),
        "export const v = 1; export default 'dflt';",
    )
    .unwrap();
    let (_k, s) = session_in(dir).await;
    let c = run(
        &s,
        "require('./cjs').answer + (await import('./esm.mjs')).v",
    )
    .await;
    assert_eq!(result(&c).as_deref(), Some("42"), "{c:#?}");
    let c = run(
        &s,
        "import d, { v as w } from './esm.mjs'\nimport * as path from 'node:path'\n[d, w, path.sep]",
    )
    .await;
    assert_eq!(result(&c).as_deref(), Some("[ 'dflt', 1, '/' ]"), "{c:#?}");
    let c = run(&s, "require('fs') === (await import('fs')).default").await;
    assert_eq!(result(&c).as_deref(), Some("true"), "{c:#?}");
}

#[tokio::test]
async fn input_round_trip() {
    let (_k, s) = session().await;
    let exec = s
        .execute(
            "const name = await input('Name: '); 'hi ' + name",
            ExecOptions::default(),
        )
        .expect("execute");
    let s2 = s.clone();
    let answer = tokio::spawn(async move {
        for _ in 0..100 {
            if s2.input_pending() {
                s2.input_reply("Ada").expect("reply");
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let c = tokio::time::timeout(Duration::from_secs(10), exec.collect::<Vec<_>>())
        .await
        .expect("finished");
    assert!(answer.await.unwrap());
    assert_eq!(result(&c).as_deref(), Some("'hi Ada'"), "{c:#?}");
    let opts = ExecOptions {
        allow_stdin: false,
        ..Default::default()
    };
    let c = run_with(&s, "await input('x')", opts).await;
    assert_eq!(outcome(&c), Outcome::Error);
}

#[tokio::test]
async fn complete_inspect_and_is_complete() {
    let (_k, s) = session().await;
    run(&s, "const myObject = { alpha: 1, alphabet: 2, beta: 3 }").await;
    let r = s
        .query(Query::Complete {
            code: "myObject.al".into(),
            cursor_pos: 11,
        })
        .await
        .expect("complete");
    assert_eq!(r["matches"], json!(["alpha", "alphabet"]), "{r}");
    assert_eq!(r["cursor_start"], 9);
    assert_eq!(r["cursor_end"], 11);
    let r = s
        .query(Query::Complete {
            code: "// 😀\nmyOb".into(),
            cursor_pos: 9,
        })
        .await
        .expect("complete");
    assert_eq!(r["matches"], json!(["myObject"]), "{r}");
    assert_eq!(r["cursor_start"], 5);

    let r = s
        .query(Query::Inspect {
            code: "myObject".into(),
            cursor_pos: 3,
            detail_level: 0,
        })
        .await
        .expect("inspect");
    assert_eq!(r["found"], true, "{r}");
    assert!(r["data"]["text/plain"]
        .as_str()
        .unwrap()
        .contains("alphabet"));

    for (code, want) in [
        ("function f() {", "incomplete"),
        ("let s = `abc", "incomplete"),
        ("let v = ", "incomplete"),
        ("foo(1,\n  2", "incomplete"),
        ("1 + 1", "complete"),
        ("await fetchIt()", "complete"),
        ("import x from 'y'", "complete"),
        ("let a = 1; }", "invalid"),
        ("'unterminated", "invalid"),
    ] {
        let r = s
            .query(Query::IsComplete { code: code.into() })
            .await
            .expect("is_complete");
        assert_eq!(r["status"], want, "{code}: {r}");
    }
    // Queries leave the session usable.
    assert_eq!(
        result(&run(&s, "myObject.beta").await).as_deref(),
        Some("3")
    );
}

#[tokio::test]
async fn exit_code_and_user_expressions() {
    let (_k, s) = session().await;
    let mut ue = serde_json::Map::new();
    ue.insert("double".into(), json!("n * 2"));
    ue.insert("bad".into(), json!("nope.x"));
    let opts = ExecOptions {
        user_expressions: ue,
        ..Default::default()
    };
    let c = run_with(&s, "const n = 21; process.exitCode = 3", opts).await;
    let content = c
        .iter()
        .find_map(|c| match &c.body {
            Body::Status {
                format: StatusFormat::Finished,
                content: Some(sc),
            } => Some(sc.clone()),
            _ => None,
        })
        .expect("finished");
    assert_eq!(content.exit_status, Some(3));
    let ue = serde_json::to_value(&content).unwrap();
    let ue = &ue["user_expressions"];
    assert_eq!(ue["double"]["data"]["text/plain"], "42", "{ue}");
    assert_eq!(ue["bad"]["status"], "error", "{ue}");
}
