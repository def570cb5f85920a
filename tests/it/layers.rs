//! The layers keep their direction: no top-level module of `src/` reaches, through the
//! modules it names, back to itself (ARCHITECTURE.md, "Layers"). Read from the source text:
//! every `crate::MODULE` a module names outside comments is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules and the other top-level modules each one names.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if matches!(name.as_str(), "lib" | "main") {
            continue;
        }
        let files = modules.entry(name).or_default();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(module, files)| {
            let mut named = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for line in text.lines() {
                    let code = line.split("//").next().unwrap_or("");
                    for (i, _) in code.match_indices("crate::") {
                        let rest = &code[i + "crate::".len()..];
                        let target: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if target != module && names.contains(&target) {
                            named.insert(target);
                        }
                    }
                }
            }
            (module, named)
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// A path from `from` back to itself, if there is one.
fn cycle_through(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in edges.get(last).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_its_way_back_to_itself() {
    let edges = edges();
    for layer in [
        "service",
        "pipeline",
        "slack",
        "web",
        "telemetry",
        "domain",
        "store",
    ] {
        assert!(edges.contains_key(layer), "src/{layer} is not where it was");
    }
    let cycles: Vec<String> = edges
        .keys()
        .filter_map(|module| cycle_through(&edges, module))
        .map(|cycle| cycle.join(" -> "))
        .collect();
    assert!(
        cycles.is_empty(),
        "import circles: {cycles:#?}\nedges: {edges:#?}"
    );
    // The direction that matters most: the stages never call up into the service or a door.
    for low in ["pipeline", "domain", "store", "telemetry"] {
        for high in ["service", "slack", "web", "app"] {
            assert!(
                !edges[low].contains(high),
                "{low} names {high}: {:?}",
                edges[low]
            );
        }
    }
}
