//! Loading a plugin: read the component, compile it (or take the precompiled artifact from the cache), check
//! its imports and exports against the contract, and pre-instantiate it so each new instance costs microseconds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};

use super::bindings::{self, PluginPre};
use super::context::PluginCtx;
use super::{sandbox, waits};

/// A compiled, contract-checked plugin, ready to be instantiated any number of times.
pub struct LoadedPlugin {
    pub path: PathBuf,
    /// SHA-256 of the component bytes: the plugin's identity for caching and lineage.
    pub sha256: String,
    pub size_bytes: u64,
    /// Every import of the component, as declared.
    pub imports: Vec<String>,
    pub compile_ms: f64,
    pub from_cache: bool,
    pub(crate) pre: PluginPre<PluginCtx>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// A component's identity: the SHA-256 of its bytes, in hex (caching, lineage, deploys).
pub fn component_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where precompiled artifacts are kept: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir`, else `~/.cache/weir`.
/// `WEIR_CACHE_DIR=off` disables the cache. The directory must be private to the user that runs Weir: the
/// host trusts the machine code it finds there.
pub fn default_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("WEIR_CACHE_DIR") {
        Some(dir) if dir == "off" => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|base| base.join("weir")),
    }
}

/// Loads plugins. Cheap to clone; holds the one linker every plugin is linked against.
#[derive(Clone)]
pub struct Loader {
    cache_dir: Option<PathBuf>,
}

fn linker() -> &'static Linker<PluginCtx> {
    static LINKER: OnceLock<Linker<PluginCtx>> = OnceLock::new();
    LINKER.get_or_init(|| {
        let mut linker = Linker::new(sandbox::engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("link WASI");
        bindings::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |ctx| {
            ctx
        })
        .expect("link the weir:transform imports");
        waits::bound_by_deadline(&mut linker).expect("link the plugin's clock waits");
        linker
    })
}

impl Loader {
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        Loader { cache_dir }
    }

    pub fn with_default_cache() -> Self {
        Loader::new(default_cache_dir())
    }

    pub fn load(&self, path: &Path) -> Result<Arc<LoadedPlugin>> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plugin {}", path.display()))?;
        self.load_bytes(path, &bytes)
    }

    /// Loads a component from memory; `path` is only used in messages.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<LoadedPlugin>> {
        check_is_component(path, bytes)?;
        let sha256 = component_sha256(bytes);
        let started = Instant::now();
        let (component, from_cache) = self.compile(path, bytes, &sha256)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;

        let engine = sandbox::engine();
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        for import in &imports {
            check_import(path, import)?;
        }
        if ty.get_export(engine, bindings::EXPORT).is_none() {
            let exports: Vec<String> = ty
                .exports(engine)
                .map(|(name, _)| format!("`{name}`"))
                .collect();
            bail!(
                "{}: does not export `{}` (it exports {}); build it against the world `weir:transform/plugin` \
                 from wit/weir.wit",
                path.display(),
                bindings::EXPORT,
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            );
        }
        let pre = linker()
            .instantiate_pre(&component)
            .and_then(PluginPre::new)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: does not match the weir:transform contract: {e:#}",
                    path.display()
                )
            })?;

        Ok(Arc::new(LoadedPlugin {
            path: path.to_path_buf(),
            sha256,
            size_bytes: bytes.len() as u64,
            imports,
            compile_ms,
            from_cache,
            pre,
        }))
    }

    fn compile(&self, path: &Path, bytes: &[u8], sha256: &str) -> Result<(Component, bool)> {
        let engine = sandbox::engine();
        let artifact = self.cache_dir.as_ref().map(|dir| {
            dir.join("components")
                .join(sandbox::engine_fingerprint())
                .join(format!("{sha256}.cwasm"))
        });
        if let (Some(root), Some(artifact)) = (&self.cache_dir, &artifact)
            && private(root, artifact)
            && let Ok(serialized) = std::fs::read(artifact)
        {
            // Read into memory rather than mapping the file: a cache file replaced or truncated while mapped
            // would crash the host with SIGBUS.
            // SAFETY: the artifact was written by `Component::serialize` of an engine with the same
            // fingerprint (it is in the path), into the user's private cache directory (checked just above);
            // wasmtime checks its header and engine compatibility before using it.
            match unsafe { Component::deserialize(engine, &serialized) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(artifact = %artifact.display(), "ignoring unusable cached artifact: {e:#}")
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid WebAssembly component: {e:#}",
                path.display()
            )
        })?;
        if let Some(artifact) = &artifact
            && let Err(e) = write_artifact(artifact, &component)
        {
            // A cache that cannot be written costs compile time, never correctness.
            tracing::warn!(artifact = %artifact.display(), "cannot cache compiled plugin: {e:#}");
        }
        Ok((component, false))
    }
}

/// Whether a cached artifact may be trusted: it, and every directory from the cache's root down to it, belong
/// to the user Weir runs as, and no one else may write them. The host runs the machine code it finds there
/// outside the sandbox, so a cache others can write to (a shared or group-writable volume) is not read: the
/// plugin is compiled instead, with a warning.
#[cfg(unix)]
fn private(root: &Path, artifact: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    let mut path = artifact;
    loop {
        match std::fs::metadata(path) {
            // Missing: nothing cached yet (the read fails just after).
            Err(_) => return true,
            Ok(meta) if meta.uid() != user || meta.mode() & 0o022 != 0 => {
                tracing::warn!(
                    path = %path.display(),
                    "not using the compiled-plugin cache: {} belongs to another user or others may write to it; make the cache directory private (chmod 700) or set WEIR_CACHE_DIR",
                    path.display()
                );
                return false;
            }
            Ok(_) => {}
        }
        match path.parent() {
            Some(parent) if path != root => path = parent,
            _ => return true,
        }
    }
}

#[cfg(not(unix))]
fn private(_: &Path, _: &Path) -> bool {
    true
}

fn write_artifact(artifact: &Path, component: &Component) -> Result<()> {
    let dir = artifact.parent().expect("artifact path has a parent");
    create_private_dir(dir)?;
    let serialized = component.serialize()?;
    // Write then rename, so a concurrent loader never reads half an artifact.
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), serialized)?;
    tmp.persist(artifact)?;
    Ok(())
}

/// Creates `dir` and its missing parents, readable and writable by this user alone.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn check_is_component(path: &Path, bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!(
            "{}: not a WebAssembly file (no `\\0asm` header)",
            path.display()
        );
    }
    // Layer 0 is a core module, layer 1 a component.
    if bytes[6..8] == [0, 0] {
        bail!(
            "{}: is a core WebAssembly module, not a component; build it with `--target wasm32-wasip2` (Rust) or \
             wrap it with `wasm-tools component new`",
            path.display()
        );
    }
    Ok(())
}

/// Accepts the contract's imports and the sandboxed WASI basics; names anything else.
fn check_import(path: &Path, import: &str) -> Result<()> {
    const OURS: [&str; 5] = ["types", "state", "log", "metrics", "clock"];
    if let Some(rest) = import.strip_prefix("weir:transform/") {
        let interface = rest.split('@').next().unwrap_or(rest);
        if OURS.contains(&interface) {
            return Ok(());
        }
    } else if sandbox::is_allowed_wasi_import(import) {
        return Ok(());
    }
    bail!(
        "{}: imports `{import}`, which Weir does not provide. Plugins may import only \
         weir:transform/{{state,log,metrics,clock}} (plus the WASI basics a standard library links, all empty); \
         remove the code or dependency that uses it",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_foreign_import() {
        let err =
            check_import(Path::new("p.wasm"), "wasi:http/outgoing-handler@0.2.0").unwrap_err();
        assert!(
            err.to_string()
                .contains("`wasi:http/outgoing-handler@0.2.0`"),
            "{err}"
        );
        check_import(Path::new("p.wasm"), "weir:transform/state@0.2.0").unwrap();
        check_import(Path::new("p.wasm"), "wasi:cli/environment@0.2.6").unwrap();
        assert!(check_import(Path::new("p.wasm"), "weir:transform/secrets@0.2.0").is_err());
    }

    #[test]
    fn rejects_core_modules_and_junk() {
        let core = b"\0asm\x01\0\0\0";
        let err = check_is_component(Path::new("m.wasm"), core).unwrap_err();
        assert!(err.to_string().contains("core WebAssembly module"), "{err}");
        let err = check_is_component(Path::new("x.wasm"), b"hello world").unwrap_err();
        assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
    }
}
