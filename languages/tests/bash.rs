//! End-to-end tests of the bash language: a real interactive bash driven through the kernel.

mod common;
use common::{active_lines, console, run, run_with, status, stdout};

use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_kernel::{ExecOptions, Kernel, Query, Session, SessionSpec};
use spindle_protocol::{Body, Chunk, ConsoleFormat, Outcome};

async fn session() -> (Kernel, Session) {
    let kernel = Kernel::new(common::config());
    let lang = spindle_languages::language("bash", &Default::default()).expect("bash language");
    let mut spec = SessionSpec::new(lang);
    spec.cwd = Some(std::env::temp_dir());
    let session = kernel.create_session(spec).await.expect("bash session");
    (kernel, session)
}

fn finished(chunks: &[Chunk]) -> (Outcome, Option<i32>) {
    let s = status(chunks);
    (s.outcome.expect("outcome"), s.exit_status)
}

#[tokio::test]
async fn state_persists_across_executions() {
    let (_k, s) = session().await;
    let c = run(
        &s,
        "x=41\ngreet() { echo \"hello $1\"; }\nalias ll='echo aliased'\ncd /tmp",
    )
    .await;
    assert_eq!(finished(&c), (Outcome::Ok, Some(0)));
    let c = run(&s, "x=$((x+1))").await;
    assert_eq!(finished(&c).0, Outcome::Ok);
    let c = run(&s, "echo $x; greet you; ll; pwd").await;
    assert_eq!(stdout(&c), "42\nhello you\naliased\n/tmp\n");
}

#[tokio::test]
async fn cd_then_pwd() {
    let (_k, s) = session().await;
    run(&s, "cd /tmp").await;
    assert_eq!(stdout(&run(&s, "pwd").await), "/tmp\n");
}

#[tokio::test]
async fn exit_status_is_reported() {
    let (_k, s) = session().await;
    assert_eq!(finished(&run(&s, "false").await), (Outcome::Error, Some(1)));
    // `$?` in the next cell is still the previous cell's.
    let c = run(&s, "echo $?").await;
    assert_eq!(stdout(&c), "1\n");
    assert_eq!(finished(&c), (Outcome::Ok, Some(0)));
    assert_eq!(
        finished(&run(&s, "(exit 7)").await),
        (Outcome::Error, Some(7))
    );
}

#[tokio::test]
async fn exit_restarts_with_a_fresh_session() {
    let (_k, s) = session().await;
    run(&s, "marker=set").await;
    let c = run(&s, "exit 3").await;
    assert!(
        c.iter()
            .any(|c| matches!(c.body, Body::Notice { content: Some(_) })),
        "{c:#?}"
    );
    assert_eq!(finished(&c).1, Some(3), "{c:#?}");
    let c = run(&s, "echo \"fresh:${marker:-unset}\"").await;
    assert_eq!(stdout(&c), "fresh:unset\n");
    assert_eq!(finished(&c).0, Outcome::Ok);
}

#[tokio::test]
async fn display_keeps_its_place_between_echoes() {
    let (_k, s) = session().await;
    let png = make_png();
    // The file is made by the session itself, so the test runs the same in a sandbox.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let code = format!(
        "cd \"$(mktemp -d)\" && echo {b64} | base64 -d > x.png\necho a; display x.png; echo b"
    );
    let c = run(&s, &code).await;
    let kinds: Vec<String> = c
        .iter()
        .filter(|c| !c.start && !c.end)
        .filter_map(|c| match &c.body {
            Body::Console {
                content: Some(t), ..
            } => Some(format!("text:{t}")),
            Body::Image {
                content: Some(r), ..
            } => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(r.data.as_str().unwrap())
                    .unwrap();
                assert_eq!(data, png);
                assert_eq!((r.width, r.height), (Some(3), Some(2)));
                Some("image".into())
            }
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["text:a\n", "image", "text:b\n"], "{c:#?}");
}

