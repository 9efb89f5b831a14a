//! The module graph of both crates is a tree (a DAG): no top-level module imports a module that
//! imports it back, directly or around a longer loop.
//!
//! An import loop means neither module can be understood, tested or replaced without the other;
//! loops are how `config` ↔ `policy` ↔ `session`, `xml` ↔ `stream` and the daemon's
//! `server` ↔ `conn` grew. This test parses the sources with `syn`, following `mod` declarations
//! from the crate root exactly as the compiler does (code under `#[cfg(test)]` is left out:
//! tests may reach anywhere), and collects every path that names another top-level module —
//! `use crate::x::…`, `crate::x::f()` in expressions and types, `super::…` climbing to the
//! root, and the same inside macro invocations (`format!("{}", crate::x::Y)`). It fails
//! listing each loop and the files whose imports close it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Top-level module → module it names → files that name it.
type Edges = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Is the item compiled only for tests (`#[cfg(test)]`)?
fn test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Path>().is_ok_and(|p| p.is_ident("test")))
}

/// Walks one file, recording the top-level modules its non-test code names.
struct Walker<'a> {
    /// The module the code being visited is in, from the crate root (`["policy", "compile"]`).
    module: Vec<String>,
    /// The file, for the report.
    file: String,
    /// Top-level modules of the crate.
    tops: &'a BTreeSet<String>,
    edges: &'a mut Edges,
    /// `mod name;` declarations found (module path), to be read from their files.
    children: Vec<Vec<String>>,
}

