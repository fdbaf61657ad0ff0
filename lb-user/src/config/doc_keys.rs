//! Keeps docs/config.md (and so stickylb.toml(5), made from it) in step with
//! the parser: every key the file may hold is documented, and every field the
//! doc lists is one the parser takes.
//!
//! The keys are not listed by hand: they come from the `Raw*` types' own
//! `Deserialize` impls, through a deserializer that walks them. serde's
//! derive hands `deserialize_struct` the names of a struct's fields; to reach
//! a nested table, the walker offers just the one key leading to it, and
//! stops (with an error) once it has seen what is there.

use std::{cell::RefCell, collections::BTreeMap, fmt};

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, IntoDeserializer as _, MapAccess, SeqAccess, Visitor},
};

use super::raw::RawConfig;

const CONFIG_MD: &str = include_str!("../../../docs/config.md");

/// What is at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// A table: its type's name and its fields.
    Table(&'static str, &'static [&'static str]),
    Value,
}

#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

/// Walks to `target`, one key per level, and records what it finds there.
struct Walker<'a> {
    target: &'a [&'static str],
    depth: usize,
    found: &'a RefCell<Option<Shape>>,
}

impl Walker<'_> {
    fn at_target(&self) -> bool {
        self.depth == self.target.len()
    }

    fn value<T>(self) -> Result<T, Stop> {
        if self.at_target() {
            *self.found.borrow_mut() = Some(Shape::Value);
        }
        Err(Stop("a value".into()))
    }
}

macro_rules! values {
    ($($name:ident)*) => {
        $(fn $name<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.value()
        })*
    };
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Stop;

    values!(deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_map
        deserialize_identifier deserialize_ignored_any);

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        // An array of tables (`[[vip]]`): its element is at the same path.
        v.visit_seq(One(Some(self)))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        if self.at_target() {
            *self.found.borrow_mut() = Some(Shape::Table(name, fields));
            return Err(Stop("found".into()));
        }
        let key = self.target[self.depth];
        v.visit_map(OneKey {
            key: Some(key),
            value: Some(Walker {
                depth: self.depth + 1,
                ..self
            }),
        })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Stop> {
        self.value()
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Stop> {
        self.value()
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, Stop> {
        self.value()
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.value()
    }
}

struct One<'a>(Option<Walker<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        match self.0.take() {
            Some(w) => seed.deserialize(w).map(Some),
            None => Ok(None),
        }
    }
}

struct OneKey<'a> {
    key: Option<&'static str>,
    value: Option<Walker<'a>>,
}

impl<'de> MapAccess<'de> for OneKey<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(k) => seed.deserialize(k.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Stop> {
        seed.deserialize(self.value.take().expect("one value per key"))
    }
}

/// Every key path the parser takes, with what is there.
fn parser_keys() -> BTreeMap<Vec<&'static str>, Shape> {
    let mut out = BTreeMap::new();
    let mut queue: Vec<Vec<&'static str>> = vec![vec![]];
    while let Some(path) = queue.pop() {
        let found = RefCell::new(None);
        let walker = Walker {
            target: &path,
            depth: 0,
            found: &found,
        };
        let _ = RawConfig::deserialize(walker);
        let shape = found
            .into_inner()
            .unwrap_or_else(|| panic!("the walk never reached {path:?}"));
        if let Shape::Table(_, fields) = &shape {
            for f in *fields {
                let mut p = path.clone();
                p.push(*f);
                queue.push(p);
            }
        }
        out.insert(path, shape);
    }
    out
}

/// The field tables of docs/config.md, by the table path their section is
/// about (`## Global settings`: the top level; ``## `[[vip.backend]]`: ...``:
/// `vip.backend`), and every `` `[x.y]` `` the doc mentions.
struct Doc {
    sections: BTreeMap<Vec<String>, Vec<String>>,
    mentioned: Vec<Vec<String>>,
}

fn table_path(s: &str) -> Vec<String> {
    s.trim_matches(|c| c == '[' || c == ']')
        .split('.')
        .map(str::to_owned)
        .collect()
}

