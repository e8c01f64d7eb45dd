//! `%` magics: parsed in one place so every host can reuse them. Filled in by the REPL issue.
