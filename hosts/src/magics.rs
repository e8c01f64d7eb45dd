//! `%` magics, parsed in one place so every host (the REPL, and any other that wants them) reads
//! them the same way. Parsing is pure: text in, a [`Magic`] (or a [`MagicError`] that explains
//! itself) out; what a magic *does* is up to the host.
//!
//! The grammar, decided by the first characters of the input (no leading whitespace, so a line
//! that really starts with `%` can still reach a language by starting it with a space):
//!
//! - `%% COMMAND…` (`%%` then whitespace): a shell command for the persistent bash session;
//!   everything after `%%` is the command, newlines included.
//! - `%%LANG` alone on the first line, then the cell: run the cell once in LANG.
//! - `%NAME ARGS` on one line: a line magic (`%python`, `%reset all`, `%timeout 30`, …).
//! - anything else is code for the current language.

use std::fmt;
use std::path::PathBuf;

/// A parsed magic.
#[derive(Debug, Clone, PartialEq)]
pub enum Magic {
    /// `%% COMMAND`: run COMMAND in the bash session, whatever the current language.
    Shell { command: String },
    /// `%python`, `%bash`, `%node`: switch the current language.
    Switch { language: &'static str },
    /// `%%python` (and friends) as the first line: run the rest of the cell in that language.
    Cell {
        language: &'static str,
        code: String,
    },
    /// `%reset [LANG|all]`: restart sessions.
    Reset { target: ResetTarget },
    /// `%sessions`: list live sessions and their state.
    Sessions,
    /// `%timeout [SECONDS|off]`: show or set the per-execution timeout.
    Timeout(Option<Limit<f64>>),
    /// `%cap [BYTES|off]`: show or set the console output cap.
    Cap(Option<Limit<u64>>),
    /// `%verbose [on|off]`: toggle (or set) showing raw chunks as JSON.
    Verbose(Option<bool>),
    /// `%save FILE`: write the transcript as JSON chunks.
    Save { path: PathBuf },
    /// `%load FILE`: replay a saved transcript.
    Load { path: PathBuf },
    /// `%jupyter FILE.ipynb`: export the transcript as a notebook with its outputs.
    Jupyter { path: PathBuf },
    /// `%help [MAGIC]`.
    Help { topic: Option<String> },
    /// `%chat`: plain text goes to the language model from here on.
    Chat,
    /// `%code`: plain text is code again.
    Code,
    /// `%undo`: forget the last message sent to the model and everything after it.
    Undo,
    /// `%tokens`: tokens used by the conversation so far.
    Tokens,
    /// `%info`: the model endpoint and the loop's settings.
    Info,
    /// `%save_message FILE`: save the conversation as JSON.
    SaveMessage { path: PathBuf },
    /// `%load_message FILE`: continue a saved conversation.
    LoadMessage { path: PathBuf },
}

/// Which sessions `%reset` restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The current language's session.
    Current,
    Language(&'static str),
    All,
}

/// A limit that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit<T> {
    Off,
    Set(T),
}

impl<T> Limit<T> {
    /// Apply a `%timeout`/`%cap` argument to a setting: `off` clears it, a value sets it, and no
    /// argument leaves it as it is.
    pub fn apply(arg: Option<Limit<T>>, setting: &mut Option<T>) {
        match arg {
            Some(Limit::Off) => *setting = None,
            Some(Limit::Set(v)) => *setting = Some(v),
            None => {}
        }
    }
}

/// Why an input that starts with `%` is not a magic Spindle can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MagicError {
    /// No magic has this name; the host should show [`help`].
    Unknown { name: String },
    /// A known magic with bad arguments: what is wrong, and its usage.
    Usage { name: &'static str, problem: String },
}

impl fmt::Display for MagicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MagicError::Unknown { name } => write!(f, "unknown magic %{name}"),
            MagicError::Usage { name, problem } => {
                let spec = spec(name).expect("usage errors name known magics");
                write!(f, "{problem}\nusage: {}\n  {}", spec.usage, spec.summary)
            }
        }
    }
}

impl std::error::Error for MagicError {}

