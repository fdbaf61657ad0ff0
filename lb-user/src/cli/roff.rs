//! A small Markdown → roff (man(7)) converter, so that a man page can be made
//! from the document that already describes the same thing (stickylb.toml(5)
//! from docs/config.md) instead of a second copy that drifts.
//!
//! It knows the Markdown the project's docs use, not all of CommonMark: ATX
//! headings, paragraphs, `-`/`*`/`1.` lists (continuation lines indented),
//! pipe tables, fenced code blocks, inline code, `**bold**`, `*emphasis*`,
//! inline and reference links, backslash escapes. HTML comments are dropped.
//!
//! Tables become tagged paragraphs (`.TP`: the first cell is the tag, each
//! other cell a line labelled with its column's header) rather than tbl(1)
//! tables: the docs' tables have long prose cells, which tbl squeezes into
//! columns a few characters wide on an 80-column terminal.

use std::collections::HashMap;

/// One block of a Markdown document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Heading(usize, String),
    Paragraph(String),
    List {
        ordered: bool,
        items: Vec<String>,
    },
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Code(Vec<String>),
}

/// What a man page is, besides its body.
pub struct Page<'a> {
    /// The page's name, e.g. `stickylb.toml`.
    pub name: &'a str,
    pub section: u8,
    /// The footer's middle: the software and its version.
    pub source: &'a str,
    /// The header's middle, e.g. "File Formats Manual".
    pub manual: &'a str,
    /// NAME's one-line summary.
    pub summary: &'a str,
    /// SYNOPSIS, Markdown; empty: none.
    pub synopsis: &'a str,
    /// The DESCRIPTION and what follows, Markdown. Its `#` heading is the
    /// document's title, which NAME already gives, so it is left out;
    /// `##` headings become sections, deeper ones subsections.
    pub body: &'a str,
    /// Pages for SEE ALSO, e.g. `stickylb(1)`.
    pub see_also: &'a [&'a str],
}

impl Page<'_> {
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            ".TH {} {} \"\" {} {}\n",
            quoted(self.name),
            self.section,
            quoted(self.source),
            quoted(self.manual)
        ));
        out.push_str(".SH NAME\n");
        out.push_str(&line(&format!(
            "{} \\- {}",
            escape(self.name),
            inline(self.summary, &HashMap::new())
        )));
        if !self.synopsis.is_empty() {
            out.push_str(".SH SYNOPSIS\n");
            out.push_str(&to_roff(self.synopsis));
        }
        out.push_str(".SH DESCRIPTION\n");
        out.push_str(&to_roff(self.body));
        if !self.see_also.is_empty() {
            out.push_str(".SH \"SEE ALSO\"\n");
            let refs: Vec<String> = self
                .see_also
                .iter()
                .map(|r| match r.split_once('(') {
                    Some((name, sect)) => format!("\\fB{}\\fR({sect}", escape(name)),
                    None => escape(r),
                })
                .collect();
            out.push_str(&line(&refs.join(", ")));
        }
        out
    }
}

