//! The shell blocks of an operator guide, each with the place it runs, so
//! that a test can run every command the guide shows, exactly as written.
//!
//! A guide marks each ```sh block with an HTML comment on the line just
//! before its fence, which a reader of the rendered page does not see:
//!
//! ~~~text
//! <!-- run: backend -->
//! ```sh
//! ip addr add 192.0.2.10/32 dev lo
//! ```
//! ~~~
//!
//! The word after `run:` names where the block runs (a role: `lb`,
//! `backend`, `client`, `systemd`, ...); which namespace or container a role
//! means is up to the test that runs the guide. A ```sh or ```console block
//! without a mark is an error: every command in the guide must be run by a
//! test. Blocks in other languages (```toml, ```text, ...) are not commands.

use std::path::Path;

use crate::netns::Result;

macro_rules! bail {
    ($($t:tt)*) => {
        return Err(format!($($t)*))
    };
}

/// One shell block of a guide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Where it runs: the word after `run:`.
    pub role: String,
    /// The block's text, as written (one command per line, `\` continuations
    /// and comments included).
    pub text: String,
    /// The 1-based line of its opening fence, for messages.
    pub line: usize,
}

/// Languages whose blocks hold commands and so must carry a `run:` mark.
const SHELL_LANGS: &[&str] = &["sh", "bash", "shell", "console"];

/// Every shell block of `markdown`, in order. Fails on a shell block without
/// a mark, a mark not followed by a shell block, or an unclosed fence.
pub fn parse(markdown: &str) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut pending: Option<(String, usize)> = None;
    let mut lines = markdown.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(role) = mark(trimmed) {
            if let Some((_, at)) = pending {
                bail!("line {}: a `run:` mark with no shell block after it", at);
            }
            pending = Some((role?, i + 1));
            continue;
        }
        let Some(lang) = trimmed.strip_prefix("```") else {
            if !trimmed.is_empty()
                && let Some((_, at)) = pending.take()
            {
                bail!("line {at}: a `run:` mark must be on the line just before a ```sh fence");
            }
            continue;
        };
        let lang = lang.trim();
        let mut text = String::new();
        let mut closed = false;
        for (_, body) in lines.by_ref() {
            if body.trim() == "```" {
                closed = true;
                break;
            }
            text.push_str(body);
            text.push('\n');
        }
        if !closed {
            bail!("line {}: a ``` fence that is never closed", i + 1);
        }
        let shell = SHELL_LANGS.contains(&lang);
        match (pending.take(), shell) {
            (Some((role, _)), true) => blocks.push(Block {
                role,
                text,
                line: i + 1,
            }),
            (None, true) => bail!(
                "line {}: a ```{lang} block without a `<!-- run: ROLE -->` mark: every \
                 command in this guide must be run by a test",
                i + 1
            ),
            (Some((_, at)), false) => {
                bail!("line {at}: a `run:` mark before a ```{lang} block, which is not shell")
            }
            (None, false) => {}
        }
    }
    if let Some((_, at)) = pending {
        bail!("line {at}: a `run:` mark at the end of the file");
    }
    Ok(blocks)
}

/// The role of a `<!-- run: ROLE -->` line, if it is one.
fn mark(line: &str) -> Option<Result<String>> {
    let inner = line.strip_prefix("<!--")?.strip_suffix("-->")?.trim();
    let role = inner.strip_prefix("run:")?.trim();
    Some(
        if !role.is_empty()
            && role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            Ok(role.to_owned())
        } else {
            Err(format!(
                "`<!-- run: {role} -->`: a role is one word (letters, digits, - or _)"
            ))
        },
    )
}

/// The blocks of the guide at `path` (relative to the workspace root).
pub fn load(path: &str) -> Result<Vec<Block>> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let text =
        std::fs::read_to_string(&full).map_err(|e| format!("read {}: {e}", full.display()))?;
    parse(&text).map_err(|e| format!("{path}: {e}"))
}

/// The blocks of `role`, failing when there are none (a guide that lost a
/// section must not pass its test by running nothing).
pub fn of_role<'a>(blocks: &'a [Block], role: &str) -> Result<Vec<&'a Block>> {
    let found: Vec<&Block> = blocks.iter().filter(|b| b.role == role).collect();
    if found.is_empty() {
        bail!("no `<!-- run: {role} -->` block");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_blocks_are_returned_with_their_role_and_line() {
        let md = "# Guide\n\n<!-- run: backend -->\n```sh\nip addr add 192.0.2.10/32 dev lo\n```\n\n\
                  ```toml\ninterface = \"eth0\"\n```\n<!-- run: lb -->\n```console\nstickylb status\n```\n";
        let blocks = parse(md).unwrap();
        assert_eq!(
            blocks,
            vec![
                Block {
                    role: "backend".into(),
                    text: "ip addr add 192.0.2.10/32 dev lo\n".into(),
                    line: 4
                },
                Block {
                    role: "lb".into(),
                    text: "stickylb status\n".into(),
                    line: 12
                },
            ]
        );
        assert_eq!(of_role(&blocks, "lb").unwrap().len(), 1);
        assert!(of_role(&blocks, "client").is_err());
    }

    #[test]
    fn an_unmarked_shell_block_is_an_error() {
        let err = parse("text\n```sh\nrm -rf /tmp/x\n```\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_mark_must_touch_a_shell_fence() {
        assert!(parse("<!-- run: lb -->\n\nsome prose\n```sh\nx\n```\n").is_err());
        assert!(parse("<!-- run: lb -->\n```toml\nx = 1\n```\n").is_err());
        assert!(parse("<!-- run: lb -->\n").is_err());
        assert!(parse("<!-- run: two words -->\n```sh\nx\n```\n").is_err());
        assert!(parse("<!-- run: lb -->\n```sh\nx\n").is_err());
    }
}
