//! The runtime's module graph, read from its sources: every `crate::` path (in `use`
//! statements and in code, comments and `#[cfg(test)]` modules left out) is an edge from the
//! module that writes it to the module it names. The graph must have no cycle, the inside of
//! an env must not import the host side, and code must name the module that defines an item,
//! not the crate root's re-export (which would hide a cycle). Run with `--nocapture` to see
//! the edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`host::spawn`; `` for the crate root) → source text.
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "bin" {
                    dirs.push(path);
                }
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// The code of a source file: without comments and without its trailing test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::self").to_string()];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
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
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// Every `crate::` path `text` names.
fn crate_paths(text: &str) -> Vec<String> {
    let code = code(text);
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use crate::") {
        let end = rest[i..].find(';').unwrap() + i;
        paths.extend(expand(&rest[i + 4..end]));
        rest = &rest[end..];
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().next_back();
        if !before.is_some_and(is_ident) && !code[..i].ends_with("use ") {
            let len = code[i..]
                .find(|c: char| !is_ident(c))
                .unwrap_or(code.len() - i);
            paths.push(code[i..i + len].trim_end_matches(':').to_string());
        }
    }
    paths
}

/// The module a `crate::` path names: its longest prefix that is a module.
fn resolve(path: &str, modules: &BTreeMap<String, String>) -> String {
    let segs: Vec<&str> = path.split("::").skip(1).collect();
    (0..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| modules.contains_key(m))
        .unwrap()
}

/// module → the modules it names.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, text) in &modules {
        let to: BTreeSet<String> = crate_paths(text)
            .iter()
            .map(|p| resolve(p, &modules))
            .filter(|m| m != module)
            .collect();
        graph.insert(module.clone(), to);
    }
    graph
}

/// A cycle through `at`, if any, as the modules on it.
fn cycle_from(
    at: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == at) {
        return Some(path[i..].to_vec());
    }
    if !done.insert(at.to_string()) {
        return None;
    }
    path.push(at.to_string());
    for next in &graph[at] {
        if let Some(c) = cycle_from(next, graph, path, done) {
            return Some(c);
        }
    }
    path.pop();
    None
}

#[test]
fn no_import_cycle_and_inside_never_imports_host() {
    let graph = edges();
    for (from, to) in &graph {
        println!(
            "{from:>16} -> {}",
            Vec::from_iter(to.iter().cloned()).join(", ")
        );
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = cycle_from(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
    for (from, to) in &graph {
        let root = to.iter().any(String::is_empty) && !from.is_empty();
        assert!(
            !root,
            "{from} names a crate-root re-export; name the defining module"
        );
        if from.starts_with("inside") {
            let host: Vec<_> = to.iter().filter(|m| m.starts_with("host")).collect();
            assert!(host.is_empty(), "{from} (inside an env) imports {host:?}");
        }
    }
}

#[test]
fn use_trees_expand_and_paths_resolve() {
    let text = "use crate::a::{b, c::{self, D}};\nfn f() { crate::e::g(); } // crate::x\n";
    assert_eq!(
        crate_paths(text),
        [
            "crate::a::b",
            "crate::a::c",
            "crate::a::c::D",
            "crate::e::g"
        ]
    );
    let modules = BTreeMap::from([("".into(), String::new()), ("a".into(), String::new())]);
    assert_eq!(resolve("crate::a::Item", &modules), "a");
    assert_eq!(resolve("crate::Item", &modules), "");
}