fn make_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 80, y as u8 * 120, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn display_html_markdown_and_files() {
    let (_k, s) = session().await;
    let md = format!("/tmp/spindle-bash-{}.md", std::process::id());
    let code = format!(
        "display_html '<b class=\"x\">hi</b>'\nprintf '# T\\n' > {md}\ndisplay {md}\ndisplay_file {md}"
    );
    let c = run(&s, &code).await;
    std::fs::remove_file(&md).ok();
    let html = c.iter().find_map(|c| match &c.body {
        Body::Html {
            content: Some(r), ..
        } => Some(r.data.clone()),
        _ => None,
    });
    assert_eq!(html, Some(json!("<b class=\"x\">hi</b>")));
    assert!(
        c.iter().any(
            |c| matches!(&c.body, Body::Markdown { content: Some(r) } if r.data == json!("# T\n"))
        ),
        "{c:#?}"
    );
    assert!(c.iter().any(|c| matches!(&c.body, Body::File { content: Some(f) } if f.path == md && f.mime == "text/markdown")), "{c:#?}");
}

async fn interrupt_after(s: &Session, code: &str) -> (Vec<Chunk>, Duration) {
    let exec = s.execute(code, ExecOptions::default()).expect("execute");
    let s2 = s.clone();
    let pinger = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s2.interrupt().expect("interrupt");
        Instant::now()
    });
    let chunks = tokio::time::timeout(Duration::from_secs(20), exec.collect::<Vec<_>>())
        .await
        .expect("interrupted execution finished");
    let sent = pinger.await.unwrap();
    (chunks, sent.elapsed())
}

#[tokio::test]
async fn interrupt_stops_a_command_and_keeps_state() {
    let (_k, s) = session().await;
    run(&s, "kept=yes; cd /usr").await;
    for code in [
        "sleep 100",
        "while :; do :; done",
        "sleep 100\necho not-reached",
    ] {
        let (c, took) = interrupt_after(&s, code).await;
        assert_eq!(finished(&c).0, Outcome::Interrupted, "{code}: {c:#?}");
        assert!(took < Duration::from_secs(3), "{code}: took {took:?}");
        assert!(!stdout(&c).contains("not-reached"));
        let c = run(&s, "echo $kept; pwd").await;
        assert_eq!(stdout(&c), "yes\n/usr\n", "after {code}");
    }
}

/// Holding SIGINT off while a cell's end is reported must give the session's own INT trap back.
#[tokio::test]
async fn a_users_int_trap_survives_the_cell_end() {
    let (_k, s) = session().await;
    run(&s, "trap 'echo caught' INT").await;
    let c = run(&s, "trap -p INT").await;
    assert_eq!(stdout(&c), "trap -- 'echo caught' SIGINT\n", "{c:#?}");
    run(&s, "trap - INT").await;
    let c = run(&s, "trap -p INT").await;
    assert_eq!(stdout(&c), "", "{c:#?}");
    let (c, _) = interrupt_after(&s, "sleep 100").await;
    assert_eq!(finished(&c).0, Outcome::Interrupted, "{c:#?}");
}

