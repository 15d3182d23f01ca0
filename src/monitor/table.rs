//! One table model for the reports, rendered to aligned text, Markdown and HTML (a `maud`
//! template: every cell is escaped by the template, never by hand).

use maud::{Markup, html};

/// How a column's cells line up (numbers right, words left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub title: &'static str,
    pub align: Align,
    /// The narrowest the column is in text (so that a report's columns stay put run to run).
    pub min_width: usize,
}

impl Column {
    pub fn left(title: &'static str, min_width: usize) -> Column {
        Column {
            title,
            align: Align::Left,
            min_width,
        }
    }

    pub fn right(title: &'static str, min_width: usize) -> Column {
        Column {
            title,
            align: Align::Right,
            min_width,
        }
    }
}

/// A table: its columns and rows of cell texts (source text included: each renderer makes it
/// inert in its own format).
#[derive(Debug, Clone)]
pub struct Table {
    /// The HTML element id, for pages and tests that look the table up.
    pub id: Option<&'static str>,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<String>>,
    /// Rows after the body (a total), set apart in every format.
    pub footer: Vec<Vec<String>>,
}

impl Table {
    pub fn new(id: Option<&'static str>, columns: Vec<Column>) -> Table {
        Table {
            id,
            columns,
            rows: Vec::new(),
            footer: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn cell(row: &[String], i: usize) -> &str {
        row.get(i).map(String::as_str).unwrap_or("")
    }

    /// Aligned columns, one space apart, `indent` before each line; a cell's line breaks and
    /// control characters are shown as spaces so a row stays one line. A last column of
    /// left-aligned words is not padded.
    pub fn text(&self, indent: &str) -> String {
        let flat = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let all: Vec<Vec<String>> = std::iter::once(
            self.columns
                .iter()
                .map(|c| c.title.to_string())
                .collect::<Vec<_>>(),
        )
        .chain(self.rows.iter().chain(&self.footer).map(|r| {
            (0..self.columns.len())
                .map(|i| flat(Self::cell(r, i)))
                .collect()
        }))
        .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                all.iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(c.min_width)
            })
            .collect();
        let mut out = String::new();
        for row in &all {
            let mut line = String::from(indent);
            for (i, (c, w)) in self.columns.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                let cell = &row[i];
                let pad = w.saturating_sub(cell.chars().count());
                let last = i + 1 == self.columns.len();
                match c.align {
                    Align::Left if last => line.push_str(cell),
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// A GitHub-flavoured Markdown table; cells are inert (see [`md_escape`]).
    pub fn markdown(&self) -> String {
        let mut out = String::from("|");
        for c in &self.columns {
            out.push(' ');
            out.push_str(c.title);
            out.push_str(" |");
        }
        out.push_str("\n|");
        for c in &self.columns {
            out.push_str(match c.align {
                Align::Left => "---|",
                Align::Right => "---:|",
            });
        }
        out.push('\n');
        for (row, strong) in self
            .rows
            .iter()
            .map(|r| (r, false))
            .chain(self.footer.iter().map(|r| (r, true)))
        {
            out.push('|');
            for i in 0..self.columns.len() {
                let cell = md_escape(Self::cell(row, i));
                if strong && !cell.is_empty() {
                    out.push_str(&format!(" **{cell}** |"));
                } else {
                    out.push_str(&format!(" {cell} |"));
                }
            }
            out.push('\n');
        }
        out
    }

    /// The table as HTML; left-aligned cells carry the class `l`, a cell's line breaks `<br>`.
    pub fn html(&self) -> Markup {
        let class = |c: &Column| (c.align == Align::Left).then_some("l");
        html! {
            table id=[self.id] {
                tr { @for c in &self.columns { th class=[class(c)] { (c.title) } } }
                @for row in &self.rows {
                    tr { @for (i, c) in self.columns.iter().enumerate() {
                        td class=[class(c)] { (lines(Self::cell(row, i))) }
                    } }
                }
                @for row in &self.footer {
                    tr class="total" { @for (i, c) in self.columns.iter().enumerate() {
                        td class=[class(c)] { b { (lines(Self::cell(row, i))) } }
                    } }
                }
            }
        }
    }
}

/// A cell's lines joined by `<br>` (each line escaped).
fn lines(s: &str) -> Markup {
    html! {
        @for (i, l) in s.split('\n').enumerate() {
            @if i > 0 { br; }
            (l)
        }
    }
}

/// Source text (keys, messages) as inert Markdown: on one line, HTML and Markdown's own
/// characters escaped, so a value holding `<script>`, `|` or a newline is shown, not rendered.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push_str("\\n"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(
            Some("t"),
            vec![Column::left("entity", 8), Column::right("rows", 6)],
        );
        t.push(vec!["patients".into(), "1,200".into()]);
        t.push(vec!["a|<b>\nc".into(), "7".into()]);
        t.footer.push(vec!["total".into(), "1,207".into()]);
        t
    }

    #[test]
    fn text_aligns_and_keeps_rows_on_one_line() {
        let text = sample().text("  ");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  entity     rows");
        assert_eq!(lines[1], "  patients  1,200");
        assert_eq!(lines[2], "  a|<b> c       7");
        assert_eq!(lines[3], "  total     1,207");
    }

    #[test]
    fn markdown_escapes_cells_and_marks_numbers_right() {
        let md = sample().markdown();
        assert!(md.starts_with("| entity | rows |\n|---|---:|\n"), "{md}");
        assert!(md.contains("| a\\|&lt;b&gt;\\nc | 7 |"), "{md}");
        assert!(md.contains("| **total** | **1,207** |"), "{md}");
    }

    #[test]
    fn html_escapes_every_cell() {
        let h = sample().html().into_string();
        assert!(h.starts_with("<table id=\"t\"><tr><th class=\"l\">entity</th><th>rows</th>"));
        assert!(
            h.contains("<td class=\"l\">a|&lt;b&gt;<br>c</td><td>7</td>"),
            "{h}"
        );
        assert!(!h.contains("<b>c"), "{h}");
    }
}
