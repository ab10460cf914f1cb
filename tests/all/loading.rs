//! Loading: contract checks, clear rejections, and the precompiled cache.

use std::path::Path;

use crate::support::{loader, plugin_path};

#[test]
fn a_foreign_import_is_rejected_by_name() {
    let err = loader()
        .load(&plugin_path("bad-wrong-import"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("imports `test:evil/net`"), "{err}");
    assert!(err.contains("bad_wrong_import.wasm"), "{err}");
}

#[test]
fn core_modules_and_junk_are_rejected() {
    let err = loader()
        .load_bytes(Path::new("core.wasm"), b"\0asm\x01\0\0\0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("core WebAssembly module"), "{err}");
    let err = loader()
        .load_bytes(Path::new("junk.wasm"), b"not wasm at all")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a WebAssembly file"), "{err}");
    let err = loader()
        .load(Path::new("/nonexistent/p.wasm"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read plugin /nonexistent/p.wasm"),
        "{err}"
    );
}

#[test]
fn second_load_comes_from_the_precompiled_cache() {
    let dir = tempfile::tempdir().unwrap();
    let loader = weir::runtime::Loader::new(Some(dir.path().to_path_buf()));
    let path = plugin_path("rust-drop-bots");
    let first = loader.load(&path).unwrap();
    let second = loader.load(&path).unwrap();
    assert!(!first.from_cache);
    assert!(second.from_cache);
    assert_eq!(first.sha256, second.sha256);
    // A corrupt artifact is ignored (and the component recompiled), never trusted.
    let artifact = walk(dir.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    let garbage = artifact.with_extension("tmp");
    std::fs::write(&garbage, b"garbage").unwrap();
    std::fs::rename(&garbage, &artifact).unwrap();
    let third = loader.load(&path).unwrap();
    assert!(!third.from_cache);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}