#[tokio::test]
async fn a_timeout_recovers_the_session() {
    let (_k, s) = session().await;
    run(&s, "kept=1").await;
    let opts = ExecOptions {
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let t = Instant::now();
    let c = run_with(&s, "sleep 100", opts).await;
    assert_eq!(finished(&c).0, Outcome::Timeout, "{c:#?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let c = run(&s, "echo ok $kept").await;
    assert_eq!(stdout(&c), "ok 1\n");
}

#[tokio::test]
async fn twenty_megabytes_arrive_byte_exact() {
    let (_k, s) = session().await;
    let c = run(&s, "yes xxxxxxxxx | head -c 20000000").await;
    let out = stdout(&c);
    assert_eq!(out.len(), 20_000_000);
    assert!(out.as_bytes().chunks(10).all(|l| l == b"xxxxxxxxx\n"));
    assert_eq!(finished(&c).0, Outcome::Ok);
}

#[tokio::test]
async fn unicode_is_intact() {
    let (_k, s) = session().await;
    let c = run(
        &s,
        "echo '🎉 emoji 中文 テキスト'; printf 'é%.0s' {1..5000}; echo",
    )
    .await;
    let want = format!("🎉 emoji 中文 テキスト\n{}\n", "é".repeat(5000));
    assert_eq!(stdout(&c), want);
}

#[tokio::test]
async fn long_single_line_and_heredoc() {
    let (_k, s) = session().await;
    let word = "a".repeat(100_000);
    let c = run(&s, &format!("v={word}; echo ${{#v}}")).await;
    assert_eq!(stdout(&c), "100000\n");
    let c = run(
        &s,
        "name=world\ncat <<EOF\nhello $name\n  indented\nEOF\ncat <<'RAW'\n$name stays\nRAW",
    )
    .await;
    assert_eq!(stdout(&c), "hello world\n  indented\n$name stays\n");
    let c = run(&s, "printf '%s\\n' c b a | sort | head -n 2").await;
    assert_eq!(stdout(&c), "a\nb\n");
}

#[tokio::test]
async fn stderr_is_told_apart() {
    let (_k, s) = session().await;
    let c = run(&s, "echo out; echo err >&2; no_such_command_xyz").await;
    assert_eq!(stdout(&c), "out\n");
    let err = console(&c, ConsoleFormat::Stderr);
    assert!(err.starts_with("err\n"), "{err:?}");
    assert!(
        err.contains("no_such_command_xyz: command not found"),
        "{err:?}"
    );
    assert_eq!(finished(&c), (Outcome::Error, Some(127)));
}

#[tokio::test]
async fn read_is_answered_through_stdin() {
    let (_k, s) = session().await;
    let exec = s
        .execute("read -r x; echo \"got [$x]\"", ExecOptions::default())
        .unwrap();
    let s2 = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s2.write_stdin(b"some answer\n").unwrap();
    });
    let c = tokio::time::timeout(Duration::from_secs(20), exec.collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(stdout(&c), "got [some answer]\n");
    let opts = ExecOptions {
        allow_stdin: false,
        ..Default::default()
    };
    let c = run_with(&s, "read -r x || echo no-stdin", opts).await;
    assert_eq!(stdout(&c), "no-stdin\n");
}

#[tokio::test]
async fn active_lines_and_user_expressions() {
    let (_k, s) = session().await;
    let mut opts = ExecOptions {
        active_lines: true,
        ..Default::default()
    };
    opts.user_expressions
        .insert("double".into(), json!("echo $((n * 2))"));
    opts.user_expressions.insert("bad".into(), json!("false"));
    let c = run_with(&s, "n=2\necho one\n\necho two", opts).await;
    let lines = active_lines(&c);
    assert_eq!(lines, [1, 2, 4], "{c:#?}");
    let exprs = match &c.last().unwrap().body {
        Body::Status {
            content: Some(st), ..
        } => serde_json::to_value(st).unwrap(),
        _ => unreachable!(),
    };
    let text = exprs.to_string();
    assert!(text.contains("\"text/plain\":\"4\""), "{text}");
    assert!(text.contains("ExitStatus"), "{text}");
    // Off by default.
    let c = run(&s, "echo x\necho y").await;
    assert!(!c.iter().any(|c| matches!(
        c.body,
        Body::Console {
            format: ConsoleFormat::ActiveLine,
            ..
        }
    )));
}

async fn ask(s: &Session, q: Query) -> Value {
    tokio::time::timeout(Duration::from_secs(20), s.query(q))
        .await
        .expect("query answered in time")
        .expect("query reply")
}

#[tokio::test]
async fn completion_sees_the_session() {
    let (_k, s) = session().await;
    run(
        &s,
        "spindle_fn_zz() { :; }; alias spindle_al_zz=ls; SPINDLE_VAR_ZZ=1; false",
    )
    .await;
    let r = ask(
        &s,
        Query::Complete {
            code: "spindle_fn".into(),
            cursor_pos: 10,
        },
    )
    .await;
    assert_eq!(
        r,
        json!({"matches":["spindle_fn_zz"],"cursor_start":0,"cursor_end":10,"metadata":{}})
    );
    let r = ask(
        &s,
        Query::Complete {
            code: "x; spindle_al".into(),
            cursor_pos: 13,
        },
    )
    .await;
    assert_eq!(r["matches"], json!(["spindle_al_zz"]));
    let code = "echo 中文 $SPINDLE_VAR";
    let r = ask(
        &s,
        Query::Complete {
            code: code.into(),
            cursor_pos: code.chars().count(),
        },
    )
    .await;
    assert_eq!(r["matches"], json!(["$SPINDLE_VAR_ZZ"]));
    assert_eq!(
        (r["cursor_start"].clone(), r["cursor_end"].clone()),
        (json!(8), json!(20))
    );
    let r = ask(
        &s,
        Query::Complete {
            code: "ls /us".into(),
            cursor_pos: 6,
        },
    )
    .await;
    assert_eq!(r["matches"], json!(["/usr/"]));
    // Queries leave `$?` alone.
    assert_eq!(stdout(&run(&s, "echo $?").await), "1\n");
}

#[tokio::test]
async fn is_complete_and_inspect() {
    let (_k, s) = session().await;
    for (code, want) in [
        ("echo hi", "complete"),
        ("if true; then", "incomplete"),
        ("echo \"abc", "incomplete"),
        ("cat <<EOF\nhello", "incomplete"),
        ("for x in 1 2; do", "incomplete"),
        ("echo a \\", "incomplete"),
        ("echo )", "invalid"),
        ("fi", "invalid"),
    ] {
        let r = ask(&s, Query::IsComplete { code: code.into() }).await;
        assert_eq!(r["status"], json!(want), "{code:?}: {r}");
    }
    let r = ask(
        &s,
        Query::Inspect {
            code: "cd /tmp".into(),
            cursor_pos: 1,
            detail_level: 0,
        },
    )
    .await;
    assert_eq!(r["found"], json!(true));
    let text = r["data"]["text/plain"].as_str().unwrap();
    assert!(text.contains("cd is a shell builtin"), "{text}");
    let r = ask(
        &s,
        Query::Inspect {
            code: "no_such_thing_zz".into(),
            cursor_pos: 3,
            detail_level: 0,
        },
    )
    .await;
    assert_eq!(r["found"], json!(false));
}

#[tokio::test]
async fn user_shell_settings_do_not_break_the_protocol() {
    let (_k, s) = session().await;
    // A cell that replaces PROMPT_COMMAND and PS1 (as sourcing a bashrc would), and turns on
    // errexit, nounset and noclobber.
    let c = run(&s, "kept=1; PROMPT_COMMAND=':'; PS1='$ '; set -euC").await;
    assert_eq!(finished(&c).0, Outcome::Ok, "{c:#?}");
    // Queries whose commands fail inside must not trip errexit.
    let r = ask(
        &s,
        Query::Complete {
            code: "no_such_prefix_zz".into(),
            cursor_pos: 17,
        },
    )
    .await;
    assert_eq!(r["matches"], json!([]));
    let c = run(&s, "echo \"still $kept\"").await;
    assert_eq!(stdout(&c), "still 1\n");
    let c = run(&s, "set +eu; echo $((1+1))").await;
    assert_eq!(stdout(&c), "2\n");
    // No prompt text leaks onto the terminal between executions.
    let c = run(&s, "echo done").await;
    assert_eq!(stdout(&c), "done\n");
}
