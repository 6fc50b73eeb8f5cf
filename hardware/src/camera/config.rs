//! Camera configuration as the agent's TOML spells it, and opening the source it names.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{CameraError, FileSource, FrameSource, SyntheticCamera, SyntheticScene};

/// Which camera to use. Internally tagged by `kind`, e.g. in TOML:
///
/// ```toml
/// [camera]
/// kind = "v4l"
/// device = "/dev/video0"
/// width = 1280
/// height = 720
/// format = "yuyv"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CameraConfig {
    /// A Video4Linux device (needs the `v4l` cargo feature).
    V4l {
        /// Device node.
        #[serde(default = "default_device")]
        device: PathBuf,
        /// Requested width; the driver may pick the nearest size it has.
        #[serde(default = "default_width")]
        width: u32,
        /// Requested height.
        #[serde(default = "default_height")]
        height: u32,
        /// Pixel format to ask for.
        #[serde(default)]
        format: PixelFormat,
    },
    /// PNG/JPEG files: one image or a folder played in name order.
    Files {
        /// File or folder.
        path: PathBuf,
        /// Start over after the last image.
        #[serde(default)]
        looping: bool,
        /// A folder is read again whenever its images were played: images added later are
        /// shown, and an empty folder waits for one (default `true`; `false` plays what was
        /// there at start, and an empty folder is an error).
        #[serde(default = "yes")]
        watch: bool,
    },
    /// The synthetic QR renderer (demo and tests).
    Synthetic {
        /// Frame width.
        #[serde(default = "default_width")]
        width: u32,
        /// Frame height.
        #[serde(default = "default_height")]
        height: u32,
        /// Frames per second to pace at.
        #[serde(default = "default_fps")]
        fps: u32,
    },
}

fn yes() -> bool {
    true
}

/// Camera pixel formats the V4L source can convert to luma.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// 8-bit greyscale (`GREY`): no conversion, the cheapest.
    Grey,
    /// Packed YUV 4:2:2 (`YUYV`): the Y bytes are the luma. What most USB cameras offer.
    #[default]
    Yuyv,
    /// Motion JPEG (`MJPG`): less USB bandwidth at high resolutions, costs a JPEG decode.
    #[serde(alias = "mjpg")]
    Mjpeg,
}

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    720
}
fn default_fps() -> u32 {
    15
}

/// An opened camera: the frame source, plus for the synthetic camera the handle that puts
/// payloads on its screen.
pub struct OpenCamera {
    /// Where frames come from.
    pub source: Box<dyn FrameSource>,
    /// For [`CameraConfig::Synthetic`]: call `show`/`clear` on this to change what it films.
    pub synthetic: Option<SyntheticCamera>,
}

impl std::fmt::Debug for OpenCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCamera")
            .field("synthetic", &self.synthetic.is_some())
            .finish_non_exhaustive()
    }
}

/// Open the camera `config` names.
pub fn open(config: &CameraConfig) -> Result<OpenCamera, CameraError> {
    match config {
        CameraConfig::V4l {
            device,
            width,
            height,
            format,
        } => open_v4l(device, *width, *height, *format),
        CameraConfig::Files {
            path,
            looping,
            watch,
        } => {
            let source = if *watch && path.is_dir() {
                FileSource::watch(path)?
            } else {
                FileSource::open(path)?
            };
            Ok(OpenCamera {
                source: Box::new(source.looping(*looping)),
                synthetic: None,
            })
        }
        CameraConfig::Synthetic { width, height, fps } => {
            if *width == 0 || *height == 0 {
                return Err(CameraError::Config(format!(
                    "synthetic camera size {width}x{height} is empty"
                )));
            }
            let mut camera =
                SyntheticCamera::with_scene(*width, *height, SyntheticScene::default());
            if *fps > 0 {
                camera = camera.with_frame_interval(Duration::from_secs(1) / *fps);
            }
            Ok(OpenCamera {
                source: Box::new(camera.clone()),
                synthetic: Some(camera),
            })
        }
    }
}

#[cfg(feature = "v4l")]
fn open_v4l(
    device: &std::path::Path,
    width: u32,
    height: u32,
    format: PixelFormat,
) -> Result<OpenCamera, CameraError> {
    Ok(OpenCamera {
        source: Box::new(super::V4lCamera::open(device, width, height, format)?),
        synthetic: None,
    })
}

#[cfg(not(feature = "v4l"))]
fn open_v4l(
    device: &std::path::Path,
    _width: u32,
    _height: u32,
    _format: PixelFormat,
) -> Result<OpenCamera, CameraError> {
    Err(CameraError::Config(format!(
        "{} is a Video4Linux camera but this build has no V4L support: rebuild with \
         `--features qrcash-hardware/v4l` (needs libclang-dev)",
        device.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializes_each_kind_with_defaults() {
        let v4l: CameraConfig =
            serde_json::from_str(r#"{"kind":"v4l","format":"mjpg"}"#).expect("valid");
        assert_eq!(
            v4l,
            CameraConfig::V4l {
                device: "/dev/video0".into(),
                width: 1280,
                height: 720,
                format: PixelFormat::Mjpeg
            }
        );
        let files: CameraConfig =
            serde_json::from_str(r#"{"kind":"files","path":"/tmp/x"}"#).expect("valid");
        assert!(matches!(files, CameraConfig::Files { looping: false, .. }));
        let synth: CameraConfig =
            serde_json::from_str(r#"{"kind":"synthetic","width":640,"height":480}"#)
                .expect("valid");
        assert_eq!(
            synth,
            CameraConfig::Synthetic {
                width: 640,
                height: 480,
                fps: 15
            }
        );
        assert!(serde_json::from_str::<CameraConfig>(r#"{"kind":"v4l","dev":"x"}"#).is_err());
    }

    #[test]
    fn synthetic_config_opens_with_a_handle() {
        let mut cam = open(&CameraConfig::Synthetic {
            width: 64,
            height: 48,
            fps: 0,
        })
        .expect("opens");
        let handle = cam.synthetic.take().expect("synthetic handle");
        handle.show("abc").expect("renders");
        let mut frame = super::super::LumaFrame::default();
        cam.source.next_frame(&mut frame).expect("frame");
        assert_eq!((frame.width(), frame.height()), (64, 48));
    }

    #[cfg(not(feature = "v4l"))]
    #[test]
    fn v4l_without_the_feature_says_how_to_get_it() {
        let err = open(&CameraConfig::V4l {
            device: "/dev/video0".into(),
            width: 640,
            height: 480,
            format: PixelFormat::Grey,
        })
        .expect_err("no v4l in this build");
        assert!(err.to_string().contains("--features"), "{err}");
    }
}
