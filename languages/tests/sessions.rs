//! Kernel behaviour that does not depend on one language: queues, caps, timeouts, dropped
//! streams, dying processes, reaping, the registry, watchers and bad input. Real interpreters
//! throughout.

mod common;
use common::{run_with, status as finished, stdout};

use std::time::{Duration, Instant};

use futures::StreamExt;
use spindle_kernel::{ExecOptions, Kernel, KernelConfig, KernelError, Session, SessionSpec};
use spindle_languages::Interpreters;
use spindle_protocol::{Body, Chunk, Outcome};

fn interpreters() -> Interpreters {
    Interpreters::default()
}

async fn session(kernel: &Kernel, lang: &str) -> Session {
    let language = spindle_languages::language(lang, &interpreters()).expect("language");
    kernel
        .create_session(SessionSpec::new(language))
        .await
        .expect("session starts")
}

fn errors(chunks: &[Chunk]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Error { content: Some(e) } => Some(e.name.clone()),
            _ => None,
        })
        .collect()
}

fn notices(chunks: &[Chunk]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Notice { content: Some(n) } => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; "gone" means reaped as well as dead.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn blocks_open_and_close_and_seq_has_no_gaps() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "bash").await;
    let chunks = run_with(
        &s,
        "echo out; echo err >&2; echo out2",
        ExecOptions::default(),
    )
    .await;
    let mut open: Option<&Body> = None;
    for c in &chunks {
        if c.start {
            assert!(open.is_none(), "blocks nest: {chunks:#?}");
            open = Some(&c.body);
        } else if c.end {
            assert!(open.is_some(), "end without start: {chunks:#?}");
            open = None;
        }
    }
    assert!(open.is_none());
    for w in chunks.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert!(matches!(chunks[0].body, Body::Status { .. }));
    assert!(chunks.iter().all(|c| c.session == s.id()));
}

#[tokio::test]
async fn queued_executions_run_in_order() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "bash").await;
    let a = s
        .execute("sleep 0.2; echo first", ExecOptions::default())
        .unwrap();
    let b = s.execute("echo second", ExecOptions::default()).unwrap();
    let (a, b) = tokio::join!(a.collect::<Vec<_>>(), b.collect::<Vec<_>>());
    assert_eq!(stdout(&a), "first\n");
    assert_eq!(stdout(&b), "second\n");
    assert!(a.last().unwrap().seq < b[0].seq);
}

#[tokio::test]
async fn output_cap_keeps_head_and_tail_in_bounded_memory() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    let code = "import sys\nsys.stdout.write('HEAD')\nfor _ in range(200):\n    sys.stdout.write('x' * 1_000_000)\nsys.stdout.write('TAIL')\n";
    let chunks = run_with(
        &s,
        code,
        ExecOptions {
            output_cap: Some(1000),
            ..ExecOptions::default()
        },
    )
    .await;
    let out = stdout(&chunks);
    assert!(out.starts_with("HEAD"), "{}", &out[..20.min(out.len())]);
    assert!(out.ends_with("TAIL"));
    assert_eq!(out.len(), 1000);
    let status = finished(&chunks);
    assert_eq!(status.bytes_dropped, 200_000_008 - 1000);
    assert!(notices(&chunks).iter().any(|n| n.contains("dropped")));
}

