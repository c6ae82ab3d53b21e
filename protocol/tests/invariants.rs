//! Source-level invariants of the whole workspace (system.md, mpc-stack.md):
//!
//! * no presignature code path: presignatures with HD derivation or bare
//!   digests are unsafe (RUSTSEC-2025-0127), so the workspace must never call
//!   cggmp21's presignature API;
//! * cggmp21's reliable-broadcast check is never switched off;
//! * the `spof` features (key import/export, reconstruction) of cggmp21,
//!   givre and key-share are never enabled.
//!
//! Each check fails if someone adds such a line anywhere in the workspace.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every file below the workspace root with one of `extensions`, outside
/// build output and dependencies.
fn files(extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![workspace_root()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "node_modules" | ".git") {
                    pending.push(path);
                }
            } else if extensions.iter().any(|ext| name.ends_with(ext)) {
                found.push(path);
            }
        }
    }
    assert!(!found.is_empty());
    found
}

/// Lines of source files that contain any of `needles`, except in this file.
fn offending_lines(extensions: &[&str], needles: &[&str]) -> Vec<String> {
    let this_file = Path::new(file!()).file_name().unwrap();
    files(extensions)
        .into_iter()
        .filter(|path| path.file_name() != Some(this_file))
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            text.lines()
                .enumerate()
                .filter(|(_, line)| needles.iter().any(|needle| line.contains(needle)))
                .map(|(number, line)| format!("{}:{}: {}", path.display(), number + 1, line.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn no_presignature_code_path_exists() {
    let found = offending_lines(
        &[".rs"],
        &[
            "generate_presignature",
            "Presignature<",
            "Presignature::",
            "issue_partial_signature",
            "PartialSignature",
        ],
    );
    assert!(
        found.is_empty(),
        "presignature API used:\n{}",
        found.join("\n")
    );
}

#[test]
fn reliable_broadcast_is_never_disabled() {
    let found = offending_lines(&[".rs"], &["enforce_reliable_broadcast(false)"]);
    assert!(
        found.is_empty(),
        "reliable broadcast disabled:\n{}",
        found.join("\n")
    );
}

#[test]
fn spof_features_are_never_enabled() {
    let found = offending_lines(&["Cargo.toml"], &["spof"]);
    assert!(
        found.is_empty(),
        "spof feature enabled:\n{}",
        found.join("\n")
    );
}