fn parse_doc(md: &str) -> Doc {
    let mut sections: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    let mut current: Option<Vec<String>> = None;
    let mut in_field_table = false;
    let mut heading = String::new();
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = h.to_owned();
            current = if h == "Global settings" {
                Some(vec![])
            } else {
                h.strip_prefix("`[")
                    .and_then(|r| r.split_once(']'))
                    .map(|(t, _)| table_path(t))
            };
            in_field_table = false;
            continue;
        }
        if !line.starts_with('|') {
            in_field_table = false;
            continue;
        }
        let first = line
            .trim_matches('|')
            .split('|')
            .next()
            .unwrap_or("")
            .trim();
        if first == "field" {
            let Some(path) = &current else {
                panic!("a field table under `## {heading}`, which names no table of the file");
            };
            sections.entry(path.clone()).or_default();
            in_field_table = true;
            continue;
        }
        if in_field_table && !first.starts_with("---") {
            let name = first.trim_matches('`').to_owned();
            sections
                .get_mut(current.as_ref().expect("in a section"))
                .expect("entry made at the header")
                .push(name);
        }
    }
    let mut mentioned = Vec::new();
    let mut rest = md;
    while let Some(i) = rest.find("`[") {
        rest = &rest[i + 1..];
        if let Some(end) = rest.find(']') {
            let inner = &rest[..end];
            if inner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.[".contains(c))
            {
                mentioned.push(table_path(inner));
            }
        }
    }
    Doc {
        sections,
        mentioned,
    }
}

/// What is wrong between the parser's keys and the doc; empty: in step.
fn drift(keys: &BTreeMap<Vec<&'static str>, Shape>, doc: &Doc) -> Vec<String> {
    let own = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let show = |p: &[String]| {
        if p.is_empty() {
            "the top level".to_owned()
        } else {
            format!("[{}]", p.join("."))
        }
    };
    // A table without a section of its own is documented by that of another
    // path of the same type: [vip.health] by [health].
    let section_of = |path: &[&str], name: &str| -> Option<&Vec<String>> {
        doc.sections.get(&own(path)).or_else(|| {
            keys.iter()
                .filter(|(_, s)| matches!(s, Shape::Table(n, _) if *n == name))
                .find_map(|(p, _)| doc.sections.get(&own(p)))
        })
    };
    let mut problems = Vec::new();
    for (path, shape) in keys {
        let Shape::Table(name, fields) = shape else {
            continue;
        };
        let Some(documented) = section_of(path, name) else {
            problems.push(format!(
                "{} ({name}): no `## `{}`` section with a field table",
                show(&own(path)),
                show(&own(path))
            ));
            continue;
        };
        for f in *fields {
            let mut p = own(path);
            p.push((*f).to_owned());
            let sub_table = matches!(
                keys.get(&path.iter().copied().chain([*f]).collect::<Vec<_>>()),
                Some(Shape::Table(..))
            );
            let ok = documented.contains(&(*f).to_owned())
                || (sub_table && (doc.sections.contains_key(&p) || doc.mentioned.contains(&p)));
            if !ok {
                problems.push(format!(
                    "`{}` is accepted by the parser but not documented in the field table of {}",
                    p.join("."),
                    show(&own(path))
                ));
            }
        }
    }
    for (path, fields) in &doc.sections {
        let key: Vec<&str> = path.iter().map(String::as_str).collect();
        let Some(Shape::Table(_, parsed)) = keys.get(&key) else {
            problems.push(format!(
                "{} is documented but the parser has no such table",
                show(path)
            ));
            continue;
        };
        for f in fields {
            if !parsed.contains(&f.as_str()) {
                problems.push(format!(
                    "`{f}` is documented in {} but the parser does not accept it",
                    show(path)
                ));
            }
        }
    }
    problems
}

#[test]
fn every_key_the_parser_accepts_is_documented_in_config_md() {
    let keys = parser_keys();
    // The walk itself works: it found the nested tables and their fields.
    assert!(matches!(
        keys.get(&vec!["vip", "backend", "health"]),
        Some(Shape::Table(..))
    ));
    assert_eq!(
        keys.get(&vec!["vip", "backend", "weight"]),
        Some(&Shape::Value)
    );
    assert!(keys.contains_key(&vec!["sync", "join_timeout"]));
    let problems = drift(&keys, &parse_doc(CONFIG_MD));
    assert!(
        problems.is_empty(),
        "docs/config.md and the parser (lb-user/src/config/) disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_missing_or_stale_doc_row_is_caught() {
    let keys = parser_keys();
    let without = CONFIG_MD.replace("| `hash_seed` |", "| `hash_sead` |");
    let problems = drift(&keys, &parse_doc(&without));
    assert_eq!(
        problems,
        [
            "`hash_seed` is accepted by the parser but not documented in the field table of the top level",
            "`hash_sead` is documented in the top level but the parser does not accept it",
        ]
    );
    let no_sync = CONFIG_MD.replace("## `[sync]`", "## Sync");
    let problems = drift(
        &keys,
        &parse_doc(&no_sync.replace(
            "| field | default | meaning | valid values |\n|---|---|---|---|\n| `listen`",
            "| `listen`",
        )),
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("[sync] (RawSync): no")),
        "{problems:?}"
    );
}
