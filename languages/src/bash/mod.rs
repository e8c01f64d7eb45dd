//! Bash. See `docs/child-protocol.md`.
//!
//! Bash runs as an interactive shell whose rcfile is [`BOOTSTRAP`], reading short command lines
//! from the PTY, so that Ctrl-C aborts a command line the way a terminal does and the shell lives
//! on. Code never travels over the PTY (a canonical-mode line holds at most 4095 bytes and
//! control characters there are line editing): it is written to `cell.sh` in the run directory
//! and the PTY line only sources it. Queries work the same way with a `query` file, and answer
//! with raw (`r`) frames that [`Bash::parse_raw_reply`] turns into reply content.

mod words;

use serde_json::{json, Map, Value};
use spindle_kernel::{ChildRequest, Language, LanguageError, LaunchContext, LaunchSpec, Outbound};

use crate::Interpreters;
use words::{completion_context, inspect_word, shell_escape, CompletionMode};

/// The bootstrap that runs inside the child, embedded at build time.
pub const BOOTSTRAP: &str = include_str!("bootstrap.sh");

/// Longest request id we put on a PTY line (the terminal's line limit is 4095 bytes).
const MAX_ID_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct Bash {
    interpreters: Interpreters,
}

impl Bash {
    pub fn new(interpreters: Interpreters) -> Self {
        Self { interpreters }
    }
}

impl Language for Bash {
    fn name(&self) -> &str {
        "bash"
    }

    fn launch(&self, ctx: &LaunchContext) -> Result<LaunchSpec, LanguageError> {
        let resolved = self.interpreters.resolve("bash")?;
        let rcfile = ctx.run_dir.join("bootstrap.sh");
        let rcfile = rcfile.to_str().ok_or_else(|| {
            LanguageError::Other(format!(
                "bash: run directory {} is not valid UTF-8",
                ctx.run_dir.display()
            ))
        })?;
        Ok(LaunchSpec {
            program: resolved.path,
            args: vec![
                "--noprofile".into(),
                "--rcfile".into(),
                rcfile.into(),
                "--noediting".into(),
                "-i".into(),
            ],
            env: Default::default(),
            files: vec![("bootstrap.sh".into(), BOOTSTRAP.as_bytes().to_vec())],
        })
    }

    fn encode(&self, req: &ChildRequest) -> Result<Outbound, LanguageError> {
        match req {
            ChildRequest::Execute {
                id,
                code,
                allow_stdin,
                active_lines,
                user_expressions,
                ..
            } => encode_execute(id, code, *allow_stdin, *active_lines, user_expressions),
            ChildRequest::InputReply { value } => Ok(Outbound {
                pty: terminal_line(value),
                ..Outbound::default()
            }),
            ChildRequest::Complete {
                id,
                code,
                cursor_pos,
            } => {
                let ctx = completion_context(code, *cursor_pos);
                let mode = match ctx.mode {
                    CompletionMode::Command => 'c',
                    CompletionMode::File => 'f',
                    CompletionMode::Variable { .. } => 'v',
                };
                encode_query(id, "complete", format!("{mode}\n{}", ctx.prefix))
            }
            ChildRequest::Inspect {
                id,
                code,
                cursor_pos,
                detail_level,
            } => {
                let word = inspect_word(code, *cursor_pos);
                encode_query(id, "inspect", format!("{detail_level}\n{word}"))
            }
            ChildRequest::IsComplete { id, code } => encode_query(id, "is_complete", code.clone()),
            ChildRequest::Comm { .. } | ChildRequest::CommInfo { .. } => Err(
                LanguageError::Unsupported("bash has no comms (Jupyter comm messages)".into()),
            ),
        }
    }

    fn parse_raw_reply(&self, req: &ChildRequest, raw: &[u8]) -> Result<Value, LanguageError> {
        let text = String::from_utf8_lossy(raw);
        match req {
            ChildRequest::Complete {
                code, cursor_pos, ..
            } => Ok(complete_reply(code, *cursor_pos, &text)),
            ChildRequest::IsComplete { code, .. } => Ok(is_complete_reply(code, &text)),
            ChildRequest::Inspect { .. } => Ok(inspect_reply(&text)),
            _ => Err(LanguageError::Other(
                "bash: a raw reply arrived for a request that takes none".into(),
            )),
        }
    }
}

