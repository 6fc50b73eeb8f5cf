//! Opens a real Video4Linux camera when there is one (and the `v4l` feature is built);
//! otherwise says why it did nothing.

#[cfg(feature = "v4l")]
#[test]
fn captures_from_dev_video0() {
    use qrcash_hardware::camera::{FrameSource, LumaFrame, PixelFormat, V4lCamera};
    use std::path::Path;

    let device = Path::new("/dev/video0");
    if !device.exists() {
        eprintln!("skipped: no /dev/video0 on this machine");
        return;
    }
    let mut camera = match V4lCamera::open(device, 640, 480, PixelFormat::Yuyv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: /dev/video0 exists but does not stream YUYV: {e}");
            return;
        }
    };
    let mut frame = LumaFrame::default();
    for _ in 0..3 {
        camera
            .next_frame(&mut frame)
            .expect("a frame within the timeout");
    }
    assert_eq!((frame.width(), frame.height()), camera.size());
}

#[cfg(not(feature = "v4l"))]
#[test]
fn captures_from_dev_video0() {
    eprintln!("skipped: built without the `v4l` feature (cargo test --features v4l)");
}
