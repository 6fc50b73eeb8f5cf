//! QR decoding benchmark: our scanner, plain rqrr and zbar side by side on a generated corpus
//! of hard images (see `qrcash_hardware::scan::corpus`), reporting decode rate and median/p99
//! time per frame size and per distortion class. Run it through `scripts/bench-qr.sh`, which
//! installs zbar and writes the "## QR decoding" section of docs/BENCHMARKS.md.
//!
//! zbar is called in-process through libzbar's C API, loaded with dlopen at run time so that
//! nothing in the build needs zbar: same luma buffer, same clock, one scanner reused, only
//! the QR symbology enabled (which only saves zbar work).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qrcash_hardware::camera::LumaFrame;
use qrcash_hardware::scan::corpus::{self, Distortion};
use qrcash_hardware::scan::{ScanConfig, Scanner};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Decoder {
    Ours,
    OursFast,
    Rqrr,
    Zbar,
}

impl Decoder {
    fn name(self) -> &'static str {
        match self {
            Decoder::Ours => "qrcash scanner",
            Decoder::OursFast => "qrcash, fast passes only",
            Decoder::Rqrr => "plain rqrr 0.10",
            Decoder::Zbar => "zbar (libzbar)",
        }
    }
}

struct Args {
    per_class: usize,
    empty: usize,
    sizes: Vec<(u32, u32)>,
    seed: u64,
    markdown: Option<PathBuf>,
    machine: String,
    command: String,
    dump: Option<PathBuf>,
    quiet: bool,
    /// `--ours-only`: skip plain rqrr and zbar (for profiling the scanner under callgrind).
    ours_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        per_class: 24,
        empty: 30,
        sizes: vec![(640, 480), (1280, 720), (1920, 1080)],
        seed: 20_240_601,
        markdown: None,
        machine: String::from("(not given)"),
        command: String::from("scripts/bench-qr.sh"),
        dump: None,
        quiet: false,
        ours_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--per-class" => {
                args.per_class = value("--per-class")?
                    .parse()
                    .map_err(|e| format!("--per-class: {e}"))?
            }
            "--empty" => {
                args.empty = value("--empty")?
                    .parse()
                    .map_err(|e| format!("--empty: {e}"))?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--sizes" => {
                args.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| {
                        let (w, h) = s.split_once('x').ok_or(format!("size {s}: want WxH"))?;
                        Ok((
                            w.parse().map_err(|e| format!("size {s}: {e}"))?,
                            h.parse().map_err(|e| format!("size {s}: {e}"))?,
                        ))
                    })
                    .collect::<Result<_, String>>()?
            }
            "--markdown" => args.markdown = Some(value("--markdown")?.into()),
            "--machine" => args.machine = value("--machine")?,
            "--command" => args.command = value("--command")?,
            "--dump" => args.dump = Some(value("--dump")?.into()),
            "--quiet" => args.quiet = true,
            "--ours-only" => args.ours_only = true,
            // `cargo bench` passes `--bench`; ignore it and any harness flags.
            _ if arg.starts_with("--bench") => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// Samples per (frame size, decoder, distortion class).
type Results = BTreeMap<((u32, u32), Decoder, Distortion), Vec<Sample>>;

