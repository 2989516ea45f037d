//! Embeds `docs/diagnostics/<CODE>.md` so `rolloutctl explain <CODE>` works from any directory.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/diagnostics");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut pages: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter_map(|p| {
                    let stem = p.file_stem()?.to_str()?.to_string();
                    let is_code = stem.len() == 5
                        && stem.starts_with('R')
                        && stem[1..].bytes().all(|b| b.is_ascii_digit());
                    (is_code && p.extension()? == "md").then_some((stem, p))
                })
                .collect()
        })
        .unwrap_or_default();
    pages.sort();
    let mut out = String::from(
        "/// Diagnostic pages embedded from docs/diagnostics.\npub const PAGES: &[(&str, &str)] = &[\n",
    );
    for (code, path) in pages {
        println!("cargo:rerun-if-changed={}", path.display());
        out.push_str(&format!(
            "    ({code:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("pages.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