/// The roff of a Markdown document's blocks (no `.TH`: see [`Page`]).
pub fn to_roff(markdown: &str) -> String {
    let (blocks, links) = parse(markdown);
    let mut out = String::new();
    // A paragraph right after a heading needs no .PP of its own.
    let mut after_heading = true;
    for block in &blocks {
        match block {
            Block::Heading(1, _) => continue,
            Block::Heading(level, text) => {
                let macro_ = if *level == 2 { ".SH" } else { ".SS" };
                out.push_str(&format!("{macro_} \"{}\"\n", heading(text, &links)));
                after_heading = true;
                continue;
            }
            Block::Paragraph(text) => {
                if !after_heading {
                    out.push_str(".PP\n");
                }
                out.push_str(&line(&inline(text, &links)));
            }
            Block::List { ordered, items } => {
                for (i, item) in items.iter().enumerate() {
                    let tag = if *ordered {
                        format!("{}.", i + 1)
                    } else {
                        "\\(bu".to_owned()
                    };
                    out.push_str(&format!(".IP {tag} 4\n"));
                    out.push_str(&line(&inline(item, &links)));
                }
            }
            Block::Table { header, rows } => {
                for row in rows {
                    let mut cells = row.iter();
                    out.push_str(".TP\n");
                    out.push_str(&line(&inline(cells.next().map_or("", |c| c), &links)));
                    let mut first = true;
                    for (label, cell) in header.iter().skip(1).zip(cells) {
                        if cell.is_empty() {
                            continue;
                        }
                        if !first {
                            out.push_str(".br\n");
                        }
                        first = false;
                        let text = inline(cell, &links);
                        if label.is_empty() {
                            out.push_str(&line(&text));
                        } else {
                            out.push_str(&line(&format!(
                                "\\fI{}\\fR: {text}",
                                inline(label, &links)
                            )));
                        }
                    }
                }
            }
            Block::Code(lines) => {
                if !after_heading {
                    out.push_str(".PP\n");
                }
                out.push_str(".RS 4\n.nf\n");
                for l in lines {
                    // Not `line`: in no-fill mode the indentation shows.
                    let l = escape(l.trim_end());
                    if l.starts_with('.') || l.starts_with('\'') {
                        out.push_str("\\&");
                    }
                    out.push_str(&l);
                    out.push('\n');
                }
                out.push_str(".fi\n.RE\n");
            }
        }
        after_heading = false;
    }
    out
}

/// A heading's text for `.SH "..."`: fonts changes are lost on a heading
/// line in some formatters, so only the characters are kept.
fn heading(text: &str, links: &HashMap<String, String>) -> String {
    inline(&text.replace('`', ""), links).replace('"', "\\(dq")
}

/// A roff string argument in double quotes.
fn quoted(s: &str) -> String {
    format!("\"{}\"", escape(s).replace('"', "\\(dq"))
}

/// One text line: a leading `.` or `'` would make it a request.
fn line(text: &str) -> String {
    let text = text.trim();
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}\n")
    } else {
        format!("{text}\n")
    }
}

/// Escapes text for roff: the backslash, `-` (a minus, so that options and
/// commands copied from the page work), and the typographic characters the
/// docs use, as groff's named glyphs (portable, whatever the locale).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '≥' => out.push_str("\\(>="),
            '≤' => out.push_str("\\(<="),
            '–' => out.push_str("\\(en"),
            '—' => out.push_str("\\(em"),
            '×' => out.push_str("\\(mu"),
            '…' => out.push_str("\\&..."),
            '→' => out.push_str("\\(->"),
            _ => out.push(c),
        }
    }
    out
}

/// A URL that may be broken across lines after a `/` (`\\:`, a break point
/// that prints nothing), else a long one cannot be filled into the line.
fn url_text(url: &str) -> String {
    escape(url).replace('/', "/\\:")
}

