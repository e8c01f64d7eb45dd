//! HTML as readable text, for terminals and for models: `<table>`s (such as a pandas DataFrame) become aligned text
//! tables, other markup becomes its text. This is a small tolerant scanner, not an HTML parser:
//! it knows the handful of tags that matter for reading and skips `<style>`, `<script>` and
//! comments.

/// A piece of a page: running text, or a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    Table(Table),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    pub cells: Vec<String>,
    /// In `<thead>`, or made only of `<th>` cells before any body row.
    pub header: bool,
}

/// Split `html` into text and tables.
pub fn parse(html: &str) -> Vec<Block> {
    let mut p = Scanner::default();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        p.text(&rest[..lt]);
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |i| &after[i + 3..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            // A lone `<` is text.
            p.text(rest);
            rest = "";
            break;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !closing && (name == "style" || name == "script") {
            let end = format!("</{name}");
            let lower = rest.to_ascii_lowercase();
            rest = match lower.find(&end) {
                Some(i) => rest[i..].find('>').map_or("", |j| &rest[i + j + 1..]),
                None => "",
            };
            continue;
        }
        p.tag(&name, closing);
    }
    p.text(rest);
    p.finish()
}

#[derive(Default)]
struct Scanner {
    blocks: Vec<Block>,
    text: String,
    table: Option<Table>,
    depth: usize,
    in_head: bool,
    row: Option<Row>,
    cell: Option<String>,
    cell_is_th: bool,
    row_all_th: bool,
}

impl Scanner {
    fn text(&mut self, raw: &str) {
        if raw.is_empty() {
            return;
        }
        let decoded = decode_entities(raw);
        if let Some(cell) = &mut self.cell {
            push_collapsed(cell, &decoded);
        } else if self.table.is_none() {
            push_collapsed(&mut self.text, &decoded);
        }
    }

    fn tag(&mut self, name: &str, closing: bool) {
        match (name, closing) {
            ("table", false) => {
                if self.table.is_some() {
                    // Nested table: keep reading its text into the current cell.
                    self.depth += 1;
                    return;
                }
                self.flush_text();
                self.table = Some(Table::default());
            }
            ("table", true) => {
                if self.depth > 0 {
                    self.depth -= 1;
                    return;
                }
                self.end_row();
                if let Some(t) = self.table.take() {
                    if !t.rows.is_empty() {
                        self.blocks.push(Block::Table(t));
                    }
                }
            }
            _ if self.depth > 0 => {
                if let Some(cell) = &mut self.cell {
                    push_collapsed(cell, " ");
                }
            }
            ("thead", open) if self.table.is_some() => self.in_head = !open,
            ("tr", false) if self.table.is_some() => {
                self.end_row();
                self.row = Some(Row::default());
                self.row_all_th = true;
            }
            ("tr", true) => self.end_row(),
            ("td" | "th", false) if self.table.is_some() => {
                self.end_cell();
                if self.row.is_none() {
                    self.row = Some(Row::default());
                    self.row_all_th = true;
                }
                self.cell = Some(String::new());
                self.cell_is_th = name == "th";
            }
            ("td" | "th", true) => self.end_cell(),
            ("br", _) => {
                if let Some(cell) = &mut self.cell {
                    push_collapsed(cell, " ");
                } else if self.table.is_none() {
                    self.text.push('\n');
                }
            }
            (
                "p" | "div" | "li" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "pre" | "ul" | "ol"
                | "hr",
                _,
            ) if self.table.is_none() && !self.text.is_empty() && !self.text.ends_with('\n') => {
                self.text.push('\n');
            }
            _ => {}
        }
    }

    fn end_cell(&mut self) {
        if let Some(cell) = self.cell.take() {
            if !self.cell_is_th {
                self.row_all_th = false;
            }
            if let Some(row) = &mut self.row {
                row.cells.push(cell.trim().to_string());
            }
        }
    }

    fn end_row(&mut self) {
        self.end_cell();
        if let (Some(mut row), Some(table)) = (self.row.take(), self.table.as_mut()) {
            let body_seen = table.rows.iter().any(|r| !r.header);
            row.header = self.in_head || (self.row_all_th && !body_seen);
            if !row.cells.is_empty() {
                table.rows.push(row);
            }
        }
    }

