//! Terminal prompts become input requests: a program of the session waiting in a read of its
//! terminal (bash's `read`, a subprocess's `input()`) is noticed by the kernel, which emits an
//! `input_request` with the prompt the program printed and writes the answer to the terminal.
//! Under `allow_stdin: false` the program gets end-of-file instead. Real bash, python3 and node.

mod common;
use common::{outcome, run, run_with, stderr, stdout, LIMIT};

use std::time::Duration;

use futures::StreamExt;
use spindle_kernel::{ExecOptions, Kernel, Session, SessionSpec};
use spindle_protocol::{Body, Chunk, InputRequest, Outcome};

async fn session(lang: &str) -> (Kernel, Session) {
    let kernel = Kernel::new(common::config());
    let lang = spindle_languages::language(lang, &Default::default()).expect("language");
    let mut spec = SessionSpec::new(lang);
    spec.cwd = Some(std::env::temp_dir());
    let session = kernel.create_session(spec).await.expect("session");
    (kernel, session)
}

/// Run `code`, answering each input request with the next of `answers` (when there are none
/// left the request stays unanswered). Returns every chunk and the requests seen.
async fn converse(
    s: &Session,
    code: &str,
    opts: ExecOptions,
    answers: &[&str],
) -> (Vec<Chunk>, Vec<InputRequest>) {
    let mut exec = s.execute(code, opts).expect("execute accepted");
    let mut chunks = Vec::new();
    let mut asked = Vec::new();
    let mut answers = answers.iter();
    let all = async {
        while let Some(c) = exec.next().await {
            if let Body::InputRequest { content: Some(r) } = &c.body {
                asked.push(r.clone());
                if let Some(a) = answers.next() {
                    s.input_reply(a).expect("the answer is delivered");
                }
            }
            chunks.push(c);
        }
    };
    tokio::time::timeout(LIMIT, all)
        .await
        .unwrap_or_else(|_| panic!("{code:?} did not finish"));
    (chunks, asked)
}

fn result_text(chunks: &[Chunk]) -> Option<String> {
    chunks.iter().find_map(|c| match &c.body {
        Body::Result { content: Some(r) } => r
            .bundle
            .get("text/plain")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        _ => None,
    })
}

fn prompts(asked: &[InputRequest]) -> Vec<(&str, bool)> {
    asked
        .iter()
        .map(|r| (r.prompt.as_str(), r.password))
        .collect()
}

