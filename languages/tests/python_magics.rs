//! IPython syntax in Python sessions (magics, `!cmd`, `obj?`, `get_ipython()`), driven through
//! real sessions twice: on the test virtualenv, where IPython is importable and its own
//! transformers and magics run, and on an interpreter without IPython, where the bootstrap's
//! built-in subset does.
//!
//! The interpreter without IPython is `$SPINDLE_TEST_NOIPY_PYTHON` (the README's test command
//! makes `.venv-noipy` for it), else `<repo>/.venv-noipy/bin/python`, else the test virtualenv
//! with `SPINDLE_IPYTHON=0`, which makes the bootstrap ignore an installed IPython.

mod common;
use common::{errors, outcome, run, stderr, stdout};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use spindle_kernel::{Kernel, Session, SessionSpec};
use spindle_languages::Interpreters;
use spindle_protocol::{Body, Chunk, ErrorContent, ImageFormat, Outcome, Rich};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// IPython importable: its transformers and magics.
    IPython,
    /// No IPython: the bootstrap's own subset.
    Builtin,
}

const MODES: [Mode; 2] = [Mode::IPython, Mode::Builtin];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
}

fn venv_python() -> PathBuf {
    let venv = root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    match std::env::var("SPINDLE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "these tests need a Python with IPython and matplotlib: run the README's test \
             command (it creates {}) or set SPINDLE_TEST_PYTHON=/path/to/python",
            venv.display()
        ),
    }
}

/// An interpreter without IPython, if there is one (else the venv with SPINDLE_IPYTHON=0).
fn noipy_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SPINDLE_TEST_NOIPY_PYTHON") {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let p = root().join(".venv-noipy/bin/python");
    p.exists().then_some(p)
}

async fn start(mode: Mode) -> (Kernel, Session) {
    let mut env = HashMap::new();
    let python = match mode {
        Mode::IPython => venv_python(),
        Mode::Builtin => noipy_python().unwrap_or_else(|| {
            env.insert("SPINDLE_IPYTHON".to_string(), "0".to_string());
            venv_python()
        }),
    };
    let interpreters = Interpreters {
        python: Some(python.to_string_lossy().into_owned()),
        ..Default::default()
    };
    let kernel = Kernel::new(common::config());
    let lang = spindle_languages::language("python", &interpreters).expect("python language");
    let mut spec = SessionSpec::new(lang);
    spec.env = env;
    let session = kernel
        .create_session(spec)
        .await
        .expect("python session starts");
    (kernel, session)
}

fn result_text(chunks: &[Chunk]) -> Option<String> {
    chunks.iter().find_map(|c| match &c.body {
        Body::Result { content: Some(r) } => r.bundle["text/plain"].as_str().map(str::to_string),
        _ => None,
    })
}

/// Every rich display (not results), with its chunk type name.
fn displays(chunks: &[Chunk]) -> Vec<(&'static str, Rich)> {
    chunks
        .iter()
        .filter_map(|c| match &c.body {
            Body::Image {
                content: Some(r), ..
            }
            | Body::Html { content: Some(r) }
            | Body::Markdown { content: Some(r) }
            | Body::Latex { content: Some(r) }
            | Body::Json { content: Some(r) }
            | Body::Text { content: Some(r) } => Some((c.type_name(), r.clone())),
            _ => None,
        })
        .collect()
}

/// Run `code`, which must succeed; the chunks.
async fn ok(s: &Session, mode: Mode, code: &str) -> Vec<Chunk> {
    let chunks = run(s, code).await;
    assert_eq!(
        outcome(&chunks),
        Outcome::Ok,
        "{mode:?}: {code:?} failed: {:#?}",
        errors(&chunks)
    );
    chunks
}

