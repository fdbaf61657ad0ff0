//! Benchmark section (being written).

use super::{Ctx, Section};

pub fn run(_ctx: &Ctx) -> Result<Section, String> {
    Err("not implemented yet".into())
}
