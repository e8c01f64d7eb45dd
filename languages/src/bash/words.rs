//! Finding the word under the cursor in shell code, for completion and inspection. Positions
//! count Unicode code points, as the protocol's `cursor_pos` does.

/// What the word at the cursor should be completed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionMode {
    /// A command name: aliases, functions, builtins, keywords, programs on `PATH`.
    Command,
    /// A path.
    File,
    /// A variable after `$` (or `${` when `brace`).
    Variable { brace: bool },
}

/// The word being completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionContext {
    pub mode: CompletionMode,
    /// The text to complete, with backslash escapes removed (without `$`/`${` for variables).
    pub prefix: String,
    /// Where the replaced text starts and ends (code points).
    pub start: usize,
    pub end: usize,
    /// The word is inside quotes, so matches must not be backslash-escaped.
    pub quoted: bool,
}

/// Characters that end a word for completion (bash's COMP_WORDBREAKS plus blanks).
fn is_break(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ';' | '|' | '&' | '(' | ')' | '<' | '>' | '"' | '\'' | '`' | '='
        )
}

/// After these words the next word is a command.
const COMMAND_KEYWORDS: [&str; 12] = [
    "then", "do", "else", "elif", "if", "while", "until", "!", "time", "{", "exec", "command",
];

pub fn completion_context(code: &str, cursor_pos: usize) -> CompletionContext {
    let chars: Vec<char> = code.chars().collect();
    let end = cursor_pos.min(chars.len());
    let mut start = end;
    while start > 0 {
        let c = chars[start - 1];
        let escaped = start >= 2 && chars[start - 2] == '\\';
        if is_break(c) && !escaped {
            break;
        }
        start -= if escaped { 2 } else { 1 };
    }
    let quoted = start > 0 && matches!(chars[start - 1], '"' | '\'');
    let word: String = chars[start..end].iter().collect();

    // A variable reference at the end of the word: `$HO`, `${HO`, `"$HOME/$US`.
    if let Some(dollar) = word.rfind('$') {
        let after = &word[dollar + 1..];
        let (brace, name) = match after.strip_prefix('{') {
            Some(rest) => (true, rest),
            None => (false, after),
        };
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && (chars_before_byte(&word, dollar) == 0 || !word[..dollar].ends_with('\\'))
        {
            return CompletionContext {
                mode: CompletionMode::Variable { brace },
                prefix: name.to_string(),
                start: start + chars_before_byte(&word, dollar),
                end,
                quoted,
            };
        }
    }

    let prefix = unescape(&word);
    let mode = if !quoted && !prefix.contains('/') && command_position(&chars[..start]) {
        CompletionMode::Command
    } else {
        CompletionMode::File
    };
    CompletionContext {
        mode,
        prefix,
        start,
        end,
        quoted,
    }
}

fn chars_before_byte(s: &str, byte: usize) -> usize {
    s[..byte].chars().count()
}

/// Whether a word starting after `before` is in command position.
fn command_position(before: &[char]) -> bool {
    let mut i = before.len();
    while i > 0 && matches!(before[i - 1], ' ' | '\t') {
        i -= 1;
    }
    if i == 0 {
        return true;
    }
    if matches!(before[i - 1], '\n' | ';' | '|' | '&' | '(' | '`' | '{') {
        return true;
    }
    let mut j = i;
    while j > 0 && !before[j - 1].is_whitespace() && !matches!(before[j - 1], ';' | '|' | '&' | '(')
    {
        j -= 1;
    }
    let prev: String = before[j..i].iter().collect();
    COMMAND_KEYWORDS.contains(&prev.as_str()) && command_position(&before[..j])
}

fn unescape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Backslash-escape the characters the shell would otherwise split or expand (a leading `~`
/// stays, for tilde expansion).
pub fn shell_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        let special = c.is_whitespace()
            || matches!(
                c,
                '\'' | '"'
                    | '\\'
                    | '$'
                    | '`'
                    | '!'
                    | '&'
                    | ';'
                    | '|'
                    | '('
                    | ')'
                    | '<'
                    | '>'
                    | '*'
                    | '?'
                    | '['
                    | ']'
                    | '{'
                    | '}'
                    | '#'
            )
            || (c == '~' && i > 0);
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The command-like word around the cursor, for `inspect`.
pub fn inspect_word(code: &str, cursor_pos: usize) -> String {
    let chars: Vec<char> = code.chars().collect();
    let at = cursor_pos.min(chars.len());
    let is_word = |c: char| !is_break(c) && !matches!(c, '$' | '{' | '}');
    let mut start = at;
    while start > 0 && is_word(chars[start - 1]) {
        start -= 1;
    }
    let mut end = at;
    while end < chars.len() && is_word(chars[end]) {
        end += 1;
    }
    chars[start..end].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(code: &str) -> CompletionContext {
        completion_context(code, code.chars().count())
    }

    #[test]
    fn commands_files_and_variables() {
        let c = ctx("ec");
        assert_eq!(
            (c.mode, c.prefix.as_str(), c.start),
            (CompletionMode::Command, "ec", 0)
        );
        let c = ctx("ls -l; gr");
        assert_eq!((c.mode, c.start), (CompletionMode::Command, 7));
        let c = ctx("cat | gr");
        assert_eq!(c.mode, CompletionMode::Command);
        let c = ctx("if true; then ec");
        assert_eq!(c.mode, CompletionMode::Command);
        let c = ctx("echo $(wh");
        assert_eq!(c.mode, CompletionMode::Command);
        let c = ctx("cat fo");
        assert_eq!(
            (c.mode, c.prefix.as_str(), c.start),
            (CompletionMode::File, "fo", 4)
        );
        let c = ctx("./scr");
        assert_eq!(c.mode, CompletionMode::File);
        let c = ctx("cat my\\ fi");
        assert_eq!((c.prefix.as_str(), c.start), ("my fi", 4));
        let c = ctx("echo $HO");
        assert_eq!(
            (c.mode, c.prefix.as_str(), c.start),
            (CompletionMode::Variable { brace: false }, "HO", 5)
        );
        let c = ctx("echo \"${HO");
        assert_eq!(
            (c.mode, c.prefix.as_str(), c.start, c.quoted),
            (CompletionMode::Variable { brace: true }, "HO", 6, true)
        );
        let c = ctx("echo $HOME/$US");
        assert_eq!((c.prefix.as_str(), c.start), ("US", 11));
        let c = ctx("x=$HO");
        assert_eq!((c.prefix.as_str(), c.start), ("HO", 2));
    }

    #[test]
    fn positions_count_code_points() {
        let code = "echo 中文 $HO";
        let c = ctx(code);
        assert_eq!((c.start, c.end), (8, 11));
        let c = completion_context("echo 🎉 fo bar", 9);
        assert_eq!((c.prefix.as_str(), c.start, c.end), ("fo", 7, 9));
        let c = completion_context("ec", 99);
        assert_eq!(c.end, 2);
    }

    #[test]
    fn escaping_and_inspect_words() {
        assert_eq!(shell_escape("~/a b(1)"), "~/a\\ b\\(1\\)");
        assert_eq!(inspect_word("ls -l; grep x", 9), "grep");
        assert_eq!(inspect_word("echo $(date)", 8), "date");
        assert_eq!(inspect_word("", 0), "");
    }
}
