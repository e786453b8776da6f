//! What a quantizer is asked to do: bit width, storage sign, mapping, range, granularity.

use serde::{Deserialize, Serialize};

use crate::error::QuantError;

/// Storage of the quantized integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signedness {
    Signed,
    Unsigned,
}

/// How real values map onto the integer grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mapping {
    /// Zero point fixed at the middle of the grid (0 for signed storage); the range is
    /// `[-max|x|, max|x|]`.
    Symmetric,
    /// Zero point chosen so that `[min, max]` (widened to contain 0) fills the grid.
    Asymmetric,
}

/// One set of parameters for the whole tensor, or one per slice along an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    PerTensor,
    PerChannel { axis: usize },
}

/// A complete description of a quantizer. Deserializing checks it as [`QuantScheme::new`]
/// does, so a file cannot carry an unsupported bit width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "SchemeFields")]
pub struct QuantScheme {
    bits: u8,
    pub signedness: Signedness,
    pub mapping: Mapping,
    /// Drops the most negative code (signed: `[-127, 127]` at 8 bits) so that the grid is
    /// symmetric; the int8 kernels need this for exact `vpmaddubsw` sums.
    pub narrow_range: bool,
    pub granularity: Granularity,
}

/// The serialized fields of a [`QuantScheme`], before they are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemeFields {
    bits: u8,
    signedness: Signedness,
    mapping: Mapping,
    narrow_range: bool,
    granularity: Granularity,
}

impl TryFrom<SchemeFields> for QuantScheme {
    type Error = QuantError;

    fn try_from(f: SchemeFields) -> Result<Self, QuantError> {
        Self::new(
            f.bits,
            f.signedness,
            f.mapping,
            f.narrow_range,
            f.granularity,
        )
    }
}

impl QuantScheme {
    pub fn new(
        bits: u8,
        signedness: Signedness,
        mapping: Mapping,
        narrow_range: bool,
        granularity: Granularity,
    ) -> Result<Self, QuantError> {
        if !(2..=8).contains(&bits) {
            return Err(QuantError::UnsupportedBits { bits });
        }
        Ok(Self {
            bits,
            signedness,
            mapping,
            narrow_range,
            granularity,
        })
    }

    /// int8 weights as the runtime wants them: signed, symmetric, `[-127, 127]`.
    pub fn weights_int8(granularity: Granularity) -> Self {
        Self {
            bits: 8,
            signedness: Signedness::Signed,
            mapping: Mapping::Symmetric,
            narrow_range: true,
            granularity,
        }
    }

    /// uint8 activations as the runtime wants them: unsigned, asymmetric, per tensor.
    pub fn activations_uint8() -> Self {
        Self {
            bits: 8,
            signedness: Signedness::Unsigned,
            mapping: Mapping::Asymmetric,
            narrow_range: false,
            granularity: Granularity::PerTensor,
        }
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The same scheme at another bit width.
    pub fn with_bits(self, bits: u8) -> Result<Self, QuantError> {
        Self::new(
            bits,
            self.signedness,
            self.mapping,
            self.narrow_range,
            self.granularity,
        )
    }

    pub fn with_granularity(self, granularity: Granularity) -> Self {
        Self {
            granularity,
            ..self
        }
    }

    /// Smallest integer code.
    pub fn qmin(&self) -> i32 {
        let full = match self.signedness {
            Signedness::Signed => -(1i32 << (self.bits - 1)),
            Signedness::Unsigned => 0,
        };
        full + i32::from(self.narrow_range)
    }

    /// Largest integer code.
    pub fn qmax(&self) -> i32 {
        match self.signedness {
            Signedness::Signed => (1i32 << (self.bits - 1)) - 1,
            Signedness::Unsigned => (1i32 << self.bits) - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(bits: u8, s: Signedness, narrow: bool) -> QuantScheme {
        QuantScheme::new(bits, s, Mapping::Asymmetric, narrow, Granularity::PerTensor).unwrap()
    }

    #[test]
    fn grids() {
        let s8 = scheme(8, Signedness::Signed, false);
        assert_eq!((s8.qmin(), s8.qmax()), (-128, 127));
        let s8n = scheme(8, Signedness::Signed, true);
        assert_eq!((s8n.qmin(), s8n.qmax()), (-127, 127));
        let u8s = scheme(8, Signedness::Unsigned, false);
        assert_eq!((u8s.qmin(), u8s.qmax()), (0, 255));
        let s4 = scheme(4, Signedness::Signed, false);
        assert_eq!((s4.qmin(), s4.qmax()), (-8, 7));
        let u2 = scheme(2, Signedness::Unsigned, false);
        assert_eq!((u2.qmin(), u2.qmax()), (0, 3));
    }

    #[test]
    fn bits_are_checked() {
        for bits in [0, 1, 9, 16] {
            assert_eq!(
                QuantScheme::new(
                    bits,
                    Signedness::Signed,
                    Mapping::Symmetric,
                    false,
                    Granularity::PerTensor
                ),
                Err(QuantError::UnsupportedBits { bits })
            );
        }
    }

    #[test]
    fn scheme_round_trips_through_json() {
        let s = QuantScheme::weights_int8(Granularity::PerChannel { axis: 0 });
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<QuantScheme>(&json).unwrap(), s);
    }
}
