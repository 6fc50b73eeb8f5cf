//! A frame source that plays back PNG/JPEG files (one file, or every image in a folder in name
//! order), converted to luma. For replaying captured scenes and for the decode CLI, and, with a
//! watched folder, as the demo's and a test bench's "camera": drop an image in the folder to
//! show it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{CameraError, FrameSource, LumaFrame};

/// Plays back image files as frames.
#[derive(Debug)]
pub struct FileSource {
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    /// The folder, when watched: read again each time its images were all played.
    watched: Option<PathBuf>,
    /// Images already played (a watched folder without looping plays each once).
    played: HashSet<PathBuf>,
    started: Instant,
}

impl FileSource {
    /// A source over `path`: a single image, or a folder whose `.png`/`.jpg`/`.jpeg` files are
    /// played in name order. Fails if there is no image to play.
    pub fn open(path: &Path) -> Result<Self, CameraError> {
        let io = |source| CameraError::Io {
            path: path.to_path_buf(),
            source,
        };
        let files = if path.is_dir() {
            images_in(path).map_err(io)?
        } else {
            std::fs::metadata(path).map_err(io)?;
            vec![path.to_path_buf()]
        };
        if files.is_empty() {
            return Err(CameraError::Config(format!(
                "{} holds no .png/.jpg/.jpeg image",
                path.display()
            )));
        }
        Ok(Self {
            files,
            next: 0,
            looping: false,
            watched: None,
            played: HashSet::new(),
            started: Instant::now(),
        })
    }

    /// A source over the folder `dir`, watched: whenever its images were all played it is
    /// read again, so images added later are shown (removed ones are not). An empty folder
    /// is not an error: the source answers [`CameraError::Empty`] until an image appears.
    /// Without [`FileSource::looping`] each image is played once.
    pub fn watch(dir: &Path) -> Result<Self, CameraError> {
        let files = images_in(dir).map_err(|source| CameraError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            files,
            next: 0,
            looping: false,
            watched: Some(dir.to_path_buf()),
            played: HashSet::new(),
            started: Instant::now(),
        })
    }

    /// Start again from the first image after the last instead of reporting
    /// [`CameraError::Exhausted`].
    pub fn looping(mut self, looping: bool) -> Self {
        self.looping = looping;
        self
    }

    /// The images this source plays, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// The images in `dir`, in name order.
fn images_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_image(p))
        .collect();
    files.sort();
    Ok(files)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Read one PNG/JPEG (or any format the `image` crate was built with) as luma into `frame`.
pub fn load_luma_into(path: &Path, frame: &mut LumaFrame) -> Result<(), CameraError> {
    let img = image::open(path).map_err(|e| match e {
        image::ImageError::IoError(source) => CameraError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => CameraError::Decode {
            what: path.display().to_string(),
            reason: other.to_string(),
        },
    })?;
    let luma = img.into_luma8();
    let (w, h) = luma.dimensions();
    frame.reset(w, h).copy_from_slice(luma.as_raw());
    Ok(())
}

impl FrameSource for FileSource {
    fn next_frame(&mut self, frame: &mut LumaFrame) -> Result<(), CameraError> {
        if self.next >= self.files.len() {
            self.next = 0;
            match &self.watched {
                Some(dir) => {
                    let mut files = images_in(dir).map_err(|source| CameraError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                    if !self.looping {
                        files.retain(|f| !self.played.contains(f));
                    }
                    self.files = files;
                    if self.files.is_empty() {
                        return Err(CameraError::Empty(dir.clone()));
                    }
                }
                None if !self.looping => {
                    self.next = self.files.len();
                    return Err(CameraError::Exhausted(self.files.len()));
                }
                None => {}
            }
        }
        let path = &self.files[self.next];
        self.next += 1;
        if self.watched.is_some() && !self.looping {
            self.played.insert(path.clone());
        }
        load_luma_into(path, frame)?;
        frame.timestamp = self.started.elapsed();
        Ok(())
    }
}
