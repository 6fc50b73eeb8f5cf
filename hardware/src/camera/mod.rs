//! Frame sources: Video4Linux cameras, image files and a synthetic QR renderer.
//!
//! Every source yields 8-bit luma frames ([`LumaFrame`]) into a buffer the caller owns, so a
//! capture loop allocates once and reuses the same frame. Decoding QR codes is not done here:
//! that is [`crate::scan`].
//!
//! The pure pieces (pixel-format conversion, QR rendering) sit outside any feature gate and are
//! tested on every build; the Video4Linux shell is behind the `v4l` cargo feature because its
//! bindings need libclang at build time.

mod config;
pub mod convert;
mod files;
mod frame;
pub mod quality;
pub mod render;
mod synthetic;
#[cfg(feature = "v4l")]
mod v4l;

pub use config::{CameraConfig, OpenCamera, PixelFormat, open};
pub use files::{FileSource, load_luma_into};
pub use frame::{LumaFrame, LumaView, Rect};
pub use synthetic::{SyntheticCamera, SyntheticScene};
#[cfg(feature = "v4l")]
pub use v4l::V4lCamera;

use std::path::PathBuf;

/// Anything that produces luma frames: a camera, a folder of images, a renderer.
///
/// `next_frame` overwrites `frame` (reusing its allocation when the size does not change) and
/// blocks until a frame is available; a live camera paces the caller at its frame rate.
pub trait FrameSource: Send {
    /// Capture the next frame into `frame`.
    fn next_frame(&mut self, frame: &mut LumaFrame) -> Result<(), CameraError>;
}

impl<T: FrameSource + ?Sized> FrameSource for Box<T> {
    fn next_frame(&mut self, frame: &mut LumaFrame) -> Result<(), CameraError> {
        (**self).next_frame(frame)
    }
}

/// Why a frame source could not deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// The device or file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The device node or image file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image file or an MJPEG frame could not be decoded.
    #[error("cannot decode image {what}: {reason}")]
    Decode {
        /// The file, or "MJPEG frame".
        what: String,
        /// What the decoder said.
        reason: String,
    },
    /// The device delivered a buffer that does not fit the negotiated format.
    #[error("frame does not match the format: {0}")]
    BadFrame(#[from] convert::ConvertError),
    /// The device does not offer the requested pixel format or size.
    #[error("{device}: {reason}")]
    Unsupported {
        /// The device node.
        device: PathBuf,
        /// What was asked and what the device offers.
        reason: String,
    },
    /// A watched folder holds no image to show yet.
    #[error("nothing to show yet in {0}")]
    Empty(PathBuf),
    /// A finite source (a list of files) has delivered all its frames.
    #[error("no more frames: all {0} images were delivered")]
    Exhausted(usize),
    /// The configuration cannot work (empty folder, zero size, feature not compiled in).
    #[error("camera configuration: {0}")]
    Config(String),
}
