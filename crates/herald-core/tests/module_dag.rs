//! herald-core's modules form a DAG that reads bottom-up (lib.rs's `# Layout`): this test reads
//! `src/*.rs`, collects the modules each one names through `crate::…` (in `use` or in code, test
//! modules included), and fails, printing the cycle and where each step of it is written, if
//! one module reaches itself again.
//!
//! Why a test and not a lint: rustc and clippy accept cycles between modules of one crate, and
//! a cycle creeps back one convenient import at a time (issue 11 found one big cycle through
//! `inbox.rs`). Comments are skipped: a doc link to a module above is a pointer for the reader,
//! not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Where a module names another: `file:line`.
type Edges = BTreeMap<String, BTreeMap<String, String>>;

#[test]
fn core_modules_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("herald-core has a lib.rs");
    let (modules, reexports) = modules_and_reexports(&lib);
    assert!(modules.len() >= 10, "lib.rs declares herald-core's modules; found only {modules:?}");
    let mut edges = Edges::new();
    for module in &modules {
        let path = src.join(format!("{module}.rs"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("module {module} must be src/{module}.rs (flat): {e}"));
        let uses = edges.entry(module.clone()).or_default();
        for (line, name) in crate_references(&text) {
            let target = if modules.contains(&name) {
                name
            } else if let Some(owner) = reexports.get(&name) {
                owner.clone()
            } else {
                panic!(
                    "src/{module}.rs:{line}: `crate::{name}` is neither a module nor a re-export of lib.rs"
                )
            };
            if target != *module {
                uses.entry(target).or_insert_with(|| format!("src/{module}.rs:{line}"));
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> =
            cycle.windows(2).map(|w| format!("  {} → {}  ({})", w[0], w[1], edges[&w[0]][&w[1]])).collect();
        panic!(
            "herald-core's modules import each other in a cycle: {}\n{}\nMove what both need into a module \
             below them (see lib.rs's `# Layout`).",
            cycle.join(" → "),
            steps.join("\n")
        );
    }
}

/// The modules lib.rs declares (`mod x;`, `pub mod x;`) and, for each name lib.rs re-exports
/// (`pub use x::{A, B};`), the module it comes from.
fn modules_and_reexports(lib: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let code = strip_comments(lib);
    let mut modules = BTreeSet::new();
    let mut reexports = BTreeMap::new();
    for statement in code.split(';') {
        // A statement may start after an inner attribute (`#![forbid(unsafe_code)]`).
        let words: Vec<&str> = statement.split_whitespace().collect();
        if let [.., "mod", name] = words.as_slice() {
            modules.insert((*name).to_owned());
        } else if let Some(at) = statement.find("pub use ") {
            let path = &statement[at + "pub use ".len()..];
            let (module, names) = path.split_once("::").expect("lib.rs re-exports from its modules");
            let names = names.trim().trim_start_matches('{').trim_end_matches('}');
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let name = name.rsplit("::").next().expect("a name").split(" as ").last().expect("a name");
                reexports.insert(name.trim().to_owned(), module.trim().to_owned());
            }
        }
    }
    (modules, reexports)
}

/// Every `crate::NAME` and every `crate::{NAME, NAME::…}` in `text`, outside comments, with
/// its line number: the first segment of each path.
fn crate_references(text: &str) -> Vec<(usize, String)> {
    let code = strip_comments(text);
    let mut found = Vec::new();
    let mut rest = code.as_str();
    let mut offset = 0;
    while let Some(at) = rest.find("crate::") {
        let start = offset + at;
        // Not the tail of another path (`herald_core::crate::` cannot occur, but `mycrate::` can).
        let preceded_by_ident =
            code[..start].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &code[start + "crate::".len()..];
        let line = code[..start].matches('\n').count() + 1;
        if !preceded_by_ident {
            if let Some(group) = after.strip_prefix('{') {
                let group = &group[..closing_brace(group)];
                for item in top_level_items(group) {
                    found.push((line, first_segment(item)));
                }
            } else {
                found.push((line, first_segment(after)));
            }
        }
        offset = start + "crate::".len();
        rest = &code[offset..];
    }
    found.retain(|(_, name)| !name.is_empty() && name != "self");
    found
}

/// The identifier `path` starts with.
fn first_segment(path: &str) -> String {
    path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The index of the `}` that closes a group whose `{` came just before `group`.
fn closing_brace(group: &str) -> usize {
    let mut depth = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    panic!("an unclosed `crate::{{` group")
}

/// The comma-separated items of a use group, nested groups kept whole.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items.into_iter().map(str::trim).filter(|item| !item.is_empty()).collect()
}

/// `text` without `//` comments (doc comments included) and `/* */` comments, line breaks kept
/// so that line numbers still match. String literals are not parsed: herald-core's hold no
/// `crate::` and no `//` that starts a comment a test would miss.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    for line in text.lines() {
        let mut line = line;
        let mut kept = String::new();
        loop {
            if in_block {
                match line.find("*/") {
                    Some(end) => {
                        in_block = false;
                        line = &line[end + 2..];
                    }
                    None => break,
                }
            } else {
                let line_comment = line.find("//");
                let block = line.find("/*");
                match (line_comment, block) {
                    (Some(l), Some(b)) if b < l => {
                        kept.push_str(&line[..b]);
                        in_block = true;
                        line = &line[b + 2..];
                    }
                    (Some(l), _) => {
                        kept.push_str(&line[..l]);
                        break;
                    }
                    (None, Some(b)) => {
                        kept.push_str(&line[..b]);
                        in_block = true;
                        line = &line[b + 2..];
                    }
                    (None, None) => {
                        kept.push_str(line);
                        break;
                    }
                }
            }
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// A cycle in `edges` as a path that ends where it starts (`a → b → a`), if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        edges: &Edges,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::OnPath);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            match marks.get(next).copied().unwrap_or(Mark::Unseen) {
                Mark::OnPath => {
                    let from = path.iter().position(|n| n == next).expect("a node on the path");
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::Unseen => {
                    if let Some(cycle) = visit(next, edges, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if marks.get(node).copied().unwrap_or(Mark::Unseen) == Mark::Unseen
            && let Some(cycle) = visit(node, edges, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

/// The test's own parts, so that a change to them cannot make it pass vacuously.
#[test]
fn the_reader_finds_references_and_cycles() {
    let text = "use crate::hub::{Hub, X};\n// use crate::bus::Bus;\nuse crate::{ids::UserId, store::{A, B}};\n\
                fn f() { crate::inbox::x(); } /* crate::notifier */ mycrate::y();\n";
    let names: Vec<String> = crate_references(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["hub", "ids", "store", "inbox"]);
    assert_eq!(crate_references(text)[3].0, 4, "line numbers count from 1");

    let lib = "#![forbid(unsafe_code)]\npub mod a;\nmod b; // c\npub use a::{X, Y as Z};\n";
    let (modules, reexports) = modules_and_reexports(lib);
    assert_eq!(modules, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    assert_eq!(reexports.get("Z").map(String::as_str), Some("a"));

    let edge = |from: &str, to: &[&str]| {
        (from.to_owned(), to.iter().map(|t| ((*t).to_owned(), String::new())).collect::<BTreeMap<_, _>>())
    };
    let dag: Edges = [edge("a", &["b", "c"]), edge("b", &["c"]), edge("c", &[])].into();
    assert_eq!(find_cycle(&dag), None);
    let cyclic: Edges = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &["a"])].into();
    assert_eq!(find_cycle(&cyclic).unwrap(), ["a", "b", "c", "a"]);
}