/// A paragraph's Markdown inline syntax as roff font changes.
fn inline(text: &str, links: &HashMap<String, String>) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let find = |from: usize, pat: &[char]| -> Option<usize> {
        (from..=chars.len().saturating_sub(pat.len())).find(|&j| chars[j..].starts_with(pat))
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if chars.get(i + 1).is_some_and(|n| n.is_ascii_punctuation()) => {
                out.push_str(&escape(&chars[i + 1].to_string()));
                i += 2;
            }
            '`' => {
                let ticks = chars[i..].iter().take_while(|&&t| t == '`').count();
                let fence = vec!['`'; ticks];
                match find(i + ticks, &fence) {
                    Some(end) => {
                        let code: String = chars[i + ticks..end].iter().collect();
                        // CommonMark: one space each side is padding.
                        let code = match code.strip_prefix(' ').and_then(|c| c.strip_suffix(' ')) {
                            Some(inner) if !inner.trim().is_empty() => inner.to_owned(),
                            _ => code,
                        };
                        out.push_str(&format!("\\fB{}\\fR", escape(&code)));
                        i = end + ticks;
                    }
                    None => {
                        out.push_str(&"`".repeat(ticks));
                        i += ticks;
                    }
                }
            }
            '*' if chars.get(i + 1) == Some(&'*') => match find(i + 2, &['*', '*']) {
                Some(end) if end > i + 2 => {
                    let inner: String = chars[i + 2..end].iter().collect();
                    out.push_str(&format!("\\fB{}\\fR", inline(&inner, links)));
                    i = end + 2;
                }
                _ => {
                    out.push_str("**");
                    i += 2;
                }
            },
            '*' if chars.get(i + 1).is_some_and(|n| !n.is_whitespace()) => {
                match find(i + 1, &['*']) {
                    Some(end) => {
                        let inner: String = chars[i + 1..end].iter().collect();
                        out.push_str(&format!("\\fI{}\\fR", inline(&inner, links)));
                        i = end + 1;
                    }
                    None => {
                        out.push('*');
                        i += 1;
                    }
                }
            }
            '[' => match link(&chars, i, links) {
                Some((label, url, next)) => {
                    out.push_str(&inline(&label, links));
                    if let Some(url) = url.filter(|u| u.contains("://")) {
                        out.push_str(&format!(" <{}>", url_text(&url)));
                    }
                    i = next;
                }
                None => {
                    out.push('[');
                    i += 1;
                }
            },
            '<' if chars[i..].starts_with(&['<', 'h', 't', 't', 'p']) => match find(i, &['>']) {
                Some(end) => {
                    let url: String = chars[i..=end].iter().collect();
                    out.push_str(&url_text(&url));
                    i = end + 1;
                }
                None => {
                    out.push('<');
                    i += 1;
                }
            },
            _ => {
                out.push_str(&escape(&c.to_string()));
                i += 1;
            }
        }
    }
    out
}

