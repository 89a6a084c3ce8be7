//! On-disk formats for weights. Each reader validates every length and offset against the
//! file before allocating, so a corrupt or hostile file is an error naming the file, never a
//! panic or a huge allocation.

pub mod gguf;
pub mod hf;
pub mod hub;
pub mod pth;