    fn flush_text(&mut self) {
        let t = tidy(&self.text);
        if !t.is_empty() {
            self.blocks.push(Block::Text(t));
        }
        self.text.clear();
    }

    fn finish(mut self) -> Vec<Block> {
        if self.table.is_some() {
            self.tag("table", true);
        }
        self.flush_text();
        self.blocks
    }
}

/// Append text with runs of whitespace collapsed to one space.
fn push_collapsed(out: &mut String, s: &str) {
    for ch in s.chars() {
        if ch.is_whitespace() && ch != '\u{a0}' {
            if !(out.is_empty() || out.ends_with(' ') || out.ends_with('\n')) {
                out.push(' ');
            }
        } else {
            out.push(if ch == '\u{a0}' { ' ' } else { ch });
        }
    }
}

fn tidy(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                "hellip" => Some('…'),
                "times" => Some('×'),
                n if n.starts_with("#x") || n.starts_with("#X") => u32::from_str_radix(&n[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            ch.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn looks_numeric(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E' | ',' | '%'))
        && t.chars().any(|c| c.is_ascii_digit())
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

fn truncate(s: &str, w: usize) -> String {
    if width_of(s) <= w {
        return s.to_string();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A table as aligned text no wider than `max_width` (cells are cut with `…` if need be);
/// numbers are right-aligned; header rows are underlined (and bold with colour).
pub fn render_table(t: &Table, max_width: usize, color: bool) -> String {
    let ncols = t.rows.iter().map(|r| r.cells.len()).max().unwrap_or(0);
    if ncols == 0 {
        return String::new();
    }
    let mut widths = vec![0usize; ncols];
    for r in &t.rows {
        for (i, c) in r.cells.iter().enumerate() {
            widths[i] = widths[i].max(width_of(c));
        }
    }
    let sep = 2;
    let total = |w: &[usize]| w.iter().sum::<usize>() + sep * (w.len().saturating_sub(1));
    while total(&widths) > max_width {
        let (i, &widest) = widths
            .iter()
            .enumerate()
            .max_by_key(|(_, w)| **w)
            .expect("at least one column");
        if widest <= 4 {
            break;
        }
        widths[i] -= 1;
    }
    let numeric: Vec<bool> = (0..ncols)
        .map(|i| {
            let body: Vec<&String> = t
                .rows
                .iter()
                .filter(|r| !r.header)
                .filter_map(|r| r.cells.get(i))
                .filter(|c| !c.is_empty())
                .collect();
            !body.is_empty() && body.iter().all(|c| looks_numeric(c))
        })
        .collect();
    let mut out = String::new();
    let mut header_done = false;
    for (ri, r) in t.rows.iter().enumerate() {
        if !r.header && !header_done && ri > 0 {
            let rule: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
            out.push_str(&rule.join(&" ".repeat(sep)));
            out.push('\n');
            header_done = true;
        }
        if !r.header {
            header_done = true;
        }
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate() {
            let cell = truncate(r.cells.get(i).map(String::as_str).unwrap_or(""), *w);
            let pad = w - width_of(&cell);
            let right = numeric[i];
            if i > 0 {
                line.push_str(&" ".repeat(sep));
            }
            if right {
                line.push_str(&" ".repeat(pad));
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                if i + 1 < ncols {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        let line = line.trim_end().to_string();
        if r.header && color {
            out.push_str(&format!("\x1b[1m{line}\x1b[0m\n"));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The whole page as terminal text.
pub fn render(html: &str, max_width: usize, color: bool) -> String {
    let mut out = String::new();
    for b in parse(html) {
        match b {
            Block::Text(t) => {
                out.push_str(&t);
                out.push('\n');
            }
            Block::Table(t) => out.push_str(&render_table(&t, max_width, color)),
        }
    }
    out
}

/// The page as Markdown: tables become pipe tables (header row first), other markup its text.
/// This is how the output policy shows a DataFrame to a model.
pub fn markdown(html: &str) -> String {
    let mut out = String::new();
    for b in parse(html) {
        match b {
            Block::Text(t) => {
                out.push_str(&t);
                out.push('\n');
            }
            Block::Table(t) => {
                let ncols = t.rows.iter().map(|r| r.cells.len()).max().unwrap_or(0);
                if ncols == 0 {
                    continue;
                }
                let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
                let line = |cells: &[String]| {
                    let mut l = String::from("|");
                    for i in 0..ncols {
                        l.push(' ');
                        l.push_str(&cell(cells.get(i).map(String::as_str).unwrap_or("")));
                        l.push_str(" |");
                    }
                    l.push('\n');
                    l
                };
                let headers: Vec<&Row> = t.rows.iter().filter(|r| r.header).collect();
                let body: Vec<&Row> = t.rows.iter().filter(|r| !r.header).collect();
                // Several header rows (a MultiIndex) are joined cell by cell.
                let head: Vec<String> = if headers.is_empty() {
                    vec![String::new(); ncols]
                } else {
                    (0..ncols)
                        .map(|i| {
                            headers
                                .iter()
                                .filter_map(|r| r.cells.get(i))
                                .filter(|c| !c.is_empty())
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .collect()
                };
                out.push_str(&line(&head));
                out.push('|');
                for _ in 0..ncols {
                    out.push_str(" --- |");
                }
                out.push('\n');
                for r in body {
                    out.push_str(&line(&r.cells));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataframes_become_markdown_tables() {
        let md = markdown(DATAFRAME);
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(
            lines,
            [
                "|  | name | score |",
                "| --- | --- | --- |",
                "| 0 | Ada & co | 1.5 |",
                "| 1 | Grace | 12.25 |"
            ],
            "{md}"
        );
        assert!(md.contains("2 rows × 2 columns"), "{md}");
    }

    const DATAFRAME: &str = r#"<div>
<style scoped>
    .dataframe tbody tr th:only-of-type { vertical-align: middle; }
</style>
<table border="1" class="dataframe">
  <thead>
    <tr style="text-align: right;">
      <th></th>
      <th>name</th>
      <th>score</th>
    </tr>
  </thead>
  <tbody>
    <tr>
      <th>0</th>
      <td>Ada &amp; co</td>
      <td>1.5</td>
    </tr>
    <tr>
      <th>1</th>
      <td>Grace</td>
      <td>12.25</td>
    </tr>
  </tbody>
</table>
<p>2 rows &times; 2 columns</p>
</div>"#;

    #[test]
    fn dataframe_table() {
        let blocks = parse(DATAFRAME);
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        let Block::Table(t) = &blocks[0] else {
            panic!("{blocks:?}")
        };
        assert_eq!(t.rows.len(), 3);
        assert!(t.rows[0].header);
        assert_eq!(t.rows[0].cells, vec!["", "name", "score"]);
        assert_eq!(t.rows[1].cells, vec!["0", "Ada & co", "1.5"]);
        assert_eq!(blocks[1], Block::Text("2 rows × 2 columns".into()));
        let text = render(DATAFRAME, 80, false);
        let expected = "   name      score\n\
                        ─  ────────  ─────\n\
                        0  Ada & co    1.5\n\
                        1  Grace     12.25\n\
                        2 rows × 2 columns\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn narrow_terminal_truncates() {
        let t = Table {
            rows: vec![Row {
                cells: vec!["a".repeat(50), "b".repeat(50)],
                header: false,
            }],
        };
        let out = render_table(&t, 40, false);
        assert!(out.lines().all(|l| width_of(l) <= 40), "{out}");
        assert!(out.contains('…'));
    }

    #[test]
    fn plain_markup_and_entities() {
        assert_eq!(
            render("<b>bold</b> &lt;x&gt; &#65;&#x42; <br>next", 80, false),
            "bold <x> AB\nnext\n"
        );
        assert_eq!(render("a < b", 80, false), "a < b\n");
        assert_eq!(
            render("<!-- hidden --><script>x<y</script>seen", 80, false),
            "seen\n"
        );
    }

    #[test]
    fn headerless_table_and_unclosed() {
        let out = render(
            "<table><tr><td>1</td><td>x</td><tr><td>22</td><td>yy",
            80,
            false,
        );
        assert_eq!(out, " 1  x\n22  yy\n");
    }
}