/// A link at `chars[at]` (a `[`): its label, its target if it has one
/// that is known, and where the text goes on. `[text](url)`,
/// `[text][ref]` and `[ref]` with a definition are links; any other `[`
/// is text (`[health]`, `[[vip]]` in prose).
fn link(
    chars: &[char],
    at: usize,
    links: &HashMap<String, String>,
) -> Option<(String, Option<String>, usize)> {
    let mut depth = 0;
    let mut close = None;
    let mut in_code = false;
    for (j, &c) in chars.iter().enumerate().skip(at) {
        match c {
            // Brackets inside code (`[[vip]]`) are no link's.
            '`' => in_code = !in_code,
            '[' if !in_code => depth += 1,
            ']' if !in_code => {
                depth -= 1;
                if depth == 0 {
                    close = Some(j);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close?;
    let label: String = chars[at + 1..close].iter().collect();
    match chars.get(close + 1) {
        Some('(') => {
            let end = (close + 2..chars.len()).find(|&j| chars[j] == ')')?;
            let url: String = chars[close + 2..end].iter().collect();
            Some((label, Some(url), end + 1))
        }
        Some('[') => {
            let end = (close + 2..chars.len()).find(|&j| chars[j] == ']')?;
            let name: String = chars[close + 2..end].iter().collect();
            let name = if name.is_empty() { label.clone() } else { name };
            let url = links.get(&name.to_lowercase())?;
            Some((label, Some(url.clone()), end + 1))
        }
        _ => {
            let url = links.get(&label.to_lowercase())?;
            Some((label, Some(url.clone()), close + 1))
        }
    }
}

/// The blocks of a document, and its link definitions (`[name]: url`).
fn parse(markdown: &str) -> (Vec<Block>, HashMap<String, String>) {
    let mut blocks = Vec::new();
    let mut links = HashMap::new();
    let mut para: Vec<&str> = Vec::new();
    let lines: Vec<&str> = markdown.lines().collect();
    let flush = |para: &mut Vec<&str>, blocks: &mut Vec<Block>| {
        if !para.is_empty() {
            blocks.push(Block::Paragraph(para.join(" ")));
            para.clear();
        }
    };
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let l = raw.trim();
        if l.is_empty() {
            flush(&mut para, &mut blocks);
            i += 1;
        } else if l.starts_with("```") {
            flush(&mut para, &mut blocks);
            let mut code = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                code.push(lines[i].to_owned());
                i += 1;
            }
            blocks.push(Block::Code(code));
            i += 1;
        } else if l.starts_with("<!--") && l.ends_with("-->") {
            i += 1;
        } else if let Some((level, text)) = atx_heading(l) {
            flush(&mut para, &mut blocks);
            blocks.push(Block::Heading(level, text.to_owned()));
            i += 1;
        } else if l.starts_with('|') {
            flush(&mut para, &mut blocks);
            let mut rows = Vec::new();
            while i < lines.len() && lines[i].trim().starts_with('|') {
                rows.push(cells(lines[i].trim()));
                i += 1;
            }
            let header = rows.first().cloned().unwrap_or_default();
            let is_rule = |r: &Vec<String>| {
                r.iter()
                    .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
            };
            let body = rows
                .into_iter()
                .skip(1)
                .enumerate()
                .filter(|(n, r)| !(*n == 0 && is_rule(r)))
                .map(|(_, r)| r)
                .collect();
            blocks.push(Block::Table { header, rows: body });
        } else if let Some((ordered, first)) = list_item(l) {
            flush(&mut para, &mut blocks);
            let mut items = vec![first.to_owned()];
            i += 1;
            while i < lines.len() {
                let next = lines[i];
                let t = next.trim();
                if t.is_empty() {
                    // A blank line ends the list unless another item follows.
                    if lines
                        .get(i + 1)
                        .and_then(|n| list_item(n.trim()))
                        .is_some_and(|(o, _)| o == ordered)
                    {
                        i += 1;
                        continue;
                    }
                    break;
                }
                if let Some((o, text)) = list_item(t)
                    && o == ordered
                    && !next.starts_with(' ')
                {
                    items.push(text.to_owned());
                } else if t.starts_with("```") || t.starts_with('|') || atx_heading(t).is_some() {
                    break;
                } else if let Some(last) = items.last_mut() {
                    last.push(' ');
                    last.push_str(t);
                }
                i += 1;
            }
            blocks.push(Block::List { ordered, items });
        } else if let Some((name, url)) = link_definition(l) {
            links.insert(name.to_lowercase(), url.to_owned());
            i += 1;
        } else {
            para.push(l);
            i += 1;
        }
    }
    flush(&mut para, &mut blocks);
    (blocks, links)
}

fn atx_heading(l: &str) -> Option<(usize, &str)> {
    let level = l.chars().take_while(|&c| c == '#').count();
    let rest = l.get(level..)?;
    ((1..=6).contains(&level) && rest.starts_with(' ')).then(|| (level, rest.trim()))
}

/// `- text`, `* text` or `12. text`: (ordered, text).
fn list_item(l: &str) -> Option<(bool, &str)> {
    if let Some(rest) = l.strip_prefix("- ").or_else(|| l.strip_prefix("* ")) {
        return Some((false, rest.trim_start()));
    }
    let digits = l.chars().take_while(char::is_ascii_digit).count();
    let rest = l.get(digits..)?.strip_prefix(". ")?;
    (digits > 0).then(|| (true, rest.trim_start()))
}

/// `[name]: url`.
fn link_definition(l: &str) -> Option<(&str, &str)> {
    let rest = l.strip_prefix('[')?;
    let (name, rest) = rest.split_once("]:")?;
    let url = rest.trim();
    (!name.is_empty() && !url.is_empty() && !url.contains(' ')).then_some((name, url))
}

/// The cells of a `| a | b |` row, trimmed; `\|` is a `|` inside a cell
/// (also inside code, as GitHub requires).
fn cells(row: &str) -> Vec<String> {
    let inner = row.strip_prefix('|').unwrap_or(row);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_paragraphs_and_inline_markup() {
        let md = "# Title\n\nIntro *one*\nline, `a-b` and **bold**.\n\n## `[health]`: checks\n\n\
                  Text\\* here.\n\n### Sub\n\n.starts with a dot\n";
        assert_eq!(
            to_roff(md),
            "Intro \\fIone\\fR line, \\fBa\\-b\\fR and \\fBbold\\fR.\n\
             .SH \"[health]: checks\"\n\
             Text* here.\n\
             .SS \"Sub\"\n\
             \\&.starts with a dot\n"
        );
    }

    #[test]
    fn links_show_their_text_and_only_absolute_targets() {
        let md = "See [the guide](scale-out.md#x), [humantime] and [docs][h]; `[x]` and [vip] stay; \
                  [`[tunnel]`](#t).\n\n\
                  [humantime]: https://docs.rs/humantime\n[h]: https://example.org/h\n";
        assert_eq!(
            to_roff(md),
            "See the guide, humantime <https:/\\:/\\:docs.rs/\\:humantime> and docs \
             <https:/\\:/\\:example.org/\\:h>; \\fB[x]\\fR and [vip] stay; \\fB[tunnel]\\fR.\n"
        );
    }

    #[test]
    fn lists_with_continuation_lines() {
        let md = "Before:\n\n- first\n  continued\n- second\n\n1. one\n2. two\n\nAfter.\n";
        assert_eq!(
            to_roff(md),
            "Before:\n.IP \\(bu 4\nfirst continued\n.IP \\(bu 4\nsecond\n\
             .IP 1. 4\none\n.IP 2. 4\ntwo\n.PP\nAfter.\n"
        );
    }

    #[test]
    fn tables_become_tagged_paragraphs_labelled_by_header() {
        let md = "| field | default | meaning |\n|---|:-:|---|\n\
                  | `rise` | `2` | Successes \\| more. |\n| `mac` | | None ≥ 1 – x |\n";
        assert_eq!(
            to_roff(md),
            ".TP\n\\fBrise\\fR\n\\fIdefault\\fR: \\fB2\\fR\n.br\n\
             \\fImeaning\\fR: Successes | more.\n\
             .TP\n\\fBmac\\fR\n\\fImeaning\\fR: None \\(>= 1 \\(en x\n"
        );
    }

    #[test]
    fn code_blocks_are_verbatim_and_escaped() {
        let md = "Text.\n\n```toml\n.x = \"a\\b\"\n  indented -1\n```\n<!-- run: lb -->\n";
        assert_eq!(
            to_roff(md),
            "Text.\n.PP\n.RS 4\n.nf\n\\&.x = \"a\\eb\"\n  indented \\-1\n.fi\n.RE\n"
        );
    }

    #[test]
    fn code_keeps_leading_spaces_but_a_line_never_starts_a_request() {
        let out = to_roff("```\n  a\n'b\n```\n");
        assert_eq!(out, ".RS 4\n.nf\n  a\n\\&'b\n.fi\n.RE\n");
    }

    #[test]
    fn a_page_has_th_name_and_see_also() {
        let page = Page {
            name: "stickylb.toml",
            section: 5,
            source: "stickylb 1.2.3",
            manual: "File Formats Manual",
            summary: "the `stickylb` config",
            synopsis: "`/etc/stickylb/stickylb.toml`",
            body: "# T\n\nBody.\n",
            see_also: &["stickylb(1)", "stickylb-check(1)"],
        }
        .render();
        assert_eq!(
            page,
            ".TH \"stickylb.toml\" 5 \"\" \"stickylb 1.2.3\" \"File Formats Manual\"\n\
             .SH NAME\nstickylb.toml \\- the \\fBstickylb\\fR config\n\
             .SH SYNOPSIS\n\\fB/etc/stickylb/stickylb.toml\\fR\n\
             .SH DESCRIPTION\nBody.\n\
             .SH \"SEE ALSO\"\n\\fBstickylb\\fR(1), \\fBstickylb\\-check\\fR(1)\n"
        );
    }
}