/// What the host should do with an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<'a> {
    /// Code for the current language.
    Code(&'a str),
    Magic(Magic),
}

/// One magic's name, usage line and one-line summary, for help and usage errors.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub usage: &'static str,
    pub summary: &'static str,
}

/// Every magic, in the order help lists them.
pub const MAGICS: &[Spec] = &[
    Spec {
        name: "%",
        usage: "%% COMMAND",
        summary: "run a shell command in the bash session, from any language",
    },
    Spec {
        name: "python",
        usage: "%python | %bash | %node",
        summary: "switch language (each keeps its own session and state)",
    },
    Spec {
        name: "%python",
        usage: "%%python | %%bash | %%node   (then the cell; an empty line ends it)",
        summary: "first line of a cell: run it once in that language",
    },
    Spec {
        name: "reset",
        usage: "%reset [python|bash|node|all]",
        summary: "restart the current (or the named) session; state is lost",
    },
    Spec {
        name: "sessions",
        usage: "%sessions",
        summary: "list live sessions and their state",
    },
    Spec {
        name: "timeout",
        usage: "%timeout [SECONDS|off]",
        summary: "show or set the time limit of each execution",
    },
    Spec {
        name: "cap",
        usage: "%cap [BYTES|off]   (suffixes k, m, g allowed: %cap 64k)",
        summary: "show or set the output cap of each execution",
    },
    Spec {
        name: "verbose",
        usage: "%verbose [on|off]",
        summary: "toggle showing raw chunks as JSON",
    },
    Spec {
        name: "save",
        usage: "%save FILE",
        summary: "save the transcript (code and chunks) as JSON",
    },
    Spec {
        name: "load",
        usage: "%load FILE",
        summary: "replay a saved transcript (checked before anything runs)",
    },
    Spec {
        name: "jupyter",
        usage: "%jupyter FILE.ipynb",
        summary: "export the transcript as a notebook with its outputs",
    },
    Spec {
        name: "chat",
        usage: "%chat",
        summary:
            "chat mode: plain text goes to the language model, which runs code in these sessions",
    },
    Spec {
        name: "code",
        usage: "%code",
        summary: "code mode: plain text is code for the current language (the default)",
    },
    Spec {
        name: "undo",
        usage: "%undo",
        summary:
            "chat: forget the last message to the model and its answer (%reset alone forgets all)",
    },
    Spec {
        name: "tokens",
        usage: "%tokens",
        summary: "chat: tokens the conversation has used, as the server reported them",
    },
    Spec {
        name: "info",
        usage: "%info",
        summary: "the model endpoint, model and loop settings",
    },
    Spec {
        name: "save_message",
        usage: "%save_message FILE",
        summary: "chat: save the conversation as JSON",
    },
    Spec {
        name: "load_message",
        usage: "%load_message FILE",
        summary: "chat: continue a saved conversation",
    },
    Spec {
        name: "help",
        usage: "%help [MAGIC]",
        summary: "this help, or one magic's",
    },
];

/// The spec of a magic by name (`reset`, `%` for the shell magic, `%python` for cell magics).
pub fn spec(name: &str) -> Option<&'static Spec> {
    let name = name.trim_start_matches('%');
    let key = match name {
        "" => "%",
        n if canonical_language(n).is_some() => {
            return MAGICS.iter().find(|s| s.name == "python");
        }
        n => n,
    };
    MAGICS.iter().find(|s| s.name == key)
}

/// The help text: every magic with its usage and summary, plus the keys.
pub fn help() -> String {
    let mut out = String::from("Magics:\n");
    let short = |s: &Spec| s.usage.split("   ").next().unwrap_or(s.usage);
    let width = MAGICS.iter().map(|s| short(s).len()).max().unwrap_or(0);
    for s in MAGICS {
        out.push_str(&format!("  {:<width$}  {}\n", short(s), s.summary));
    }
    out.push_str(
        "Keys: Enter runs complete input (else continues the cell); Tab completes; Ctrl-C\n\
         interrupts running code or clears the line; Ctrl-D or Ctrl-C twice exits.\n\
         While code runs, typed lines go to its stdin (and answer input() prompts).\n\
         Code that must start with % itself: start the line with a space.\n",
    );
    out
}