/// Run `code`, which must fail with one error; that error.
async fn fails(s: &Session, mode: Mode, code: &str) -> ErrorContent {
    let chunks = run(s, code).await;
    assert_eq!(outcome(&chunks), Outcome::Error, "{mode:?}: {code:?}");
    let errs = errors(&chunks);
    assert_eq!(errs.len(), 1, "{mode:?}: {code:?}: {errs:#?}");
    errs[0].clone()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "spindle-magics-{}-{name}-{}",
        std::process::id(),
        uuid_ish()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_runs_the_interpreter_it_was_given() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(&s, mode, "type(get_ipython()).__name__").await;
        let want = match mode {
            Mode::IPython => "'IPythonZMQShell'",
            Mode::Builtin => "'SpindleZMQShell'",
        };
        assert_eq!(result_text(&c).as_deref(), Some(want), "{mode:?}");
        if mode == Mode::Builtin && noipy_python().is_some() {
            let c = ok(
                &s,
                mode,
                "import importlib.util; importlib.util.find_spec('IPython') is None",
            )
            .await;
            assert_eq!(result_text(&c).as_deref(), Some("True"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_python_never_loads_the_magics() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        // `%`, `!` and `?` that are Python (or inside strings) are left alone.
        let code = "a = 7 % 3\nb = (1 != 2)\nc = '''\n%time\n!ls\nwhat?\n'''\nd = (a\n     % 2)\n\
                    e = 'why?'\nimport sys\n(a, b, d, e, '_spindle_magics' in sys.modules, \
                    'IPython' in sys.modules)";
        let c = ok(&s, mode, code).await;
        assert_eq!(
            result_text(&c).as_deref(),
            Some("(1, True, 1, 'why?', False, False)"),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn time_and_timeit() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(&s, mode, "%time 6 * 7").await;
        assert!(
            stdout(&c).contains("Wall time:"),
            "{mode:?}: {}",
            stdout(&c)
        );
        assert_eq!(result_text(&c).as_deref(), Some("42"), "{mode:?}");

        let c = ok(&s, mode, "%%time\nx = 2\nx * 3").await;
        assert!(stdout(&c).contains("CPU times:"), "{mode:?}");
        assert_eq!(result_text(&c).as_deref(), Some("6"), "{mode:?}");

        let c = ok(&s, mode, "%timeit -n 3 -r 2 sum(range(10))").await;
        let out = stdout(&c);
        assert!(
            out.contains("per loop") && out.contains("2 runs, 3 loops each"),
            "{mode:?}: {out}"
        );
        assert_eq!(result_text(&c), None);

        let c = ok(&s, mode, "%%timeit -n 2 -r 1 y = 5\ny * 2").await;
        assert!(stdout(&c).contains("1 run, 2 loops each"), "{mode:?}");

        let c = ok(
            &s,
            mode,
            "r = %timeit -o -q -n 1 -r 3 1 + 1\n(r.loops, r.repeat)",
        )
        .await;
        assert_eq!(result_text(&c).as_deref(), Some("(1, 3)"), "{mode:?}");
        assert!(stdout(&c).is_empty(), "{mode:?}: -q prints nothing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_commands_and_their_output() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(&s, mode, "!echo hi; echo oops >&2").await;
        // As ipykernel: a command's stderr comes with its stdout.
        assert_eq!(stdout(&c), "hi\noops\n", "{mode:?}");
        let c = ok(
            &s,
            mode,
            "name = 'world'\nlines = !echo a; echo $name\nlines",
        )
        .await;
        assert_eq!(
            result_text(&c).as_deref(),
            Some("['a', 'world']"),
            "{mode:?}"
        );
        let c = ok(&s, mode, "!exit 3\n_exit_code").await;
        assert_eq!(result_text(&c).as_deref(), Some("3"), "{mode:?}");
        let c = ok(&s, mode, "n = 4\n!echo {n * 2}").await;
        assert_eq!(stdout(&c), "8\n", "{mode:?}");
        // Indented, inside a block.
        let c = ok(&s, mode, "for i in range(2):\n    !echo loop\n").await;
        assert_eq!(stdout(&c), "loop\nloop\n", "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cd_pwd_env() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let dir = scratch("cd");
        let real = std::fs::canonicalize(&dir).unwrap();
        let c = ok(&s, mode, &format!("%cd {}", dir.display())).await;
        assert_eq!(stdout(&c).trim(), real.to_str().unwrap(), "{mode:?}");
        let c = ok(&s, mode, "%pwd").await;
        assert_eq!(
            result_text(&c),
            Some(format!("'{}'", real.display())),
            "{mode:?}"
        );
        let c = ok(
            &s,
            mode,
            "import os\n%cd /nonexistent-spindle-dir\nos.getcwd()",
        )
        .await;
        assert!(stdout(&c).contains("No such file or directory"), "{mode:?}");
        assert_eq!(
            result_text(&c),
            Some(format!("'{}'", real.display())),
            "{mode:?}"
        );
        let c = ok(&s, mode, "%env SPINDLE_MAGIC_T=1").await;
        assert_eq!(stdout(&c), "env: SPINDLE_MAGIC_T=1\n", "{mode:?}");
        let c = ok(&s, mode, "%env SPINDLE_MAGIC_T").await;
        assert_eq!(result_text(&c).as_deref(), Some("'1'"), "{mode:?}");
        let c = ok(&s, mode, "!echo $SPINDLE_MAGIC_T").await;
        assert_eq!(stdout(&c), "1\n", "{mode:?}: the shell sees it");
        let e = fails(&s, mode, "%env SPINDLE_NOT_SET_ANYWHERE").await;
        assert_eq!(e.name, "UsageError", "{mode:?}");
        assert!(e.value.contains("SPINDLE_NOT_SET_ANYWHERE"), "{mode:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bash_sh_and_writefile() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(&s, mode, "%%bash\necho out\necho err >&2").await;
        assert_eq!(stdout(&c), "out\n", "{mode:?}");
        assert_eq!(stderr(&c), "err\n", "{mode:?}");
        let c = ok(&s, mode, "%%sh\necho from sh").await;
        assert_eq!(stdout(&c), "from sh\n", "{mode:?}");
        let e = fails(&s, mode, "%%bash\nexit 3").await;
        assert_eq!(e.name, "CalledProcessError", "{mode:?}");
        let c = ok(&s, mode, "%%bash --out o\necho captured").await;
        assert!(stdout(&c).is_empty(), "{mode:?}");
        let c = ok(&s, mode, "o").await;
        assert_eq!(
            result_text(&c).as_deref(),
            Some("'captured\\n'"),
            "{mode:?}"
        );

        let dir = scratch("wf");
        let path = dir.join("out.txt");
        let c = ok(
            &s,
            mode,
            &format!("%%writefile {}\nline 1\nline 2", path.display()),
        )
        .await;
        assert_eq!(
            stdout(&c),
            format!("Writing {}\n", path.display()),
            "{mode:?}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 1\nline 2\n");
        let c = ok(
            &s,
            mode,
            &format!("%%writefile -a {}\nline 3", path.display()),
        )
        .await;
        assert_eq!(
            stdout(&c),
            format!("Appending to {}\n", path.display()),
            "{mode:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "line 1\nline 2\nline 3\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn html_markdown_and_capture() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(&s, mode, "%%html\n<b>bold</b>").await;
        let d = displays(&c);
        assert_eq!(d.len(), 1, "{mode:?}");
        assert_eq!(d[0].0, "html", "{mode:?}");
        assert_eq!(d[0].1.bundle["text/html"], "<b>bold</b>\n");
        let c = ok(&s, mode, "%%markdown\n# Title").await;
        let d = displays(&c);
        assert_eq!(d[0].0, "markdown", "{mode:?}");

        let c = ok(
            &s,
            mode,
            "%%capture cap\nprint('hidden')\nimport sys; print('err', file=sys.stderr)\ndisplay({'a': 1})\n40 + 2",
        )
        .await;
        assert!(stdout(&c).is_empty() && stderr(&c).is_empty(), "{mode:?}");
        assert!(
            displays(&c).is_empty() && result_text(&c).is_none(),
            "{mode:?}"
        );
        let c = ok(&s, mode, "(cap.stdout, cap.stderr, len(cap.outputs))").await;
        assert_eq!(
            result_text(&c).as_deref(),
            Some("('hidden\\n', 'err\\n', 2)"),
            "{mode:?}"
        );
        let c = ok(&s, mode, "cap.show()").await;
        assert_eq!(stdout(&c), "hidden\n", "{mode:?}");
        assert_eq!(displays(&c).len(), 2, "{mode:?}");
        // Output after a capture is shown again.
        let c = ok(&s, mode, "print('visible'); display(1)").await;
        assert_eq!(stdout(&c), "visible\n", "{mode:?}");
        assert_eq!(displays(&c).len(), 1, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn who_and_whos() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(&s, mode, "%who").await;
        assert_eq!(stdout(&c), "Interactive namespace is empty.\n", "{mode:?}");
        let c = ok(&s, mode, "alpha = 1\nbeta = 'two'\n%who").await;
        let out = stdout(&c);
        assert!(
            out.contains("alpha") && out.contains("beta"),
            "{mode:?}: {out}"
        );
        let c = ok(&s, mode, "%whos").await;
        let out = stdout(&c);
        assert!(out.starts_with("Variable"), "{mode:?}: {out}");
        assert!(
            out.contains("alpha") && out.contains("int"),
            "{mode:?}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn help_goes_to_the_pager() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        for code in ["len?", "x = 1\nlen?", "?len", "len??"] {
            let c = ok(&s, mode, code).await;
            let d = displays(&c);
            assert_eq!(d.len(), 1, "{mode:?}: {code:?}: {c:#?}");
            assert!(d[0].1.page, "{mode:?}: {code:?}: marked for the pager");
            let text = d[0].1.bundle["text/plain"].as_str().unwrap();
            assert!(text.contains("Docstring"), "{mode:?}: {text}");
        }
        let c = ok(&s, mode, "no_such_name_here?").await;
        assert!(
            stdout(&c).contains("Object `no_such_name_here` not found."),
            "{mode:?}: {}",
            stdout(&c)
        );
        assert!(displays(&c).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn matplotlib_inline_gives_an_image() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(
            &s,
            mode,
            "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2]);",
        )
        .await;
        let d = displays(&c);
        assert_eq!(d.len(), 1, "{mode:?}: {c:#?}");
        assert_eq!(d[0].0, "image", "{mode:?}");
        assert!(matches!(
            c.iter().find_map(|c| match &c.body {
                Body::Image { format, .. } => Some(*format),
                _ => None,
            }),
            Some(ImageFormat::Png)
        ));
        assert!(stdout(&c).is_empty(), "{mode:?}: {}", stdout(&c));
        let c = ok(&s, mode, "import matplotlib; matplotlib.get_backend()").await;
        assert_eq!(
            result_text(&c).as_deref(),
            Some("'module://spindle_inline'"),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_runs_with_the_sessions_interpreter() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let c = ok(&s, mode, "%pip --version").await;
        let out = stdout(&c);
        let c2 = ok(&s, mode, "import sys; sys.prefix").await;
        let prefix = result_text(&c2).unwrap();
        let prefix = prefix.trim_matches('\'');
        assert!(out.starts_with("pip "), "{mode:?}: {out}");
        assert!(
            out.contains(prefix),
            "{mode:?}: {out} is not {prefix}'s pip"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_ipython_is_enough_for_libraries_to_see_a_kernel() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let code = "ip = get_ipython()\n\
                    ('zmq' in str(type(ip)).lower(), 'IPKernelApp' in ip.config, \
                     ip.kernel is not None, ip.user_ns is globals(), \
                     hasattr(ip.display_pub, 'publish'), ip is get_ipython())";
        let c = ok(&s, mode, code).await;
        assert_eq!(
            result_text(&c).as_deref(),
            Some("(True, True, True, True, True, True)"),
            "{mode:?}"
        );
        let c = ok(
            &s,
            mode,
            "get_ipython().run_line_magic('env', 'SPINDLE_VIA_API=yes')\n\
             get_ipython().run_cell_magic('bash', '', 'echo $SPINDLE_VIA_API')\n\
             get_ipython().system('echo sys')",
        )
        .await;
        assert_eq!(
            stdout(&c),
            "env: SPINDLE_VIA_API=yes\nyes\nsys\n",
            "{mode:?}"
        );
        // pandas asks get_ipython() whether a notebook frontend renders its output.
        let c = ok(
            &s,
            mode,
            "from pandas.io.formats.console import in_ipython_frontend\nin_ipython_frontend()",
        )
        .await;
        assert_eq!(result_text(&c).as_deref(), Some("True"), "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_magic_is_a_usage_error_naming_it_and_the_session_goes_on() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let e = fails(&s, mode, "x = 1\n%nosuchmagic --flag").await;
        assert_eq!(e.name, "UsageError", "{mode:?}");
        assert!(e.value.contains("`%nosuchmagic`"), "{mode:?}: {}", e.value);
        if mode == Mode::Builtin {
            assert!(e.value.contains("IPython"), "suggests IPython: {}", e.value);
        }
        assert_eq!(
            e.traceback.len(),
            1,
            "{mode:?}: no traceback for a usage error"
        );
        let e = fails(&s, mode, "%%nosuchcell\nbody").await;
        assert_eq!(e.name, "UsageError", "{mode:?}");
        assert!(e.value.contains("nosuchcell"), "{mode:?}: {}", e.value);
        // The session is fine, and the line before the bad magic ran.
        let c = ok(&s, mode, "x + 1").await;
        assert_eq!(result_text(&c).as_deref(), Some("2"), "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_magic_with_bad_arguments_is_a_clear_error() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let e = fails(&s, mode, "%%writefile\nno file name").await;
        assert_eq!(e.name, "UsageError", "{mode:?}");
        assert!(e.value.contains("filename"), "{mode:?}: {}", e.value);
        if mode == Mode::Builtin {
            let e = fails(&s, mode, "%timeit -n lots 1").await;
            assert_eq!(e.name, "UsageError");
            assert!(
                e.value.contains("-n") && e.value.contains("lots"),
                "{}",
                e.value
            );
            let e = fails(&s, mode, "%timeit -z 1").await;
            assert!(e.value.contains("-z"), "{}", e.value);
            let e = fails(&s, mode, "%%capture --bogus\n1").await;
            assert_eq!(e.name, "UsageError");
            assert!(e.value.contains("--bogus"), "{}", e.value);
            let e = fails(&s, mode, "%%bash --bogus\necho").await;
            assert!(e.value.contains("--bogus"), "{}", e.value);
            let e = fails(&s, mode, "%pip").await;
            assert_eq!(e.name, "UsageError");
        }
        let c = ok(&s, mode, "'still here'").await;
        assert_eq!(result_text(&c).as_deref(), Some("'still here'"));
    }
}

/// The traceback of an error in a transformed cell names the cell and the user's line.
#[tokio::test(flavor = "multi_thread")]
async fn tracebacks_point_at_the_users_lines() {
    for mode in MODES {
        let (_k, s) = start(mode).await;
        let code = "x = 1\n!true\ndef f():\n    return 1 / 0\n%time f()";
        let e = fails(&s, mode, code).await;
        assert_eq!(e.name, "ZeroDivisionError", "{mode:?}");
        let tb = e.traceback.join("\n");
        assert!(tb.contains("line 5"), "{mode:?}: {tb}");
        assert!(tb.contains("%time f()"), "{mode:?}: the user's line: {tb}");
        assert!(tb.contains("line 4"), "{mode:?}: {tb}");
        assert!(tb.contains("return 1 / 0"), "{mode:?}: {tb}");
        assert!(
            !tb.contains("_spindle"),
            "{mode:?}: no bootstrap frames: {tb}"
        );

        let code = "y = 2\n!true\nz = undefined_name";
        let e = fails(&s, mode, code).await;
        assert_eq!(e.name, "NameError", "{mode:?}");
        let tb = e.traceback.join("\n");
        assert!(
            tb.contains("line 3") && tb.contains("z = undefined_name"),
            "{mode:?}: {tb}"
        );

        if mode == Mode::Builtin {
            // The body of a cell magic keeps its lines in the cell.
            let e = fails(&s, mode, "%%time\na = 1\nb = a / 0").await;
            let tb = e.traceback.join("\n");
            assert!(tb.contains("line 3") && tb.contains("b = a / 0"), "{tb}");
        }
    }
}