/// One decoder's result on one image.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ok: bool,
    time: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn stats(samples: &[Sample]) -> (usize, Duration, Duration) {
    let mut times: Vec<Duration> = samples.iter().map(|s| s.time).collect();
    times.sort();
    (
        samples.iter().filter(|s| s.ok).count(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn rqrr_decode(frame: &LumaFrame) -> (Vec<String>, Duration) {
    let img = image::GrayImage::from_raw(frame.width(), frame.height(), frame.data().to_vec());
    let Some(img) = img else {
        return (Vec::new(), Duration::ZERO);
    };
    let start = Instant::now();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let payloads = prepared
        .detect_grids()
        .into_iter()
        .filter_map(|g| g.decode().ok().map(|(_, s)| s))
        .collect();
    (payloads, start.elapsed())
}

/// `--stages`: which pass decoded each 1280×720 image, and in how many ms (debugging aid).
fn stages() {
    let mut scanner = Scanner::new(ScanConfig::default());
    for d in Distortion::ALL {
        let mut line = format!("{:>12}:", d.name());
        for i in 0..8 {
            let img = corpus::generate(1280, 720, d, i, 20_240_601);
            scanner.reset_tracking();
            let t = Instant::now();
            let r = scanner.scan(&img.frame);
            let e = t.elapsed();
            let tag = match r {
                Some(d) if d.payload == img.payload => format!("{:?}", d.stage)
                    .chars()
                    .filter(|c| c.is_uppercase())
                    .collect::<String>(),
                Some(_) => "WRONG".into(),
                None => "-".into(),
            };
            line += &format!(" {tag}/{:.1}", e.as_secs_f64() * 1e3);
        }
        eprintln!("{line}");
    }
}

/// `--profile N`: the default scanner once on each of N images per class at 1280×720 and
/// nothing else, so that `valgrind --tool=callgrind --dump-after=...Scanner::scan` gives one
/// instruction count per image (deterministic, unlike wall time on a shared machine).
fn profile(per_class: usize) {
    let images: Vec<_> = corpus::generate_all(1280, 720, per_class, 20_240_601).collect();
    let mut scanner = Scanner::new(ScanConfig::default());
    let mut ok = 0;
    for img in &images {
        scanner.reset_tracking();
        if scanner
            .scan(&img.frame)
            .is_some_and(|d| d.payload == img.payload)
        {
            ok += 1;
        }
    }
    eprintln!("decoded {ok}/{}", images.len());
}

fn main() {
    if std::env::args().any(|a| a == "--stages") {
        stages();
        return;
    }
    let argv: Vec<String> = std::env::args().collect();
    if let Some(i) = argv.iter().position(|a| a == "--profile") {
        profile(argv.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(4));
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("qr bench: {e}");
            std::process::exit(2);
        }
    };
    let zbar = match zbar::Zbar::load() {
        _ if args.ours_only => None,
        Ok(z) => Some(z),
        Err(e) => {
            eprintln!("zbar not measured: {e} (install libzbar0, e.g. via scripts/bench-qr.sh)");
            None
        }
    };
    let mut scanner = Scanner::new(ScanConfig::default());
    let mut fast_only = Scanner::new(ScanConfig {
        slow_search_every: 0,
        ..ScanConfig::default()
    });
    // (size, decoder, class) -> samples
    let mut results: Results = BTreeMap::new();
    let mut empty: BTreeMap<((u32, u32), Decoder), Vec<Duration>> = BTreeMap::new();
    let mut tracked: BTreeMap<(u32, u32), Vec<Duration>> = BTreeMap::new();
    let started = Instant::now();
    let load_start = load_average();
    for &(w, h) in &args.sizes {
        for img in corpus::generate_all(w, h, args.per_class, args.seed) {
            if let Some(dir) = &args.dump {
                dump(dir, &img, w, h);
            }
            let frame = &img.frame;
            scanner.reset_tracking();
            let start = Instant::now();
            let found = scanner.scan(frame);
            let time = start.elapsed();
            let ok = found.as_ref().is_some_and(|d| d.payload == img.payload);
            results
                .entry(((w, h), Decoder::Ours, img.distortion))
                .or_default()
                .push(Sample { ok, time });
            if ok {
                // The next frame of a video: the code is still where it was.
                let start = Instant::now();
                let again = scanner.scan(frame);
                let time = start.elapsed();
                if again.is_some_and(|d| d.payload == img.payload) {
                    tracked.entry((w, h)).or_default().push(time);
                }
            }
            fast_only.reset_tracking();
            let start = Instant::now();
            let found = fast_only.scan(frame);
            let time = start.elapsed();
            let ok = found.is_some_and(|d| d.payload == img.payload);
            results
                .entry(((w, h), Decoder::OursFast, img.distortion))
                .or_default()
                .push(Sample { ok, time });
            if args.ours_only {
                continue;
            }
            let (payloads, time) = rqrr_decode(frame);
            let ok = payloads.contains(&img.payload);
            results
                .entry(((w, h), Decoder::Rqrr, img.distortion))
                .or_default()
                .push(Sample { ok, time });
            if let Some(z) = &zbar {
                let start = Instant::now();
                let payloads = z.scan(frame);
                let time = start.elapsed();
                let ok = payloads.contains(&img.payload);
                results
                    .entry(((w, h), Decoder::Zbar, img.distortion))
                    .or_default()
                    .push(Sample { ok, time });
            }
        }
        for i in 0..args.empty {
            let frame = corpus::generate_empty(w, h, i, args.seed);
            scanner.reset_tracking();
            let start = Instant::now();
            let _ = scanner.scan(&frame);
            empty
                .entry(((w, h), Decoder::Ours))
                .or_default()
                .push(start.elapsed());
            fast_only.reset_tracking();
            let start = Instant::now();
            let _ = fast_only.scan(&frame);
            empty
                .entry(((w, h), Decoder::OursFast))
                .or_default()
                .push(start.elapsed());
            if args.ours_only {
                continue;
            }
            let (_, time) = rqrr_decode(&frame);
            empty.entry(((w, h), Decoder::Rqrr)).or_default().push(time);
            if let Some(z) = &zbar {
                let start = Instant::now();
                let _ = z.scan(&frame);
                empty
                    .entry(((w, h), Decoder::Zbar))
                    .or_default()
                    .push(start.elapsed());
            }
        }
        if !args.quiet {
            eprintln!(
                "{w}x{h} done after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let decoders: Vec<Decoder> = if args.ours_only {
        vec![Decoder::Ours, Decoder::OursFast]
    } else if zbar.is_some() {
        vec![
            Decoder::Ours,
            Decoder::OursFast,
            Decoder::Rqrr,
            Decoder::Zbar,
        ]
    } else {
        vec![Decoder::Ours, Decoder::OursFast, Decoder::Rqrr]
    };
    let report = report(
        &args,
        &decoders,
        &results,
        &empty,
        &tracked,
        zbar.as_ref().map(|z| z.version.clone()),
        (load_start, load_average()),
    );
    println!("{report}");
    if let Some(path) = &args.markdown {
        if let Err(e) = write_section(path, &report) {
            eprintln!("cannot update {}: {e}", path.display());
            std::process::exit(1);
        }
        eprintln!("updated {}", path.display());
    }
}

/// The 1-minute load average, as the kernel reports it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn dump(dir: &std::path::Path, img: &corpus::CorpusImage, w: u32, h: u32) {
    let path = dir.join(format!(
        "{w}x{h}-{}-{:02}.png",
        img.distortion.name(),
        img.index
    ));
    let saved = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            image::GrayImage::from_raw(w, h, img.frame.data().to_vec())
                .ok_or_else(|| "size mismatch".to_string())?
                .save(&path)
                .map_err(|e| e.to_string())
        });
    // The payload beside the image, so other decoders can be scored on the same files.
    let saved = saved.and_then(|()| {
        std::fs::write(path.with_extension("txt"), &img.payload).map_err(|e| e.to_string())
    });
    if let Err(e) = saved {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

fn report(
    args: &Args,
    decoders: &[Decoder],
    results: &Results,
    empty: &BTreeMap<((u32, u32), Decoder), Vec<Duration>>,
    tracked: &BTreeMap<(u32, u32), Vec<Duration>>,
    zbar_version: Option<String>,
    load: (String, String),
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let per_size = args.per_class * Distortion::ALL.len();
    let _ = writeln!(s, "## QR decoding\n");
    let _ = writeln!(
        s,
        "Generated corpus: {} distortion classes × {} images per frame size ({per_size} per size), \
         seed {}, plus {} code-free frames per size. Payloads are random 150–250 character \
         base64url tokens at error-correction level M (QR versions 8–11). A decode counts only if \
         the exact payload comes out. Times are wall-clock per frame on one core, release build.\n",
        Distortion::ALL.len(),
        args.per_class,
        args.seed,
        args.empty
    );
    let _ = writeln!(s, "- Machine: {}", args.machine);
    let _ = writeln!(
        s,
        "- Load average (1 min) at start / end of the run: {} / {} (other work on the machine \
         slows every decoder alike)",
        load.0, load.1
    );
    let _ = writeln!(
        s,
        "- zbar: {}",
        zbar_version.unwrap_or_else(|| "not installed, not measured".into())
    );
    let _ = writeln!(s, "- Reproduce: `{}`\n", args.command);
    let _ = writeln!(s, "### Per frame size\n");
    let _ = writeln!(
        s,
        "| size | decoder | decoded | median ms | p99 ms | empty frame median ms |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for &size in &args.sizes {
        for &d in decoders {
            let all: Vec<Sample> = Distortion::ALL
                .iter()
                .flat_map(|c| results.get(&(size, d, *c)).cloned().unwrap_or_default())
                .collect();
            let (ok, med, p99) = stats(&all);
            let mut e = empty.get(&(size, d)).cloned().unwrap_or_default();
            e.sort();
            let _ = writeln!(
                s,
                "| {}×{} | {} | {ok}/{} | {} | {} | {} |",
                size.0,
                size.1,
                d.name(),
                all.len(),
                ms(med),
                ms(p99),
                ms(percentile(&e, 0.5))
            );
        }
    }
    let _ = writeln!(
        s,
        "\nNext frame of a video with the code still in view (tracked region), qrcash scanner, \
         median ms: {}\n",
        args.sizes
            .iter()
            .map(|&size| {
                let mut t = tracked.get(&size).cloned().unwrap_or_default();
                t.sort();
                format!("{}×{} {}", size.0, size.1, ms(percentile(&t, 0.5)))
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "### Against the targets\n");
    let total = |size: (u32, u32), d: Decoder| -> Vec<Sample> {
        Distortion::ALL
            .iter()
            .flat_map(|c| results.get(&(size, d, *c)).cloned().unwrap_or_default())
            .collect()
    };
    let class = |size: (u32, u32), d: Decoder, c: Distortion| -> usize {
        stats(&results.get(&(size, d, c)).cloned().unwrap_or_default()).0
    };
    if args.sizes.contains(&(1280, 720)) {
        let (_, med, _) = stats(&total((1280, 720), Decoder::Ours));
        let target = Duration::from_millis(4);
        let verdict = if med <= target {
            "met".to_string()
        } else {
            format!(
                "**not met**, by {} ms ({:.0} % over)",
                ms(med - target),
                (med.as_secs_f64() / target.as_secs_f64() - 1.0) * 100.0
            )
        };
        let (_, fast_med, _) = stats(&total((1280, 720), Decoder::OursFast));
        let _ = writeln!(
            s,
            "- Median ≤ 4 ms per 1280×720 frame: {} ms, {verdict}. With the fallbacks \
             off (fast passes only) the median is {} ms.",
            ms(med),
            ms(fast_med)
        );
    }
    if decoders.contains(&Decoder::Zbar) {
        for &size in &args.sizes {
            let (ours, _, _) = stats(&total(size, Decoder::Ours));
            let (zbar, _, _) = stats(&total(size, Decoder::Zbar));
            let verdict = if ours >= zbar { "met" } else { "**not met**" };
            let worse: Vec<String> = Distortion::ALL
                .iter()
                .filter_map(|&c| {
                    let (o, z) = (class(size, Decoder::Ours, c), class(size, Decoder::Zbar, c));
                    (o < z).then(|| format!("{} {o} vs {z}", c.name()))
                })
                .collect();
            let _ = writeln!(
                s,
                "- At least as many decodes as zbar at {}×{}: {ours} vs {zbar}, {verdict}; \
                 classes where zbar decodes more: {}.",
                size.0,
                size.1,
                if worse.is_empty() {
                    "none".to_string()
                } else {
                    worse.join(", ")
                }
            );
        }
    }
    let _ = writeln!(
        s,
        "\nWhy: every located grid goes to the scanner's own symbol decoder (Reed–Solomon with \
         log/antilog tables: microseconds per code, where rqrr's decoder, which raises α to a \
         power for every syndrome term, takes ~1.2 ms per version-10 code), so an image the \
         first fast pass decodes costs about 1 ms at 1280×720 (halving, binarizing, locating, \
         sampling); those set the median. The p99 and the empty-frame cost come from the \
         fallbacks that run when the fast passes find nothing: the double-resolution pass \
         (codes of 1.5–2.5 px per module, whose finder rings do not survive binarization at \
         the original scale) and rqrr's own grid search (strong perspective). A live-video \
         configuration runs them on one frame in N (`slow_search_every`). Absolute times \
         depend on what else runs: see the load average above; between two runs of this \
         benchmark on the shared machine medians differed by up to 45 %, the ratios between \
         decoders much less.\n"
    );
    let _ = writeln!(
        s,
        "### Per distortion class (decoded / {} · median ms)\n",
        args.per_class
    );
    let mut header = String::from("| class | size |");
    let mut rule = String::from("|---|---|");
    for d in decoders {
        let _ = write!(header, " {} |", d.name());
        rule.push_str("---|");
    }
    let _ = writeln!(s, "{header}\n{rule}");
    for class in Distortion::ALL {
        for &size in &args.sizes {
            let _ = write!(s, "| {} | {}×{} |", class.name(), size.0, size.1);
            for &d in decoders {
                let samples = results.get(&(size, d, class)).cloned().unwrap_or_default();
                let (ok, med, _) = stats(&samples);
                let _ = write!(s, " {ok} · {} |", ms(med));
            }
            let _ = writeln!(s);
        }
    }
    s
}

/// Replace the "## QR decoding" section of `path` (up to the next "## " heading) with
/// `section`, or append it; other sections are left as they are.
fn write_section(path: &std::path::Path, section: &str) -> std::io::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from("# Benchmarks\n\n"),
        Err(e) => return Err(e),
    };
    let heading = "## QR decoding";
    let new = match old.find(heading) {
        Some(start) => {
            let rest = &old[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + heading.len() + i + 1);
            format!("{}{}\n\n{}", &old[..start], section.trim_end(), &old[end..])
        }
        None => format!("{}\n{}\n", old.trim_end(), section.trim_end()),
    };
    std::fs::write(path, new)
}

mod zbar {
    //! libzbar through dlopen: the handful of C functions needed to scan a Y800 (luma) image.

    use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};

    use qrcash_hardware::camera::LumaFrame;

    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }
    const RTLD_NOW: c_int = 2;
    const ZBAR_NONE: c_int = 0;
    const ZBAR_QRCODE: c_int = 64;
    const ZBAR_CFG_ENABLE: c_int = 0;
    const Y800: c_ulong = u32::from_le_bytes(*b"Y800") as c_ulong;

    type Ptr = *mut c_void;

    /// Look up `name` in `lib` as a function pointer of type `F`.
    ///
    /// # Safety
    /// `F` must be the `extern "C"` function pointer type matching the symbol's C declaration.
    unsafe fn symbol<F: Copy>(lib: Ptr, name: &std::ffi::CStr) -> Result<F, String> {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<Ptr>());
        // SAFETY: `name` is NUL-terminated; the caller vouches for `F`.
        let p = unsafe { dlsym(lib, name.as_ptr()) };
        if p.is_null() {
            return Err(format!("libzbar lacks {name:?}"));
        }
        // SAFETY: a non-null symbol address reinterpreted as the function type the caller named.
        Ok(unsafe { std::mem::transmute_copy::<Ptr, F>(&p) })
    }

    pub struct Zbar {
        scanner: Ptr,
        image_create: unsafe extern "C" fn() -> Ptr,
        image_destroy: unsafe extern "C" fn(Ptr),
        image_set_format: unsafe extern "C" fn(Ptr, c_ulong),
        image_set_size: unsafe extern "C" fn(Ptr, c_uint, c_uint),
        image_set_data: unsafe extern "C" fn(Ptr, *const c_void, c_ulong, Ptr),
        scan_image: unsafe extern "C" fn(Ptr, Ptr) -> c_int,
        first_symbol: unsafe extern "C" fn(Ptr) -> Ptr,
        symbol_next: unsafe extern "C" fn(Ptr) -> Ptr,
        symbol_get_data: unsafe extern "C" fn(Ptr) -> *const c_char,
        symbol_get_data_length: unsafe extern "C" fn(Ptr) -> c_uint,
        pub version: String,
    }

    impl Zbar {
        pub fn load() -> Result<Self, String> {
            // SAFETY: dlopen/dlsym are called with NUL-terminated names; every symbol is cast
            // to the signature libzbar's zbar.h declares for it (zbar 0.23).
            unsafe {
                let lib = dlopen(c"libzbar.so.0".as_ptr(), RTLD_NOW);
                if lib.is_null() {
                    return Err("libzbar.so.0 not found".into());
                }
                macro_rules! sym {
                    ($name:literal) => {
                        symbol(lib, $name)?
                    };
                }
                let scanner_create: unsafe extern "C" fn() -> Ptr =
                    sym!(c"zbar_image_scanner_create");
                let set_config: unsafe extern "C" fn(Ptr, c_int, c_int, c_int) -> c_int =
                    sym!(c"zbar_image_scanner_set_config");
                let version: unsafe extern "C" fn(*mut c_uint, *mut c_uint, *mut c_uint) -> c_int =
                    sym!(c"zbar_version");
                let scanner = scanner_create();
                if scanner.is_null() {
                    return Err("zbar_image_scanner_create failed".into());
                }
                set_config(scanner, ZBAR_NONE, ZBAR_CFG_ENABLE, 0);
                set_config(scanner, ZBAR_QRCODE, ZBAR_CFG_ENABLE, 1);
                let (mut major, mut minor, mut patch) = (0, 0, 0);
                version(&mut major, &mut minor, &mut patch);
                Ok(Self {
                    scanner,
                    image_create: sym!(c"zbar_image_create"),
                    image_destroy: sym!(c"zbar_image_destroy"),
                    image_set_format: sym!(c"zbar_image_set_format"),
                    image_set_size: sym!(c"zbar_image_set_size"),
                    image_set_data: sym!(c"zbar_image_set_data"),
                    scan_image: sym!(c"zbar_scan_image"),
                    first_symbol: sym!(c"zbar_image_first_symbol"),
                    symbol_next: sym!(c"zbar_symbol_next"),
                    symbol_get_data: sym!(c"zbar_symbol_get_data"),
                    symbol_get_data_length: sym!(c"zbar_symbol_get_data_length"),
                    version: format!("libzbar {major}.{minor}.{patch}, in-process via its C API"),
                })
            }
        }

        /// Every QR payload zbar finds in `frame`.
        pub fn scan(&self, frame: &LumaFrame) -> Vec<String> {
            let mut out = Vec::new();
            // SAFETY: the image borrows `frame`'s pixels (no cleanup handler) and is destroyed
            // before this function returns; symbols are read before the image is destroyed.
            unsafe {
                let image = (self.image_create)();
                if image.is_null() {
                    return out;
                }
                (self.image_set_format)(image, Y800);
                (self.image_set_size)(image, frame.width(), frame.height());
                (self.image_set_data)(
                    image,
                    frame.data().as_ptr().cast(),
                    frame.data().len() as c_ulong,
                    std::ptr::null_mut(),
                );
                if (self.scan_image)(self.scanner, image) > 0 {
                    let mut sym = (self.first_symbol)(image);
                    while !sym.is_null() {
                        let data = (self.symbol_get_data)(sym);
                        let len = (self.symbol_get_data_length)(sym) as usize;
                        if !data.is_null() {
                            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
                            out.push(String::from_utf8_lossy(bytes).into_owned());
                        }
                        sym = (self.symbol_next)(sym);
                    }
                }
                (self.image_destroy)(image);
            }
            out
        }
    }
}
