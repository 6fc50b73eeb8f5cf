//! End-to-end: frames from the synthetic camera and from image files decode to the exact
//! payload through the public scanner API.

use qrcash_hardware::camera::render::{SeededRng, random_token};
use qrcash_hardware::camera::{
    CameraConfig, FileSource, FrameSource, LumaFrame, SyntheticCamera, SyntheticScene, open,
};
use qrcash_hardware::scan::{PayloadFilter, ScanConfig, Scanner, Stage, decode_files};

fn token(seed: u64) -> String {
    random_token(&mut SeededRng::new(seed), 200)
}

fn film(camera: &mut SyntheticCamera) -> LumaFrame {
    let mut frame = LumaFrame::default();
    camera
        .next_frame(&mut frame)
        .expect("synthetic frames never fail");
    frame
}

#[test]
fn token_payloads_decode_exactly_at_common_sizes() {
    for (i, (w, h)) in [(640, 480), (1280, 720), (1920, 1080)]
        .into_iter()
        .enumerate()
    {
        let payload = token(i as u64);
        let mut camera = SyntheticCamera::new(w, h);
        camera.show(&payload).expect("renders");
        let d = Scanner::new(ScanConfig::default())
            .scan(&film(&mut camera))
            .expect("decodes");
        assert_eq!(d.payload, payload, "{w}x{h}");
        let xs: Vec<u32> = d.corners.iter().map(|c| c.0).collect();
        assert!(
            xs.iter().all(|&x| x < w),
            "corners inside the frame: {:?}",
            d.corners
        );
    }
}

#[test]
fn half_resolution_then_tracked_region_on_video() {
    let payload = token(10);
    let camera = SyntheticCamera::new(1280, 720);
    let mut source = camera.clone();
    let mut scanner = Scanner::new(ScanConfig::default());
    assert!(
        scanner.scan(&film(&mut source)).is_none(),
        "nothing shown yet"
    );
    camera.show(&payload).expect("renders");
    let first = scanner.scan(&film(&mut source)).expect("decodes");
    assert_eq!(first.stage, Stage::HalfResolution);
    let next = scanner.scan(&film(&mut source)).expect("decodes again");
    assert_eq!(next.stage, Stage::Tracked);
    assert_eq!(next.payload, payload);
}

#[test]
fn small_code_needs_full_resolution() {
    let payload = token(11);
    let mut camera = SyntheticCamera::with_scene(
        1280,
        720,
        SyntheticScene {
            module_px: Some(2.2),
            center: (0.3, 0.6),
            ..SyntheticScene::default()
        },
    );
    camera.show(&payload).expect("renders");
    let d = Scanner::new(ScanConfig::default())
        .scan(&film(&mut camera))
        .expect("decodes");
    assert_eq!(d.payload, payload);
    assert!(
        matches!(d.stage, Stage::FullResolution | Stage::FullResolutionRegion),
        "{:?}",
        d.stage
    );
}

#[test]
fn tiny_code_needs_double_resolution() {
    // 1.6 px per module: the finder's one-module rings do not survive binarization at the
    // original scale, only on the doubled image.
    let payload = token(15);
    let scene = SyntheticScene {
        module_px: Some(1.6),
        center: (0.4, 0.55),
        angle_deg: 8.0,
        ..SyntheticScene::default()
    };
    let mut camera = SyntheticCamera::with_scene(640, 480, scene);
    camera.show(&payload).expect("renders");
    let frame = film(&mut camera);
    let mut scanner = Scanner::new(ScanConfig::default());
    let d = scanner.scan(&frame).expect("decodes");
    assert_eq!(d.payload, payload);
    assert_eq!(d.stage, Stage::DoubleResolution);
    // Corners come back in frame pixels, around the symbol's centre (256, 264).
    let cx = d.corners.iter().map(|c| c.0).sum::<u32>() / 4;
    let cy = d.corners.iter().map(|c| c.1).sum::<u32>() / 4;
    assert!(
        cx.abs_diff(256) <= 6 && cy.abs_diff(264) <= 6,
        "{:?}",
        d.corners
    );
    // The next frame looks around it, at double resolution again.
    assert_eq!(scanner.scan(&frame).map(|d| d.stage), Some(Stage::Tracked));
    // Without the fallback (or on frames the fallbacks skip) it is not found.
    let mut plain = Scanner::new(ScanConfig {
        upsample_fallback: false,
        slow_search_every: 0,
        ..ScanConfig::default()
    });
    assert_eq!(plain.scan(&frame), None);
}

