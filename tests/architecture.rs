//! The shape of `src/`: each top-level module sits in a layer and may use only its own layer and
//! those below it (the order is documented in `src/lib.rs`), and no file imports, through any
//! chain of `crate::` / `super::` paths, a file that imports it back. Read from the sources, so a
//! new upward import or cycle fails here before review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top to bottom. A module may use the modules of its own layer and of the layers after it.
const LAYERS: &[&[&str]] = &[
    &["commands", "serve"],
    &["cli"],
    &["check", "verify"],
    &["pipeline", "changes"],
    &["ledger"],
    &["monitor"],
    &["sink"],
    &["mapping", "transform", "validate"],
    &["source"],
    &["config", "redact"],
];

/// A source file's module path (`["pipeline", "run"]` for `src/pipeline/run.rs`) and its text.
type Files = BTreeMap<Vec<String>, String>;

fn read_src(dir: &Path, prefix: &[String], out: &mut Files) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if prefix.is_empty() && name == "bin" {
                continue; // binaries use the library from outside
            }
            let mut p = prefix.to_vec();
            p.push(name);
            read_src(&path, &p, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if prefix.is_empty() && (stem == "main" || stem == "lib") {
                continue;
            }
            let mut p = prefix.to_vec();
            if stem != "mod" {
                p.push(stem.to_string());
            }
            out.insert(p, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The text without comments (line comments and doc comments; `://` in a URL is kept) and
/// without its unit tests.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    // A file's unit tests (its last item, `#[cfg(test)] mod tests`) see it from inside.
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .enumerate()
        .map(|(n, line)| {
            let mut code = String::new();
            let mut rest = line;
            while let Some(i) = rest.find("//") {
                if i > 0 && rest[..i].ends_with(':') {
                    code.push_str(&rest[..i + 2]);
                    rest = &rest[i + 2..];
                    continue;
                }
                code.push_str(&rest[..i]);
                rest = "";
            }
            code.push_str(rest);
            (n + 1, code)
        })
}

/// The paths a line names: `crate::a::b`, `super::x`, `self::y`, each group `crate::a::{b, c}`
/// expanded; absolute, as module path segments (`super` resolved against `module`).
fn named_paths(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    for head in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = line[from..].find(head) {
            let at = from + i;
            from = at + head.len();
            let boundary = at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b'$'
                    || bytes[at - 1] == b':');
            if !boundary {
                continue;
            }
            let mut base: Vec<String> = match head {
                "crate::" => Vec::new(),
                // `super` of a/b.rs and of a/b/mod.rs is a; `self` of a/b/mod.rs is a::b.
                "super::" => module[..module.len().saturating_sub(1)].to_vec(),
                _ => module.to_vec(),
            };
            let rest = &line[from..];
            let mut segs = Vec::new();
            let mut chars = rest.char_indices().peekable();
            let mut seg = String::new();
            let mut group = None;
            while let Some((j, c)) = chars.next() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    seg.push(c);
                } else if c == ':' && rest[j..].starts_with("::") {
                    chars.next();
                    if !seg.is_empty() {
                        segs.push(std::mem::take(&mut seg));
                    }
                } else if c == '{' {
                    let end = rest[j..].find('}').map(|e| j + e).unwrap_or(rest.len());
                    group = Some(rest[j + 1..end].to_string());
                    break;
                } else {
                    break;
                }
            }
            if !seg.is_empty() {
                segs.push(seg);
            }
            while segs.first().map(String::as_str) == Some("super") {
                segs.remove(0);
                base.pop();
            }
            base.extend(segs);
            match group {
                Some(g) => {
                    for item in g.split(',') {
                        let first: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !first.is_empty() && first != "self" {
                            let mut p = base.clone();
                            p.push(first);
                            out.push(p);
                        }
                    }
                    out.push(base);
                }
                None => out.push(base),
            }
        }
    }
    out
}

/// Paths relative to a module's own children (`plan::Plan` in a file declaring `mod plan;`).
fn child_paths(line: &str, module: &[String], children: &[String]) -> Vec<Vec<String>> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    for child in children {
        let pat = format!("{child}::");
        let mut from = 0;
        while let Some(i) = line[from..].find(&pat) {
            let at = from + i;
            from = at + pat.len();
            let before = if at == 0 { b' ' } else { bytes[at - 1] };
            if before.is_ascii_alphanumeric() || before == b'_' || before == b':' || before == b'$'
            {
                continue;
            }
            let mut p = module.to_vec();
            p.push(child.clone());
            let next: String = line[from..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !next.is_empty() {
                p.push(next);
            }
            out.push(p);
        }
    }
    out
}

