//! `stickylb man`: the man pages. Section 1 (stickylb(1) and a page per
//! subcommand) comes from the clap definitions that also print `--help`;
//! section 5 (stickylb.toml(5)) from docs/config.md, the field-by-field
//! reference of the file (a unit test in `config` keeps that in step with
//! the parser). Neither is a second copy that could drift.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::{Cli, roff};

/// The config file's page: the name `stickylb man NAME` and `man NAME` take.
pub(super) const CONFIG_PAGE: &str = "stickylb.toml";

const CONFIG_MD: &str = include_str!("../../../docs/config.md");

/// What the config page says beyond docs/config.md: where the file is.
const CONFIG_FILES: &str = "\n## Files\n\n\
- `/etc/stickylb/stickylb.toml`: the file the systemd unit (`stickylb.service`) runs \
  with. The Debian package installs the commented example there as a conffile: an \
  upgrade keeps the operator's edits.\n\
- `/usr/share/doc/stickylb/`: the project's documentation, among it `config.md`, from \
  which this page is made.\n";

const CONFIG_SEE_ALSO: &[&str] = &[
    "stickylb(1)",
    "stickylb-check(1)",
    "stickylb-run(1)",
    "stickylb-reload(1)",
];

/// The command tree the section-1 pages describe: clap's `help` subcommand
/// has no page of its own (every page has the help it would print).
pub(super) fn tree() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn version_source() -> String {
    format!("stickylb {}", env!("CARGO_PKG_VERSION"))
}

/// Subcommands have no version of their own: every page's footer names
/// stickylb's.
fn command_page(cmd: &clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone()).source(version_source())
}

/// stickylb.toml(5), as roff.
pub(super) fn config_page() -> String {
    let source = version_source();
    let body = format!("{CONFIG_MD}{CONFIG_FILES}");
    roff::Page {
        name: CONFIG_PAGE,
        section: 5,
        source: &source,
        manual: "File Formats Manual",
        summary: "the configuration file of stickylb, the sticky XDP load balancer",
        synopsis: "`/etc/stickylb/stickylb.toml`\n\n`stickylb check -c FILE`, `stickylb run -c FILE`",
        body: &body,
        see_also: CONFIG_SEE_ALSO,
    }
    .render()
}

pub(super) fn run(
    cli: &Cli,
    dir: Option<&Path>,
    command: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let tree = tree();
    let Some(dir) = dir else {
        if let [name] = command
            && name == CONFIG_PAGE
        {
            return Ok(out.write_all(config_page().as_bytes())?);
        }
        let mut page = &tree;
        for name in command {
            page = page.find_subcommand(name).with_context(|| {
                format!(
                    "no command `{}`; `stickylb --help` lists them (the config file's \
                     page is `stickylb man {CONFIG_PAGE}`)",
                    command.join(" ")
                )
            })?;
        }
        return Ok(command_page(page).render(out)?);
    };
    let written = write_all(&tree, dir)?;
    if cli.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&written)?)?;
    } else {
        writeln!(
            out,
            "wrote {} man pages to {}:",
            written.len(),
            dir.display()
        )?;
        for p in &written {
            writeln!(out, "  {}", p.display())?;
        }
    }
    Ok(())
}

/// Every page, under the man tree `root` as man(1) looks for them:
/// `root/man1/stickylb*.1`, `root/man5/stickylb.toml.5`.
pub(super) fn write_all(tree: &clap::Command, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let man1 = root.join("man1");
    let man5 = root.join("man5");
    for d in [&man1, &man5] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let mut written = Vec::new();
    write_command_pages(tree, &man1, &mut written)?;
    let path = man5.join(format!("{CONFIG_PAGE}.5"));
    std::fs::write(&path, config_page()).with_context(|| format!("write {}", path.display()))?;
    written.push(path);
    Ok(written)
}

/// Writes `cmd`'s page and those of its subcommands, each named as the
/// pages that list it refer to it (stickylb-backend-add.1).
fn write_command_pages(
    cmd: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let page = command_page(cmd);
    let path = dir.join(page.get_filename());
    let mut text = Vec::new();
    page.render(&mut text)?;
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_command_pages(sub, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page names of every subcommand, as `man` finds them.
    fn command_names(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_owned()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                command_names(sub, &name, out);
            }
        }
        out.push(format!("man1/{name}.1"));
    }

    #[test]
    fn man_dir_has_a_page_for_every_command_and_the_config_file() {
        let mut want = Vec::new();
        command_names(&Cli::command(), "", &mut want);
        want.push("man5/stickylb.toml.5".to_owned());
        let dir = std::env::temp_dir().join(format!("stickylb-man-{}", std::process::id()));
        let written = write_all(&tree(), &dir).unwrap();
        let mut got: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        let on_disk = written.iter().filter(|p| p.is_file()).count();
        std::fs::remove_dir_all(&dir).unwrap();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(on_disk, want.len());
        assert!(want.contains(&"man1/stickylb-backend-add.1".to_owned()));
    }

    #[test]
    fn config_page_covers_every_section_of_config_md() {
        let page = config_page();
        assert!(
            page.starts_with(".TH \"stickylb.toml\" 5 "),
            "{}",
            &page[..80]
        );
        for section in CONFIG_MD.lines().filter_map(|l| l.strip_prefix("## ")) {
            let title = section.replace('`', "").replace('-', "\\-");
            assert!(
                page.contains(&format!(".SH \"{title}\"")),
                "no section {title:?} in stickylb.toml(5)"
            );
        }
        // Each field of a table is a tag of its own.
        assert!(page.contains(".TP\n\\fBaffinity_capacity\\fR\n"), "{page}");
        assert!(page.contains(".SH \"Files\""));
        // Nothing of Markdown's syntax is left over.
        for leftover in ["```", "](", "| ---", "|---", "**"] {
            assert!(!page.contains(leftover), "{leftover:?} in the page");
        }
    }

    #[test]
    fn see_also_names_pages_that_exist() {
        let mut names = Vec::new();
        command_names(&Cli::command(), "", &mut names);
        for r in CONFIG_SEE_ALSO {
            let (name, sect) = r.trim_end_matches(')').split_once('(').unwrap();
            assert!(
                names.contains(&format!("man{sect}/{name}.{sect}")),
                "SEE ALSO {r}: no such page"
            );
        }
    }
}
