//! The module graph: which source file imports which, read from the code's own `use` paths,
//! checked against the layers of docs/architecture.md. Fails on an import cycle between
//! files and on an import that runs up a layer (a file's use of its own ancestors, the
//! `mod.rs` files of the folders it is in, is not counted: those declare it); the graph itself is kept in
//! docs/architecture.md between two markers and must match the code (run with
//! `CAIRN_BLESS=1` to rewrite it after a deliberate change).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the ground up, by module path prefix (the longest prefix wins). A file may
/// import files of its own layer or of lower ones, never of a higher one.
const LAYERS: &[(&str, usize)] = &[
    ("error", 0),
    ("progress", 0),
    ("id", 0),
    ("crypto", 0),
    ("chunker", 0),
    ("compress", 0),
    ("buffers", 0),
    ("beneath", 0),
    ("process", 0),
    ("format", 1),
    ("backend", 2),
    ("catalog", 3),
    ("repo", 4),
    ("source", 5),
    ("pg", 5),
    ("ops", 6),
    ("config", 6),
    ("cli", 7),
    ("main", 7),
];

const LAYER_NAMES: &[&str] = &["ground", "format", "backend", "catalog", "repo", "source, pg", "ops, config", "cli"];

const BEGIN: &str = "<!-- module-graph:begin (tests/it/layers.rs writes this; CAIRN_BLESS=1 to renew) -->";
const END: &str = "<!-- module-graph:end -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/repo/gc/mod.rs` -> `repo::gc`; the binary's files are `cli::…` and `main`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    if last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    parts.join("::")
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .filter(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}::")))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, layer)| *layer)
        .unwrap_or_else(|| panic!("module {module} has no layer in tests/it/layers.rs"))
}

/// The text of a file without comments, string literals and its unit-test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' && prev != '\'' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The child modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn children_of(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("pub(crate) ").or_else(|| line.strip_prefix("pub ")).unwrap_or(line);
            let name = rest.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// Every path that starts with `crate::`, `cairn::`, `super::`, `self::` or one of the