impl Walker<'_> {
    /// Record the top-level module a path starting with `segments` lands in, if another one.
    fn resolve(&mut self, segments: &[String]) {
        let target = match segments.first().map(String::as_str) {
            Some("crate") => segments.get(1).cloned(),
            Some("self") => self.module.first().cloned(),
            Some("super") => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                if ups < self.module.len() {
                    self.module.first().cloned()
                } else {
                    segments.get(ups).cloned()
                }
            }
            _ => None,
        };
        let (Some(from), Some(to)) = (self.module.first(), target) else { return };
        if *from != to && self.tops.contains(&to) {
            self.edges.entry(from.clone()).or_default().entry(to).or_default().insert(self.file.clone());
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.resolve(&prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// Paths inside macro invocations are plain tokens: find `crate :: x` and `super :: …` runs.
    fn tokens(&mut self, tokens: TokenStream) {
        let flat: Vec<TokenTree> = tokens.into_iter().collect();
        let mut run: Vec<String> = Vec::new();
        let mut i = 0;
        while i < flat.len() {
            match &flat[i] {
                TokenTree::Group(g) => {
                    self.flush(&mut run);
                    self.tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    let id = id.to_string();
                    let continues = !run.is_empty() && run.last().is_some_and(|s| s == "::");
                    if continues {
                        run.pop();
                        run.push(id);
                    } else {
                        self.flush(&mut run);
                        if id == "crate" || id == "super" || id == "self" {
                            run.push(id);
                        }
                    }
                    i += 1;
                }
                TokenTree::Punct(p)
                    if p.as_char() == ':'
                        && matches!(flat.get(i + 1), Some(TokenTree::Punct(q)) if q.as_char() == ':')
                        && !run.is_empty() =>
                {
                    run.push("::".into());
                    i += 2;
                }
                _ => {
                    self.flush(&mut run);
                    i += 1;
                }
            }
        }
        self.flush(&mut run);
    }

    fn flush(&mut self, run: &mut Vec<String>) {
        let segments: Vec<String> = run.drain(..).filter(|s| s != "::").collect();
        if segments.len() > 1 {
            self.resolve(&segments);
        }
    }
}

impl<'ast> Visit<'ast> for Walker<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !test_only(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        match &m.content {
            Some((_, items)) => {
                for item in items {
                    self.visit_item(item);
                }
            }
            None => self.children.push(self.module.clone()),
        }
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.resolve(&segments);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// The file of module `path` (`a/b.rs` or `a/b/mod.rs` under `src`).
fn module_file(src: &Path, path: &[String]) -> PathBuf {
    let rel: PathBuf = path.iter().collect();
    let flat = src.join(&rel).with_extension("rs");
    if flat.exists() {
        flat
    } else {
        src.join(rel).join("mod.rs")
    }
}

/// The top-level module graph of the crate whose root file is `src/root`.
fn edges(src: &Path, root: &str) -> Edges {
    let parse = |file: &Path| {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    let root_file = parse(&src.join(root));
    let tops: BTreeSet<String> = root_file
        .items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Mod(m) if !test_only(&m.attrs) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect();
    let mut edges = Edges::new();
    let mut pending: Vec<Vec<String>> = tops.iter().map(|t| vec![t.clone()]).collect();
    // Bounded: each module file is read once, and a crate has far fewer than this many.
    let mut budget = 10_000;
    while let Some(module) = pending.pop() {
        budget -= 1;
        assert!(budget > 0, "module tree of {} does not end", src.display());
        let file = module_file(src, &module);
        let ast = parse(&file);
        let shown = file.strip_prefix(src).unwrap_or(&file).display().to_string();
        let mut walker = Walker { module, file: shown, tops: &tops, edges: &mut edges, children: Vec::new() };
        for item in &ast.items {
            walker.visit_item(item);
        }
        pending.extend(walker.children);
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn loops(edges: &Edges) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn connect<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flat_map(|m| m.keys()) {
            if !s.index.contains_key(w.as_str()) {
                connect(s, w);
                let lw = s.low[w.as_str()];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w.as_str()) {
                let iw = s.index[w.as_str()];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            connect(&mut s, v);
        }
    }
    s.found
}

/// Each loop, with the imports inside it and the files they are in.
fn report(edges: &Edges, loops: &[Vec<String>]) -> String {
    let mut out = String::new();
    for component in loops {
        out.push_str(&format!("loop: {}\n", component.join(" ↔ ")));
        for from in component {
            for (to, files) in edges.get(from).into_iter().flatten() {
                if component.contains(to) {
                    let files: Vec<&str> = files.iter().map(String::as_str).collect();
                    out.push_str(&format!("  {from} → {to}  ({})\n", files.join(", ")));
                }
            }
        }
    }
    out
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src")
}

#[test]
fn core_modules_form_a_tree() {
    let edges = edges(&crate_src("core"), "lib.rs");
    // The walk found the crate: these imports exist and must be seen.
    assert!(edges["session"].contains_key("policy"), "{edges:?}");
    assert!(edges["stream"].contains_key("xml"), "{edges:?}");
    let found = loops(&edges);
    assert!(found.is_empty(), "import loops in crates/core/src:\n{}", report(&edges, &found));
}

#[test]
fn daemon_modules_form_a_tree() {
    let edges = edges(&crate_src("stanzawall"), "main.rs");
    assert!(edges["server"].contains_key("conn"), "{edges:?}");
    let found = loops(&edges);
    assert!(found.is_empty(), "import loops in crates/stanzawall/src:\n{}", report(&edges, &found));
}

/// The checker itself sees each kind of reference (use trees, expression paths, `super`, macro
/// tokens) and ignores test-only code: a graph built from a small crate written here.
#[test]
fn the_checker_sees_every_kind_of_reference() {
    let dir = std::env::temp_dir().join(format!("stanzawall-module-tree-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    let files = [
        ("lib.rs", "mod a; mod b; mod c; mod d; mod e; #[cfg(test)] mod t;"),
        ("a.rs", "mod inner; use crate::{b::X, c};"),
        ("a/inner.rs", "fn f() { super::super::d::g(); }"),
        ("b.rs", "fn f() -> crate::a::Y { format!(\"{}\", crate::e::Z) }"),
        ("c.rs", "#[cfg(test)] mod tests { use crate::a::Q; } #[cfg(test)] fn h() { crate::b::x(); }"),
        ("d.rs", ""),
        ("e.rs", ""),
        ("t.rs", "use crate::a::W;"),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).unwrap();
    }
    let edges = edges(&src, "lib.rs");
    let _ = std::fs::remove_dir_all(&dir);
    let names = |m: &str| edges.get(m).map(|e| e.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(names("a"), ["b", "c", "d"]);
    assert_eq!(names("b"), ["a", "e"]);
    assert_eq!(names("c"), Vec::<String>::new());
    assert!(!edges.contains_key("t"));
    assert_eq!(loops(&edges), [["a", "b"]]);
    assert!(report(&edges, &loops(&edges)).contains("b → a  (b.rs)"));
}