fn notices(chunks: &[Chunk]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Notice { content: Some(t) } => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn no_stdin() -> ExecOptions {
    ExecOptions {
        allow_stdin: false,
        ..ExecOptions::default()
    }
}

#[tokio::test]
async fn bash_read_p_asks_with_its_prompt_and_gets_the_answer() {
    let (_k, s) = session("bash").await;
    let (c, asked) = converse(
        &s,
        "echo before; read -p 'Name: ' n; echo \"hi $n\"",
        ExecOptions::default(),
        &["Ada"],
    )
    .await;
    assert_eq!(prompts(&asked), [("Name: ", false)], "{c:#?}");
    assert_eq!(stdout(&c), "before\nhi Ada\n");
    assert_eq!(outcome(&c), Outcome::Ok);
    if common::sandboxed() {
        // A sandbox's terminal output comes through the engine and may arrive after its
        // stderr: the prompt may then stay in the console too, and "before" come late.
        return;
    }
    // The prompt moved into the request: it is not in the console stream as well.
    assert_eq!(stderr(&c), "", "{c:#?}");
    // The request comes after what was printed before it, and before what came after.
    let at = |pred: &dyn Fn(&Body) -> bool| c.iter().position(|x| pred(&x.body)).unwrap();
    let before =
        at(&|b| matches!(b, Body::Console { content: Some(t), .. } if t.contains("before")));
    let req = at(&|b| matches!(b, Body::InputRequest { content: Some(_) }));
    let after =
        at(&|b| matches!(b, Body::Console { content: Some(t), .. } if t.contains("hi Ada")));
    assert!(before < req && req < after, "{c:#?}");
}

#[tokio::test]
async fn bash_read_s_is_a_password_prompt() {
    let (_k, s) = session("bash").await;
    let (c, asked) = converse(
        &s,
        "read -s -p 'Password: ' pw; echo; echo \"length ${#pw}\"",
        ExecOptions::default(),
        &["s3cret"],
    )
    .await;
    assert_eq!(prompts(&asked), [("Password: ", true)], "{c:#?}");
    assert_eq!(stdout(&c), "\nlength 6\n");
    // The next plain read is no password read: the terminal's settings came back.
    let (c, asked) = converse(
        &s,
        "read -p 'User: ' u; echo $u",
        ExecOptions::default(),
        &["bo"],
    )
    .await;
    assert_eq!(prompts(&asked), [("User: ", false)], "{c:#?}");
    assert_eq!(stdout(&c), "bo\n");
}

#[tokio::test]
async fn a_subprocess_prompt_from_bash_is_asked() {
    let (_k, s) = session("bash").await;
    let (c, asked) = converse(
        &s,
        "python3 -c 'print(\"answer:\", input(\"ok? \"))'",
        ExecOptions::default(),
        &["yes"],
    )
    .await;
    assert_eq!(prompts(&asked), [("ok? ", false)], "{c:#?}");
    assert_eq!(stdout(&c), "answer: yes\n");
    assert_eq!(outcome(&c), Outcome::Ok);
}

#[tokio::test]
async fn two_prompts_in_a_row_and_a_silent_read() {
    let (_k, s) = session("bash").await;
    let (c, asked) = converse(
        &s,
        "read -p 'a? ' a; read -p 'b? ' b; read c; echo \"$a-$b-$c\"",
        ExecOptions::default(),
        &["1", "2", "3"],
    )
    .await;
    assert_eq!(
        prompts(&asked),
        [("a? ", false), ("b? ", false), ("", false)],
        "{c:#?}"
    );
    assert_eq!(stdout(&c), "1-2-3\n");
}

#[tokio::test]
async fn allow_stdin_false_gives_end_of_file_not_a_hang() {
    let (_k, s) = session("bash").await;
    // Reading /dev/tty reaches the terminal even though the cell's stdin is /dev/null.
    let (c, asked) = converse(
        &s,
        "read -p 'x: ' v </dev/tty; echo \"status $?\"",
        no_stdin(),
        &[],
    )
    .await;
    assert!(asked.is_empty(), "{c:#?}");
    assert_eq!(stdout(&c), "status 1\n", "{c:#?}");
    assert!(
        notices(&c)
            .iter()
            .any(|n| n.contains("allow_stdin is false")),
        "{c:#?}"
    );
    // The session is fine afterwards.
    assert_eq!(stdout(&run(&s, "echo ok").await), "ok\n");
}

#[tokio::test]
async fn a_late_answer_is_discarded_with_a_notice_never_typed_as_a_command() {
    let (_k, s) = session("bash").await;
    let mut watch = s.subscribe();
    let (c, asked) = converse(
        &s,
        "read -t 1 -p 'quick: ' x; echo \"gave up $?\"",
        ExecOptions::default(),
        &[],
    )
    .await;
    assert_eq!(prompts(&asked), [("quick: ", false)], "{c:#?}");
    assert!(stdout(&c).starts_with("gave up "), "{c:#?}");
    // The execution is over: the answer must not become the shell's next command line.
    let e = s.input_reply("echo INJECTED").unwrap_err();
    assert!(e.to_string().contains("no input request"), "{e}");
    let note = tokio::time::timeout(LIMIT, async {
        loop {
            let c = watch.recv().await.expect("watching");
            if let Body::Notice { content: Some(t) } = c.body {
                if t.contains("discarded") {
                    return t;
                }
            }
        }
    })
    .await
    .expect("a notice");
    assert!(note.contains("quick:"), "{note}");
    let c = run(&s, "echo next").await;
    assert_eq!(stdout(&c), "next\n", "{c:#?}");
}

#[tokio::test]
async fn an_answer_after_the_program_stopped_waiting_is_discarded_in_the_execution() {
    let (_k, s) = session("bash").await;
    let mut exec = s
        .execute(
            "read -t 1 -p 'soon: ' x; echo \"read $?\"; sleep 2; echo end",
            ExecOptions::default(),
        )
        .unwrap();
    let mut chunks = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(c) = exec.next().await {
            let gave_up =
                matches!(&c.body, Body::Console { content: Some(t), .. } if t.contains("read "));
            chunks.push(c);
            if gave_up {
                let e = s.input_reply("too late").unwrap_err();
                assert!(e.to_string().contains("no input request"), "{e}");
            }
        }
    })
    .await
    .expect("finished");
    assert!(
        notices(&chunks)
            .iter()
            .any(|n| n.contains("no longer waits") && n.contains("soon:")),
        "{chunks:#?}"
    );
    assert_eq!(stdout(&chunks), "read 142\nend\n", "{chunks:#?}");
}