/// file's own child modules, with brace groups expanded: `crate::{a::{b, c}, d}` gives
/// `crate::a::b`, `crate::a::c`, `crate::d`.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let children = children_of(code);
    let mut heads: Vec<&str> = vec!["crate", "cairn", "super", "self"];
    heads.extend(children.iter().map(String::as_str));
    let bytes: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        if starts_word {
            for head in heads.iter().copied() {
                let word: Vec<char> = format!("{head}::").chars().collect();
                if bytes[i..].starts_with(&word) {
                    let mut j = i + word.len();
                    let mut found = Vec::new();
                    let start = if children.iter().any(|c| c == head) {
                        vec!["self".to_string(), head.to_string()]
                    } else {
                        vec![head.to_string()]
                    };
                    parse_tree(&bytes, &mut j, start, &mut found);
                    out.extend(found);
                    i = j;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

fn parse_tree(s: &[char], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
        if *i < s.len() && s[*i] == '{' {
            *i += 1;
            loop {
                parse_tree(s, i, prefix.clone(), out);
                while *i < s.len() && s[*i].is_whitespace() {
                    *i += 1;
                }
                match s.get(*i) {
                    Some(',') => *i += 1,
                    Some('}') => {
                        *i += 1;
                        return;
                    }
                    _ => return,
                }
                while *i < s.len() && s[*i].is_whitespace() {
                    *i += 1;
                }
                if s.get(*i) == Some(&'}') {
                    *i += 1;
                    return;
                }
            }
        }
        let start = *i;
        while *i < s.len() && (s[*i].is_alphanumeric() || s[*i] == '_') {
            *i += 1;
        }
        if *i == start {
            out.push(prefix);
            return;
        }
        prefix.push(s[start..*i].iter().collect());
        if s[*i..].starts_with(&[':', ':']) {
            *i += 2;
        } else {
            out.push(prefix);
            return;
        }
    }
}

/// The file a path lands in: its longest prefix that names a module of the crate.
fn resolve(path: &[String], from: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segments: Vec<String> = match path[0].as_str() {
        "crate" | "cairn" => path[1..].to_vec(),
        "self" if from == "main" => path[1..].to_vec(),
        "self" => from.split("::").map(String::from).chain(path[1..].iter().cloned()).collect(),
        "super" => {
            let mut base: Vec<String> = from.split("::").map(String::from).collect();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
            base.into_iter().chain(rest.iter().cloned()).collect()
        }
        _ => return None,
    };
    while !segments.is_empty() {
        let candidate = segments.join("::");
        if modules.contains(&candidate) {
            return Some(candidate);
        }
        segments.pop();
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// module -> the modules it imports (itself and its own ancestors' declarations aside).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).filter(|m| m != "lib" && m != "main").collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        if module == "lib" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut imports = BTreeSet::new();
        for path in paths_in(&code) {
            // In the binary, `crate::` names the binary's own modules (cli) and `cairn::`
            // the library's; both live under src/.
            if let Some(target) = resolve(&path, &module, &modules) {
                // A file's use of its own ancestors (`super::`, the folder's mod.rs) stays
                // inside its room: the parent declares and re-exports its children.
                if target != module && !module.starts_with(&format!("{target}::")) {
                    imports.insert(target);
                }
            }
        }
        graph.insert(module, imports);
    }
    graph
}

/// Strongly connected components of more than one module: the import cycles.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found
}

fn rendered(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut out = String::from("```text\n");
    for (layer, name) in LAYER_NAMES.iter().enumerate().rev() {
        out.push_str(&format!("{layer} {name}\n"));
        for (module, imports) in graph.iter().filter(|(m, _)| layer_of(m) == layer) {
            let list: Vec<&str> = imports.iter().map(String::as_str).collect();
            if list.is_empty() {
                out.push_str(&format!("    {module}\n"));
            } else {
                out.push_str(&format!("    {module} -> {}\n", list.join(", ")));
            }
        }
    }
    out.push_str("```\n");
    out
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles between modules: {found:?}");
}

#[test]
fn every_import_points_down_a_layer_or_across_one() {
    let graph = graph();
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(m, imports)| imports.iter().map(move |i| (m, i)))
        .filter(|(m, i)| layer_of(i) > layer_of(m))
        .map(|(m, i)| format!("{m} (layer {}) -> {i} (layer {})", layer_of(m), layer_of(i)))
        .collect();
    assert!(upward.is_empty(), "imports that run up a layer:\n{}", upward.join("\n"));
}

#[test]
fn docs_architecture_lists_the_module_graph_as_it_is() {
    let doc_path = root().join("docs/architecture.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let want = rendered(&graph());
    let (Some(begin), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/architecture.md lacks the module-graph markers");
    };
    let have = &doc[begin + BEGIN.len() + 1..end];
    if have != want {
        if std::env::var_os("CAIRN_BLESS").is_some() {
            let renewed = format!("{}{BEGIN}\n{want}{}", &doc[..begin], &doc[end..]);
            std::fs::write(&doc_path, renewed).unwrap();
        } else {
            panic!("docs/architecture.md's module graph is stale; run with CAIRN_BLESS=1 to renew it:\n{want}");
        }
    }
}

#[test]
fn the_path_reader_expands_groups_and_resolves_super() {
    let paths = paths_in("mod g;\nuse crate::{a::{b, c}, d};\nlet x = super::e::f(1) + g::h();");
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(joined, ["crate::a::b", "crate::a::c", "crate::d", "super::e::f", "self::g::h"]);
    let modules: BTreeSet<String> = ["repo", "repo::gc", "repo::load"].iter().map(|s| s.to_string()).collect();
    let path: Vec<String> = ["super", "load", "X"].iter().map(|s| s.to_string()).collect();
    assert_eq!(resolve(&path, "repo::gc", &modules).as_deref(), Some("repo::load"));
    let cycle: BTreeMap<String, BTreeSet<String>> =
        [("a".to_string(), BTreeSet::from(["b".to_string()])), ("b".to_string(), BTreeSet::from(["a".to_string()]))]
            .into();
    assert_eq!(cycles(&cycle), vec![vec!["a".to_string(), "b".to_string()]]);
}
