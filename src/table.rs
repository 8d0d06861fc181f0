//! Plain tables: printed by the CLI, shown and exported (CSV) by the GUI.

/// A titled table of strings. Numbers are pre-formatted; numeric columns right-align.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// RFC 4180 CSV.
    pub fn to_csv(&self) -> String {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_owned()
            }
        };
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let cells: Vec<String> = line.iter().map(|c| quote(c)).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    fn is_numeric_column(&self, col: usize) -> bool {
        self.rows.iter().all(|r| {
            r.get(col).is_none_or(|c| {
                let c = c.trim_end_matches('%').trim_end_matches('×');
                c.is_empty() || c == "-" || c.parse::<f64>().is_ok()
            })
        })
    }
}

/// Longest cell (in characters) a text table prints; longer cells end in `…`. The CSV export
/// keeps every character.
pub const MAX_CELL_CHARS: usize = 120;

/// A cell as a text table prints it: control characters (line breaks, tabs) as spaces, and at
/// most [`MAX_CELL_CHARS`] characters, the last one an ellipsis when the cell was cut.
pub fn clip_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    clip_chars(cell, MAX_CELL_CHARS)
}

/// `text` with control characters as spaces, cut to `max` characters (at a character
/// boundary) with a trailing `…` when it was longer.
pub fn clip_chars(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let too_long = text.char_indices().nth(max).is_some();
    if !too_long && !text.contains(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let keep = if too_long { max.saturating_sub(1) } else { max };
    let mut out: String = text
        .chars()
        .take(keep)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if too_long {
        out.push('…');
    }
    std::borrow::Cow::Owned(out)
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::borrow::Cow;
        let n = self.headers.len();
        fn clip_row(cells: &[String], n: usize) -> Vec<Cow<'_, str>> {
            (0..n)
                .map(|i| cells.get(i).map_or(Cow::Borrowed(""), |c| clip_cell(c)))
                .collect()
        }
        let headers = clip_row(&self.headers, n);
        let rows: Vec<Vec<Cow<'_, str>>> = self.rows.iter().map(|r| clip_row(r, n)).collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let numeric: Vec<bool> = (0..n).map(|i| self.is_numeric_column(i)).collect();
        writeln!(f, "{}", clip_chars(&self.title, MAX_CELL_CHARS * 2))?;
        let has_header = self.headers.iter().any(|h| !h.is_empty());
        let line = |f: &mut std::fmt::Formatter<'_>, cells: &[Cow<'_, str>]| -> std::fmt::Result {
            let mut text = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                // Padding by hand: a format width above 65,535 panics.
                let pad = " ".repeat(w.saturating_sub(c.chars().count()));
                if numeric[i] && i > 0 {
                    text.push_str(&pad);
                    text.push_str(c);
                } else {
                    text.push_str(c);
                    text.push_str(&pad);
                }
            }
            writeln!(f, "  {}", text.trim_end())
        };
        if has_header {
            line(f, &headers)?;
            let rule: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
            writeln!(f, "  {}", rule.join("  "))?;
        }
        for row in &rows {
            line(f, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut t = Table::new("t", &["a", "b"]);
        t.row(vec!["x,y".into(), "say \"hi\"".into()]);
        assert_eq!(t.to_csv(), "a,b\n\"x,y\",\"say \"\"hi\"\"\"\n");
    }

    #[test]
    fn numeric_columns_right_align() {
        let mut t = Table::new("t", &["label", "n"]);
        t.row(vec!["long label".into(), "5".into()]);
        t.row(vec!["b".into(), "1234".into()]);
        let s = t.to_string();
        assert!(s.contains("long label     5"), "{s}");
        assert!(s.contains("b           1234"), "{s}");
    }

    #[test]
    fn long_cells_are_cut_with_an_ellipsis() {
        let mut t = Table::new("t", &["label", "n", "path"]);
        // 70,000 characters, two bytes each: a cut at a byte offset would split one.
        let long = "é".repeat(70_000);
        t.row(vec![long.clone(), "5".into(), format!("a\nb{long}")]);
        t.row(vec!["short".into(), "12".into(), "x".into()]);
        let s = t.to_string();
        let longest = s.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(
            longest <= 3 * MAX_CELL_CHARS + 10,
            "a line of {longest} chars"
        );
        assert_eq!(s.matches('…').count(), 2, "{s}");
        assert_eq!(
            s.lines().count(),
            5,
            "a line break inside a cell split the row:\n{s}"
        );
        let first = s.lines().nth(3).unwrap();
        assert!(first.starts_with(&format!("  {}…", "é".repeat(MAX_CELL_CHARS - 1))));
        // The CSV export keeps the whole cell.
        assert!(t.to_csv().contains(&long));
    }

    #[test]
    fn clipping_keeps_short_text_and_counts_characters() {
        assert_eq!(clip_chars("abc", 3), "abc");
        assert_eq!(clip_chars("abcd", 3), "ab…");
        assert_eq!(clip_chars("日本語テキスト", 4), "日本語…");
        assert_eq!(clip_chars("a\tb", 10), "a b");
        assert_eq!(clip_chars("", 0), "");
    }
}