#[tokio::test]
async fn timeout_interrupts_and_the_session_keeps_its_state() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    run_with(&s, "kept = 41", ExecOptions::default()).await;
    let started = Instant::now();
    let chunks = run_with(
        &s,
        "import time\ntime.sleep(60)",
        ExecOptions {
            timeout: Some(Duration::from_millis(500)),
            ..ExecOptions::default()
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(finished(&chunks).outcome, Some(Outcome::Timeout));
    assert!(errors(&chunks).contains(&"TimeoutError".to_string()));
    let after = run_with(&s, "print(kept + 1)", ExecOptions::default()).await;
    assert_eq!(stdout(&after), "42\n");
}

#[tokio::test]
async fn timeout_kills_what_ignores_the_interrupt_and_restarts() {
    let config = KernelConfig {
        interrupt_grace: Duration::from_millis(300),
        ..common::config()
    };
    let kernel = Kernel::new(config);
    let s = session(&kernel, "python").await;
    let pid = s.info().pid.unwrap();
    let chunks = run_with(
        &s,
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
        ExecOptions {
            // Long enough for SIG_IGN to be set first even on a loaded machine (at 300 ms the
            // interrupt could land before it, and the cell ended as plain Interrupted).
            timeout: Some(Duration::from_millis(1500)),
            ..ExecOptions::default()
        },
    )
    .await;
    assert_eq!(finished(&chunks).outcome, Some(Outcome::Timeout));
    assert!(errors(&chunks).contains(&"TimeoutError".to_string()));
    assert!(notices(&chunks).iter().any(|n| n.contains("restarted")));
    let new_pid = s.info().pid.unwrap();
    assert_ne!(pid, new_pid);
    assert!(!pid_alive(pid), "old process {pid} was not reaped");
    assert_eq!(
        stdout(&run_with(&s, "print('alive')", ExecOptions::default()).await),
        "alive\n"
    );
}

/// An interrupt pressed again and again (here every millisecond for 300 ms) must end the cell
/// once and leave a usable session in every language: a second SIGINT can land while the
/// bootstrap is reporting the end of the cell. Regression: bash lost its `done` that way, and
/// the cell never ended.
#[tokio::test]
async fn interrupt_pressed_many_times_ends_the_cell_once() {
    let kernel = Kernel::new(common::config());
    for (lang, code, check) in [
        ("python", "import time\ntime.sleep(100)", "print('alive')"),
        (
            "node",
            "await new Promise(r => setTimeout(r, 100000))",
            "console.log('alive')",
        ),
        ("bash", "sleep 100", "echo alive"),
        // A read of the terminal: an input request is out when the interrupts come.
        ("bash", "read -p 'wait: ' x", "echo alive"),
    ] {
        let s = session(&kernel, lang).await;
        for round in 0..5 {
            let exec = s.execute(code, ExecOptions::default()).expect("execute");
            let s2 = s.clone();
            let presser = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                for _ in 0..300 {
                    let _ = s2.interrupt();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            let chunks = tokio::time::timeout(Duration::from_secs(30), exec.collect::<Vec<_>>())
                .await
                .unwrap_or_else(|_| panic!("{lang} round {round}: the cell never ended"));
            presser.await.unwrap();
            assert_eq!(
                finished(&chunks).outcome,
                Some(Outcome::Interrupted),
                "{lang} round {round}: {chunks:#?}"
            );
            let after = run_with(&s, check, ExecOptions::default()).await;
            assert_eq!(
                stdout(&after),
                "alive\n",
                "{lang} round {round}: {after:#?}"
            );
        }
    }
}

#[tokio::test]
async fn dropping_the_stream_interrupts_the_execution() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    run_with(&s, "kept = 'yes'", ExecOptions::default()).await;
    let mut exec = s
        .execute("import time\ntime.sleep(60)", ExecOptions::default())
        .unwrap();
    let first = exec.next().await.unwrap();
    assert!(matches!(first.body, Body::Status { .. }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(exec);
    let started = Instant::now();
    let chunks = run_with(&s, "print(kept)", ExecOptions::default()).await;
    assert_eq!(stdout(&chunks), "yes\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_killed_process_gives_an_error_and_a_fresh_process() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    let pid = s.info().pid.unwrap();
    let exec = s
        .execute("import time\ntime.sleep(60)", ExecOptions::default())
        .unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // SAFETY: plain kill(2) on the session's own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let chunks = tokio::time::timeout(Duration::from_secs(30), exec.collect::<Vec<_>>())
        .await
        .unwrap();
    killer.await.unwrap();
    assert_eq!(finished(&chunks).outcome, Some(Outcome::Died));
    assert!(
        errors(&chunks).contains(&"ProcessDied".to_string()),
        "{chunks:#?}"
    );
    assert!(notices(&chunks).iter().any(|n| n.contains("fresh process")));
    let new_pid = s.info().pid.unwrap();
    assert_ne!(new_pid, pid);
    assert!(!pid_alive(pid));
    assert_eq!(
        stdout(&run_with(&s, "print(1)", ExecOptions::default()).await),
        "1\n"
    );
}

#[tokio::test]
async fn bad_code_is_refused_with_a_clear_error() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "bash").await;
    assert!(matches!(
        s.execute("  \n", ExecOptions::default()),
        Err(KernelError::EmptyCode)
    ));
    match s.execute("echo a\0b", ExecOptions::default()) {
        Err(KernelError::NulInCode(6)) => {}
        other => panic!("{other:?}"),
    }
    // The session is unharmed.
    assert_eq!(
        stdout(&run_with(&s, "echo ok", ExecOptions::default()).await),
        "ok\n"
    );
}

#[tokio::test]
async fn unknown_language_and_missing_interpreter_are_clear_errors() {
    let err = spindle_languages::language("cobol", &interpreters()).unwrap_err();
    assert!(err.to_string().contains("python, bash and node"), "{err}");
    let missing = Interpreters {
        python: Some("/nonexistent/python3".into()),
        ..Interpreters::default()
    };
    let kernel = Kernel::new(common::config());
    let language = spindle_languages::language("python", &missing).unwrap();
    let err = kernel
        .create_session(SessionSpec::new(language))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("SPINDLE_PYTHON"), "{err}");
}

#[tokio::test]
async fn registry_names_lists_and_closes_sessions_and_reaps_children() {
    let kernel = Kernel::new(common::config());
    let language = spindle_languages::language("bash", &interpreters()).unwrap();
    let mut spec = SessionSpec::new(language.clone());
    spec.name = Some("worker".into());
    let s = kernel.create_session(spec.clone()).await.unwrap();
    assert!(matches!(
        kernel.create_session(spec).await,
        Err(KernelError::NameTaken(_))
    ));
    assert_eq!(kernel.get("worker").unwrap().id(), s.id());
    assert_eq!(kernel.get(s.id()).unwrap().name(), "worker");
    assert_eq!(kernel.list().len(), 1);
    // A background job in the session must die with it.
    let chunks = run_with(&s, "sleep 300 & echo $!", ExecOptions::default()).await;
    let job: u32 = stdout(&chunks).trim().parse().unwrap();
    let pid = s.info().pid.unwrap();
    kernel.close_session("worker").await.unwrap();
    assert!(matches!(
        kernel.get("worker"),
        Err(KernelError::UnknownSession(_))
    ));
    assert!(matches!(
        s.execute("echo", ExecOptions::default()),
        Err(KernelError::Closed(_))
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while (pid_alive(pid) || (!common::sandboxed() && pid_alive(job))) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pid_alive(pid), "session process {pid} left behind");
    // The job was reparented to init and is reaped there; it must at least be dead. (In a
    // sandbox `$!` is a pid of the container's namespace; the container is gone with its init.)
    if !common::sandboxed() {
        let state = std::fs::read_to_string(format!("/proc/{job}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "job {job} still running: {state}"
        );
    }
}

#[tokio::test]
async fn watchers_see_every_execution() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "bash").await;
    let mut watch = s.subscribe();
    let chunks = run_with(&s, "echo watched", ExecOptions::default()).await;
    let mut seen = Vec::new();
    while seen.len() < chunks.len() {
        seen.push(
            tokio::time::timeout(Duration::from_secs(5), watch.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(seen, chunks);
}

#[tokio::test]
async fn restart_gives_a_fresh_process_and_aborts_nothing_idle() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    run_with(&s, "x = 1", ExecOptions::default()).await;
    let pid = s.info().pid.unwrap();
    s.restart().await.unwrap();
    assert_ne!(s.info().pid.unwrap(), pid);
    assert!(!pid_alive(pid));
    let chunks = run_with(&s, "print('x' in globals())", ExecOptions::default()).await;
    assert_eq!(stdout(&chunks), "False\n");
    assert_eq!(s.info().starts, 2);
}

#[tokio::test]
async fn input_reply_without_a_request_is_an_error() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    assert!(matches!(
        s.input_reply("nobody asked"),
        Err(KernelError::NoPendingInput(_))
    ));
}

#[tokio::test]
async fn images_get_their_size_and_a_downscaled_copy() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    // A valid 300x100 PNG written by hand with zlib, so no imaging library is needed.
    let code = r#"
import zlib, struct, base64
def png(w, h):
    raw = b''.join(b'\x00' + b'\x10\x80\xf0' * w for _ in range(h))
    def chunk(t, d):
        return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')
display({'image/png': base64.b64encode(png(300, 100)).decode(), 'text/plain': '<png>'}, raw=True)
"#;
    let chunks = run_with(
        &s,
        code,
        ExecOptions {
            image_max_dim: Some(60),
            ..ExecOptions::default()
        },
    )
    .await;
    let image = chunks
        .iter()
        .find_map(|c| match &c.body {
            Body::Image {
                content: Some(r), ..
            } => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no image in {chunks:#?}"));
    assert_eq!((image.width, image.height), (Some(300), Some(100)));
    let small = image.downscaled.expect("downscaled copy");
    assert_eq!((small.width, small.height), (60, 20));
    assert!(image.bundle.contains_key("text/plain"));
}

// Regressions found in review; each test is named after the defect it pins down.

#[tokio::test]
async fn regression_unread_execution_does_not_block_restart_or_close() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    let unread = s
        .execute(
            "for i in range(200000):\n    print(i, flush=True)",
            ExecOptions::default(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(Duration::from_secs(10), s.restart())
        .await
        .expect("restart is not wedged by a consumer that stopped reading")
        .unwrap();
    assert_eq!(
        stdout(&run_with(&s, "print('ok')", ExecOptions::default()).await),
        "ok\n"
    );
    tokio::time::timeout(Duration::from_secs(10), kernel.close_session(s.id()))
        .await
        .expect("close is not wedged")
        .unwrap();
    drop(unread);
}

#[tokio::test]
async fn regression_cap_keeps_order_across_a_utf8_cut() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "bash").await;
    // Cap 5: a 3-byte head whose cut falls inside "é", and a 2-byte tail.
    let chunks = run_with(
        &s,
        "printf 'ab\\xc3\\xa9'; sleep 0.3; printf c",
        ExecOptions {
            output_cap: Some(5),
            ..ExecOptions::default()
        },
    )
    .await;
    assert_eq!(stdout(&chunks), "abc");
    assert_eq!(finished(&chunks).bytes_dropped, 2);
}

#[tokio::test]
async fn regression_capped_tail_precedes_a_later_error() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "python").await;
    let chunks = run_with(
        &s,
        "print('x' * 300 + 'END')\n1/0",
        ExecOptions {
            output_cap: Some(100),
            ..ExecOptions::default()
        },
    )
    .await;
    let end_at = chunks
        .iter()
        .position(
            |c| matches!(&c.body, Body::Console { content: Some(t), .. } if t.contains("END")),
        )
        .expect("tail kept");
    let error_at = chunks
        .iter()
        .position(|c| matches!(&c.body, Body::Error { content: Some(_) }))
        .expect("error");
    assert!(end_at < error_at, "{chunks:#?}");
}

#[tokio::test]
async fn regression_huge_timeout_does_not_panic_the_session() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "bash").await;
    let chunks = run_with(
        &s,
        "echo fine",
        ExecOptions {
            timeout: Some(Duration::MAX),
            ..ExecOptions::default()
        },
    )
    .await;
    assert_eq!(stdout(&chunks), "fine\n");
    assert_eq!(finished(&chunks).outcome, Some(Outcome::Ok));
}

