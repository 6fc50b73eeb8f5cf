//! `qrcash-decode FILE|DIR...`: print the QR payloads in image files and how long decoding
//! took. By default every pass runs on every file (what can be read at all); `--live` plays
//! the files as camera frames through the ATM agent's exact live settings and prints
//! decoded/total and the per-frame median, p90 and p99 (what customers wait). A thin shell
//! over `qrcash_hardware::scan::{decode_files, decode_live}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use qrcash_hardware::scan::{
    FileResult, PayloadFilter, ScanConfig, decode_files, decode_live, percentiles,
};

/// Decode QR codes in PNG/JPEG files.
#[derive(Debug, Parser)]
#[command(name = "qrcash-decode", version)]
struct Cli {
    /// Images to decode, or folders of them (read in name order).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Play the images as camera frames through the agent's live settings (first code per
    /// frame, the slow fallbacks on every 4th frame, no tracking) and print the summary.
    #[arg(long)]
    live: bool,
    /// With --live, print only the summary.
    #[arg(long)]
    quiet: bool,
}

/// The files named, folders expanded to their PNG and JPEG images in name order.
fn expand(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut images: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| is_image(f))
                .collect();
            images.sort();
            out.extend(images);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let files = match expand(&cli.files) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot list the images: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = if cli.live {
        decode_live(&files, ScanConfig::live(PayloadFilter::accept_all()))
    } else {
        decode_files(&files, ScanConfig::default())
    };
    let failed = print(&results, cli.live && cli.quiet);
    if cli.live {
        let times: Vec<_> = results
            .iter()
            .filter(|r| r.outcome.is_ok())
            .map(|r| r.decode_time)
            .collect();
        let decoded = results
            .iter()
            .filter(|r| r.outcome.as_ref().is_ok_and(|f| !f.is_empty()))
            .count();
        let [p50, p90, p99] = percentiles(&times);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "live: decoded {decoded}/{} frames; per frame median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
            times.len(),
            ms(p50),
            ms(p90),
            ms(p99)
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One line per code (or "no code"); unreadable files on stderr. Whether any was unreadable.
fn print(results: &[FileResult], quiet: bool) -> bool {
    let mut failed = false;
    for result in results {
        let ms = result.decode_time.as_secs_f64() * 1e3;
        match &result.outcome {
            Err(e) => {
                eprintln!("{}: cannot read: {e}", result.path.display());
                failed = true;
            }
            Ok(_) if quiet => {}
            Ok(found) if found.is_empty() => {
                println!("{}: no code ({ms:.1} ms)", result.path.display());
            }
            Ok(found) => {
                for d in found {
                    println!("{}: {} ({ms:.1} ms)", result.path.display(), d.payload);
                }
            }
        }
    }
    failed
}