/// `$'…'` quoting that leaves only plain ASCII on the PTY line: a control character there would
/// be line editing (or a signal), so every byte but `[A-Za-z0-9_.:-]` becomes `\xHH`.
fn ansi_c_quote(s: &str) -> Result<String, LanguageError> {
    if s.len() > MAX_ID_BYTES {
        return Err(LanguageError::Other(format!(
            "bash: request id longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if s.contains('\0') {
        return Err(LanguageError::Other("bash: request id contains NUL".into()));
    }
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("$'");
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('\'');
    Ok(out)
}

/// Single-quoted shell word (for ue.sh, which bash reads as a file, not from the terminal).
fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn encode_execute(
    id: &str,
    code: &str,
    allow_stdin: bool,
    active_lines: bool,
    user_expressions: &Map<String, Value>,
) -> Result<Outbound, LanguageError> {
    let id = ansi_c_quote(id)?;
    let mut cell = code.as_bytes().to_vec();
    if !cell.ends_with(b"\n") {
        // A heredoc delimiter on the last line needs its newline.
        cell.push(b'\n');
    }
    let mut files = vec![("cell.sh".to_string(), cell)];
    let mut ue_flag = "''";
    if !user_expressions.is_empty() {
        let mut keys = Vec::new();
        let mut codes = Vec::new();
        for (name, expr) in user_expressions {
            let expr = match expr {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if expr.contains('\0') || name.contains('\0') {
                return Err(LanguageError::Other(
                    "bash: a user expression contains NUL".into(),
                ));
            }
            keys.push(single_quote(&Value::String(name.clone()).to_string()));
            codes.push(single_quote(&expr));
        }
        let script = format!(
            "__sp_ue_keys=({})\n__sp_ue_code=({})\n",
            keys.join(" "),
            codes.join(" ")
        );
        files.push(("ue.sh".to_string(), script.into_bytes()));
        ue_flag = "1";
    }
    // The DEBUG trap is set on the line itself (a trap set inside a function does not
    // reliably outlive it); `__sp_begin` comes last so that `$?` is the previous cell's.
    let mut line = String::new();
    if active_lines {
        line.push_str("trap \"$__sp_dbg_trap\" DEBUG; ");
    }
    line.push_str(&format!(
        "{{ __sp_begin {id} e {ue_flag}{}; }} 2>/dev/null; . \"$__sp_dir/cell.sh\"",
        if active_lines { " 1" } else { "" }
    ));
    if !allow_stdin {
        line.push_str(" </dev/null");
    }
    line.push_str("; { __sp_guard; } 2>/dev/null\n");
    Ok(Outbound {
        fifo: Vec::new(),
        files,
        pty: line.into_bytes(),
    })
}

fn encode_query(id: &str, kind: &str, input: String) -> Result<Outbound, LanguageError> {
    let id = ansi_c_quote(id)?;
    let line = format!("{{ __sp_begin {id} q; __sp_query {kind}; }} 2>/dev/null\n");
    Ok(Outbound {
        fifo: Vec::new(),
        files: vec![("query".to_string(), input.into_bytes())],
        pty: line.into_bytes(),
    })
}

/// A line typed on the terminal: control characters are quoted with ^V (the terminal's
/// literal-next) so that they are data, not line editing or signals.
fn terminal_line(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 1);
    for b in value.trim_end_matches(['\n', '\r']).bytes() {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            out.push(0x16);
        }
        out.push(b);
    }
    out.push(b'\n');
    out
}

fn complete_reply(code: &str, cursor_pos: usize, raw: &str) -> Value {
    let ctx = completion_context(code, cursor_pos);
    let mut matches: Vec<String> = raw
        .lines()
        .filter(|m| !m.is_empty())
        .map(|m| match ctx.mode {
            CompletionMode::Variable { brace: true } => format!("${{{m}}}"),
            CompletionMode::Variable { brace: false } => format!("${m}"),
            CompletionMode::File if !ctx.quoted => shell_escape(m),
            _ => m.to_string(),
        })
        .collect();
    matches.sort();
    matches.dedup();
    json!({
        "matches": matches,
        "cursor_start": ctx.start,
        "cursor_end": ctx.end,
        "metadata": {},
    })
}

/// Raw form: bash -n's exit status on the first line, its messages after.
fn is_complete_reply(code: &str, raw: &str) -> Value {
    if code.trim().is_empty() {
        return json!({"status": "complete"});
    }
    // A trailing backslash continues the line; `bash -n` accepts it at end of file.
    let body = code.strip_suffix('\n').unwrap_or(code);
    let body = body.strip_suffix('\r').unwrap_or(body);
    let trailing = body.bytes().rev().take_while(|&b| b == b'\\').count();
    if trailing % 2 == 1 {
        return json!({"status": "incomplete", "indent": ""});
    }
    let (status, messages) = raw.split_once('\n').unwrap_or((raw, ""));
    let incomplete = [
        "unexpected end of file",
        "unexpected EOF",
        "delimited by end-of-file",
    ];
    if incomplete.iter().any(|m| messages.contains(m)) {
        return json!({"status": "incomplete", "indent": ""});
    }
    match status.trim().parse::<i32>() {
        Ok(0) => json!({"status": "complete"}),
        Ok(_) => json!({"status": "invalid"}),
        Err(_) => json!({"status": "unknown"}),
    }
}

/// Raw form: `0`, or `1` and the text on the following lines.
fn inspect_reply(raw: &str) -> Value {
    match raw.split_once('\n') {
        Some(("1", text)) if !text.trim().is_empty() => json!({
            "found": true,
            "data": {"text/plain": text.trim_end()},
            "metadata": {},
        }),
        _ => json!({"found": false, "data": {}, "metadata": {}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execute(id: &str, code: &str) -> ChildRequest {
        ChildRequest::Execute {
            id: id.into(),
            code: code.into(),
            silent: false,
            store_history: true,
            allow_stdin: true,
            active_lines: false,
            user_expressions: Map::new(),
            execution_count: 1,
            parent: None,
        }
    }

    fn bash() -> Bash {
        Bash::new(Interpreters::default())
    }

    #[test]
    fn execute_goes_through_a_file_and_a_short_plain_line() {
        let code = format!("echo {}\ncat <<EOF\nx\nEOF", "a".repeat(10_000));
        let out = bash().encode(&execute("r-1", &code)).unwrap();
        assert!(out.fifo.is_empty());
        assert_eq!(out.files[0].0, "cell.sh");
        assert_eq!(out.files[0].1, format!("{code}\n").into_bytes());
        let line = String::from_utf8(out.pty).unwrap();
        assert_eq!(
            line,
            "{ __sp_begin $'r-1' e ''; } 2>/dev/null; . \"$__sp_dir/cell.sh\"; \
             { __sp_guard; } 2>/dev/null\n"
        );
    }

    #[test]
    fn ids_are_quoted_without_control_characters() {
        let out = bash().encode(&execute("a'b\u{3}é;$(x)", "true")).unwrap();
        let line = String::from_utf8(out.pty).unwrap();
        assert!(
            line.contains(r"$'a\x27b\x03\xc3\xa9\x3b\x24\x28x\x29'"),
            "{line}"
        );
        assert!(line
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) || b == b'\n'));
        assert!(bash().encode(&execute("a\0b", "true")).is_err());
        assert!(bash().encode(&execute(&"x".repeat(5000), "true")).is_err());
    }

    #[test]
    fn options_shape_the_line() {
        let mut ue = Map::new();
        ue.insert("it's".into(), json!("echo 'a'"));
        let req = ChildRequest::Execute {
            id: "r".into(),
            code: "true\n".into(),
            silent: false,
            store_history: true,
            allow_stdin: false,
            active_lines: true,
            user_expressions: ue,
            execution_count: 1,
            parent: None,
        };
        let out = bash().encode(&req).unwrap();
        let line = String::from_utf8(out.pty).unwrap();
        assert!(line.starts_with("trap \"$__sp_dbg_trap\" DEBUG; { __sp_begin $'r' e 1 1; }"));
        assert!(line.contains("cell.sh\" </dev/null; "), "{line}");
        let ue = String::from_utf8(out.files[1].1.clone()).unwrap();
        assert_eq!(
            ue,
            "__sp_ue_keys=('\"it'\\''s\"')\n__sp_ue_code=('echo '\\''a'\\''')\n"
        );
    }

    #[test]
    fn input_reply_quotes_control_characters() {
        let out = bash()
            .encode(&ChildRequest::InputReply {
                value: "a\u{3}b\n".into(),
            })
            .unwrap();
        assert_eq!(out.pty, b"a\x16\x03b\n");
    }

    #[test]
    fn completion_replies_are_shaped_on_the_host() {
        let b = bash();
        let req = |code: &str| ChildRequest::Complete {
            id: "c".into(),
            code: code.into(),
            cursor_pos: code.chars().count(),
        };
        let out = b.encode(&req("echo $HO")).unwrap();
        assert_eq!(out.files[0].1, b"v\nHO");
        let v = b
            .parse_raw_reply(&req("echo $HO"), b"HOME\nHOSTNAME\n")
            .unwrap();
        assert_eq!(v["matches"], json!(["$HOME", "$HOSTNAME"]));
        assert_eq!(
            (v["cursor_start"].clone(), v["cursor_end"].clone()),
            (json!(5), json!(8))
        );

        let out = b.encode(&req("ls; ec")).unwrap();
        assert_eq!(out.files[0].1, b"c\nec");
        let v = b
            .parse_raw_reply(&req("ls; ec"), b"echo\necho\necho\n")
            .unwrap();
        assert_eq!(v["matches"], json!(["echo"]));
        assert_eq!(v["cursor_start"], json!(4));

        let v = b
            .parse_raw_reply(&req("cat /tmp/sp"), b"/tmp/sp ace/\n")
            .unwrap();
        assert_eq!(v["matches"], json!(["/tmp/sp\\ ace/"]));
    }

    #[test]
    fn is_complete_classifies_bash_n() {
        let r = |code: &str, raw: &str| is_complete_reply(code, raw)["status"].clone();
        assert_eq!(r("echo hi", "0\n"), json!("complete"));
        assert_eq!(r("", "0\n"), json!("complete"));
        assert_eq!(
            r(
                "if true; then",
                "2\nq: line 2: syntax error: unexpected end of file"
            ),
            json!("incomplete")
        );
        assert_eq!(
            r(
                "echo \"a",
                "2\nq: line 1: unexpected EOF while looking for matching `\"'"
            ),
            json!("incomplete")
        );
        assert_eq!(
            r(
                "cat <<EOF\nx",
                "0\nq: line 2: warning: here-document at line 1 delimited by end-of-file (wanted `EOF')"
            ),
            json!("incomplete")
        );
        assert_eq!(r("echo a \\", "0\n"), json!("incomplete"));
        assert_eq!(r("echo a \\\\", "0\n"), json!("complete"));
        assert_eq!(
            r(
                "echo )",
                "2\nq: line 1: syntax error near unexpected token `)'"
            ),
            json!("invalid")
        );
    }

    #[test]
    fn inspect_reply_parses() {
        assert_eq!(inspect_reply("0")["found"], json!(false));
        let v = inspect_reply("1\ncd is a shell builtin\n\ncd: cd [dir]\n");
        assert_eq!(v["found"], json!(true));
        assert_eq!(
            v["data"]["text/plain"],
            json!("cd is a shell builtin\n\ncd: cd [dir]")
        );
    }

    #[test]
    fn bootstrap_parses() {
        let Some(bash) = crate::resolve::find_on_path("bash") else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("spindle-bash-n-{}", std::process::id()));
        std::fs::write(&dir, BOOTSTRAP).unwrap();
        let out = std::process::Command::new(bash)
            .arg("-n")
            .arg(&dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
