//! Model runtime: shared blocks, one file per family, masks.
pub mod weights;
