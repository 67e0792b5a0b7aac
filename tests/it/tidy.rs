//! Tidy checks, in the manner of rust-analyzer's: rules the code and the docs claim, read from
//! the tree as text and failed the moment they stop holding. No servers.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The workspace's crates, from `crates/`.
fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The code of a file before its first `#[cfg(test)]`: what ships.
fn shipped(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

/// The pure core stays pure: no I/O, runtime or service dependency.
#[test]
fn the_core_depends_on_no_runtime_broker_or_database() {
    let manifest = read(&root().join("crates/atp-core/Cargo.toml"));
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|d| d.split("\n[").next())
        .expect("atp-core has a [dependencies] table");
    for banned in [
        "tokio",
        "async-nats",
        "sqlx",
        "axum",
        "reqwest",
        "hyper",
        "opentelemetry",
        "object_store",
        "atp-",
    ] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(banned)),
            "atp-core depends on {banned}"
        );
    }
}

/// The gateway and the roles share only the crates below them: neither depends on the other,
/// and nothing the product ships depends on the benchmarks.
#[test]
fn the_gateway_and_the_roles_do_not_link_each_other() {
    let deps = |krate: &str| {
        let manifest = read(&root().join(format!("crates/{krate}/Cargo.toml")));
        let table = manifest
            .split("[dependencies]")
            .nth(1)
            .and_then(|d| d.split("\n[").next())
            .map(str::to_owned)
            .unwrap_or_default();
        table
            .lines()
            .filter_map(|l| l.split(['.', ' ', '=']).next())
            .filter(|name| name.starts_with("atp"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(
        !deps("atp-gateway").contains(&"atp-runtime".to_owned()),
        "the gateway links the roles"
    );
    assert!(
        !deps("atp-runtime").contains(&"atp-gateway".to_owned()),
        "the roles link the gateway"
    );
    for shipped in crates().iter().filter(|c| c.as_str() != "atp-bench") {
        assert!(
            !deps(shipped).contains(&"atp-bench".to_owned()),
            "{shipped} links the benchmarks"
        );
    }
}

/// Subjects are spelled only by `atp_nats::subjects` (from `subjects.yaml`): no other shipped
/// code writes an `atp.<subject family>.` literal.
#[test]
fn subjects_are_spelled_only_in_the_subjects_module() {
    let subjects_rs = root().join("crates/atp-nats/src/subjects.rs");
    let families: Vec<String> = read(&subjects_rs)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| {
            l.split_once("\"atp.")?
                .1
                .split('.')
                .next()
                .map(str::to_owned)
        })
        .collect();
    assert!(families.len() >= 6, "{families:?}");
    let mut found = Vec::new();
    for file in rust_files(&root().join("crates")) {
        // Instrument names (`atp.ledger.append.conflicts`) share the dotted style, not the
        // subjects; tests and benchmarks build their own messages.
        let exempt = file.ends_with("atp-telemetry/src/metrics.rs")
            || file.ends_with("tests.rs")
            || file.starts_with(root().join("crates/atp-bench"));
        if file == subjects_rs || exempt {
            continue;
        }
        let text = read(&file);
        for (n, line) in shipped(&text).lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for f in &families {
                if line.contains(&format!("\"atp.{f}.")) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "subject literals outside subjects.rs:\n{}",
        found.join("\n")
    );
}

/// Every test `docs/architecture.md` names exists (`module::name`, `…` standing for any text,
/// `module::*` for any test of the module).
#[test]
fn every_test_the_architecture_names_exists() {
    let doc = read(&root().join("docs/architecture.md"));
    let mut tests: Vec<(String, String)> = Vec::new();
    let mut files = rust_files(&root().join("crates"));
    files.extend(rust_files(&root().join("tests")));
    for file in files {
        let text = read(&file);
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let module = if stem == "tests" || stem == "mod" {
            file.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else {
            stem
        };
        let mut attributed = false;
        for line in text.lines() {
            let l = line.trim();
            if l.starts_with("#[test]")
                || l.starts_with("#[tokio::test")
                || l.starts_with("proptest!")
            {
                attributed = true;
            }
            if let Some(rest) = l
                .strip_prefix("async fn ")
                .or_else(|| l.strip_prefix("fn "))
            {
                if attributed || text.contains("proptest!") {
                    let name = rest.split(['(', '<']).next().unwrap_or("").to_owned();
                    tests.push((module.clone(), name));
                }
                attributed = false;
            }
        }
    }
    let mut missing = Vec::new();
    for reference in doc.split('`').skip(1).step_by(2) {
        let parts: Vec<&str> = reference.split("::").collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty() || p.contains(' ')) {
            continue;
        }
        let (module, name) = (parts[0], parts[parts.len() - 1]);
        if !name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '…' || c == '*'
        }) {
            continue;
        }
        // An integration scenario (`tests/it/<module>.rs`) or a unit test (`…::tests::…`);
        // other paths name types and functions.
        let integration = root()
            .join("tests/it")
            .join(format!("{module}.rs"))
            .exists();
        if !integration && !parts.contains(&"tests") {
            continue;
        }
        let pieces: Vec<&str> = name.split(['…', '*']).collect();
        let matches = |candidate: &str| {
            let mut at = 0;
            for (i, piece) in pieces.iter().enumerate() {
                match candidate[at..].find(piece) {
                    Some(found) if i > 0 || found == 0 => at += found + piece.len(),
                    _ => return false,
                }
            }
            name.ends_with(['…', '*']) || at == candidate.len()
        };
        // A unit test is found by its name alone: its module path is its crate's business.
        if !tests
            .iter()
            .any(|(m, n)| (!integration || m == module) && matches(n))
        {
            missing.push(reference.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md names tests that do not exist: {missing:?}"
    );
}

/// The architecture's crate list is the workspace's.
#[test]
fn the_architecture_lists_every_crate() {
    let doc = read(&root().join("docs/architecture.md"));
    for name in crates() {
        assert!(
            doc.contains(&format!("**`crates/{name}`**")),
            "docs/architecture.md has no section for crates/{name}"
        );
    }
    let count = crates().len();
    let words = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen",
    ];
    let spelled = words.get(count).copied().unwrap_or("many");
    let claim = format!("**{}{} crates", spelled[..1].to_uppercase(), &spelled[1..]);
    assert!(
        doc.contains(&claim),
        "docs/architecture.md should say {claim}"
    );
}

/// "Each is checked by the test named after it": every numbered invariant names a test.
#[test]
fn every_invariant_names_its_test() {
    let doc = read(&root().join("docs/architecture.md"));
    let invariants = doc
        .split("## Invariants")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/architecture.md has its invariants");
    let mut items: Vec<String> = Vec::new();
    for line in invariants.lines() {
        let numbered = line
            .split_once(". **")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if numbered {
            items.push(line.to_owned());
        } else if let Some(last) = items.last_mut() {
            last.push_str(line);
        }
    }
    assert!(items.len() >= 20, "{} invariants found", items.len());
    let untested: Vec<&str> = items
        .iter()
        .filter(|item| {
            !item
                .split('`')
                .skip(1)
                .step_by(2)
                .any(|r| r.contains("::") && (r.contains('_') || r.ends_with("::*")))
        })
        .map(|item| item.split("**").nth(1).unwrap_or(item))
        .collect();
    assert!(
        untested.is_empty(),
        "invariants that name no test: {untested:?}"
    );
}

/// A Problem+JSON code is spelled once, in `atp_gateway::problem::ProblemCode` (with its status
/// and title): no other shipped gateway code writes one as a string literal.
#[test]
fn problem_codes_are_spelled_only_by_the_problem_code_enum() {
    let dir = root().join("crates/atp-gateway/src");
    let problem_rs = dir.join("problem.rs");
    let mut found = Vec::new();
    for file in rust_files(&dir) {
        if file == problem_rs {
            continue;
        }
        let text = read(&file);
        for (n, line) in shipped(&text).lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for code in atp_gateway::problem::ProblemCode::ALL {
                if line.contains(&format!("\"{}\"", code.code())) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "problem code literals outside ProblemCode:\n{}",
        found.join("\n")
    );
}

/// Every crash point is named in `docs/architecture.md` and armed by a test in
/// `tests/it/crash_points.rs`, and the code reaches it somewhere.
#[test]
fn every_crash_point_is_documented_and_tested() {
    let doc = read(&root().join("docs/architecture.md"));
    let tests = read(&root().join("tests/it/crash_points.rs"));
    let mut code = String::new();
    for file in rust_files(&root().join("crates")) {
        code.push_str(&read(&file));
    }
    for point in atp_telemetry::failpoint::POINTS {
        assert!(
            doc.contains(&format!("`{point}`")),
            "docs/architecture.md does not name {point}"
        );
        let constant = point.to_uppercase().replace('-', "_");
        assert!(
            tests.contains(&format!("failpoint::{constant}")),
            "no crash test arms {point}"
        );
        assert!(
            code.contains(&format!("crash_point(failpoint::{constant})")),
            "nothing reaches {point}"
        );
    }
}
