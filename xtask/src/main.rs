//! `cargo xtask`: Drover's developer workflows. `cargo xtask package` builds the deb and rpm
//! packages of `drover-agent` and `drover-coordinator` (with the `drover` command) under
//! `target/packages/`, from the metadata in agent/Cargo.toml and coordinator/Cargo.toml.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// Cargo profile of the packaged binaries: release, stripped (see the root Cargo.toml).
const PROFILE: &str = "dist";

/// The packages: (crate directory, cargo package whose metadata describes it).
const PACKAGES: [(&str, &str); 2] = [
    ("agent", "drover-agent"),
    ("coordinator", "drover-coordinator"),
];

/// Crates whose binaries the packages ship (`drover` comes from cli/).
const BINARY_CRATES: [&str; 3] = ["drover-agent", "drover-coordinator", "drover"];

#[derive(Debug, Parser)]
#[command(about = "Drover's developer workflows")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the .deb and .rpm packages of drover-agent and drover-coordinator.
    Package {
        /// Package revision: the deb's `-N` and the rpm's release. Bump it to build an
        /// upgrade of the same version.
        #[arg(long, default_value_t = 1)]
        revision: u32,
        /// Directory of the packages; default: target/packages.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Package the binaries already built instead of building them.
        #[arg(long)]
        no_build: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Package {
            revision,
            out,
            no_build,
        } => package(revision, out, no_build),
    }
}

fn package(revision: u32, out: Option<PathBuf>, no_build: bool) -> anyhow::Result<()> {
    let root = workspace_root()?;
    let out = out.unwrap_or_else(|| root.join("target/packages"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    require_subcommand("deb", "cargo-deb")?;
    require_subcommand("generate-rpm", "cargo-generate-rpm")?;

    if !no_build {
        // One build of all three binaries; cargo-deb would otherwise build only its own
        // crate's, and cargo-generate-rpm builds nothing.
        let mut build = cargo(&root);
        build.args(["build", "--locked", "--profile", PROFILE]);
        for krate in BINARY_CRATES {
            build.args(["-p", krate]);
        }
        run(&mut build)?;
    }

    for (dir, name) in PACKAGES {
        let revision = revision.to_string();
        run(cargo(&root)
            .args(["deb", "--no-build", "--profile", PROFILE, "-p", name])
            .args(["--deb-revision", &revision, "--output"])
            .arg(&out))?;
        run(cargo(&root)
            .args(["generate-rpm", "--profile", PROFILE, "-p", dir])
            .args(["--set-metadata", &format!("release = \"{revision}\"")])
            .arg("--output")
            .arg(&out))?;
    }

    let mut built: Vec<_> = std::fs::read_dir(&out)
        .with_context(|| format!("listing {}", out.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("deb" | "rpm")))
        .collect();
    built.sort();
    println!("packages in {}:", out.display());
    for path in built {
        println!("  {}", path.display());
    }
    Ok(())
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// Fails with the install command when `cargo <subcommand>` is not installed.
fn require_subcommand(subcommand: &str, krate: &str) -> anyhow::Result<()> {
    let found = Command::new(cargo_bin())
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!("`cargo {subcommand}` is missing: install it with `cargo install --locked {krate}`");
    }
    Ok(())
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new(cargo_bin());
    command.current_dir(root);
    command
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
