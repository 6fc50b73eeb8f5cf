//! Frame sources: Video4Linux cameras, image files and a synthetic QR renderer.
