//! The generic path: plain scalar references of every kernel ([`mod@reference`], the ground
//! truth every path is proptested against bit for bit) and the portable micro-kernel and
//! output stage that run where no instruction-set path applies.

mod portable;
pub mod reference;

pub(super) use portable::{Portable, depthwise_rows, direct_conv_rows, requantize_rows};