#[tokio::test]
async fn a_partial_line_that_is_no_prompt_is_kept_in_place() {
    let (_k, s) = session("bash").await;
    let (c, asked) = converse(
        &s,
        "printf 'working...'; sleep 0.5; echo ' done'; printf 'no newline'",
        ExecOptions::default(),
        &[],
    )
    .await;
    assert!(asked.is_empty(), "{c:#?}");
    assert_eq!(stdout(&c), "working... done\nno newline");
}

#[tokio::test]
async fn interrupting_a_terminal_prompt_ends_it() {
    let (_k, s) = session("bash").await;
    let mut exec = s
        .execute("read -p 'wait: ' x", ExecOptions::default())
        .unwrap();
    let mut chunks = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(c) = exec.next().await {
            if matches!(c.body, Body::InputRequest { .. }) {
                s.interrupt().unwrap();
            }
            chunks.push(c);
        }
    })
    .await
    .expect("finished");
    assert_eq!(outcome(&chunks), Outcome::Interrupted, "{chunks:#?}");
    assert_eq!(stdout(&run(&s, "echo alive").await), "alive\n");
}

#[tokio::test]
async fn python_input_is_asked_once_and_a_subprocess_prompt_too() {
    let (_k, s) = session("python").await;
    // The bootstrap's own input(): one request, through the bootstrap.
    let (c, asked) = converse(
        &s,
        "print('hi', input('Name: '))",
        ExecOptions::default(),
        &["Ada"],
    )
    .await;
    assert_eq!(prompts(&asked), [("Name: ", false)], "{c:#?}");
    assert_eq!(stdout(&c), "hi Ada\n");
    // A subprocess reading the terminal: asked by the kernel.
    let code = "import subprocess\n\
                r = subprocess.run(['bash', '-c', 'read -p \"sub? \" a; echo got $a'])\n\
                print('rc', r.returncode)";
    let (c, asked) = converse(&s, code, ExecOptions::default(), &["it"]).await;
    assert_eq!(prompts(&asked), [("sub? ", false)], "{c:#?}");
    assert_eq!(stdout(&c), "got it\nrc 0\n");
    // Under allow_stdin false: end-of-file.
    let code = "import subprocess\n\
                r = subprocess.run(['bash', '-c', 'read a </dev/tty; echo status $?'])";
    let (c, asked) = converse(&s, code, no_stdin(), &[]).await;
    assert!(asked.is_empty(), "{c:#?}");
    assert_eq!(stdout(&c), "status 1\n", "{c:#?}");
}

#[tokio::test]
async fn node_prompt_and_confirm() {
    let (_k, s) = session("node").await;
    let (c, asked) = converse(
        &s,
        "const a = await prompt('Name?', 'Ada'); const b = await confirm('Sure?'); \
         const d = await prompt('City?'); [a, b, d]",
        ExecOptions::default(),
        &["", "Yes", "Oslo"],
    )
    .await;
    assert_eq!(
        prompts(&asked),
        [
            ("Name? [Ada] ", false),
            ("Sure? [y/N] ", false),
            ("City? ", false)
        ],
        "{c:#?}"
    );
    assert_eq!(
        result_text(&c).as_deref(),
        Some("[ 'Ada', true, 'Oslo' ]"),
        "{c:#?}"
    );
    let (c, _) = converse(
        &s,
        "await confirm('again?')",
        ExecOptions::default(),
        &["n"],
    )
    .await;
    assert_eq!(result_text(&c).as_deref(), Some("false"), "{c:#?}");
    // Without stdin: no request, null and false.
    let (c, asked) = converse(
        &s,
        "[await prompt('x'), await confirm('y')]",
        no_stdin(),
        &[],
    )
    .await;
    assert!(asked.is_empty(), "{c:#?}");
    assert_eq!(
        result_text(&c).as_deref(),
        Some("[ null, false ]"),
        "{c:#?}"
    );
}

