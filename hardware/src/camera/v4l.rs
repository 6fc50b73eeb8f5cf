//! The Video4Linux capture shell: opens a device, negotiates size and pixel format, streams
//! through memory-mapped buffers and hands each buffer to the pure converters in
//! [`super::convert`]. Only compiled with the `v4l` cargo feature (its bindings need libclang).

use std::path::{Path, PathBuf};
use std::time::Duration;

use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::convert::{self, MjpegDecoder};
use super::{CameraError, FrameSource, LumaFrame, PixelFormat};

/// How long to wait for a frame before reporting the camera as stuck.
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);
/// Driver buffers: enough that the scanner can fall a frame behind without stalls.
const BUFFERS: u32 = 4;

/// A Video4Linux camera streaming through mmap buffers.
pub struct V4lCamera {
    device: PathBuf,
    // Keeps the device open for as long as the stream lives.
    _device: Device,
    stream: Stream<'static>,
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
    mjpeg: MjpegDecoder,
}

impl std::fmt::Debug for V4lCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4lCamera")
            .field("device", &self.device)
            .field("format", &self.format)
            .field("size", &(self.width, self.height))
            .finish_non_exhaustive()
    }
}

impl V4lCamera {
    /// Open `device` and ask for `width × height` in `format`. The driver may choose a
    /// nearby size (the frames say which); a different pixel format is an error.
    pub fn open(
        device: &Path,
        width: u32,
        height: u32,
        format: PixelFormat,
    ) -> Result<Self, CameraError> {
        let io = |source| CameraError::Io {
            path: device.to_path_buf(),
            source,
        };
        let dev = Device::with_path(device).map_err(io)?;
        let mut fmt = dev.format().map_err(io)?;
        fmt.width = width;
        fmt.height = height;
        fmt.fourcc = FourCC::new(&format.fourcc());
        let fmt = dev.set_format(&fmt).map_err(io)?;
        if fmt.fourcc.repr != format.fourcc() {
            return Err(CameraError::Unsupported {
                device: device.to_path_buf(),
                reason: format!(
                    "asked for {:?}, the driver offers {} (try format = \"yuyv\" or \"mjpeg\")",
                    format, fmt.fourcc
                ),
            });
        }
        let bytes_per_pixel = if format == PixelFormat::Yuyv { 2 } else { 1 };
        let stride = match fmt.stride as usize {
            0 => fmt.width as usize * bytes_per_pixel,
            s => s,
        };
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, BUFFERS).map_err(io)?;
        stream.set_timeout(FRAME_TIMEOUT);
        tracing::info!(
            device = %device.display(),
            width = fmt.width,
            height = fmt.height,
            format = %fmt.fourcc,
            "camera opened"
        );
        Ok(Self {
            device: device.to_path_buf(),
            _device: dev,
            stream,
            format,
            width: fmt.width,
            height: fmt.height,
            stride,
            mjpeg: MjpegDecoder::new(),
        })
    }

    /// The negotiated frame size.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

impl FrameSource for V4lCamera {
    fn next_frame(&mut self, frame: &mut LumaFrame) -> Result<(), CameraError> {
        let (buf, meta) = self.stream.next().map_err(|source| CameraError::Io {
            path: self.device.clone(),
            source,
        })?;
        let used = match meta.bytesused as usize {
            0 => buf.len(),
            n => n.min(buf.len()),
        };
        let data = &buf[..used];
        let timestamp = Duration::from_secs(meta.timestamp.sec.max(0) as u64)
            + Duration::from_micros(meta.timestamp.usec.max(0) as u64);
        match self.format {
            PixelFormat::Grey => {
                convert::grey_to_luma(data, self.width, self.height, self.stride, frame)?
            }
            PixelFormat::Yuyv => {
                convert::yuyv_to_luma(data, self.width, self.height, self.stride, frame)?
            }
            PixelFormat::Mjpeg => self.mjpeg.decode(data, frame)?,
        }
        frame.timestamp = timestamp;
        Ok(())
    }
}
