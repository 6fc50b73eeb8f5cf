//! `qrcash-decode FILE...`: print the QR payloads in image files and how long decoding took.
//! A thin shell over `qrcash_hardware::scan::decode_files`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qrcash_hardware::scan::{ScanConfig, decode_files};

/// Decode QR codes in PNG/JPEG files.
#[derive(Debug, Parser)]
#[command(name = "qrcash-decode", version)]
struct Cli {
    /// Images to decode.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut failed = false;
    for result in decode_files(&cli.files, ScanConfig::default()) {
        let ms = result.decode_time.as_secs_f64() * 1e3;
        match result.outcome {
            Ok(found) if found.is_empty() => {
                println!("{}: no code ({ms:.1} ms)", result.path.display());
            }
            Ok(found) => {
                for d in found {
                    println!("{}: {} ({ms:.1} ms)", result.path.display(), d.payload);
                }
            }
            Err(e) => {
                eprintln!("{}: cannot read: {e}", result.path.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
