//! Command-line front end: build VM root images from OCI images.

#![deny(clippy::cast_possible_truncation)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use iii_oci_rootfs::{image, initramfs, layout, oci, ImageStore, Rootfs};

#[derive(Parser)]
#[command(about = "Build iii microVM root filesystems")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fmt {
    Erofs,
    Ext4,
}

#[derive(Subcommand)]
enum Cmd {
    /// OCI layout directory or image tarball -> read-only lower image.
    Lower {
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "erofs")]
        format: Fmt,
        /// Also write the image's run config (Env, Cmd, ...) as JSON here.
        #[arg(long)]
        config_out: Option<PathBuf>,
    },
    /// Fresh per-VM ext4 upper.
    Upper {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
    },
    /// initramfs with /init and /dev/console.
    Initramfs {
        #[arg(long)]
        init: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build (or find in the cache) a sandbox preset: `python` or `node`.
    /// Progress goes to stderr; the lower's path is printed on stdout.
    Preset {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Import an OCI layout directory, OCI tarball or `docker save` tarball
    /// into the image cache (a hit when its manifest was imported before).
    Import {
        source: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Pull an image from a registry into the image cache (anonymous; plain
    /// HTTP only for localhost/127.0.0.1 and III_INSECURE_REGISTRIES).
    /// Progress goes to stderr; the lower's path is printed on stdout.
    Pull {
        reference: String,
        /// Image cache directory (default ${XDG_CACHE_HOME:-~/.cache}/iii/images).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Print the whole pull (rootfs, digest, config) as JSON instead of the path.
        #[arg(long)]
        json: bool,
        /// Only look in the cache: exit 1 when the reference was never pulled.
        #[arg(long)]
        lookup: bool,
    },
    /// Push an OCI image layout directory to a registry as REFERENCE.
    /// Prints the digest the reference now names.
    Push { layout: PathBuf, reference: String },
    /// Package a directory as a one-layer OCI image layout (for tests).
    Package {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Image Cmd, e.g. --cmd /bin/sh
        #[arg(long)]
        cmd: Vec<String>,
    },
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Image cache directory (default ${XDG_CACHE_HOME:-~/.cache}/iii/images).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Print the whole Rootfs (lower, format, env, key) as JSON instead of the path.
    #[arg(long)]
    json: bool,
    /// Only look in the cache: exit 1 when the image is not there.
    #[arg(long)]
    lookup: bool,
}

fn from_store(
    args: StoreArgs,
    lookup: impl FnOnce(&ImageStore) -> Option<Rootfs>,
    build: impl FnOnce(&ImageStore, &mut dyn FnMut(&str)) -> Result<Rootfs, iii_oci_rootfs::ImageError>,
) -> Result<()> {
    let store = ImageStore::open(args.cache)?;
    let rootfs = if args.lookup {
        match lookup(&store) {
            Some(r) => r,
            None => {
                eprintln!("not in the image cache ({})", store.root().display());
                std::process::exit(1);
            }
        }
    } else {
        build(&store, &mut |line| eprintln!("{line}"))?
    };
    if args.json {
        println!("{}", serde_json::to_string(&rootfs)?);
    } else {
        println!("{}", rootfs.lower.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Lower {
            image: src,
            out,
            format,
            config_out,
        } => {
            let img =
                oci::Image::open(&src).with_context(|| format!("opening {}", src.display()))?;
            let tmp = tempfile::tempdir()?;
            let root = tmp.path().join("root");
            img.unpack(&root).context("unpacking layers")?;
            let fmt = match format {
                Fmt::Erofs => image::Format::Erofs,
                Fmt::Ext4 => image::Format::Ext4,
            };
            image::build_lower(&root, &out, fmt)?;
            if let Some(c) = config_out {
                let v = serde_json::json!({
                    "env": img.config.env, "entrypoint": img.config.entrypoint, "cmd": img.config.cmd,
                    "working_dir": img.config.working_dir, "user": img.config.user,
                });
                std::fs::write(&c, serde_json::to_vec_pretty(&v)?)?;
            }
        }
        Cmd::Upper { out, size_mib } => image::create_upper(&out, size_mib)?,
        Cmd::Initramfs { init, out } => {
            let data =
                std::fs::read(&init).with_context(|| format!("reading {}", init.display()))?;
            std::fs::write(&out, initramfs::build(&data, &[])?)?;
        }
        Cmd::Preset { name, store } => from_store(
            store,
            |s| s.lookup_preset(&name),
            |s, p| s.build_preset(&name, p),
        )?,
        Cmd::Import { source, store } => from_store(
            store,
            |s| s.lookup_custom(&source),
            |s, p| s.import_custom(&source, p),
        )?,
        Cmd::Pull {
            reference,
            cache,
            json,
            lookup,
        } => {
            let store = ImageStore::open(cache)?;
            let pulled = if lookup {
                match store.lookup_pulled(&reference) {
                    Some(p) => p,
                    None => {
                        eprintln!(
                            "{reference} is not in the image cache ({})",
                            store.root().display()
                        );
                        std::process::exit(1);
                    }
                }
            } else {
                store.pull(&reference, &mut |line| eprintln!("{line}"))?
            };
            if json {
                println!("{}", serde_json::to_string(&pulled)?);
            } else {
                println!("{}", pulled.rootfs.lower.display());
            }
        }
        Cmd::Push { layout, reference } => {
            let digest = iii_oci_rootfs::registry::push_layout(&layout, &reference, &mut |line| {
                eprintln!("{line}")
            })?;
            println!("{digest}");
        }
        Cmd::Package { dir, out, cmd } => {
            let tar = tar_dir(&dir)?;
            layout::write_layout(
                &out,
                &[tar],
                serde_json::json!({"Cmd": cmd, "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}),
            )?;
        }
    }
    Ok(())
}

fn tar_dir(dir: &PathBuf) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)?;
    Ok(b.into_inner()?)
}