/// The modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_children(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_string)
        })
        .collect()
}

/// The file a path lands in: the longest prefix that is a file's module.
fn file_of<'a>(files: &'a Files, path: &[String]) -> Option<&'a Vec<String>> {
    (1..=path.len())
        .rev()
        .find_map(|n| files.get_key_value(&path[..n]).map(|(k, _)| k))
}

/// Imports that go up a layer, as `file:line: from -> to`.
fn upward_imports(files: &Files) -> Vec<String> {
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (*m, i)))
        .collect();
    let mut out = Vec::new();
    for (module, text) in files {
        let top = module[0].as_str();
        let Some(&mine) = layer_of.get(top) else {
            out.push(format!(
                "{top}: not in any layer (add it to LAYERS and src/lib.rs)"
            ));
            continue;
        };
        for (n, line) in code_lines(text) {
            for path in named_paths(&line, module) {
                let Some(to) = path.first() else { continue };
                if let Some(&theirs) = layer_of.get(to.as_str())
                    && theirs < mine
                {
                    out.push(format!("{}:{n}: {top} -> {to}", module.join("/")));
                }
            }
        }
    }
    out
}

/// Whether one module is the other's direct parent (a `mod.rs` and the files it declares use
/// each other's items, as Rust modules do; those pairs are not held to the DAG yet).
fn parent_and_child(a: &[String], b: &[String]) -> bool {
    (a.len() + 1 == b.len() && b.starts_with(a)) || (b.len() + 1 == a.len() && a.starts_with(b))
}

/// The import edges between files, but those between a module and its direct children.
fn edges(files: &Files) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in files {
        let set = out.entry(module.clone()).or_default();
        let children = declared_children(text);
        for (_, line) in code_lines(text) {
            let mut paths = named_paths(&line, module);
            paths.extend(child_paths(&line, module, &children));
            for path in paths {
                if let Some(to) = file_of(files, &path)
                    && to != module
                    && !parent_and_child(module, to)
                {
                    set.insert(to.clone());
                }
            }
        }
    }
    out
}

/// A cycle among files, if there is one (depth-first search).
fn a_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        v: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in edges.get(v).into_iter().flatten() {
            match state.get(w).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == w).unwrap();
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|m| m.join("::")).collect();
                    cycle.push(w.join("::"));
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(w, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in edges.keys() {
        if state.get(v).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(v, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn sources() -> Files {
    let mut files = Files::new();
    read_src(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut files,
    );
    files
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let files = sources();
    assert!(files.len() > 40, "read {} files", files.len());
    let up = upward_imports(&files);
    assert!(
        up.is_empty(),
        "imports from a layer above:\n{}",
        up.join("\n")
    );
}

#[test]
fn the_files_of_src_import_each_other_without_a_cycle() {
    let files = sources();
    let e = edges(&files);
    // The checker reads real edges: the engine's read loop imports the expected-rows stream.
    assert!(
        e[&vec!["pipeline".to_string(), "read".to_string()]]
            .contains(&vec!["pipeline".to_string(), "expected".to_string()])
    );
    if let Some(cycle) = a_cycle(&e) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checks_see_an_upward_import_and_a_cycle() {
    let mut files = Files::new();
    let m = |p: &str| p.split('/').map(str::to_string).collect::<Vec<_>>();
    files.insert(
        m("source"),
        "use crate::sink::mongodb::X; // crate::cli is a comment\n".into(),
    );
    files.insert(m("sink"), "pub mod mongodb;\n".into());
    files.insert(
        m("sink/mongodb"),
        "use super::super::source::{a, b};\n".into(),
    );
    let up = upward_imports(&files);
    assert_eq!(up, ["source:1: source -> sink"]);
    let cycle = a_cycle(&edges(&files)).expect("a cycle");
    assert!(cycle.contains(&"sink::mongodb".to_string()), "{cycle:?}");
    // A layer-respecting pair has neither.
    files.insert(m("source"), "use std::fmt; // see crate::sink\n".into());
    assert!(upward_imports(&files).is_empty());
    assert!(a_cycle(&edges(&files)).is_none());
}
