//! TODO

pub mod kernel;