/// Help for one magic, or the whole help when `topic` is unknown.
pub fn help_for(topic: &str) -> String {
    match spec(topic) {
        Some(s) => format!("usage: {}\n  {}\n", s.usage, s.summary),
        None => help(),
    }
}

/// The canonical language for a user-facing name (`py` → `python`, `js` → `node`, …).
pub fn canonical_language(name: &str) -> Option<&'static str> {
    spindle_languages::canonical_name(name)
}

/// Whether `input` is a magic (starts with `%`), before parsing it.
pub fn is_magic(input: &str) -> bool {
    input.starts_with('%')
}

/// If `input` is a cell magic (`%%LANG` alone on its first line), its language and body.
/// Useful to hosts that decide whether a multi-line input is complete.
pub fn cell_magic(input: &str) -> Option<(&'static str, &str)> {
    let rest = input.strip_prefix("%%")?;
    let (first, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let lang = canonical_language(first.trim_end())?;
    Some((lang, body))
}

/// Parse one input.
pub fn parse(input: &str) -> Result<Input<'_>, MagicError> {
    let Some(rest) = input.strip_prefix('%') else {
        return Ok(Input::Code(input));
    };
    if let Some(after) = rest.strip_prefix('%') {
        return parse_cell_or_shell(after).map(Input::Magic);
    }
    let (name, args) = split_word(rest);
    if name.is_empty() {
        return Err(MagicError::Unknown {
            name: String::new(),
        });
    }
    let args = args.trim();
    if args.contains('\n') {
        // A line magic is one line; silently dropping the rest would run nothing the user
        // expected, so say so.
        return match spec(name) {
            Some(s) => Err(MagicError::Usage {
                name: s.name,
                problem: "a line magic must be alone on its line (to run a cell in another \
                          language, start it with %%python, %%bash or %%node)"
                    .into(),
            }),
            None => Err(MagicError::Unknown {
                name: name.to_string(),
            }),
        };
    }
    if let Some(language) = canonical_language(name) {
        if !args.is_empty() {
            return Err(MagicError::Usage {
                name: "python",
                problem: format!(
                    "%{name} takes no arguments (to run code once in {language}, put %%{name} on \
                     the first line of the cell)"
                ),
            });
        }
        return Ok(Input::Magic(Magic::Switch { language }));
    }
    let words: Vec<&str> = args.split_whitespace().collect();
    let magic = match name {
        "reset" => Magic::Reset {
            target: match words.as_slice() {
                [] => ResetTarget::Current,
                ["all"] => ResetTarget::All,
                [lang] => match canonical_language(lang) {
                    Some(l) => ResetTarget::Language(l),
                    None => {
                        return Err(usage(
                            "reset",
                            format!("unknown language {lang:?}: use python, bash, node or all"),
                        ))
                    }
                },
                _ => return Err(usage("reset", "too many arguments".into())),
            },
        },
        "sessions" => {
            no_args("sessions", &words)?;
            Magic::Sessions
        }
        "timeout" => Magic::Timeout(match words.as_slice() {
            [] => None,
            [w] if is_off(w) => Some(Limit::Off),
            [w] => match w.trim_end_matches('s').parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 && v <= 1e9 => Some(Limit::Set(v)),
                Ok(0.0) => Some(Limit::Off),
                _ => {
                    return Err(usage(
                        "timeout",
                        format!("{w:?} is not a positive number of seconds"),
                    ))
                }
            },
            _ => return Err(usage("timeout", "too many arguments".into())),
        }),
        "cap" => Magic::Cap(match words.as_slice() {
            [] => None,
            [w] if is_off(w) => Some(Limit::Off),
            [w] => match parse_bytes(w) {
                Some(0) => Some(Limit::Off),
                Some(n) => Some(Limit::Set(n)),
                None => {
                    return Err(usage(
                        "cap",
                        format!("{w:?} is not a number of bytes (such as 4096, 64k or 1m)"),
                    ))
                }
            },
            _ => return Err(usage("cap", "too many arguments".into())),
        }),
        "verbose" => Magic::Verbose(match words.as_slice() {
            [] => None,
            ["on" | "true" | "yes" | "1"] => Some(true),
            ["off" | "false" | "no" | "0"] => Some(false),
            _ => return Err(usage("verbose", "expected on, off or nothing".into())),
        }),
        "save" => Magic::Save {
            path: one_path("save", args)?,
        },
        "load" => Magic::Load {
            path: one_path("load", args)?,
        },
        "jupyter" => {
            let path = one_path("jupyter", args)?;
            if path.extension().and_then(|e| e.to_str()) != Some("ipynb") {
                return Err(usage(
                    "jupyter",
                    format!("{} does not end in .ipynb", path.display()),
                ));
            }
            Magic::Jupyter { path }
        }
        "chat" => {
            no_args("chat", &words)?;
            Magic::Chat
        }
        "code" => {
            no_args("code", &words)?;
            Magic::Code
        }
        "undo" => {
            no_args("undo", &words)?;
            Magic::Undo
        }
        "tokens" => {
            no_args("tokens", &words)?;
            Magic::Tokens
        }
        "info" => {
            no_args("info", &words)?;
            Magic::Info
        }
        "save_message" => Magic::SaveMessage {
            path: one_path("save_message", args)?,
        },
        "load_message" => Magic::LoadMessage {
            path: one_path("load_message", args)?,
        },
        "help" | "?" => Magic::Help {
            topic: words.first().map(|w| w.trim_start_matches('%').to_string()),
        },
        other => {
            return Err(MagicError::Unknown {
                name: other.to_string(),
            })
        }
    };
    Ok(Input::Magic(magic))
}

