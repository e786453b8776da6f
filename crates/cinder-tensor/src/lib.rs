//! The common ground of cinder: an owned, backend-neutral tensor type and all the
//! quantization math (schemes, affine parameters, quantize / dequantize, fixed-point
//! requantization, error metrics). Every other crate speaks in these types; none of it
//! depends on burn.
//!
//! The mapping is the standard affine scheme of Jacob et al. 2018 and gemmlowp:
//! `real = scale * (q - zero_point)`, with real 0.0 exactly representable.

pub mod error;
pub mod fixed_point;
pub mod graph;
pub mod io;
pub mod lock;
pub mod metrics;
pub mod params;
pub mod quantize;
pub mod scheme;
pub mod tensor;

pub use error::{QuantError, TensorError};
pub use fixed_point::{RequantMultiplier, SUM_FRACTION_BITS, round_sum};
pub use metrics::{ErrorAccumulator, ErrorMetrics};
pub use params::{QuantParams, TensorQuantParams, round_ties_even};
pub use quantize::{Code, dequantize, fake_quantize, quantize};
pub use scheme::{Granularity, Mapping, QuantScheme, Signedness};
pub use tensor::{AxisLayout, DType, Element, Tensor, TensorBuf, TensorRef};