#[tokio::test]
async fn regression_dropping_every_handle_ends_the_process() {
    let kernel = Kernel::new(common::config());
    let language = spindle_languages::language("bash", &interpreters()).unwrap();
    let s = kernel
        .start_detached(SessionSpec::new(language))
        .await
        .unwrap();
    let pid = s.info().pid.unwrap();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pid_alive(pid), "process {pid} outlived every handle");
}

/// What an execute sent while `close` runs must get: either a refusal that says the session is
/// closed, or an execution that ends with its `finished` chunk (run, or aborted by the close).
async fn execute_during_close(s: &Session) -> Result<Vec<Chunk>, KernelError> {
    let exec = s.execute("echo hi", ExecOptions::default())?;
    let chunks = tokio::time::timeout(Duration::from_secs(10), exec.collect::<Vec<_>>())
        .await
        .expect("an accepted execution is answered");
    let last = chunks.last().expect("at least the finished chunk");
    assert!(
        last.is_finished(),
        "an accepted execution ends with `finished`: {chunks:#?}"
    );
    match finished(&chunks).outcome {
        Some(Outcome::Ok) => assert_eq!(stdout(&chunks), "hi\n", "{chunks:#?}"),
        Some(Outcome::Aborted) => {}
        other => panic!("an execution racing close ran or was aborted, not {other:?}"),
    }
    Ok(chunks)
}