#[test]
fn rotated_code_decodes() {
    let payload = token(12);
    let mut camera = SyntheticCamera::with_scene(
        1280,
        720,
        SyntheticScene {
            angle_deg: 135.0,
            ..SyntheticScene::default()
        },
    );
    camera.show(&payload).expect("renders");
    let d = Scanner::new(ScanConfig::default())
        .scan(&film(&mut camera))
        .expect("decodes");
    assert_eq!(d.payload, payload);
}

#[test]
fn non_token_payloads_are_rejected_by_the_filter() {
    let looks_like_token = |p: &str| {
        p.len() >= 150
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let mut scanner = Scanner::new(ScanConfig {
        filter: PayloadFilter::new(looks_like_token),
        ..ScanConfig::default()
    });
    let mut camera = SyntheticCamera::new(1280, 720);
    camera
        .show("https://evil.example/phish?x=1")
        .expect("renders");
    assert_eq!(scanner.scan(&film(&mut camera)), None);
    assert!(scanner.rejected() >= 1);
    let payload = token(13);
    camera.show(&payload).expect("renders");
    assert_eq!(
        scanner.scan(&film(&mut camera)).map(|d| d.payload),
        Some(payload)
    );
}

#[test]
fn files_source_and_decode_files_read_a_png() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = token(14);
    let mut camera = SyntheticCamera::new(800, 600);
    camera.show(&payload).expect("renders");
    let frame = film(&mut camera);
    let path = dir.path().join("code.png");
    image::GrayImage::from_raw(800, 600, frame.data().to_vec())
        .expect("size")
        .save(&path)
        .expect("writes png");
    std::fs::write(dir.path().join("notes.txt"), "not an image").expect("writes");

    let mut source = FileSource::open(dir.path()).expect("folder with an image");
    assert_eq!(source.files().len(), 1, "only images are played");
    let mut read = LumaFrame::default();
    source.next_frame(&mut read).expect("reads");
    assert_eq!(read.data(), frame.data());
    assert!(source.next_frame(&mut read).is_err(), "exhausted");

    let opened = open(&CameraConfig::Files {
        path: path.clone(),
        looping: true,
        watch: false,
    });
    assert!(opened.is_ok());

    let missing = dir.path().join("missing.png");
    let results = decode_files(&[path, missing], ScanConfig::default());
    let found = results[0].outcome.as_ref().expect("readable");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].payload, payload);
    assert!(results[1].outcome.is_err(), "missing file is an error");
}

#[test]
fn empty_folder_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = FileSource::open(dir.path()).expect_err("no images");
    assert!(err.to_string().contains("no .png"), "{err}");
}

/// A watched folder (the default for a folder in `[camera]`): empty is not an error, an
/// image added after start is shown, each image once without looping, all of them again
/// and again with it.
#[test]
fn a_watched_folder_shows_images_added_after_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config: CameraConfig = toml::from_str(&format!(
        "kind = \"files\"\npath = \"{}\"",
        dir.path().display()
    ))
    .expect("parses");
    assert!(matches!(config, CameraConfig::Files { watch: true, .. }));
    let mut source = open(&config).expect("an empty watched folder opens").source;
    let mut frame = LumaFrame::default();
    assert!(matches!(
        source.next_frame(&mut frame),
        Err(qrcash_hardware::camera::CameraError::Empty(_))
    ));
    let write = |name: &str, shade: u8| {
        image::GrayImage::from_pixel(16, 8, image::Luma([shade]))
            .save(dir.path().join(name))
            .expect("writes png");
    };
    write("a.png", 10);
    source.next_frame(&mut frame).expect("the new image");
    assert_eq!(frame.data()[0], 10);
    assert!(source.next_frame(&mut frame).is_err(), "played once");
    write("b.png", 20);
    source.next_frame(&mut frame).expect("the next new image");
    assert_eq!(frame.data()[0], 20);

    let mut looping = FileSource::watch(dir.path()).expect("opens").looping(true);
    let shades: Vec<u8> = (0..5)
        .map(|_| {
            looping.next_frame(&mut frame).expect("frame");
            frame.data()[0]
        })
        .collect();
    assert_eq!(shades, [10, 20, 10, 20, 10]);
}