#[tokio::test]
async fn node_subprocess_prompt_is_asked() {
    let (_k, s) = session("node").await;
    let code = "const r = require('child_process').spawnSync('bash', \
                ['-c', 'read -p \"n? \" x; echo got $x'], { stdio: 'inherit' }); r.status";
    let (c, asked) = converse(&s, code, ExecOptions::default(), &["7"]).await;
    assert_eq!(prompts(&asked), [("n? ", false)], "{c:#?}");
    assert_eq!(stdout(&c), "got 7\n");
    assert_eq!(result_text(&c).as_deref(), Some("0"), "{c:#?}");
}

#[tokio::test]
async fn streaming_output_is_not_held_back() {
    let (_k, s) = session("bash").await;
    // Lines printed every 200 ms arrive as they are printed, each well before the next.
    let mut exec = s
        .execute(
            "for i in 1 2 3; do echo line$i; sleep 0.2; done",
            ExecOptions::default(),
        )
        .unwrap();
    let start = std::time::Instant::now();
    let mut times = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(c) = exec.next().await {
            if let Body::Console {
                content: Some(t), ..
            } = &c.body
            {
                for _ in t.matches("line") {
                    times.push(start.elapsed());
                }
            }
        }
    })
    .await
    .expect("finished");
    assert_eq!(times.len(), 3);
    assert!(
        times[1] - times[0] > Duration::from_millis(100),
        "lines were batched: {times:?}"
    );
    let c = run_with(&s, "seq 1 100000 | tail -n 1", ExecOptions::default()).await;
    assert_eq!(stdout(&c), "100000\n");
}

#[tokio::test]
async fn quiet_waits_that_read_no_terminal_ask_nothing() {
    for (lang, code) in [
        ("bash", "sleep 1; echo slept"),
        ("python", "import time; time.sleep(1); print('slept')"),
        (
            "node",
            "await new Promise((r) => setTimeout(r, 1000)); console.log('slept')",
        ),
    ] {
        let (_k, s) = session(lang).await;
        let (c, asked) = converse(&s, code, ExecOptions::default(), &[]).await;
        assert!(asked.is_empty(), "{lang}: {c:#?}");
        assert_eq!(stdout(&c), "slept\n", "{lang}");
    }
}

#[tokio::test]
async fn readline_and_polling_readers_are_asked_too() {
    // bash's `read -e` waits in pselect through GNU readline, in raw mode.
    let (_k, s) = session("bash").await;
    let (c, asked) = converse(
        &s,
        "read -e -p 'edit: ' v; echo \"[$v]\"",
        ExecOptions::default(),
        &["typed"],
    )
    .await;
    assert_eq!(prompts(&asked).len(), 1, "{c:#?}");
    assert!(stdout(&c).ends_with("[typed]\n"), "{c:#?}");
    // Node's process.stdin waits in epoll.
    let (_k, s) = session("node").await;
    let (c, asked) = converse(
        &s,
        "process.stdout.write('say: '); \
         const d = await new Promise((r) => process.stdin.once('data', r)); \
         process.stdin.pause(); String(d).trim()",
        ExecOptions::default(),
        &["hello"],
    )
    .await;
    assert_eq!(prompts(&asked), [("say: ", false)], "{c:#?}");
    assert_eq!(result_text(&c).as_deref(), Some("'hello'"), "{c:#?}");
}

#[tokio::test]
async fn python_reading_its_own_stdin_is_asked_once() {
    let (_k, s) = session("python").await;
    let (c, asked) = converse(
        &s,
        "import sys\nprint('line:', sys.stdin.readline().strip())",
        ExecOptions::default(),
        &["from the terminal"],
    )
    .await;
    assert_eq!(prompts(&asked), [("", false)], "{c:#?}");
    assert_eq!(stdout(&c), "line: from the terminal\n");
}