#[tokio::test]
async fn regression_execute_racing_close_is_always_answered() {
    let kernel = Kernel::new(common::config());
    // Before the close: accepted and run. After it: refused as closed.
    let s = session(&kernel, "bash").await;
    let ran = execute_during_close(&s)
        .await
        .expect("an open session runs code");
    assert_eq!(finished(&ran).outcome, Some(Outcome::Ok));
    s.close().await;
    match execute_during_close(&s).await {
        Err(KernelError::Closed(id)) => assert_eq!(id, s.id()),
        other => panic!("execute after close is refused as closed, not {other:?}"),
    }
    // During it, at several points of the close: one of the two, never a hang or silence.
    for delay_us in [0, 200, 1000, 3000, 5000, 10000] {
        let s = session(&kernel, "bash").await;
        let closer = {
            let s = s.clone();
            tokio::spawn(async move { s.close().await })
        };
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        match execute_during_close(&s).await {
            Ok(_) => {}
            Err(KernelError::Closed(id)) => assert_eq!(id, s.id()),
            Err(other) => panic!("execute racing close failed with {other:?}"),
        }
        closer.await.unwrap();
    }
}

#[tokio::test]
async fn regression_split_utf8_stays_in_its_execution() {
    let kernel = Kernel::new(common::config());
    let s = session(&kernel, "bash").await;
    let first = run_with(&s, "printf 'a\\xc3'", ExecOptions::default()).await;
    let second = run_with(&s, "printf '\\xa9b'", ExecOptions::default()).await;
    assert_eq!(stdout(&first), "a\u{FFFD}");
    assert_eq!(stdout(&second), "\u{FFFD}b");
}
