//! No import cycles between the crate's modules (issue 22): a change to one module
//! of a cycle is a change to all of them, and they cannot be read in data-flow
//! order. This test reads `src/` as text and fails naming every cycle it finds.
//!
//! A module is a file (`a/b.rs` or `a/b/mod.rs` is `a::b`). Module `m` depends on
//! module `t` when its non-test code names a path into `t`: `use crate::t::…`,
//! `use super::…`, or a `crate::t::…` / `super::…` path inline. A path resolves to
//! the longest prefix that is a module file. A module's own ancestors and
//! descendants are not counted: a child reaching its parent (`super::Error`) and a
//! parent declaring its children are how Rust modules nest, not a cycle. Test code
//! (`tests.rs`, `*_tests.rs`, everything after a file's first `#[cfg(test)]`) may
//! reach anywhere and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Cycles not broken yet, each with who breaks it; delete the line when it goes.
const KNOWN: &[&[&str]] = &[];

fn modules(src: &Path) -> BTreeMap<Module, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<Module, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, src, out);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut m: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if m.last().is_some_and(|l| l == "mod") {
                m.pop();
            }
            if m == ["lib"] || m == ["main"] {
                m.clear();
            }
            out.insert(m, std::fs::read_to_string(&p).unwrap());
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// Non-test code without comments.
fn code(path_name: &str, text: &str) -> String {
    if path_name == "tests" || path_name.ends_with("_tests") {
        return String::new();
    }
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use` tree names, e.g. `crate::{a::B, c::{d, e}}` gives
/// `crate::a::B`, `crate::c::d`, `crate::c::e`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("");
        return vec![
            path.split("::")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        ];
    };
    let prefix: Vec<String> = tree[..open]
        .split("::")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|rest| prefix.iter().cloned().chain(rest).collect())
        .collect()
}

/// The paths of `text` that start with `crate` or `super`: `use` trees and inline.
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for stmt in text.split(';') {
        let s = stmt.trim_start();
        let s = s.strip_prefix("pub(crate) ").unwrap_or(s);
        let s = s.strip_prefix("pub(super) ").unwrap_or(s);
        let s = s.strip_prefix("pub ").unwrap_or(s);
        if let Some(tree) = s.strip_prefix("use ") {
            out.extend(expand(tree));
        }
    }
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for start in ["crate::", "super::"] {
        for (i, _) in text.match_indices(start) {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| ident(c) || c == ':' || c == '{') {
                continue; // part of a longer path or a `use` group, seen above
            }
            let path: String = text[i..]
                .chars()
                .take_while(|&c| ident(c) || c == ':')
                .collect();
            out.push(path.split("::").map(str::to_owned).collect());
        }
    }
    out
}

fn resolve(mods: &BTreeMap<Module, String>, segs: &[String]) -> Module {
    let mut best = Vec::new();
    for i in 1..=segs.len() {
        if mods.contains_key(&segs[..i]) {
            best = segs[..i].to_vec();
        } else {
            break;
        }
    }
    best
}

fn graph(mods: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges = BTreeMap::new();
    for (m, text) in mods {
        let name = m.last().map(String::as_str).unwrap_or("");
        let mut targets = BTreeSet::new();
        for path in paths(&code(name, text)) {
            let target = match path.first().map(String::as_str) {
                Some("crate") => resolve(mods, &path[1..]),
                Some("super") => {
                    let mut base: Module = m[..m.len().saturating_sub(1)].to_vec();
                    let mut rest = &path[1..];
                    while rest.first().is_some_and(|s| s == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    resolve(mods, &base)
                }
                _ => continue,
            };
            let related = target.starts_with(m) || m.starts_with(&target);
            if !related {
                targets.insert(target);
            }
        }
        edges.insert(m.clone(), targets);
    }
    edges
}

/// Strongly connected components of more than one module, each sorted.
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn finish(
        v: &Module,
        e: &BTreeMap<Module, BTreeSet<Module>>,
        seen: &mut BTreeSet<Module>,
        order: &mut Vec<Module>,
    ) {
        if !seen.insert(v.clone()) {
            return;
        }
        for w in e.get(v).into_iter().flatten() {
            finish(w, e, seen, order);
        }
        order.push(v.clone());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in edges.keys() {
        finish(v, edges, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (v, ws) in edges {
        for w in ws {
            rev.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        let mut comp = Vec::new();
        finish(v, &rev, &mut seen, &mut comp);
        if comp.len() > 1 {
            let mut names: Vec<String> = comp.iter().map(|m| m.join("::")).collect();
            names.sort();
            out.push(names);
        }
    }
    out.sort();
    out
}

#[test]
fn the_crate_has_no_import_cycles_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = cycles(&graph(&modules(&src)));
    let known: Vec<Vec<String>> = KNOWN
        .iter()
        .map(|c| c.iter().map(|s| (*s).to_owned()).collect())
        .collect();
    let new: Vec<_> = found.iter().filter(|c| !known.contains(c)).collect();
    assert!(new.is_empty(), "import cycles between modules: {new:?}");
    let gone: Vec<_> = known.iter().filter(|c| !found.contains(c)).collect();
    assert!(
        gone.is_empty(),
        "no longer a cycle, delete from KNOWN: {gone:?}"
    );
}

#[test]
fn the_cycle_finder_finds_the_cycles_it_was_written_for() {
    // The shapes issue 22 removed, as small trees: a three-module cycle through a
    // `use` group and an inline path, and two siblings through `super::`.
    let mods: BTreeMap<Module, String> = [
        (
            vec!["config"],
            "fn f() { crate::ble::pairing::AllowEntry::parse(); }",
        ),
        (vec!["ble"], "pub mod pairing;"),
        (
            vec!["ble", "pairing"],
            "use crate::store::{EventSink, PairingRecord};",
        ),
        (vec!["store"], "use crate::{config::Synchronous, model::X};"),
        (vec!["store", "limits"], "use super::{StoreError, outbox};"),
        (vec!["store", "outbox"], "use super::limits::Class;"),
        (vec!["store", "writer"], "use super::StoreError;"),
        (
            vec!["model"],
            "#[cfg(test)] mod t { use crate::config::X; }",
        ),
    ]
    .into_iter()
    .map(|(m, t)| (m.into_iter().map(str::to_owned).collect(), t.to_owned()))
    .collect();
    assert_eq!(
        cycles(&graph(&mods)),
        vec![
            vec!["ble::pairing", "config", "store"],
            vec!["store::limits", "store::outbox"],
        ]
    );
}
