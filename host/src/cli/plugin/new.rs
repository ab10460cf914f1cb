//! `weir plugin new NAME --lang rust`: a working plugin project from a template.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct NewArgs {
    /// Name of the plugin (letters, digits and dashes); also the directory created.
    name: String,
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Where to create the project directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The `weir-sdk` crate to depend on; defaults to the SDK of the Weir checkout this binary was built from.
    #[arg(long)]
    sdk_path: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Lang {
    Rust,
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A plugin is its own workspace: build it with `cargo build --release --target wasm32-wasip2`.
[workspace]

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
serde = { version = "1", features = ["derive"] }
weir-sdk = { path = "{sdk}" }

[dev-dependencies]
serde_json = "1"

[profile.release]
strip = true
codegen-units = 1
"#;

const LIB_RS: &str = r##"//! {name}: a Weir filter. Drops events whose `meta.domain` is "canary" and events in namespaces listed in
//! the configuration; keeps everything else.

use serde::Deserialize;
use weir_sdk::prelude::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Namespaces to drop.
    drop_namespaces: Vec<i64>,
}

pub struct Filter {
    config: Config,
}

impl Plugin for Filter {
    fn manifest() -> Manifest {
        Manifest::new("{name}", "0.1.0", Kind::Filter, "Drops canary events and unwanted namespaces")
    }

    fn init(config: &str) -> Result<(Self, Plan), String> {
        let config: Config = parse_config(config)?;
        Ok((Filter { config }, Plan::new().reads(["meta.domain", "namespace"])))
    }

    fn process(&mut self, event: &Event) -> Outcome {
        if event.str(0) == Some("canary") {
            return Outcome::drop("canary");
        }
        match event.i64(1) {
            Some(ns) if self.config.drop_namespaces.contains(&ns) => Outcome::drop("namespace"),
            _ => Outcome::keep(),
        }
    }
}

export_plugin!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drops_canaries_and_listed_namespaces() {
        let events = [
            json!({"meta": {"domain": "canary"}, "namespace": 0}),
            json!({"meta": {"domain": "en.wikipedia.org"}, "namespace": 2}),
            json!({"meta": {"domain": "en.wikipedia.org"}, "namespace": 0}),
        ];
        let (_, outcomes) = weir_sdk::testing::run::<Filter>(r#"{"drop_namespaces": [2]}"#, &events).unwrap();
        let kept: Vec<bool> = outcomes.iter().map(Outcome::is_keep).collect();
        assert_eq!(kept, [false, false, true]);
    }

    #[test]
    fn rejects_unknown_config_keys() {
        assert!(Filter::init(r#"{"drop_namespace": [2]}"#).is_err());
    }
}
"##;

const README: &str = r#"# {name}

A Weir plugin.

    cargo test                                            # native unit tests
    cargo build --release --target wasm32-wasip2          # the component
    weir plugin check target/wasm32-wasip2/release/{crate}.wasm
    weir plugin run target/wasm32-wasip2/release/{crate}.wasm --input events.ndjson
"#;

pub fn run(args: NewArgs) -> Result<ExitCode> {
    let Lang::Rust = args.lang;
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!(
            "plugin name {:?} must be letters, digits and dashes",
            args.name
        );
    }
    let dir = args.dir.join(&args.name);
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or --dir",
            dir.display()
        );
    }
    let sdk = match args.sdk_path {
        Some(path) => path,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the Weir SDK is not at {}; pass --sdk-path to a checkout's sdk/rust",
            sdk.display()
        )
    })?;
    let crate_name = args.name.replace('-', "_");
    let fill = |t: &str| {
        t.replace("{name}", &args.name)
            .replace("{crate}", &crate_name)
            .replace("{sdk}", &sdk.display().to_string())
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(dir.join("src/lib.rs"), fill(LIB_RS))?;
    std::fs::write(dir.join("README.md"), fill(README))?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!("created {} (Rust)", dir.display());
    println!(
        "next: cd {} && cargo test && cargo build --release --target wasm32-wasip2",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
