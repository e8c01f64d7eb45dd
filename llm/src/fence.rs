//! Fenced code blocks in a model's text, for models that cannot call tools (as Open Interpreter
//! runs them): ```` ```python ````, ```` ```bash ```` / ```` ```sh ````, ```` ```js ```` /
//! ```` ```node ````. Blocks in other languages (or none) are not run.

/// A runnable block: its language (canonical name) and code.
#[derive(Debug, Clone, PartialEq)]
pub struct Fenced {
    pub language: &'static str,
    pub code: String,
}

/// Every runnable fenced block in `text`, in order.
pub fn blocks(text: &str) -> Vec<Fenced> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let Some(info) = t.strip_prefix("```") else {
            continue;
        };
        let ticks = 3 + info.chars().take_while(|c| *c == '`').count();
        let info = info.trim_start_matches('`').trim();
        let lang = info.split_whitespace().next().unwrap_or("");
        let mut code = Vec::new();
        let mut closed = false;
        for l in lines.by_ref() {
            let lt = l.trim();
            if lt.len() >= ticks && lt.chars().all(|c| c == '`') {
                closed = true;
                break;
            }
            code.push(l);
        }
        let language = match lang.to_ascii_lowercase().as_str() {
            "python" | "py" | "python3" => Some("python"),
            "bash" | "sh" | "shell" | "zsh" => Some("bash"),
            "js" | "javascript" | "node" | "nodejs" => Some("node"),
            _ => None,
        };
        if let (Some(language), true) = (language, closed) {
            let code = code.join("\n");
            if !code.trim().is_empty() {
                out.push(Fenced { language, code });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnable_blocks_in_order() {
        let t = "Let me check.\n```python\nprint(1)\nx = 2\n```\nand\n```sh\nls -l\n```\n```text\nnot code\n```\n```\nplain\n```\n```js\nconsole.log(1)";
        assert_eq!(
            blocks(t),
            vec![
                Fenced {
                    language: "python",
                    code: "print(1)\nx = 2".into()
                },
                Fenced {
                    language: "bash",
                    code: "ls -l".into()
                },
            ]
        );
    }

    #[test]
    fn longer_fences_hold_shorter_ones() {
        let t = "````python\ns = '''\n```\n'''\n````";
        assert_eq!(blocks(t)[0].code, "s = '''\n```\n'''");
    }
}
