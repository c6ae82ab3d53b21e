//! The shape of the control plane, checked on its source: the
//! Architecture Invariants that ARCHITECTURE.md states for the rooms of
//! `control-plane/src` (the kernel, each engine, the HTTP layer). Each
//! test names the rule it keeps; an exception is named here and justified
//! in ARCHITECTURE.md, never added silently.
//!
//! The checks read production code only: comment lines and the unit-test
//! modules (`#[cfg(test)] mod tests` at a file's end, `tests.rs` files)
//! are left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tables by the room that owns them (from `migrations/`).
const TABLES: &[(&str, &[&str])] = &[
    (
        "kernel",
        &[
            "orgs",
            "policies",
            "identities",
            "tokens",
            "approvals",
            "approval_votes",
            "operations",
            "audit_log",
            "audit_heads",
            "audit_checkpoints",
            "meta",
            "org_root_keys",
            "webhook_deliveries",
            "webhook_keys",
        ],
    ),
    (
        "wallets",
        &[
            "wallets",
            "signing_requests",
            "nodes",
            "committees",
            "share_backups",
            "share_backup_keys",
        ],
    ),
    ("transit", &["transit_keys", "transit_key_versions"]),
    ("secrets", &["secrets", "secret_versions"]),
    ("keys", &["registry_keys", "registry_key_versions"]),
];

/// What kernel/state.rs may name of the engines: the registry it builds and
/// the engines' caches it holds as typed fields (ARCHITECTURE.md, "The
/// kernel names no engine").
const STATE_MAY_NAME: &[&str] = &[
    "crate::engines::registry",
    "crate::engines::transit::store::TransitKeys",
    "crate::engines::wallets::nodes::Registry",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, relative to `src/`, with its production
/// code (comment lines and unit-test modules removed).
fn code_under(dir: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut pending = vec![src().join(dir)];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs")
            || path.file_name().is_some_and(|name| name == "tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let production = match text.find("\n#[cfg(test)]") {
            Some(at)
                if text[at..]
                    .lines()
                    .take(8)
                    .any(|line| line.starts_with("mod tests")) =>
            {
                &text[..at]
            }
            _ => &text[..],
        };
        let code: String = production
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .map(|line| format!("{line}\n"))
            .collect();
        let relative = path.strip_prefix(src()).unwrap().display().to_string();
        files.insert(relative, code);
    }
    assert!(!files.is_empty(), "no source under {dir}");
    files
}

/// The engines: one folder each under `engines/`.
fn engines() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src().join("engines"))
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The tables a piece of code names after `FROM`, `INTO`, `UPDATE`,
/// `JOIN` or `TABLE` (SQL in string literals).
fn tables_named(code: &str) -> Vec<String> {
    let words: Vec<String> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let known: Vec<&str> = TABLES
        .iter()
        .flat_map(|(_, tables)| tables.iter().copied())
        .collect();
    words
        .windows(2)
        .filter(|pair| {
            matches!(
                pair[0].as_str(),
                "from" | "into" | "update" | "join" | "table"
            )
        })
        .filter(|pair| known.contains(&pair[1].as_str()))
        .map(|pair| pair[1].clone())
        .collect()
}

fn owner_of(table: &str) -> &'static str {
    TABLES
        .iter()
        .find(|(_, tables)| tables.contains(&table))
        .map(|(room, _)| *room)
        .unwrap()
}

