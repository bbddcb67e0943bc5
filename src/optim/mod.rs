//! Optimizers and gradient utilities.

pub mod adamw;
pub mod clip;
pub mod fused;
