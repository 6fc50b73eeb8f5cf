//! A synthetic camera for demos and tests: it films a "phone screen" showing whatever QR
//! payload it was last given (or nothing), with optional sensor noise. Payloads are set from
//! any thread through a cloned handle; rendering happens once per `show`, frames are copies.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use qrcode::EcLevel;

use super::render::{self, Placement, QrModules, RenderError, SeededRng};
use super::{CameraError, FrameSource, LumaFrame};

/// Where and how the synthetic camera shows a code.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticScene {
    /// Module size in pixels; `None` makes the symbol about 45 % of the frame's short side.
    pub module_px: Option<f64>,
    /// Centre of the symbol as a fraction of width and height (0.5, 0.5 is the middle).
    pub center: (f64, f64),
    /// Rotation in degrees.
    pub angle_deg: f64,
    /// Gaussian noise added to every frame, in grey levels (0 for none).
    pub noise_sigma: f64,
    /// Grey level of the scene behind the phone.
    pub background: u8,
    /// Error-correction level of rendered codes.
    pub ec_level: EcLevel,
}

impl Default for SyntheticScene {
    fn default() -> Self {
        Self {
            module_px: None,
            center: (0.5, 0.5),
            angle_deg: 0.0,
            noise_sigma: 2.0,
            background: 150,
            ec_level: EcLevel::M,
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// The rendered picture of the current payload, `None` when nothing is shown.
    picture: Option<LumaFrame>,
    scene: SyntheticScene,
}

/// A camera that renders QR payloads instead of filming them.
///
/// Clones share the same screen: keep one clone to call [`show`](Self::show) /
/// [`clear`](Self::clear) (e.g. from the demo's HTTP handler) and hand another to the capture
/// task as its [`FrameSource`].
#[derive(Debug, Clone)]
pub struct SyntheticCamera {
    width: u32,
    height: u32,
    shared: Arc<Mutex<Shared>>,
    frame_interval: Option<Duration>,
    rng: SeededRng,
    started: Instant,
    next_due: Option<Instant>,
}

impl SyntheticCamera {
    /// A `width × height` camera showing nothing, with the default scene and no pacing.
    pub fn new(width: u32, height: u32) -> Self {
        Self::with_scene(width, height, SyntheticScene::default())
    }

    /// A camera with a given scene.
    pub fn with_scene(width: u32, height: u32, scene: SyntheticScene) -> Self {
        Self {
            width,
            height,
            shared: Arc::new(Mutex::new(Shared {
                picture: None,
                scene,
            })),
            frame_interval: None,
            rng: SeededRng::new(0x5EED),
            started: Instant::now(),
            next_due: None,
        }
    }

    /// Deliver at most one frame per `interval`, like a real camera (e.g. 66 ms for 15 fps).
    pub fn with_frame_interval(mut self, interval: Duration) -> Self {
        self.frame_interval = Some(interval);
        self
    }

    /// Frame size in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Show `payload` as a QR code from the next frame on.
    pub fn show(&self, payload: &str) -> Result<(), RenderError> {
        let scene = self.lock().scene.clone();
        let picture = render_scene(self.width, self.height, &scene, Some(payload))?;
        self.lock().picture = Some(picture);
        tracing::debug!(len = payload.len(), "synthetic camera shows a code");
        Ok(())
    }

    /// Show nothing (an empty scene) from the next frame on.
    pub fn clear(&self) {
        self.lock().picture = None;
    }

    /// Change where and how codes are shown; applies from the next `show`.
    pub fn set_scene(&self, scene: SyntheticScene) {
        self.lock().scene = scene;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // The state is a picture and a scene: a panic elsewhere cannot leave it half-written
        // in a way that matters, so carry on with it.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Render the scene, with the code for `payload` if there is one.
pub(crate) fn render_scene(
    width: u32,
    height: u32,
    scene: &SyntheticScene,
    payload: Option<&str>,
) -> Result<LumaFrame, RenderError> {
    let mut frame = LumaFrame::filled(width, height, scene.background);
    if let Some(payload) = payload {
        let code = QrModules::encode(payload, scene.ec_level)?;
        let n = code.size() as f64;
        let module = scene
            .module_px
            .unwrap_or(0.45 * f64::from(width.min(height)) / (n + 8.0));
        let center = (
            scene.center.0 * f64::from(width),
            scene.center.1 * f64::from(height),
        );
        let placement = Placement {
            corners: render::square_corners(center, module * n, scene.angle_deg.to_radians()),
            quiet_zone: 4.0,
            dark: 25,
            light: 235,
        };
        render::draw_qr(&mut frame, &code, &placement);
    }
    Ok(frame)
}

impl FrameSource for SyntheticCamera {
    fn next_frame(&mut self, frame: &mut LumaFrame) -> Result<(), CameraError> {
        if let Some(interval) = self.frame_interval {
            let now = Instant::now();
            let due = self.next_due.unwrap_or(now);
            if due > now {
                std::thread::sleep(due - now);
            }
            self.next_due = Some(due.max(now) + interval);
        }
        let noise = {
            let shared = self.lock();
            let out = frame.reset(self.width, self.height);
            match &shared.picture {
                Some(picture) => out.copy_from_slice(picture.data()),
                None => out.fill(shared.scene.background),
            }
            shared.scene.noise_sigma
        };
        render::add_noise(frame.data_mut(), noise, &mut self.rng);
        frame.timestamp = self.started.elapsed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_and_clear_change_the_frames() {
        let camera = SyntheticCamera::with_scene(
            160,
            120,
            SyntheticScene {
                noise_sigma: 0.0,
                ..SyntheticScene::default()
            },
        );
        let mut source = camera.clone();
        let mut frame = LumaFrame::default();
        source.next_frame(&mut frame).expect("frame");
        assert!(frame.data().iter().all(|&p| p == 150), "empty scene");
        camera.show("hello").expect("renders");
        source.next_frame(&mut frame).expect("frame");
        assert!(frame.data().iter().any(|&p| p < 50), "code is visible");
        camera.clear();
        source.next_frame(&mut frame).expect("frame");
        assert!(frame.data().iter().all(|&p| p == 150), "cleared");
    }

    #[test]
    fn show_works_from_another_thread() {
        let camera = SyntheticCamera::new(64, 64);
        let handle = camera.clone();
        std::thread::spawn(move || handle.show("x"))
            .join()
            .expect("thread")
            .expect("renders");
        assert!(camera.lock().picture.is_some());
    }

    #[test]
    fn frame_interval_paces_frames() {
        let mut camera = SyntheticCamera::new(8, 8).with_frame_interval(Duration::from_millis(20));
        let mut frame = LumaFrame::default();
        let start = Instant::now();
        for _ in 0..3 {
            camera.next_frame(&mut frame).expect("frame");
        }
        assert!(start.elapsed() >= Duration::from_millis(40));
    }
}