#[test]
fn the_kernel_names_no_engine_and_no_http() {
    let mut broken = Vec::new();
    for (file, code) in code_under("kernel") {
        for line in code.lines() {
            for needle in ["crate::engines::", "crate::http::"] {
                let Some(at) = line.find(needle) else {
                    continue;
                };
                let named = &line[at..];
                let allowed = file == "kernel/state.rs"
                    && STATE_MAY_NAME.iter().any(|path| named.starts_with(path));
                if !allowed {
                    broken.push(format!("{file}: {}", line.trim()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the kernel imports an engine or the HTTP layer:\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_engine_imports_another() {
    let engines = engines();
    assert!(engines.len() >= 4, "{engines:?}");
    let mut broken = Vec::new();
    for engine in &engines {
        for (file, code) in code_under(&format!("engines/{engine}")) {
            for other in engines.iter().filter(|other| *other != engine) {
                for line in code.lines() {
                    if line.contains(&format!("crate::engines::{other}")) {
                        broken.push(format!("{file} → {other}: {}", line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "an engine imports another:\n{}",
        broken.join("\n")
    );
}

#[test]
fn only_the_routes_know_axum() {
    let routes = |file: &str| {
        file.starts_with("http/")
            || file.ends_with("/routes.rs")
            || file.ends_with("_routes.rs")
            || file == "engines/transit/vault.rs"
            // The one list of engines merges their routers.
            || file == "engines/mod.rs"
            // The server: binds the listener and serves the router.
            || file == "lib.rs"
    };
    let mut broken = Vec::new();
    for dir in ["kernel", "engines", "http"] {
        for (file, code) in code_under(dir) {
            if routes(&file) {
                continue;
            }
            for line in code.lines() {
                if line.contains("axum") || line.contains("tower") {
                    broken.push(format!("{file}: {}", line.trim()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "HTTP types outside the routes layer:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_room_runs_sql_of_its_own_tables_only() {
    let mut broken = Vec::new();
    let mut seen = 0;
    let mut rooms: Vec<(String, String)> = vec![("kernel".into(), "kernel".into())];
    rooms.extend(
        engines()
            .into_iter()
            .map(|engine| (format!("engines/{engine}"), engine)),
    );
    for (dir, room) in rooms {
        for (file, code) in code_under(&dir) {
            for table in tables_named(&code) {
                seen += 1;
                if owner_of(&table) != room {
                    broken.push(format!(
                        "{file} ({room}) runs SQL on {table} ({})",
                        owner_of(&table)
                    ));
                }
            }
        }
    }
    // The scan sees SQL at all (a scanner that reads nothing passes).
    assert!(seen > 100, "only {seen} table names found in SQL");
    assert!(
        broken.is_empty(),
        "SQL of another room's tables:\n{}",
        broken.join("\n")
    );
}

#[test]
fn route_handlers_run_no_sql() {
    let mut broken = Vec::new();
    for dir in ["http", "engines"] {
        for (file, code) in code_under(dir) {
            let is_routes = file.starts_with("http/")
                || file.ends_with("routes.rs")
                || file.ends_with("vault.rs");
            if is_routes && (code.contains("sqlx::query") || !tables_named(&code).is_empty()) {
                broken.push(file);
            }
        }
    }
    assert!(
        broken.is_empty(),
        "route handlers that run SQL themselves: {broken:?}"
    );
}

#[test]
fn every_table_has_one_owner() {
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    let mut created = Vec::new();
    for entry in std::fs::read_dir(migrations).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .to_ascii_lowercase();
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| !word.is_empty())
            .collect();
        for window in words.windows(6) {
            if window[0] == "create" && window[1] == "table" {
                let name = if window[2] == "if" {
                    window[5]
                } else {
                    window[2]
                };
                created.push(name.to_string());
            }
        }
    }
    created.sort();
    created.dedup();
    let mut owned: Vec<String> = TABLES
        .iter()
        .flat_map(|(_, tables)| tables.iter().map(|table| table.to_string()))
        .collect();
    owned.sort();
    assert_eq!(
        created, owned,
        "a table without an owning room, or an owner without a table"
    );
}

/// The status of each `AppError` constructor that takes a code.
const CONSTRUCTORS: &[(&str, u16)] = &[
    ("bad_request", 400),
    ("unauthenticated", 401),
    ("forbidden", 403),
    ("conflict", 409),
    ("invalid", 422),
    ("unavailable", 503),
];

/// `ErrorKind` variants by status (`http::status_of`).
const KINDS: &[(&str, u16)] = &[
    ("BadRequest", 400),
    ("Unauthenticated", 401),
    ("Forbidden", 403),
    ("NotFound", 404),
    ("Conflict", 409),
    ("Gone", 410),
    ("TooLarge", 413),
    ("UnsupportedMediaType", 415),
    ("Invalid", 422),
    ("RateLimited", 429),
    ("Internal", 500),
    ("BadGateway", 502),
    ("Unavailable", 503),
];

/// The first string literal of `text` when it is the next token, and what
/// follows it.
fn literal_at(text: &str) -> Option<&str> {
    let text = text.trim_start();
    let rest = text.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// Every error built with a literal code (`AppError::conflict("code", …)`,
/// `AppError::new(ErrorKind::Gone, "code", …)`) has that code listed under
/// its status in the OpenAPI document's error responses
/// (`http::openapi::ERROR_CODES`), so a new code cannot go undocumented.
#[test]
fn every_error_code_is_documented_under_its_status() {
    let documented = |status: u16, code: &str| {
        custos_control_plane::http::openapi::ERROR_CODES
            .iter()
            .any(|(of, codes)| *of == status && codes.contains(&code))
    };
    let mut missing = Vec::new();
    let mut found = 0;
    for dir in ["kernel", "engines", "http"] {
        for (file, code) in code_under(dir) {
            let code = code.replace('\n', " ");
            for (at, _) in code.match_indices("AppError::") {
                let call = &code[at + "AppError::".len()..];
                let Some(open) = call.find('(') else {
                    continue;
                };
                let constructor = &call[..open];
                let arguments = &call[open + 1..];
                let (status, arguments) = if constructor == "new" {
                    let arguments = arguments.trim_start();
                    let Some(kind) = arguments.strip_prefix("ErrorKind::") else {
                        continue;
                    };
                    let end = kind.find(',').unwrap_or(kind.len());
                    let Some((_, status)) =
                        KINDS.iter().find(|(name, _)| *name == kind[..end].trim())
                    else {
                        continue;
                    };
                    (*status, &kind[(end + 1).min(kind.len())..])
                } else {
                    let Some((_, status)) =
                        CONSTRUCTORS.iter().find(|(name, _)| *name == constructor)
                    else {
                        continue;
                    };
                    (*status, arguments)
                };
                if let Some(literal) = literal_at(arguments) {
                    found += 1;
                    if !documented(status, literal) {
                        missing.push(format!("{file}: {status} {literal}"));
                    }
                }
            }
        }
    }
    assert!(found > 100, "the scan found only {found} codes");
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "error codes missing from http::openapi::ERROR_CODES:\n{}",
        missing.join("\n")
    );
}