fn parse_cell_or_shell(after: &str) -> Result<Magic, MagicError> {
    // `%%` then whitespace (or nothing): the shell magic.
    if after.is_empty() || after.starts_with(char::is_whitespace) {
        let command = after.trim();
        if command.is_empty() {
            return Err(usage("%", "give the shell command after %%".into()));
        }
        return Ok(Magic::Shell {
            command: command.to_string(),
        });
    }
    let (first, body) = after.split_once('\n').unwrap_or((after, ""));
    let (name, extra) = split_word(first);
    let Some(language) = canonical_language(name) else {
        return Err(MagicError::Unknown {
            name: format!("%{name}"),
        });
    };
    if !extra.trim().is_empty() {
        return Err(usage(
            "%python",
            format!(
                "%%{name} must be alone on the first line (for a one-line shell command use \
                 `%% {}`)",
                extra.trim()
            ),
        ));
    }
    if body.trim().is_empty() {
        return Err(usage(
            "%python",
            format!("%%{name} needs a cell: put the code on the lines after it"),
        ));
    }
    Ok(Magic::Cell {
        language,
        code: body.trim_end_matches(['\n', ' ', '\t']).to_string(),
    })
}

fn usage(name: &'static str, problem: String) -> MagicError {
    let name = spec(name).map(|s| s.name).unwrap_or("help");
    MagicError::Usage { name, problem }
}

fn no_args(name: &'static str, words: &[&str]) -> Result<(), MagicError> {
    if words.is_empty() {
        Ok(())
    } else {
        Err(usage(name, format!("%{name} takes no arguments")))
    }
}

fn one_path(name: &'static str, args: &str) -> Result<PathBuf, MagicError> {
    let arg = args.trim();
    if arg.is_empty() {
        return Err(usage(name, "give a file name".into()));
    }
    // A quoted name may hold spaces; an unquoted one may not (it is probably two arguments).
    let unquoted = ['"', '\''].iter().find_map(|q| {
        arg.strip_prefix(*q)
            .and_then(|a| a.strip_suffix(*q))
            .map(str::to_string)
    });
    let path = match unquoted {
        Some(p) if !p.is_empty() => p,
        Some(_) => return Err(usage(name, "the file name is empty".into())),
        None if arg.contains(char::is_whitespace) => {
            return Err(usage(
                name,
                "expected one file name (quote a name that has spaces)".into(),
            ))
        }
        None => arg.to_string(),
    };
    Ok(PathBuf::from(expand_home(&path)))
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    }
}

fn is_off(w: &str) -> bool {
    matches!(
        w.to_ascii_lowercase().as_str(),
        "off" | "none" | "no" | "unlimited"
    )
}

/// Bytes with an optional binary suffix: `4096`, `64k`, `1m`, `2g` (also `64KiB`, `1MB`).
fn parse_bytes(w: &str) -> Option<u64> {
    let lower = w.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(lower.len());
    let (num, suffix) = lower.split_at(digits_end);
    let n: u64 = num.replace('_', "").parse().ok()?;
    let mult: u64 = match suffix {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// First word (up to whitespace) and the rest.
fn split_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Names a host can offer for tab completion after `%`.
pub fn completions(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = MAGICS
        .iter()
        .filter(|s| s.name != "%" && s.name != "python" && s.name != "%python")
        .map(|s| format!("%{}", s.name))
        .collect();
    for lang in spindle_languages::NAMES {
        names.push(format!("%{lang}"));
        names.push(format!("%%{lang}"));
    }
    names.sort();
    names.retain(|n| n.starts_with(prefix));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn magic(s: &str) -> Magic {
        match parse(s) {
            Ok(Input::Magic(m)) => m,
            other => panic!("{s:?} parsed as {other:?}"),
        }
    }

    fn err(s: &str) -> MagicError {
        match parse(s) {
            Err(e) => e,
            other => panic!("{s:?} should fail, got {other:?}"),
        }
    }

    #[test]
    fn code_is_code() {
        assert_eq!(parse("print(1)").unwrap(), Input::Code("print(1)"));
        assert_eq!(parse(" %1").unwrap(), Input::Code(" %1"));
        assert_eq!(parse("x = 5 % 3").unwrap(), Input::Code("x = 5 % 3"));
    }

    #[test]
    fn shell_magic() {
        assert_eq!(
            magic("%% ls -la"),
            Magic::Shell {
                command: "ls -la".into()
            }
        );
        assert_eq!(
            magic("%%\tcat <<EOF\nhi\nEOF"),
            Magic::Shell {
                command: "cat <<EOF\nhi\nEOF".into()
            }
        );
        assert!(matches!(err("%%"), MagicError::Usage { name: "%", .. }));
        assert!(matches!(err("%%   "), MagicError::Usage { name: "%", .. }));
    }

    #[test]
    fn switch_language() {
        assert_eq!(magic("%python"), Magic::Switch { language: "python" });
        assert_eq!(magic("%node"), Magic::Switch { language: "node" });
        assert_eq!(magic("%js"), Magic::Switch { language: "node" });
        assert_eq!(magic("%bash  "), Magic::Switch { language: "bash" });
        assert!(matches!(err("%python x"), MagicError::Usage { .. }));
    }

    #[test]
    fn cell_magic_runs_once() {
        assert_eq!(
            magic("%%bash\nx=1\necho $x\n\n"),
            Magic::Cell {
                language: "bash",
                code: "x=1\necho $x".into()
            }
        );
        assert_eq!(cell_magic("%%node\n1+1"), Some(("node", "1+1")));
        assert_eq!(cell_magic("%%node"), Some(("node", "")));
        assert_eq!(cell_magic("%% ls"), None);
        assert!(matches!(err("%%python"), MagicError::Usage { .. }));
        assert!(matches!(err("%%python\n  \n"), MagicError::Usage { .. }));
        assert!(matches!(err("%%bash ls\n"), MagicError::Usage { .. }));
        assert_eq!(
            err("%%time\nx"),
            MagicError::Unknown {
                name: "%time".into()
            }
        );
    }

    #[test]
    fn reset_targets() {
        assert_eq!(
            magic("%reset"),
            Magic::Reset {
                target: ResetTarget::Current
            }
        );
        assert_eq!(
            magic("%reset all"),
            Magic::Reset {
                target: ResetTarget::All
            }
        );
        assert_eq!(
            magic("%reset py"),
            Magic::Reset {
                target: ResetTarget::Language("python")
            }
        );
        let e = err("%reset ruby");
        assert!(e.to_string().contains("usage: %reset"), "{e}");
        assert!(matches!(err("%reset a b"), MagicError::Usage { .. }));
    }

    #[test]
    fn limits() {
        assert_eq!(magic("%timeout"), Magic::Timeout(None));
        assert_eq!(magic("%timeout 2.5"), Magic::Timeout(Some(Limit::Set(2.5))));
        assert_eq!(
            magic("%timeout 30s"),
            Magic::Timeout(Some(Limit::Set(30.0)))
        );
        assert_eq!(magic("%timeout off"), Magic::Timeout(Some(Limit::Off)));
        assert_eq!(magic("%timeout 0"), Magic::Timeout(Some(Limit::Off)));
        assert!(matches!(err("%timeout -1"), MagicError::Usage { .. }));
        assert!(matches!(err("%timeout abc"), MagicError::Usage { .. }));
        assert!(matches!(err("%timeout NaN"), MagicError::Usage { .. }));
        assert_eq!(magic("%cap 4096"), Magic::Cap(Some(Limit::Set(4096))));
        assert_eq!(magic("%cap 64k"), Magic::Cap(Some(Limit::Set(65536))));
        assert_eq!(magic("%cap 1MiB"), Magic::Cap(Some(Limit::Set(1 << 20))));
        assert_eq!(magic("%cap off"), Magic::Cap(Some(Limit::Off)));
        assert!(matches!(err("%cap lots"), MagicError::Usage { .. }));
        assert!(matches!(
            err("%cap 99999999999999999999g"),
            MagicError::Usage { .. }
        ));
    }

    #[test]
    fn files() {
        assert_eq!(
            magic("%save out.json"),
            Magic::Save {
                path: "out.json".into()
            }
        );
        assert_eq!(
            magic("%load 'my file.json'"),
            Magic::Load {
                path: "my file.json".into()
            }
        );
        assert_eq!(
            magic("%jupyter out.ipynb"),
            Magic::Jupyter {
                path: "out.ipynb".into()
            }
        );
        assert!(matches!(
            err("%save"),
            MagicError::Usage { name: "save", .. }
        ));
        assert!(matches!(err("%save a b"), MagicError::Usage { .. }));
        assert!(matches!(err("%jupyter out.json"), MagicError::Usage { .. }));
    }

    #[test]
    fn verbose_help_sessions() {
        assert_eq!(magic("%verbose"), Magic::Verbose(None));
        assert_eq!(magic("%verbose on"), Magic::Verbose(Some(true)));
        assert!(matches!(err("%verbose loud"), MagicError::Usage { .. }));
        assert_eq!(magic("%help"), Magic::Help { topic: None });
        assert_eq!(
            magic("%help %reset"),
            Magic::Help {
                topic: Some("reset".into())
            }
        );
        assert_eq!(magic("%sessions"), Magic::Sessions);
        assert!(matches!(err("%sessions now"), MagicError::Usage { .. }));
    }

    #[test]
    fn unknown_and_multiline() {
        assert_eq!(
            err("%whos"),
            MagicError::Unknown {
                name: "whos".into()
            }
        );
        assert_eq!(err("%"), MagicError::Unknown { name: "".into() });
        assert!(matches!(
            err("%timeout 5\nprint(1)"),
            MagicError::Usage { .. }
        ));
    }

    #[test]
    fn usage_text_names_the_usage() {
        let e = err("%timeout x");
        let text = e.to_string();
        assert!(text.contains("usage: %timeout [SECONDS|off]"), "{text}");
        assert!(help().contains("%jupyter FILE.ipynb"));
        assert!(help_for("cap").contains("%cap"));
        assert!(help_for("nope").contains("Magics:"));
    }

    #[test]
    fn completion_names() {
        let c = completions("%re");
        assert_eq!(c, vec!["%reset".to_string()]);
        assert!(completions("%%").contains(&"%%bash".to_string()));
    }
}
